//! Sending: the two lanes to each peer (control and bulk), the tasks that drain them
//! into `SendMsg`, and the reports of peers that messages were dropped to.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cita_proto::network::network_service_client::NetworkServiceClient;
use cita_proto::network::NetworkMsg;
use craft_core::sync::LockExt;
use futures::StreamExt as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

use super::origins::MAX_BINDINGS;
use super::{REPLY_QUEUE, TIMEOUTS_BEFORE_LOST};
use crate::queue::PeerStats;

/// Told the raft id of a peer messages were dropped to.
pub(crate) type UnreachableFn = Arc<dyn Fn(u64) + Send + Sync>;

/// Where peers that messages were dropped to are reported, and which were reported
/// and not heard from since.
#[derive(Default)]
struct Unreachable {
    /// Who is told; `None` while raft is stopped (reports are then not made).
    reporter: Option<UnreachableFn>,
    /// Peers reported and not heard from since.
    reported: HashSet<u64>,
}

/// The reports of unreachable peers, shared with the lanes' tasks.
#[derive(Default)]
pub(crate) struct Reports(Mutex<Unreachable>);

impl Reports {
    /// Reports `peer` unreachable, unless it was reported and not heard from since.
    pub(crate) fn report(&self, peer: u64) {
        if peer == REPLY_QUEUE {
            return;
        }
        let report = {
            let mut u = self.0.locked();
            let Some(report) = u.reporter.clone() else {
                return;
            };
            if !u.reported.insert(peer) {
                return;
            }
            report
        };
        tracing::debug!(peer, "reporting peer unreachable");
        report(peer);
    }

    /// A message from `peer` arrived: a drop may be reported again.
    pub(crate) fn heard_from(&self, peer: u64) {
        let mut u = self.0.locked();
        if !u.reported.is_empty() {
            u.reported.remove(&peer);
        }
    }

    pub(crate) fn set(&self, reporter: Option<UnreachableFn>) {
        let mut u = self.0.locked();
        u.reporter = reporter;
        u.reported.clear();
    }
}

/// Whether `m` goes on the bulk lane, sent in order: it carries entries or a snapshot,
/// or is an append (even an empty one may commit entries only the appends before it
/// carry).
pub(crate) fn is_bulk(m: &Message) -> bool {
    m.msg_type == MessageType::MsgAppend as i32
        || m.msg_type == MessageType::MsgSnapshot as i32
        || !m.entries.is_empty()
}

/// One lane to a peer: its queue's sending end and the bytes it holds.
pub(crate) struct Lane {
    pub(crate) tx: mpsc::Sender<NetworkMsg>,
    /// Bytes of payload queued and not yet taken by the lane's task.
    pub(crate) queued_bytes: Arc<AtomicUsize>,
}

/// The two lanes to one peer at one origin. Dropping it (the peer's origin changed, or
/// its binding was evicted) makes its tasks drop, count and report what is still
/// queued instead of sending it to the old origin.
pub(crate) struct PeerLink {
    pub(crate) control: Lane,
    pub(crate) bulk: Lane,
    /// Set when the link is dropped.
    pub(crate) stale: Arc<AtomicBool>,
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.stale.store(true, Ordering::Release);
    }
}

/// The links to peers, and their counters (kept when a link is replaced).
#[derive(Default)]
pub(crate) struct Links {
    pub(crate) links: HashMap<u64, PeerLink>,
    pub(crate) stats: HashMap<u64, Arc<PeerStats>>,
}

impl Links {
    /// The counters of `peer`, made on first use. Past [`MAX_BINDINGS`] peers counted,
    /// those without a link are forgotten first: a peer's counters outlive its link
    /// (its origin may change), but not without bound.
    pub(crate) fn stats_of(&mut self, peer: u64) -> Arc<PeerStats> {
        if !self.stats.contains_key(&peer) && self.stats.len() >= MAX_BINDINGS {
            let links = &self.links;
            self.stats.retain(|p, _| links.contains_key(p));
        }
        self.stats.entry(peer).or_default().clone()
    }
}

/// What a lane's task needs to send.
pub(crate) struct LaneSender {
    pub(crate) peer: u64,
    /// `control` or `bulk`, for logs.
    pub(crate) kind: &'static str,
    pub(crate) client: NetworkServiceClient<Channel>,
    pub(crate) network_lost: Arc<tokio::sync::Notify>,
    pub(crate) stats: Arc<PeerStats>,
    pub(crate) stale: Arc<AtomicBool>,
    pub(crate) queued_bytes: Arc<AtomicUsize>,
    pub(crate) reports: Arc<Reports>,
    /// Calls to the network in a row that timed out (all lanes).
    pub(crate) timeouts: Arc<AtomicU32>,
}

impl LaneSender {
    /// Runs the lane: takes messages in queue order, with up to `in_flight` sends at
    /// once (1: strictly one after another), until the link is dropped and drained.
    pub(crate) async fn run(self: Arc<Self>, rx: mpsc::Receiver<NetworkMsg>, in_flight: usize) {
        let this = self.clone();
        ReceiverStream::new(rx)
            .map(move |msg| {
                this.queued_bytes
                    .fetch_sub(msg.msg.len(), Ordering::Relaxed);
                this.clone().deliver(msg)
            })
            .buffer_unordered(in_flight.max(1))
            .for_each(|()| std::future::ready(()))
            .await;
    }

    async fn deliver(self: Arc<Self>, msg: NetworkMsg) {
        if self.stale.load(Ordering::Acquire) {
            tracing::debug!(
                peer = self.peer,
                origin = msg.origin,
                lane = self.kind,
                "origin replaced; queued message dropped"
            );
            self.dropped();
            return;
        }
        match self.client.clone().send_msg(msg).await {
            Ok(resp) => {
                self.timeouts.store(0, Ordering::Relaxed);
                let code = resp.get_ref().code;
                if code == 0 {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    tracing::debug!(peer = self.peer, code, "network refused SendMsg");
                    self.dropped();
                }
            }
            Err(e) => {
                tracing::debug!(peer = self.peer, error = %e, "SendMsg failed");
                if network_gone(&e) {
                    self.network_lost.notify_one();
                } else if matches!(
                    e.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) {
                    let in_a_row = self.timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                    if in_a_row >= TIMEOUTS_BEFORE_LOST {
                        self.timeouts.store(0, Ordering::Relaxed);
                        tracing::warn!(
                            in_a_row,
                            "calls to the network service keep timing out; taking it as lost"
                        );
                        self.network_lost.notify_one();
                    }
                }
                self.dropped();
            }
        }
    }

    fn dropped(&self) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        self.reports.report(self.peer);
    }
}

/// Whether a failed call says the network service is not there (down, restarting),
/// rather than that it refused this one message.
pub(crate) fn network_gone(e: &Status) -> bool {
    e.code() == tonic::Code::Unavailable
}
