//! What the demos share: their state machines ([`register`], [`hashmap`]), the
//! multi-process node and client ([`server`]), and in-process cluster plumbing (three
//! nodes in one process over [`MemLogStore`], and a transport that hands each raft
//! message straight to the receiving node's inbox channel; [`NodeHandle::step`] is a
//! bounded, non-blocking channel send), which the in-process demo tests use.

// Each demo and test uses a part of this module.
#![allow(dead_code)]

pub mod hashmap;
pub mod register;
pub mod server;

use craft_core::sync::RwLockExt;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use craft_core::raft::eraftpb::Message;
use craft_core::{
    make_snapshot, voters, DriverConfig, LogStore, MemLogStore, NodeHandle, ReplicaConfig, Role,
    StateMachine, Transport,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Delivers messages between nodes of one process. A node that is not registered (or
/// was unplugged) loses its messages, as a crashed machine would.
pub struct LocalNetwork<R> {
    /// Each node's handle, by raft id.
    nodes: Arc<RwLock<HashMap<u64, NodeHandle<R>>>>,
}

impl<R> Clone for LocalNetwork<R> {
    fn clone(&self) -> Self {
        Self {
            nodes: self.nodes.clone(),
        }
    }
}

impl<R: Send + 'static> LocalNetwork<R> {
    fn new() -> Self {
        Self {
            nodes: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    fn plug(&self, id: u64, handle: NodeHandle<R>) {
        self.nodes.write_locked().insert(id, handle);
    }

    fn unplug(&self, id: u64) {
        self.nodes.write_locked().remove(&id);
    }
}

impl<R: Send + 'static> Transport for LocalNetwork<R> {
    fn send(&self, messages: Vec<Message>) {
        let nodes = self.nodes.read_locked();
        for msg in messages {
            if let Some(node) = nodes.get(&msg.to) {
                // A full inbox drops the message; raft retransmits.
                node.step(msg);
            }
        }
    }
}

/// One running demo node.
pub struct DemoNode<R> {
    /// Raft id.
    pub id: u64,
    /// Handle on its driver.
    pub handle: NodeHandle<R>,
    /// Stops the driver.
    stop: Option<oneshot::Sender<()>>,
    /// The driver task.
    task: JoinHandle<Result<(), craft_core::Error>>,
}

/// A cluster of in-process nodes sharing one [`LocalNetwork`].
pub struct LocalCluster<R> {
    /// The running nodes.
    pub nodes: Vec<DemoNode<R>>,
    /// Their network.
    network: LocalNetwork<R>,
}

impl<R: Send + 'static> LocalCluster<R> {
    /// Starts `ids` as the voters of a new cluster, each with the state machine
    /// `make(id)` and a fresh bootstrapped [`MemLogStore`]. Ticks are 10 ms, so an
    /// election takes a few hundred milliseconds.
    pub async fn start<M>(ids: &[u64], mut make: impl FnMut(u64) -> M) -> anyhow::Result<Self>
    where
        M: StateMachine<Response = R>,
    {
        let network = LocalNetwork::new();
        let mut nodes = Vec::new();
        for &id in ids {
            let store = MemLogStore::new();
            store.bootstrap(make_snapshot(1, 1, voters(ids.iter().copied()), Vec::new()))?;
            let driver = DriverConfig {
                tick_interval: Duration::from_millis(10),
                proposal_timeout: Duration::from_secs(5),
                ..DriverConfig::default()
            };
            let (stop, stopped) = oneshot::channel::<()>();
            let (handle, task) = craft_core::start(
                ReplicaConfig::new(id),
                driver,
                store,
                make(id),
                network.clone(),
                async move {
                    let _ = stopped.await;
                },
            )
            .await?;
            network.plug(id, handle.clone());
            nodes.push(DemoNode {
                id,
                handle,
                stop: Some(stop),
                task,
            });
        }
        Ok(Self { nodes, network })
    }

    /// Waits (up to 10 s) until a running node leads, and returns it.
    pub async fn leader(&self) -> anyhow::Result<&DemoNode<R>> {
        for _ in 0..1000 {
            let leader = self
                .nodes
                .iter()
                .filter(|n| n.handle.status().role == Role::Leader)
                .max_by_key(|n| n.handle.status().term);
            if let Some(leader) = leader {
                return Ok(leader);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::bail!("no leader elected within 10 s")
    }

    /// Stops node `id` and cuts it off the network, as if it crashed.
    pub async fn crash(&mut self, id: u64) -> anyhow::Result<()> {
        self.network.unplug(id);
        if let Some(pos) = self.nodes.iter().position(|n| n.id == id) {
            let mut node = self.nodes.remove(pos);
            if let Some(stop) = node.stop.take() {
                let _ = stop.send(());
            }
            node.task.await??;
        }
        Ok(())
    }

    /// Stops every node.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            self.crash(id).await?;
        }
        Ok(())
    }
}
