//! The replicated state machine: an ordered string-to-string map changed by
//! [`Command`]s, plus the addresses of members that joined at run time.
//!
//! Commands and snapshots are JSON (`serde_json`). A snapshot is the whole
//! [`KvState`]: the key-value map and the address book of joined members. The address
//! book is replicated state on purpose: a member added through `POST /join` announces
//! its addresses in the membership change itself, so every replica (and every replica
//! restored from a snapshot later) learns where to reach it.
//!
//! The live map is a persistent B-tree ([`imbl::OrdMap`]) of shared strings: taking a
//! snapshot copies a pointer, and the apply task goes on while the driver serialises
//! that copy on a blocking thread ([`craft_core::SnapshotJob`]). A write after it copies
//! only the few tree nodes on its path, never the values.

use craft_core::sync::RwLockExt;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use craft_core::raft::eraftpb::{ConfChangeType, Snapshot};
use craft_core::{Committed, CommittedKind, SnapshotJob, StateMachine};
use imbl::OrdMap;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Serialize, Serializer};

/// A change to the key-value map, as proposed to raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Sets every key of `pairs` to its value, atomically.
    Set {
        /// Keys and their new values.
        pairs: BTreeMap<String, String>,
    },
    /// Removes `key` (a no-op when absent).
    Delete {
        /// The key to remove.
        key: String,
    },
}

impl Command {
    /// The bytes proposed to raft.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Reads a command back from a committed entry's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Where a member can be reached; carried as JSON in the context of the membership
/// change that adds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddrs {
    /// Raft (gRPC) address, `host:port`.
    pub raft: String,
    /// HTTP API address, `host:port`, if the member announced one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// Everything the state machine holds, as plain maps; also its snapshot format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    /// The key-value map.
    pub data: BTreeMap<String, String>,
    /// Addresses of members added at run time, by raft id.
    #[serde(default)]
    pub members: BTreeMap<u64, MemberAddrs>,
}

impl KvState {
    /// Serialises the state as a snapshot.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Reads a snapshot. Empty bytes are the empty state.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(bytes)
    }
}

/// The state as the state machine holds it: cheap to clone (a snapshot's capture), and
/// serialised exactly as the [`KvState`] with the same contents.
#[derive(Debug, Clone, Default)]
struct LiveState {
    /// The key-value map; keys and values are shared, so copying a tree node copies
    /// pointers.
    data: OrdMap<Arc<str>, Arc<str>>,
    /// Addresses of members added at run time (a handful), by raft id.
    members: BTreeMap<u64, MemberAddrs>,
}

impl From<KvState> for LiveState {
    fn from(state: KvState) -> Self {
        Self {
            data: state
                .data
                .into_iter()
                .map(|(k, v)| (Arc::from(k), Arc::from(v)))
                .collect(),
            members: state.members,
        }
    }
}

impl From<&LiveState> for KvState {
    fn from(live: &LiveState) -> Self {
        Self {
            data: live
                .data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            members: live.members.clone(),
        }
    }
}

impl Serialize for LiveState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The map as a JSON object, in key order like a `BTreeMap`'s.
        struct Data<'a>(&'a OrdMap<Arc<str>, Arc<str>>);
        impl Serialize for Data<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(k, v)| (&**k, &**v)))
            }
        }
        let mut state = serializer.serialize_struct("KvState", 2)?;
        state.serialize_field("data", &Data(&self.data))?;
        state.serialize_field("members", &self.members)?;
        state.end()
    }
}

/// A committed command the state machine could not apply. Every replica rejects it
/// alike, so the replicas stay equal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("command at index {index} rejected: {reason}")]
pub struct Rejected {
    /// Log index of the entry.
    pub index: u64,
    /// Why it was rejected.
    pub reason: String,
}

/// What a proposer learns once its command is applied.
pub type Outcome = Result<(), Rejected>;

/// Called with a member's id and its addresses when one joins (`Some`) or leaves
/// (`None`), and for every member in a restored snapshot.
pub type MemberHook = Box<dyn FnMut(u64, Option<&MemberAddrs>) + Send>;

/// The key-value [`StateMachine`]. The driver owns it; readers use a [`KvReader`].
pub struct KvStateMachine {
    /// State shared with readers.
    state: Arc<RwLock<LiveState>>,
    /// Told about membership changes, to update the transport.
    on_member: Option<MemberHook>,
}

impl std::fmt::Debug for KvStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStateMachine").finish_non_exhaustive()
    }
}

impl Default for KvStateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl KvStateMachine {
    /// An empty state machine.
    pub fn new() -> Self {
        Self {
            state: Arc::new(RwLock::new(LiveState::default())),
            on_member: None,
        }
    }

