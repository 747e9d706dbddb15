//! `POST /setup` and `POST /shutdown` with hraftd's body: the calls that act on every
//! member, and the small API a node serves while it waits to be set up.
//!
//! | Answer | When |
//! |---|---|
//! | `200` | every member is set up (or already was, with the same members) |
//! | `400` | a field is missing or malformed; the error names it |
//! | `409` | this node is not in the body, or it is already set up with other members |
//! | `502` | this node is set up but some members could not be reached or refused; `failed` names them, `set_up` names the others. Sending the same body again finishes the job |
//!
//! The node that receives the body passes it on to every other member with the
//! [`FORWARDED`] header, which they do not pass on again.

use craft_core::sync::LockExt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::client::{ApiClient, FORWARDED};
use crate::http_api::MAX_BODY_BYTES;
use crate::setup::{Member, Setup, SetupError};
use crate::shutdown::Shutdown;

/// What one member answered to a call passed on to it.
#[derive(Debug)]
pub struct Passed {
    /// The member.
    pub member: Member,
    /// Its answer, or why there was none.
    pub outcome: Result<(), String>,
}

/// Whether a request came from another member passing it on.
pub fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

/// Sends `POST {path}` with `body` to every member of `setup` but `me`, at once, and
/// collects the answers in the setup's order.
pub async fn pass_on(
    client: &ApiClient,
    setup: &Setup,
    me: Option<u64>,
    path: &'static str,
    body: Bytes,
) -> Vec<Passed> {
    let mut calls = tokio::task::JoinSet::new();
    for (i, member) in setup.members.iter().enumerate() {
        if Some(member.id) == me {
            continue;
        }
        let (client, member, body) = (client.clone(), member.clone(), body.clone());
        calls.spawn(async move {
            let outcome = match client.post(&member.http, path, body).await {
                Ok((status, _)) if status.is_success() => Ok(()),
                Ok((status, reply)) => Err(format!(
                    "answered {status}: {}",
                    String::from_utf8_lossy(&reply).trim()
                )),
                Err(e) => Err(e.to_string()),
            };
            (i, Passed { member, outcome })
        });
    }
    let mut passed = Vec::new();
    while let Some(done) = calls.join_next().await {
        match done {
            Ok(result) => passed.push(result),
            Err(e) => tracing::warn!(error = %e, "a call to a member failed to run"),
        }
    }
    passed.sort_by_key(|(i, _)| *i);
    passed.into_iter().map(|(_, p)| p).collect()
}

/// The answer to a setup or shutdown that acted on `me` and was passed on as `passed`:
/// `200` when every member did it, `502` naming those that did not.
pub fn summarise(done: &str, me: Option<&Member>, already: bool, passed: &[Passed]) -> Response {
    let ok: Vec<&str> = me
        .map(|m| m.name.as_str())
        .into_iter()
        .chain(
            passed
                .iter()
                .filter(|p| p.outcome.is_ok())
                .map(|p| p.member.name.as_str()),
        )
        .collect();
    let failed: Vec<Value> = passed
        .iter()
        .filter_map(|p| {
            p.outcome
                .as_ref()
                .err()
                .map(|e| json!({ "id": p.member.name, "addr": p.member.http, "error": e }))
        })
        .collect();
    let mut body = json!({ done: ok, "failed": failed });
    if let Some(me) = me {
        body["id"] = json!(me.name);
        body["raft_id"] = json!(me.id);
    }
    if already {
        body["already"] = json!(true);
    }
    if failed.is_empty() {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        body["error"] = json!(format!(
            "{} of {} members could not be reached or refused; sending the same request again retries them",
            failed.len(),
            ok.len() + failed.len()
        ));
        (StatusCode::BAD_GATEWAY, Json(body)).into_response()
    }
}

