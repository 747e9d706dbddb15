//! A development controller: a toy chain that serves
//! `controller.Consensus2ControllerService` the way a real CITA-Cloud controller does,
//! so local clusters and tests need nothing else installed.
//!
//! - Proposals are at height + 1 and carry `craft-dev-block|HEIGHT|NODE|NONCE`, padded
//!   with `|xxx...` to a configured size, then sealed with `|CRC` (the CRC32C of all
//!   before it, 8 hex digits), as a real controller's block carries its hash.
//! - `CheckProposal` and `CommitBlock` reject heights at or below the chain's and data
//!   that is malformed or whose seal does not match: a block damaged on its way is
//!   never committed.
//! - `CommitBlock` appends the block to `chain.log` (fsynced; a padded block as its head,
//!   seal and padding length, so the log stays small with megabyte blocks) and answers
//!   the new configuration; the `u64::MAX` ping commits nothing. Committing a different
//!   block at a height the chain already has is refused (that would be a fork).
//! - A real controller syncs blocks it missed from peers; this one records a block above
//!   a gap as is, leaving the skipped heights unknown. When it jumps ahead to a peer's
//!   height ([`DevChain::follow_peers`]) it writes `HEIGHT sync` to `chain.log` and, to
//!   `sync.log`, which peer the heights came from (`FROM TO PEER`: heights `FROM + 1 ..=
//!   TO` are that peer's), so that a checker can hold every chain, synced parts included,
//!   against the others.
//! - The validator list can change at given heights (the same schedule on every node,
//!   as a chain's system contract would do it).
//! - [`DevStats`] counts the calls and measures each block's latency as this controller
//!   sees it, from the `GetProposal` that produced it to its `CommitBlock`: the same
//!   yardstick for any consensus implementation.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cita_proto::common::{
    ConsensusConfiguration, ConsensusConfigurationResponse, Empty, Proposal, ProposalResponse,
    ProposalWithProof, StatusCode,
};
use cita_proto::consensus::consensus_service_client::ConsensusServiceClient;
use cita_proto::controller::consensus2_controller_service_server::Consensus2ControllerService;
use prost::bytes::Bytes;
use tonic::{Request, Response, Status};

use craft_controller::PING_HEIGHT;

/// Status code for a proposal at the wrong height.
pub const CODE_WRONG_HEIGHT: u32 = 101;
/// Status code for undecodable proposal data.
pub const CODE_MALFORMED: u32 = 102;
/// Status code for a block that conflicts with one already committed.
pub const CODE_CONFLICT: u32 = 103;
/// Status code for a failed write of the chain file.
pub const CODE_STORAGE: u32 = 104;
/// Status code of a `CheckProposal` failed on purpose ([`DevChainConfig::fail_check_every`]):
/// a transient refusal, as a busy real controller may give.
pub const CODE_TRANSIENT: u32 = 105;

const BLOCK_PREFIX: &str = "craft-dev-block";

/// Settings of a development chain.
#[derive(Debug, Clone, Default)]
pub struct DevChainConfig {
    /// Name written into proposals (usually the node's index).
    pub node_name: String,
    /// Validators at height 0 (node addresses).
    pub validators: Vec<Vec<u8>>,
    /// Block interval in seconds, as reported to consensus.
    pub block_interval: u32,
    /// Validator list changes: from `height` on, the list is `validators`.
    pub validator_schedule: Vec<(u64, Vec<Vec<u8>>)>,
    /// Where `chain.log` lives; `None` keeps the chain in memory.
    pub data_dir: Option<PathBuf>,
    /// Artificial delay added to every call (benchmarks of slow controllers).
    pub delay: Duration,
    /// Skip the fsync of `chain.log` (benchmarks of an instant controller only).
    pub no_fsync: bool,
    /// Pad proposals to at least this many bytes of data (0: no padding).
    pub block_bytes: usize,
    /// Every this many `GetProposal` calls, answer a proposal at a height other than
    /// height + 1 (alternately the current height and height + 2), which a conforming
    /// consensus service must not propose (0: never).
    pub wrong_height_every: u64,
    /// Every this many `CheckProposal` calls, refuse with [`CODE_TRANSIENT`] without
    /// looking at the proposal (0: never).
    pub fail_check_every: u64,
}

/// Upper bounds (microseconds) of the block latency histogram: 50 µs growing by 15%
/// up to 20 s.
pub fn latency_buckets_us() -> Vec<u64> {
    let mut out = Vec::new();
    let mut x = 50.0f64;
    while x < 20e6 {
        let b = x.round() as u64;
        if out.last() != Some(&b) {
            out.push(b);
        }
        x *= 1.15;
    }
    out
}

