//! The few gRPC calls the kit makes itself, each on a runtime of its own.

use std::time::Duration;

use anyhow::Context;
use cita_proto::common::{ConsensusConfiguration, Proposal, ProposalWithProof};
use cita_proto::consensus::consensus_service_client::ConsensusServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?
        .block_on(f)
}

async fn channel(port: u16) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))
}

/// `grpc.health.v1.Health/Check` for the whole server: the status's name.
pub fn health(port: u16) -> anyhow::Result<String> {
    block_on(async {
        let mut client = HealthClient::new(channel(port).await?);
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .context("Health/Check")?
            .into_inner()
            .status();
        Ok(status.as_str_name().to_string())
    })
}

/// `Reconfigure`: the status code.
pub fn reconfigure(
    port: u16,
    height: u64,
    block_interval: u32,
    validators: Vec<Vec<u8>>,
) -> anyhow::Result<u32> {
    block_on(async {
        let mut client = ConsensusServiceClient::new(channel(port).await?);
        let status = client
            .reconfigure(ConsensusConfiguration {
                height,
                block_interval,
                validators,
            })
            .await
            .context("Reconfigure")?
            .into_inner();
        Ok(status.code)
    })
}

/// `CheckBlock` with an empty proof: the status code.
pub fn check_block(port: u16, height: u64, data: Vec<u8>) -> anyhow::Result<u32> {
    block_on(async {
        let mut client = ConsensusServiceClient::new(channel(port).await?);
        let status = client
            .check_block(ProposalWithProof {
                proposal: Some(Proposal {
                    height,
                    data: data.into(),
                }),
                proof: Vec::new(),
            })
            .await
            .context("CheckBlock")?
            .into_inner();
        Ok(status.code)
    })
}
