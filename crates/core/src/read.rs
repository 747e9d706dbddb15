//! Contexts of ReadIndex requests, unique across nodes and across restarts.
//!
//! raft-rs matches a read to its answer by the request's context alone. A leader keeps
//! its pending reads keyed by context and drops a request whose context is already
//! pending, so two nodes that ask with the same context lose one of the reads. A node
//! completes whichever of its reads carries the context of an answer, so after a
//! restart a late answer to the previous run's read could complete a new read with an
//! old read index: a stale read.
//!
//! A [`ReadContexts`] therefore issues 24-byte contexts: the raft id of the node that
//! asks, a random 64-bit nonce drawn once per run, and a counter, each big-endian. It
//! recognises the answers to its own requests and nothing else.

/// Issues the contexts of one node's ReadIndex requests for one run, and recognises
/// the answers to them.
///
/// ```
/// use craft_core::ReadContexts;
///
/// let mut mine = ReadContexts::new(2);
/// let (seq, ctx) = mine.issue();
/// assert_eq!(mine.recognise(&ctx), Some(seq));
/// // Another node, or this node's next run, never issues the same context.
/// let mut next_run = ReadContexts::new(2);
/// assert_eq!(next_run.recognise(&ctx), None);
/// assert_ne!(next_run.issue().1, ctx);
/// ```
#[derive(Debug, Clone)]
pub struct ReadContexts {
    /// Raft id of the node asking.
    node: u64,
    /// Drawn at random when the run starts.
    nonce: u64,
    /// Sequence number of the last context issued.
    last: u64,
}

impl ReadContexts {
    /// Bytes in a context.
    pub const LEN: usize = 24;

    /// Contexts for node `node`, with a fresh random nonce.
    pub fn new(node: u64) -> Self {
        Self::with_nonce(node, rand::random())
    }

    /// Contexts for node `node` with the given nonce (tests pin it to replay a run).
    pub fn with_nonce(node: u64, nonce: u64) -> Self {
        Self {
            node,
            nonce,
            last: 0,
        }
    }

    /// A new context, and its sequence number (1, 2, ... within this run).
    pub fn issue(&mut self) -> (u64, Vec<u8>) {
        self.last += 1;
        let mut ctx = Vec::with_capacity(Self::LEN);
        ctx.extend_from_slice(&self.node.to_be_bytes());
        ctx.extend_from_slice(&self.nonce.to_be_bytes());
        ctx.extend_from_slice(&self.last.to_be_bytes());
        (self.last, ctx)
    }

    /// The sequence number of `ctx` if this run issued it; `None` for a context of
    /// another node, of another run, or of another shape.
    pub fn recognise(&self, ctx: &[u8]) -> Option<u64> {
        let ctx: &[u8; Self::LEN] = ctx.try_into().ok()?;
        let field = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&ctx[i * 8..i * 8 + 8]);
            u64::from_be_bytes(b)
        };
        let seq = field(2);
        (field(0) == self.node && field(1) == self.nonce && seq >= 1 && seq <= self.last)
            .then_some(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_the_node_the_nonce_and_a_counter() {
        let mut c = ReadContexts::with_nonce(7, 0x0102_0304_0506_0708);
        let (seq, ctx) = c.issue();
        assert_eq!(seq, 1);
        let mut want = 7u64.to_be_bytes().to_vec();
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want.extend_from_slice(&1u64.to_be_bytes());
        assert_eq!(ctx, want);
        assert_eq!(c.issue().0, 2);
    }

    #[test]
    fn only_this_runs_own_contexts_are_recognised() {
        let mut mine = ReadContexts::with_nonce(2, 11);
        let (one, ctx) = mine.issue();
        assert_eq!(mine.recognise(&ctx), Some(one));
        // The same counter from another node, another run, or an older format.
        let other_node = ReadContexts::with_nonce(3, 11).issue().1;
        let other_run = ReadContexts::with_nonce(2, 12).issue().1;
        assert_eq!(mine.recognise(&other_node), None);
        assert_eq!(mine.recognise(&other_run), None);
        assert_eq!(mine.recognise(&1u64.to_be_bytes()), None);
        assert_eq!(mine.recognise(&[]), None);
        // A context this run has not issued yet.
        let mut ahead = mine.clone();
        ahead.issue();
        let (_, future) = ahead.issue();
        assert_eq!(mine.recognise(&future), None);
    }

    #[test]
    fn runs_draw_different_nonces() {
        let a = ReadContexts::new(1).issue().1;
        let b = ReadContexts::new(1).issue().1;
        assert_ne!(a, b);
    }
}
