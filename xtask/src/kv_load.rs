//! The closed-loop load of `bench --kv`: `clients` tasks, each sending its next request
//! as soon as the last one is answered, each system through its own native API:
//! - **craft-kv** over HTTP/1.1 (`POST /key` `{"k":"v"}`, `GET /key/{k}`), one keep-alive
//!   connection per client, as wrk drives it;
//! - **etcd** over its gRPC API (`etcdserverpb.KV/Put`, `KV/Range`, linearizable), the
//!   clients sharing one HTTP/2 connection per [`ETCD_CLIENTS_PER_CONN`], the ratio of
//!   etcd's own performance figures (its `benchmark` tool with `--conns=100
//!   --clients=1000`). This is etcd at its best: its JSON gateway, which `--kv-driver wrk`
//!   uses, costs it 20–25 %.
//!
//! Both get the same keys (ASCII), values, client count and random choices. The load
//! runs on a runtime of two threads in this process, on the machine the servers share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// The load of one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Every request writes one value under a fresh key.
    Write,
    /// 90% linearizable reads, 10% writes, over keys written before the run.
    Mix,
}

impl Workload {
    /// Its name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Workload::Write => "write",
            Workload::Mix => "mix 90/10",
        }
    }
}

/// What a load measured (this module's clients, or wrk).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Figures {
    /// Completed requests per second (writes/s for writes, operations/s for the mix).
    pub ops_per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Answers that were not 2xx/3xx.
    pub errors: u64,
}

/// etcd clients per gRPC connection.
pub const ETCD_CLIENTS_PER_CONN: usize = 10;
/// One request's deadline: a request that takes longer counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `etcdserverpb.PutRequest`, the fields set (`api/etcdserverpb/rpc.proto`).
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `etcdserverpb.RangeRequest`, the field set (`serializable`, field 7, stays false:
/// a linearizable read).
#[derive(Clone, PartialEq, prost::Message)]
struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
}

/// `PutResponse` and `RangeResponse`: their fields are not read.
#[derive(Clone, PartialEq, prost::Message)]
struct Ignored {}

/// Which system, where (the leader's client address).
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// craft-kv's HTTP API.
    CraftKv(SocketAddr),
    /// etcd's gRPC API.
    Etcd(SocketAddr),
}

/// One load run.
#[derive(Debug, Clone)]
pub struct Load {
    /// Where it goes.
    pub target: Target,
    /// What it does.
    pub workload: Workload,
    /// Concurrent clients.
    pub clients: usize,
    /// Unmeasured seconds first.
    pub warmup: Duration,
    /// Measured seconds.
    pub measure: Duration,
    /// A run number, part of every written key (each run writes fresh keys).
    pub run: u32,
    /// The value written.
    pub value: Vec<u8>,
    /// Keys of the mix: `mix000`.. (written before the run).
    pub mix_keys: usize,
}

/// One request a client makes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write `value` under this key.
    Put(String),
    /// Read this key, linearizably.
    Get(String),
}

/// A client's requests: fresh keys for writes; for the mix, 90% reads and every tenth a
/// write, of keys chosen by a generator seeded with the run and the client.
pub struct Ops {
    workload: Workload,
    run: u32,
    client: usize,
    counter: u64,
    rng: u64,
    mix_keys: usize,
}

