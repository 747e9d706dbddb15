//! Tests of the async driver ([`craft_core::start`]): whole nodes on tokio, with
//! in-memory stores and an in-process network whose [`Net::set_filter`] can hold back,
//! drop or let through each message. Time is tokio's paused clock unless a test needs
//! real threads.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use craft_core::raft::eraftpb::{Message, MessageType, Snapshot};
use craft_core::raft::SnapshotStatus;
use craft_core::{
    make_snapshot, start, voters, Committed, DriverConfig, Error, LogStore, MemLogStore,
    NodeHandle, ReplicaConfig, Role, SnapshotJob, SnapshotReporter, StateMachine, Transport,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Length of one tick.
const TICK: Duration = Duration::from_millis(100);
/// How long a request waits before it times out.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Answers each entry with its index; its snapshot is the applied index.
#[derive(Debug, Default)]
struct Echo {
    applied: u64,
}

impl StateMachine for Echo {
    type Response = u64;

    async fn apply(&mut self, entry: &Committed) -> u64 {
        self.applied = entry.index;
        entry.index
    }

    fn snapshot(&mut self) -> SnapshotJob {
        SnapshotJob::ready(self.applied.to_be_bytes().to_vec())
    }

    async fn restore(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        self.applied = snapshot.get_metadata().index;
        Ok(())
    }

    fn check_snapshot(_: &[u8]) -> Result<(), String> {
        // The data is never read.
        Ok(())
    }
}

/// What the network does with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    /// Kept in [`Net::held`] for the test to deliver (or not) later.
    Hold,
}

type Filter = Box<dyn Fn(&Message) -> Fate + Send + Sync>;

/// The in-process network: every node's inbox, and the filter messages pass through.
#[derive(Default)]
struct Net {
    nodes: RwLock<HashMap<u64, NodeHandle<u64>>>,
    filter: RwLock<Option<Filter>>,
    held: Mutex<Vec<Message>>,
    /// Whether the links report each snapshot: finished when delivered, failed when
    /// the filter dropped it (or held it back).
    report_snapshots: bool,
    /// Snapshot messages that went through a link, with the report they got.
    snapshots: Mutex<Vec<(u64, SnapshotStatus)>>,
}

impl Net {
    fn set_filter(&self, filter: impl Fn(&Message) -> Fate + Send + Sync + 'static) {
        *self.filter.write().unwrap() = Some(Box::new(filter));
    }

    fn clear_filter(&self) {
        *self.filter.write().unwrap() = None;
    }

    fn take_held(&self) -> Vec<Message> {
        std::mem::take(&mut *self.held.lock().unwrap())
    }
}

/// One node's transport: into the shared [`Net`].
struct Link {
    net: Arc<Net>,
    reporter: OnceLock<SnapshotReporter>,
}

impl Transport for Link {
    fn send(&self, messages: Vec<Message>) {
        let net = &self.net;
        let filter = net.filter.read().unwrap();
        let nodes = net.nodes.read().unwrap();
        for m in messages {
            let fate = filter.as_ref().map_or(Fate::Deliver, |f| f(&m));
            let to = m.to;
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let delivered = match fate {
                Fate::Deliver => nodes.get(&to).is_some_and(|h| h.step(m)),
                Fate::Drop => false,
                Fate::Hold => {
                    net.held.lock().unwrap().push(m);
                    false
                }
            };
            if let (true, Some(reporter)) = (snapshot, self.reporter.get()) {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                net.snapshots.lock().unwrap().push((to, status));
                reporter.report(to, status);
            }
        }
    }

    fn report_snapshots(&self, reporter: SnapshotReporter) -> bool {
        if self.net.report_snapshots {
            let _ = self.reporter.set(reporter);
        }
        self.net.report_snapshots
    }
}

/// A running node and how to stop it.
struct Node {
    handle: NodeHandle<u64>,
    stop: Option<oneshot::Sender<()>>,
    join: JoinHandle<Result<(), Error>>,
}

/// Nodes `1..=n` of one cluster, each on its own [`MemLogStore`], each applying to a
/// state machine made by `make_sm`.
struct Cluster<M> {
    net: Arc<Net>,
    stores: HashMap<u64, MemLogStore>,
    nodes: HashMap<u64, Node>,
    make_sm: Box<dyn Fn() -> M>,
}

impl Cluster<Echo> {
    async fn start(n: u64) -> Self {
        Self::start_with(n, ReplicaConfig::new, Echo::default).await
    }
}

