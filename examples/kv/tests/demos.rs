//! The demos, in one process and as processes: the in-process register and hashmap
//! (three nodes over an in-memory log and network), and the multi-process `hashmap`
//! example started three times and driven through its `client` mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/common/mod.rs"]
mod demo;

use craft_core::sync::LockExt;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use demo::hashmap::{JsonMap, Op};
use demo::register::{Cell, Register};
use demo::{DemoNode, LocalCluster};
use serde_json::{json, Value};

async fn read_everywhere(
    nodes: &[DemoNode<u64>],
    cells: &BTreeMap<u64, Cell>,
) -> anyhow::Result<()> {
    for node in nodes {
        let applied = node.handle.read_barrier().await?;
        let (version, value) = cells[&node.id].locked().clone();
        println!(
            "  node {} reads {value:?} (version {version}, applied index {applied})",
            node.id
        );
    }
    Ok(())
}

#[tokio::test]
async fn register_in_one_process_survives_its_leader_crashing() -> anyhow::Result<()> {
    let mut cells = BTreeMap::new();
    let mut cluster = LocalCluster::start(&[1, 2, 3], |id| {
        let register = Register::default();
        cells.insert(id, register.cell.clone());
        register
    })
    .await?;

    let leader = cluster.leader().await?;
    let first_leader = leader.id;
    println!(
        "node {} leads, term {}",
        leader.id,
        leader.handle.status().term
    );
    for value in ["red", "green", "blue"] {
        let version = leader.handle.propose(value.into()).await?;
        println!(
            "  wrote {value:?} through node {}: version {version}",
            leader.id
        );
    }
    if let Some(follower) = cluster.nodes.iter().find(|n| n.id != first_leader) {
        match follower.handle.propose(b"purple".to_vec()).await {
            Err(e) => println!("  node {} refuses a write: {e}", follower.id),
            Ok(v) => anyhow::bail!("follower {} accepted a write (version {v})", follower.id),
        }
    }
    read_everywhere(&cluster.nodes, &cells).await?;

    println!("node {first_leader} crashes");
    cluster.crash(first_leader).await?;
    let leader = cluster.leader().await?;
    println!(
        "node {} leads, term {}",
        leader.id,
        leader.handle.status().term
    );
    let version = leader.handle.propose(b"yellow".to_vec()).await?;
    println!(
        "  wrote \"yellow\" through node {}: version {version}",
        leader.id
    );
    read_everywhere(&cluster.nodes, &cells).await?;

    cluster.stop().await?;
    println!("done");
    Ok(())
}

#[tokio::test]
async fn hashmap_replicas_in_one_process_agree() -> anyhow::Result<()> {
    let mut maps = BTreeMap::new();
    let cluster = LocalCluster::start(&[1, 2, 3], |id| {
        let sm = JsonMap::default();
        maps.insert(id, sm.map.clone());
        sm
    })
    .await?;
    let leader = cluster.leader().await?;
    println!(
        "node {} leads, term {}",
        leader.id,
        leader.handle.status().term
    );

    let ops = [
        Op::Insert {
            key: "alice".into(),
            value: json!({ "age": 31, "langs": ["rust", "go"] }),
        },
        Op::Insert {
            key: "bob".into(),
            value: json!(42),
        },
        Op::Insert {
            key: "carol".into(),
            value: json!(null),
        },
        Op::Insert {
            key: "bob".into(),
            value: json!("forty-two"),
        },
        Op::Remove {
            key: "carol".into(),
        },
    ];
    for op in &ops {
        let command = serde_json::to_string(op)?;
        let previous = leader.handle.propose(command.clone().into_bytes()).await?;
        let previous = previous.map_err(anyhow::Error::msg)?;
        let previous = previous.map_or_else(|| "none".to_string(), |v| v.to_string());
        println!("  {command} (previous value: {previous})");
    }

    let mut seen = Vec::new();
    for node in &cluster.nodes {
        let applied = node.handle.read_barrier().await?;
        let map: BTreeMap<String, Value> = maps[&node.id]
            .locked()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let text = serde_json::to_string(&map)?;
        println!("  node {} (applied index {applied}): {text}", node.id);
        seen.push(text);
    }
    anyhow::ensure!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "replicas disagree: {seen:?}"
    );

    cluster.stop().await?;
    println!("all replicas agree; done");
    Ok(())
}

/// The example binaries cargo built beside this test (`target/<profile>/examples`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    dir.join(name)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(args: &[&str]) -> Result<String, String> {
    let out = Command::new(example("hashmap"))
        .arg("client")
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn hashmap_as_three_processes_serves_its_clients() {
    let bin = example("hashmap");
    if !bin.exists() {
        // `cargo test` builds the examples; a filtered build may not have.
        panic!("{} not built: run cargo test -p craft-kv", bin.display());
    }
    let dir = tempfile::tempdir().unwrap();
    // Three API addresses, each with its raft port after it.
    let addrs: Vec<String> = (0..3)
        .map(|_| loop {
            let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = a.local_addr().unwrap();
            if std::net::TcpListener::bind(("127.0.0.1", addr.port() + 1)).is_ok() {
                break addr.to_string();
            }
        })
        .collect();
    let _servers: Vec<Server> = (1..=3)
        .map(|id| {
            Server(
                Command::new(&bin)
                    .current_dir(dir.path())
                    .arg("server")
                    .arg(id.to_string())
                    .args(&addrs)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    // Put through node 3 (redirected to the leader), read on every node.
    let mut put = Err(String::new());
    for _ in 0..300 {
        put = client(&[&addrs[2], "put", "alice", r#"{"age":31}"#]);
        if put.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let put = put.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&put).unwrap(),
        json!({"previous": null})
    );
    for addr in &addrs {
        let got = client(&[addr, "get", "alice"]).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&got).unwrap(),
            json!({"age": 31})
        );
    }
    let removed = client(&[&addrs[0], "remove", "alice"]).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&removed).unwrap(),
        json!({"previous": {"age": 31}})
    );
    assert!(
        client(&[&addrs[1], "get", "alice"]).is_err(),
        "removed key still read"
    );
    assert!(client(&[&addrs[1], "put", "bob", "not json"]).is_err());
}
