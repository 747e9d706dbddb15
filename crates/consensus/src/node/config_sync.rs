//! The chain configuration this node follows: what the controller pushes with
//! `Reconfigure`, what it answers at start, and the block it may have missed.

use super::*;

impl Node {
    /// Adopts configurations pushed with `Reconfigure`: the newest wins, and one at
    /// a lower height than what this node committed is ignored.
    pub(super) async fn follow_pushed(
        self: Arc<Self>,
        mut pushed: watch::Receiver<Option<ConsensusConfiguration>>,
    ) {
        while pushed.changed().await.is_ok() {
            let Some(cfg) = pushed.borrow_and_update().clone() else {
                continue;
            };
            self.adopt(cfg);
        }
    }

    pub(super) fn adopt(&self, cfg: ConsensusConfiguration) {
        self.config.send_if_modified(|cur| {
            if cfg.height >= cur.height && *cur != cfg {
                *cur = cfg;
                true
            } else {
                false
            }
        });
    }

    /// At start: learns the controller's configuration (ping), and if raft recorded
    /// one block more than the controller has, commits that block again. Raft records a
    /// height (the snapshot after each block) only once `CommitBlock` succeeded, so this
    /// is a controller that acknowledged a block and lost it (a crash before its own
    /// write was durable); a node that stopped between raft's commit and the
    /// controller's is served by raft itself, which applies the entry again.
    pub(super) async fn sync_with_controller(self: Arc<Self>) {
        let controller = self.controller.clone();
        let ping = retry(
            "controller ping",
            &Backoff::default(),
            ControllerError::is_transient,
            || controller.ping(),
        )
        .await;
        let ctrl = match ping {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::warn!(error = %e, "controller ping refused");
                return;
            }
        };
        tracing::info!(
            height = ctrl.height,
            validators = ctrl.validators.len(),
            "controller configuration"
        );
        let recorded = self.config.borrow().height;
        if recorded > 0 && ctrl.height + 1 == recorded {
            match self.last_committed_proposal(recorded) {
                Some(p) => {
                    tracing::info!(
                        height = recorded,
                        "re-committing the last block the controller missed"
                    );
                    let c = self.controller.clone();
                    match retry(
                        "CommitBlock",
                        &Backoff::default(),
                        ControllerError::is_transient,
                        || c.commit_block(p.clone()),
                    )
                    .await
                    {
                        Ok(cfg) => self.adopt(cfg),
                        Err(e) => tracing::warn!(error = %e, "re-commit refused"),
                    }
                }
                None => tracing::warn!(
                    height = recorded,
                    "last block not in the raft log; controller must sync it"
                ),
            }
        }
        self.adopt(ctrl);
    }

    /// The proposal this node committed at `height`, from the retained raft log: the
    /// entry the latest snapshot names as the one that carried the last block
    /// ([`crate::chain::LastBlock`]). Only that entry is certain: a later entry for the
    /// same height (a new leader proposing it again before it applied the first) was
    /// skipped when applied, and its block may differ from the one the others have.
    pub(super) fn last_committed_proposal(&self, height: u64) -> Option<Proposal> {
        let snapshot = self.store.latest_snapshot().ok()?;
        let last = snapshot_last_block(&snapshot.data)?;
        if last.height != height {
            return None;
        }
        let first = self.store.first_index().ok()?;
        let commit = self.store.initial_state().ok()?.hard_state.commit;
        if last.index < first || last.index > commit.max(snapshot.get_metadata().index) {
            return None;
        }
        let entries = self
            .store
            .entries(
                last.index,
                last.index + 1,
                None,
                GetEntriesContext::empty(false),
            )
            .ok()?;
        committed_proposal_at(&entries, last.index, height)
    }
}

/// The proposal for `height` that applying `entries` committed: the first one for that
/// height at or below `commit`, in log order. Applying skips a proposal for a height
/// already committed, so a later entry for the same height (a new leader that proposed
/// it again before applying the first) was never committed to a controller; and an entry
/// past `commit` may yet be overwritten.
fn committed_proposal_at(entries: &[Entry], commit: u64, height: u64) -> Option<Proposal> {
    entries
        .iter()
        .take_while(|e| e.index <= commit)
        .filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
        .filter_map(|e| Proposal::decode(&e.data[..]).ok())
        .find(|p| p.height == height)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(index: u64, height: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term: 2,
            data: Proposal {
                height,
                data: data.to_vec().into(),
            }
            .encode_to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn the_committed_proposal_is_the_first_committed_one_for_its_height() {
        // Height 7 was proposed at index 10, then again (another block) at 12 by a new
        // leader that had not applied 10 yet; 14 is an uncommitted proposal for 8.
        let log = [
            block(9, 6, b"six"),
            block(10, 7, b"seven-a"),
            Entry {
                index: 11,
                term: 3,
                ..Default::default()
            },
            block(12, 7, b"seven-b"),
            block(13, 8, b"eight-a"),
            block(14, 8, b"eight-b"),
        ];
        let data = |p: Option<Proposal>| p.map(|p| p.data.to_vec());
        assert_eq!(
            data(committed_proposal_at(&log, 13, 7)),
            Some(b"seven-a".to_vec())
        );
        assert_eq!(
            data(committed_proposal_at(&log, 13, 8)),
            Some(b"eight-a".to_vec())
        );
        // Past the commit index nothing counts, even the only proposal for a height.
        assert_eq!(data(committed_proposal_at(&log, 12, 8)), None);
        assert_eq!(data(committed_proposal_at(&log, 13, 9)), None);
    }
}
