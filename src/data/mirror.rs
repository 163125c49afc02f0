//! Mirroring (shadow traffic): a share of an app's requests is copied to a version, sent on
//! the side, and its answer read and thrown away. The client's response never waits for the
//! copy: the copy is made after the request is routed, handed to a task, and bounded by a
//! queue (copies in flight); when the queue is full the copy is dropped and counted. A slow or
//! dead mirror therefore costs clients nothing but the copy's construction.
//!
//! Which requests: those whose body Weir holds whole (no body; on the HTTP/1.1 fast path a
//! `Content-Length` body up to `max_body`). Streamed bodies are not copied: teeing them would
//! make the client's upload wait for the mirror. Upgrades are never mirrored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Either, Full};
use prometheus::IntCounter;
use tokio::sync::Semaphore;

use crate::data::snapshot::App;

/// The header every mirrored copy carries, so the mirror can tell it is one.
pub const MIRROR_HEADER: &str = "x-weir-mirror";

/// An app's mirroring, ready for requests.
#[derive(Debug)]
pub struct Mirror {
    /// Index of the version that gets the copies.
    pub version: usize,
    /// A request is copied when its point is below this (percent × 2^64 / 100).
    threshold: u64,
    next: AtomicU64,
    /// Largest body copied, in bytes.
    pub max_body: usize,
    shared: Arc<MirrorShared>,
}

/// What outlives a snapshot: the queue and the counters.
#[derive(Debug)]
pub struct MirrorShared {
    permits: Arc<Semaphore>,
    /// `weir_mirror_requests_total{result}`: answered (any status), failed (no answer), dropped
    /// (queue full, or no healthy endpoint), skipped (body too large or streamed).
    pub counters: MirrorCounters,
    queue: usize,
}

/// The mirror's outcome counters.
#[derive(Debug, Clone)]
pub struct MirrorCounters {
    /// The mirror answered (the answer is read and discarded).
    pub answered: IntCounter,
    /// The mirror failed to answer in time, or refused the connection.
    pub failed: IntCounter,
    /// Not sent: the queue was full, or the version had no healthy endpoint.
    pub dropped: IntCounter,
    /// Not copied: its body was streamed or over `max_body`.
    pub skipped: IntCounter,
}

impl MirrorShared {
    /// A queue of `queue` copies in flight.
    pub fn new(queue: usize, counters: MirrorCounters) -> Arc<Self> {
        Arc::new(MirrorShared { permits: Arc::new(Semaphore::new(queue)), counters, queue })
    }

    /// The queue size it was made with.
    pub fn queue(&self) -> usize {
        self.queue
    }
}

impl Mirror {
    /// Copies `percent` (0–100) of requests to the version at `version`.
    pub fn new(version: usize, percent: f64, max_body: usize, shared: Arc<MirrorShared>) -> Self {
        let threshold = if percent >= 100.0 { u64::MAX } else { (percent / 100.0 * 2f64.powi(64)) as u64 };
        Mirror { version, threshold, next: AtomicU64::new(0), max_body, shared }
    }

    /// Whether the next request is copied (one relaxed add).
    #[inline]
    pub fn wants(&self) -> bool {
        // Successive requests' points are as evenly spread as the split's: the mirrored share
        // is exact over any window.
        let point = self.next.fetch_add(1, Ordering::Relaxed).wrapping_mul(crate::data::split::GOLDEN);
        point < self.threshold || self.threshold == u64::MAX
    }

    /// The queue and counters it shares with the mirrors of later snapshots.
    pub fn shared(&self) -> &Arc<MirrorShared> {
        &self.shared
    }

    /// Whether a request of `app` routed to `version` is copied: never when it goes to the
    /// mirror version anyway.
    #[inline]
    pub fn wants_for(&self, app: &App, version: &crate::data::snapshot::Version) -> bool {
        !std::ptr::eq(version, &app.versions[self.version]) && self.wants()
    }

    /// Counts a request that was chosen but cannot be copied (its body).
    pub fn skip(&self) {
        self.shared.counters.skipped.inc();
    }

