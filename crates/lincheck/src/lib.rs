//! craft-lincheck: is a recorded history of a key-value store linearizable?
//!
//! It owns the checker the KV cluster tests and `cargo xtask jepsen-kv` use: concurrent
//! clients record every `set`/`get`/`delete` with its invocation and completion times into a
//! [`History`] (or a shared [`Recorder`]), and [`check`] answers whether some order of the
//! operations, each taking effect at one instant between its invocation and its completion,
//! explains every answer. It is test support and depends on no other workspace crate (serde
//! and thiserror only), so a test of any crate can use it.
//!
//! The algorithm is Wing & Gong's search with Lowe's memoization (what Porcupine and Knossos
//! do): a depth-first search for a linearization over a linked list of call and return
//! entries, with a cache of configurations (set of operations linearized, value of the
//! register) already found to lead nowhere. Keys are independent registers, so by
//! P-compositionality (linearizability is local) each key is checked on its own: a history is
//! linearizable when the history of every key is. Each key is a register holding
//! `Option<String>`, initially absent: `Set(v)` answers ok, `Get` answers the value,
//! `Delete` answers ok.
//!
//! What the caller records:
//!
//! - an operation that succeeded: its invocation and completion, with the answer;
//! - an operation whose outcome is unknown (the client timed out, or the connection broke
//!   after the request was sent): its invocation, and no completion (or a completion with
//!   [`Ret::Unknown`]). Such an operation may have taken effect at any time after its
//!   invocation, or never: the checker treats it as completing at +infinity with whatever
//!   result fits. An unknown write may be applied at any point after its invocation or not at
//!   all (at most once); an unknown read constrains nothing and is dropped;
//! - not an operation the server definitely did *not* apply (it refused before proposing,
//!   e.g. HTTP 503, or redirected to the leader): the caller leaves it out. The checker only
//!   ever receives successful and indeterminate operations.
//!
//! The search is exponential in the worst case, so each key has a budget of configurations
//! ([`Config::max_states_per_key`]); a key that exhausts it makes the verdict
//! [`Verdict::Unknown`] (unless another key is definitely not linearizable).
//!
//! ```
//! use craft_lincheck::{check, History, Op, Ret, Verdict};
//!
//! let mut h = History::new();
//! let w = h.invoke(1, "k", Op::Set("a".into()), 0);
//! h.complete(w, 10, Ret::Ok)?;
//! // Client 2 timed out on its write: the outcome is unknown (it may show up later).
//! h.invoke(2, "k", Op::Set("b".into()), 15);
//! let r = h.invoke(3, "k", Op::Get, 20);
//! h.complete(r, 30, Ret::Value(None))?; // the acknowledged write is lost
//!
//! let verdict = check(&h)?;
//! assert!(matches!(&verdict, Verdict::NotLinearizable(v) if v.key == "k" && v.stuck == r));
//! println!("{verdict}"); // the longest linearizable prefix, and what cannot follow it
//! # Ok::<(), craft_lincheck::HistoryError>(())
//! ```

mod history;
mod search;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use history::{Completion, History, HistoryError, Op, OpId, Operation, Recorder, Ret};

/// How hard [`check_with`] may try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Configurations the search of one key may enter before it gives up with
    /// [`Verdict::Unknown`]. Memory grows with the failed ones, a few dozen bytes each.
    pub max_states_per_key: u64,
}

impl Default for Config {
    /// 1,000,000 configurations per key: a normal history of thousands of operations per key
    /// needs about one per operation.
    fn default() -> Self {
        Self {
            max_states_per_key: 1_000_000,
        }
    }
}

/// The answer of [`check`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Every key's history has a linearization.
    Linearizable,
    /// This key's history has none (the first such key, in key order).
    NotLinearizable(Box<Violation>),
    /// No key is known to be non-linearizable, but the search of these keys ran out of
    /// budget.
    Unknown {
        /// The keys left undecided, in order.
        keys: Vec<String>,
        /// The budget each had ([`Config::max_states_per_key`]).
        max_states_per_key: u64,
    },
}

impl Verdict {
    /// True for [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable(v) => write!(f, "{v}"),
            Verdict::Unknown {
                keys,
                max_states_per_key,
            } => write!(
                f,
                "unknown: the search of {keys:?} exceeded {max_states_per_key} states per key"
            ),
        }
    }
}

