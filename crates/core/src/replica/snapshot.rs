//! Local snapshots: when one is due, staging it with the compaction behind it, and the
//! writes that carry it.

use super::*;

impl<S: LogStore> Replica<S> {
    /// Whether the entries handed out so far call for a snapshot once applied (every
    /// `snapshot_interval` entries, and whenever the membership changed since the latest
    /// snapshot: a member added can only start from a snapshot that includes it). Returns the index to take it at (the last
    /// entry handed out) and the membership as of that entry; the caller snapshots the
    /// state machine right after applying that entry and gives the data to
    /// [`Replica::stage_snapshot`]. Asks at most once per index.
    pub fn take_snapshot_request(&mut self) -> Option<(u64, ConfState)> {
        let at = self.handed_out;
        if at <= self.snapshot_requested {
            return None;
        }
        let due = at >= self.snapshot_requested + self.cfg.snapshot_interval.max(1)
            || self.conf_state != self.snapshot_conf_state;
        if !due {
            return None;
        }
        self.snapshot_requested = at;
        Some((at, self.conf_state.clone()))
    }

    /// Stages a snapshot of the state machine taken right after applying `index`, with
    /// membership `conf_state` as of that entry, and the compaction behind it. Written
    /// with the next Ready or [`Replica::flush`]; one at or below the latest is ignored.
    pub fn stage_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), Error> {
        self.stage_local(index, conf_state, data, None)
    }

    /// [`Replica::stage_snapshot`] for data the store's [`crate::SnapshotStager`] has
    /// already made durable: the next write records it without carrying the bytes.
    pub fn stage_staged_snapshot(
        &mut self,
        conf_state: ConfState,
        staged: StagedSnapshot,
    ) -> Result<(), Error> {
        self.stage_local(staged.index, conf_state, Vec::new(), Some(staged))
    }

    pub(super) fn stage_local(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
        staged: Option<StagedSnapshot>,
    ) -> Result<(), Error> {
        if index <= self.snapshot_index {
            return Ok(());
        }
        if index > self.applied {
            return Err(Error::SnapshotBehind {
                applied: self.applied,
                handed_out: index,
            });
        }
        let term = self.raw.raft.raft_log.term(index)?;
        let compact_to = index.saturating_sub(self.cfg.log_retain);
        let snapshot = make_snapshot(index, term, conf_state.clone(), data);
        self.staged_snapshot = Some(LocalSnapshot {
            snapshot,
            compact_to,
            staged,
        });
        self.snapshot_index = index;
        self.snapshot_requested = self.snapshot_requested.max(index);
        self.snapshot_conf_state = conf_state;
        Ok(())
    }

    /// Whether a snapshot or commit index is staged and not yet written.
    pub fn has_staged(&self) -> bool {
        self.staged_snapshot.is_some() || self.staged_commit.is_some()
    }

    /// Writes what is staged now (unsynced), e.g. before shutting down.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.flush_due = false;
        let write = LogWrite {
            local_snapshot: self.staged_snapshot.take(),
            hard_state: self.staged_commit.take(),
            ..Default::default()
        };
        if !write.is_empty() {
            self.write(write)?;
        }
        Ok(())
    }

    /// Writes to the store. A store that may block (disk IO, fsync) is written with the
    /// runtime's worker handed over to another thread, so the node's other tasks (peer
    /// sends, gRPC) run meanwhile; a Ready that writes nothing costs no such hand-over.
    pub(super) fn write(&self, write: LogWrite) -> Result<(), Error> {
        let store = self.raw.store();
        if !store.may_block() {
            return Ok(store.write(write)?);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                Ok(tokio::task::block_in_place(|| store.write(write))?)
            }
            _ => Ok(store.write(write)?),
        }
    }
}

/// Followers that `messages` send a snapshot to.
pub(super) fn snapshot_recipients(messages: &[Message]) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        .map(|m| m.to)
        .collect()
}
