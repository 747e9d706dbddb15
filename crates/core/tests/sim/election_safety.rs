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

#[cfg(test)]
mod tests {
    use super::ElectionSafety;

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let mut e = ElectionSafety::default();
        assert_eq!(e.observe_leader(1, 2), Ok(true));
        assert_eq!(e.observe_leader(1, 2), Ok(false));
        assert_eq!(e.observe_leader(2, 3), Ok(true));
        assert!(e.observe_leader(3, 2).is_err());
    }
}
