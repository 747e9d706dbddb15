//! Incoming messages: the dispatch by type, the claims to raft ids checked against the
//! bindings, and the checksum requirement.

use super::*;
use crate::integrity::IntegrityError;

impl CitaNetwork {
    /// Handles one message from the network. Malformed input and conflicting origin
    /// claims are refused with a reason, counted, and never reach raft.
    pub fn handle(&self, msg: NetworkMsg) -> Result<(), InboundError> {
        let result = self.handle_inner(msg);
        if let Err(e) = &result {
            *self.inner.refused.locked().entry(e.kind()).or_default() += 1;
        }
        result
    }

    /// Requires the checksum trailer from `origin`, bound to raft id `id`, whose raft
    /// message has just carried one that verified.
    fn require_trailer(&self, origin: u64, id: u64) {
        let new = self
            .inner
            .origins
            .write_locked()
            .require_trailer(origin, id);
        if new {
            tracing::debug!(
                raft_id = id,
                origin,
                "peer sends the checksum trailer; requiring it"
            );
        }
    }

    /// Lifts the trailer requirement of `origin` if its probe names raft id `id`, the
    /// one it was required under: the node there has started again, maybe as the
    /// existing service.
    fn lift_trailer(&self, origin: u64, id: u64) {
        let lifted = self.inner.origins.write_locked().lift_trailer(origin, id);
        if lifted {
            // Every probe of a node of ours lifts it too (until its next message): debug.
            tracing::debug!(
                raft_id = id,
                origin,
                "peer probed (started again); checksum trailer not required until it sends one"
            );
        }
    }

