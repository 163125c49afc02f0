//! Accepting client connections, with a limit, and serving HTTP/1.1 and h2c on them with
//! deadlines everywhere and a graceful drain.
//!
//! An HTTP/1.1 connection is driven by `listener/h1.rs`: a [`Forward`] codec (Weir's own, the proxy's
//! fast path) reads and checks every request head first; a request it leaves to hyper is
//! served by a hyper connection for that one request only, and the socket comes back once
//! that message ended where its framing said. A quiet connection is *parked*: the socket and
//! a task, no buffers.

mod body;
mod check;
mod h1;
mod h2;
mod io;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use prometheus::{IntCounter, IntGauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::{ClientBody, ClientBodyError};
pub use check::CheckHeads;
pub use io::ClientIo;

use crate::config::ListenerConfig;

/// A quiet HTTP/1 connection is parked after this long with no request.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The deadlines and limits of one listener's client connections (see [`ListenerConfig`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request head must arrive whole within this.
    pub header_read: Duration,
    /// Longest gap between two reads of a request body.
    pub body_read: Duration,
    /// Longest stall of a write to the client.
    pub send: Duration,
    /// An idle keep-alive connection closes after this.
    pub keepalive: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Fired when Weir begins to drain (SIGTERM): the listener still accepts, but every
    /// response from then on says `Connection: close` and HTTP/2 connections get GOAWAY, so
    /// keep-alive clients reconnect (to another replica, once endpoints have moved on).
    pub closing: CancellationToken,
}

impl Limits {
    /// The limits a listener's config sets.
    pub fn of(config: &ListenerConfig) -> Self {
        Limits {
            header_read: config.header_read_timeout,
            body_read: config.body_read_timeout,
            send: config.send_timeout,
            keepalive: config.keepalive_timeout,
            max_connections: config.max_connections,
            closing: CancellationToken::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::of(&ListenerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))))
    }
}

/// What a listener counts about its connections. Handles are pre-resolved per listener.
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    /// Open client connections (`weir_client_connections`).
    pub open: IntGauge,
    /// Times the connection limit was reached (`weir_connection_limit_reached_total`).
    pub limit_reached: IntCounter,
    /// Requests Weir refused for their framing or size (`weir_client_errors_total{reason=
    /// "bad_request"}`), and connections closed for a deadline (`header_timeout`,
    /// `body_timeout`, `send_timeout`).
    pub errors: ClientErrors,
}

/// Per-reason client error counters.
#[derive(Debug, Clone)]
pub struct ClientErrors {
    /// A request refused for its framing or size (400, 414, 431, 501).
    pub bad_request: IntCounter,
    /// A head not whole within the header read timeout.
    pub header_timeout: IntCounter,
    /// A request body stalled past the body read timeout.
    pub body_timeout: IntCounter,
    /// A write to the client stalled past the send timeout.
    pub send_timeout: IntCounter,
    /// A TLS handshake that failed or timed out.
    pub tls_handshake: IntCounter,
}

impl ConnMetrics {
    /// Counters registered nowhere (the admin listener, the demo backends, tests).
    pub fn unregistered() -> Self {
        let c = || IntCounter::new("unregistered", "-").expect("valid metric");
        ConnMetrics {
            open: IntGauge::new("unregistered", "-").expect("valid metric"),
            limit_reached: c(),
            errors: ClientErrors {
                bad_request: c(),
                header_timeout: c(),
                body_timeout: c(),
                send_timeout: c(),
                tls_handshake: c(),
            },
        }
    }

    /// Counts why a connection ended with an error, when it was a deadline.
    fn count_end(&self, e: &BoxError) {
        let timed_out = |e: &(dyn std::error::Error + 'static)| {
            e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
        while let Some(err) = source {
            if err.is::<HeadTimeout>() {
                return self.errors.header_timeout.inc();
            }
            if matches!(err.downcast_ref::<ClientBodyError>(), Some(ClientBodyError::Timeout)) {
                return self.errors.body_timeout.inc();
            }
            if timed_out(err) {
                return self.errors.send_timeout.inc();
            }
            source = err.source();
        }
    }
}

/// A request head did not arrive whole within the header read timeout.
#[derive(Debug, thiserror::Error)]
#[error("request head not complete within the header read timeout")]
pub struct HeadTimeout;

/// The client end of a connection, worked out once per connection rather than per request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its IP as a header value, for `X-Forwarded-For` (a clone is a reference count).
    pub ip: HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_maybe_shared(Bytes::from(addr.ip().to_string()))
            .expect("an IP address is a valid header value");
        Peer { addr, ip }
    }
}

/// A request handler, called once per request with the client's [`Peer`]: any
/// `Fn(Request<ClientBody>, Peer) -> impl Future<Output = Response<B>>` closure. The trait
/// states that bound once for every function that passes a handler on.
pub trait Handler: Send + Sync + 'static {
    /// The response body.
    type Body: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static;
    /// The response future.
    type Future: Future<Output = Response<Self::Body>> + Send + 'static;
    /// Handles one request.
    fn call(&self, req: Request<ClientBody>, peer: Peer) -> Self::Future;
}

