//! The search for one key: Wing & Gong's depth-first search for a linearization, with the
//! improvements of Lowe ("Testing for linearizability", 2017): a doubly-linked list of call
//! and return entries from which a linearized operation is lifted (and put back on
//! backtracking), and a cache of configurations (set of linearized operations, register
//! value) known to lead nowhere.
//!
//! Indeterminate writes are kept out of the entry list. A configuration is (D, I, v): the
//! definite operations linearized, the indeterminate writes applied, the register value.
//! From (D, I, v) the search first tries the definite operations that may come next, then the
//! indeterminate writes invoked before the earliest pending return. It succeeds when every
//! definite operation is linearized: the indeterminate writes left over are the ones that
//! never took effect (equivalently, took effect at +infinity, where nothing observes them).
//!
//! Three rules keep indeterminate writes from multiplying the work. Any linearization can be
//! rewritten so that every indeterminate write it applies changes the value and is read right
//! away (drop the others: nothing observed them), so the search applies one only then: when
//! it changes the value and a read of that value may come next, and the step after it must
//! be such a read. And failures are recorded when a configuration is abandoned, a
//! configuration (D, I', v) being skipped when (D, I, v) failed for some I ⊆ I': applying
//! fewer indeterminate writes only leaves more choices, since an indeterminate write
//! constrains nothing by itself. (The "a read must come next" flag counts as one more member
//! of I: it only takes choices away.)

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::history::{Op, OpId, Operation, Ret};

/// The register value `NONE` is "absent"; other values index [`Prepared::values`].
const NONE: u32 = 0;
/// Entry 0 of the list is the sentinel: `next[0]` is the first entry, `prev[0]` the last.
const HEAD: u32 = 0;

/// What an operation does to the register, values interned.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Set (or, with [`NONE`], delete): the value afterwards.
    Write(u32),
    /// Get: the value it returned.
    Read(u32),
}

/// The outcome of the search of one key.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A linearization exists.
    Linearizable,
    /// None exists; the deepest dead end met.
    Violation(DeadEnd),
    /// The budget of configurations ran out.
    Budget,
}

/// The deepest configuration from which no operation could be linearized.
#[derive(Debug)]
pub(crate) struct DeadEnd {
    /// The operations linearized, in order.
    pub prefix: Vec<OpId>,
    /// The register value after them.
    pub value: Option<String>,
    /// The definite operation whose completion came first among those not linearized: it had
    /// to be next or preceded by some candidate, and nothing fit.
    pub stuck: OpId,
    /// The operations that could have come next (each was tried).
    pub candidates: Vec<OpId>,
}

/// One key's operations, ready for the search.
struct Prepared {
    /// Interned values; index 0 is "absent".
    values: Vec<Option<String>>,
    /// Definite operations: global id and action.
    def_id: Vec<OpId>,
    def_act: Vec<Act>,
    /// Entries 1..: `is_ret`, the definite operation, rank in time order; a call's `mate`
    /// is its return entry.
    is_ret: Vec<bool>,
    entry_op: Vec<u32>,
    mate: Vec<u32>,
    rank: Vec<u32>,
    /// Indeterminate writes in invocation order: global id, rank of the call, value after.
    ind_id: Vec<OpId>,
    ind_rank: Vec<u32>,
    ind_val: Vec<u32>,
    /// The previous indeterminate write of the same value, if any.
    ind_same: Vec<Option<usize>>,
}

fn intern(values: &mut Vec<Option<String>>, index: &mut HashMap<String, u32>, v: &str) -> u32 {
    if let Some(&i) = index.get(v) {
        return i;
    }
    let i = u32::try_from(values.len()).unwrap_or(u32::MAX);
    values.push(Some(v.to_string()));
    index.insert(v.to_string(), i);
    i
}

