//! The simulated network between replicas. Its fields say what it does to messages:
//! lose them (per link), deliver them twice, delay them so they overtake each other,
//! cut links (partitions), and swallow everything addressed to a crashed node.
//!
//! Time is logical: `now` is the simulation step, and a message sent at step `s` with
//! delay `d` can be delivered from step `s + d` on. Loss, cuts and crashes are decided
//! at delivery, so healing a partition does not resurrect what it already dropped.

use std::collections::{BTreeMap, BTreeSet};

use craft_core::raft::eraftpb::{Message, MessageType};
use rand::Rng;

/// A message on the wire.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// First step at which it may be delivered.
    pub deliver_at: u64,
    /// Send order, to keep delivery deterministic among equal `deliver_at`.
    pub seq: u64,
    /// The raft message.
    pub msg: Message,
}

/// Counters for diagnostics.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    /// Messages handed to the network (duplicates counted once).
    pub sent: u64,
    /// Extra copies created.
    pub duplicated: u64,
    /// Messages lost at random.
    pub dropped: u64,
    /// Messages lost to a cut link, a crashed recipient or an ignored type.
    pub blocked: u64,
    /// Messages delivered.
    pub delivered: u64,
}

/// What the network does to messages.
#[derive(Debug, Default)]
pub struct Network {
    /// Chance that a message is lost, on links without an entry in `link_drop`.
    pub drop_rate: f64,
    /// Loss rate per directed link `(from, to)`, overriding `drop_rate`.
    pub link_drop: BTreeMap<(u64, u64), f64>,
    /// Chance that a message is delivered twice.
    pub duplicate_rate: f64,
    /// Extra random delay of up to this many steps, so messages get reordered.
    pub max_delay: u64,
    /// Cut directed links `(from, to)`: a partition is a set of cut links.
    pub cut: BTreeSet<(u64, u64)>,
    /// Crashed nodes: messages to them are lost.
    pub crashed: BTreeSet<u64>,
    /// Message types that are always lost (like raft-rs's `ignorem`).
    pub ignore: Vec<MessageType>,
    /// Messages on the wire.
    in_flight: Vec<Envelope>,
    /// Next send sequence number.
    next_seq: u64,
    /// What happened to messages so far.
    pub stats: NetStats,
}

impl Network {
    /// Puts `msg` on the wire at step `now`, maybe twice, each copy with its own delay.
    pub fn send(&mut self, now: u64, msg: Message, rng: &mut impl Rng) {
        self.stats.sent += 1;
        let copies = if self.duplicate_rate > 0.0 && rng.random_bool(self.duplicate_rate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + if self.max_delay > 0 {
                rng.random_range(0..=self.max_delay)
            } else {
                0
            };
            self.in_flight.push(Envelope {
                deliver_at: now + delay,
                seq: self.next_seq,
                msg: msg.clone(),
            });
            self.next_seq += 1;
        }
    }

    /// Takes the messages due at step `now`, in delivery order. With `fraction < 1.0`
    /// each due message is only taken with that chance, the rest wait. Messages lost
    /// on the way come back in the second list.
    pub fn take_due(
        &mut self,
        now: u64,
        fraction: f64,
        rng: &mut impl Rng,
    ) -> (Vec<Message>, Vec<Message>) {
        let mut due = Vec::new();
        let mut keep = Vec::with_capacity(self.in_flight.len());
        for env in std::mem::take(&mut self.in_flight) {
            if env.deliver_at <= now && (fraction >= 1.0 || rng.random_bool(fraction)) {
                due.push(env);
            } else {
                keep.push(env);
            }
        }
        self.in_flight = keep;
        due.sort_by_key(|e| (e.deliver_at, e.seq));
        let (mut delivered, mut lost) = (Vec::new(), Vec::new());
        for env in due {
            let link = (env.msg.from, env.msg.to);
            if self.cut.contains(&link)
                || self.crashed.contains(&env.msg.to)
                || self.ignore.contains(&env.msg.get_msg_type())
            {
                self.stats.blocked += 1;
                lost.push(env.msg);
                continue;
            }
            let rate = self.link_drop.get(&link).copied().unwrap_or(self.drop_rate);
            if rate > 0.0 && rng.random_bool(rate.min(1.0)) {
                self.stats.dropped += 1;
                lost.push(env.msg);
                continue;
            }
            self.stats.delivered += 1;
            delivered.push(env.msg);
        }
        (delivered, lost)
    }

    /// Number of messages on the wire.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Cuts every link between nodes of different groups, both ways.
    pub fn partition(&mut self, groups: &[Vec<u64>]) {
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a {
                    for &y in b {
                        self.cut.insert((x, y));
                        self.cut.insert((y, x));
                    }
                }
            }
        }
    }

    /// Cuts `id` off from all of `others`, both ways.
    pub fn isolate(&mut self, id: u64, others: impl IntoIterator<Item = u64>) {
        for other in others {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Stops losing, duplicating and delaying messages, and heals all partitions.
    /// Crashed nodes stay crashed.
    pub fn calm(&mut self) {
        self.drop_rate = 0.0;
        self.link_drop.clear();
        self.duplicate_rate = 0.0;
        self.max_delay = 0;
        self.ignore.clear();
        self.heal();
    }
}