impl<M: StateMachine<Response = u64>> Cluster<M> {
    async fn start_with(
        n: u64,
        config: impl Fn(u64) -> ReplicaConfig,
        make_sm: impl Fn() -> M + 'static,
    ) -> Self {
        Self::start_on(Net::default(), n, config, make_sm).await
    }

    async fn start_on(
        net: Net,
        n: u64,
        config: impl Fn(u64) -> ReplicaConfig,
        make_sm: impl Fn() -> M + 'static,
    ) -> Self {
        let mut c = Self {
            net: Arc::new(net),
            stores: HashMap::new(),
            nodes: HashMap::new(),
            make_sm: Box::new(make_sm),
        };
        for id in 1..=n {
            let store = MemLogStore::new();
            store
                .bootstrap(make_snapshot(1, 1, voters(1..=n), Vec::new()))
                .unwrap();
            c.stores.insert(id, store);
            c.run(id, config(id)).await;
        }
        c
    }

    /// Starts node `id` on its store with `config`.
    async fn run(&mut self, id: u64, config: ReplicaConfig) {
        self.run_driven(
            id,
            config,
            DriverConfig {
                tick_interval: TICK,
                proposal_timeout: REQUEST_TIMEOUT,
                ..DriverConfig::default()
            },
        )
        .await
    }

