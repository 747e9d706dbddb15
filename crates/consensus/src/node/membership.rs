//! Raft membership follows the controller's validator list (joint consensus).

use super::*;

impl Node {
    /// Makes raft membership follow the validator list. Returns whether it already
    /// matches (blocks may be proposed).
    pub(super) async fn reconcile_membership(
        &self,
        handle: &NodeHandle<BlockOutcome>,
        st: &craft_core::NodeStatus,
        chain: &ConsensusConfiguration,
    ) -> bool {
        let want = validator_ids(chain);
        let cs = &st.conf_state;
        if want.is_empty() {
            return true;
        }
        if !cs.voters_outgoing.is_empty() {
            // Leaving a joint configuration is under way.
            return false;
        }
        let have: BTreeSet<u64> = cs.voters.iter().copied().collect();
        if want == have {
            return true;
        }
        if !want.contains(&self.me) {
            match want.intersection(&have).next() {
                Some(&to) => {
                    tracing::info!(
                        to,
                        "this node is no longer a validator: transferring leadership"
                    );
                    let _ = handle.transfer_leader(to).await;
                }
                None => {
                    tracing::warn!(want = ?want, have = ?have, "no current voter remains a validator; cannot hand over")
                }
            }
            return false;
        }
        let mut change = ConfChangeV2::default();
        change.set_transition(ConfChangeTransition::Auto);
        for id in want.difference(&have) {
            let mut c = ConfChangeSingle::default();
            c.set_change_type(ConfChangeType::AddNode);
            c.node_id = *id;
            change.mut_changes().push(c);
        }
        for id in have.difference(&want) {
            let mut c = ConfChangeSingle::default();
            c.set_change_type(ConfChangeType::RemoveNode);
            c.node_id = *id;
            change.mut_changes().push(c);
        }
        tracing::info!(add = ?want.difference(&have).collect::<Vec<_>>(), remove = ?have.difference(&want).collect::<Vec<_>>(), "changing raft membership to follow validators");
        match handle.change_membership(change).await {
            Ok(cs) => tracing::info!(voters = ?cs.voters, "membership change committed"),
            Err(e) => tracing::info!(error = %e, "membership change not committed"),
        }
        false
    }
}
