//! State Machine Safety (Raft §5.4.3): if a server has applied a log entry at a given
//! index, no other server will ever apply a different entry for that index. Every
//! application (and every restored snapshot's history) is compared with the first
//! entry applied at that index anywhere.

use std::collections::BTreeMap;

use craft_core::{Committed, CommittedKind};

use crate::sim::state_machine::KvStateMachine;

/// What was applied at each index, as (term, content).
#[derive(Debug, Default)]
pub struct StateMachineSafety {
    /// First entry applied at each index, anywhere.
    applied: BTreeMap<u64, (u64, String)>,
}

fn describe(kind: &CommittedKind) -> String {
    match kind {
        CommittedKind::Empty => "empty".to_owned(),
        CommittedKind::Normal { data, .. } => {
            format!("normal {}", String::from_utf8_lossy(data))
        }
        CommittedKind::ConfChange { change, .. } => format!("conf change {change:?}"),
    }
}

impl StateMachineSafety {
    /// Node `id` applied `entry`.
    pub fn on_apply(&mut self, id: u64, entry: &Committed) -> Result<(), String> {
        let what = describe(&entry.kind);
        match self.applied.get(&entry.index) {
            Some((term, known)) if *term != entry.term || *known != what => Err(format!(
                "state machine safety: node {id} applied (term {}, {what}) at index {} where \
                 (term {term}, {known}) was applied before",
                entry.term, entry.index
            )),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(entry.index, (entry.term, what));
                Ok(())
            }
        }
    }

    /// Node `id` restored `sm` from a snapshot: its history must agree too.
    pub fn on_restore(&mut self, id: u64, sm: &KvStateMachine) -> Result<(), String> {
        for (index, data) in &sm.applied {
            let what = format!("normal {}", String::from_utf8_lossy(data));
            if let Some((_, known)) = self.applied.get(index) {
                if *known != what {
                    return Err(format!(
                        "state machine safety: snapshot restored on node {id} has {what} at \
                         index {index} where {known} was applied before"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use craft_core::{Committed, CommittedKind};

    use super::StateMachineSafety;

    fn normal(index: u64, term: u64, data: &str) -> Committed {
        Committed {
            index,
            term,
            kind: CommittedKind::Normal {
                data: data.as_bytes().to_vec(),
                context: Vec::new(),
            },
        }
    }

    #[test]
    fn different_entries_applied_at_one_index_are_caught() {
        let mut s = StateMachineSafety::default();
        assert!(s.on_apply(1, &normal(5, 2, "k1=v1")).is_ok());
        assert!(s.on_apply(2, &normal(5, 2, "k1=v1")).is_ok());
        assert!(s.on_apply(3, &normal(5, 3, "k1=v1")).is_err());
        assert!(s.on_apply(3, &normal(5, 2, "k1=v2")).is_err());
    }
}
