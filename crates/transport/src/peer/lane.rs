//! The lanes to one peer: a queue of encoded messages each, packed into batches on a
//! stream that the peer acknowledges, with the deadlines and reports of the module docs.

use craft_core::sync::LockExt;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cita_proto::peer::raft_peer_client::RaftPeerClient;
use cita_proto::peer::RaftBatch;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::{LinkConfig, ACKS_HEADER, MAX_SINGLE_MESSAGE, RETRY_DELAY};
use crate::queue::PeerStats;

/// How a transport tells raft that a peer could not be reached.
pub(super) type UnreachableFn = Arc<dyn Fn(u64) + Send + Sync>;

/// Where unreachable peers are reported: nowhere yet (then they are remembered, and
/// reported once a reporter is set), or to the reporter.
#[derive(Default)]
pub(super) struct Unreachable {
    pub(super) reporter: Option<UnreachableFn>,
    pub(super) pending: HashSet<u64>,
}

impl Unreachable {
    pub(super) fn report(&mut self, to: u64) {
        match &self.reporter {
            Some(report) => report(to),
            None => {
                self.pending.insert(to);
            }
        }
    }
}

/// What every lane of a transport shares.
pub(super) struct LinkShared {
    /// This node's raft id, the `from` of every batch.
    pub(super) id: u64,
    pub(super) config: LinkConfig,
    pub(super) unreachable: Mutex<Unreachable>,
}

impl LinkShared {
    pub(super) fn report_unreachable(&self, to: u64) {
        self.unreachable.locked().report(to);
    }
}

/// Bytes `len` bytes of message take in a batch: the bytes, a tag and a length.
pub(super) fn framed_len(len: usize) -> usize {
    len + 1 + prost_varint_len(len)
}

/// Bytes of `len` as a protobuf varint.
pub(super) fn prost_varint_len(len: usize) -> usize {
    let bits = usize::BITS - len.max(1).leading_zeros();
    bits.div_ceil(7) as usize
}

/// The two lanes to one peer, each run by a task of its own; dropping the link stops
/// them (what they still hold is dropped).
pub(super) struct PeerLink {
    pub(super) control: Arc<Lane>,
    pub(super) bulk: Arc<Lane>,
    /// Messages of both lanes.
    pub(super) stats: Arc<PeerStats>,
}

impl PeerLink {
    pub(super) fn start(to: u64, endpoint: Endpoint, shared: Arc<LinkShared>) -> Self {
        let stats = Arc::new(PeerStats::default());
        let lane = |kind| {
            let lane = Arc::new(Lane {
                to,
                kind,
                shared: shared.clone(),
                stats: stats.clone(),
                queue: Mutex::new(LaneQueue::default()),
                wake: Notify::new(),
                closed: watch::Sender::new(false),
                reported: AtomicBool::new(false),
            });
            tokio::spawn(lane.clone().run(endpoint.clone()));
            lane
        };
        Self {
            control: lane("control"),
            bulk: lane("bulk"),
            stats,
        }
    }

    pub(super) fn lane(&self, bulk: bool) -> &Lane {
        if bulk {
            &self.bulk
        } else {
            &self.control
        }
    }
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.control.close();
        self.bulk.close();
    }
}

/// One lane to one peer: a queue of encoded messages and the stream that takes them.
pub(super) struct Lane {
    to: u64,
    /// `control` or `bulk`, for logs.
    kind: &'static str,
    shared: Arc<LinkShared>,
    stats: Arc<PeerStats>,
    queue: Mutex<LaneQueue>,
    /// Woken when messages are queued, a stream is replaced, or the lane closes.
    wake: Notify,
    /// Turns true when the link is dropped.
    closed: watch::Sender<bool>,
    /// Raft was told the peer is unreachable, and the peer acknowledged nothing since.
    reported: AtomicBool,
}

/// A lane's queue, and which stream may take from it.
#[derive(Default)]
pub(super) struct LaneQueue {
    messages: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The stream that may take batches; a stream that was replaced takes no more.
    stream: u64,
    /// The link was dropped: the lane's task ends.
    closed: bool,
    /// Batches taken by the current stream and not acknowledged yet.
    outstanding: Outstanding,
}

/// The batches a stream has taken and not had acknowledged.
#[derive(Default)]
pub(super) struct Outstanding {
    /// Messages and bytes of each, oldest first.
    batches: VecDeque<(u64, usize)>,
    /// When the oldest began to wait for its acknowledgement: when it was taken, or
    /// when the one before it was acknowledged.
    since: Option<Instant>,
}

impl Outstanding {
    fn taken(&mut self, messages: u64, bytes: usize) {
        if self.batches.is_empty() {
            self.since = Some(Instant::now());
        }
        self.batches.push_back((messages, bytes));
    }

