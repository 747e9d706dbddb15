//! The recent tail of the log, kept in memory.

use super::*;

/// The recent tail of the log in memory: the terms of every entry written since the
/// store was opened, and the entries themselves up to a byte budget. Both end at the
/// log's last index.
#[derive(Debug, Default)]
pub(super) struct Tail {
    /// Terms of `[terms_start, last_index]`.
    pub(super) terms: VecDeque<u64>,
    pub(super) terms_start: u64,
    /// Entries `[last_index + 1 - entries.len(), last_index]`.
    pub(super) entries: VecDeque<Entry>,
    pub(super) entries_bytes: usize,
}

pub(super) fn entry_bytes(e: &Entry) -> usize {
    e.data.len() + e.context.len() + 32
}

impl Tail {
    pub(super) fn empty_at(next: u64) -> Self {
        Self {
            terms_start: next,
            ..Default::default()
        }
    }

    pub(super) fn entries_start(&self, last_index: u64) -> u64 {
        last_index + 1 - self.entries.len() as u64
    }

    pub(super) fn term(&self, idx: u64) -> Option<u64> {
        let offset = idx.checked_sub(self.terms_start)?;
        self.terms.get(usize::try_from(offset).ok()?).copied()
    }

    /// Drops everything at or after `index` (a conflicting suffix being replaced).
    pub(super) fn truncate_from(&mut self, index: u64, last_index: u64) {
        if index < self.terms_start {
            self.terms.clear();
            self.terms_start = index;
        } else {
            self.terms.truncate((index - self.terms_start) as usize);
        }
        let start = self.entries_start(last_index);
        let keep = index.saturating_sub(start) as usize;
        while self.entries.len() > keep {
            if let Some(e) = self.entries.pop_back() {
                self.entries_bytes -= entry_bytes(&e);
            }
        }
    }

    /// Drops everything up to and including `index` (compaction).
    pub(super) fn compact_to(&mut self, index: u64) {
        while self.terms_start <= index && !self.terms.is_empty() {
            self.terms.pop_front();
            self.terms_start += 1;
        }
        self.terms_start = self.terms_start.max(index + 1);
        while self.entries.front().is_some_and(|e| e.index <= index) {
            if let Some(e) = self.entries.pop_front() {
                self.entries_bytes -= entry_bytes(&e);
            }
        }
    }

    pub(super) fn push(&mut self, entry: Entry, budget: usize) {
        self.terms.push_back(entry.term);
        self.entries_bytes += entry_bytes(&entry);
        self.entries.push_back(entry);
        while self.entries_bytes > budget && self.entries.len() > 1 {
            if let Some(e) = self.entries.pop_front() {
                self.entries_bytes -= entry_bytes(&e);
            }
        }
    }
}
