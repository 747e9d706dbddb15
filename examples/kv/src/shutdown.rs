//! Graceful shutdown as a small type of its own: one signal that the raft driver, the
//! gRPC server and the HTTP server all wait on.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

/// A one-way shutdown signal. Clones share it; once [`Shutdown::signal`] is called,
/// every [`Shutdown::wait`] future completes.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// `true` once shutdown was requested.
    requested: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal not yet raised.
    pub fn new() -> Self {
        Self {
            requested: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Requests shutdown. Idempotent.
    pub fn signal(&self) {
        self.requested.send_replace(true);
    }

    /// Whether shutdown was requested.
    pub fn is_signalled(&self) -> bool {
        *self.requested.borrow()
    }

    /// A future that completes once shutdown is requested.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.requested.subscribe();
        async move {
            // An error means every sender is gone: nobody can ask any more, so stop.
            let _ = rx.wait_for(|requested| *requested).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_completes_after_signal_even_if_subscribed_before() {
        let shutdown = Shutdown::new();
        let waiter = tokio::spawn(shutdown.wait());
        assert!(!shutdown.is_signalled());
        shutdown.clone().signal();
        assert!(waiter.await.is_ok());
        // Late waiters see the signal at once.
        shutdown.wait().await;
        assert!(shutdown.is_signalled());
    }
}
