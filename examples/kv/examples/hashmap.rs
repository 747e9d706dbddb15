//! A replicated hash map of JSON values, one node per process, as in the Hoverbear
//! raft-rs examples: every instance is given every peer's address, in id order.
//!
//! ```text
//! # two or three terminals
//! cargo run -p craft-kv --example hashmap -- server 1 127.0.0.1:8080 127.0.0.1:8082
//! cargo run -p craft-kv --example hashmap -- server 2 127.0.0.1:8080 127.0.0.1:8082
//! # then
//! cargo run -p craft-kv --example hashmap -- client 127.0.0.1:8080 put alice '{"age":31}'
//! cargo run -p craft-kv --example hashmap -- client 127.0.0.1:8082 get alice
//! cargo run -p craft-kv --example hashmap -- client 127.0.0.1:8082 remove alice
//! ```
//!
//! Node `i` is the `i`-th address. It serves HTTP there (`GET`/`PUT`/`DELETE
//! /key/{key}`) and raft on the next port; its log is kept in `./craft-hashmap-<id>`.

mod common;

use craft_core::sync::LockExt;
use std::collections::BTreeMap;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use common::hashmap::{JsonMap, Map, Op};
use common::server::{call, parse_addr, serve, Node};
use serde_json::Value;

const USAGE: &str = "usage:
  hashmap server <id> <address of node 1> <address of node 2> ...
  hashmap client <address> get <key>
  hashmap client <address> put <key> <json value>
  hashmap client <address> remove <key>";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["server", id, addrs @ ..] if !addrs.is_empty() => {
            let id: u64 = id
                .parse()
                .with_context(|| format!("{id:?} is not a node id"))?;
            let mut members = BTreeMap::new();
            for (i, addr) in addrs.iter().enumerate() {
                members.insert(i as u64 + 1, parse_addr(addr)?);
            }
            let map = JsonMap::default();
            let shared = map.map.clone();
            serve("hashmap", id, members, map, move |node| {
                axum::Router::new()
                    .route("/key/{key}", get(read).put(insert).delete(remove))
                    .with_state((node, shared))
            })
            .await
        }
        ["client", addr, "get", key] => {
            let path = format!("/key/{key}");
            println!(
                "{}",
                call(Method::GET, addr, &path, Bytes::new()).await?.trim()
            );
            Ok(())
        }
        ["client", addr, "put", key, value] => {
            serde_json::from_str::<Value>(value)
                .with_context(|| format!("{value:?} is not JSON"))?;
            let path = format!("/key/{key}");
            let body = Bytes::from(value.to_string());
            println!("{}", call(Method::PUT, addr, &path, body).await?.trim());
            Ok(())
        }
        ["client", addr, "remove", key] => {
            let path = format!("/key/{key}");
            println!(
                "{}",
                call(Method::DELETE, addr, &path, Bytes::new())
                    .await?
                    .trim()
            );
            Ok(())
        }
        _ => anyhow::bail!("{USAGE}"),
    }
}

type AppState = (Node<Result<Option<Value>, String>>, Map);

async fn read(State((node, map)): State<AppState>, Path(key): Path<String>) -> Response {
    if let Err(e) = node.raft.read_barrier().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
    }
    let value = map.locked().get(&key).cloned();
    match value {
        Some(value) => Json(value).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no key {key:?}\n")).into_response(),
    }
}

async fn change(node: &Node<Result<Option<Value>, String>>, path: &str, op: Op) -> Response {
    if let Some(redirect) = node.not_leader(path) {
        return redirect;
    }
    let command = match serde_json::to_vec(&op) {
        Ok(c) => c,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    match node.raft.propose(command).await {
        // The previous value, as the Hoverbear example answers.
        Ok(Ok(previous)) => Json(serde_json::json!({ "previous": previous })).into_response(),
        Ok(Err(rejected)) => (StatusCode::BAD_REQUEST, rejected).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn insert(
    State((node, _)): State<AppState>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not JSON: {e}\n")).into_response(),
    };
    let path = format!("/key/{key}");
    change(&node, &path, Op::Insert { key, value }).await
}

async fn remove(State((node, _)): State<AppState>, Path(key): Path<String>) -> Response {
    let path = format!("/key/{key}");
    change(&node, &path, Op::Remove { key }).await
}
