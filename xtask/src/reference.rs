//! The reference binaries some verbs compare with (the existing consensus service,
//! CITA-Cloud's network service), and how to build them outside this clone.

/// How to build the existing service, then `last_step`: for `--help` and for when no
/// binary is given (`cargo xtask interop`, `cargo xtask bench --compare`).
pub fn reference_help(last_step: &str) -> String {
    format!(
        "\
Building the existing CITA-Cloud service (cita-cloud/consensus_raft) outside this clone:
  1. get the sources of cita-cloud/consensus_raft and of its git dependencies
     cita-cloud/cloud-common-rs and JLerxky/raft-rs side by side, e.g. in $REF (a directory of your choice)
     (git clone https://github.com/cita-cloud/consensus_raft, and so on);
  2. in consensus_raft/Cargo.toml point them at the local copies:
       raft = {{ path = \"../raft-rs\", default-features = false, features = [\"prost-codec\"] }}
       cloud-util = {{ package = \"cloud-util\", path = \"../cloud-common-rs/cloud-util\" }}
       cita_cloud_proto = {{ package = \"cita_cloud_proto\", path = \"../cloud-common-rs/cloud-proto\" }}
  3. apt-get install -y protobuf-compiler (raft-proto's build needs protoc), then
     cargo build --release in consensus_raft (about 7 minutes on 2 cores);
  4. {last_step}
Never commit those sources or binaries."
    )
}

/// How to build CITA-Cloud's network service, for `--zenoh`.
pub const ZENOH_HELP: &str = "\
Building CITA-Cloud's network service (cita-cloud/network_zenoh) outside this clone, for --zenoh:
  1. get the sources of cita-cloud/network_zenoh beside cita-cloud/cloud-common-rs
     (as for consensus_raft above);
  2. in network_zenoh/Cargo.toml point cloud-util and cita_cloud_proto at the local
     copies, pin zenoh and zenoh-ext to one version (zenoh = { version = \"=1.0.4\", ... }),
     and pin every zenoh-* crate they pull in to the same version by naming each as a
     dependency: zenoh-buffers = \"=1.0.4\", zenoh-codec, zenoh-collections, zenoh-config,
     zenoh-core, zenoh-crypto, zenoh-keyexpr, zenoh-link, zenoh-link-commons,
     zenoh-link-quic, zenoh-link-tls, zenoh-macros, zenoh-plugin-trait, zenoh-protocol,
     zenoh-result, zenoh-runtime, zenoh-sync, zenoh-task, zenoh-transport, zenoh-util
     (otherwise cargo mixes 1.0.4 with newer 1.x crates that do not build together);
  3. cargo build --release in network_zenoh;
  4. add --zenoh $REF/network_zenoh/target/release/network to the interop command
     (it also needs the openssl command line, for the nodes' TLS certificates).";