impl<H, Fut, B> Handler for H
where
    H: Fn(Request<ClientBody>, Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Body = B;
    type Future = Fut;

    fn call(&self, req: Request<ClientBody>, peer: Peer) -> Fut {
        self(req, peer)
    }
}

/// How a [`Forward`] pass over an HTTP/1 connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// The connection went quiet with no bytes pending: park it.
    Park,
    /// The connection is done (the client closed or asked to close, a request was refused,
    /// or Weir is stopping).
    Close,
    /// The request at the front of the pending bytes (a whole head, checked) needs the
    /// general path: hyper serves that one request.
    Fallback,
}

/// How a listener words its answer to a request it refuses itself, for its framing or size
/// (from the status and the reason): the content type and the body. One function per
/// listener, used by its codec and by the checks of hyper's turn alike: traffic listeners
/// answer in text ([`text_refusal`]), the admin API in its JSON error shape.
pub type Wording = fn(StatusCode, &str) -> (&'static str, Bytes);

/// The traffic listeners' wording of a refusal: `weir: {why}` in plain text.
pub fn text_refusal(_: StatusCode, why: &str) -> (&'static str, Bytes) {
    ("text/plain; charset=utf-8", Bytes::from(format!("weir: {why}\n")))
}

/// Weir's HTTP/1 codec, which reads every request head on a connection first: it forwards
/// the requests it can itself and hands the others to hyper one at a time, at their first
/// byte. It reads from `io` (after `io.prefix`) and hands back, in `io.prefix`, whatever it
/// read but did not serve.
pub trait Forward: Send + Sync + 'static {
    /// Serves requests until the connection is quiet, done, or needs the general path.
    fn forward(
        &self,
        io: &mut ClientIo,
        peer: &Peer,
        limits: &Limits,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Forwarded, BoxError>> + Send;

    /// How this listener words its refusals: text unless the codec says otherwise.
    fn wording(&self) -> Wording {
        text_refusal
    }
}

/// No codec ahead of hyper: hyper serves every request (the demo backends; the admin API has [`CheckHeads`]).
#[derive(Debug, Clone, Copy)]
pub enum NoForward {}

impl Forward for NoForward {
    #[allow(clippy::manual_async_fn)]
    fn forward(
        &self,
        _: &mut ClientIo,
        _: &Peer,
        _: &Limits,
        _: &CancellationToken,
    ) -> impl Future<Output = Result<Forwarded, BoxError>> + Send {
        async { match *self {} }
    }
}

/// Serves connections from `listener` until `cancel` fires, then stops accepting and lets open
/// connections finish their in-flight requests for up to `grace` (idle keep-alive connections
/// are closed at once, HTTP/2 gets GOAWAY). Default limits, no codec ahead of hyper.
pub async fn serve<H: Handler>(listener: TcpListener, handler: H, cancel: CancellationToken, grace: Duration) {
    let conns = Connections { limits: Limits::default(), metrics: ConnMetrics::unregistered(), tls: None };
    serve_with(listener, handler, None::<NoForward>, conns, cancel, grace).await;
}

/// The limits and counters of a listener's connections.
#[derive(Debug, Clone)]
pub struct Connections {
    /// Deadlines and limits.
    pub limits: Limits,
    /// What is counted.
    pub metrics: ConnMetrics,
    /// TLS termination, for a TLS listener.
    pub tls: Option<Tls>,
}

/// A TLS listener's handshake: its rustls configuration (whose certificates reload in
/// place) and deadline.
#[derive(Clone)]
pub struct Tls {
    /// The acceptor.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// A handshake must complete within this.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("handshake_timeout", &self.handshake_timeout).finish_non_exhaustive()
    }
}

/// A TLS handshake did not complete within the handshake timeout.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake not complete within the handshake timeout")]
pub struct HandshakeTimeout;

/// What every connection of a listener shares, in one allocation: a connection holds one
/// reference to it, not copies (a parked connection's task is what 10,000 idle clients cost).
pub(crate) struct Shared<H, F> {
    pub(crate) handler: H,
    pub(crate) forward: Option<F>,
    pub(crate) conns: Connections,
}

/// [`serve`], with `forward` reading each HTTP/1.1 request head before hyper does.
pub async fn serve_with<H: Handler, F: Forward>(
    listener: TcpListener,
    handler: H,
    forward: Option<F>,
    conns: Connections,
    cancel: CancellationToken,
    grace: Duration,
) {
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(conns.limits.max_connections));
    let addr = listener.local_addr().ok();
    let shared = Arc::new(Shared { handler, forward, conns });
    loop {
        // At the limit, stop accepting: new clients wait in the kernel's backlog (as with
        // nginx's worker_connections) instead of being accepted and dropped.
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared.conns.metrics.limit_reached.inc();
                tracing::warn!(
                    listener = ?addr, limit = shared.conns.limits.max_connections,
                    "connection limit reached: not accepting until a connection closes"
                );
                tokio::select! {
                    () = cancel.cancelled() => break,
                    p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
                }
            }
        };
        let (stream, client) = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        spawn_connection(&connections, &shared, stream, client, &cancel, permit);
    }
    // Connections the kernel completed but Weir had not taken yet: served (answered with
    // `Connection: close`) rather than reset by closing the listener under them.
    while let Some(Ok((stream, client))) = futures_util::FutureExt::now_or_never(listener.accept()) {
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => spawn_connection(&connections, &shared, stream, client, &cancel, permit),
            Err(_) => break,
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!("grace period of {grace:?} ended with connections still open");
    }
}

