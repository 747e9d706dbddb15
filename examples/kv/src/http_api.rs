//! The HTTP API, as hraftd's:
//!
//! | Request | Effect |
//! |---|---|
//! | `POST /key` with `{"k":"v",...}` | sets each key, atomically (leader only) |
//! | `GET /key/{key}` | `{"key":"value"}`, or 404; linearizable on any member |
//! | `DELETE /key/{key}` | removes the key (leader only) |
//! | `POST /join` with `{"id":4,"addr":"host:port","haddr":"host:port"}` | adds a voter (leader only) |
//! | `GET /status` | role, term, leader, commit, applied, membership |
//! | `POST /shutdown` | stops this node gracefully |
//!
//! A write sent to a follower is answered `307 Temporary Redirect` to the same path on
//! the leader when the leader's HTTP address is known, otherwise `503` with
//! `{"leader": id}` (or `null` when no leader is known). hraftd's `/setup` is not
//! needed: the cluster forms from the `--peers` list (see [`crate::node`]).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use craft_core::raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use craft_core::{NodeHandle, ProposeError};
use serde::Deserialize;
use serde_json::json;

use crate::peers::AddressBook;
use crate::shutdown::Shutdown;
use crate::store::{Command, KvReader, MemberAddrs, Outcome};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The raft node: proposals, read barriers, status.
    pub raft: NodeHandle<Outcome>,
    /// Local reads of the applied state.
    pub kv: KvReader,
    /// Members' HTTP addresses, to redirect writes to the leader.
    pub addresses: AddressBook,
    /// Raised by `POST /shutdown`.
    pub shutdown: Shutdown,
    /// Whether the API is served over HTTPS (redirects keep the scheme).
    pub https: bool,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("id", &self.raft.status().id)
            .finish_non_exhaustive()
    }
}

/// A request to add a member, as `POST /join` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JoinRequest {
    /// Raft id of the new member.
    pub id: u64,
    /// Its raft (gRPC) address, `host:port`.
    pub addr: String,
    /// Its HTTP address, `host:port`, so others can redirect clients to it.
    #[serde(default)]
    pub haddr: Option<String>,
}

/// The largest request body the API reads; a longer one is answered `413 Payload Too
/// Large` before any handler runs.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The API's routes over `state`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/key", post(set_keys))
        .route("/key/{key}", get(get_key).delete(delete_key))
        .route("/join", post(join))
        .route("/status", get(status))
        .route("/shutdown", post(shutdown))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

/// Answers a request raft did not carry out: redirect to the leader, or 503/500.
fn refused(state: &ApiState, uri: &Uri, err: ProposeError) -> Response {
    match err {
        ProposeError::NotLeader {
            leader: Some(leader),
        } => match state.addresses.http_addr(leader) {
            Some(addr) => {
                let scheme = if state.https { "https" } else { "http" };
                let location = format!("{scheme}://{addr}{uri}");
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, location.clone())],
                    Json(json!({ "leader": leader, "location": location })),
                )
                    .into_response()
            }
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "not the leader", "leader": leader })),
            )
                .into_response(),
        },
        ProposeError::NotLeader { leader: None } => no_leader(),
        e @ (ProposeError::Dropped | ProposeError::Timeout | ProposeError::Stopped) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        e @ ProposeError::Raft(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Raft keeps member ids in no particular order; clients get them sorted.
fn sorted(mut ids: Vec<u64>) -> Vec<u64> {
    ids.sort_unstable();
    ids
}

fn no_leader() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": "no leader known; retry later", "leader": null })),
    )
        .into_response()
}

async fn propose(state: &ApiState, uri: &Uri, command: Command) -> Response {
    let data = match command.encode() {
        Ok(data) => data,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match state.raft.propose(data).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(rejected)) => error(StatusCode::INTERNAL_SERVER_ERROR, rejected.to_string()),
        Err(e) => refused(state, uri, e),
    }
}

async fn set_keys(State(state): State<ApiState>, uri: Uri, body: Bytes) -> Response {
    // Parsed by hand so that clients need not send `Content-Type: application/json`
    // (`curl -d` does not), as with hraftd.
    let pairs: BTreeMap<String, String> = match serde_json::from_slice(&body) {
        Ok(pairs) => pairs,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body must be a JSON object of string values: {e}"),
            )
        }
    };
    if pairs.is_empty() {
        return StatusCode::OK.into_response();
    }
    propose(&state, &uri, Command::Set { pairs }).await
}

async fn delete_key(State(state): State<ApiState>, uri: Uri, Path(key): Path<String>) -> Response {
    propose(&state, &uri, Command::Delete { key }).await
}

async fn get_key(State(state): State<ApiState>, uri: Uri, Path(key): Path<String>) -> Response {
    // Without a leader a read barrier could only time out.
    if state.raft.status().leader_id == 0 {
        return no_leader();
    }
    if let Err(e) = state.raft.read_barrier().await {
        return refused(&state, &uri, e);
    }
    match state.kv.get(&key) {
        Some(value) => Json(BTreeMap::from([(key, value)])).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "key not found", "key": key })),
        )
            .into_response(),
    }
}

async fn join(State(state): State<ApiState>, uri: Uri, body: Bytes) -> Response {
    let request: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"id\": N, \"addr\": \"host:port\"}}: {e}"),
            )
        }
    };
    if request.id == 0 || request.addr.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "id must be positive and addr non-empty",
        );
    }
    let voters = sorted(state.raft.status().conf_state.voters);
    if voters.contains(&request.id) {
        return Json(json!({ "voters": voters, "already_member": true })).into_response();
    }
    let addrs = MemberAddrs {
        raft: request.addr,
        http: request.haddr,
    };
    let context = match serde_json::to_vec(&addrs) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::AddNode);
    single.node_id = request.id;
    let mut change = ConfChangeV2::default();
    change.mut_changes().push(single);
    change.context = context;
    match state.raft.change_membership(change).await {
        Ok(conf_state) => {
            tracing::info!(id = request.id, raft_addr = %addrs.raft, "member added");
            Json(json!({ "voters": sorted(conf_state.voters) })).into_response()
        }
        Err(e) => refused(&state, &uri, e),
    }
}

async fn status(State(state): State<ApiState>) -> Response {
    let s = state.raft.status();
    let leader = (s.leader_id != 0).then_some(s.leader_id);
    Json(json!({
        "id": s.id,
        "role": s.role.to_string(),
        "term": s.term,
        "leader": leader,
        "leader_http": leader.and_then(|l| state.addresses.http_addr(l)),
        "commit": s.commit,
        "applied": s.applied,
        "last_index": s.last_index,
        "voters": sorted(s.conf_state.voters),
        "learners": sorted(s.conf_state.learners),
    }))
    .into_response()
}

async fn shutdown(State(state): State<ApiState>) -> Response {
    tracing::info!("shutdown requested over HTTP");
    state.shutdown.signal();
    Json(json!({ "shutdown": true })).into_response()
}
