//! Per-peer bounded send queues, each drained by its own task.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// Counters of one peer's queue.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Items handed to the sender.
    pub sent: AtomicU64,
    /// Items dropped because the queue was full or the send failed.
    pub dropped: AtomicU64,
}

struct Peer<T> {
    tx: mpsc::Sender<T>,
    stats: Arc<PeerStats>,
}

/// A bounded queue and a sender task per peer, created on first use. A slow or dead
/// peer fills only its own queue; pushing never waits.
pub struct PeerQueues<T> {
    capacity: usize,
    peers: Mutex<HashMap<u64, Peer<T>>>,
}

impl<T: Send + 'static> PeerQueues<T> {
    /// Queues of `capacity` items each.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Queues `item` for `peer`, starting its sender task with `make_sender` if needed.
    /// The sender gets each item and returns whether it was delivered. Returns `false`
    /// when the item was dropped because the queue is full.
    pub fn push<F, Fut>(&self, peer: u64, item: T, make_sender: impl FnOnce() -> F) -> bool
    where
        F: FnMut(T) -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let entry = peers.entry(peer).or_insert_with(|| {
            let (tx, mut rx) = mpsc::channel::<T>(self.capacity);
            let stats = Arc::new(PeerStats::default());
            let task_stats = stats.clone();
            let mut send = make_sender();
            tokio::spawn(async move {
                while let Some(item) = rx.recv().await {
                    if send(item).await {
                        task_stats.sent.fetch_add(1, Ordering::Relaxed);
                    } else {
                        task_stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            Peer { tx, stats }
        });
        match entry.tx.try_send(item) {
            Ok(()) => true,
            Err(_) => {
                entry.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// `(peer, sent, dropped)` for every peer seen so far.
    pub fn stats(&self) -> Vec<(u64, u64, u64)> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = peers
            .iter()
            .map(|(id, p)| {
                (
                    *id,
                    p.stats.sent.load(Ordering::Relaxed),
                    p.stats.dropped.load(Ordering::Relaxed),
                )
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Stops the sender of `peer` (e.g. when its address changed).
    pub fn remove(&self, peer: u64) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn slow_peer_fills_only_its_own_queue() {
        let q: PeerQueues<u32> = PeerQueues::new(2);
        let (fast_tx, mut fast_rx) = mpsc::unbounded_channel();
        // Peer 1 never finishes a send; peer 2 delivers.
        for i in 0..10 {
            q.push(1, i, || {
                |_: u32| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    true
                }
            });
        }
        for i in 0..5 {
            let tx = fast_tx.clone();
            assert!(q.push(2, i, move || move |v: u32| {
                let tx = tx.clone();
                async move { tx.send(v).is_ok() }
            }));
            tokio::task::yield_now().await;
        }
        for want in 0..5 {
            assert_eq!(fast_rx.recv().await, Some(want));
        }
        let stats = q.stats();
        let (_, _, dropped1) = stats[0];
        // One in flight, two queued, the rest dropped.
        assert!(dropped1 >= 7, "{stats:?}");
    }
}