/// What a development controller counts, for benchmarks.
#[derive(Debug)]
pub struct DevStats {
    /// `GetProposal` calls answered.
    pub get_proposal: AtomicU64,
    /// `CheckProposal` calls answered.
    pub check_proposal: AtomicU64,
    /// `CommitBlock` calls answered (pings included).
    pub commit_block: AtomicU64,
    /// Blocks this controller committed.
    pub blocks: AtomicU64,
    /// Proposals handed out at a wrong height on purpose.
    pub wrong_height_proposals: AtomicU64,
    /// `CheckProposal` calls refused on purpose.
    pub failed_checks: AtomicU64,
    /// `CommitBlock` calls (pings aside) for a height other than height + 1.
    pub commits_out_of_order: AtomicU64,
    /// Blocks committed that this controller had proposed, by latency bucket.
    latency: Vec<AtomicU64>,
    buckets: Vec<u64>,
    /// When the latest proposal was handed out, and at which height.
    proposed: Mutex<Option<(u64, Instant)>>,
}

impl Default for DevStats {
    fn default() -> Self {
        let buckets = latency_buckets_us();
        Self {
            get_proposal: AtomicU64::new(0),
            check_proposal: AtomicU64::new(0),
            commit_block: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
            wrong_height_proposals: AtomicU64::new(0),
            failed_checks: AtomicU64::new(0),
            commits_out_of_order: AtomicU64::new(0),
            latency: (0..=buckets.len()).map(|_| AtomicU64::new(0)).collect(),
            buckets,
            proposed: Mutex::new(None),
        }
    }
}

impl DevStats {
    fn proposed(&self, height: u64) {
        *self.proposed.lock().unwrap_or_else(|e| e.into_inner()) = Some((height, Instant::now()));
    }

