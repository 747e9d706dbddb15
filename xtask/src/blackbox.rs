//! Watching a cluster from outside, the same way whatever consensus binary it runs:
//! heights and proposers come from the development controllers' chain files (a
//! development block names the node that proposed it), never from a service's own logs
//! or metrics. Used by `interop` and `conformance`.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cluster::Cluster;

/// The tip of a chain file: the height of its last complete line, and whether that line
/// is a block (rather than a jump made by syncing from a peer). Reads only the end of the
/// file, so polling a long chain costs next to nothing.
pub fn chain_tip(path: &Path) -> (u64, bool) {
    let Ok(mut file) = fs::File::open(path) else {
        return (0, false);
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return (0, false);
    };
    let mut window = 8 << 10;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
            return (0, false);
        }
        // Complete lines only: a line still being written has no newline yet, and the
        // first line of a window that starts mid-file may be cut.
        let text = String::from_utf8_lossy(&buf);
        let mut lines: Vec<&str> = text.split('\n').collect();
        lines.pop();
        if start > 0 && !lines.is_empty() {
            lines.remove(0);
        }
        for line in lines.iter().rev() {
            if let Some((h, data)) = line.split_once(' ') {
                if let Ok(h) = h.parse::<u64>() {
                    return (h, data != "sync");
                }
            }
        }
        if start == 0 {
            return (0, false);
        }
        window *= 4;
    }
}

/// The node that proposed a development block, given as the hex stored in `chain.log`:
/// the block reads `craft-dev-block|HEIGHT|NODE|...`.
pub fn proposer(hex: &str) -> Option<usize> {
    let bytes: Vec<u8> = hex
        .as_bytes()
        .chunks(2)
        .take(64)
        .map_while(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect();
    let text = String::from_utf8_lossy(&bytes);
    text.split('|').nth(2)?.parse().ok()
}

/// The proposer of the last block in a chain file.
fn last_proposer(path: &Path) -> Option<usize> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, d)| *d != "sync" && !d.is_empty())
        .and_then(|(_, d)| proposer(d))
}

/// Node `i`'s chain file.
pub fn chain_path(cluster: &Cluster, i: usize) -> PathBuf {
    cluster.node_dir(i).join("chain").join("chain.log")
}

/// Every node's chain height.
pub fn tips(cluster: &Cluster) -> Vec<u64> {
    (1..=cluster.state.nodes.len())
        .map(|i| chain_tip(&chain_path(cluster, i)).0)
        .collect()
}

/// The highest chain height.
pub fn max_tip(cluster: &Cluster) -> u64 {
    tips(cluster).into_iter().max().unwrap_or(0)
}

