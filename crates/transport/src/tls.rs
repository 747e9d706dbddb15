//! Mutual TLS for the peer transport: each node has a certificate and key, and one CA
//! signs every member's certificate. The server refuses a client without a certificate
//! signed by the CA, and the client refuses a server whose certificate is not signed by
//! it or does not name the host it dialled (a DNS name or an IP address in the
//! certificate's subject alternative names). rustls with ring underneath, through tonic.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("reading {what} {}: {source}", path.display())]
    Read {
        /// Which file (`certificate`, `key`, `CA certificate`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no PEM block of the expected kind.
    #[error("{what} {} holds no PEM {expected} block", path.display())]
    NotPem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The PEM label looked for.
        expected: &'static str,
    },
}

/// A node's identity and the CA it trusts, as PEM.
#[derive(Clone)]
pub struct PeerTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(expected) && l.ends_with("-----"));
    if !found {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

impl PeerTls {
    /// From PEM bytes: this node's certificate (chain), its private key, and the CA
    /// certificate that signs every member's certificate.
    pub fn from_pem(cert: Vec<u8>, key: Vec<u8>, ca: Vec<u8>) -> Self {
        Self { cert, key, ca }
    }

    /// Reads the three PEM files, naming the one that is missing or not PEM.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read("certificate", cert, "CERTIFICATE")?,
            key: read("key", key, "PRIVATE KEY")?,
            ca: read("CA certificate", ca, "CERTIFICATE")?,
        })
    }

    /// This node's certificate chain, PEM.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert
    }

    /// This node's private key, PEM.
    pub fn key_pem(&self) -> &[u8] {
        &self.key
    }

    /// The trusted CA certificate, PEM.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca
    }

    /// The server side: present this node's certificate, require a client certificate
    /// signed by the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// The client side: trust only the CA, present this node's certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}