    fn committed(&self, height: u64) {
        self.blocks.fetch_add(1, Ordering::Relaxed);
        let at = self
            .proposed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_if(|(h, _)| *h == height);
        if let Some((_, at)) = at {
            let us = at.elapsed().as_micros() as u64;
            let i = self.buckets.partition_point(|b| *b < us);
            self.latency[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters as JSON: `calls`, `blocks` and `latency_us`, a list of
    /// `[upper bound in µs (0 = infinity), count]` with counts not cumulative.
    pub fn to_json(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let buckets: Vec<String> = self
            .latency
            .iter()
            .enumerate()
            .map(|(i, c)| format!("[{},{}]", self.buckets.get(i).copied().unwrap_or(0), get(c)))
            .collect();
        format!(
            "{{\"get_proposal\":{},\"check_proposal\":{},\"commit_block\":{},\"blocks\":{},\"wrong_height_proposals\":{},\"failed_checks\":{},\"commits_out_of_order\":{},\"latency_us\":[{}]}}",
            get(&self.get_proposal),
            get(&self.check_proposal),
            get(&self.commit_block),
            get(&self.blocks),
            get(&self.wrong_height_proposals),
            get(&self.failed_checks),
            get(&self.commits_out_of_order),
            buckets.join(",")
        )
    }
}

/// Blocks whose data the controller keeps in memory, the newest ones (for
/// [`DevChain::block`] and [`DevChain::forget_last_block`]); of every other block it keeps a
/// [`Fingerprint`]. A chain of 4 MiB blocks would otherwise grow by gigabytes an hour.
const RECENT_BLOCKS: usize = 8;

/// What identifies a committed block, to refuse a different one at its height: its
/// length, its CRC32C and its first [`FINGERPRINT_HEAD`] bytes. Only sealed blocks are
/// committed, and a sealed block is its head (height, node, nonce) followed by padding
/// that its length fixes, so two blocks with the same fingerprint are the same block.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    len: usize,
    crc32c: u32,
    head: Box<[u8]>,
}

/// Bytes of a block kept in its [`Fingerprint`]: more than a development block's head.
const FINGERPRINT_HEAD: usize = 128;

impl Fingerprint {
    fn of(data: &[u8]) -> Self {
        Self {
            len: data.len(),
            crc32c: crc32c::crc32c(data),
            head: data[..data.len().min(FINGERPRINT_HEAD)].into(),
        }
    }
}

#[derive(Debug)]
struct ChainState {
    blocks: BTreeMap<u64, Fingerprint>,
    /// The data of the newest [`RECENT_BLOCKS`] blocks.
    recent: BTreeMap<u64, Bytes>,
    height: u64,
    log: Option<File>,
    /// Reused for each `chain.log` line.
    line: Vec<u8>,
}

impl ChainState {
    fn insert(&mut self, height: u64, data: Bytes) {
        self.blocks.insert(height, Fingerprint::of(&data));
        self.recent.insert(height, data);
        while self.recent.len() > RECENT_BLOCKS {
            self.recent.pop_first();
        }
    }
}

/// The toy chain behind the development controller.
#[derive(Debug, Clone)]
pub struct DevChain {
    cfg: Arc<DevChainConfig>,
    state: Arc<Mutex<ChainState>>,
    stats: Arc<DevStats>,
}

/// Bytes the seal adds: `|` and 8 hex digits.
const SEAL_LEN: usize = 9;

/// `body` with its seal.
fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(format!("|{crc:08x}").as_bytes());
    body
}

/// A development block for `height` with this node name and nonce, padded to `bytes`
/// when that is longer, and sealed.
pub fn make_block(height: u64, node: &str, nonce: u64, bytes: usize) -> Vec<u8> {
    let mut body = format!("{BLOCK_PREFIX}|{height}|{node}|{nonce:016x}").into_bytes();
    let room = bytes.saturating_sub(SEAL_LEN);
    if body.len() + 1 < room {
        body.push(b'|');
        body.resize(room, b'x');
    }
    seal(body)
}

/// Whether `data` is a sealed development block for `height`. One pass over the
/// padding and one CRC: blocks may be megabytes, and the controller checks each twice.
pub fn is_valid_block(height: u64, data: &[u8]) -> bool {
    let Some(split) = data.len().checked_sub(SEAL_LEN) else {
        return false;
    };
    let (body, tail) = data.split_at(split);
    let sealed = std::str::from_utf8(tail)
        .ok()
        .and_then(|t| t.strip_prefix('|'))
        // Lower-case only: one block, one spelling.
        .filter(|hex| {
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        == Some(crc32c::crc32c(body));
    if !sealed {
        return false;
    }
    // PREFIX|HEIGHT|NODE|NONCE, then optionally |xxx...: the fifth field is the rest.
    fn text(field: &[u8]) -> Option<&str> {
        std::str::from_utf8(field).ok()
    }
    let mut fields = body.splitn(5, |b| *b == b'|');
    fields.next() == Some(BLOCK_PREFIX.as_bytes())
        && fields
            .next()
            .and_then(text)
            .and_then(|h| h.parse::<u64>().ok())
            == Some(height)
        && fields.next().and_then(text).is_some()
        && fields.next().and_then(text).is_some()
        && fields.next().is_none_or(all_x)
}

/// Whether `pad` is only `x`s, eight bytes at a time (a block's padding is megabytes).
fn all_x(pad: &[u8]) -> bool {
    const XS: u64 = u64::from_ne_bytes([b'x'; 8]);
    let words = pad.chunks_exact(8);
    let rest = words.remainder();
    words
        .map(|w| <[u8; 8]>::try_from(w).map_or(0, u64::from_ne_bytes))
        .fold(0, |diff, w| diff | (w ^ XS))
        == 0
        && rest.iter().all(|b| *b == b'x')
}

/// Where a sealed block's padding (`|` and the `x`s) starts, if it has one: after the
/// fourth `|` of its head.
fn padding_start(data: &[u8]) -> Option<usize> {
    let body = &data[..data.len().checked_sub(SEAL_LEN)?];
    body.iter()
        .take(FINGERPRINT_HEAD)
        .enumerate()
        .filter(|(_, b)| **b == b'|')
        .nth(3)
        .map(|(at, _)| at)
}

/// A sealed block as one `chain.log` line: `HEIGHT HEX`, or `HEIGHT HEX +N` when it is
/// padded, where `HEX` leaves out the padding, which is `|` and `N` times `x` before the
/// seal ([`parse_block_line`] puts it back).
fn encode_block_line(height: u64, data: &[u8], line: &mut Vec<u8>) {
    line.clear();
    line.extend_from_slice(format!("{height} ").as_bytes());
    let (kept, pad) = match padding_start(data) {
        Some(at) => {
            let seal = data.len() - SEAL_LEN;
            (vec![&data[..at], &data[seal..]], Some(seal - at - 1))
        }
        None => (vec![data], None),
    };
    for part in kept {
        let start = line.len();
        line.resize(start + 2 * part.len(), 0);
        // The buffer is exactly twice the input, so this cannot fail.
        let _ = hex::encode_to_slice(part, &mut line[start..]);
    }
    if let Some(pad) = pad {
        line.extend_from_slice(format!(" +{pad}").as_bytes());
    }
    line.push(b'\n');
}

/// The block of a `chain.log` line's data (what follows `HEIGHT `), if it is one. The
/// block is not checked: see [`is_valid_block`].
pub fn parse_block_line(data: &str) -> Option<Vec<u8>> {
    let (hex, pad) = match data.split_once(" +") {
        // No block is larger than a gRPC message may be: a damaged count is refused, not
        // allocated.
        Some((hex, pad)) => (
            hex,
            Some(
                pad.parse::<usize>()
                    .ok()
                    .filter(|n| *n <= cita_proto::MAX_MESSAGE_BYTES)?,
            ),
        ),
        None => (data, None),
    };
    let mut block = hex::decode(hex).ok()?;
    if let Some(pad) = pad {
        let seal = block.split_off(block.len().checked_sub(SEAL_LEN)?);
        block.reserve(1 + pad + SEAL_LEN);
        block.push(b'|');
        block.resize(block.len() + pad, b'x');
        block.extend_from_slice(&seal);
    }
    Some(block)
}

/// A chain as stored in `chain.log`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredChain {
    /// Known blocks by height.
    pub blocks: BTreeMap<u64, Vec<u8>>,
    /// Highest height reached by syncing from a peer (blocks below unknown here).
    pub synced: u64,
}

impl StoredChain {
    /// The chain's height.
    pub fn height(&self) -> u64 {
        self.blocks
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.synced)
    }
}

/// Reads a chain file: one `HEIGHT HEX` or `HEIGHT HEX +N` line per block (see
/// [`encode_block_line`]), `HEIGHT sync` for a jump made by syncing from a peer. A torn
/// last line (a crash in the middle of a write) is ignored.
pub fn read_chain(path: &Path) -> std::io::Result<StoredChain> {
    let mut chain = StoredChain::default();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(chain),
        Err(e) => return Err(e),
    };
    for line in BufReader::new(file).lines() {
        let line = line?;
        let Some((h, data)) = line.split_once(' ') else {
            continue;
        };
        let Ok(h) = h.parse::<u64>() else { continue };
        if data == "sync" {
            chain.synced = chain.synced.max(h);
        } else if let Some(data) = parse_block_line(data) {
            if is_valid_block(h, &data) {
                chain.blocks.insert(h, data);
            }
        }
    }
    Ok(chain)
}