    /// The oldest batch was acknowledged: its messages.
    fn acked(&mut self) -> u64 {
        let messages = self.batches.pop_front().map_or(0, |(m, _)| m);
        self.since = (!self.batches.is_empty()).then(Instant::now);
        messages
    }

    /// Whether the oldest batch has waited longer than `deadline` (plus a second per
    /// MiB past its first).
    fn overdue(&self, deadline: Duration) -> bool {
        let (Some(since), Some((_, bytes))) = (self.since, self.batches.front()) else {
            return false;
        };
        let extra_mib = bytes.saturating_sub(1 << 20).div_ceil(1 << 20) as u64;
        since.elapsed() > deadline + Duration::from_secs(extra_mib)
    }

    /// Messages of every batch outstanding, now forgotten.
    fn take_all(&mut self) -> u64 {
        self.since = None;
        self.batches.drain(..).map(|(m, _)| m).sum()
    }
}

/// How a stream ended.
pub(super) enum StreamEnd {
    /// The link was dropped.
    Closed,
    /// It could not be opened (an error, or the setup deadline ran out).
    NotOpened { timed_out: bool },
    /// It was open and ended: the peer ended it, or it stalled (no acknowledgement in
    /// time) and was torn down.
    Ended { stalled: bool },
}

impl Lane {
    /// Queues `bytes` unless the queue is full: then it is dropped, counted and
    /// reported.
    pub(super) fn push(&self, bytes: Vec<u8>) {
        let config = &self.shared.config;
        let mut q = self.queue.locked();
        if q.closed {
            return;
        }
        let full = !q.messages.is_empty()
            && (q.messages.len() >= config.queue_messages
                || q.bytes + bytes.len() > config.queue_bytes);
        if full {
            drop(q);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                to = self.to,
                lane = self.kind,
                "lane queue full; message dropped"
            );
            self.report_unreachable();
            return;
        }
        q.bytes += bytes.len();
        q.messages.push_back(bytes);
        drop(q);
        self.wake.notify_waiters();
    }

    /// Tells raft the peer is unreachable, unless it was told since the peer last
    /// acknowledged anything.
    pub(super) fn report_unreachable(&self) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            tracing::debug!(to = self.to, lane = self.kind, "reporting peer unreachable");
            self.shared.report_unreachable(self.to);
        }
    }

    fn close(&self) {
        let mut q = self.queue.locked();
        q.closed = true;
        q.messages.clear();
        q.bytes = 0;
        drop(q);
        self.closed.send_replace(true);
        self.wake.notify_waiters();
    }

    /// Completes once the lane is closed.
    async fn until_closed(&self) {
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// Waits until `ready` holds for the queue (checked under its lock), or the lane
    /// closes (`false`).
    async fn wait_for(&self, ready: impl Fn(&LaneQueue) -> bool) -> bool {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let q = self.queue.locked();
                if q.closed {
                    return false;
                }
                if ready(&q) {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// Takes the next batch for stream `stream`: the queued messages up to the batch
    /// budget (at least one). `None` once that stream was replaced or the lane closed.
    async fn next_batch(&self, stream: u64) -> Option<RaftBatch> {
        let budget = self.shared.config.max_batch_bytes.min(MAX_SINGLE_MESSAGE);
        let live = |q: &LaneQueue| q.stream != stream || !q.messages.is_empty();
        if !self.wait_for(live).await {
            return None;
        }
        let mut q = self.queue.locked();
        if q.stream != stream || q.closed {
            return None;
        }
        let mut messages = Vec::new();
        let mut size = 0;
        while let Some(next) = q.messages.front() {
            let framed = framed_len(next.len());
            if !messages.is_empty() && size + framed > budget {
                break;
            }
            size += framed;
            q.bytes -= next.len();
            if let Some(m) = q.messages.pop_front() {
                messages.push(m.into());
            }
        }
        if messages.is_empty() {
            return None;
        }
        // Recorded under the queue's lock: a stream torn down meanwhile counts it lost.
        q.outstanding.taken(messages.len() as u64, size);
        Some(RaftBatch {
            from: self.shared.id,
            messages,
        })
    }

    /// Runs the lane until its link is dropped: opens a stream when there is something
    /// to send, keeps it while it is healthy, and opens another (on a new connection
    /// after a stall) when it ends.
    async fn run(self: Arc<Self>, endpoint: Endpoint) {
        let config = self.shared.config.clone();
        let mut client = super::client(&endpoint);
        let mut failures = 0u32;
        let mut slow_setups = 0u32;
        loop {
            if !self.wait_for(|q| !q.messages.is_empty()).await {
                return;
            }
            let setup_deadline = config.setup_deadline * 2u32.pow(slow_setups.min(3));
            let end = self.stream(&mut client, setup_deadline).await;
            let lost = self.end_stream();
            let failed = match end {
                StreamEnd::Closed => return,
                StreamEnd::NotOpened { timed_out } => {
                    if timed_out {
                        slow_setups += 1;
                    }
                    true
                }
                StreamEnd::Ended { stalled } => {
                    slow_setups = 0;
                    stalled
                }
            };
            if matches!(
                end,
                StreamEnd::NotOpened { timed_out: true } | StreamEnd::Ended { stalled: true }
            ) {
                // The connection may be the stuck part: the next stream goes on a new one.
                client = super::client(&endpoint);
            }
            if failed {
                // The peer cannot be reached now: what waits for it is dropped (raft
                // sends again what still matters once it hears from the peer), and
                // what comes during the pause before the next attempt goes with it.
                self.drop_queued();
            }
            if lost > 0 || failed {
                // Raft probes the peer rather than stream appends it will not get.
                self.report_unreachable();
            }
            if failed {
                failures += 1;
                let delay = (RETRY_DELAY * 2u32.pow((failures - 1).min(10))).min(setup_deadline);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.until_closed() => return,
                }
            } else {
                failures = 0;
            }
        }
    }

    /// Opens a stream and serves it until it ends.
    async fn stream(
        self: &Arc<Self>,
        client: &mut RaftPeerClient<Channel>,
        setup_deadline: Duration,
    ) -> StreamEnd {
        let stream = {
            let mut q = self.queue.locked();
            q.stream += 1;
            q.stream
        };
        let lane = self.clone();
        let batches = futures::stream::unfold(lane, move |lane| async move {
            let batch = lane.next_batch(stream).await?;
            Some((batch, lane))
        });
        let setup = tokio::time::timeout(setup_deadline, client.batches(batches));
        let response = tokio::select! {
            response = setup => response,
            () = self.until_closed() => return StreamEnd::Closed,
        };
        let response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(status)) => {
                tracing::debug!(to = self.to, lane = self.kind, code = ?status.code(), error = %status.message(), "batch stream not opened");
                return StreamEnd::NotOpened { timed_out: false };
            }
            Err(_) => {
                tracing::info!(to = self.to, lane = self.kind, deadline = ?setup_deadline, "batch stream not accepted in time; trying a new connection");
                return StreamEnd::NotOpened { timed_out: true };
            }
        };
        let acknowledged = response.metadata().contains_key(ACKS_HEADER);
        self.reported.store(false, Ordering::Relaxed);
        let mut acks = response.into_inner();
        let ack_deadline = self.shared.config.ack_deadline;
        let mut check = tokio::time::interval((ack_deadline / 4).max(Duration::from_millis(1)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ack = acks.message() => match ack {
                    Ok(Some(_)) => {
                        let messages = self
                            .queue
                            .locked()
                            .outstanding
                            .acked();
                        self.stats.sent.fetch_add(messages, Ordering::Relaxed);
                        self.reported.store(false, Ordering::Relaxed);
                    }
                    Ok(None) => {
                        tracing::debug!(to = self.to, lane = self.kind, "batch stream ended by the peer");
                        return StreamEnd::Ended { stalled: false };
                    }
                    Err(status) => {
                        tracing::debug!(to = self.to, lane = self.kind, code = ?status.code(), error = %status.message(), "batch stream ended");
                        return StreamEnd::Ended { stalled: false };
                    }
                },
                _ = check.tick() => {
                    let overdue = acknowledged && self
                        .queue
                        .locked()
                        .outstanding
                        .overdue(ack_deadline);
                    if overdue {
                        tracing::info!(to = self.to, lane = self.kind, deadline = ?ack_deadline, "peer stopped acknowledging batches; reconnecting");
                        return StreamEnd::Ended { stalled: true };
                    }
                    if !acknowledged {
                        // A peer that acknowledges nothing: what it took counts as sent.
                        let messages = self
                            .queue
                            .locked()
                            .outstanding
                            .take_all();
                        self.stats.sent.fetch_add(messages, Ordering::Relaxed);
                    }
                }
                () = self.until_closed() => return StreamEnd::Closed,
            }
        }
    }

    /// Drops and counts every queued message.
    fn drop_queued(&self) {
        let dropped = {
            let mut q = self.queue.locked();
            q.bytes = 0;
            std::mem::take(&mut q.messages).len() as u64
        };
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::debug!(
                to = self.to,
                lane = self.kind,
                dropped,
                "peer unreachable; queued messages dropped"
            );
        }
    }

    /// Ends the current stream: it takes no more batches, and what it took without
    /// acknowledging is counted dropped. Returns how many messages that was.
    fn end_stream(&self) -> u64 {
        let lost = {
            let mut q = self.queue.locked();
            q.stream += 1;
            q.outstanding.take_all()
        };
        self.wake.notify_waiters();
        if lost > 0 {
            self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
            tracing::debug!(
                to = self.to,
                lane = self.kind,
                lost,
                "messages lost with their stream"
            );
        }
        lost
    }
}
