//! What the replica needs from the network.

use raft::eraftpb::Message;
use raft::SnapshotStatus;
use tokio::sync::mpsc;

/// Sends raft messages to peers, addressed by `Message::to`.
///
/// `send` must not block: queue, and drop when a peer is slow or gone (raft retries
/// appends and heartbeats on its own). Incoming messages are handed to
/// [`crate::NodeHandle::step`] by whoever receives them.
///
/// # Snapshots
///
/// Raft sends a follower nothing else while a snapshot (`MsgSnapshot`) to it is out,
/// until it is told how that snapshot went. A transport that can know (it streams the
/// snapshot and the peer acknowledges it) says so by returning `true` from
/// [`Transport::report_snapshots`]: it then reports every `MsgSnapshot` it is given
/// exactly once, [`SnapshotStatus::Finish`] once the peer has the whole message and
/// [`SnapshotStatus::Failure`] when it will not get it (dropped, refused, timed out),
/// after which raft sends a new snapshot once the follower answers again.
///
/// A fire-and-forget transport keeps the default (`false`): the driver then reports
/// each snapshot finished as soon as it is handed over, and one that got lost is sent
/// again when the follower rejects the appends that follow it. That works only while
/// a snapshot fits in one message of the transport.
pub trait Transport: Send + Sync + 'static {
    /// Queues `messages` for delivery.
    fn send(&self, messages: Vec<Message>);

    /// Called once by [`crate::start`] before the first [`Transport::send`]. Returns
    /// whether this transport reports the outcome of every snapshot it sends through
    /// `reporter` (see [Snapshots](Transport#snapshots)); the default does not.
    fn report_snapshots(&self, reporter: SnapshotReporter) -> bool {
        let _ = reporter;
        false
    }
}

impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn send(&self, messages: Vec<Message>) {
        (**self).send(messages)
    }

    fn report_snapshots(&self, reporter: SnapshotReporter) -> bool {
        (**self).report_snapshots(reporter)
    }
}

/// How a transport tells its raft node what became of a snapshot it sent. Cheap to
/// clone; reports after the node stopped are dropped.
#[derive(Debug, Clone)]
pub struct SnapshotReporter {
    reports: mpsc::UnboundedSender<(u64, SnapshotStatus)>,
}

impl SnapshotReporter {
    /// A reporter and the receiving end of its reports, for whoever drives the
    /// replica (the driver, or a test): hand each to [`crate::Replica::report_snapshot`].
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<(u64, SnapshotStatus)>) {
        let (reports, rx) = mpsc::unbounded_channel();
        (Self { reports }, rx)
    }

    /// Reports how the snapshot last sent to raft id `to` ended.
    pub fn report(&self, to: u64, status: SnapshotStatus) {
        let _ = self.reports.send((to, status));
    }
}
