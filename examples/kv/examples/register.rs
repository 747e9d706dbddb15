//! A single replicated register, one node per process, as in the Hoverbear raft-rs
//! examples. Writes go to the leader (a follower redirects) and answer with the
//! register's version once applied; reads pass a read barrier (raft's ReadIndex) first,
//! so they see every write acknowledged before them.
//!
//! ```text
//! # a single-node register
//! cargo run -p craft-kv --example register -- server 1 1 127.0.0.1:8080
//! # three nodes: every instance gets every peer as <id> <address>
//! cargo run -p craft-kv --example register -- server 1 1 127.0.0.1:8080 2 127.0.0.1:8082 3 127.0.0.1:8084
//! cargo run -p craft-kv --example register -- client 127.0.0.1:8080 put hello
//! cargo run -p craft-kv --example register -- client 127.0.0.1:8082 get
//! ```
//!
//! A node serves HTTP on its address (`GET /`, `PUT /`, so curl works too) and raft on
//! the next port; its log is kept in `./craft-register-<id>`.

mod common;

use craft_core::sync::LockExt;
use std::collections::BTreeMap;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::register::Register;
use common::server::{call, parse_addr, serve, Node};

const USAGE: &str = "usage:
  register server <id> (<peer id> <peer address>)...
  register client <address> get
  register client <address> put <value>";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["server", id, peers @ ..] if !peers.is_empty() && peers.len() % 2 == 0 => {
            let id: u64 = id
                .parse()
                .with_context(|| format!("{id:?} is not a node id"))?;
            let mut members = BTreeMap::new();
            for pair in peers.chunks(2) {
                let peer: u64 = pair[0]
                    .parse()
                    .with_context(|| format!("{:?} is not a node id", pair[0]))?;
                members.insert(peer, parse_addr(pair[1])?);
            }
            let register = Register::default();
            let cell = register.cell.clone();
            serve("register", id, members, register, move |node| {
                axum::Router::new()
                    .route("/", get(read).put(write))
                    .with_state((node, cell))
            })
            .await
        }
        ["client", addr, "get"] => {
            println!(
                "{}",
                call(Method::GET, addr, "/", Bytes::new()).await?.trim()
            );
            Ok(())
        }
        ["client", addr, "put", value] => {
            let body = Bytes::from(value.to_string());
            println!("{}", call(Method::PUT, addr, "/", body).await?.trim());
            Ok(())
        }
        _ => anyhow::bail!("{USAGE}"),
    }
}

type AppState = (Node<u64>, common::register::Cell);

async fn read(State((node, cell)): State<AppState>) -> Response {
    if let Err(e) = node.raft.read_barrier().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
    }
    let (version, value) = cell.locked().clone();
    format!("{} (version {version})\n", value.unwrap_or_default()).into_response()
}

async fn write(State((node, _)): State<AppState>, body: Bytes) -> Response {
    if let Some(redirect) = node.not_leader("/") {
        return redirect;
    }
    match node.raft.propose(body.to_vec()).await {
        Ok(version) => format!("ok (version {version})\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}
