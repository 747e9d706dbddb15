//! `consensus reset-raft`: the way back for a raft directory this node cannot start
//! from (a snapshot another program wrote, or damage), without giving up its vote.
//!
//! The directory is moved aside, not deleted, and a new one holds only the hard state's
//! term and vote. Keeping them matters: a node that forgot them could vote twice in one
//! term. Its log and snapshot are gone, so it starts as a member without state; the
//! leader finds its log empty and sends a snapshot, then the log (the controller keeps
//! the chain itself, so no block is lost).

use std::path::{Path, PathBuf};

use anyhow::Context;
use craft_core::raft::eraftpb::HardState;
use craft_core::raft::Storage as _;
use craft_core::{LogStore, LogWrite};
use craft_storage::{RocksLogStore, StoreOptions};

/// Moves the raft directory at `path` aside (to `<path>.reset-<unix seconds>`) and
/// writes a new one that holds only its term and vote. Returns where the old one went.
pub fn reset_raft(path: &Path) -> anyhow::Result<PathBuf> {
    let hard_state = {
        let store = RocksLogStore::open(path, StoreOptions::default())
            .with_context(|| format!("opening raft data at {}", path.display()))?;
        store
            .initial_state()
            .with_context(|| format!("reading the hard state at {}", path.display()))?
            .hard_state
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".reset-{stamp}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside)
        .with_context(|| format!("moving {} aside to {}", path.display(), aside.display()))?;
    let store = RocksLogStore::open(path, StoreOptions::default())
        .with_context(|| format!("creating raft data at {}", path.display()))?;
    // The commit index goes back to 0: nothing is left below it.
    let kept = HardState {
        term: hard_state.term,
        vote: hard_state.vote,
        commit: 0,
    };
    if kept != HardState::default() {
        store
            .write(LogWrite {
                hard_state: Some(kept),
                must_sync: true,
                ..Default::default()
            })
            .with_context(|| format!("writing the hard state at {}", path.display()))?;
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use craft_core::{make_snapshot, voters};

    #[test]
    fn a_reset_keeps_the_vote_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        {
            let store = RocksLogStore::open(&path, StoreOptions::default()).unwrap();
            store
                .bootstrap(make_snapshot(
                    5,
                    5,
                    voters([1, 2, 3]),
                    b"not a config".to_vec(),
                ))
                .unwrap();
            store
                .write(LogWrite {
                    hard_state: Some(HardState {
                        term: 9,
                        vote: 2,
                        commit: 5,
                    }),
                    must_sync: true,
                    ..Default::default()
                })
                .unwrap();
        }
        let aside = reset_raft(&path).unwrap();
        assert!(aside.is_dir(), "the old directory is kept");
        let store = RocksLogStore::open(&path, StoreOptions::default()).unwrap();
        let state = store.initial_state().unwrap();
        assert_eq!((state.hard_state.term, state.hard_state.vote), (9, 2));
        assert_eq!(state.hard_state.commit, 0);
        assert_eq!(store.latest_snapshot().unwrap().get_metadata().index, 0);
        assert_eq!(store.last_index().unwrap(), 0);
        let old = RocksLogStore::open(&aside, StoreOptions::default()).unwrap();
        assert_eq!(old.latest_snapshot().unwrap().data, b"not a config");
    }
}
