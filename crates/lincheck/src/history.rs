//! What a history is: operations on keys with their invocation and completion times, the
//! [`History`] builder, the thread-safe [`Recorder`] that stamps times itself, and the
//! well-formedness rules ([`HistoryError`]) every history must meet before it is checked.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What a client asked of one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// Store the value under the key; answers [`Ret::Ok`].
    Set(String),
    /// Read the key; answers [`Ret::Value`] (`None` when the key is absent).
    Get,
    /// Remove the key (absent or not); answers [`Ret::Ok`].
    Delete,
}

/// What the server answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ret {
    /// A [`Op::Set`] or [`Op::Delete`] was applied.
    Ok,
    /// A [`Op::Get`] read this value (`None`: the key was absent).
    Value(Option<String>),
    /// The outcome is not known (the client timed out, or the connection broke after the
    /// request was sent): the operation may have taken effect at any time after its
    /// invocation, or never. The completion time of an unknown outcome is kept for the
    /// record only; the checker treats the operation as still pending at +infinity.
    Unknown,
}

/// When an operation completed and what it returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Completion {
    /// Completion time, on the same monotonic clock as [`Operation::call`].
    pub time: u64,
    /// The answer.
    pub ret: Ret,
}

/// One operation of one client on one key.
///
/// Times are any monotonic `u64` shared by all clients (for example nanoseconds since the
/// start of the test). Operation `a` precedes operation `b` in real time when `a` completed
/// strictly before `b` was invoked; equal times count as concurrent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation {
    /// Who issued it (informational: clients need not be sequential).
    pub client: u64,
    /// The key it touched; each key is checked on its own.
    pub key: String,
    /// What was asked.
    pub op: Op,
    /// Invocation time: taken before the request left the client.
    pub call: u64,
    /// Completion, taken after the answer arrived. `None` (or a completion with
    /// [`Ret::Unknown`]) makes the operation indeterminate.
    pub ret: Option<Completion>,
}

impl Operation {
    /// True when the outcome is not known: no completion, or [`Ret::Unknown`].
    pub fn is_indeterminate(&self) -> bool {
        matches!(
            self.ret,
            None | Some(Completion {
                ret: Ret::Unknown,
                ..
            })
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.op {
            Op::Set(v) => write!(f, "set {:?}={v:?}", self.key)?,
            Op::Get => write!(f, "get {:?}", self.key)?,
            Op::Delete => write!(f, "delete {:?}", self.key)?,
        }
        match &self.ret {
            None => write!(f, " [{}, ∞) -> unknown", self.call),
            Some(c) => {
                write!(f, " [{}, {}] -> ", self.call, c.time)?;
                match &c.ret {
                    Ret::Ok => write!(f, "ok"),
                    Ret::Value(Some(v)) => write!(f, "{v:?}"),
                    Ret::Value(None) => write!(f, "absent"),
                    Ret::Unknown => write!(f, "unknown"),
                }
            }
        }
    }
}

/// Names an operation of a [`History`]: its index in [`History::ops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a history cannot be checked (or an operation cannot be recorded).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HistoryError {
    /// [`History::complete`] named an operation the history does not have.
    #[error("operation {0} does not exist")]
    NoSuchOp(OpId),
    /// [`History::complete`] was called twice for one operation.
    #[error("operation {0} is already complete")]
    AlreadyComplete(OpId),
    /// The operation completed before it was invoked.
    #[error("operation {op} completed at {ret} before its invocation at {call}")]
    ReturnBeforeCall {
        /// The operation.
        op: OpId,
        /// Its invocation time.
        call: u64,
        /// Its completion time.
        ret: u64,
    },
    /// More operations than the checker handles (it numbers them with 32 bits).
    #[error("{ops} operations: more than the {max} the checker handles")]
    TooLarge {
        /// Operations in the history.
        ops: usize,
        /// The most it handles ([`History::MAX_OPS`]).
        max: usize,
    },
    /// The answer does not fit the request: a value for a set or delete, `Ok` for a get.
    #[error("operation {op}: {ret:?} is not an answer to {request:?}")]
    WrongAnswer {
        /// The operation.
        op: OpId,
        /// What was asked.
        request: Op,
        /// What came back.
        ret: Ret,
    },
}

/// A recorded history: every operation of every client, in any order.
///
/// It holds only operations that succeeded ([`Ret::Ok`], [`Ret::Value`]) and operations whose
/// outcome is unknown (no completion, or [`Ret::Unknown`]). An operation the server
/// definitely did *not* apply (a refusal before proposing, such as an HTTP 503 or a redirect
/// to the leader) must be left out by the caller: recorded as unknown it only weakens the
/// check, recorded as `Ok` it is wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    ops: Vec<Operation>,
}

