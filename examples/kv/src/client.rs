//! A small HTTP/1.1 client (hyper's connection API) for the calls one node makes to
//! another's API: passing a `/setup` on to the other members, and `/shutdown` of a
//! whole cluster. Plain HTTP, or HTTPS with the node's own TLS material.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// The header a node sets on a request it passes on, so the receiver does not pass it
/// on again.
pub const FORWARDED: &str = "x-craft-forwarded";

/// The most of a reply body read back.
const MAX_REPLY_BYTES: usize = 1 << 20;

/// How one node calls another's HTTP API.
#[derive(Clone)]
pub struct ApiClient {
    /// TLS client configuration when the API is served over HTTPS.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Connect-and-answer deadline of one call.
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("https", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why a call to another node failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer within the deadline.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The address called.
        addr: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The connection could not be made or broke.
    #[error("{addr}: {reason}")]
    Connection {
        /// The address called.
        addr: String,
        /// What failed.
        reason: String,
    },
}

impl ApiClient {
    /// A client for plain HTTP (`tls` = `None`) or HTTPS.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>, timeout: Duration) -> Self {
        Self { tls, timeout }
    }

    /// `POST http(s)://{addr}{path}` with `body` and the [`FORWARDED`] header; the
    /// status and (at most 1 MiB of) the reply body.
    pub async fn post(
        &self,
        addr: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), CallError> {
        self.request(Method::POST, addr, path, body).await
    }

    /// `{method} http(s)://{addr}{path}` with `body` and the [`FORWARDED`] header; the
    /// status and (at most 1 MiB of) the reply body.
    pub async fn request(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let (status, body, _) = self.request_with_location(method, addr, path, body).await?;
        Ok((status, body))
    }

    /// [`ApiClient::request`], with the answer's `Location` header (of a redirect).
    pub async fn request_with_location(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes, Option<String>), CallError> {
        match tokio::time::timeout(self.timeout, self.request_now(method, addr, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout {
                addr: addr.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    async fn request_now(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes, Option<String>), CallError> {
        let fail = |reason: String| CallError::Connection {
            addr: addr.to_string(),
            reason,
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr)
            .header(header::CONTENT_TYPE, "application/json")
            .header(FORWARDED, "1")
            .body(Full::new(body))
            .map_err(|e| fail(e.to_string()))?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        match &self.tls {
            None => send(TokioIo::new(tcp), request).await.map_err(fail),
            Some(config) => {
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr, |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| fail(format!("not a TLS server name: {e}")))?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| fail(format!("TLS: {e}")))?;
                send(TokioIo::new(stream), request).await.map_err(fail)
            }
        }
    }
}

async fn send<IO>(
    io: IO,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes, Option<String>), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        // The connection ends with the call; its error, if any, is the call's.
        let _ = connection.await;
    });
    let reply = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = reply.status();
    let location = reply
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(reply.into_body(), MAX_REPLY_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body, location))
}
