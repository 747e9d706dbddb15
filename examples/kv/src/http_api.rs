//! The HTTP API, as hraftd's:
//!
//! | Request | Effect |
//! |---|---|
//! | `POST /key` with `{"k":"v",...}` | sets each key, atomically (leader only) |
//! | `GET /key/{key}` | `{"key":"value"}`, or 404; linearizable on any member (`?consistency=stale`: this member's applied state, no barrier) |
//! | `DELETE /key/{key}` | removes the key (leader only) |
//! | `POST /join` with `{"id":4,"addr":"host:port","haddr":"host:port"}` | adds a voter (leader only) |
//! | `GET /status` | role, term, leader, commit, applied, membership |
//! | `POST /setup` with hraftd's body | forms a cluster of the listed nodes (see [`crate::setup_api`]); on a node already set up with the same members, a no-op |
//! | `POST /shutdown` | stops this node gracefully; with hraftd's setup body, every listed node |
//!
//! A write sent to a follower is answered `307 Temporary Redirect` to the same path on
//! the leader when the leader's HTTP address is known, otherwise `503` with
//! `{"leader": id}` (or `null` when no leader is known). A cluster forms either from the
//! `--peers` list or through hraftd's `/setup` (see [`crate::node`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use craft_core::raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use craft_core::{NodeHandle, ProposeError};
use serde::Deserialize;
use serde_json::json;

use crate::client::ApiClient;
use crate::peers::AddressBook;
use crate::setup::{same_address, Setup};
use crate::setup_api::{bad_setup, conflict, is_forwarded, pass_on, shutdown_members, summarise};
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
    /// Members' raft addresses given at start (`--peers`), to compare with a `/setup`.
    pub raft_addresses: Arc<BTreeMap<u64, String>>,
    /// This node's raft address as given (`-raddr`).
    pub raft_addr: String,
    /// The raft listener's address.
    pub raft_bound: SocketAddr,
    /// Calls to other members' APIs.
    pub client: ApiClient,
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
        .route("/setup", post(setup))
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

/// The query of a read: `?consistency=stale` reads this node's applied state without a
/// read barrier (fast, may be stale, answers without a leader).
#[derive(Debug, Default, Deserialize)]
struct ReadQuery {
    /// `linearizable` (the default) or `stale`.
    #[serde(default)]
    consistency: Option<String>,
}

async fn get_key(
    State(state): State<ApiState>,
    uri: Uri,
    Path(key): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Response {
    let consistency = query.consistency;
    match consistency.as_deref() {
        None | Some("linearizable") => {
            // Without a leader a read barrier could only time out.
            if state.raft.status().leader_id == 0 {
                return no_leader();
            }
            if let Err(e) = state.raft.read_barrier().await {
                return refused(&state, &uri, e);
            }
        }
        Some("stale") => {}
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("consistency must be linearizable or stale, not {other:?}"),
            )
        }
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

async fn shutdown(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    shutdown_members(
        &state.client,
        &state.shutdown,
        &state.raft_addr,
        state.raft_bound,
        &headers,
        body,
    )
    .await
}

/// `POST /setup` on a node that is already a member: a no-op when the body names this
/// cluster (same voters, same raft addresses, this node under its own id), passed on
/// to the other members so that those a first attempt missed are set up; else `409`.
async fn setup(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let setup = match Setup::parse(&body) {
        Ok(setup) => setup,
        Err(e) => return bad_setup(&e),
    };
    let status = state.raft.status();
    let Some(me) = setup.find_self(&state.raft_addr, state.raft_bound).cloned() else {
        return conflict(format!(
            "this node's raft address {} is not among the members",
            state.raft_addr
        ));
    };
    if me.id != status.id {
        return conflict(format!(
            "this node is raft id {} of a formed cluster; the setup names it {:?} (raft id {})",
            status.id, me.name, me.id
        ));
    }
    let voters = sorted(status.conf_state.voters.clone());
    if voters != setup.ids() {
        return conflict(format!(
            "this cluster is formed with voters {voters:?}; the setup names {:?}",
            setup.ids()
        ));
    }
    for member in setup.members.iter().filter(|m| m.id != status.id) {
        let known = state
            .raft_addresses
            .get(&member.id)
            .cloned()
            .or_else(|| state.kv.member(member.id).map(|m| m.raft));
        if !known.is_some_and(|known| same_address(&known, &member.raft)) {
            return conflict(format!(
                "member {:?} (raft id {}) is not at raft address {} in this cluster",
                member.name, member.id, member.raft
            ));
        }
    }
    let passed = if is_forwarded(&headers) {
        Vec::new()
    } else {
        pass_on(&state.client, &setup, Some(me.id), "/setup", body).await
    };
    summarise("set_up", Some(&me), true, &passed)
}
