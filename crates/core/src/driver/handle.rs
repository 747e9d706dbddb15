//! The handle to a running node ([`NodeHandle`]), the commands it sends the raft task,
//! and the status the raft task publishes ([`NodeStatus`], [`Role`]).

use super::*;

/// A snapshot of the node's raft state, published after every Ready.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeStatus {
    /// This node's raft id.
    pub id: u64,
    /// Leader, follower, candidate or pre-candidate.
    pub role: Role,
    /// Known leader (0 when none).
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// Highest committed index.
    pub commit: u64,
    /// Highest applied index.
    pub applied: u64,
    /// Last index in the local log.
    pub last_index: u64,
    /// Current membership.
    pub conf_state: ConfState,
    /// Peer messages refused before reaching raft since start ([`crate::gate`]).
    pub refused_messages: u64,
}

/// The raft role, as a plain value that can be compared and printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Pre-vote phase of an election.
    PreCandidate,
    /// Campaigning.
    Candidate,
    /// Leads the cluster.
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

pub(super) enum Command<R> {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<R, ProposeError>>,
    },
    ConfChange {
        change: ConfChangeV2,
        reply: oneshot::Sender<Result<ConfState, ProposeError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, ProposeError>>,
    },
    TransferLeader(u64),
    Campaign,
    ReportUnreachable(u64),
    PeerRestarted(u64),
}

/// A cheap, cloneable handle to a running node.
pub struct NodeHandle<R> {
    pub(super) commands: mpsc::Sender<Command<R>>,
    pub(super) inbox: mpsc::Sender<Message>,
    pub(super) status: watch::Receiver<NodeStatus>,
    pub(super) proposal_timeout: Duration,
}

impl<R> Clone for NodeHandle<R> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            inbox: self.inbox.clone(),
            status: self.status.clone(),
            proposal_timeout: self.proposal_timeout,
        }
    }
}

impl<R: Send + 'static> NodeHandle<R> {
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ProposeError>>) -> Command<R>,
    ) -> Result<T, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        match tokio::time::timeout(self.proposal_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout),
        }
    }

    /// Proposes a command and waits until it is applied here, returning the state
    /// machine's response.
    pub async fn propose(&self, data: Vec<u8>) -> Result<R, ProposeError> {
        self.request(|reply| Command::Propose { data, reply }).await
    }

    /// Proposes a membership change and waits until it is applied; returns the new
    /// membership.
    pub async fn change_membership(&self, change: ConfChangeV2) -> Result<ConfState, ProposeError> {
        self.request(|reply| Command::ConfChange { change, reply })
            .await
    }

    /// Linearizable read barrier (ReadIndex): returns once this node's state machine
    /// has applied everything committed before the call. Read local state after it.
    pub async fn read_barrier(&self) -> Result<u64, ProposeError> {
        self.request(|reply| Command::ReadIndex { reply }).await
    }

    /// Asks the leader (this node) to transfer leadership to `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.commands
            .send(Command::TransferLeader(to))
            .await
            .map_err(|_| ProposeError::Stopped)
    }

    /// Starts an election on this node now.
    pub async fn campaign(&self) -> Result<(), ProposeError> {
        self.commands
            .send(Command::Campaign)
            .await
            .map_err(|_| ProposeError::Stopped)
    }

    /// Tells raft that `peer` could not be reached.
    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.commands.try_send(Command::ReportUnreachable(peer));
    }

    /// Tells raft that `peer` has just started, perhaps with an empty log (a node
    /// replaced with a fresh raft directory): see [`Replica::peer_restarted`].
    pub fn peer_restarted(&self, peer: u64) {
        let _ = self.commands.try_send(Command::PeerRestarted(peer));
    }

    /// Delivers a message from a peer. Never blocks: when the inbox is full the message
    /// is dropped (raft retransmits) and `false` is returned.
    pub fn step(&self, msg: Message) -> bool {
        self.inbox.try_send(msg).is_ok()
    }

    /// The latest status.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }
}
