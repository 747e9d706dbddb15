//! Handling a Ready: persist, send, hand committed entries out in order, apply
//! membership changes.

use super::*;

impl<S: LogStore> Replica<S> {
    /// Processes one Ready. `send_now` receives the messages a leader may send before
    /// its own write is durable (raft thesis 10.2.1), so replication overlaps the
    /// leader's fsync; everything else comes back in [`ReadyOutput`], after persistence.
    /// [`Replica::handle_ready_with`] also hands committed entries over before the write.
    pub fn handle_ready(
        &mut self,
        send_now: &mut dyn FnMut(Vec<Message>),
    ) -> Result<ReadyOutput, Error> {
        struct Collect<'a> {
            send_now: &'a mut dyn FnMut(Vec<Message>),
            committed: Vec<Committed>,
        }
        impl ReadySink for Collect<'_> {
            fn send(&mut self, messages: Vec<Message>) {
                (self.send_now)(messages)
            }
            fn apply(&mut self, mut committed: Vec<Committed>) {
                self.committed.append(&mut committed)
            }
        }
        let mut sink = Collect {
            send_now,
            committed: Vec::new(),
        };
        let mut out = self.handle_ready_with(&mut sink)?;
        if !sink.committed.is_empty() {
            sink.committed.append(&mut out.committed);
            out.committed = sink.committed;
        }
        Ok(out)
    }

    /// Processes one Ready, handing `sink` what may go before the write is durable:
    /// the leader's messages, then the committed entries (see [`ReadySink`]). The rest
    /// comes back in [`ReadyOutput`], after persistence; its `committed` follow the
    /// sink's.
    pub fn handle_ready_with(&mut self, sink: &mut dyn ReadySink) -> Result<ReadyOutput, Error> {
        let mut out = ReadyOutput::default();
        if !self.raw.has_ready() {
            if self.flush_due {
                self.flush()?;
            }
            return Ok(out);
        }
        let mut ready = self.raw.ready();

        let immediate = ready.take_messages();
        let mut snapshots_sent = snapshot_recipients(&immediate);
        if !immediate.is_empty() {
            sink.send(immediate);
        }

        let snapshot = ready.snapshot().clone();
        let has_snapshot = snapshot.get_metadata().index > 0;
        let mut committed = ready.take_committed_entries();
        out.read_states = ready.take_read_states();
        if !has_snapshot && !committed.is_empty() {
            let mut early = Vec::with_capacity(committed.len());
            self.hand_out(std::mem::take(&mut committed), &mut early)?;
            sink.apply(early);
        }

        // One write for the whole Ready, carrying what earlier calls staged: a local
        // snapshot and the commit index.
        let hard_state = match ready.hs() {
            Some(hs) => {
                self.staged_commit = None;
                Some(hs.clone())
            }
            None => self.staged_commit.take(),
        };
        let entries = ready.take_entries();
        if !ready.must_sync() && !has_snapshot && entries.is_empty() && !self.flush_due {
            // Only the commit index moved (a new term or vote would need a sync): it
            // need not be durable, so it waits for the next write instead of costing
            // one of its own.
            self.staged_commit = hard_state;
        } else {
            let write = LogWrite {
                local_snapshot: self.staged_snapshot.take(),
                snapshot: has_snapshot.then(|| snapshot.clone()),
                entries,
                hard_state,
                must_sync: ready.must_sync(),
            };
            if !write.is_empty() {
                self.write(write)?;
            }
            self.flush_due = false;
        }
        if has_snapshot {
            let meta = snapshot.get_metadata();
            self.conf_state = meta.get_conf_state().clone();
            self.handed_out = meta.index;
            self.applied = meta.index;
            self.snapshot_index = meta.index;
            self.snapshot_requested = meta.index;
            self.snapshot_conf_state = self.conf_state.clone();
            out.snapshot = Some(snapshot);
        }
        self.hand_out(committed, &mut out.committed)?;
        out.messages = ready.take_persisted_messages();

        let mut light = self.raw.advance_append(ready);
        if has_snapshot {
            // Raft only learns the applied index from us; left behind the snapshot, a
            // later campaign would read compacted entries below it and panic.
            self.raw.advance_apply_to(self.applied);
        }
        if let Some(commit) = light.commit_index() {
            // Written with the next Ready or flush, not in a write of its own.
            let mut hs = self.raw.raft.hard_state();
            hs.commit = commit;
            self.staged_commit = Some(hs);
        }
        out.messages.extend(light.take_messages());
        self.hand_out(light.take_committed_entries(), &mut out.committed)?;
        out.messages.append(&mut self.held_messages);

        // Unless told how a snapshot went, raft waits for its answer and sends that
        // follower nothing else, forever if the snapshot was lost or refused (a new
        // member refuses one that predates it). A fire-and-forget transport cannot
        // tell, so each snapshot is reported delivered: raft then probes the follower
        // after the snapshot, and one that did not install it rejects the probe and
        // gets a fresh snapshot. A transport that knows reports itself.
        if !self.snapshots_reported {
            snapshots_sent.extend(snapshot_recipients(&out.messages));
            for to in snapshots_sent {
                self.raw.report_snapshot(to, SnapshotStatus::Finish);
            }
        }

        let now = self.role();
        if now != self.last_role {
            self.last_role = now;
            out.role_change = Some(now);
        }
        Ok(out)
    }

    pub(super) fn hand_out(
        &mut self,
        entries: Vec<Entry>,
        out: &mut Vec<Committed>,
    ) -> Result<(), Error> {
        for mut entry in entries {
            let corrupt = |reason: String| Error::Corrupt {
                index: entry.index,
                reason,
            };
            let Some(entry_type) = EntryType::from_i32(entry.entry_type) else {
                return Err(corrupt(format!("unknown entry type {}", entry.entry_type)));
            };
            let kind = match entry_type {
                EntryType::EntryNormal if entry.data.is_empty() => CommittedKind::Empty,
                EntryType::EntryNormal => CommittedKind::Normal {
                    data: entry.take_data(),
                    context: entry.take_context(),
                },
                EntryType::EntryConfChange => {
                    let cc = <ConfChange as raft_prost::Message>::decode(&entry.data[..])
                        .map_err(|e| corrupt(e.to_string()))?;
                    if !crate::gate::conf_change_types_known(&cc) {
                        return Err(corrupt("unknown membership-change type".into()));
                    }
                    self.apply_conf_change(entry.index, cc.into_v2())
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = <ConfChangeV2 as raft_prost::Message>::decode(&entry.data[..])
                        .map_err(|e| corrupt(e.to_string()))?;
                    if !crate::gate::conf_change_v2_types_known(&cc) {
                        return Err(corrupt("unknown membership-change type".into()));
                    }
                    self.apply_conf_change(entry.index, cc)
                }
            };
            self.handed_out = entry.index;
            out.push(Committed {
                index: entry.index,
                term: entry.term,
                kind,
            });
        }
        Ok(())
    }

    pub(super) fn apply_conf_change(&mut self, index: u64, change: ConfChangeV2) -> CommittedKind {
        match self.raw.apply_conf_change(&change) {
            Ok(cs) => {
                tracing::info!(raft_id = self.cfg.id, index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                let id = self.cfg.id;
                if self.is_leader() && !cs.voters.contains(&id) && !cs.voters_outgoing.contains(&id)
                {
                    // raft-rs 0.7 keeps leading after its own removal, with no progress
                    // for itself, and panics at its next commit or write. Step down; the
                    // voters left elect a leader within an election timeout.
                    // What it queued as leader goes out with this Ready's messages: raft-rs
                    // refuses a follower with messages queued between Ready and advance.
                    tracing::warn!(raft_id = id, index, "removed while leading: stepping down");
                    let queued = std::mem::take(&mut self.raw.raft.msgs);
                    self.held_messages.extend(queued);
                    let term = self.raw.raft.term;
                    self.raw.raft.become_follower(term, raft::INVALID_ID);
                }
                self.conf_state = cs.clone();
                CommittedKind::ConfChange {
                    change,
                    conf_state: cs,
                }
            }
            Err(e) => {
                // A committed change raft refuses (e.g. leaving a joint state twice) is a
                // no-op on every replica alike, so skipping it keeps them in step.
                tracing::warn!(raft_id = self.cfg.id, index, error = %e, "conf change rejected");
                CommittedKind::ConfChange {
                    change,
                    conf_state: self.conf_state.clone(),
                }
            }
        }
    }

    /// Records that the state machine applied everything up to `index`.
    pub fn advance_apply(&mut self, index: u64) {
        let index = index.min(self.handed_out);
        if index > self.applied {
            self.applied = index;
            self.raw.advance_apply_to(index);
        }
    }
}
