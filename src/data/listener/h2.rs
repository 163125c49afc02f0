//! HTTP/2 with prior knowledge (h2c) on a client connection.
//!
//! A client that stops reading stalls HTTP/2 through flow control, not the socket, so the
//! socket's send deadline never fires: each response body is watched instead ([`Watched`]),
//! and a stream whose data waits longer than the send timeout for the client ends the
//! connection. A connection that ignores GOAWAY (and its PING) is dropped after a bound.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{BoxError, ClientBody, Forward, Handler, Peer, Shared, Wording, text_refusal};
use crate::data::clock::clock_ms;
use http_body_util::Either;

/// Streams a client may have open at once on one connection.
const MAX_STREAMS: u32 = 128;

/// Serves HTTP/2 on `io` until the client leaves, the connection has had no stream for the
/// keep-alive timeout, or `cancel` fires (GOAWAY, then in-flight streams finish).
pub(super) async fn serve<I, H: Handler, F: Forward>(
    io: I,
    peer: Peer,
    shared: Arc<Shared<H, F>>,
    cancel: CancellationToken,
) -> Result<(), BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = &shared.conns.limits;
    let streams = Arc::new(AtomicU64::new(0));
    let watch = Arc::new(StallWatch::default());
    let body_read = limits.body_read;
    let service = {
        let (streams, watch, shared) = (Arc::clone(&streams), Arc::clone(&watch), Arc::clone(&shared));
        hyper::service::service_fn(move |req: Request<Incoming>| {
            streams.fetch_add(1, Ordering::Relaxed);
            // The same rules as HTTP/1 requests get (CONNECT refused, `Content_Length`
            // aliases...): the request goes upstream as HTTP/1.1, where they matter.
            let wording = shared.forward.as_ref().map_or(text_refusal as Wording, Forward::wording);
            let refused = super::h1::checked(&req, &shared.conns.metrics, &peer, wording);
            let fut = match refused {
                None => Some(shared.handler.call(req.map(|b| ClientBody::new(b, body_read, None)), peer.clone())),
                Some(_) => None,
            };
            // Registered now, not once the response head is out: a stream still waiting
            // for its upstream counts as open, so a draining connection is not dropped
            // under it.
            let stamp = watch.register();
            async move {
                let resp = match (fut, refused) {
                    (Some(fut), _) => fut.await.map(Either::Left),
                    (None, refusal) => refusal.expect("refused when not handled"),
                };
                Ok::<_, Infallible>(resp.map(|inner| Watched { inner, stamp }))
            }
        })
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).max_concurrent_streams(MAX_STREAMS);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Idle when a whole keep-alive period passed without a new stream.
    let mut idle = tokio::time::interval_at(Instant::now() + limits.keepalive, limits.keepalive);
    let check_every = (limits.send / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut check = tokio::time::interval_at(Instant::now() + check_every, check_every);
    let (mut seen, mut goaway_since) = (0, None::<Instant>);
    let opened_closing = limits.closing.is_cancelled();
    loop {
        tokio::select! {
            r = conn.as_mut() => return r.map_err(Into::into),
            () = cancel.cancelled(), if goaway_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                goaway_since = Some(Instant::now());
            }
            // Draining: GOAWAY (hyper's two-step one: streams the client opened before it
            // saw the final GOAWAY are still served), so the client reconnects elsewhere.
            // Not to a connection opened while draining: it came here anyway, and would
            // only be sent round again.
            () = limits.closing.cancelled(), if goaway_since.is_none() && !opened_closing => {
                conn.as_mut().graceful_shutdown();
                goaway_since = Some(Instant::now());
            }
            _ = idle.tick(), if goaway_since.is_none() => {
                let now = streams.load(Ordering::Relaxed);
                if now == seen {
                    conn.as_mut().graceful_shutdown();
                    goaway_since = Some(Instant::now());
                }
                seen = now;
            }
            _ = check.tick() => {
                if watch.stalled(limits.send) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "an HTTP/2 stream's data waited for the client past the send timeout",
                    )
                    .into());
                }
                // After GOAWAY with nothing left to send, a client that neither closes nor
                // answers the PING holds a connection slot: not for longer than this.
                if goaway_since.is_some_and(|t| t.elapsed() >= limits.send) && watch.open() == 0 {
                    return Ok(());
                }
            }
        }
    }
}

/// The response bodies of one connection, each with the time (ms on [`clock_ms`], 0: none)
/// since it has handed hyper data that hyper has not come back for.
#[derive(Debug, Default)]
struct StallWatch {
    bodies: Mutex<Vec<Weak<AtomicU64>>>,
}

impl StallWatch {
    fn register(&self) -> Arc<AtomicU64> {
        let stamp = Arc::new(AtomicU64::new(0));
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.retain(|w| w.strong_count() > 0);
        bodies.push(Arc::downgrade(&stamp));
        stamp
    }

    /// Whether some body's data has waited for the client longer than `limit`.
    fn stalled(&self, limit: Duration) -> bool {
        let now = clock_ms();
        let limit = limit.as_millis() as u64;
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.retain(|w| w.strong_count() > 0);
        bodies.iter().filter_map(Weak::upgrade).any(|s| {
            let since = s.load(Ordering::Relaxed);
            since != 0 && now.saturating_sub(since) > limit
        })
    }

    /// Bodies still open.
    fn open(&self) -> usize {
        let bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.iter().filter(|w| w.strong_count() > 0).count()
    }
}

/// A response body on an HTTP/2 connection, watched: hyper polls it only when the client's
/// flow-control window has room, so data handed over and not asked for again means the client
/// is not reading. Waiting for the upstream (a poll that returns `Pending`) does not count.
#[derive(Debug)]
pub struct Watched<B> {
    inner: B,
    /// When data was last handed over and not yet followed by another poll (0: not waiting).
    stamp: Arc<AtomicU64>,
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        this.stamp.store(0, Ordering::Relaxed);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled
            && !this.inner.is_end_stream()
        {
            // `max(1)`: 0 means "not waiting", and the clock starts at 0.
            this.stamp.store(clock_ms().max(1), Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
