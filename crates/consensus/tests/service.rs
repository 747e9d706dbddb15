//! The `consensus` binary as a process, with an in-process development controller and
//! network: a single-validator chain commits blocks, survives garbage network input,
//! and exits cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cita_proto::controller::consensus2_controller_service_server::Consensus2ControllerServiceServer;
use cita_proto::network::network_msg_handler_service_client::NetworkMsgHandlerServiceClient;
use cita_proto::network::network_service_server::NetworkServiceServer;
use cita_proto::network::NetworkMsg;
use craft_devnet::controller::{DevChain, DevChainConfig};
use craft_devnet::network::DevNetwork;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn serve<S>(svc: S, port: u16)
where
    S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve(addr),
    );
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, ports: (u16, u16, u16, u16)) -> std::path::PathBuf {
    let (controller, grpc, network, metrics) = ports;
    std::fs::write(dir.join("node_address"), format!("0x{:040x}", 1)).unwrap();
    let cfg = format!(
        "[consensus_raft]\ncontroller_port = {controller}\ngrpc_listen_port = {grpc}\nnetwork_port = {network}\nnode_addr = {:?}\nlog_to_stdout = true\ntick_interval_in_millis = 50\nheartbeat_tick = 2\nelection_tick = 10\nraft_data_path = {:?}\nmetrics_port = {metrics}\nlisten_host = \"127.0.0.1\"\n",
        dir.join("node_address").display().to_string(),
        dir.join("raft").display().to_string(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

async fn wait_height(chain: &DevChain, at_least: u64) {
    for _ in 0..300 {
        if chain.height() >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "chain stuck at height {} (wanted {at_least})",
        chain.height()
    );
}

/// A single-validator development chain: controller and network served in-process,
/// the consensus config written, the consensus not started.
struct Chain {
    dir: tempfile::TempDir,
    ports: (u16, u16, u16, u16),
    chain: DevChain,
    config: std::path::PathBuf,
}

async fn single_validator_chain(block_interval: u32) -> Chain {
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port(), free_port(), free_port());
    let chain = DevChain::open(DevChainConfig {
        node_name: "1".into(),
        validators: vec![hex::decode(format!("{:040x}", 1)).unwrap()],
        block_interval,
        ..Default::default()
    })
    .unwrap();
    serve(
        Consensus2ControllerServiceServer::new(chain.clone()),
        ports.0,
    )
    .await;
    let net = DevNetwork::new(1);
    serve(NetworkServiceServer::new(net.service(1)), ports.2).await;
    let config = write_config(dir.path(), ports);
    Chain {
        dir,
        ports,
        chain,
        config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_validator_commits_survives_garbage_and_stops_on_sigterm() {
    let Chain {
        // Kept until the end: dropping it deletes the node's directory.
        dir: _dir,
        ports,
        chain,
        config,
    } = single_validator_chain(0).await;

    let child = Command::new(env!("CARGO_BIN_EXE_consensus"))
        .args(["run", "-c"])
        .arg(&config)
        .arg("--stdout")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let pusher = chain.clone();
    tokio::spawn(async move {
        pusher
            .reconfigure_until_accepted(format!("http://127.0.0.1:{}", ports.1))
            .await
    });
    wait_height(&chain, 5).await;

    // Garbage on the network handler: refused with invalid_argument, never a crash.
    let mut client =
        NetworkMsgHandlerServiceClient::connect(format!("http://127.0.0.1:{}", ports.1))
            .await
            .unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..300u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 64) as usize;
        let payload: Vec<u8> = (0..len)
            .map(|j| (seed >> (j % 8 * 8)) as u8 ^ j as u8)
            .collect();
        let kinds = ["raft", "probe", "probe-resp", "refresh", "bogus"];
        let msg = NetworkMsg {
            module: if i % 17 == 0 {
                "controller".into()
            } else {
                "consensus".into()
            },
            r#type: kinds[(i % 5) as usize].into(),
            origin: seed,
            msg: payload.into(),
        };
        if let Err(status) = client.process_network_msg(msg).await {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
    }
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "consensus died on garbage input"
    );
    let h = chain.height();
    wait_height(&chain, h + 5).await;

    // Well-formed raft messages that trip assertions inside raft-rs (each one used to
    // kill the process), from a peer id raft has never heard of. The gate refuses them
    // and counts them; the node goes on committing blocks.
    let me = consensus::raft_id::raft_id(&hex::decode(format!("{:040x}", 1)).unwrap());
    for (what, forged) in craft_devnet::hostile::forged_raft(me, 0xbad) {
        let msg = NetworkMsg {
            module: "consensus".into(),
            r#type: "raft".into(),
            origin: 7,
            msg: craft_transport::encode_raft_message(&forged).into(),
        };
        let _ = client.process_network_msg(msg).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "consensus died on a forged message: {what}"
        );
    }
    let h = chain.height();
    wait_height(&chain, h + 5).await;
    let metrics = fetch_metrics(ports.3).await;
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("consensus_refused_messages "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(refused >= 8, "refused_messages = {refused}\n{metrics}");

    // SIGTERM: clean exit with status 0.
    terminate(&mut child).await;
}

async fn fetch_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// Stops the process with SIGTERM and waits for a clean exit.
async fn terminate(child: &mut Kill) {
    let pid = child.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    for _ in 0..100 {
        if let Some(s) = child.0.try_wait().unwrap() {
            assert!(s.success(), "exit status {s:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("consensus did not exit after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_the_controller_lost_is_committed_again_after_a_restart() {
    // One block every second: between two blocks the snapshot after the last one is
    // written, so the restart finds that block recorded in raft and not in the log
    // still to apply.
    let Chain {
        dir,
        ports: _,
        chain,
        config,
    } = single_validator_chain(1).await;
    let start = |log: &str| {
        let out = std::fs::File::create(dir.path().join(log)).unwrap();
        Kill(
            Command::new(env!("CARGO_BIN_EXE_consensus"))
                .args(["run", "-c"])
                .arg(&config)
                .arg("--stdout")
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut child = start("first.log");
    wait_height(&chain, 3).await;
    // Right after a block, stop: the node has recorded it in raft.
    let h = chain.height();
    wait_height(&chain, h + 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminate(&mut child).await;

    // The controller loses its last block; the node is the only one who has it.
    let (lost_at, lost) = chain.forget_last_block().unwrap();
    assert_eq!(chain.height(), lost_at - 1);

    let mut child = start("second.log");
    wait_height(&chain, lost_at + 2).await;
    assert_eq!(
        chain.block(lost_at).as_deref(),
        Some(&lost[..]),
        "the block at {lost_at} is not the one the chain had committed"
    );
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    assert!(
        log.contains("re-committing the last block the controller missed"),
        "the block came back some other way:\n{log}"
    );
    terminate(&mut child).await;
}

#[test]
fn bad_config_exits_with_a_message_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[consensus_raft]\nelection_tik = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_consensus"))
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("election_tik") && err.contains("config.toml"),
        "{err}"
    );
}

#[test]
fn version_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_consensus"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("consensus "));
}
