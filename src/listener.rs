//! Accepting connections and serving HTTP/1.1 and h2c on them, with graceful drain.
//!
//! An HTTP/1.1 connection that goes quiet is *parked*: hyper's connection state and its
//! buffers (8 KiB to read, 8 KiB to write) are handed back and dropped, and the socket waits
//! for readability with nothing else allocated, the way nginx frees its buffers between
//! keep-alive requests. An idle keep-alive connection then costs about a socket and a task,
//! instead of ~23 KiB; thousands of idle clients stay cheap. When bytes arrive, a new hyper
//! connection picks up where the old one stopped (bytes it had read but not used go first).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderValue, Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A connection with no new request for this long is parked.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);
/// A parked connection with no new request for this long is closed.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
/// A request head must arrive whole within this time (slow-header clients are cut off).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request handler, called once per request with the client's [`Peer`]: any
/// `Fn(Request<Incoming>, Peer) -> impl Future<Output = Response<B>>` closure. The trait
/// states that bound once for every function that passes a handler on.
pub trait Handler: Send + Sync + 'static {
    /// The response body.
    type Body: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
    /// The response future.
    type Future: Future<Output = Response<Self::Body>> + Send + 'static;
    /// Handles one request.
    fn call(&self, req: Request<Incoming>, peer: Peer) -> Self::Future;
}

impl<H, Fut, B> Handler for H
where
    H: Fn(Request<Incoming>, Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Body = B;
    type Future = Fut;

    fn call(&self, req: Request<Incoming>, peer: Peer) -> Fut {
        self(req, peer)
    }
}

/// How a [`Forward`] pass over an HTTP/1 connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// The connection went quiet with no bytes pending: park it.
    Park,
    /// The connection is done (the client closed or asked to close, or Weir is stopping).
    Close,
    /// The next request (its bytes now pending) needs the general path: hyper serves it.
    Fallback,
}

/// A path that serves HTTP/1.1 requests straight off the socket, for the requests it knows
/// how to handle, ahead of hyper. It reads from `stream` after the bytes in `pending`, and
/// hands back, in `pending`, whatever it read but did not serve.
pub trait Forward: Send + Sync + 'static {
    /// Serves requests until the connection is quiet, done, or needs the general path.
    fn forward(
        &self,
        stream: &mut TcpStream,
        pending: &mut Bytes,
        peer: &Peer,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Forwarded, BoxError>> + Send;
}

/// No fast path: every request goes through hyper.
#[derive(Debug, Clone, Copy)]
pub enum NoForward {}

impl Forward for NoForward {
    #[allow(clippy::manual_async_fn)]
    fn forward(
        &self,
        _: &mut TcpStream,
        _: &mut Bytes,
        _: &Peer,
        _: &CancellationToken,
    ) -> impl Future<Output = Result<Forwarded, BoxError>> + Send {
        async { match *self {} }
    }
}

/// Serves connections from `listener` until `cancel` fires, then stops accepting and lets open
/// connections finish their in-flight requests for up to `grace` (idle keep-alive connections
/// are closed at once, HTTP/2 gets GOAWAY).
///
/// `handler` is called once per request with the client's [`Peer`].
pub async fn serve<H: Handler + Clone>(listener: TcpListener, handler: H, cancel: CancellationToken, grace: Duration) {
    serve_with(listener, handler, None::<NoForward>, cancel, grace).await;
}

/// [`serve`], with `forward` trying each HTTP/1.1 request before `handler` does.
pub async fn serve_with<H: Handler + Clone, F: Forward + Clone>(
    listener: TcpListener,
    handler: H,
    forward: Option<F>,
    cancel: CancellationToken,
    grace: Duration,
) {
    let connections = TaskTracker::new();
    loop {
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
        let _ = stream.set_nodelay(true);
        let (handler, forward) = (handler.clone(), forward.clone());
        connections.spawn(serve_connection(stream, Peer::new(client), handler, forward, cancel.clone()));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!("grace period of {grace:?} ended with connections still open");
    }
}

async fn serve_connection<H: Handler, F: Forward>(
    stream: TcpStream,
    peer: Peer,
    handler: H,
    forward: Option<F>,
    cancel: CancellationToken,
) {
    let client = peer.addr;
    let result = match is_h2c(&stream, &cancel).await {
        // Boxed, like an active HTTP/1 cycle: the task of a parked connection stays small.
        Ok(true) => Box::pin(serve_h2(stream, peer, handler, cancel)).await,
        Ok(false) => serve_h1(stream, peer, handler, forward, cancel).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::debug!(%client, "connection ended: {e}");
    }
}