impl DevChain {
    /// Opens the chain, reading `chain.log` from `cfg.data_dir` if present.
    pub fn open(cfg: DevChainConfig) -> std::io::Result<Self> {
        let (stored, log) = match &cfg.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let path = dir.join("chain.log");
                let stored = read_chain(&path)?;
                let log = OpenOptions::new().create(true).append(true).open(&path)?;
                (stored, Some(log))
            }
            None => (StoredChain::default(), None),
        };
        let height = stored.height();
        let mut state = ChainState {
            blocks: BTreeMap::new(),
            recent: BTreeMap::new(),
            height,
            log,
            line: Vec::new(),
        };
        for (h, data) in stored.blocks {
            state.insert(h, data.into());
        }
        Ok(Self {
            cfg: Arc::new(cfg),
            state: Arc::new(Mutex::new(state)),
            stats: Arc::new(DevStats::default()),
        })
    }

    /// The controller's counters.
    pub fn stats(&self) -> &DevStats {
        &self.stats
    }

    fn lock(&self) -> MutexGuard<'_, ChainState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current height.
    pub fn height(&self) -> u64 {
        self.lock().height
    }

    /// The block at `height`, if it is one of the newest few (older blocks are in
    /// `chain.log`, see [`read_chain`]).
    pub fn block(&self, height: u64) -> Option<Vec<u8>> {
        self.lock().recent.get(&height).map(|b| b.to_vec())
    }

    /// Forgets the last block, as a controller whose own storage lost its last write:
    /// the height goes one back and the block is returned. Kept in memory only (a chain
    /// file keeps the block for the next open). For tests of a consensus service that
    /// must offer the lost block again.
    pub fn forget_last_block(&self) -> Option<(u64, Vec<u8>)> {
        let mut st = self.lock();
        let height = st.height;
        let block = st.recent.remove(&height)?.to_vec();
        st.blocks.remove(&height);
        st.height = height - 1;
        Some((height, block))
    }

    fn validators_at(&self, height: u64) -> Vec<Vec<u8>> {
        self.cfg
            .validator_schedule
            .iter()
            .filter(|(h, _)| *h <= height)
            .max_by_key(|(h, _)| *h)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| self.cfg.validators.clone())
    }

    /// The configuration that holds at the current height.
    pub fn configuration(&self) -> ConsensusConfiguration {
        let height = self.height();
        ConsensusConfiguration {
            height,
            block_interval: self.cfg.block_interval,
            validators: self.validators_at(height),
        }
    }

    /// A new proposal at height + 1.
    pub fn proposal(&self) -> Proposal {
        self.proposal_at(self.height() + 1)
    }

    /// A proposal at `height`.
    fn proposal_at(&self, height: u64) -> Proposal {
        let data = make_block(
            height,
            &self.cfg.node_name,
            rand::random::<u64>(),
            self.cfg.block_bytes,
        );
        Proposal {
            height,
            data: data.into(),
        }
    }

    /// `CheckProposal`: 0 when acceptable, else an error code.
    pub fn check(&self, p: &Proposal) -> u32 {
        if !is_valid_block(p.height, &p.data) {
            return CODE_MALFORMED;
        }
        if p.height <= self.height() {
            return CODE_WRONG_HEIGHT;
        }
        0
    }

    /// `CommitBlock`: stores the block and returns the configuration after it.
    pub fn commit(&self, p: &Proposal) -> Result<ConsensusConfiguration, u32> {
        if p.height == PING_HEIGHT && p.data.is_empty() {
            return Ok(self.configuration());
        }
        if !is_valid_block(p.height, &p.data) {
            return Err(CODE_MALFORMED);
        }
        {
            let mut st = self.lock();
            match st.blocks.get(&p.height) {
                Some(existing) if existing == &Fingerprint::of(&p.data) => {}
                Some(_) => {
                    tracing::error!(
                        height = p.height,
                        "refusing a block that conflicts with the committed one"
                    );
                    return Err(CODE_CONFLICT);
                }
                None => {
                    if p.height != st.height + 1 {
                        self.stats
                            .commits_out_of_order
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    let sync = !self.cfg.no_fsync;
                    let ChainState { log, line, .. } = &mut *st;
                    if let Some(log) = log.as_mut() {
                        // Encoded into a reused buffer: an unpadded block may be large.
                        encode_block_line(p.height, &p.data, line);
                        let written = log.write_all(line).and_then(|_| {
                            if sync {
                                log.sync_data()
                            } else {
                                Ok(())
                            }
                        });
                        if let Err(e) = written {
                            tracing::error!(error = %e, "writing chain.log failed");
                            return Err(CODE_STORAGE);
                        }
                    }
                    if p.height > st.height + 1 {
                        tracing::info!(
                            from = st.height,
                            to = p.height,
                            "chain jumped (blocks in between synced elsewhere)"
                        );
                    }
                    st.insert(p.height, p.data.clone());
                    st.height = st.height.max(p.height);
                    self.stats.committed(p.height);
                    tracing::debug!(height = p.height, "block committed");
                }
            }
        }
        Ok(self.configuration())
    }

    /// Stands in for a real controller's block sync: when a peer chain stays at least
    /// `lag` blocks ahead for three checks in a row, jump to its height (the blocks in
    /// between stay unknown here) and push the new configuration to consensus. This is
    /// how a node removed from the validators learns it was added back.
    pub async fn follow_peers(&self, peers: Vec<String>, consensus: String, lag: u64) {
        use craft_controller::{Controller, GrpcController};
        let clients: Vec<(&str, GrpcController)> = peers
            .iter()
            .filter_map(|p| {
                Some((
                    p.as_str(),
                    GrpcController::new(p, Duration::from_secs(2)).ok()?,
                ))
            })
            .collect();
        let mut behind_rounds = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut best = (0, "");
            for (peer, c) in &clients {
                if let Ok(cfg) = c.ping().await {
                    if cfg.height > best.0 {
                        best = (cfg.height, *peer);
                    }
                }
            }
            let (best, peer) = best;
            let mine = self.height();
            if best >= mine + lag.max(1) {
                behind_rounds += 1;
            } else {
                behind_rounds = 0;
            }
            if behind_rounds >= 3 {
                behind_rounds = 0;
                if let Err(e) = self.jump_to(best, peer) {
                    tracing::error!(error = %e, "recording sync failed");
                    continue;
                }
                tracing::info!(from = mine, to = best, peer, "synced height from peers");
                self.reconfigure_until_accepted(consensus.clone()).await;
            }
        }
    }

    /// Jumps to `height`, a height `peer` has: the blocks in between are that peer's.
    fn jump_to(&self, height: u64, peer: &str) -> std::io::Result<()> {
        let mut st = self.lock();
        if height <= st.height {
            return Ok(());
        }
        if let Some(dir) = &self.cfg.data_dir {
            // Which peer's chain fills the jump, before the jump itself is recorded.
            let mut sync_log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("sync.log"))?;
            sync_log.write_all(format!("{} {height} {peer}\n", st.height).as_bytes())?;
            sync_log.sync_data()?;
        }
        if let Some(log) = st.log.as_mut() {
            log.write_all(format!("{height} sync\n").as_bytes())?;
            log.sync_data()?;
        }
        st.height = height;
        Ok(())
    }

    /// Pushes the configuration to the consensus service at `addr` until it accepts it,
    /// as a controller does at start-up.
    pub async fn reconfigure_until_accepted(&self, addr: String) {
        let mut attempt = 0u32;
        let backoff = craft_controller::Backoff::default();
        loop {
            attempt += 1;
            let result = async {
                let mut client = ConsensusServiceClient::connect(addr.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let status = client
                    .reconfigure(self.configuration())
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                if status.code == 0 {
                    Ok(())
                } else {
                    Err(format!("status code {}", status.code))
                }
            }
            .await;
            match result {
                Ok(()) => {
                    tracing::info!(%addr, "consensus accepted the configuration");
                    return;
                }
                Err(e) => {
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(%addr, attempt, error = %e, "reconfigure failed, retrying");
                    }
                    tokio::time::sleep(backoff.delay(attempt)).await;
                }
            }
        }
    }
}

