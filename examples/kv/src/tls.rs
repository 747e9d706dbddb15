//! TLS for a key-value node, opt-in: mutual TLS between members (the peer transport's
//! [`PeerTls`]) and HTTPS for the client API with the same certificate, optionally
//! requiring client certificates signed by a CA of their own (as etcd's
//! `--client-cert-auth`). Also the connection bound of the HTTP server.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use axum_server::accept::Accept;
use craft_transport::limits::{ConnectionLimit, Permitted};
use craft_transport::tls::{PeerTls, TlsError};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

/// Where a node's TLS files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate (PEM), for peers and HTTPS clients. It must name the
    /// host others dial (DNS name or IP address).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificate (PEM) that signs every member's certificate.
    pub ca: PathBuf,
    /// When set, HTTPS clients must present a certificate signed by this CA (PEM).
    pub http_client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KvTlsError {
    /// A file is missing or not PEM.
    #[error(transparent)]
    File(#[from] TlsError),
    /// A PEM file did not parse.
    #[error("{}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificates.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA is unusable.
    #[error("HTTP client CA {}: {reason}", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Loaded TLS material of a node.
#[derive(Debug, Clone)]
pub struct KvTls {
    /// Mutual TLS between members.
    pub peer: PeerTls,
    /// The HTTPS server configuration of the client API.
    pub http: Arc<ServerConfig>,
    /// The HTTPS client configuration a node uses to call another member's API
    /// (`/setup`, `/shutdown` passed on): trusts the members' CA and presents this
    /// node's certificate.
    pub http_client: Arc<ClientConfig>,
}

impl KvTls {
    /// Reads and checks every file, naming the one that is wrong.
    pub fn load(files: &TlsFiles) -> Result<Self, KvTlsError> {
        let peer = PeerTls::load(&files.cert, &files.key, &files.ca)?;
        fn pem(
            path: &std::path::Path,
        ) -> impl Fn(rustls::pki_types::pem::Error) -> KvTlsError + '_ {
            move |source| KvTlsError::Pem {
                path: path.to_path_buf(),
                source,
            }
        }
        let certs = CertificateDer::pem_slice_iter(peer.cert_pem())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem(&files.cert))?;
        let key = PrivateKeyDer::from_pem_slice(peer.key_pem()).map_err(pem(&files.key))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut members = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(peer.ca_pem()) {
            members.add(cert.map_err(pem(&files.ca))?)?;
        }
        let mut http_client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(members)
            .with_client_auth_cert(certs.clone(), key.clone_key())?;
        http_client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut http = match &files.http_client_ca {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| KvTlsError::ClientCa {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&bytes) {
                    roots.add(cert.map_err(pem(path))?)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| KvTlsError::ClientCa {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(certs, key)?
            }
            None => builder.with_no_client_auth().with_single_cert(certs, key)?,
        };
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            peer,
            http: Arc::new(http),
            http_client: Arc::new(http_client),
        })
    }
}

/// An `axum-server` acceptor that holds each connection to a [`ConnectionLimit`] and
/// refuses (closes) connections past it, then hands over to `inner` (plain or TLS).
#[derive(Debug, Clone)]
pub struct LimitAcceptor<A> {
    inner: A,
    limit: ConnectionLimit,
}

impl<A> LimitAcceptor<A> {
    /// `inner` behind `limit`.
    pub fn new(inner: A, limit: ConnectionLimit) -> Self {
        Self { inner, limit }
    }
}

type AcceptFuture<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

impl<A, S> Accept<TcpStream, S> for LimitAcceptor<A>
where
    A: Accept<Permitted<TcpStream>, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = AcceptFuture<(A::Stream, A::Service)>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let Some(permit) = self.limit.admit() else {
            return Box::pin(std::future::ready(Err(io::Error::other(
                "connection limit reached",
            ))));
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        Box::pin(self.inner.accept(Permitted::new(stream, permit), service))
    }
}
