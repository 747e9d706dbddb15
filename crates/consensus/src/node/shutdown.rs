//! Every "stop now" of the service as one small type: the process's shutdown, the raft
//! task's stop, the gRPC server's drain.

use tokio::sync::watch;

/// Fires its [`Shutdown`]s, once for all of them. Dropping it without firing counts as
/// firing: whoever waits is never left waiting for a stop that can no longer come.
#[derive(Debug)]
pub(crate) struct Trigger(watch::Sender<bool>);

/// A stop that may be requested: checked without waiting, or awaited; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

/// A trigger and the shutdown it fires.
pub(crate) fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Requests the stop.
    pub(crate) fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Whether the stop was requested (or its trigger is gone).
    pub(crate) fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Returns once the stop is requested (at once if it was).
    pub(crate) async fn requested(&self) {
        let mut rx = self.0.clone();
        // An error means the trigger is gone: a stop as well.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fired_or_dropped_triggers_stop_every_clone() {
        let (trigger, shutdown) = channel();
        let other = shutdown.clone();
        assert!(!shutdown.is_requested());
        let pending = tokio::time::timeout(Duration::from_millis(20), other.requested()).await;
        assert!(pending.is_err(), "nothing requested yet");
        let waiter = tokio::spawn(async move { other.requested().await });
        trigger.fire();
        assert!(shutdown.is_requested());
        assert!(waiter.await.is_ok());
        shutdown.requested().await;

        let (trigger, shutdown) = channel();
        drop(trigger);
        assert!(shutdown.is_requested());
        shutdown.requested().await;
    }
}