    /// Calls `hook` whenever a member's addresses are learned or forgotten.
    pub fn with_member_hook(mut self, hook: MemberHook) -> Self {
        self.on_member = Some(hook);
        self
    }

    /// A read handle on the state.
    pub fn reader(&self) -> KvReader {
        KvReader {
            state: self.state.clone(),
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, LiveState> {
        // Every mutation below completes before it could panic, so a poisoned lock
        // still guards consistent data.
        self.state.write_locked()
    }

    fn apply_now(&mut self, entry: &Committed) -> Outcome {
        match &entry.kind {
            CommittedKind::Empty => Ok(()),
            CommittedKind::Normal { data, .. } => {
                let command = Command::decode(data).map_err(|e| Rejected {
                    index: entry.index,
                    reason: e.to_string(),
                })?;
                let mut state = self.write();
                match command {
                    Command::Set { pairs } => {
                        for (k, v) in pairs {
                            state.data.insert(Arc::from(k), Arc::from(v));
                        }
                    }
                    Command::Delete { key } => {
                        state.data.remove(key.as_str());
                    }
                }
                Ok(())
            }
            CommittedKind::ConfChange { change, .. } => {
                let changes = change.get_changes();
                // The context names the addresses of the one member a change adds.
                let addrs = match changes {
                    [_] if !change.context.is_empty() => {
                        serde_json::from_slice::<MemberAddrs>(&change.context).ok()
                    }
                    _ => None,
                };
                for single in changes {
                    let id = single.node_id;
                    match single.get_change_type() {
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                            if let Some(addrs) = &addrs {
                                self.write().members.insert(id, addrs.clone());
                                if let Some(hook) = &mut self.on_member {
                                    hook(id, Some(addrs));
                                }
                            }
                        }
                        ConfChangeType::RemoveNode => {
                            self.write().members.remove(&id);
                            if let Some(hook) = &mut self.on_member {
                                hook(id, None);
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

impl StateMachine for KvStateMachine {
    type Response = Outcome;

    fn apply(&mut self, entry: &Committed) -> impl Future<Output = Outcome> + Send {
        std::future::ready(self.apply_now(entry))
    }

    fn snapshot(&mut self) -> SnapshotJob {
        // A pointer copy under the lock; the serialisation runs on a blocking thread.
        let captured = self.state.read_locked().clone();
        SnapshotJob::new(move || serde_json::to_vec(&captured).map_err(|e| e.to_string()))
    }

    fn restore(&mut self, snapshot: &Snapshot) -> impl Future<Output = Result<(), String>> + Send {
        let result = KvState::decode(&snapshot.data)
            .map_err(|e| {
                format!(
                    "snapshot at index {} is not a key-value state: {e}",
                    snapshot.get_metadata().index
                )
            })
            .map(|restored| {
                if let Some(hook) = &mut self.on_member {
                    for (id, addrs) in &restored.members {
                        hook(*id, Some(addrs));
                    }
                }
                *self.write() = LiveState::from(restored);
            });
        std::future::ready(result)
    }

    fn check_snapshot(data: &[u8]) -> Result<(), String> {
        KvState::decode(data)
            .map(drop)
            .map_err(|e| format!("not a key-value state: {e}"))
    }
}

/// A cheap, cloneable read handle on the state machine's state. Reads are local: call
/// [`craft_core::NodeHandle::read_barrier`] first for a linearizable read.
#[derive(Debug, Clone)]
pub struct KvReader {
    /// State shared with the state machine.
    state: Arc<RwLock<LiveState>>,
}

impl KvReader {
    fn read(&self) -> RwLockReadGuard<'_, LiveState> {
        self.state.read_locked()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<String> {
        self.read().data.get(key).map(|v| v.to_string())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.read().data.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.read().data.is_empty()
    }

    /// The addresses a member announced when it joined.
    pub fn member(&self, id: u64) -> Option<MemberAddrs> {
        self.read().members.get(&id).cloned()
    }

    /// A copy of the whole state.
    pub fn state(&self) -> KvState {
        // The lock is held for a pointer copy only.
        let live = self.read().clone();
        KvState::from(&live)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use craft_core::raft::eraftpb::{ConfChangeSingle, ConfChangeV2};
    use craft_core::{make_snapshot, voters};
    use std::sync::Mutex;

    fn normal(index: u64, command: &Command) -> Committed {
        Committed {
            index,
            term: 1,
            kind: CommittedKind::Normal {
                data: command.encode().unwrap(),
                context: Vec::new(),
            },
        }
    }

    fn add_node(index: u64, id: u64, addrs: &MemberAddrs) -> Committed {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::AddNode);
        single.node_id = id;
        let mut change = ConfChangeV2::default();
        change.mut_changes().push(single);
        change.context = serde_json::to_vec(addrs).unwrap();
        Committed {
            index,
            term: 1,
            kind: CommittedKind::ConfChange {
                change,
                conf_state: voters([1, id]),
            },
        }
    }

    fn pairs(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn set_and_delete_change_the_map() {
        let mut sm = KvStateMachine::new();
        let reader = sm.reader();
        let set = Command::Set {
            pairs: pairs(&[("a", "1"), ("b", "2")]),
        };
        assert_eq!(sm.apply(&normal(2, &set)).await, Ok(()));
        assert_eq!(reader.get("a").as_deref(), Some("1"));
        let delete = Command::Delete { key: "a".into() };
        assert_eq!(sm.apply(&normal(3, &delete)).await, Ok(()));
        assert_eq!(reader.get("a"), None);
        assert_eq!(reader.len(), 1);
    }

    #[tokio::test]
    async fn undecodable_command_is_rejected_without_change() {
        let mut sm = KvStateMachine::new();
        let entry = Committed {
            index: 7,
            term: 1,
            kind: CommittedKind::Normal {
                data: b"not json".to_vec(),
                context: Vec::new(),
            },
        };
        let err = sm.apply(&entry).await.unwrap_err();
        assert_eq!(err.index, 7);
        assert!(sm.reader().is_empty());
    }

    #[tokio::test]
    async fn snapshot_round_trips_data_and_members() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook_seen = seen.clone();
        let mut sm = KvStateMachine::new().with_member_hook(Box::new(move |id, addrs| {
            hook_seen.lock().unwrap().push((id, addrs.cloned()));
        }));
        let addrs = MemberAddrs {
            raft: "127.0.0.1:9151".into(),
            http: Some("127.0.0.1:9150".into()),
        };
        sm.apply(&normal(
            2,
            &Command::Set {
                pairs: pairs(&[("k", "v")]),
            },
        ))
        .await
        .unwrap();
        sm.apply(&add_node(3, 4, &addrs)).await.unwrap();
        assert_eq!(seen.lock().unwrap().as_slice(), &[(4, Some(addrs.clone()))]);
        let data = sm.snapshot().run().unwrap();

        let restored_seen = Arc::new(Mutex::new(Vec::new()));
        let hook_seen = restored_seen.clone();
        let mut other = KvStateMachine::new().with_member_hook(Box::new(move |id, _| {
            hook_seen.lock().unwrap().push(id);
        }));
        other
            .restore(&make_snapshot(3, 1, voters([1, 4]), data))
            .await
            .unwrap();
        assert_eq!(other.reader().state(), sm.reader().state());
        assert_eq!(other.reader().member(4), Some(addrs));
        assert_eq!(restored_seen.lock().unwrap().as_slice(), &[4]);
    }

    #[tokio::test]
    async fn a_snapshot_is_the_state_when_taken_not_when_serialised() {
        let mut sm = KvStateMachine::new();
        let set = |items: &[(&str, &str)]| Command::Set {
            pairs: pairs(items),
        };
        sm.apply(&normal(2, &set(&[("a", "1")]))).await.unwrap();
        let job = sm.snapshot();
        assert!(
            !job.is_ready(),
            "the map must be serialised off the apply task"
        );
        sm.apply(&normal(3, &set(&[("a", "2"), ("b", "3")])))
            .await
            .unwrap();
        sm.apply(&normal(4, &Command::Delete { key: "a".into() }))
            .await
            .unwrap();
        let taken = KvState::decode(&job.run().unwrap()).unwrap();
        assert_eq!(taken.data, pairs(&[("a", "1")]));
        assert_eq!(sm.reader().state().data, pairs(&[("b", "3")]));
    }

    #[test]
    fn the_live_state_serialises_exactly_as_a_kv_state() {
        let state = KvState {
            data: pairs(&[("z", "last"), ("a", "first"), ("k\"q", "ü\n")]),
            members: BTreeMap::from([(
                4,
                MemberAddrs {
                    raft: "127.0.0.1:9151".into(),
                    http: None,
                },
            )]),
        };
        let live = LiveState::from(state.clone());
        assert_eq!(serde_json::to_vec(&live).unwrap(), state.encode().unwrap());
        assert_eq!(KvState::from(&live), state);
        assert_eq!(
            serde_json::to_vec(&LiveState::default()).unwrap(),
            KvState::default().encode().unwrap()
        );
    }

    #[tokio::test]
    async fn empty_snapshot_data_is_the_empty_state() {
        let mut sm = KvStateMachine::new();
        sm.restore(&make_snapshot(1, 1, voters([1]), Vec::new()))
            .await
            .unwrap();
        assert!(sm.reader().is_empty());
        assert!(sm
            .restore(&make_snapshot(1, 1, voters([1]), b"[1]".to_vec()))
            .await
            .is_err());
    }
}