fn spawn_connection<H: Handler, F: Forward>(
    connections: &TaskTracker,
    shared: &Arc<Shared<H, F>>,
    stream: TcpStream,
    client: SocketAddr,
    cancel: &CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let (shared, cancel) = (Arc::clone(shared), cancel.clone());
    connections.spawn(async move {
        shared.conns.metrics.open.inc();
        serve_connection(stream, Peer::new(client), &shared, cancel).await;
        shared.conns.metrics.open.dec();
        drop(permit);
    });
}

async fn serve_connection<H: Handler, F: Forward>(
    stream: TcpStream,
    peer: Peer,
    shared: &Arc<Shared<H, F>>,
    cancel: CancellationToken,
) {
    let client = peer.addr;
    let conns = &shared.conns;
    if let Some(tls) = &conns.tls {
        if let Err(e) = Box::pin(serve_tls(stream, tls, peer, shared, cancel)).await {
            conns.metrics.count_end(&e);
            tracing::debug!(%client, "TLS connection ended: {e}");
        }
        return;
    }
    // Boxed: its timer and readiness futures are needed once, not in every parked task.
    let result = match Box::pin(first_bytes(&stream, &conns.limits, &cancel)).await {
        Ok(None) => Ok(()),
        Ok(Some(first)) => {
            let h2 = first.starts_with(H2_PREFACE);
            let io = ClientIo::new(stream, first, conns.limits.send);
            if h2 {
                // Boxed, like an active HTTP/1 cycle: the task of a parked connection stays small.
                Box::pin(h2::serve(io, peer, Arc::clone(shared), cancel)).await
            } else {
                h1::serve(io, peer, Arc::clone(shared), cancel).await
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        conns.metrics.count_end(&e);
        tracing::debug!(%client, "connection ended: {e}");
    }
}

/// A TLS connection: the handshake (bounded), then HTTP/2 when ALPN chose `h2`, else HTTP/1.1
/// served by hyper. The send deadline applies to the socket under the TLS layer.
async fn serve_tls<H: Handler, F: Forward>(
    stream: TcpStream,
    tls: &Tls,
    peer: Peer,
    shared: &Arc<Shared<H, F>>,
    cancel: CancellationToken,
) -> Result<(), BoxError> {
    let io = ClientIo::new(stream, Bytes::new(), shared.conns.limits.send);
    let accepted = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        accepted = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(io)) => accepted,
    };
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            shared.conns.metrics.errors.tls_handshake.inc();
            return Err(e.into());
        }
        Err(_) => {
            shared.conns.metrics.errors.tls_handshake.inc();
            return Err(HandshakeTimeout.into());
        }
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        h2::serve(stream, peer, Arc::clone(shared), cancel).await
    } else {
        h1::serve_hyper(stream, peer, Arc::clone(shared), cancel).await
    }
}

/// Reads a new connection's first bytes: enough to tell the HTTP/2 preface (h2c with prior
/// knowledge) from an HTTP/1 request. Waits for readability with nothing allocated, then
/// reads; `None` if the client left first. Bounded by the header read timeout.
/// How long a connection that has sent nothing yet waits for its first bytes once Weir stops
/// accepting.
const LATE_FIRST_BYTES: Duration = Duration::from_millis(500);

async fn first_bytes(
    stream: &TcpStream,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<Option<Bytes>, BoxError> {
    let mut deadline = tokio::time::Instant::now() + limits.header_read;
    let mut buf = BytesMut::new();
    let mut late = false;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled(), if !late => {
                // Weir stops accepting: a connection just accepted may have its first request
                // on the way; it gets a moment for it (then is answered with `Connection:
                // close`), instead of being closed under a client that did nothing wrong.
                late = true;
                deadline = deadline.min(tokio::time::Instant::now() + LATE_FIRST_BYTES);
                continue;
            }
            () = tokio::time::sleep_until(deadline) => {
                return if late { Ok(None) } else { Err(HeadTimeout.into()) };
            }
            ready = stream.readable() => ready?,
        }
        if buf.capacity() == 0 {
            buf.reserve(4096);
        }
        match stream.try_read_buf(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        // Enough to rule HTTP/2 in or out.
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] || buf.len() >= H2_PREFACE.len() {
            return Ok(Some(buf.freeze()));
        }
    }
}
