//! Who may speak for a raft id, and who must send the checksum trailer: the bindings of
//! raft ids to the network's origins, as a plain type (no I/O, no locks; its owner
//! locks it). The rules are in the [parent module's docs](super).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The raft id ↔ origin bindings (see the module docs for the rules).
#[derive(Debug, Default)]
pub(crate) struct Origins {
    pub(crate) by_id: HashMap<u64, u64>,
    pub(crate) by_origin: HashMap<u64, u64>,
    /// When each bound origin was last heard from.
    pub(crate) last_seen: HashMap<u64, Instant>,
    /// Raft ids whose rebinding is being checked with the network, and since when.
    pub(crate) checking: HashMap<u64, Instant>,
    /// Origins required to send the checksum trailer, with the raft id bound to each
    /// when a verified trailer set the requirement: only a probe from the origin naming
    /// that raft id lifts it (see the module docs). Kept when a binding goes: the origin
    /// of a node stays its own, and no damage may lift the requirement.
    pub(crate) trailer_required: HashMap<u64, u64>,
}

/// Most origins remembered as required to send the trailer; past it, those not bound
/// any more are forgotten (a bound origin never is).
const MAX_TRAILER_REQUIRED: usize = 2 * MAX_BINDINGS;

/// Most raft ids bound at once. The origin is the network's word, but whoever reaches
/// the gRPC port directly can make up origins: past the bound, a new claim takes the
/// place of the binding silent longest, if that one is stale, and is refused otherwise.
pub(crate) const MAX_BINDINGS: usize = 1024;

impl Origins {
    pub(crate) fn bind(&mut self, id: u64, origin: u64) {
        if let Some(old) = self.by_id.insert(id, origin) {
            self.by_origin.remove(&old);
            self.last_seen.remove(&old);
        }
        self.by_origin.insert(origin, id);
        self.last_seen.insert(origin, Instant::now());
    }

    pub(crate) fn unbind(&mut self, id: u64) {
        if let Some(origin) = self.by_id.remove(&id) {
            self.by_origin.remove(&origin);
            self.last_seen.remove(&origin);
        }
        self.checking.remove(&id);
    }

    /// Requires the checksum trailer from `origin`, bound to raft id `id`, whose raft
    /// message has just carried one that verified. Returns whether that is new.
    pub(crate) fn require_trailer(&mut self, origin: u64, id: u64) -> bool {
        if !self.trailer_required.contains_key(&origin)
            && self.trailer_required.len() >= MAX_TRAILER_REQUIRED
        {
            let bound = &self.by_origin;
            self.trailer_required.retain(|o, _| bound.contains_key(o));
        }
        self.trailer_required.insert(origin, id) != Some(id)
    }

    /// Lifts the requirement of `origin`, whose well-formed probe names raft id `id`, if
    /// it was set while the origin spoke for that raft id. Returns whether it did.
    pub(crate) fn lift_trailer(&mut self, origin: u64, id: u64) -> bool {
        let lift = self.trailer_required.get(&origin) == Some(&id);
        if lift {
            self.trailer_required.remove(&origin);
        }
        lift
    }

    /// Room for one more binding: `Some(None)` when there is, `Some(Some(id))` when the
    /// binding of `id`, silent longest and for at least `stale_after`, was dropped to make
    /// it, `None` when there is none.
    pub(crate) fn make_room(&mut self, stale_after: Duration) -> Option<Option<u64>> {
        if self.by_id.len() < MAX_BINDINGS {
            return Some(None);
        }
        let oldest = self
            .last_seen
            .iter()
            .min_by_key(|(_, seen)| **seen)
            .map(|(origin, seen)| (*origin, *seen));
        match oldest {
            Some((origin, seen)) if seen.elapsed() >= stale_after => {
                let id = self.by_origin.get(&origin).copied();
                if let Some(id) = id {
                    self.unbind(id);
                }
                Some(id)
            }
            _ => None,
        }
    }
}