impl Prepared {
    /// `ops` are the operations of one key with their global ids, validated.
    fn new(ops: &[(OpId, &Operation)]) -> Self {
        let mut values = vec![None];
        let mut index = HashMap::new();
        let mut def_id = Vec::new();
        let mut def_act = Vec::new();
        let mut def_times = Vec::new();
        let mut ind = Vec::new();
        for &(id, op) in ops {
            let mut val = |op: &Op, ret: Option<&Ret>| -> Option<Act> {
                match (op, ret) {
                    (Op::Set(v), _) => Some(Act::Write(intern(&mut values, &mut index, v))),
                    (Op::Delete, _) => Some(Act::Write(NONE)),
                    (Op::Get, Some(Ret::Value(Some(v)))) => {
                        Some(Act::Read(intern(&mut values, &mut index, v)))
                    }
                    (Op::Get, Some(Ret::Value(None))) => Some(Act::Read(NONE)),
                    // A read of unknown result constrains nothing: dropped.
                    (Op::Get, _) => None,
                }
            };
            match &op.ret {
                Some(c) if c.ret != Ret::Unknown => {
                    if let Some(act) = val(&op.op, Some(&c.ret)) {
                        def_id.push(id);
                        def_act.push(act);
                        def_times.push((op.call, c.time));
                    }
                }
                _ => {
                    if let Some(Act::Write(v)) = val(&op.op, None) {
                        ind.push((op.call, id, v));
                    }
                }
            }
        }

        // Indeterminate writes in invocation order: the search scans them up to a limit.
        ind.sort_unstable_by_key(|&(call, id, _)| (call, id));

        // Every event in time order; at equal times calls first (equal times are concurrent).
        // (time, 0 call / 1 return, 0 definite / 1 indeterminate, index)
        let mut events: Vec<(u64, u8, u8, usize)> =
            Vec::with_capacity(2 * def_id.len() + ind.len());
        for (i, &(c, r)) in def_times.iter().enumerate() {
            events.push((c, 0, 0, i));
            events.push((r, 1, 0, i));
        }
        for (j, &(c, _, _)) in ind.iter().enumerate() {
            events.push((c, 0, 1, j));
        }
        events.sort_unstable();

        let mut last_of_value = HashMap::new();
        let ind_same = ind
            .iter()
            .enumerate()
            .map(|(j, &(_, _, v))| last_of_value.insert(v, j))
            .collect();

        let n_entries = 2 * def_id.len() + 1;
        let mut is_ret = vec![false; n_entries];
        let mut entry_op = vec![0; n_entries];
        let mut mate = vec![0; n_entries];
        let mut rank = vec![0; n_entries];
        let mut call_entry = vec![0u32; def_id.len()];
        let mut ind_rank = vec![0; ind.len()];
        let mut next_entry = 1usize;
        for (r, &(_, kind, indet, i)) in events.iter().enumerate() {
            let r = u32::try_from(r).unwrap_or(u32::MAX);
            if indet == 1 {
                ind_rank[i] = r;
                continue;
            }
            let e = next_entry;
            next_entry += 1;
            let op = u32::try_from(i).unwrap_or(u32::MAX);
            entry_op[e] = op;
            rank[e] = r;
            if kind == 0 {
                call_entry[i] = u32::try_from(e).unwrap_or(u32::MAX);
            } else {
                is_ret[e] = true;
                let c = call_entry[i] as usize;
                mate[c] = u32::try_from(e).unwrap_or(u32::MAX);
            }
        }
        Self {
            values,
            def_id,
            def_act,
            is_ret,
            entry_op,
            mate,
            rank,
            ind_id: ind.iter().map(|&(_, id, _)| id).collect(),
            ind_rank,
            ind_val: ind.iter().map(|&(_, _, v)| v).collect(),
            ind_same,
        }
    }
}

/// A small multiplicative hasher for the cache keys (words of a bitset): the default
/// SipHash would be most of the search's time.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u64]` hashes as its bytes in one call.
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0; 8];
            b.copy_from_slice(w);
            self.write_u64(u64::from_le_bytes(b));
        }
        for &b in words.remainder() {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, w: usize) {
        self.write_u64(w as u64);
    }
}

/// Failed configurations: key (value, linearized definite operations), value the sets of
/// applied indeterminate writes with which it failed (no one a superset of another).
type Cache = HashMap<Box<[u64]>, Vec<Box<[u64]>>, BuildHasherDefault<WordHasher>>;