impl History {
    /// The most operations [`check`](crate::check) handles: 2^30.
    pub const MAX_OPS: usize = 1 << 30;

    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// All operations; [`OpId`] `i` is `ops()[i]`.
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }

    /// One operation.
    pub fn get(&self, id: OpId) -> Option<&Operation> {
        self.ops.get(id.0)
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there are no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends a whole operation (complete or not) and names it.
    pub fn push(&mut self, op: Operation) -> OpId {
        self.ops.push(op);
        OpId(self.ops.len() - 1)
    }

    /// Records an invocation at `time`; the operation is indeterminate until
    /// [`complete`](Self::complete) is called.
    pub fn invoke(&mut self, client: u64, key: impl Into<String>, op: Op, time: u64) -> OpId {
        self.push(Operation {
            client,
            key: key.into(),
            op,
            call: time,
            ret: None,
        })
    }

    /// Records the completion of `id` at `time` with answer `ret` ([`Ret::Unknown`] when the
    /// client gave up not knowing the outcome). Refuses an unknown or already completed
    /// operation; whether the times and the answer make sense is checked by
    /// [`validate`](Self::validate).
    pub fn complete(&mut self, id: OpId, time: u64, ret: Ret) -> Result<(), HistoryError> {
        let op = self.ops.get_mut(id.0).ok_or(HistoryError::NoSuchOp(id))?;
        if op.ret.is_some() {
            return Err(HistoryError::AlreadyComplete(id));
        }
        op.ret = Some(Completion { time, ret });
        Ok(())
    }

    /// Checks that every completion follows its invocation and answers its request (the
    /// first offending operation is reported), and that there are at most
    /// [`MAX_OPS`](Self::MAX_OPS) operations. [`check`](crate::check) calls it first.
    pub fn validate(&self) -> Result<(), HistoryError> {
        if self.ops.len() > Self::MAX_OPS {
            return Err(HistoryError::TooLarge {
                ops: self.ops.len(),
                max: Self::MAX_OPS,
            });
        }
        for (i, op) in self.ops.iter().enumerate() {
            let Some(c) = &op.ret else { continue };
            if c.time < op.call {
                return Err(HistoryError::ReturnBeforeCall {
                    op: OpId(i),
                    call: op.call,
                    ret: c.time,
                });
            }
            let fits = matches!(
                (&op.op, &c.ret),
                (_, Ret::Unknown) | (Op::Get, Ret::Value(_)) | (Op::Set(_) | Op::Delete, Ret::Ok)
            );
            if !fits {
                return Err(HistoryError::WrongAnswer {
                    op: OpId(i),
                    request: op.op.clone(),
                    ret: c.ret.clone(),
                });
            }
        }
        Ok(())
    }
}

impl From<Vec<Operation>> for History {
    fn from(ops: Vec<Operation>) -> Self {
        Self { ops }
    }
}

impl FromIterator<Operation> for History {
    fn from_iter<I: IntoIterator<Item = Operation>>(iter: I) -> Self {
        Self {
            ops: iter.into_iter().collect(),
        }
    }
}

/// A [`History`] shared by concurrent clients that stamps times itself: nanoseconds since
/// the recorder was made, read while its lock is held, so the order of the stamps is the
/// order of the calls.
///
/// Call [`invoke`](Self::invoke) just before sending a request and
/// [`complete`](Self::complete) just after its answer arrived; an operation never completed
/// stays indeterminate.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    history: Mutex<History>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            history: Mutex::new(History::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        // A panicking client cannot leave a history half-written: every update is one push
        // or one assignment, so a poisoned lock still guards a consistent history.
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records an invocation now.
    pub fn invoke(&self, client: u64, key: impl Into<String>, op: Op) -> OpId {
        let mut h = self.lock();
        let time = self.now();
        h.invoke(client, key, op, time)
    }

    /// Records the completion of `id` now (see [`History::complete`]).
    pub fn complete(&self, id: OpId, ret: Ret) -> Result<(), HistoryError> {
        let mut h = self.lock();
        let time = self.now();
        h.complete(id, time, ret)
    }

    /// A copy of the history so far.
    pub fn history(&self) -> History {
        self.lock().clone()
    }

    /// The history, ending the recording.
    pub fn into_history(self) -> History {
        self.history
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
