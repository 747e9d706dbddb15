//! CITA-Cloud's real network service, `network_zenoh`, under a local cluster: one process
//! per node (`node-N/network/`), peers over QUIC with TLS on loopback, instead of the
//! shared development network.
//!
//! Each node's network service is reached by its peers at `127.0.0.N` (every
//! `127.0.0.0/8` address is loopback on Linux), so each has its own host name for TLS and
//! for `network_zenoh`'s peer table, which is keyed by it. The certificates, a CA and one
//! leaf per node with that IP address as its subject alternative name, are made with the
//! `openssl` command line at cluster creation, under `network-certs/`.
//!
//! `network_zenoh` dispatches to the `consensus` module named in its config file (it does
//! not need the handler registration) and takes a node's origin from the first 8 bytes
//! of its `node_address` file, written here without a `0x` prefix, as it wants.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::cluster::Cluster;

/// Directory of node `i`'s network service (its working directory: `network_zenoh`
/// writes its certificate files there).
pub fn network_dir(cluster: &Cluster, i: usize) -> PathBuf {
    cluster.node_dir(i).join("network")
}

/// The loopback address node `i`'s network service is reached at.
fn host(i: usize) -> String {
    format!("127.0.0.{i}")
}

/// A chain id: 32 bytes, hex (its first 8 bytes are the chain's broadcast origin).
const CHAIN_ID: &str = "63726166742d6465762d636861696e0000000000000000000000000000000001";

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl (install it: apt-get install -y openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Makes a CA and a certificate for each of `nodes` nodes in `dir`: `ca.pem`,
/// `node-N.pem` and `node-N.key` (PKCS#8, P-256).
fn make_certs(dir: &Path, nodes: usize) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "3650",
        "-subj",
        "/O=craft-dev/CN=CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca)?;
    for i in 1..=nodes {
        let (key, csr, pem, ext) = (
            format!("node-{i}.key"),
            format!("node-{i}.csr"),
            format!("node-{i}.pem"),
            format!("node-{i}.ext"),
        );
        let subj = format!("/O=craft-dev/CN={}", host(i));
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req)?;
        fs::write(
            dir.join(&ext),
            format!(
                "subjectAltName=IP:{}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
                host(i)
            ),
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "3650",
                "-extfile",
                &ext,
            ],
        )?;
    }
    Ok(())
}

/// Writes every node's `network/config.toml`, `node_address` and `validator_address`,
/// and the certificates they hold.
pub fn write_configs(cluster: &Cluster) -> anyhow::Result<()> {
    let certs = cluster.dir.join("network-certs");
    let nodes = &cluster.state.nodes;
    make_certs(&certs, nodes.len())?;
    let read = |name: &str| {
        fs::read_to_string(certs.join(name))
            .with_context(|| format!("reading {}", certs.join(name).display()))
    };
    let ca = read("ca.pem")?;
    for node in nodes {
        let i = node.index;
        let dir = network_dir(cluster, i);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("node_address"), &node.address)?;
        fs::write(dir.join("validator_address"), &node.address)?;
        let mut text =
            String::from("# Written by `cargo xtask` for network_zenoh.\n[network_zenoh]\n");
        let _ = writeln!(text, "grpc_port = {}", node.network_port);
        let _ = writeln!(text, "port = {}", node.zenoh_port);
        let _ = writeln!(text, "protocol = \"quic\"");
        let _ = writeln!(text, "domain = \"{}\"", host(i));
        let _ = writeln!(text, "chain_id = \"{CHAIN_ID}\"");
        let _ = writeln!(text, "node_address = \"node_address\"");
        let _ = writeln!(text, "validator_address = \"validator_address\"");
        let _ = writeln!(text, "enable_metrics = false");
        let _ = writeln!(text, "hot_update_interval = 3600");
        let _ = writeln!(text, "ca_cert = \"\"\"\n{}\"\"\"", ca.trim_end());
        let _ = writeln!(
            text,
            "cert = \"\"\"\n{}\"\"\"",
            read(&format!("node-{i}.pem"))?.trim_end()
        );
        let _ = writeln!(
            text,
            "priv_key = \"\"\"\n{}\"\"\"",
            read(&format!("node-{i}.key"))?.trim_end()
        );
        text.push_str(
            "\n[network_zenoh.log_config]\nmax_level = \"info\"\nfilter = \"info\"\nservice_name = \"network\"\n",
        );
        for peer in nodes.iter().filter(|p| p.index != i) {
            let _ = write!(
                text,
                "\n[[network_zenoh.peers]]\ndomain = \"{}\"\nprotocol = \"quic\"\nport = {}\n",
                host(peer.index),
                peer.zenoh_port
            );
        }
        let _ = write!(
            text,
            "\n[[network_zenoh.modules]]\nmodule_name = \"consensus\"\nhostname = \"127.0.0.1\"\nport = {}\n",
            node.grpc_port
        );
        fs::write(dir.join("config.toml"), text)?;
    }
    Ok(())
}