    /// Sends `req` (origin-form target, the headers as they go upstream, the whole body) to
    /// an endpoint of the mirror version in a task, unless the queue is full. Never waits.
    pub fn send(&self, app: &App, mut req: Request<Bytes>) {
        let counters = &self.shared.counters;
        let Ok(permit) = Arc::clone(&self.shared.permits).try_acquire_owned() else {
            counters.dropped.inc();
            return;
        };
        let Some(endpoint) = app.versions[self.version].pool.pick() else {
            counters.dropped.inc();
            return;
        };
        req.headers_mut().insert(header::HeaderName::from_static(MIRROR_HEADER), HeaderValue::from_static("1"));
        // The mirror's own endpoint is the Host it gets when the client sent none.
        if !req.headers().contains_key(header::HOST)
            && let Ok(h) = HeaderValue::from_str(&endpoint.addr.to_string())
        {
            req.headers_mut().insert(header::HOST, h);
        }
        let client = endpoint.client.clone();
        let counters = counters.clone();
        let req = req.map(|b| Either::Right(Full::new(b)));
        tokio::spawn(async move {
            let _permit = permit;
            // The request timeout for the head, the read timeout for the rest: a mirror that
            // stalls holds a queue slot no longer than a real request would.
            let answered = async {
                let (resp, lease) = client.send(req).await.map_err(|e| e.to_string())?;
                let read = tokio::time::timeout(client.timeouts.read, resp.into_body().collect()).await;
                match read {
                    Ok(Ok(_)) => {
                        lease.release();
                        Ok(())
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("body not read within the read timeout".to_owned()),
                }
            };
            match answered.await {
                Ok(()) => counters.answered.inc(),
                Err(e) => {
                    tracing::debug!("mirrored request failed: {e}");
                    counters.failed.inc();
                }
            }
        });
    }
}

/// A request as Weir's codec wrote it for the upstream (head and whole body), as a request
/// for the mirror: the same target, fields and body. Framing fields go: hyper frames the copy.
/// `None` when it cannot be read back or its body is over `max_body`.
pub fn from_wire(wire: &[u8], max_body: usize) -> Option<Request<Bytes>> {
    let mut headers = [httparse::EMPTY_HEADER; crate::data::http1::MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = parsed.parse(wire).ok()? else { return None };
    if wire.len() - len > max_body {
        return None;
    }
    let mut req = Request::builder().method(parsed.method?).uri(parsed.path?);
    for h in parsed.headers.iter() {
        let framing = ["connection", "content-length", "transfer-encoding", "keep-alive"];
        if !framing.iter().any(|f| h.name.eq_ignore_ascii_case(f)) {
            req = req.header(h.name, h.value);
        }
    }
    req.body(Bytes::copy_from_slice(&wire[len..])).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> MirrorCounters {
        let c = || IntCounter::new("c", "-").unwrap();
        MirrorCounters { answered: c(), failed: c(), dropped: c(), skipped: c() }
    }

    #[test]
    fn a_wire_request_becomes_the_same_request() {
        let wire = b"POST /a?b=1 HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nhello";
        let req = from_wire(wire, 5).unwrap();
        assert!(from_wire(wire, 4).is_none(), "a body over max_body is not copied");
        assert_eq!((req.method().as_str(), req.uri().to_string().as_str()), ("POST", "/a?b=1"));
        assert_eq!(req.headers()["host"], "web");
        assert_eq!(req.headers()["x-forwarded-for"], "1.2.3.4");
        assert!(!req.headers().contains_key("content-length"));
        assert_eq!(req.body(), "hello");
    }

    #[test]
    fn the_share_is_exact_over_every_window() {
        for percent in [0.0, 1.0, 10.0, 33.0, 50.0, 100.0] {
            let m = Mirror::new(0, percent, 0, MirrorShared::new(1, counters()));
            let picks: Vec<bool> = (0..10_000).map(|_| m.wants()).collect();
            let total = picks.iter().filter(|&&p| p).count() as f64;
            assert!((total - percent * 100.0).abs() <= 1.0, "{percent} %: {total} of 10,000");
            for w in picks.windows(100) {
                let n = w.iter().filter(|&&p| p).count() as f64;
                assert!((n - percent).abs() <= 2.0, "{percent} %: {n} in a window of 100");
            }
        }
    }
}
