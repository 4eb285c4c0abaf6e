//! Client connections: each one is cut when the client stops taking what the router writes.
//!
//! An answer streams from the region to the client as fast as the client reads it, holding an
//! `in_flight_max` place and an upstream connection until it is sent whole (see `proxy.rs`). A
//! client that stops reading would hold both for ever, and a few hundred such clients would fill
//! every place. hyper stops polling an answer's body while the client's socket is full, so no
//! timer inside the body could fire; the bound lives in the socket instead: a write that makes no
//! progress for `send_timeout_ms` fails, hyper closes the connection and drops the body, which
//! frees its place (the same rule as nginx's `send_timeout`).

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// The router's listener: accepts as `tokio`'s does and wraps each connection in [`SendTimeout`].
pub(crate) struct Listener {
    pub(crate) inner: TcpListener,
    pub(crate) send_timeout: Duration,
}

impl axum::serve::Listener for Listener {
    type Io = SendTimeout;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // tokio's listener as axum drives it: accept errors (out of file descriptors) are waited
        // out there rather than ending the server.
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (SendTimeout { io, send_timeout: self.send_timeout, stalled: None }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The client's address, for `ConnectInfo` (axum implements it for `SocketAddr` only with its own
/// listeners).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// A client connection whose writes fail after `send_timeout` without progress. Reads are not
/// bounded here: a request body's bound is `body_timeout_ms`, and an idle keep-alive connection
/// holds no place.
pub(crate) struct SendTimeout {
    io: TcpStream,
    send_timeout: Duration,
    /// Started when a write first finds the socket full; dropped at the next progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl SendTimeout {
    /// Called when a write is pending: starts the stall timer, or fails once it has run out.
    fn pending_write<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let send_timeout = self.send_timeout;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took nothing for {} ms", send_timeout.as_millis()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, done: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match done {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.pending_write(cx),
        }
    }
}

impl AsyncRead for SendTimeout {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendTimeout {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(done, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(done, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(done, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = Pin::new(&mut self.io).poll_shutdown(cx);
        self.progress(done, cx)
    }
}
