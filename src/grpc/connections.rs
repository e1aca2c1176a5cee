//! Connections before they carry calls: at most `max_connections` open at once, and each
//! must finish its handshake within `handshake_timeout`.
//!
//! A connection over the limit is closed as it is accepted. Until its handshake is done a
//! connection has a deadline: past it (or once the server drains) its next read fails and
//! the connection is closed, so connections that open and never speak cannot pile up or
//! hold a shutdown. The handshake counts as done once the peer has sent at least
//! [`HANDSHAKE_BYTES`] and has sent something after the server first wrote: in plain
//! HTTP/2 that is the client's preface and SETTINGS answering the server's SETTINGS; with
//! TLS it is the client's part of the TLS handshake answering the server's (its HTTP/2
//! preface follows, inside the limit on connections).
//!
//! Each connection also carries its own count of the calls in progress on it
//! (`max_concurrent_requests_per_connection`), handed to every request it brings in
//! [`ConnectionInfo`]: the gate takes a place there without a shared map or lock, and the
//! count goes with the connection when it closes.

use super::gate::Limit;
use crate::metrics::{ConnectionRefusal, Metrics};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The HTTP/2 client preface (24 bytes) and the header of the SETTINGS frame after it.
pub const HANDSHAKE_BYTES: usize = 24 + 9;

/// The connection limits; from [`crate::config::Config`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// Unary calls in progress at once on one connection.
    pub max_concurrent_requests_per_connection: usize,
}

/// Admits the accepted connections of `incoming` within `limits`; `drain` is cancelled when
/// the server drains.
pub fn admit<S>(
    incoming: S,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    drain: CancellationToken,
) -> impl Stream<Item = io::Result<Admitted>>
where
    S: Stream<Item = io::Result<TcpStream>>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    incoming.filter_map(move |accepted| {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => return Some(Err(e)),
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connection_refused(ConnectionRefusal::Limit);
            tracing::warn!(
                limit = limits.max_connections,
                "connection closed: max_connections reached"
            );
            return None;
        };
        metrics.connections_open(1);
        let handshake = Handshake {
            deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            drain: Box::pin(drain.clone().cancelled_owned()),
            read: 0,
            wrote: false,
            answered: false,
        };
        let info = ConnectionInfo {
            tcp: stream.connect_info(),
            calls: Limit::new(limits.max_concurrent_requests_per_connection),
        };
        Some(Ok(Admitted {
            stream,
            info,
            handshake: Some(Box::new(handshake)),
            place: Place {
                _permit: permit,
                metrics: metrics.clone(),
            },
        }))
    })
}

/// An admitted connection: the stream, its place in the limit, and its handshake deadline
/// until the handshake is done.
pub struct Admitted {
    stream: TcpStream,
    info: ConnectionInfo,
    handshake: Option<Box<Handshake>>,
    place: Place,
}

struct Handshake {
    deadline: Pin<Box<tokio::time::Sleep>>,
    drain: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Bytes the peer has sent.
    read: usize,
    /// Whether the server has written anything yet.
    wrote: bool,
    /// Whether the peer has sent something after the server first wrote.
    answered: bool,
}

/// A place in `max_connections`, given back when the connection closes.
struct Place {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.metrics.connections_open(-1);
    }
}

impl Admitted {
    /// Fails the read if the handshake is still under way past its deadline or at drain.
    fn check_handshake(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(handshake) = &mut self.handshake else {
            return Ok(());
        };
        let refusal = if handshake.deadline.as_mut().poll(cx).is_ready() {
            ConnectionRefusal::HandshakeTimeout
        } else if handshake.drain.as_mut().poll(cx).is_ready() {
            ConnectionRefusal::Draining
        } else {
            return Ok(());
        };
        self.place.metrics.connection_refused(refusal);
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection closed before its handshake was done",
        ))
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_handshake(cx)?;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(handshake)) = (&polled, &mut this.handshake) {
            let n = buf.filled().len() - before;
            handshake.read += n;
            handshake.answered |= handshake.wrote && n > 0;
            if handshake.answered && handshake.read >= HANDSHAKE_BYTES {
                this.handshake = None;
            }
        }
        polled
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.stream).poll_write(cx, data);
        if let (Poll::Ready(Ok(n)), Some(handshake)) = (&polled, &mut this.handshake) {
            handshake.wrote |= *n > 0;
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(handshake)) = (&polled, &mut this.handshake) {
            handshake.wrote |= *n > 0;
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What every request on a connection carries in its extensions (tonic puts it there, with
/// TLS too).
#[derive(Clone)]
pub struct ConnectionInfo {
    /// The connection's addresses.
    pub tcp: TcpConnectInfo,
    /// The unary calls in progress on it.
    pub(super) calls: Arc<Limit>,
}

impl Connected for Admitted {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}