    /// Starts node `id` on its store with `config`, driven as `driver` says.
    async fn run_driven(&mut self, id: u64, config: ReplicaConfig, driver: DriverConfig) {
        let (stop, stopped) = oneshot::channel::<()>();
        let (handle, join) = start(
            config,
            driver,
            self.stores[&id].clone(),
            (self.make_sm)(),
            Link {
                net: self.net.clone(),
                reporter: OnceLock::new(),
            },
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        self.net.nodes.write().unwrap().insert(id, handle.clone());
        self.nodes.insert(
            id,
            Node {
                handle,
                stop: Some(stop),
                join,
            },
        );
    }

    /// Stops node `id` gracefully and waits until it has. It stays on the network
    /// until then: a leader hands leadership over as it stops.
    async fn stop(&mut self, id: u64) {
        let mut node = self.nodes.remove(&id).unwrap();
        let _ = node.stop.take().unwrap().send(());
        node.join.await.unwrap().unwrap();
        self.net.nodes.write().unwrap().remove(&id);
    }

    fn handle(&self, id: u64) -> NodeHandle<u64> {
        self.nodes[&id].handle.clone()
    }

    /// Waits until one node leads and every running node follows it.
    async fn wait_leader(&self) -> u64 {
        for _ in 0..1000 {
            let statuses: Vec<_> = self.nodes.values().map(|n| n.handle.status()).collect();
            if let Some(leader) = statuses.iter().find(|s| s.role == Role::Leader) {
                if statuses.iter().all(|s| s.leader_id == leader.id) {
                    return leader.id;
                }
            }
            tokio::time::sleep(TICK).await;
        }
        panic!("no leader");
    }
}

/// Polls `done` every tick, for at most `ticks` ticks.
async fn eventually(what: &str, ticks: u32, mut done: impl FnMut() -> bool) {
    for _ in 0..ticks {
        if done() {
            return;
        }
        tokio::time::sleep(TICK).await;
    }
    panic!("gave up waiting for {what}");
}

#[tokio::test(start_paused = true)]
async fn reads_from_two_followers_at_once_both_complete() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    c.handle(leader).propose(b"w".to_vec()).await.unwrap();
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let (a, b) = (c.handle(followers[0]), c.handle(followers[1]));
    // Each follower's reads reach the leader together, round after round.
    for round in 0..5 {
        let (ra, rb) = tokio::join!(a.read_barrier(), b.read_barrier());
        assert!(
            ra.is_ok() && rb.is_ok(),
            "round {round}: node {} read {ra:?}, node {} read {rb:?}",
            followers[0],
            followers[1]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_read_answer_from_an_earlier_run_does_not_complete_a_new_read() {
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    c.handle(leader).propose(b"w".to_vec()).await.unwrap();
    let f = (1..=3).find(|&id| id != leader).unwrap();

    // Node f reads; the leader's answer is held back on the way.
    c.net.set_filter(move |m| {
        if m.to == f && m.get_msg_type() == MessageType::MsgReadIndexResp {
            Fate::Hold
        } else {
            Fate::Deliver
        }
    });
    let first = c.handle(f);
    let pending = tokio::spawn(async move { first.read_barrier().await });
    let net = c.net.clone();
    eventually("the leader's read answer", 100, || {
        !net.held.lock().unwrap().is_empty()
    })
    .await;
    pending.abort();
    let late = c.net.take_held().remove(0);
    let h = c.handle(f);
    eventually("node f to apply the read index", 100, || {
        h.status().applied >= late.index
    })
    .await;

    // Node f stops; the others commit more writes while it is away.
    c.stop(f).await;
    c.net.set_filter(move |m| {
        if m.to == f || m.from == f {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let mut written = 0;
    for _ in 0..3 {
        written = c.handle(leader).propose(b"w".to_vec()).await.unwrap();
    }
    assert!(written > late.index);

    // Node f restarts, still cut off (a long election timeout keeps it a follower),
    // starts a new read, and then the first run's answer arrives.
    let mut config = ReplicaConfig::new(f);
    config.election_tick = 1000;
    c.run(f, config).await;
    let second = c.handle(f);
    let read = tokio::spawn(async move { second.read_barrier().await });
    tokio::time::sleep(TICK).await;
    assert!(c.handle(f).step(late));
    match read.await.unwrap() {
        Ok(at) => assert!(
            at >= written,
            "stale read: completed at applied index {at}, before the writes up to {written} \
             that committed before it began"
        ),
        Err(e) => eprintln!("the new read failed, as it may: {e}"),
    }

    // Reconnected, node f serves reads that see every write.
    c.net.clear_filter();
    let h = c.handle(f);
    let mut at = None;
    for _ in 0..20 {
        if let Ok(i) = h.read_barrier().await {
            at = Some(i);
            break;
        }
    }
    let at = at.expect("node f never served a read after reconnecting");
    assert!(at >= written, "read at {at} misses writes up to {written}");
}

/// A gate a snapshot serialisation waits at until the test opens it. Dropping the
/// guard opens it too, so a failing test never leaves a thread blocked.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<GateState>, std::sync::Condvar)>);

#[derive(Default)]
struct GateState {
    open: bool,
    waiting: u32,
}

impl Gate {
    /// Blocks the calling thread until the gate is open.
    fn pass(&self) {
        let (lock, cv) = &*self.0;
        let mut state = lock.lock().unwrap();
        state.waiting += 1;
        cv.notify_all();
        while !state.open {
            state = cv.wait(state).unwrap();
        }
    }

    /// How many have arrived at the gate so far.
    fn arrived(&self) -> u32 {
        self.0 .0.lock().unwrap().waiting
    }

    fn open(&self) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap().open = true;
        cv.notify_all();
    }
}

/// Opens the gate when dropped.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Like [`Echo`], but serialising a snapshot waits at a [`Gate`].
struct SlowSnapshots {
    applied: u64,
    gate: Gate,
}

impl StateMachine for SlowSnapshots {
    type Response = u64;

    async fn apply(&mut self, entry: &Committed) -> u64 {
        self.applied = entry.index;
        entry.index
    }

    fn snapshot(&mut self) -> SnapshotJob {
        let (applied, gate) = (self.applied, self.gate.clone());
        SnapshotJob::new(move || {
            gate.pass();
            Ok(applied.to_be_bytes().to_vec())
        })
    }

    async fn restore(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        self.applied = snapshot.get_metadata().index;
        Ok(())
    }

    fn check_snapshot(_: &[u8]) -> Result<(), String> {
        // The data is never read.
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_commit_while_a_snapshot_is_being_serialised() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let sm_gate = gate.clone();
    let c = Cluster::start_with(
        1,
        |id| {
            let mut config = ReplicaConfig::new(id);
            config.snapshot_interval = 3;
            config.log_retain = 1;
            config
        },
        move || SlowSnapshots {
            applied: 0,
            gate: sm_gate.clone(),
        },
    )
    .await;
    let h = c.handle(1);
    h.campaign().await.unwrap();
    let mut index = 0;
    // Entries up to the snapshot interval: a snapshot starts and blocks at the gate.
    for _ in 0..50 {
        if gate.arrived() > 0 {
            break;
        }
        if let Ok(i) = h.propose(b"before".to_vec()).await {
            index = i;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gate.arrived() > 0, "no snapshot was started");
    // While it is held there, proposals still commit and are answered.
    for n in 0..5 {
        let answer = h.propose(b"during".to_vec()).await;
        assert!(
            matches!(answer, Ok(i) if i > index),
            "proposal {n} while the snapshot is serialised: {answer:?}"
        );
        index = answer.unwrap();
    }
    // Let go, the snapshot is saved and the log compacted behind it.
    gate.open();
    let store = c.stores[&1].clone();
    for _ in 0..100 {
        if store.latest_snapshot().unwrap().get_metadata().index > 1 {
            break;
        }
        // A write is what carries a staged snapshot to the store.
        let _ = h.propose(b"after".to_vec()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = store.latest_snapshot().unwrap();
    assert!(
        snap.get_metadata().index > 1,
        "the snapshot was never saved"
    );
    assert_eq!(
        snap.data,
        snap.get_metadata().index.to_be_bytes().to_vec(),
        "the snapshot's data must be the state at its index"
    );
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_the_transport_reports_failed_is_sent_again() {
    let net = Net {
        report_snapshots: true,
        ..Net::default()
    };
    let compacting = |id| {
        let mut config = ReplicaConfig::new(id);
        config.snapshot_interval = 5;
        config.log_retain = 2;
        config
    };
    let c = Cluster::start_on(net, 3, compacting, Echo::default).await;
    let leader = c.wait_leader().await;
    let lagging = (1..=3).find(|&id| id != leader).unwrap();
    // The lagging node misses enough writes that the leader compacts them away.
    c.net.set_filter(move |m| {
        if m.to == lagging || m.from == lagging {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let mut written = 0;
    for _ in 0..20 {
        written = c.handle(leader).propose(b"w".to_vec()).await.unwrap();
    }
    // Back on the network, its first snapshot is lost (and reported so), later ones
    // arrive.
    let lost = Arc::new(Mutex::new(false));
    c.net.set_filter(move |m| {
        let mut lost = lost.lock().unwrap();
        if m.get_msg_type() == MessageType::MsgSnapshot && !*lost {
            *lost = true;
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let h = c.handle(lagging);
    eventually("the lagging node to catch up", 300, || {
        h.status().applied >= written
    })
    .await;
    let sent = c.net.snapshots.lock().unwrap().clone();
    assert_eq!(
        sent.first(),
        Some(&(lagging, SnapshotStatus::Failure)),
        "{sent:?}"
    );
    assert!(
        sent.contains(&(lagging, SnapshotStatus::Finish)),
        "no snapshot arrived: {sent:?}"
    );
}

/// A follower replaced with an empty log (an operator's rolling upgrade) must not get
/// heartbeats that commit past its log: a raft-rs follower panics on one. Once told
/// the peer restarted, the leader heartbeats it with commit 0 until it has caught up.
#[tokio::test(start_paused = true)]
async fn a_leader_told_a_peer_restarted_forgets_what_it_had() {
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    for i in 0..20u8 {
        c.handle(leader).propose(vec![i]).await.unwrap();
    }
    let f = (1..=3).find(|&id| id != leader).unwrap();
    let heartbeats = Arc::new(Mutex::new(Vec::new()));
    let seen = heartbeats.clone();
    c.net.set_filter(move |m| {
        if m.to == f && m.get_msg_type() == MessageType::MsgHeartbeat {
            seen.lock().unwrap().push(m.commit);
        }
        Fate::Deliver
    });

    // Node f comes back as a node that never ran: only the bootstrap snapshot.
    let wipe = |c: &mut Cluster<Echo>| {
        let store = MemLogStore::new();
        store
            .bootstrap(make_snapshot(1, 1, voters(1..=3), Vec::new()))
            .unwrap();
        c.stores.insert(f, store);
    };
    let commit = c.handle(leader).status().commit;
    let caught_up = |c: &Cluster<Echo>| c.handle(f).status().applied >= commit;

    // Not told: the leader still counts what f acknowledged before, heartbeats commit
    // past f's log (ours refuses those at the gate; a raft-rs follower would panic), and
    // f's rejections of appends look stale to it: f would never catch up.
    c.stop(f).await;
    wipe(&mut c);
    c.run(f, ReplicaConfig::new(f)).await;
    eventually("a heartbeat to the wiped follower", 100, || {
        !heartbeats.lock().unwrap().is_empty()
    })
    .await;
    let first = heartbeats.lock().unwrap()[0];
    assert!(
        first > 1,
        "the leader heartbeat commit {first} to a follower with only entry 1"
    );
    assert!(!caught_up(&c));

    // Told: commit 0 until the follower has answered from its new log, and it catches up.
    heartbeats.lock().unwrap().clear();
    c.handle(leader).peer_restarted(f);
    eventually("a heartbeat to the wiped follower", 100, || {
        !heartbeats.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(heartbeats.lock().unwrap()[0], 0);
    eventually("the wiped follower catches up", 100, || caught_up(&c)).await;
    c.handle(leader).propose(b"after".to_vec()).await.unwrap();
}

/// A 3-node cluster whose election timeout is far longer than any wait below (only a
/// hand-off can change the leader in time), led by node 1 with `entries` applied,
/// every node driven with `hand_off` as its [`DriverConfig::hand_off_on_stop`].
async fn slow_electing_cluster(entries: u8, hand_off: Duration) -> Cluster<Echo> {
    let config = |id| ReplicaConfig {
        election_tick: 1000,
        ..ReplicaConfig::new(id)
    };
    let mut c = Cluster {
        net: Arc::new(Net::default()),
        stores: HashMap::new(),
        nodes: HashMap::new(),
        make_sm: Box::new(Echo::default),
    };
    for id in 1..=3 {
        let store = MemLogStore::new();
        store
            .bootstrap(make_snapshot(1, 1, voters(1..=3), Vec::new()))
            .unwrap();
        c.stores.insert(id, store);
        let driver = DriverConfig {
            tick_interval: TICK,
            proposal_timeout: REQUEST_TIMEOUT,
            hand_off_on_stop: hand_off,
            ..DriverConfig::default()
        };
        c.run_driven(id, config(id), driver).await;
    }
    c.handle(1).campaign().await.unwrap();
    eventually("node 1 leads", 50, || {
        c.handle(1).status().role == Role::Leader
    })
    .await;
    for i in 0..entries {
        c.handle(1).propose(vec![i]).await.unwrap();
    }
    c
}

/// The node other than `stopped` that leads, once both running nodes agree on it.
fn new_leader(c: &Cluster<Echo>) -> Option<u64> {
    let statuses: Vec<_> = c.nodes.values().map(|n| n.handle.status()).collect();
    let leader = statuses.iter().find(|s| s.role == Role::Leader)?;
    statuses
        .iter()
        .all(|s| s.leader_id == leader.id)
        .then_some(leader.id)
}

#[tokio::test(start_paused = true)]
async fn a_leader_asked_to_stop_hands_leadership_to_a_follower_first() {
    let mut c = slow_electing_cluster(20, Duration::from_secs(2)).await;
    // One follower is cut off: the successor must be the one that has every entry.
    let lagging = 3;
    c.net.set_filter(move |m| {
        if m.to == lagging || m.from == lagging {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let last = c
        .handle(1)
        .propose(b"only 2 has it".to_vec())
        .await
        .unwrap();
    c.stop(1).await;
    c.net.clear_filter();
    // Within 50 ticks, a twentieth of the election timeout: no election could do it.
    eventually("node 2 to lead", 50, || {
        c.handle(2).status().role == Role::Leader
    })
    .await;
    // Node 3 missed the hand-off (its vote request never arrived): it refuses the new
    // leader while its lease on the old one lasts (the gate's `LeaderInLease`, an
    // election timeout). Node 2, without a quorum meanwhile, may step down, and an
    // election follows: within two election timeouts both follow one leader again,
    // as they would have without a hand-off.
    eventually("node 3 to follow the new leader", 3000, || {
        new_leader(&c).is_some()
    })
    .await;
    let leader = new_leader(&c).unwrap();
    let next = c.handle(leader).propose(b"after".to_vec()).await.unwrap();
    assert!(next > last, "entry {next} follows {last}");
    eventually("node 3 applies the new leader's entry", 50, || {
        c.handle(3).status().applied >= next
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_told_not_to_hand_off_leaves_the_others_to_elect() {
    let mut c = slow_electing_cluster(5, Duration::ZERO).await;
    c.stop(1).await;
    for _ in 0..50 {
        tokio::time::sleep(TICK).await;
        assert_eq!(new_leader(&c), None, "a leader without an election");
    }
}

#[tokio::test(start_paused = true)]
async fn a_follower_asked_to_stop_stops_at_once_and_the_leader_stays() {
    let mut c = slow_electing_cluster(5, Duration::from_secs(2)).await;
    let term = c.handle(1).status().term;
    c.stop(2).await;
    let st = c.handle(1).status();
    assert_eq!((st.role, st.term), (Role::Leader, term));
    c.handle(1)
        .propose(b"still leading".to_vec())
        .await
        .unwrap();
}
