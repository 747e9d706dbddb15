//! Mutual TLS between members and HTTPS for clients, with certificates made at run time
//! (rcgen): a TLS cluster serves writes and reads over HTTPS; a stranger whose
//! certificate another CA signed, or who speaks plain gRPC, cannot get a raft message
//! in; HTTPS clients need a certificate when the node asks for one.
//!
//! No wall-clock assertions: waits are bounded polling loops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use craft_core::raft::eraftpb::{Message, MessageType};
use craft_core::Transport as _;
use craft_kv::node::{KvNode, NodeConfig};
use craft_kv::tls::TlsFiles;
use craft_transport::peer::PeerTransport;
use craft_transport::tls::PeerTls;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

const PATIENCE: Duration = Duration::from_secs(30);

/// A CA that signs node and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
    fn sign(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a signed certificate, its key and this CA into `dir` as `name.*.pem`.
    fn files(&self, dir: &Path, name: &str) -> TlsFiles {
        let (cert, key) = self.sign();
        let path = |kind: &str| -> PathBuf { dir.join(format!("{name}.{kind}.pem")) };
        std::fs::write(path("cert"), cert).unwrap();
        std::fs::write(path("key"), key).unwrap();
        std::fs::write(path("ca"), self.pem()).unwrap();
        TlsFiles {
            cert: path("cert"),
            key: path("key"),
            ca: path("ca"),
            http_client_ca: None,
        }
    }

    fn peer_tls(&self) -> PeerTls {
        let (cert, key) = self.sign();
        PeerTls::from_pem(cert.into_bytes(), key.into_bytes(), self.pem().into_bytes())
    }
}

/// One HTTPS/1.1 request with `Connection: close`: `(status, body)`, or an error when
/// the TLS handshake or the exchange fails.
async fn https(
    addr: SocketAddr,
    ca: &Ca,
    client_cert: Option<(String, String)>,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

struct Cluster {
    nodes: Vec<KvNode>,
    _dir: tempfile::TempDir,
}

async fn tls_cluster(ca: &Ca, n: u64) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut raft = Vec::new();
    let mut http = Vec::new();
    for _ in 0..n {
        raft.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        http.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers: std::collections::BTreeMap<u64, String> = raft
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap().to_string()))
        .collect();
    let hpeers: std::collections::BTreeMap<u64, String> = http
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap().to_string()))
        .collect();
    let mut nodes = Vec::new();
    for (i, (r, h)) in raft.into_iter().zip(http).enumerate() {
        let id = i as u64 + 1;
        let mut config = NodeConfig::new(id, dir.path().join(format!("n{id}")));
        config.raft_peers = peers.clone();
        config.http_peers = hpeers.clone();
        config.tick_interval = Duration::from_millis(20);
        config.tls = Some(ca.files(dir.path(), &format!("n{id}")));
        nodes.push(KvNode::start(config, r, h).await.unwrap());
    }
    Cluster { nodes, _dir: dir }
}

async fn leader(nodes: &[KvNode]) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(i) = nodes.iter().position(|n| {
            let s = n.status();
            s.leader_id == s.id && s.id != 0
        }) {
            return i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader elected over TLS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn forged_vote(from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgRequestVote);
    m.from = from;
    m.to = to;
    m.term = term;
    m.index = u64::MAX / 2;
    m.log_term = term;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_cluster_serves_https_and_refuses_strangers() {
    let ca = Ca::new("cluster CA");
    let cluster = tls_cluster(&ca, 3).await;
    let l = leader(&cluster.nodes).await;
    let leader_addr = cluster.nodes[l].http_addr();
    let (status, _) = https(leader_addr, &ca, None, "POST", "/key", r#"{"tls":"on"}"#)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let follower = (l + 1) % 3;
    let (status, body) = https(
        cluster.nodes[follower].http_addr(),
        &ca,
        None,
        "GET",
        "/key/tls",
        "",
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"tls":"on"}"#));

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let mut plain = TcpStream::connect(leader_addr).await.unwrap();
    plain
        .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw).await;
    assert!(!raw.starts_with(b"HTTP/1.1 200"), "plain HTTP was served");

    // Strangers: a certificate of another CA, and plain gRPC. Each sends every member
    // a vote request at a far higher term, as the real node 1, many times over.
    let before = cluster.nodes[l].status();
    let rogue_ca = Ca::new("rogue CA");
    let strangers = [
        PeerTransport::new(1).with_tls(rogue_ca.peer_tls()),
        PeerTransport::new(1),
    ];
    for stranger in &strangers {
        for node in &cluster.nodes {
            stranger
                .set_peer(node.id(), &format!("http://{}", node.raft_addr()))
                .unwrap();
        }
    }
    for round in 0..20 {
        for stranger in &strangers {
            stranger.send(
                cluster
                    .nodes
                    .iter()
                    .map(|n| forged_vote(1, n.id(), before.term + 100 + round))
                    .collect(),
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Every batch either side sent failed: the handshake (or the plain-text request)
    // was refused.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for stranger in &strangers {
        loop {
            let stats = stranger.peer_stats();
            let (sent, dropped) = stats
                .iter()
                .fold((0, 0), |(s, d), (_, ps, pd)| (s + ps, d + pd));
            assert_eq!(sent, 0, "a stranger's batch was accepted");
            if dropped >= 3 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sends never finished"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let after = cluster.nodes[l].status();
    assert_eq!(after.term, before.term, "a stranger moved the term");
    assert_eq!(after.leader_id, before.leader_id);
    // The cluster goes on.
    let (status, _) = https(leader_addr, &ca, None, "POST", "/key", r#"{"after":"x"}"#)
        .await
        .unwrap();
    assert_eq!(status, 200);
    for node in &cluster.nodes {
        node.shutdown();
    }
    for node in cluster.nodes {
        node.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_clients_need_a_certificate_when_asked() {
    let ca = Ca::new("cluster CA");
    let clients = Ca::new("client CA");
    let dir = tempfile::tempdir().unwrap();
    let raft = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = NodeConfig::new(1, dir.path().join("n1"));
    config.raft_peers = [(1, raft.local_addr().unwrap().to_string())].into();
    config.tick_interval = Duration::from_millis(20);
    let mut files = ca.files(dir.path(), "n1");
    let client_ca = dir.path().join("clients.pem");
    std::fs::write(&client_ca, clients.pem()).unwrap();
    files.http_client_ca = Some(client_ca);
    config.tls = Some(files);
    let node = KvNode::start(config, raft, http).await.unwrap();
    let addr = node.http_addr();
    leader(std::slice::from_ref(&node)).await;

    assert!(
        https(addr, &ca, None, "GET", "/status", "").await.is_err(),
        "a client without a certificate was served"
    );
    assert!(
        https(addr, &ca, Some(ca.sign()), "GET", "/status", "")
            .await
            .is_err(),
        "a certificate of the wrong CA was accepted"
    );
    let (status, _) = https(addr, &ca, Some(clients.sign()), "GET", "/status", "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    node.shutdown();
    node.wait().await.unwrap();
}

#[tokio::test]
async fn a_missing_or_wrong_tls_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let files = ca.files(dir.path(), "n1");
    std::fs::write(&files.key, "not a key").unwrap();
    let mut config = NodeConfig::new(1, dir.path().join("n1"));
    config.tls = Some(files.clone());
    let err = KvNode::start(
        config.clone(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("n1.key.pem"), "{err}");
    let mut files = ca.files(dir.path(), "n2");
    files.ca = dir.path().join("missing.pem");
    config.tls = Some(files);
    let err = KvNode::start(
        config,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing.pem"), "{err}");
}
