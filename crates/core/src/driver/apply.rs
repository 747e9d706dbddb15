//! The apply task (the state machine, in log order, answering each proposer) and the
//! snapshot task (serialising a captured state off the runtime's workers).

use super::*;

/// A proposer's answer channel.
pub(super) type Reply<R> = oneshot::Sender<Result<R, ProposeError>>;

/// Work for the apply task, in log order.
pub(super) enum ApplyJob<R> {
    /// Restore the state machine from a snapshot received from the leader.
    Restore(Snapshot),
    /// Apply these entries, answering each proposer in `replies` (by log index, in
    /// order) with its entry's response: the apply task answers proposers itself, so
    /// an answer never waits for the raft task (which may be in an fsync).
    Apply {
        committed: Vec<Committed>,
        replies: VecDeque<(u64, Reply<R>)>,
    },
    /// Capture a snapshot of the state machine as it is once every job before this
    /// one is applied: after entry `index`, with membership `conf_state`.
    Capture { index: u64, conf_state: ConfState },
    /// Answer these reads with the applied index once every job before this one is
    /// applied (their read indexes are all handed out before it).
    AnswerReads(Vec<Reply<u64>>),
}

/// What applying one entry produced, for the raft task.
pub(super) enum AppliedKind {
    Normal,
    ConfChange(ConfState),
    Empty,
}

/// The apply task's (and the snapshot task's) report of one job.
pub(super) enum ApplyReport {
    Restored(u64),
    /// These entries were applied: `(index, term, outcome)` each.
    Applied(Vec<(u64, u64, AppliedKind)>),
    /// The state captured after entry `index` is serialised: by the snapshot task, or
    /// by the apply task when the capture was ready at once ([`SnapshotJob::ready`]).
    Snapshot {
        index: u64,
        conf_state: ConfState,
        data: SnapshotData,
    },
    Failed(Error),
}

/// A serialised snapshot's bytes, or where the store's stager put them.
pub(super) enum SnapshotData {
    Inline(Vec<u8>),
    Staged(StagedSnapshot),
}

/// A snapshot captured after entry `index`, waiting to be serialised.
pub(super) struct Capture {
    pub(super) index: u64,
    pub(super) conf_state: ConfState,
    pub(super) job: SnapshotJob,
}

pub(super) async fn apply_loop<M: StateMachine>(
    mut sm: M,
    // The index of the last entry applied (or restored), for answering reads.
    mut applied: u64,
    mut jobs: mpsc::UnboundedReceiver<ApplyJob<M::Response>>,
    done: mpsc::UnboundedSender<ApplyReport>,
    captures: mpsc::UnboundedSender<Capture>,
) {
    while let Some(job) = jobs.recv().await {
        let report = match job {
            ApplyJob::AnswerReads(replies) => {
                for reply in replies {
                    let _ = reply.send(Ok(applied));
                }
                continue;
            }
            ApplyJob::Restore(snapshot) => {
                let index = snapshot.get_metadata().index;
                tracing::info!(index, "restoring state machine from leader snapshot");
                match sm.restore(&snapshot).await {
                    Ok(()) => {
                        applied = index;
                        ApplyReport::Restored(index)
                    }
                    Err(e) => ApplyReport::Failed(Error::Restore(e)),
                }
            }
            ApplyJob::Apply {
                committed,
                mut replies,
            } => {
                let mut results = Vec::with_capacity(committed.len());
                for entry in &committed {
                    let outcome = match &entry.kind {
                        CommittedKind::Normal { .. } => {
                            let response = sm.apply(entry).await;
                            if replies.front().is_some_and(|(at, _)| *at == entry.index) {
                                if let Some((_, reply)) = replies.pop_front() {
                                    let _ = reply.send(Ok(response));
                                }
                            }
                            AppliedKind::Normal
                        }
                        CommittedKind::ConfChange { conf_state, .. } => {
                            sm.apply(entry).await;
                            AppliedKind::ConfChange(conf_state.clone())
                        }
                        CommittedKind::Empty => {
                            sm.apply(entry).await;
                            AppliedKind::Empty
                        }
                    };
                    results.push((entry.index, entry.term, outcome));
                    applied = entry.index;
                }
                ApplyReport::Applied(results)
            }
            ApplyJob::Capture { index, conf_state } => {
                let job = sm.snapshot();
                if !job.is_ready() {
                    // Serialised by the snapshot task; the entries it follows were
                    // reported applied with the jobs before this one.
                    let _ = captures.send(Capture {
                        index,
                        conf_state,
                        job,
                    });
                    continue;
                }
                match job.run() {
                    Ok(data) => ApplyReport::Snapshot {
                        index,
                        conf_state,
                        data: SnapshotData::Inline(data),
                    },
                    Err(e) => {
                        tracing::warn!(index, error = %e, "state machine snapshot failed; log kept");
                        continue;
                    }
                }
            }
        };
        let failed = matches!(report, ApplyReport::Failed(_));
        if done.send(report).is_err() || failed {
            return;
        }
    }
}

/// Serialises captured snapshots one at a time on a blocking thread, newest first: a
/// capture overtaken by a newer one before its turn is dropped unrun. With a stager, the
/// same thread then makes the bytes durable, so the raft task only records them.
pub(super) async fn snapshot_loop(
    mut captures: mpsc::UnboundedReceiver<Capture>,
    done: mpsc::UnboundedSender<ApplyReport>,
    stager: Option<Arc<dyn SnapshotStager>>,
) {
    while let Some(mut capture) = captures.recv().await {
        while let Ok(newer) = captures.try_recv() {
            tracing::debug!(
                index = capture.index,
                newer = newer.index,
                "snapshot overtaken before it was serialised"
            );
            capture = newer;
        }
        let Capture {
            index,
            conf_state,
            job,
        } = capture;
        let started = Instant::now();
        let stager = stager.clone();
        let work = move || -> Result<(SnapshotData, usize), String> {
            let data = job.run().map_err(|e| e.to_string())?;
            let len = data.len();
            match stager {
                Some(stager) => stager
                    .stage(index, &data)
                    .map(|staged| (SnapshotData::Staged(staged), len))
                    .map_err(|e| format!("staging it failed: {e}")),
                None => Ok((SnapshotData::Inline(data), len)),
            }
        };
        let (data, bytes) = match tokio::task::spawn_blocking(work).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::warn!(index, error = %e, "state machine snapshot failed; log kept");
                continue;
            }
            Err(e) => {
                tracing::warn!(index, error = %e, "state machine snapshot panicked; log kept");
                continue;
            }
        };
        tracing::debug!(
            index,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state machine snapshot serialised"
        );
        let report = ApplyReport::Snapshot {
            index,
            conf_state,
            data,
        };
        if done.send(report).is_err() {
            return;
        }
    }
}
