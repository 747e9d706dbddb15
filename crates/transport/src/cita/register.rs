//! Registration with the network service, and the probes that tell peers who this node
//! is.

use super::*;

impl CitaNetwork {
    /// Registers the `consensus` handler with the network, retrying with backoff until
    /// the network accepts it.
    pub async fn register_until_ok(&self) {
        let info = RegisterInfo {
            module_name: MODULE.to_string(),
            hostname: self.inner.cfg.handler_host.clone(),
            port: self.inner.cfg.handler_port.to_string(),
        };
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self
                .inner
                .client
                .clone()
                .register_network_msg_handler(info.clone())
                .await
            {
                Ok(resp) if resp.get_ref().code == 0 => {
                    tracing::info!("registered network message handler");
                    // Now that answers can reach us, say who we are: peers learn our
                    // origin from the probe and answer with theirs. A probe sent
                    // before (raft starts first) found no handler to answer to, and a
                    // peer that has no origin for us yet may not send to us again
                    // before it needs to.
                    self.probe_now();
                    return;
                }
                Ok(resp) => tracing::warn!(
                    code = resp.get_ref().code,
                    attempt,
                    "network refused handler registration"
                ),
                Err(e) if attempt == 1 || attempt.is_power_of_two() => {
                    tracing::warn!(error = %e, attempt, "network unreachable, retrying registration")
                }
                Err(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }

    /// Registers the handler ([`CitaNetwork::register_until_ok`]) and registers it again
    /// whenever a call to the network has failed as if the service were gone: a network
    /// service that was killed and started again no longer knows where to deliver, and
    /// this node would otherwise never hear from its peers again. Runs until dropped.
    pub async fn stay_registered(&self) {
        loop {
            self.register_until_ok().await;
            self.inner.network_lost.notified().await;
            tracing::warn!("network service unreachable; registering again once it is back");
        }
    }

    /// Broadcasts a probe unless one went out within `probe_interval`.
    pub fn probe(&self) {
        {
            let mut last = self.inner.last_probe.locked();
            if last.is_some_and(|t| t.elapsed() < self.inner.cfg.probe_interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.broadcast_probe();
    }

    /// Tells the other nodes this node is leaving: broadcasts its probe and waits, at
    /// most `wait`, for the network service to take it. A leader of ours takes a probe
    /// as a restart and forgets what this node acknowledged, so while it is gone, and
    /// when it comes back with an empty raft directory (perhaps as the existing service,
    /// which steps the messages it was sent before its raft started), no heartbeat
    /// commits past its log on the strength of what this run acknowledged.
    pub async fn announce_departure(&self, wait: Duration) {
        let msg = NetworkMsg {
            module: MODULE.to_string(),
            r#type: TYPE_PROBE.to_string(),
            origin: 0,
            msg: id_payload(self.inner.cfg.raft_id).into(),
        };
        let mut client = self.inner.client.clone();
        match tokio::time::timeout(wait, client.broadcast(msg)).await {
            Ok(Ok(_)) => tracing::info!("departure announced to the other nodes"),
            Ok(Err(e)) => tracing::warn!(error = %e, "departure probe not taken"),
            Err(_) => tracing::warn!("departure probe not taken in time"),
        }
    }

    /// Broadcasts a probe whenever the last one was.
    fn probe_now(&self) {
        *self.inner.last_probe.locked() = Some(Instant::now());
        self.broadcast_probe();
    }

    /// Broadcasts our probe: this node's raft id, 8 bytes big-endian, as every node of
    /// the existing service sends it.
    fn broadcast_probe(&self) {
        let msg = NetworkMsg {
            module: MODULE.to_string(),
            r#type: TYPE_PROBE.to_string(),
            origin: 0,
            msg: id_payload(self.inner.cfg.raft_id).into(),
        };
        let mut client = self.inner.client.clone();
        let lost = self.inner.network_lost.clone();
        tokio::spawn(async move {
            if let Err(e) = client.broadcast(msg).await {
                tracing::debug!(error = %e, "probe broadcast failed");
                if network_gone(&e) {
                    lost.notify_one();
                }
            }
        });
    }
}
