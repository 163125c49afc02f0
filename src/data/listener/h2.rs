//! HTTP/2 with prior knowledge (h2c) on a client connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use super::{BoxError, ClientBody, ClientIo, Handler, Limits, Peer};

/// Serves HTTP/2 on `io` until the client leaves, the connection has had no stream for the
/// keep-alive timeout, or `cancel` fires (GOAWAY, then in-flight streams finish).
pub(super) async fn serve<H: Handler>(
    io: ClientIo,
    peer: Peer,
    handler: H,
    limits: &Limits,
    cancel: CancellationToken,
) -> Result<(), BoxError> {
    let streams = Arc::new(AtomicU64::new(0));
    let body_read = limits.body_read;
    let service = {
        let streams = Arc::clone(&streams);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            streams.fetch_add(1, Ordering::Relaxed);
            let fut = handler.call(req.map(|b| ClientBody::new(b, body_read, None)), peer.clone());
            async move { Ok::<_, Infallible>(fut.await) }
        })
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Idle when a whole keep-alive period passed without a new stream: GOAWAY, which lets
    // streams still open finish.
    let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + limits.keepalive, limits.keepalive);
    let mut seen = 0;
    loop {
        tokio::select! {
            r = conn.as_mut() => return r.map_err(Into::into),
            () = cancel.cancelled() => break,
            _ = idle.tick() => {
                let now = streams.load(Ordering::Relaxed);
                if now == seen {
                    break;
                }
                seen = now;
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    conn.await.map_err(Into::into)
}
