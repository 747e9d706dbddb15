//! hraftd's `/setup` and `/shutdown` bodies: who the members of a new cluster are.
//!
//! ```json
//! {
//!   "leaderAddr": "127.0.0.1:7150", "leaderRaftAddr": "127.0.0.1:7151", "leaderId": "1",
//!   "clientAddrs": ["127.0.0.1:8150", "127.0.0.1:9150"],
//!   "clientRaftAddrs": ["127.0.0.1:8151", "127.0.0.1:9151"],
//!   "clientIds": ["2", "3"]
//! }
//! ```
//!
//! The leader and the clients together are the initial voters. Each id is a string,
//! mapped to a raft id by [`crate::ids::raft_id`]. A node finds itself in the list by its
//! raft address, so the name it was started with (`-id node1`) need not match the id the
//! body gives it (`"leaderId": "1"`).
//!
//! A node that has been set up keeps the setup and its own raft id in
//! `<data dir>/setup.json`, written and synced before it answers or bootstraps its log,
//! so it restarts into the same cluster without a second `/setup`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::ids::raft_id;
use crate::store::MemberAddrs;

/// The fields of a setup body.
pub const FIELDS: [&str; 6] = [
    "leaderAddr",
    "leaderRaftAddr",
    "leaderId",
    "clientAddrs",
    "clientRaftAddrs",
    "clientIds",
];

/// One member named by a setup body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The id string as given (`"1"`).
    pub name: String,
    /// Its raft id ([`raft_id`] of the name).
    pub id: u64,
    /// HTTP API address, `host:port`.
    pub http: String,
    /// Raft address, `host:port`.
    pub raft: String,
}

/// A validated setup (or shutdown) body: the leader first, then the clients in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// Every member; `members[0]` is the one the body calls the leader.
    pub members: Vec<Member>,
}

/// Why a body is not a usable setup; each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The body is not a JSON object.
    #[error("the body must be a JSON object: {0}")]
    NotJson(String),
    /// A required field is absent.
    #[error("missing field {0:?}")]
    Missing(&'static str),
    /// A field has the wrong type or an unusable value.
    #[error("field {field:?}: {reason}")]
    Invalid {
        /// The field (with an index for list items, e.g. `clientIds[1]`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The three client lists differ in length.
    #[error("clientAddrs, clientRaftAddrs and clientIds must have the same length (got {addrs}, {raft_addrs}, {ids})")]
    Lengths {
        /// Length of `clientAddrs`.
        addrs: usize,
        /// Length of `clientRaftAddrs`.
        raft_addrs: usize,
        /// Length of `clientIds`.
        ids: usize,
    },
    /// Two members share an id, an address, or a raft id.
    #[error("field {field:?}: {value:?} is listed twice")]
    Duplicate {
        /// The field of the second occurrence.
        field: String,
        /// The repeated value.
        value: String,
    },
}

impl Setup {
    /// Parses and checks a body: every field present and of the right type, lists of one
    /// length, ids valid and distinct, addresses non-empty and distinct.
    pub fn parse(body: &[u8]) -> Result<Self, SetupError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| SetupError::NotJson(e.to_string()))?;
        let Value::Object(fields) = value else {
            return Err(SetupError::NotJson("not an object".into()));
        };
        let string = |name: &'static str| -> Result<String, SetupError> {
            match fields.get(name) {
                None | Some(Value::Null) => Err(SetupError::Missing(name)),
                Some(v) => as_string(v, name),
            }
        };
        let list = |name: &'static str| -> Result<Vec<String>, SetupError> {
            match fields.get(name) {
                None | Some(Value::Null) => Err(SetupError::Missing(name)),
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| as_string(v, &format!("{name}[{i}]")))
                    .collect(),
                Some(_) => Err(SetupError::Invalid {
                    field: name.into(),
                    reason: "must be a list of strings".into(),
                }),
            }
        };
        let leader = (
            string("leaderId")?,
            string("leaderAddr")?,
            string("leaderRaftAddr")?,
        );
        let (ids, addrs, raft_addrs) = (
            list("clientIds")?,
            list("clientAddrs")?,
            list("clientRaftAddrs")?,
        );
        if ids.len() != addrs.len() || ids.len() != raft_addrs.len() {
            return Err(SetupError::Lengths {
                addrs: addrs.len(),
                raft_addrs: raft_addrs.len(),
                ids: ids.len(),
            });
        }
        let named = std::iter::once(("leader", None, leader)).chain(
            ids.into_iter()
                .zip(addrs)
                .zip(raft_addrs)
                .enumerate()
                .map(|(i, ((id, http), raft))| ("client", Some(i), (id, http, raft))),
        );
        let mut members: Vec<Member> = Vec::new();
        for (role, index, (name, http, raft)) in named {
            let field = |leader: &str, client: &str| match index {
                None => format!("{role}{leader}"),
                Some(i) => format!("{role}{client}[{i}]"),
            };
            let id = raft_id(&name).map_err(|e| SetupError::Invalid {
                field: field("Id", "Ids"),
                reason: e.to_string(),
            })?;
            for (value, field) in [
                (&http, field("Addr", "Addrs")),
                (&raft, field("RaftAddr", "RaftAddrs")),
            ] {
                if value.trim().is_empty() {
                    return Err(SetupError::Invalid {
                        field,
                        reason: "must be host:port".into(),
                    });
                }
            }
            let member = Member {
                name: name.trim().to_string(),
                id,
                http: http.trim().to_string(),
                raft: raft.trim().to_string(),
            };
            for seen in &members {
                let repeated = if seen.id == member.id {
                    Some((field("Id", "Ids"), member.name.clone()))
                } else if seen.http == member.http || seen.raft == member.http {
                    Some((field("Addr", "Addrs"), member.http.clone()))
                } else if seen.raft == member.raft || seen.http == member.raft {
                    Some((field("RaftAddr", "RaftAddrs"), member.raft.clone()))
                } else {
                    None
                };
                if let Some((field, value)) = repeated {
                    return Err(SetupError::Duplicate { field, value });
                }
            }
            members.push(member);
        }
        Ok(Self { members })
    }

    /// The member whose raft address is `raddr` (the flag) or `bound` (the listener's
    /// address), if any.
    pub fn find_self(&self, raddr: &str, bound: SocketAddr) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| same_address(&m.raft, raddr) || same_address(&m.raft, &bound.to_string()))
    }

    /// The members' addresses, as the replicated state keeps them.
    pub fn addresses(&self) -> BTreeMap<u64, MemberAddrs> {
        self.members
            .iter()
            .map(|m| {
                (
                    m.id,
                    MemberAddrs {
                        raft: m.raft.clone(),
                        http: Some(m.http.clone()),
                    },
                )
            })
            .collect()
    }

    /// The raft ids of the members, sorted.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids
    }
}

