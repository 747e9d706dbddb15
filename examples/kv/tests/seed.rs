//! hraftd's README followed literally, with the real `craft-kv` binary: three processes
//! started with one-dash flags and string ids, `POST /setup` to the first, sets and gets
//! on every node, `POST /shutdown` with the setup body stopping all three with exit
//! status 0, and a restart that needs no second setup. Also a setup that cannot reach
//! one member, and one that is finished by sending it again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use common::{eventually, free_addr, http, kill, Reply};
use serde_json::{json, Value};

/// A `craft-kv` process, killed if the test ends before it exits.
struct Proc {
    name: String,
    http: SocketAddr,
    raft: SocketAddr,
    child: Option<Child>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill(self.child.take());
    }
}

impl Proc {
    fn new(n: usize) -> Self {
        Self {
            name: format!("node{n}"),
            http: free_addr(),
            raft: free_addr(),
            child: None,
        }
    }

    /// `craft-kv -id nodeN -haddr H -raddr R <dir>/nodeN`, as the seed's README starts it.
    fn start(&mut self, dir: &Path) {
        let log = std::fs::File::create(dir.join(format!("{}.log", self.name))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_craft-kv"))
            .args(["-id", &self.name])
            .args(["-haddr", &self.http.to_string()])
            .args(["-raddr", &self.raft.to_string()])
            .arg(dir.join(&self.name))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits for the process to exit by itself.
    async fn exited(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let name = self.name.clone();
        eventually(&format!("{name} to exit"), || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await
    }
}

/// The seed's setup body for these processes, ids "1", "2", "3".
fn seed_body(nodes: &[Proc]) -> String {
    json!({
        "leaderAddr": nodes[0].http.to_string(),
        "leaderRaftAddr": nodes[0].raft.to_string(),
        "leaderId": "1",
        "clientAddrs": nodes[1..].iter().map(|n| n.http.to_string()).collect::<Vec<_>>(),
        "clientRaftAddrs": nodes[1..].iter().map(|n| n.raft.to_string()).collect::<Vec<_>>(),
        "clientIds": (2..=nodes.len()).map(|i| i.to_string()).collect::<Vec<_>>(),
    })
    .to_string()
}

async fn answered(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Reply {
    eventually(
        &format!("an answer to {method} {path} from {addr}"),
        || async move { http(addr, method, path, body).await.ok() },
    )
    .await
}

/// A write as `curl -L` makes it: a follower's 307 is followed to the leader.
async fn set(addr: SocketAddr, body: &str) -> Reply {
    let reply = answered(addr, "POST", "/key", Some(body)).await;
    if reply.status != 307 {
        return reply;
    }
    let location = reply.header("location").unwrap().to_string();
    let rest = location.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    answered(host.parse().unwrap(), "POST", path, Some(body)).await
}

async fn value_on(addr: SocketAddr, key: &str) -> Value {
    eventually(&format!("{key} readable on {addr}"), || async move {
        let reply = http(addr, "GET", &format!("/key/{key}"), None).await.ok()?;
        (reply.status == 200).then(|| reply.json())
    })
    .await
}

async fn leader_of(nodes: &[Proc]) -> u64 {
    eventually("a leader", || async {
        let reply = http(nodes[0].http, "GET", "/status", None).await.ok()?;
        reply.json()["leader"].as_u64()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_readme_followed_literally() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Proc> = (1..=3).map(Proc::new).collect();
    for node in &mut nodes {
        node.start(dir.path());
    }
    // Before the setup each node serves HTTP and says it waits.
    for node in &nodes {
        let status = answered(node.http, "GET", "/status", None).await;
        assert_eq!(status.json()["role"], "waiting for setup", "{status:?}");
        let read = answered(node.http, "GET", "/key/myKey", None).await;
        assert_eq!(read.status, 503, "{read:?}");
    }

    let body = seed_body(&nodes);
    let setup = answered(nodes[0].http, "POST", "/setup", Some(&body)).await;
    assert_eq!(setup.status, 200, "{setup:?}");
    assert_eq!(setup.json()["set_up"], json!(["1", "2", "3"]), "{setup:?}");
    // The member the body calls the leader leads ("1" is raft id 1).
    eventually("node1 to lead", || async {
        let status = http(nodes[0].http, "GET", "/status", None).await.ok()?;
        (status.json()["leader"] == json!(1)).then_some(())
    })
    .await;

    // Sets and gets on every node.
    for (i, node) in nodes.iter().enumerate() {
        let key = format!("key{i}");
        let reply = set(node.http, &format!(r#"{{"{key}":"value{i}"}}"#)).await;
        assert_eq!(reply.status, 200, "set on {}: {reply:?}", node.name);
    }
    let reply = set(nodes[0].http, r#"{"myKey":"myValue"}"#).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    for node in &nodes {
        assert_eq!(
            value_on(node.http, "myKey").await,
            json!({"myKey": "myValue"})
        );
        for i in 0..3 {
            let key = format!("key{i}");
            assert_eq!(value_on(node.http, &key).await[&key], format!("value{i}"));
        }
    }

    // The same setup again is a no-op; another one conflicts; a bad one names the field.
    let again = answered(nodes[1].http, "POST", "/setup", Some(&body)).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["already"], json!(true), "{again:?}");
    let other = body.replace(r#""clientIds":["2","3"]"#, r#""clientIds":["2","4"]"#);
    assert_ne!(other, body);
    let conflict = answered(nodes[0].http, "POST", "/setup", Some(&other)).await;
    assert_eq!(conflict.status, 409, "{conflict:?}");
    assert!(conflict.json()["error"].is_string(), "{conflict:?}");
    let missing = body.replace(r#""leaderId":"1","#, "");
    let bad = answered(nodes[0].http, "POST", "/setup", Some(&missing)).await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body.contains("leaderId"), "{bad:?}");

    // The seed's shutdown: every listed node exits with status 0.
    let stop = answered(nodes[0].http, "POST", "/shutdown", Some(&body)).await;
    assert_eq!(stop.status, 200, "{stop:?}");
    assert_eq!(stop.json()["stopped"], json!(["1", "2", "3"]), "{stop:?}");
    for node in &mut nodes {
        let status = node.exited().await;
        assert!(status.success(), "{} exited with {status}", node.name);
    }

    // Restarted with the same commands, no second setup: the data is there.
    for node in &mut nodes {
        node.start(dir.path());
    }
    leader_of(&nodes).await;
    for node in &nodes {
        assert_eq!(
            value_on(node.http, "myKey").await,
            json!({"myKey": "myValue"})
        );
    }
    let reply = set(nodes[2].http, r#"{"after":"restart"}"#).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        value_on(nodes[1].http, "after").await,
        json!({"after": "restart"})
    );
    let stop = answered(nodes[2].http, "POST", "/shutdown", Some(&body)).await;
    assert_eq!(stop.status, 200, "{stop:?}");
    for node in &mut nodes {
        assert!(node.exited().await.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_names_the_member_it_cannot_reach_and_a_second_one_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Proc> = (1..=3).map(Proc::new).collect();
    nodes[0].start(dir.path());
    nodes[1].start(dir.path());
    let body = seed_body(&nodes);
    let setup = answered(nodes[0].http, "POST", "/setup", Some(&body)).await;
    assert_eq!(setup.status, 502, "{setup:?}");
    let answer = setup.json();
    assert_eq!(answer["set_up"], json!(["1", "2"]), "{answer}");
    assert_eq!(answer["failed"][0]["id"], "3", "{answer}");
    assert!(answer["error"].is_string(), "{answer}");

    // Two of three are a majority: the cluster already works.
    leader_of(&nodes).await;
    assert_eq!(set(nodes[1].http, r#"{"early":"yes"}"#).await.status, 200);

    // Node 3 comes up; the same setup, sent again, sets it up and it catches up.
    nodes[2].start(dir.path());
    let again = eventually("node 3 set up by a repeated setup", || async {
        let reply = http(nodes[0].http, "POST", "/setup", Some(&body))
            .await
            .ok()?;
        (reply.status == 200).then_some(reply)
    })
    .await;
    assert_eq!(again.json()["set_up"], json!(["1", "2", "3"]), "{again:?}");
    assert_eq!(
        value_on(nodes[2].http, "early").await,
        json!({"early": "yes"})
    );
    let stop = answered(nodes[0].http, "POST", "/shutdown", Some(&body)).await;
    assert_eq!(stop.status, 200, "{stop:?}");
    for node in &mut nodes {
        assert!(node.exited().await.success());
    }
}
