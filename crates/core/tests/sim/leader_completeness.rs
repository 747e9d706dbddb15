//! Leader Completeness (Raft §5.4): if a log entry is committed in a given term, that
//! entry will be present in the logs of the leaders for all higher-numbered terms.
//! Checked at the moment a leader is first seen, against every entry seen committed
//! so far whose commit term is lower than the new leader's.

use craft_core::raft::{RaftLog, Storage};

use crate::sim::committed_immutable::CommittedImmutable;

/// Checks the log of node `id`, just elected leader of `term`.
pub fn check_new_leader<S: Storage>(
    id: u64,
    term: u64,
    log: &RaftLog<S>,
    committed: &CommittedImmutable,
) -> Result<(), String> {
    let first = log.first_index();
    for (&index, entry) in committed.entries() {
        if entry.commit_term >= term {
            continue;
        }
        if index < first {
            // Compacted behind a snapshot: only committed entries are compacted.
            if index > log.committed {
                return Err(format!(
                    "leader completeness: leader {id} of term {term} compacted index {index} \
                     beyond its commit index {}",
                    log.committed
                ));
            }
            continue;
        }
        let have = log.term(index).unwrap_or(0);
        if have != entry.term {
            return Err(format!(
                "leader completeness: entry {index} (term {}) committed by term {} is missing \
                 from leader {id} of term {term} (it has term {have} there, last index {})",
                entry.term,
                entry.commit_term,
                log.last_index()
            ));
        }
    }
    Ok(())
}