/// Whether the client opens with the HTTP/2 preface (h2c with prior knowledge). Reads
/// nothing: it peeks until the bytes so far rule one protocol out.
async fn is_h2c(stream: &TcpStream, cancel: &CancellationToken) -> Result<bool, BoxError> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let deadline = Instant::now() + HEADER_READ_TIMEOUT;
    loop {
        let n = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err("shutting down before the first request".into()),
            () = tokio::time::sleep_until(deadline) => return Err("no request within the header read timeout".into()),
            peeked = stream.peek(&mut buf) => peeked?,
        };
        if n == 0 {
            return Ok(false); // closed; HTTP/1 notices
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A strict prefix of the preface so far: wait for more.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn serve_h2<H: Handler>(
    stream: TcpStream,
    peer: Peer,
    handler: H,
    cancel: CancellationToken,
) -> Result<(), BoxError> {
    let service = hyper::service::service_fn(move |req| {
        let fut = handler.call(req, peer.clone());
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r.map_err(Into::into),
        () = cancel.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    conn.await.map_err(Into::into)
}

/// What the connection loop learns from the requests hyper hands to the service, and tells
/// the socket. One per connection, shared by its successive hyper connections.
#[derive(Debug, Default)]
struct Activity {
    /// Requests whose handling started.
    started: AtomicU64,
    /// Requests whose response head is out of the handler.
    answered: AtomicU64,
    /// The last request asked to close the connection after its response.
    client_close: AtomicBool,
    /// The hyper connection is being wound down to park the socket: its final shutdown of
    /// the socket must not happen.
    parking: AtomicBool,
}

async fn serve_h1<H: Handler, F: Forward>(
    stream: TcpStream,
    peer: Peer,
    handler: H,
    forward: Option<F>,
    cancel: CancellationToken,
) -> Result<(), BoxError> {
    let handler = Arc::new(handler);
    let activity = Arc::new(Activity::default());
    let mut io = Rewound { prefix: Bytes::new(), stream, activity: Arc::clone(&activity) };
    // When the bytes of a request head that is still not whole were first parked.
    let mut partial_since: Option<Instant> = None;
    loop {
        if io.prefix.is_empty() {
            // Parked: the socket, the peer and the handler are all this connection holds.
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                waited = tokio::time::timeout(KEEP_ALIVE_IDLE, io.stream.readable()) => match waited {
                    Err(_) => return Ok(()), // idle too long
                    Ok(ready) => ready?,
                },
            }
        } else if partial_since.is_some_and(|t| t.elapsed() >= HEADER_READ_TIMEOUT) {
            return Err("request head not complete within the header read timeout".into());
        }
        if let Some(forward) = &forward {
            // Boxed, like hyper's cycle: its buffers live only while the connection is busy.
            match Box::pin(forward.forward(&mut io.stream, &mut io.prefix, &peer, &cancel)).await? {
                Forwarded::Park => continue,
                Forwarded::Close => return Ok(()),
                Forwarded::Fallback => {}
            }
        }
        let started_before = activity.started.load(Ordering::Relaxed);
        // Boxed: hyper's connection lives only as long as the cycle, not in the parked task.
        let cycle = Box::pin(serve_h1_cycle(io, Arc::clone(&handler), peer.clone(), &activity, &cancel));
        let Some(parked) = cycle.await? else { return Ok(()) };
        io = parked;
        // A head left unfinished keeps its clock across parks until a request completes.
        if io.prefix.is_empty() || activity.started.load(Ordering::Relaxed) != started_before {
            partial_since = None;
        }
        if !io.prefix.is_empty() && partial_since.is_none() {
            partial_since = Some(Instant::now());
        }
    }
}

/// Serves requests on `io` with a fresh hyper connection until the connection goes quiet
/// (returns the socket, to park) or ends (returns `None`).
async fn serve_h1_cycle<H: Handler>(
    io: Rewound,
    handler: Arc<H>,
    peer: Peer,
    activity: &Arc<Activity>,
    cancel: &CancellationToken,
) -> Result<Option<Rewound>, BoxError> {
    activity.parking.store(false, Ordering::Relaxed);
    activity.client_close.store(false, Ordering::Relaxed);
    let service = {
        let activity = Arc::clone(activity);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            activity.started.fetch_add(1, Ordering::Relaxed);
            activity.client_close.store(wants_close(&req), Ordering::Relaxed);
            let fut = handler.call(req, peer.clone());
            let activity = Arc::clone(&activity);
            async move {
                let resp = fut.await;
                activity.answered.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    // The header read timeout is the caller's (parked heads), not a timer per request.
    let mut conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), service);
    let mut tick = tokio::time::interval_at(Instant::now() + PARK_AFTER, PARK_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut draining) = (activity.started.load(Ordering::Relaxed), false);
    loop {
        tokio::select! {
            done = std::future::poll_fn(|cx| Pin::new(&mut conn).poll(cx)) => {
                done?;
                break;
            }
            _ = tick.tick(), if !activity.parking.load(Ordering::Relaxed) => {
                let started = activity.started.load(Ordering::Relaxed);
                // Quiet for a whole tick with nothing in the handler: park (hyper lets a
                // response still streaming finish first).
                if started == seen && activity.answered.load(Ordering::Relaxed) == started {
                    activity.parking.store(true, Ordering::Relaxed);
                    Pin::new(&mut conn).graceful_shutdown();
                }
                seen = started;
            }
            () = cancel.cancelled(), if !draining => {
                draining = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    }
    // hyper stopped on its own (the client asked to close, or an HTTP/1.0 client without
    // keep-alive), or Weir is shutting down: close.
    if !activity.parking.load(Ordering::Relaxed) || draining || activity.client_close.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let parts = conn.into_parts();
    let mut io = parts.io.into_inner();
    if !parts.read_buf.is_empty() {
        io.prefix = if io.prefix.is_empty() {
            parts.read_buf
        } else {
            Bytes::from([parts.read_buf.as_ref(), io.prefix.as_ref()].concat())
        };
    }
    Ok(Some(io))
}

/// Whether a request asks for its connection to close after the response.
fn wants_close(req: &Request<Incoming>) -> bool {
    let connection = req.headers().get(http::header::CONNECTION).and_then(|v| v.to_str().ok());
    let has = |token: &str| connection.is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)));
    match req.version() {
        http::Version::HTTP_10 => !has("keep-alive"),
        _ => has("close"),
    }
}

/// A socket whose next reads first return `prefix`: bytes a previous HTTP/1 connection had
/// read but not used.
#[derive(Debug)]
struct Rewound {
    prefix: Bytes,
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Rewound {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// Skipped while parking: the socket outlives the hyper connection.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