impl Ops {
    /// The requests of client `client` in run `run`.
    pub fn new(workload: Workload, run: u32, client: usize, mix_keys: usize) -> Self {
        Ops {
            workload,
            run,
            client,
            counter: 0,
            // Odd and different for every (run, client): xorshift never leaves 0.
            rng: ((u64::from(run) << 32) | client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            mix_keys: mix_keys.max(1),
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: the same sequence for both systems.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

impl Iterator for Ops {
    type Item = Op;

    fn next(&mut self) -> Option<Op> {
        self.counter += 1;
        Some(match self.workload {
            Workload::Write => Op::Put(format!(
                "key{:03}{:04}{:09}",
                self.run % 1000,
                self.client % 10_000,
                self.counter
            )),
            Workload::Mix => {
                let key = format!("mix{:03}", self.next_random() % self.mix_keys as u64);
                if self.counter.is_multiple_of(10) {
                    Op::Put(key)
                } else {
                    Op::Get(key)
                }
            }
        })
    }
}

/// Latencies (µs) and errors of one client inside the measured window.
#[derive(Default)]
struct Tally {
    micros: Vec<u32>,
    errors: u64,
}

/// A connection of one client, or a shared one.
enum Conn {
    Http(
        Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
        SocketAddr,
    ),
    Grpc(tonic::client::Grpc<Channel>),
}

impl Conn {
    async fn http(
        addr: SocketAddr,
    ) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Makes one request; `Ok(false)` for an answer that is not a success.
    async fn call(&mut self, op: &Op, value: &[u8]) -> anyhow::Result<bool> {
        match self {
            Conn::Http(sender, addr) => {
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    *sender = Some(Self::http(*addr).await?);
                }
                let Some(s) = sender.as_mut() else {
                    anyhow::bail!("no connection");
                };
                s.ready().await.context("connection not ready")?;
                let req = match op {
                    Op::Put(key) => {
                        let mut body = Vec::with_capacity(key.len() + value.len() + 8);
                        body.extend_from_slice(b"{\"");
                        body.extend_from_slice(key.as_bytes());
                        body.extend_from_slice(b"\":\"");
                        body.extend_from_slice(value);
                        body.extend_from_slice(b"\"}");
                        hyper::Request::post("/key")
                            .header("host", addr.to_string())
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))?
                    }
                    Op::Get(key) => hyper::Request::get(format!("/key/{key}"))
                        .header("host", addr.to_string())
                        .body(Full::new(Bytes::new()))?,
                };
                let reply = s.send_request(req).await.inspect_err(|_| *sender = None)?;
                let ok = reply.status().is_success();
                reply.into_body().collect().await?;
                Ok(ok)
            }
            Conn::Grpc(grpc) => {
                grpc.ready().await.context("etcd connection not ready")?;
                let result = match op {
                    Op::Put(key) => {
                        let req = PutRequest {
                            key: key.as_bytes().to_vec(),
                            value: value.to_vec(),
                        };
                        grpc.unary(
                            tonic::Request::new(req),
                            PathAndQuery::from_static("/etcdserverpb.KV/Put"),
                            tonic_prost::ProstCodec::<PutRequest, Ignored>::default(),
                        )
                        .await
                    }
                    Op::Get(key) => {
                        let req = RangeRequest {
                            key: key.as_bytes().to_vec(),
                        };
                        grpc.unary(
                            tonic::Request::new(req),
                            PathAndQuery::from_static("/etcdserverpb.KV/Range"),
                            tonic_prost::ProstCodec::<RangeRequest, Ignored>::default(),
                        )
                        .await
                    }
                };
                Ok(result.is_ok())
            }
        }
    }
}

async fn client(
    mut conn: Conn,
    mut ops: Ops,
    value: Arc<Vec<u8>>,
    start: Instant,
    end: Instant,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(op) = ops.next() else { break };
        let t = Instant::now();
        if t >= end {
            break;
        }
        let ok = matches!(
            tokio::time::timeout(REQUEST_TIMEOUT, conn.call(&op, &value)).await,
            Ok(Ok(true))
        );
        if t >= start {
            if ok {
                let us = t.elapsed().as_micros();
                tally.micros.push(u32::try_from(us).unwrap_or(u32::MAX));
            } else {
                tally.errors += 1;
            }
        }
        if !ok && t.elapsed() < Duration::from_millis(10) {
            // A refused connection: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tally
}

/// Runs `load` and returns its figures: operations completed per second of the measured
/// window, and the latency quantiles of those operations.
pub fn run(load: &Load) -> anyhow::Result<Figures> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the load's runtime")?;
    rt.block_on(async {
        let value = Arc::new(load.value.clone());
        let mut conns = Vec::with_capacity(load.clients);
        match load.target {
            Target::CraftKv(addr) => {
                for _ in 0..load.clients {
                    conns.push(Conn::Http(Some(Conn::http(addr).await?), addr));
                }
            }
            Target::Etcd(addr) => {
                let n = load.clients.div_ceil(ETCD_CLIENTS_PER_CONN).max(1);
                let mut channels = Vec::with_capacity(n);
                for _ in 0..n {
                    let ch = Endpoint::from_shared(format!("http://{addr}"))?
                        .tcp_nodelay(true)
                        .connect()
                        .await
                        .with_context(|| format!("connecting to etcd at {addr}"))?;
                    channels.push(ch);
                }
                for i in 0..load.clients {
                    conns.push(Conn::Grpc(tonic::client::Grpc::new(
                        channels[i % n].clone(),
                    )));
                }
            }
        }
        let start = Instant::now() + load.warmup;
        let end = start + load.measure;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, conn)| {
                let ops = Ops::new(load.workload, load.run, i, load.mix_keys);
                tokio::spawn(client(conn, ops, value.clone(), start, end, stop.clone()))
            })
            .collect();
        let mut micros = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let tally = t.await.context("a load task failed")?;
            micros.extend(tally.micros);
            errors += tally.errors;
        }
        Ok(figures(micros, errors, load.measure))
    })
}

/// Figures of `micros` (latencies of successful operations) over `window`.
fn figures(mut micros: Vec<u32>, errors: u64, window: Duration) -> Figures {
    micros.sort_unstable();
    let q = |q: f64| -> f64 {
        if micros.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
        f64::from(micros[rank - 1]) / 1000.0
    };
    Figures {
        ops_per_sec: micros.len() as f64 / window.as_secs_f64(),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_use_fresh_keys_and_the_mix_writes_every_tenth() {
        let keys: Vec<Op> = Ops::new(Workload::Write, 7, 12, 1000).take(3).collect();
        assert_eq!(
            keys,
            vec![
                Op::Put("key0070012000000001".into()),
                Op::Put("key0070012000000002".into()),
                Op::Put("key0070012000000003".into()),
            ]
        );
        let mix: Vec<Op> = Ops::new(Workload::Mix, 1, 0, 1000).take(100).collect();
        let puts = mix.iter().filter(|o| matches!(o, Op::Put(_))).count();
        assert_eq!(puts, 10);
        assert!(mix.iter().all(|o| match o {
            Op::Put(k) | Op::Get(k) => k.starts_with("mix") && k.len() == 6,
        }));
        // The same run and client choose the same keys, whatever the system.
        let again: Vec<Op> = Ops::new(Workload::Mix, 1, 0, 1000).take(100).collect();
        assert_eq!(mix, again);
        let other: Vec<Op> = Ops::new(Workload::Mix, 1, 1, 1000).take(100).collect();
        assert_ne!(mix, other);
    }

    #[test]
    fn figures_are_rates_and_nearest_rank_quantiles() {
        let micros: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        let f = figures(micros, 3, Duration::from_secs(10));
        assert_eq!(f.ops_per_sec, 100.0);
        assert_eq!(f.p50_ms, 500.0);
        assert_eq!(f.p99_ms, 990.0);
        assert_eq!(f.errors, 3);
        assert!(figures(Vec::new(), 0, Duration::from_secs(1))
            .p50_ms
            .is_nan());
    }
}
