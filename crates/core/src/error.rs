//! Errors of the replication engine.

use raft::eraftpb::MessageType;

/// What can go wrong inside a replica or its driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The raft library refused an operation, or storage failed underneath it.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A peer's message failed the checks in front of raft ([`crate::gate`]) and was
    /// dropped.
    #[error("{} from raft id {from} refused: {reason}", type_name(*.kind))]
    Refused {
        /// The claimed sender.
        from: u64,
        /// The message type's number: a [`MessageType`], or one raft does not know.
        kind: i32,
        /// Which check it failed.
        reason: crate::gate::Rejection,
    },
    /// A committed entry could not be decoded.
    #[error("committed entry {index} is corrupt: {reason}")]
    Corrupt {
        /// Log index of the entry.
        index: u64,
        /// Decoder's complaint.
        reason: String,
    },
    /// A snapshot was requested while handed-out entries were still unapplied.
    #[error("snapshot requested at applied {applied} before handed-out {handed_out} was applied")]
    SnapshotBehind {
        /// Applied index.
        applied: u64,
        /// Handed-out index.
        handed_out: u64,
    },
    /// The state machine failed to restore a snapshot.
    #[error("state machine restore failed: {0}")]
    Restore(String),
    /// The driver task is gone.
    #[error("raft node stopped")]
    Stopped,
    /// The task applying committed entries ended (the state machine panicked).
    #[error("the state machine's apply task stopped")]
    ApplyStopped,
}

/// Why a proposal (command, membership change, read) did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is the current one if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Raft id of the leader this node knows of.
        leader: Option<u64>,
    },
    /// Raft dropped the proposal (leadership changed, a transfer is running, or another
    /// membership change is pending). Retrying is safe for idempotent commands only.
    #[error("proposal dropped")]
    Dropped,
    /// No answer within the deadline; the command may or may not still commit.
    #[error("timed out")]
    Timeout,
    /// The node is shutting down.
    #[error("node stopped")]
    Stopped,
    /// Raft rejected the proposal.
    #[error("raft rejected the proposal: {0}")]
    Raft(String),
}

/// `MsgAppend`, or `type 99` for a number raft does not know.
fn type_name(kind: i32) -> String {
    match MessageType::from_i32(kind) {
        Some(t) => format!("{t:?}"),
        None => format!("type {kind}"),
    }
}
