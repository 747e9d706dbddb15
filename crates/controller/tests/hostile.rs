//! Generated hostile answers from the controller: a fake controller answers every call
//! with bytes of its choosing (valid answers mutated, field values no real controller
//! sends, random bytes, groups nested 100,000 deep, a length of 2^31, nothing at all),
//! and [`GrpcController`] must turn each into a value that is exactly what the bytes
//! say or a typed [`ControllerError`]: never a panic, never a hang.
//!
//! `CRAFT_FUZZ_CASES` sets the number of generated answers (CI runs a bounded number;
//! `cargo xtask fuzz` runs 100,000).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cita_proto::common::{
    ConsensusConfiguration, ConsensusConfigurationResponse, Proposal, ProposalResponse, StatusCode,
};
use craft_controller::{Controller, ControllerError, GrpcController};
use craft_mutate::{apply, deep_groups, mutation, runner, HUGE_LENGTH};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use prost::bytes::{Buf as _, BufMut as _};
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

/// Messages as raw bytes, both ways.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// Answers every call with the bytes in `answer`.
#[derive(Clone, Default)]
struct FakeController {
    answer: Arc<Mutex<Vec<u8>>>,
}

struct Fixed(Vec<u8>);

impl UnaryService<Vec<u8>> for Fixed {
    type Response = Vec<u8>;
    type Future = std::future::Ready<Result<Response<Vec<u8>>, Status>>;
    fn call(&mut self, _: Request<Vec<u8>>) -> Self::Future {
        std::future::ready(Ok(Response::new(std::mem::take(&mut self.0))))
    }
}

impl<B> Service<http::Request<B>> for FakeController
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answer = self.answer.lock().unwrap().clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Raw);
            Ok(grpc.unary(Fixed(answer), req).await)
        })
    }
}

impl NamedService for FakeController {
    const NAME: &'static str = "controller.Consensus2ControllerService";
}

/// Field values no real controller sends, still well-formed protobuf: any status code,
/// heights at the extremes, validator lists of any length with addresses of any size.
type OddValues = (u32, u64, u32, Vec<Vec<u8>>);

fn odd_values() -> impl Strategy<Value = OddValues> {
    (
        prop_oneof![Just(0u32), any::<u32>()],
        prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        any::<u32>(),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..50),
    )
}

#[derive(Debug, Clone, Copy)]
enum Call {
    GetProposal,
    CheckProposal,
    CommitBlock,
}

fn seed(call: Call, (code, height, interval, validators): OddValues) -> Vec<u8> {
    match call {
        Call::GetProposal => ProposalResponse {
            status: Some(StatusCode { code }),
            proposal: Some(Proposal {
                height,
                data: validators.concat().into(),
            }),
        }
        .encode_to_vec(),
        Call::CheckProposal => StatusCode { code }.encode_to_vec(),
        Call::CommitBlock => ConsensusConfigurationResponse {
            status: Some(StatusCode { code }),
            config: Some(ConsensusConfiguration {
                height,
                block_interval: interval,
                validators,
            }),
        }
        .encode_to_vec(),
    }
}

/// What the answer's bytes say: the value the call must return, or why it must fail.
#[derive(Debug)]
enum Expected {
    Value(Vec<u8>),
    Undecodable,
    Refused,
}

fn expected(call: Call, bytes: &[u8]) -> Expected {
    match call {
        Call::GetProposal => match ProposalResponse::decode(bytes) {
            Err(_) => Expected::Undecodable,
            Ok(r) => match (r.status.map(|s| s.code), r.proposal) {
                (Some(0), Some(p)) => Expected::Value(p.encode_to_vec()),
                _ => Expected::Refused,
            },
        },
        Call::CheckProposal => match StatusCode::decode(bytes) {
            Err(_) => Expected::Undecodable,
            Ok(s) => Expected::Value(vec![u8::from(s.code == 0)]),
        },
        Call::CommitBlock => match ConsensusConfigurationResponse::decode(bytes) {
            Err(_) => Expected::Undecodable,
            Ok(r) => match (r.status.map(|s| s.code), r.config) {
                (Some(0), Some(c)) => Expected::Value(c.encode_to_vec()),
                _ => Expected::Refused,
            },
        },
    }
}

/// Calls `call` against a controller answering `bytes`; `Ok(true)` when the value was
/// taken as sent, `Ok(false)` when it was refused with the right typed error.
async fn check(client: &GrpcController, call: Call, bytes: &[u8]) -> Result<bool, String> {
    let proposal = Proposal {
        height: 7,
        data: b"block".to_vec().into(),
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        match call {
            Call::GetProposal => client.get_proposal().await.map(|p| p.encode_to_vec()),
            Call::CheckProposal => client
                .check_proposal(proposal)
                .await
                .map(|ok| vec![u8::from(ok)]),
            Call::CommitBlock => client
                .commit_block(proposal)
                .await
                .map(|c| c.encode_to_vec()),
        }
    })
    .await
    .map_err(|_| format!("{call:?}: no answer in 10 s"))?;
    match (&outcome, expected(call, bytes)) {
        (Ok(got), Expected::Value(want)) if *got == want => Ok(true),
        // Bytes that do not decode fail the call in transport: retryable.
        (Err(ControllerError::Unavailable(_)), Expected::Undecodable) => Ok(false),
        (
            Err(ControllerError::Status { .. } | ControllerError::Malformed { .. }),
            Expected::Refused,
        ) => Ok(false),
        (got, want) => Err(format!("{call:?}: got {got:?}, the bytes say {want:?}")),
    }
}

async fn serve(fake: FakeController) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(fake)
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    format!("http://{addr}")
}

#[test]
fn hostile_answers_are_what_they_say_or_typed_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = FakeController::default();
    let addr = rt.block_on(serve(fake.clone()));
    let client = {
        let _guard = rt.enter();
        GrpcController::new(&addr, Duration::from_secs(5)).unwrap()
    };
    let calls = [Call::GetProposal, Call::CheckProposal, Call::CommitBlock];
    let (accepted, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner(2000)
        .run(
            &(
                0..calls.len(),
                odd_values(),
                prop::collection::vec(mutation(), 0..3),
                prop::option::weighted(0.1, prop::collection::vec(any::<u8>(), 0..64)),
            ),
            |(call, values, mutations, random)| {
                let call = calls[call];
                let bytes =
                    random.unwrap_or_else(|| mutations.iter().fold(seed(call, values), apply));
                *fake.answer.lock().unwrap() = bytes.clone();
                match rt.block_on(check(&client, call, &bytes)) {
                    Ok(true) => accepted.set(accepted.get() + 1),
                    Ok(false) => refused.set(refused.get() + 1),
                    Err(e) => return Err(TestCaseError::fail(e)),
                }
                Ok(())
            },
        )
        .unwrap();
    let (a, r) = (accepted.get(), refused.get());
    println!("controller answers: {a} taken as sent, {r} refused with a typed error");
    assert!(a > 0 && r > 0, "only one outcome seen: {a} / {r}");

    // Hand-made: groups nested 100,000 deep, a length of 2^31, an empty answer.
    for call in calls {
        for bytes in [deep_groups(), HUGE_LENGTH.to_vec(), Vec::new()] {
            *fake.answer.lock().unwrap() = bytes.clone();
            rt.block_on(check(&client, call, &bytes)).unwrap();
        }
    }
}