/// Where the search looks for the next operation to linearize.
#[derive(Clone, Copy)]
enum Cursor {
    /// At this entry of the list.
    Main(u32),
    /// At the `j`-th indeterminate write, considering those invoked before rank `limit`.
    Indet { j: usize, limit: u32 },
}

/// What a frame of the stack linearized.
#[derive(Clone, Copy)]
enum Choice {
    /// The definite operation of this call entry.
    Main(u32),
    /// This indeterminate write, chosen with this `limit`.
    Indet { j: usize, limit: u32 },
}

struct Frame {
    choice: Choice,
    /// The register value before the choice.
    before: u32,
}

fn bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64)
        .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
}

fn set_bit(bits: &mut [u64], i: usize, on: bool) {
    if let Some(w) = bits.get_mut(i / 64) {
        if on {
            *w |= 1u64 << (i % 64);
        } else {
            *w &= !(1u64 << (i % 64));
        }
    }
}

/// `a ⊆ b`, both of the same length.
fn subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

struct Search<'a> {
    p: &'a Prepared,
    next: Vec<u32>,
    prev: Vec<u32>,
    def_bits: Vec<u64>,
    ind_bits: Vec<u64>,
    value: u32,
    linearized: usize,
    stack: Vec<Frame>,
    cache: Cache,
    scratch: Vec<u64>,
    explored: u64,
    deepest: Option<(usize, DeadEnd)>,
}

impl<'a> Search<'a> {
    fn new(p: &'a Prepared) -> Self {
        let n = p.is_ret.len();
        let next = (0..n).map(|e| ((e + 1) % n) as u32).collect();
        let prev = (0..n).map(|e| ((e + n - 1) % n) as u32).collect();
        Self {
            p,
            next,
            prev,
            def_bits: vec![0; p.def_id.len().div_ceil(64)],
            ind_bits: vec![0; (p.ind_id.len() + 1).div_ceil(64)],
            value: NONE,
            linearized: 0,
            stack: Vec::new(),
            cache: Cache::default(),
            scratch: Vec::new(),
            explored: 0,
            deepest: None,
        }
    }

    fn unlink(&mut self, e: u32) {
        let (p, n) = (self.prev[e as usize], self.next[e as usize]);
        self.next[p as usize] = n;
        self.prev[n as usize] = p;
    }

    fn relink(&mut self, e: u32) {
        let (p, n) = (self.prev[e as usize], self.next[e as usize]);
        self.next[p as usize] = e;
        self.prev[n as usize] = e;
    }

    /// Takes a call entry and its return out of the list.
    fn lift(&mut self, call: u32) {
        self.unlink(call);
        self.unlink(self.p.mate[call as usize]);
    }

    /// Undoes [`lift`](Self::lift) (links put back in the reverse order).
    fn unlift(&mut self, call: u32) {
        self.relink(self.p.mate[call as usize]);
        self.relink(call);
    }

