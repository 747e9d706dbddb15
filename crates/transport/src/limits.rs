//! A bound on the connections a server holds open. Past the bound a new connection is
//! accepted and closed at once, so the client sees a clear reset instead of waiting in
//! the listen backlog, and the refusal is counted.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Default bound on open connections of a peer or client server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// A connection that holds one of its server's connection slots until dropped.
#[derive(Debug)]
pub struct Permitted<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
}

impl<S> Permitted<S> {
    /// `inner`, holding `permit` while it lives.
    pub fn new(inner: S, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            _permit: permit,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Permitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Permitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Permitted<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Connection slots of one server, and how many connections were refused for want of
/// one. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    refused: Arc<AtomicU64>,
    max: usize,
}

impl ConnectionLimit {
    /// At most `max` connections open at once (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            refused: Arc::new(AtomicU64::new(0)),
            max,
        }
    }

    /// A slot for a new connection, or `None` (counted) when all are taken.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_power_of_two() {
                    tracing::warn!(
                        max = self.max,
                        refused = n,
                        "connection limit reached; closing new connections"
                    );
                }
                None
            }
        }
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// The connections `listener` accepts, each holding a slot, with `TCP_NODELAY` set.
    /// A connection past the bound is closed at once. Accept errors (such as running
    /// out of file descriptors) are logged and retried after a pause, never returned,
    /// so a server fed by this stream keeps running.
    pub fn incoming(
        self,
        listener: TcpListener,
    ) -> impl Stream<Item = io::Result<Permitted<TcpStream>>> + Send + 'static {
        futures::stream::unfold((listener, self), |(listener, limit)| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let Some(permit) = limit.admit() else {
                            drop(stream);
                            continue;
                        };
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(error = %e, "TCP_NODELAY");
                        }
                        return Some((Ok(Permitted::new(stream, permit)), (listener, limit)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::StreamExt as _;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn connections_past_the_bound_are_closed_and_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = ConnectionLimit::new(2);
        let mut incoming = Box::pin(limit.clone().incoming(listener));
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _second = incoming.next().await.unwrap().unwrap();
        assert_eq!(limit.open(), 2);

        // A third connection is closed by the server: the client reads end of stream.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let accept = tokio::spawn(async move {
            let conn = incoming.next().await;
            (conn, incoming)
        });
        let mut buf = [0u8; 1];
        assert_eq!(c.read(&mut buf).await.unwrap_or(0), 0);
        assert_eq!(limit.refused(), 1);

        // Closing one frees its slot for the next client.
        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        let (conn, _incoming) = accept.await.unwrap();
        assert!(conn.as_ref().is_some_and(|c| c.is_ok()));
        assert_eq!(limit.open(), 2);
    }
}
