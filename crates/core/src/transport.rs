//! What the replica needs from the network.

use raft::eraftpb::Message;

/// Sends raft messages to peers, addressed by `Message::to`.
///
/// `send` must not block: queue, and drop when a peer is slow or gone (raft retries
/// appends and heartbeats on its own). Incoming messages are handed to
/// [`crate::NodeHandle::step`] by whoever receives them.
pub trait Transport: Send + Sync + 'static {
    /// Queues `messages` for delivery.
    fn send(&self, messages: Vec<Message>);
}

impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn send(&self, messages: Vec<Message>) {
        (**self).send(messages)
    }
}
