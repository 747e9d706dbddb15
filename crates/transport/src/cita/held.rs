//! Messages held for a raft id whose origin is not known yet, until a probe's answer
//! names it: a plain bounded buffer (no I/O, no locks; its owner locks it).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use raft::eraftpb::Message;

/// How long a message to a raft id whose origin is unknown is held for the probe's
/// answer. A node that restarted knows only the peers that have spoken to it since (a
/// follower hears from its leader alone), so its first vote requests to the others
/// would otherwise be lost, and its election (a leadership transfer, too) with them.
pub const HOLD_FOR: Duration = Duration::from_secs(1);

/// Most messages held per raft id; older ones give way.
pub(crate) const HOLD_PER_PEER: usize = 8;

/// Most raft ids messages are held for at once.
pub(crate) const HOLD_PEERS: usize = 64;

/// Whether raft would not send `m` again soon if it were lost: no entries and no
/// snapshot, so it is small, and worth holding while the origin is being learned.
fn worth_holding(m: &Message) -> bool {
    m.entries.is_empty() && m.snapshot.is_none()
}

/// The held messages, per raft id, each with the time it was held.
#[derive(Debug, Default)]
pub(crate) struct Held(HashMap<u64, VecDeque<(Instant, Message)>>);

impl Held {
    /// Holds `m` for its raft id, whose origin is unknown: see [`HOLD_FOR`]. Returns
    /// whether it did (`false`: `m` is dropped).
    pub(crate) fn hold(&mut self, m: Message) -> bool {
        if !worth_holding(&m) {
            return false;
        }
        self.0
            .retain(|_, q| q.back().is_some_and(|(at, _)| at.elapsed() < HOLD_FOR));
        if !self.0.contains_key(&m.to) && self.0.len() >= HOLD_PEERS {
            return false;
        }
        let q = self.0.entry(m.to).or_default();
        if q.len() >= HOLD_PER_PEER {
            q.pop_front();
        }
        q.push_back((Instant::now(), m));
        true
    }

    /// Takes what is held for raft id `id` that is still recent, oldest first.
    pub(crate) fn take(&mut self, id: u64) -> Vec<Message> {
        self.0
            .remove(&id)
            .into_iter()
            .flatten()
            .filter(|(at, _)| at.elapsed() < HOLD_FOR)
            .map(|(_, m)| m)
            .collect()
    }

    /// The messages held for `id`, oldest first.
    #[cfg(test)]
    pub(crate) fn of(&self, id: u64) -> Vec<&Message> {
        self.0
            .get(&id)
            .into_iter()
            .flatten()
            .map(|(_, m)| m)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    fn heartbeat(to: u64, term: u64) -> Message {
        Message {
            msg_type: MessageType::MsgHeartbeat as i32,
            to,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn few_small_messages_per_peer_and_few_peers() {
        let mut h = Held::default();
        for term in 0..20 {
            assert!(h.hold(heartbeat(2, term)));
        }
        let terms: Vec<u64> = h.of(2).iter().map(|m| m.term).collect();
        assert_eq!(terms, (20 - HOLD_PER_PEER as u64..20).collect::<Vec<_>>());
        for peer in 100..100 + HOLD_PEERS as u64 - 1 {
            assert!(h.hold(heartbeat(peer, 1)));
        }
        assert!(!h.hold(heartbeat(9999, 1)), "one peer too many");
        let append = Message {
            msg_type: MessageType::MsgAppend as i32,
            to: 2,
            entries: vec![Entry::default()],
            ..Default::default()
        };
        assert!(!h.hold(append), "raft sends entries again: never held");
        let taken: Vec<u64> = h.take(2).iter().map(|m| m.term).collect();
        assert_eq!(taken.len(), HOLD_PER_PEER);
        assert!(h.take(2).is_empty(), "taken once");
    }
}