    fn handle_inner(&self, msg: NetworkMsg) -> Result<(), InboundError> {
        if msg.module != MODULE {
            return Err(InboundError::UnknownModule(msg.module));
        }
        match msg.r#type.as_str() {
            TYPE_RAFT => {
                let required = self
                    .inner
                    .origins
                    .read_locked()
                    .trailer_required
                    .contains_key(&msg.origin);
                let (raft_msg, integrity) = match decode_checked(msg.msg.clone(), required) {
                    Ok(decoded) => decoded,
                    Err(IntegrityError::Decode(e)) => {
                        return Err(InboundError::BadRaftMessage(e.to_string()))
                    }
                    Err(error) => {
                        return Err(InboundError::Damaged {
                            origin: msg.origin,
                            error,
                        })
                    }
                };
                if raft_msg.to != self.inner.cfg.raft_id {
                    // The sender's origin map is stale: tell it whom it meant to reach.
                    tracing::debug!(
                        to = raft_msg.to,
                        origin = msg.origin,
                        "raft message for another node"
                    );
                    // Queued under one key for all such replies: `from` is the sender's
                    // word, and a queue per claimed id would let it grow without bound.
                    self.send_to_origin(
                        REPLY_QUEUE,
                        msg.origin,
                        TYPE_REFRESH,
                        id_payload(raft_msg.to),
                        false,
                    );
                    return Ok(());
                }
                self.claim(raft_msg.from, msg.origin)?;
                self.inner.reports.heard_from(raft_msg.from);
                if integrity == Integrity::Verified {
                    self.require_trailer(msg.origin, raft_msg.from);
                }
                let inbound = self.inner.inbound.read_locked().clone();
                if let Some(inbound) = inbound {
                    if !inbound(raft_msg) {
                        tracing::debug!("raft inbox full, message dropped");
                    }
                }
                Ok(())
            }
            TYPE_PROBE => {
                let id = parse_id(TYPE_PROBE, &msg.msg)?;
                // A damaged probe names another raft id and is refused here as a
                // conflict; one that passes names the raft id the origin speaks for.
                self.claim(id, msg.origin)?;
                self.inner.reports.heard_from(id);
                self.lift_trailer(msg.origin, id);
                let peer_started = self.inner.peer_started.read_locked().clone();
                if let Some(peer_started) = peer_started {
                    peer_started(id);
                }
                self.send_to_origin(
                    id,
                    msg.origin,
                    TYPE_PROBE_RESP,
                    id_payload(self.inner.cfg.raft_id),
                    false,
                );
                Ok(())
            }
            TYPE_PROBE_RESP => {
                let id = parse_id(TYPE_PROBE_RESP, &msg.msg)?;
                self.claim(id, msg.origin)?;
                self.inner.reports.heard_from(id);
                Ok(())
            }
            TYPE_REFRESH => {
                let id = parse_id(TYPE_REFRESH, &msg.msg)?;
                // Origin O says it is not `id`: that undoes a binding id → O, and nothing
                // else (no one may unbind another origin).
                let removed = {
                    let mut o = self.inner.origins.write_locked();
                    let ours = o.by_id.get(&id) == Some(&msg.origin);
                    if ours {
                        o.unbind(id);
                        self.remove_link(id, false);
                    }
                    ours
                };
                if removed {
                    self.probe();
                }
                Ok(())
            }
            other => Err(InboundError::UnknownType(other.to_string())),
        }
    }

    /// Accepts `origin`'s claim to speak for raft id `id`, binding it if neither is bound
    /// yet; refuses a conflicting claim and starts checking with the network whether the
    /// bound origin is gone.
    fn claim(&self, id: u64, origin: u64) -> Result<(), InboundError> {
        let conflict = |why: String| InboundError::OriginConflict {
            raft_id: id,
            origin,
            why,
        };
        if id == self.inner.cfg.raft_id {
            return Err(conflict("that is this node's own raft id".into()));
        }
        if id == 0 {
            return Err(conflict("raft id 0 is reserved".into()));
        }
        let mut o = self.inner.origins.write_locked();
        let bound_origin = o.by_id.get(&id).copied();
        let bound_id = o.by_origin.get(&origin).copied();
        match (bound_origin, bound_id) {
            (Some(b), _) if b == origin => {
                o.last_seen.insert(origin, Instant::now());
                Ok(())
            }
            (None, None) => {
                match o.make_room(self.inner.cfg.stale_after) {
                    None => {
                        return Err(conflict(format!(
                            "{MAX_BINDINGS} raft ids are bound and none is stale"
                        )))
                    }
                    // Its outgoing queue goes with it: queues stay as bounded as bindings.
                    Some(Some(evicted)) => self.remove_link(evicted, true),
                    Some(None) => {}
                }
                tracing::debug!(raft_id = id, origin, "learned peer origin");
                o.bind(id, origin);
                drop(o);
                self.release_held(id, origin);
                Ok(())
            }
            (_, Some(other)) => Err(conflict(format!("the origin speaks for raft id {other}"))),
            (Some(b), None) => {
                let silent = o
                    .last_seen
                    .get(&b)
                    .is_none_or(|t| t.elapsed() >= self.inner.cfg.stale_after);
                if silent {
                    tracing::info!(
                        raft_id = id,
                        old = b,
                        new = origin,
                        "bound origin silent; rebinding"
                    );
                    o.bind(id, origin);
                    // What is queued for the old origin is not sent there.
                    self.remove_link(id, false);
                    drop(o);
                    self.release_held(id, origin);
                    return Ok(());
                }
                let recent = o
                    .checking
                    .get(&id)
                    .is_some_and(|t| t.elapsed() < self.inner.cfg.probe_interval);
                if !recent {
                    o.checking.insert(id, Instant::now());
                    self.check_rebind(id, b, origin);
                }
                Err(conflict(format!("origin {b} speaks for it")))
            }
        }
    }

    /// Asks the network which origins it lists; rebinds `id` from `old` to `new` if the
    /// network lists `new` but no longer `old`.
    fn check_rebind(&self, id: u64, old: u64, new: u64) {
        let this = self.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let listed: HashSet<u64> = match this
                .inner
                .client
                .clone()
                .get_peers_net_info(Empty {})
                .await
            {
                Ok(resp) => resp.into_inner().nodes.iter().map(|n| n.origin).collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "GetPeersNetInfo failed; origin {old} keeps raft id {id}");
                    return;
                }
            };
            let mut o = this
                .inner
                .origins
                .write_locked();
            o.checking.remove(&id);
            let still = o.by_id.get(&id) == Some(&old) && !o.by_origin.contains_key(&new);
            if still && listed.contains(&new) && !listed.contains(&old) {
                tracing::info!(raft_id = id, old, new, "network no longer lists the bound origin; rebinding");
                o.bind(id, new);
                this.remove_link(id, false);
                drop(o);
                this.release_held(id, new);
            }
        });
    }
}

#[tonic::async_trait]
impl NetworkMsgHandlerService for CitaNetwork {
    async fn process_network_msg(
        &self,
        req: Request<NetworkMsg>,
    ) -> Result<Response<StatusCode>, Status> {
        match self.handle(req.into_inner()) {
            Ok(()) => Ok(Response::new(StatusCode { code: 0 })),
            Err(e) => {
                tracing::debug!(error = %e, "refused network message");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }
}