fn as_string(value: &Value, field: &str) -> Result<String, SetupError> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        Value::String(_) => Err(SetupError::Invalid {
            field: field.into(),
            reason: "must not be empty".into(),
        }),
        other => Err(SetupError::Invalid {
            field: field.into(),
            reason: format!("must be a string, not {other}"),
        }),
    }
}

/// Whether two `host:port` strings name the same address: equal as text, or equal
/// once parsed as socket addresses (`127.0.0.1:7151` and `127.0.0.1:07151`).
pub fn same_address(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    if a == b {
        return true;
    }
    match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The file in a data directory that records the setup that formed this node's cluster.
const SETUP_FILE: &str = "setup.json";

/// A setup as a node records it: its own raft id and the members.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    /// This node's raft id.
    pub id: u64,
    /// Every member, the leader first.
    pub members: Vec<Member>,
}

impl Recorded {
    /// The setup it records.
    pub fn setup(&self) -> Setup {
        Setup {
            members: self.members.clone(),
        }
    }
}

/// The setup recorded in `data_dir` by an earlier `/setup`, if there is one. A file
/// that does not parse is an error naming it.
pub fn recorded(data_dir: &Path) -> Result<Option<Recorded>, String> {
    let path = data_dir.join(SETUP_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<Recorded>(&bytes) {
            Ok(r) if r.id != 0 && r.members.iter().any(|m| m.id == r.id) => Ok(Some(r)),
            Ok(_) => Err(format!(
                "{}: this node's id is not among the members",
                path.display()
            )),
            Err(e) => Err(format!("{}: {e}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Records `setup` with this node's raft `id` in `data_dir`, durably (file written,
/// synced, renamed into place, directory synced) before returning.
pub fn record(data_dir: &Path, id: u64, setup: &Setup) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join(format!("{SETUP_FILE}.tmp"));
    let recorded = Recorded {
        id,
        members: setup.members.clone(),
    };
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(&recorded)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(SETUP_FILE))?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const SEED: &str = r#"{
        "leaderAddr": "127.0.0.1:7150",
        "leaderRaftAddr": "127.0.0.1:7151",
        "leaderId": "1",
        "clientAddrs": ["127.0.0.1:8150", "127.0.0.1:9150"],
        "clientRaftAddrs": ["127.0.0.1:8151", "127.0.0.1:9151"],
        "clientIds": ["2", "3"]
    }"#;

    fn without(field: &str) -> String {
        let mut v: Value = serde_json::from_str(SEED).unwrap();
        v.as_object_mut().unwrap().remove(field);
        v.to_string()
    }

    fn with(field: &str, value: Value) -> String {
        let mut v: Value = serde_json::from_str(SEED).unwrap();
        v.as_object_mut().unwrap().insert(field.into(), value);
        v.to_string()
    }

    #[test]
    fn parses_the_seed_body() {
        let setup = Setup::parse(SEED.as_bytes()).unwrap();
        assert_eq!(setup.ids(), vec![1, 2, 3]);
        assert_eq!(setup.members[0].http, "127.0.0.1:7150");
        assert_eq!(setup.members[2].raft, "127.0.0.1:9151");
        let me = setup
            .find_self("127.0.0.1:8151", "0.0.0.0:1".parse().unwrap())
            .unwrap();
        assert_eq!(me.name, "2");
        // By the bound address when the flag says something else.
        let me = setup
            .find_self("localhost:9151", "127.0.0.1:9151".parse().unwrap())
            .unwrap();
        assert_eq!(me.id, 3);
        assert!(setup
            .find_self("127.0.0.1:1", "127.0.0.1:2".parse().unwrap())
            .is_none());
        assert_eq!(
            setup.addresses()[&2].http.as_deref(),
            Some("127.0.0.1:8150")
        );
    }

    #[test]
    fn every_missing_field_is_named() {
        for field in FIELDS {
            assert_eq!(
                Setup::parse(without(field).as_bytes()),
                Err(SetupError::Missing(field)),
                "{field}"
            );
        }
    }

    #[test]
    fn malformed_fields_are_named() {
        let field_of = |body: String| match Setup::parse(body.as_bytes()) {
            Err(SetupError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(with("leaderId", Value::from(1))), "leaderId");
        assert_eq!(field_of(with("leaderId", Value::from("0"))), "leaderId");
        assert_eq!(field_of(with("leaderAddr", Value::from(" "))), "leaderAddr");
        assert_eq!(field_of(with("clientIds", Value::from("2"))), "clientIds");
        assert_eq!(
            field_of(with("clientIds", serde_json::json!(["2", 3]))),
            "clientIds[1]"
        );
        assert_eq!(
            field_of(with("clientRaftAddrs", serde_json::json!(["a:1", ""]))),
            "clientRaftAddrs[1]"
        );
        assert!(matches!(
            Setup::parse(with("clientIds", serde_json::json!(["2"])).as_bytes()),
            Err(SetupError::Lengths { ids: 1, .. })
        ));
        assert!(matches!(Setup::parse(b"[1]"), Err(SetupError::NotJson(_))));
        assert!(matches!(Setup::parse(b"{"), Err(SetupError::NotJson(_))));
    }

    #[test]
    fn duplicates_are_refused() {
        let dup = |field: &str, value: Value| match Setup::parse(with(field, value).as_bytes()) {
            Err(SetupError::Duplicate { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            dup("clientIds", serde_json::json!(["2", "1"])),
            "clientIds[1]"
        );
        assert_eq!(
            dup(
                "clientAddrs",
                serde_json::json!(["127.0.0.1:8150", "127.0.0.1:8150"])
            ),
            "clientAddrs[1]"
        );
        assert_eq!(
            dup(
                "clientRaftAddrs",
                serde_json::json!(["127.0.0.1:7151", "x:1"])
            ),
            "clientRaftAddrs[0]"
        );
    }

    #[test]
    fn a_single_node_setup_has_empty_client_lists() {
        let body = r#"{"leaderAddr":"a:1","leaderRaftAddr":"a:2","leaderId":"node1",
            "clientAddrs":[],"clientRaftAddrs":[],"clientIds":[]}"#;
        let setup = Setup::parse(body.as_bytes()).unwrap();
        assert_eq!(setup.members.len(), 1);
        assert_eq!(setup.members[0].id, raft_id("node1").unwrap());
    }

    #[test]
    fn the_recorded_setup_survives_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded(dir.path()).unwrap(), None);
        let setup = Setup::parse(SEED.as_bytes()).unwrap();
        record(dir.path(), 2, &setup).unwrap();
        let back = recorded(dir.path()).unwrap().unwrap();
        assert_eq!((back.id, back.setup()), (2, setup.clone()));
        record(dir.path(), 9, &setup).unwrap();
        assert!(recorded(dir.path())
            .unwrap_err()
            .contains("not among the members"));
        std::fs::write(dir.path().join(SETUP_FILE), "x").unwrap();
        assert!(recorded(dir.path()).unwrap_err().contains("setup.json"));
    }

    #[test]
    fn addresses_compare_as_text_or_sockets() {
        assert!(same_address("127.0.0.1:7151", " 127.0.0.1:7151"));
        assert!(same_address("[::1]:80", "[0:0:0:0:0:0:0:1]:80"));
        assert!(!same_address("127.0.0.1:7151", "127.0.0.1:7152"));
        assert!(!same_address("localhost:1", "127.0.0.1:1"));
    }
}
