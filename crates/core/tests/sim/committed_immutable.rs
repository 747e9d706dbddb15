//! Committed entries are immutable: once any node has seen an entry committed, the
//! entry at that index never changes on any node. Each entry is recorded (index ->
//! term, type, data) the first time a commit index covering it is observed, and every
//! later observation and every application must agree.

use std::collections::BTreeMap;

use craft_core::raft::eraftpb::{Entry, EntryType};
use craft_core::raft::GetEntriesContext;
use craft_core::{Committed, CommittedKind, LogStore, Replica};

/// One entry as first seen committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEntry {
    /// Term the entry was created in.
    pub term: u64,
    /// Entry type.
    pub entry_type: EntryType,
    /// Entry payload.
    pub data: Vec<u8>,
    /// Term of the node that first saw it committed: at least the term of the leader
    /// that committed it, so every leader of a higher term must hold it.
    pub commit_term: u64,
}

impl CommittedEntry {
    fn same_entry(&self, term: u64, entry_type: EntryType, data: &[u8]) -> bool {
        self.term == term && self.entry_type == entry_type && self.data == data
    }
}

/// Everything seen committed so far.
#[derive(Debug, Default)]
pub struct CommittedImmutable {
    /// Committed entries by index.
    entries: BTreeMap<u64, CommittedEntry>,
    /// Per node, the commit index up to which its log was already compared.
    observed: BTreeMap<u64, u64>,
}

impl CommittedImmutable {
    /// Reads the entries node `id` newly considers committed and compares them with
    /// what was recorded.
    pub fn observe<S: LogStore>(&mut self, id: u64, replica: &Replica<S>) -> Result<(), String> {
        let raft_log = &replica.raw().raft.raft_log;
        let commit = raft_log.committed;
        let seen = self.observed.get(&id).copied().unwrap_or(0);
        if commit <= seen {
            return Ok(());
        }
        self.observed.insert(id, commit);
        let low = (seen + 1).max(raft_log.first_index());
        if low > commit {
            return Ok(());
        }
        let entries = raft_log
            .slice(low, commit + 1, None, GetEntriesContext::empty(false))
            .map_err(|e| format!("node {id}: cannot read committed [{low}, {commit}]: {e}"))?;
        let term = replica.role().term;
        for entry in entries {
            self.record(id, &entry, term)?;
        }
        Ok(())
    }

    /// Records or compares one entry node `id` holds as committed.
    pub fn record(&mut self, id: u64, entry: &Entry, node_term: u64) -> Result<(), String> {
        let entry_type = entry.get_entry_type();
        match self.entries.get(&entry.index) {
            Some(known) if !known.same_entry(entry.term, entry_type, &entry.data) => Err(format!(
                "committed entry changed: index {} was committed as (term {}, {:?}, {:?}) \
                 but node {id} has (term {}, {:?}, {:?})",
                entry.index,
                known.term,
                known.entry_type,
                String::from_utf8_lossy(&known.data),
                entry.term,
                entry_type,
                String::from_utf8_lossy(&entry.data),
            )),
            Some(_) => Ok(()),
            None => {
                self.entries.insert(
                    entry.index,
                    CommittedEntry {
                        term: entry.term,
                        entry_type,
                        data: entry.data.to_vec(),
                        commit_term: node_term,
                    },
                );
                Ok(())
            }
        }
    }

    /// Node `id` applied `entry`: it must be what was seen committed at its index.
    pub fn check_applied(&self, id: u64, entry: &Committed) -> Result<(), String> {
        let Some(known) = self.entries.get(&entry.index) else {
            return Err(format!(
                "node {id} applied index {} before anyone saw it committed",
                entry.index
            ));
        };
        let same = known.term == entry.term
            && match &entry.kind {
                CommittedKind::Empty => {
                    known.entry_type == EntryType::EntryNormal && known.data.is_empty()
                }
                CommittedKind::Normal { data, .. } => {
                    known.entry_type == EntryType::EntryNormal && known.data == *data
                }
                CommittedKind::ConfChange { .. } => known.entry_type != EntryType::EntryNormal,
            };
        if same {
            Ok(())
        } else {
            Err(format!(
                "node {id} applied {:?} (term {}) at index {} but (term {}, {:?}, {:?}) was \
                 committed there",
                entry.kind,
                entry.term,
                entry.index,
                known.term,
                known.entry_type,
                String::from_utf8_lossy(&known.data)
            ))
        }
    }

    /// Entries seen committed, by index.
    pub fn entries(&self) -> &BTreeMap<u64, CommittedEntry> {
        &self.entries
    }

    /// Highest index anyone has seen committed.
    pub fn max_index(&self) -> u64 {
        self.entries.keys().next_back().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use craft_core::raft::eraftpb::Entry;

    use super::CommittedImmutable;

    fn entry(index: u64, term: u64, data: &str) -> Entry {
        Entry {
            index,
            term,
            data: data.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_changed_committed_entry_is_caught() {
        let mut c = CommittedImmutable::default();
        assert!(c.record(1, &entry(4, 2, "k1=v1"), 2).is_ok());
        assert!(c.record(2, &entry(4, 2, "k1=v1"), 3).is_ok());
        assert!(c.record(3, &entry(4, 3, "k1=v9"), 3).is_err());
        assert_eq!(c.entries()[&4].commit_term, 2);
    }
}