    /// The cache key of the current definite set with register `value`: the value, the index
    /// of the first word not full, and the words from there to the last non-zero one (a
    /// search keeps a short window of such words in the middle).
    fn key(&mut self, value: u32) {
        let bits = &self.def_bits;
        let lo = bits
            .iter()
            .position(|&w| w != u64::MAX)
            .unwrap_or(bits.len());
        let hi = bits
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |i| i + 1)
            .max(lo);
        self.scratch.clear();
        self.scratch.push(u64::from(value) | ((lo as u64) << 32));
        self.scratch.extend_from_slice(&bits[lo..hi]);
    }

    /// True when the current sets with register `value` are known to fail.
    fn known_to_fail(&mut self, value: u32) -> bool {
        self.key(value);
        self.cache
            .get(self.scratch.as_slice())
            .is_some_and(|failed| failed.iter().any(|f| subset(f, &self.ind_bits)))
    }

    /// Records that the current configuration fails.
    fn record_failure(&mut self) {
        self.key(self.value);
        let ind = &self.ind_bits;
        let failed = self
            .cache
            .entry(self.scratch.as_slice().into())
            .or_default();
        failed.retain(|f| !subset(ind, f));
        failed.push(ind.as_slice().into());
    }

    /// Keeps the current dead end when it is the deepest met so far. One right after an
    /// indeterminate write is left out: its parent, as deep, fails too and tells more.
    fn note_dead_end(&mut self) {
        if self.must_read()
            || self
                .deepest
                .as_ref()
                .is_some_and(|(d, _)| *d >= self.linearized)
        {
            return;
        }
        let p = self.p;
        let prefix = self
            .stack
            .iter()
            .map(|f| match f.choice {
                Choice::Main(e) => p.def_id[p.entry_op[e as usize] as usize],
                Choice::Indet { j, .. } => p.ind_id[j],
            })
            .collect();
        let mut candidates = Vec::new();
        let mut e = self.next[HEAD as usize];
        while e != HEAD && !p.is_ret[e as usize] {
            candidates.push(p.def_id[p.entry_op[e as usize] as usize]);
            e = self.next[e as usize];
        }
        // The list is not empty (not every definite operation is linearized), and every call
        // in it has its return after it: `e` is a return.
        let stuck = p.def_id[p.entry_op[e as usize] as usize];
        let limit = p.rank[e as usize];
        for j in 0..p.ind_id.len() {
            if p.ind_rank[j] < limit && self.may_apply(j) {
                candidates.push(p.ind_id[j]);
            }
        }
        let value = p.values.get(self.value as usize).cloned().flatten();
        let dead_end = DeadEnd {
            prefix,
            value,
            stuck,
            candidates,
        };
        self.deepest = Some((self.linearized, dead_end));
    }

    /// Whether the configuration must linearize a read next (the last step applied an
    /// indeterminate write): the flag is the extra bit after the indeterminate writes.
    fn must_read(&self) -> bool {
        bit(&self.ind_bits, self.p.ind_id.len())
    }

    fn set_must_read(&mut self, on: bool) {
        set_bit(&mut self.ind_bits, self.p.ind_id.len(), on);
    }

    /// Whether the search applies indeterminate write `j` (invoked in time) now: when it is
    /// not applied yet, every earlier one of the same value is, it changes the value, and a
    /// read of its value may come next.
    fn may_apply(&self, j: usize) -> bool {
        let p = self.p;
        !bit(&self.ind_bits, j)
            && p.ind_same[j].is_none_or(|i| bit(&self.ind_bits, i))
            && p.ind_val[j] != self.value
            && self.pending_read_of(p.ind_val[j])
    }

    /// True when a read returning `value` may be linearized next.
    fn pending_read_of(&self, value: u32) -> bool {
        let p = self.p;
        let mut e = self.next[HEAD as usize];
        while e != HEAD && !p.is_ret[e as usize] {
            if matches!(p.def_act[p.entry_op[e as usize] as usize], Act::Read(v) if v == value) {
                return true;
            }
            e = self.next[e as usize];
        }
        false
    }

    /// Enters the configuration reached by `choice` (`after`: the value then), unless it is
    /// known to fail (`Some(false)`); `None` when the budget is spent.
    fn enter(&mut self, choice: Choice, after: u32, max_states: u64) -> Option<bool> {
        let p = self.p;
        let was_must_read = self.must_read();
        match choice {
            Choice::Main(e) => set_bit(&mut self.def_bits, p.entry_op[e as usize] as usize, true),
            Choice::Indet { j, .. } => set_bit(&mut self.ind_bits, j, true),
        }
        self.set_must_read(matches!(choice, Choice::Indet { .. }));
        if self.known_to_fail(after) {
            match choice {
                Choice::Main(e) => {
                    set_bit(&mut self.def_bits, p.entry_op[e as usize] as usize, false);
                }
                Choice::Indet { j, .. } => set_bit(&mut self.ind_bits, j, false),
            }
            self.set_must_read(was_must_read);
            return Some(false);
        }
        self.explored += 1;
        if self.explored > max_states {
            return None;
        }
        self.stack.push(Frame {
            choice,
            before: self.value,
        });
        self.value = after;
        if let Choice::Main(e) = choice {
            self.linearized += 1;
            self.lift(e);
        }
        Some(true)
    }

    /// Leaves the current configuration (it failed) for its parent; the cursor to go on with
    /// there, `None` at the root.
    fn leave(&mut self) -> Option<Cursor> {
        let p = self.p;
        let frame = self.stack.pop()?;
        self.value = frame.before;
        let cursor = match frame.choice {
            Choice::Main(e) => {
                self.unlift(e);
                set_bit(&mut self.def_bits, p.entry_op[e as usize] as usize, false);
                self.linearized -= 1;
                Cursor::Main(self.next[e as usize])
            }
            Choice::Indet { j, limit } => {
                set_bit(&mut self.ind_bits, j, false);
                Cursor::Indet { j: j + 1, limit }
            }
        };
        let must_read = matches!(
            self.stack.last(),
            Some(Frame {
                choice: Choice::Indet { .. },
                ..
            })
        );
        self.set_must_read(must_read);
        Some(cursor)
    }

    fn run(mut self, max_states: u64) -> Outcome {
        let p = self.p;
        let mut cursor = Cursor::Main(self.next[HEAD as usize]);
        loop {
            if self.linearized == p.def_id.len() {
                return Outcome::Linearizable;
            }
            match cursor {
                // The list holds exactly the definite operations not linearized, each call
                // before its return: the cursor meets a return before the end of a non-empty
                // list, and the list is empty only when all are linearized (handled above).
                Cursor::Main(HEAD) => return Outcome::Linearizable,
                Cursor::Main(e) if p.is_ret[e as usize] => {
                    cursor = Cursor::Indet {
                        j: 0,
                        limit: p.rank[e as usize],
                    };
                }
                Cursor::Main(e) => {
                    let op = p.entry_op[e as usize] as usize;
                    let after = match p.def_act[op] {
                        // Right after an indeterminate write only a read may come.
                        Act::Write(v) => (!self.must_read()).then_some(v),
                        Act::Read(v) => (v == self.value).then_some(v),
                    };
                    if let Some(after) = after {
                        match self.enter(Choice::Main(e), after, max_states) {
                            None => return Outcome::Budget,
                            Some(true) => {
                                cursor = Cursor::Main(self.next[HEAD as usize]);
                                continue;
                            }
                            Some(false) => {}
                        }
                    }
                    cursor = Cursor::Main(self.next[e as usize]);
                }
                Cursor::Indet { j, limit } => {
                    // An indeterminate write is applied only when it changes the value and a
                    // read may observe it right away (any linearization can drop the others),
                    // and only once every earlier one of the same value is: once invoked, they
                    // are interchangeable.
                    let mut j = j;
                    let n = p.ind_id.len();
                    while !self.must_read() && j < n && p.ind_rank[j] < limit && !self.may_apply(j)
                    {
                        j += 1;
                    }
                    if !self.must_read() && j < n && p.ind_rank[j] < limit {
                        let choice = Choice::Indet { j, limit };
                        match self.enter(choice, p.ind_val[j], max_states) {
                            None => return Outcome::Budget,
                            Some(true) => cursor = Cursor::Main(self.next[HEAD as usize]),
                            Some(false) => cursor = Cursor::Indet { j: j + 1, limit },
                        }
                        continue;
                    }
                    // Nothing fits next: this configuration fails.
                    self.note_dead_end();
                    self.record_failure();
                    match self.leave() {
                        Some(c) => cursor = c,
                        None => {
                            return match self.deepest {
                                Some((_, dead_end)) => Outcome::Violation(dead_end),
                                // note_dead_end always leaves one.
                                None => Outcome::Budget,
                            };
                        }
                    }
                }
            }
        }
    }
}

/// Searches for a linearization of one key's operations (validated, with their global ids),
/// entering at most `max_states` configurations.
pub(crate) fn check_key(ops: &[(OpId, &Operation)], max_states: u64) -> Outcome {
    let p = Prepared::new(ops);
    Search::new(&p).run(max_states)
}