/// Polls the chain heights every 50 ms until `pred` holds on them, handing each sample
/// to `sample`; fails after `bound`. Returns how long it took.
pub fn wait(
    cluster: &Cluster,
    bound: Duration,
    what: &str,
    mut pred: impl FnMut(&[u64]) -> bool,
    mut sample: impl FnMut(&[u64]),
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let tips = tips(cluster);
        sample(&tips);
        if pred(&tips) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > bound {
            bail!("not within {bound:?}: {what}; heights {tips:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The proposer of the newest block, once blocks above `after` come from a running
/// node: a new leader first commits what its predecessor left in flight, and those
/// blocks still name the predecessor.
pub fn leader_after(
    cluster: &Cluster,
    bound: Duration,
    after: u64,
    mut sample: impl FnMut(&[u64]),
) -> anyhow::Result<usize> {
    let start = Instant::now();
    let mut floor = after;
    loop {
        let left = bound.saturating_sub(start.elapsed());
        wait(
            cluster,
            left,
            &format!("a block above {floor}"),
            |t| t.iter().copied().max().unwrap_or(0) > floor,
            &mut sample,
        )?;
        let tips = tips(cluster);
        let best = (1..=tips.len())
            .max_by_key(|i| tips[i - 1])
            .context("no nodes")?;
        let proposer = last_proposer(&chain_path(cluster, best))
            .context("the newest block names no proposer")?;
        let views = cluster.views();
        if views.get(proposer.wrapping_sub(1)).is_some_and(|v| v.alive) {
            return Ok(proposer);
        }
        if start.elapsed() > bound {
            bail!("blocks keep naming node {proposer}, which is down");
        }
        floor = tips[best - 1];
    }
}

/// Waits until node `i` commits again and is level with the others: its height passes
/// `from` and reaches what the highest node had one poll earlier.
pub fn caught_up(
    cluster: &Cluster,
    bound: Duration,
    i: usize,
    from: u64,
    mut sample: impl FnMut(&[u64]),
) -> anyhow::Result<Duration> {
    let mut prev_max = max_tip(cluster);
    wait(
        cluster,
        bound,
        &format!("node {i} commits again and is level with the others"),
        |t| {
            let level = t[i - 1] > from && t[i - 1] >= prev_max;
            prev_max = t.iter().copied().max().unwrap_or(0);
            level
        },
        &mut sample,
    )
}

/// Heights each node's chain skipped: missing below its top block and not covered by
/// a jump its controller made by syncing from peers (`HEIGHT sync` covers every height up
/// to HEIGHT, as a real controller's block sync would fill them). As
/// `(node, first skipped height, how many)`.
pub fn gaps(cluster: &Cluster) -> Vec<(usize, u64, u64)> {
    (1..=cluster.state.nodes.len())
        .filter_map(|i| {
            let text = fs::read_to_string(chain_path(cluster, i)).unwrap_or_default();
            let mut blocks = std::collections::BTreeSet::new();
            let mut synced = 0;
            for line in text.lines() {
                let Some((h, data)) = line.split_once(' ') else {
                    continue;
                };
                let Ok(h) = h.parse::<u64>() else { continue };
                if data == "sync" {
                    synced = synced.max(h);
                } else if !data.is_empty() {
                    blocks.insert(h);
                }
            }
            let top = blocks.last().copied().unwrap_or(0);
            let skipped: Vec<u64> = (synced + 1..=top).filter(|h| !blocks.contains(h)).collect();
            skipped
                .first()
                .map(|first| (i, *first, skipped.len() as u64))
        })
        .collect()
}

/// Watches for gaps in block production: the longest time without a new block.
pub struct Monitor {
    height: u64,
    since: Instant,
    longest: Duration,
    longest_at: u64,
}

impl Monitor {
    /// A monitor that has seen height `height` just now.
    pub fn new(height: u64) -> Self {
        Self {
            height,
            since: Instant::now(),
            longest: Duration::ZERO,
            longest_at: 0,
        }
    }

    /// Takes a sample of the chain heights.
    pub fn observe(&mut self, tips: &[u64]) {
        let height = tips.iter().copied().max().unwrap_or(0);
        if height > self.height {
            let gap = self.since.elapsed();
            if gap > self.longest {
                self.longest = gap;
                self.longest_at = self.height;
            }
            self.height = height;
            self.since = Instant::now();
        }
    }

    /// The longest time without a new block so far, counting the current wait, and
    /// the height it followed.
    pub fn longest(&self) -> (Duration, u64) {
        let now = self.since.elapsed();
        if now > self.longest {
            (now, self.height)
        } else {
            (self.longest, self.longest_at)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_proposer_is_read_from_a_development_block() {
        let hex: String = b"craft-dev-block|17|3|00000000000000ff|aabbccdd"
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(proposer(&hex), Some(3));
        assert_eq!(proposer("zz"), None);
        assert_eq!(proposer(""), None);
    }

    #[test]
    fn the_tip_skips_a_line_still_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chain.log");
        assert_eq!(chain_tip(&path), (0, false));
        let mut text = String::new();
        for h in 1..=5000u64 {
            text.push_str(&format!("{h} {}\n", "ab".repeat(20)));
        }
        text.push_str("5001 sync\n5002 abab");
        fs::write(&path, &text).unwrap();
        assert_eq!(chain_tip(&path), (5001, false));
        fs::write(&path, "1 ab\n2 cd\n").unwrap();
        assert_eq!(chain_tip(&path), (2, true));
        // One line longer than the first window: found by widening it.
        fs::write(&path, format!("7 {}\n", "ab".repeat(40_000))).unwrap();
        assert_eq!(chain_tip(&path), (7, true));
    }

    #[test]
    fn the_monitor_reports_the_longest_pause() {
        let mut m = Monitor::new(10);
        m.observe(&[10, 9]);
        std::thread::sleep(Duration::from_millis(30));
        m.observe(&[11, 10]);
        let (gap, at) = m.longest();
        assert!(gap >= Duration::from_millis(30), "{gap:?}");
        assert_eq!(at, 10);
    }
}