/// Why one key's history is not linearizable: the deepest point the search reached.
///
/// The search linearized [`prefix`](Self::prefix) (a longest linearizable prefix found),
/// leaving the register at [`value`](Self::value); then the operation
/// [`stuck`](Self::stuck), which completed first among those left, had to take effect before
/// its completion, yet none of the [`candidates`](Self::candidates) (the operations invoked
/// by then, `stuck` among them) could be linearized next: a read would return the wrong
/// value, or every way on fails later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// How many operations of the key were checked (unknown reads dropped).
    pub ops: usize,
    /// The operations linearized, in their linearization order.
    pub prefix: Vec<OpId>,
    /// The register value after the prefix (`None`: absent).
    pub value: Option<String>,
    /// The completed operation that could not be linearized in time.
    pub stuck: OpId,
    /// The operations that could have come next; each was tried.
    pub candidates: Vec<OpId>,
    /// A copy of the operations shown by [`Display`](fmt::Display): the last few of the
    /// prefix, then the candidates.
    pub context: Vec<(OpId, Operation)>,
}

/// How many operations of the prefix a [`Violation`] keeps copies of.
const CONTEXT_PREFIX: usize = 8;

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |f: &mut fmt::Formatter<'_>, id: &OpId| -> fmt::Result {
            match self.context.iter().find(|(i, _)| i == id) {
                Some((_, op)) => writeln!(f, "  {id} {op}"),
                None => writeln!(f, "  {id}"),
            }
        };
        writeln!(
            f,
            "key {:?} is not linearizable ({} operations checked)",
            self.key, self.ops
        )?;
        let value = match &self.value {
            Some(v) => format!("{v:?}"),
            None => "absent".to_string(),
        };
        let tail = self.prefix.len().saturating_sub(CONTEXT_PREFIX);
        writeln!(
            f,
            "longest linearizable prefix: {} operations, after which the value is {value}{}",
            self.prefix.len(),
            if self.prefix.is_empty() {
                ""
            } else if tail > 0 {
                "; its last ones:"
            } else {
                ":"
            }
        )?;
        for id in &self.prefix[tail..] {
            show(f, id)?;
        }
        writeln!(
            f,
            "then {} must take effect before it completes, but none of these fits next:",
            self.stuck
        )?;
        for id in &self.candidates {
            show(f, id)?;
        }
        Ok(())
    }
}

/// Checks `history` with the default [`Config`]. See [`check_with`].
pub fn check(history: &History) -> Result<Verdict, HistoryError> {
    check_with(history, &Config::default())
}

/// Checks whether `history` is linearizable, one key at a time (in key order).
///
/// Refuses a malformed history ([`History::validate`]); never panics. The verdict is
/// [`Verdict::NotLinearizable`] for the first key without a linearization, else
/// [`Verdict::Unknown`] when some key's search ran out of budget, else
/// [`Verdict::Linearizable`].
pub fn check_with(history: &History, config: &Config) -> Result<Verdict, HistoryError> {
    history.validate()?;
    let mut keys: BTreeMap<&str, Vec<(OpId, &Operation)>> = BTreeMap::new();
    for (i, op) in history.ops().iter().enumerate() {
        keys.entry(op.key.as_str()).or_default().push((OpId(i), op));
    }
    let mut unknown = Vec::new();
    for (key, ops) in keys {
        match search::check_key(&ops, config.max_states_per_key) {
            search::Outcome::Linearizable => {}
            search::Outcome::Budget => unknown.push(key.to_string()),
            search::Outcome::Violation(dead_end) => {
                let checked = ops
                    .iter()
                    .filter(|(_, op)| !(op.op == Op::Get && op.is_indeterminate()))
                    .count();
                let tail = dead_end.prefix.len().saturating_sub(CONTEXT_PREFIX);
                let context = dead_end.prefix[tail..]
                    .iter()
                    .chain(&dead_end.candidates)
                    .filter_map(|&id| history.get(id).map(|op| (id, op.clone())))
                    .collect();
                return Ok(Verdict::NotLinearizable(Box::new(Violation {
                    key: key.to_string(),
                    ops: checked,
                    prefix: dead_end.prefix,
                    value: dead_end.value,
                    stuck: dead_end.stuck,
                    candidates: dead_end.candidates,
                    context,
                })));
            }
        }
    }
    if unknown.is_empty() {
        Ok(Verdict::Linearizable)
    } else {
        Ok(Verdict::Unknown {
            keys: unknown,
            max_states_per_key: config.max_states_per_key,
        })
    }
}