/// A `400` naming the field at fault.
pub fn bad_setup(e: &SetupError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

/// A `409` with `message`.
pub fn conflict(message: impl Into<String>) -> Response {
    (
        StatusCode::CONFLICT,
        Json(json!({ "error": message.into() })),
    )
        .into_response()
}

/// `POST /shutdown`: with hraftd's body, stops every listed member (passing the call on
/// to each) and then this node; with no body (or `{}`), just this node.
pub async fn shutdown_members(
    client: &ApiClient,
    shutdown: &Shutdown,
    raft_addr: &str,
    bound: SocketAddr,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    if !names_members(&body) || is_forwarded(headers) {
        tracing::info!("shutdown requested over HTTP");
        shutdown.signal();
        return Json(json!({ "shutdown": true })).into_response();
    }
    let setup = match Setup::parse(&body) {
        Ok(setup) => setup,
        Err(e) => return bad_setup(&e),
    };
    let me = setup.find_self(raft_addr, bound).cloned();
    let passed = pass_on(
        client,
        &setup,
        me.as_ref().map(|m| m.id),
        "/shutdown",
        Bytes::new(),
    )
    .await;
    tracing::info!(
        members = setup.members.len(),
        "shutdown of the cluster requested over HTTP"
    );
    shutdown.signal();
    // A node asked but not listed stops too, as hraftd's would.
    summarise("stopped", me.as_ref(), false, &passed)
}

/// Whether a `/shutdown` body is about other members: any body but an empty one or a
/// JSON object with none of the setup fields (`{}`, as some clients send).
fn names_members(body: &[u8]) -> bool {
    if body.iter().all(u8::is_ascii_whitespace) {
        return false;
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => crate::setup::FIELDS
            .iter()
            .any(|field| fields.contains_key(*field)),
        // Malformed: parsed again, to be answered 400 naming what is wrong.
        _ => true,
    }
}

/// What a node waiting to be set up shares with its handlers.
#[derive(Debug)]
pub struct Waiting {
    /// The node's name (`-id`).
    pub name: String,
    /// `-raddr` as given.
    pub raft_addr: String,
    /// The raft listener's address.
    pub bound: SocketAddr,
    /// Where the setup is recorded.
    pub data_dir: PathBuf,
    /// Calls to other members.
    pub client: ApiClient,
    /// Raised by `POST /shutdown`.
    pub shutdown: Shutdown,
    /// The setup accepted so far, and this node's raft id in it.
    pub accepted: Mutex<Option<(u64, Setup)>>,
    /// Told once a setup is recorded.
    pub done: Mutex<Option<oneshot::Sender<(u64, Setup)>>>,
}

impl Waiting {
    fn accepted(&self) -> std::sync::MutexGuard<'_, Option<(u64, Setup)>> {
        // Nothing below can panic while holding it; a poisoned value is still whole.
        self.accepted.locked()
    }
}

/// The routes of a node waiting for `POST /setup`: `/setup`, `/shutdown`, `/status`;
/// anything else is answered `503` saying the node is not set up.
pub fn waiting_router(state: Arc<Waiting>) -> Router {
    Router::new()
        .route("/setup", post(setup_waiting))
        .route("/shutdown", post(shutdown_waiting))
        .route("/status", get(status_waiting))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "not set up yet: POST /setup first" })),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn setup_waiting(
    State(state): State<Arc<Waiting>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let setup = match Setup::parse(&body) {
        Ok(setup) => setup,
        Err(e) => return bad_setup(&e),
    };
    let Some(me) = setup.find_self(&state.raft_addr, state.bound).cloned() else {
        return conflict(format!(
            "this node's raft address {} is not among the members",
            state.raft_addr
        ));
    };
    let already = {
        let mut accepted = state.accepted();
        match &*accepted {
            Some((_, previous)) if *previous != setup => {
                return conflict("this node is already set up with other members")
            }
            Some(_) => true,
            None => {
                if let Err(e) = crate::setup::record(&state.data_dir, me.id, &setup) {
                    tracing::error!(error = %e, dir = %state.data_dir.display(), "cannot record the setup");
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Json(json!({ "error": format!("recording the setup in {}: {e}", state.data_dir.display()) })),
                    )
                        .into_response();
                }
                tracing::info!(name = %state.name, raft_id = me.id, members = ?setup.ids(), "set up");
                *accepted = Some((me.id, setup.clone()));
                false
            }
        }
    };
    let passed = if is_forwarded(&headers) {
        Vec::new()
    } else {
        pass_on(&state.client, &setup, Some(me.id), "/setup", body).await
    };
    if let Some(done) = state.done.locked().take() {
        // The node starts raft once this handler has answered.
        let _ = done.send((me.id, setup));
    }
    summarise("set_up", Some(&me), already, &passed)
}

async fn shutdown_waiting(
    State(state): State<Arc<Waiting>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shutdown_members(
        &state.client,
        &state.shutdown,
        &state.raft_addr,
        state.bound,
        &headers,
        body,
    )
    .await
}

async fn status_waiting(State(state): State<Arc<Waiting>>) -> Response {
    Json(json!({
        "id": null,
        "name": state.name,
        "role": "waiting for setup",
        "leader": null,
        "voters": [],
    }))
    .into_response()
}