fn status(code: u32) -> Option<StatusCode> {
    Some(StatusCode { code })
}

#[tonic::async_trait]
impl Consensus2ControllerService for DevChain {
    async fn get_proposal(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<ProposalResponse>, Status> {
        if !self.cfg.delay.is_zero() {
            tokio::time::sleep(self.cfg.delay).await;
        }
        let call = self.stats.get_proposal.fetch_add(1, Ordering::Relaxed) + 1;
        let every = self.cfg.wrong_height_every;
        let proposal = if every > 0 && call.is_multiple_of(every) {
            let n = self
                .stats
                .wrong_height_proposals
                .fetch_add(1, Ordering::Relaxed);
            let height = self.height();
            // Alternately a height already committed and one beyond the next.
            self.proposal_at(if n.is_multiple_of(2) {
                height
            } else {
                height + 2
            })
        } else {
            let p = self.proposal();
            self.stats.proposed(p.height);
            p
        };
        Ok(Response::new(ProposalResponse {
            status: status(0),
            proposal: Some(proposal),
        }))
    }

    async fn check_proposal(&self, req: Request<Proposal>) -> Result<Response<StatusCode>, Status> {
        if !self.cfg.delay.is_zero() {
            tokio::time::sleep(self.cfg.delay).await;
        }
        let call = self.stats.check_proposal.fetch_add(1, Ordering::Relaxed) + 1;
        let every = self.cfg.fail_check_every;
        if every > 0 && call.is_multiple_of(every) {
            self.stats.failed_checks.fetch_add(1, Ordering::Relaxed);
            return Ok(Response::new(StatusCode {
                code: CODE_TRANSIENT,
            }));
        }
        Ok(Response::new(StatusCode {
            code: self.check(req.get_ref()),
        }))
    }

    async fn commit_block(
        &self,
        req: Request<ProposalWithProof>,
    ) -> Result<Response<ConsensusConfigurationResponse>, Status> {
        if !self.cfg.delay.is_zero() {
            tokio::time::sleep(self.cfg.delay).await;
        }
        self.stats.commit_block.fetch_add(1, Ordering::Relaxed);
        let Some(proposal) = req.into_inner().proposal else {
            return Ok(Response::new(ConsensusConfigurationResponse {
                status: status(CODE_MALFORMED),
                config: None,
            }));
        };
        let result = if self.cfg.no_fsync {
            // A buffered append: quick enough to make on the async thread.
            self.commit(&proposal)
        } else {
            let chain = self.clone();
            // The fsync of chain.log blocks; keep it off the async workers.
            tokio::task::spawn_blocking(move || chain.commit(&proposal))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
        };
        Ok(Response::new(match result {
            Ok(config) => ConsensusConfigurationResponse {
                status: status(0),
                config: Some(config),
            },
            Err(code) => ConsensusConfigurationResponse {
                status: status(code),
                config: None,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chain(dir: Option<PathBuf>) -> DevChain {
        DevChain::open(DevChainConfig {
            node_name: "n1".into(),
            validators: vec![vec![1; 20], vec![2; 20]],
            block_interval: 3,
            validator_schedule: vec![(2, vec![vec![1; 20]])],
            data_dir: dir,
            delay: Duration::ZERO,
            no_fsync: false,
            block_bytes: 0,
            wrong_height_every: 0,
            fail_check_every: 0,
        })
        .unwrap()
    }

    #[test]
    fn proposals_are_at_next_height_and_commit_in_order() {
        let c = chain(None);
        let p = c.proposal();
        assert_eq!(p.height, 1);
        assert_eq!(c.check(&p), 0);
        let cfg = c.commit(&p).unwrap();
        assert_eq!(cfg.height, 1);
        assert_eq!(cfg.block_interval, 3);
        assert_eq!(cfg.validators.len(), 2);
        // Same block again is idempotent; a different one at that height is a fork.
        assert_eq!(c.commit(&p).unwrap().height, 1);
        let mut other = p.clone();
        other.data = make_block(1, "n2", 1, 0).into();
        assert_eq!(c.commit(&other), Err(CODE_CONFLICT));
        assert_eq!(c.check(&p), CODE_WRONG_HEIGHT);
    }

    #[tokio::test]
    async fn conformance_knobs_hand_out_wrong_heights_and_refuse_checks() {
        let c = DevChain::open(DevChainConfig {
            node_name: "n1".into(),
            wrong_height_every: 2,
            fail_check_every: 3,
            ..Default::default()
        })
        .unwrap();
        let mut heights = Vec::new();
        for _ in 0..4 {
            let p = c
                .get_proposal(Request::new(Empty {}))
                .await
                .unwrap()
                .into_inner()
                .proposal
                .unwrap();
            heights.push(p.height);
        }
        // Every second call: the current height, then height + 2.
        assert_eq!(heights, [1, 0, 1, 2]);
        assert_eq!(c.stats().wrong_height_proposals.load(Ordering::Relaxed), 2);

        let good = c.proposal();
        let mut codes = Vec::new();
        for _ in 0..6 {
            let code = c
                .check_proposal(Request::new(good.clone()))
                .await
                .unwrap()
                .into_inner()
                .code;
            codes.push(code);
        }
        assert_eq!(codes, [0, 0, CODE_TRANSIENT, 0, 0, CODE_TRANSIENT]);

        // A commit that skips a height is counted; the next one in order is not.
        c.commit(&c.proposal_at(2)).unwrap();
        assert_eq!(c.stats().commits_out_of_order.load(Ordering::Relaxed), 1);
        c.commit(&c.proposal()).unwrap();
        assert_eq!(c.stats().commits_out_of_order.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn old_blocks_are_remembered_by_fingerprint_and_only_the_newest_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let c = chain(Some(dir.path().to_path_buf()));
        let mut first = None;
        for _ in 0..3 * RECENT_BLOCKS {
            let p = c.proposal();
            c.commit(&p).unwrap();
            first.get_or_insert(p);
        }
        let first = first.unwrap();
        assert_eq!(c.lock().recent.len(), RECENT_BLOCKS);
        assert_eq!(c.block(1), None, "height 1 is no longer kept whole");
        // Still known: the same block again is fine, another one at its height a fork.
        assert!(c.commit(&first).is_ok());
        let mut other = first.clone();
        other.data = make_block(1, "n2", 1, 0).into();
        assert_eq!(c.commit(&other), Err(CODE_CONFLICT));
        // And the file holds every block, whole.
        let stored = read_chain(&dir.path().join("chain.log")).unwrap();
        assert_eq!(stored.blocks.len(), 3 * RECENT_BLOCKS);
        assert_eq!(stored.blocks.get(&1), Some(&first.data.to_vec()));
    }

    #[test]
    fn padding_is_checked_to_its_last_byte() {
        for len in [0, 1, 7, 8, 9, 63, 64, 65] {
            let pad = vec![b'x'; len];
            assert!(all_x(&pad), "{len} x's");
            for at in 0..len {
                let mut bad = pad.clone();
                bad[at] = b'y';
                assert!(!all_x(&bad), "a y at {at} of {len}");
            }
        }
    }

    #[test]
    fn padded_proposals_are_valid_and_sized() {
        let c = DevChain::open(DevChainConfig {
            node_name: "n1".into(),
            block_bytes: 1024,
            ..Default::default()
        })
        .unwrap();
        let p = c.proposal();
        assert_eq!(p.data.len(), 1024);
        assert_eq!(c.check(&p), 0);
        let mut bad = p.clone();
        bad.data = damaged(&p.data, |d| d[1000] = b'y');
        assert_eq!(c.check(&bad), CODE_MALFORMED);
    }

    /// `data` changed by `damage`.
    fn damaged(data: &[u8], damage: impl FnOnce(&mut Vec<u8>)) -> Bytes {
        let mut copy = data.to_vec();
        damage(&mut copy);
        copy.into()
    }

    #[test]
    fn padded_blocks_are_logged_without_their_padding_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let c = DevChain::open(DevChainConfig {
            node_name: "n1".into(),
            block_bytes: 1 << 20,
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        })
        .unwrap();
        let p = c.proposal();
        c.commit(&p).unwrap();
        let log = std::fs::read_to_string(dir.path().join("chain.log")).unwrap();
        assert!(
            log.len() < 200,
            "a 1 MiB block took {} bytes of log",
            log.len()
        );
        let stored = read_chain(&dir.path().join("chain.log")).unwrap();
        assert_eq!(stored.blocks.get(&1), Some(&p.data.to_vec()));
        // A padding count that does not match the seal is not a block; nor is a
        // block written whole (the earlier format) read any differently.
        let huge = format!("1 {} +{}\n", "00".repeat(SEAL_LEN), usize::MAX);
        std::fs::write(dir.path().join("chain.log"), huge).unwrap();
        assert!(read_chain(&dir.path().join("chain.log"))
            .unwrap()
            .blocks
            .is_empty());
        let wrong = log.replace(" +", " +1");
        std::fs::write(dir.path().join("chain.log"), &wrong).unwrap();
        assert!(read_chain(&dir.path().join("chain.log"))
            .unwrap()
            .blocks
            .is_empty());
        let whole = format!("1 {}\n", hex::encode(&p.data));
        std::fs::write(dir.path().join("chain.log"), whole).unwrap();
        let stored = read_chain(&dir.path().join("chain.log")).unwrap();
        assert_eq!(stored.blocks.get(&1), Some(&p.data.to_vec()));
    }

    #[test]
    fn a_block_damaged_anywhere_is_refused() {
        let c = chain(None);
        let p = c.proposal();
        assert_eq!(c.check(&p), 0);
        for i in 0..p.data.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut bad = p.clone();
                bad.data = damaged(&p.data, |d| d[i] ^= flip);
                assert_eq!(c.check(&bad), CODE_MALFORMED, "flip {flip:#x} at byte {i}");
                assert_eq!(c.commit(&bad), Err(CODE_MALFORMED), "flip at byte {i}");
            }
        }
        assert_eq!(c.height(), 0, "a damaged block was committed");
        // Cut short, or with the seal of another block.
        let mut cut = p.clone();
        cut.data.truncate(p.data.len() - 1);
        assert_eq!(c.check(&cut), CODE_MALFORMED);
        let mut swapped = p.clone();
        let other = make_block(1, "n2", 7, 0);
        let at = swapped.data.len() - SEAL_LEN;
        swapped.data = damaged(&p.data, |d| {
            d[at..].copy_from_slice(&other[other.len() - SEAL_LEN..])
        });
        assert_eq!(c.check(&swapped), CODE_MALFORMED);
    }

    #[test]
    fn stats_measure_blocks_this_controller_proposed() {
        let c = chain(None);
        let p = c.proposal();
        c.stats.proposed(p.height);
        c.commit(&p).unwrap();
        // A block proposed elsewhere is counted but not timed.
        let q = Proposal {
            height: 2,
            data: make_block(2, "n2", 2, 0).into(),
        };
        c.commit(&q).unwrap();
        let json: serde_json::Value = serde_json::from_str(&c.stats.to_json()).unwrap();
        assert_eq!(json["blocks"], 2);
        let timed: u64 = json["latency_us"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[1].as_u64().unwrap())
            .sum();
        assert_eq!(timed, 1);
    }

    #[test]
    fn rejects_malformed_and_answers_ping() {
        let c = chain(None);
        let bad = Proposal {
            height: 1,
            data: b"garbage".to_vec().into(),
        };
        assert_eq!(c.check(&bad), CODE_MALFORMED);
        assert_eq!(c.commit(&bad), Err(CODE_MALFORMED));
        let wrong = Proposal {
            height: 2,
            data: format!("{BLOCK_PREFIX}|1|n|0").into_bytes().into(),
        };
        assert_eq!(c.check(&wrong), CODE_MALFORMED);
        let ping = Proposal {
            height: PING_HEIGHT,
            data: Default::default(),
        };
        assert_eq!(c.commit(&ping).unwrap().height, 0);
        assert_eq!(c.height(), 0);
    }

    #[test]
    fn validator_schedule_applies_at_its_height() {
        let c = chain(None);
        c.commit(&c.proposal()).unwrap();
        let cfg = c.commit(&c.proposal()).unwrap();
        assert_eq!(cfg.height, 2);
        assert_eq!(cfg.validators, vec![vec![1; 20]]);
    }

    #[test]
    fn chain_survives_reopen_and_ignores_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let c = chain(Some(dir.path().to_path_buf()));
        let p1 = c.proposal();
        c.commit(&p1).unwrap();
        c.commit(&c.proposal()).unwrap();
        c.jump_to(7, "http://peer").unwrap();
        assert_eq!(c.height(), 7);
        // Heights 3..=7 came from that peer.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sync.log")).unwrap(),
            "2 7 http://peer\n"
        );
        drop(c);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("chain.log"))
            .unwrap();
        f.write_all(b"3 6372").unwrap();
        let c = chain(Some(dir.path().to_path_buf()));
        assert_eq!(c.height(), 7);
        assert_eq!(c.block(1), Some(p1.data.to_vec()));
        assert_eq!(c.proposal().height, 8);
    }
}
