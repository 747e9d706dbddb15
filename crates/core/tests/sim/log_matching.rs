//! Log Matching (Raft §5.3): if two logs contain an entry with the same index and term,
//! the logs are identical in all entries up through that index. Checked over the
//! entries still present in every node's store (its "disk"), crashed nodes included.

use craft_core::raft::eraftpb::Entry;
use craft_core::raft::{GetEntriesContext, Storage};

/// The persisted log of one store: its first index and its entries.
pub fn persisted_log(store: &impl Storage) -> Vec<Entry> {
    let first = store.first_index().unwrap_or(1);
    let last = store.last_index().unwrap_or(0);
    if last < first {
        return Vec::new();
    }
    store
        .entries(first, last + 1, None, GetEntriesContext::empty(false))
        .unwrap_or_default()
}

/// Checks every pair of logs.
pub fn check(logs: &[(u64, Vec<Entry>)]) -> Result<(), String> {
    for (i, (a_id, a)) in logs.iter().enumerate() {
        for (b_id, b) in &logs[i + 1..] {
            check_pair(*a_id, a, *b_id, b)?;
        }
    }
    Ok(())
}

fn check_pair(a_id: u64, a: &[Entry], b_id: u64, b: &[Entry]) -> Result<(), String> {
    let (Some(a0), Some(b0)) = (a.first(), b.first()) else {
        return Ok(());
    };
    let low = a0.index.max(b0.index);
    let high = (a0.index + a.len() as u64).min(b0.index + b.len() as u64);
    // Walk down from the top of the overlap; below the first matching (index, term),
    // everything must be identical.
    let mut matched = false;
    for index in (low..high).rev() {
        let x = &a[(index - a0.index) as usize];
        let y = &b[(index - b0.index) as usize];
        if !matched && x.term == y.term {
            matched = true;
        }
        if matched
            && (x.term != y.term || x.data != y.data || x.get_entry_type() != y.get_entry_type())
        {
            return Err(format!(
                "log matching: nodes {a_id} and {b_id} agree on an entry above index {index} \
                 but differ at it: (term {}, {:?}) vs (term {}, {:?})",
                x.term,
                String::from_utf8_lossy(&x.data),
                y.term,
                String::from_utf8_lossy(&y.data),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use craft_core::raft::eraftpb::Entry;

    use super::check;

    fn log(first: u64, terms: &[(u64, &str)]) -> Vec<Entry> {
        let mut index = first;
        terms
            .iter()
            .map(|(term, data)| {
                let e = Entry {
                    index,
                    term: *term,
                    data: data.as_bytes().to_vec(),
                    ..Default::default()
                };
                index += 1;
                e
            })
            .collect()
    }

    #[test]
    fn divergent_tails_are_allowed_divergent_prefixes_are_not() {
        let a = log(2, &[(1, "a"), (2, "b"), (2, "c")]);
        let b = log(3, &[(2, "b"), (3, "x"), (3, "y")]);
        assert!(check(&[(1, a.clone()), (2, b)]).is_ok());
        let c = log(2, &[(1, "z"), (2, "b")]);
        assert!(check(&[(1, a), (3, c)]).is_err());
    }
}
