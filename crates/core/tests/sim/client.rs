//! The client oracle: what a client of the cluster may observe.
//!
//! - No phantom values: every applied command was proposed, at exactly the log position
//!   the proposal returned (each proposal carries a unique value).
//! - No acknowledged write lost: a proposal is acknowledged when the node that proposed
//!   it applies its entry with the proposal's term; once the faults stop, every live
//!   member must have applied it.
//! - Linearizable reads: a read index is at least the highest commit index anyone had
//!   seen when the read was requested.

use std::collections::BTreeMap;

use craft_core::{Committed, CommittedKind, LogPosition};

use crate::sim::state_machine::KvStateMachine;

/// A proposal the client made.
#[derive(Debug, Clone, Copy)]
pub struct Proposal {
    /// Node that accepted it as leader.
    pub node: u64,
    /// Where it landed in that leader's log.
    pub at: LogPosition,
}

/// A read requested through `read_index`.
#[derive(Debug, Clone, Copy)]
pub struct PendingRead {
    /// Node asked (the leader then).
    pub node: u64,
    /// Highest commit index seen anywhere at request time.
    pub commit_at_request: u64,
}

/// Everything the client did and saw.
#[derive(Debug, Default)]
pub struct ClientOracle {
    /// Proposals by command bytes.
    proposed: BTreeMap<Vec<u8>, Proposal>,
    /// Acknowledged commands by index.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Reads not answered yet, by context.
    reads: BTreeMap<Vec<u8>, PendingRead>,
    /// Answered reads: (context, read index).
    pub answered_reads: Vec<(Vec<u8>, u64)>,
}

impl ClientOracle {
    /// Records a proposal accepted by `node` at `at`.
    pub fn on_propose(&mut self, node: u64, data: Vec<u8>, at: LogPosition) {
        self.proposed.insert(data, Proposal { node, at });
    }

    /// Node `id` applied `entry`.
    pub fn on_apply(&mut self, id: u64, entry: &Committed) -> Result<(), String> {
        let CommittedKind::Normal { data, .. } = &entry.kind else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(data);
        let Some(p) = self.proposed.get(data) else {
            return Err(format!(
                "client: node {id} applied {text} at index {}, which nobody proposed",
                entry.index
            ));
        };
        if p.at.index != entry.index || p.at.term != entry.term {
            return Err(format!(
                "client: node {id} applied {text} at (index {}, term {}) but it was proposed \
                 at (index {}, term {})",
                entry.index, entry.term, p.at.index, p.at.term
            ));
        }
        if p.node == id {
            self.acked.insert(entry.index, data.clone());
        }
        Ok(())
    }

    /// Records a read started on `node`.
    pub fn on_read(&mut self, ctx: Vec<u8>, read: PendingRead) {
        self.reads.insert(ctx, read);
    }

    /// Node `id` answered a read with `index`.
    pub fn on_read_state(&mut self, id: u64, ctx: &[u8], index: u64) -> Result<(), String> {
        let Some(read) = self.reads.remove(ctx) else {
            return Err(format!(
                "client: node {id} answered unknown read {:?}",
                String::from_utf8_lossy(ctx)
            ));
        };
        if read.node != id {
            return Err(format!(
                "client: read asked of node {} was answered by node {id}",
                read.node
            ));
        }
        if index < read.commit_at_request {
            return Err(format!(
                "client: read index {index} on node {id} is below commit index {} seen when \
                 the read was requested: a stale read",
                read.commit_at_request
            ));
        }
        self.answered_reads.push((ctx.to_vec(), index));
        Ok(())
    }

    /// How many proposals were acknowledged.
    pub fn acked(&self) -> usize {
        self.acked.len()
    }

    /// How many proposals were made.
    pub fn proposed(&self) -> usize {
        self.proposed.len()
    }

    /// Every acknowledged command must be in the state machine of node `id`.
    pub fn check_all_acked_applied(&self, id: u64, sm: &KvStateMachine) -> Result<(), String> {
        let applied: BTreeMap<u64, &Vec<u8>> = sm.applied.iter().map(|(i, d)| (*i, d)).collect();
        for (index, data) in &self.acked {
            if applied.get(index) != Some(&data) {
                return Err(format!(
                    "client: acknowledged {} at index {index} is lost on node {id} \
                     (applied index {})",
                    String::from_utf8_lossy(data),
                    sm.applied_index
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use craft_core::{Committed, CommittedKind, LogPosition};

    use super::{ClientOracle, PendingRead};
    use crate::sim::state_machine::KvStateMachine;

    fn normal(index: u64, term: u64, data: &[u8]) -> Committed {
        Committed {
            index,
            term,
            kind: CommittedKind::Normal {
                data: data.to_vec(),
                context: Vec::new(),
            },
        }
    }

    #[test]
    fn phantom_and_misplaced_values_lost_acks_and_stale_reads_are_caught() {
        let mut o = ClientOracle::default();
        o.on_propose(1, b"k1=v1".to_vec(), LogPosition { index: 3, term: 2 });
        assert!(o.on_apply(2, &normal(3, 2, b"k1=v1")).is_ok());
        assert_eq!(o.acked(), 0, "only the proposer acknowledges");
        assert!(o.on_apply(1, &normal(3, 2, b"k1=v1")).is_ok());
        assert_eq!(o.acked(), 1);
        assert!(o.on_apply(1, &normal(4, 2, b"k2=v2")).is_err(), "phantom");
        assert!(o.on_apply(1, &normal(4, 2, b"k1=v1")).is_err(), "misplaced");
        assert!(o
            .check_all_acked_applied(2, &KvStateMachine::default())
            .is_err());

        let read = PendingRead {
            node: 1,
            commit_at_request: 7,
        };
        o.on_read(b"r1".to_vec(), read);
        assert!(o.on_read_state(1, b"r1", 6).is_err(), "stale read");
        o.on_read(b"r2".to_vec(), read);
        assert!(o.on_read_state(1, b"r2", 7).is_ok());
    }
}
