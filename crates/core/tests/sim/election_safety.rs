//! Election Safety (Raft §5.2, figure 3): at most one leader can be elected in a given
//! term. Tracked over the whole run, crashes and restarts included.

use std::collections::BTreeMap;

/// Every leader seen, by term.
#[derive(Debug, Default)]
pub struct ElectionSafety {
    /// The one node seen leading each term.
    leaders: BTreeMap<u64, u64>,
}

impl ElectionSafety {
    /// Records that node `id` is leader in `term`. Returns whether this is the first
    /// time, i.e. an election just happened.
    pub fn observe_leader(&mut self, id: u64, term: u64) -> Result<bool, String> {
        match self.leaders.get(&term) {
            Some(&other) if other != id => Err(format!(
                "election safety: nodes {other} and {id} are both leaders of term {term}"
            )),
            Some(_) => Ok(false),
            None => {
                self.leaders.insert(term, id);
                Ok(true)
            }
        }
    }

    /// How many elections were won.
    pub fn elections(&self) -> usize {
        self.leaders.len()
    }
}
