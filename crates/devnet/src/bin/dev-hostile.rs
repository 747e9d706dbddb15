//! `dev-hostile`: feeds a consensus node the hostile set of `craft_devnet::hostile`, for
//! cluster tests.
//!
//! Through the network service, as a real peer: every message goes out with `SendMsg` on
//! the sender's network port and reaches the target with the sender's origin. With
//! `--direct`, the set is also sent straight to the target's `ProcessNetworkMsg` from an
//! origin no peer has. Prints how many messages were sent and how many were refused.

use anyhow::Context;
use cita_proto::network::network_msg_handler_service_client::NetworkMsgHandlerServiceClient;
use cita_proto::network::network_service_client::NetworkServiceClient;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Send hostile network input to a consensus node (for tests)")]
struct Args {
    /// The sender's network service, e.g. http://127.0.0.1:50000.
    #[arg(long)]
    network: String,
    /// The target's origin (session id) on that network.
    #[arg(long)]
    origin: u64,
    /// The target's node address (hex), for its raft id.
    #[arg(long)]
    to_address: String,
    /// The sender's node address (hex): forged raft messages carry its raft id.
    #[arg(long)]
    from_address: String,
    /// Also send the set to this `ProcessNetworkMsg` endpoint directly, from an unknown
    /// origin and an unknown raft id.
    #[arg(long)]
    direct: Option<String>,
    /// Seed of the random payloads.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of random payloads.
    #[arg(long, default_value_t = 200)]
    random: usize,
    /// The target's raft term, last index and commit index (`TERM,LAST,COMMIT`, from
    /// its metrics): adds forgeries that only disagree with that state.
    #[arg(long, value_parser = parse_state)]
    state: Option<craft_devnet::hostile::TargetState>,
}

fn parse_state(s: &str) -> Result<craft_devnet::hostile::TargetState, String> {
    let v: Vec<u64> = s
        .split(',')
        .map(|p| p.trim().parse::<u64>().map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [term, last_index, commit] => Ok(craft_devnet::hostile::TargetState {
            term,
            last_index,
            commit,
        }),
        _ => Err(format!("{s:?} is not TERM,LAST,COMMIT")),
    }
}

fn raft_id(hex_addr: &str) -> anyhow::Result<u64> {
    let bytes = hex::decode(hex_addr.trim().trim_start_matches("0x"))
        .with_context(|| format!("node address {hex_addr:?} is not hex"))?;
    Ok(craft_transport::cita::raft_id(&bytes))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let to = raft_id(&args.to_address)?;
    let from = raft_id(&args.from_address)?;
    let set = craft_devnet::hostile::payloads(to, from, args.seed, args.random, args.state);
    let mut network = NetworkServiceClient::connect(args.network.clone())
        .await
        .with_context(|| format!("connecting to {}", args.network))?;
    let (mut sent, mut refused) = (0, 0);
    for h in &set {
        let mut msg = h.msg.clone();
        msg.origin = args.origin;
        sent += 1;
        match network.send_msg(msg).await {
            Ok(r) if r.get_ref().code == 0 => {}
            _ => refused += 1,
        }
    }
    // A peer the network does not know.
    if let Some(first) = set.first() {
        let mut unknown = first.msg.clone();
        unknown.origin = 9999;
        sent += 1;
        if network.send_msg(unknown).await.is_err() {
            refused += 1;
        }
    }
    println!("via network: {sent} sent, {refused} refused by the network");
    if let Some(direct) = &args.direct {
        let mut handler = NetworkMsgHandlerServiceClient::connect(direct.clone())
            .await
            .with_context(|| format!("connecting to {direct}"))?;
        let (mut sent, mut refused) = (0, 0);
        // From a raft id no member has, so that the node's map of peers to origins is
        // not the thing under test here.
        for h in craft_devnet::hostile::payloads(to, 0xbad, args.seed + 1, args.random, args.state)
        {
            let mut msg = h.msg;
            msg.origin = 0xdead_beef;
            sent += 1;
            match handler.process_network_msg(msg).await {
                Ok(r) if r.get_ref().code == 0 => {}
                _ => refused += 1,
            }
        }
        println!("direct: {sent} sent, {refused} answered with an error");
    }
    Ok(())
}
