//! Client connections: each one is cut when the client stops taking what the router writes.
//!
//! An answer streams from the region to the client as fast as the client reads it, holding an
//! `in_flight_max` place and an upstream connection until it is sent whole (see `proxy.rs`). A
//! client that stops reading would hold both for ever, and a few hundred such clients would fill
//! every place. hyper stops polling an answer's body while the client's socket is full, so no
//! timer inside the body could fire; the bound lives in the socket instead: a write that makes no
//! progress for `send_timeout_ms` fails (`tokio-io-timeout`'s write timeout), hyper closes the
//! connection and drops the body, which frees its place (the same rule as nginx's `send_timeout`).
//! Reads are not bounded here: a request body's bound is `body_timeout_ms`, and an idle keep-alive
//! connection holds no place.

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;

/// The router's listener: accepts as `tokio`'s does and gives each connection a write timeout.
pub(crate) struct Listener {
    pub(crate) inner: TcpListener,
    pub(crate) send_timeout: Duration,
}

impl axum::serve::Listener for Listener {
    type Io = Pin<Box<TimeoutStream<TcpStream>>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // tokio's listener as axum drives it: accept errors (out of file descriptors) are waited
        // out there rather than ending the server.
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let mut io = TimeoutStream::new(io);
        io.set_write_timeout(Some(self.send_timeout));
        (Box::pin(io), addr)
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
