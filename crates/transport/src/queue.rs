//! Per-peer bounded send queues, each drained by its own task with several sends in
//! flight.

use craft_core::sync::LockExt;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::Either;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

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
    /// Set when the peer is removed: its task drops (and counts) what is still queued
    /// instead of sending it.
    removed: Arc<AtomicBool>,
}

impl<T> Drop for Peer<T> {
    fn drop(&mut self) {
        self.removed.store(true, Ordering::Release);
    }
}

/// A bounded queue and a sender task per peer, created on first use. A slow or dead
/// peer fills only its own queue; pushing never waits. Each sender keeps up to
/// `in_flight` sends going at once, started in queue order, so one slow round trip
/// does not hold back the messages behind it (raft tolerates the rare reordering).
pub struct PeerQueues<T> {
    capacity: usize,
    in_flight: usize,
    peers: Mutex<HashMap<u64, Peer<T>>>,
}

/// Sends in flight per peer by default.
pub const DEFAULT_IN_FLIGHT: usize = 8;

impl<T: Send + 'static> PeerQueues<T> {
    /// Queues of `capacity` items each, [`DEFAULT_IN_FLIGHT`] sends in flight per peer.
    pub fn new(capacity: usize) -> Self {
        Self::with_in_flight(capacity, DEFAULT_IN_FLIGHT)
    }

    /// Queues of `capacity` items each, `in_flight` sends in flight per peer (1 sends
    /// strictly one at a time).
    pub fn with_in_flight(capacity: usize, in_flight: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            in_flight: in_flight.max(1),
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
        let mut peers = self.peers.locked();
        let in_flight = self.in_flight;
        let entry = peers.entry(peer).or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<T>(self.capacity);
            let stats = Arc::new(PeerStats::default());
            let task_stats = stats.clone();
            let removed = Arc::new(AtomicBool::new(false));
            let task_removed = removed.clone();
            let mut send = make_sender();
            tokio::spawn(async move {
                ReceiverStream::new(rx)
                    .map(|item| {
                        if task_removed.load(Ordering::Acquire) {
                            Either::Left(std::future::ready(false))
                        } else {
                            Either::Right(send(item))
                        }
                    })
                    .buffer_unordered(in_flight)
                    .for_each(|delivered| {
                        let counter = if delivered {
                            &task_stats.sent
                        } else {
                            &task_stats.dropped
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        std::future::ready(())
                    })
                    .await;
            });
            Peer { tx, stats, removed }
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
        let peers = self.peers.locked();
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

    /// Stops the sender of `peer` (e.g. when its address changed): what is still queued
    /// for it is dropped and counted, not sent to the old address.
    pub fn remove(&self, peer: u64) {
        self.peers.locked().remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn slow_peer_fills_only_its_own_queue() {
        let q: PeerQueues<u32> = PeerQueues::with_in_flight(2, 1);
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

    #[tokio::test]
    async fn what_is_queued_for_a_removed_peer_is_dropped_not_sent() {
        let q: PeerQueues<u32> = PeerQueues::with_in_flight(16, 1);
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..5u32 {
            let (tx, gate_rx) = (tx.clone(), gate_rx.clone());
            q.push(1, i, move || {
                move |v: u32| {
                    let (tx, mut gate_rx) = (tx.clone(), gate_rx.clone());
                    async move {
                        let _ = gate_rx.wait_for(|open| *open).await;
                        tx.send(v).is_ok()
                    }
                }
            });
        }
        drop(tx);
        // The first is being sent; the peer goes; the rest never are.
        tokio::task::yield_now().await;
        q.remove(1);
        gate_tx.send_replace(true);
        let mut got = Vec::new();
        while let Some(v) = rx.recv().await {
            got.push(v);
        }
        assert!(got.len() <= 1, "{got:?}");
    }

    #[tokio::test]
    async fn a_slow_send_does_not_hold_back_the_ones_behind_it() {
        let q: PeerQueues<u32> = PeerQueues::with_in_flight(16, 4);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..4u32 {
            let tx = tx.clone();
            q.push(1, i, move || {
                move |v: u32| {
                    let tx = tx.clone();
                    async move {
                        if v == 0 {
                            // The first send stalls until the test ends.
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        tx.send(v).is_ok()
                    }
                }
            });
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(rx.recv().await.unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 3]);
        // The counters follow each delivery on the sender task.
        for _ in 0..100 {
            if q.stats() == vec![(1, 3, 0)] {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(q.stats(), vec![(1, 3, 0)]);
    }
}
