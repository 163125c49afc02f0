//! HTTP/1.1 on a client connection: Weir's codec first, hyper for one request at a time, and
//! parking in between.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::io::Fence;
use super::{
    BoxError, ClientBody, ClientIo, Forward, Forwarded, Handler, HeadTimeout, Limits, PARK_AFTER, Peer, Shared,
    Wording, text_refusal,
};
use crate::data::http1::{self, Connection};
use crate::data::listener::ConnMetrics;

/// Serves HTTP/1 on `io` until the client leaves, asks to close, idles past the keep-alive
/// timeout, or `cancel` fires.
pub(super) async fn serve<H: Handler, F: Forward>(
    mut io: ClientIo,
    peer: Peer,
    shared: Arc<Shared<H, F>>,
    cancel: CancellationToken,
) -> Result<(), BoxError> {
    let limits = &shared.conns.limits;
    // Without a codec ahead of hyper: when the bytes of a head still not whole were parked.
    let mut partial_since: Option<Instant> = None;
    loop {
        // Parked: the socket, the peer and a reference to the listener's handler are all this
        // connection holds; the wait (a timer, readiness) is boxed for its duration.
        if io.prefix.is_empty() && !Box::pin(parked(&io, limits, &cancel)).await? {
            return Ok(());
        }
        let Some(forward) = &shared.forward else {
            if partial_since.is_some_and(|t| t.elapsed() >= limits.header_read) {
                return Err(HeadTimeout.into());
            }
            let before = io.prefix.len();
            // Boxed: hyper's connection lives only as long as the cycle, not in the parked task.
            let cycle = Box::pin(serve_until_quiet(io, Arc::clone(&shared), peer.clone(), &cancel));
            let Some((parked, served)) = cycle.await? else { return Ok(()) };
            io = parked;
            // A head left unfinished keeps its clock across parks until a request completes.
            if io.prefix.is_empty() || served || io.prefix.len() != before {
                partial_since = None;
            }
            if !io.prefix.is_empty() && partial_since.is_none() {
                partial_since = Some(Instant::now());
            }
            continue;
        };
        // Boxed, like hyper's cycle: the codec's buffers live only while the connection is busy.
        match Box::pin(forward.forward(&mut io, &peer, limits, &cancel)).await? {
            Forwarded::Park => continue,
            Forwarded::Close => return Box::pin(close(io)).await,
            Forwarded::Fallback if asks_upgrade(&io.prefix) => {
                // A WebSocket (or other) upgrade: hyper serves the rest of the connection with
                // upgrades on; if the upstream switches, the connection becomes the tunnel.
                return serve_hyper(io, peer, shared, cancel).await;
            }
            Forwarded::Fallback => io.fence = request_end(&io.prefix).map(Box::new),
        }
        let one = Box::pin(serve_one(io, Arc::clone(&shared), peer.clone(), &cancel));
        match one.await? {
            Handed::Back(back) => io = back,
            Handed::Close(io) => return Box::pin(close(io)).await,
            Handed::Gone => return Ok(()),
        }
    }
}

/// Where the request at the front of `pending` ends (its head is whole and was checked by
/// the codec): hyper, which serves it, reads no further ([`Fence`]). Parsed again here, on the
/// general path only, rather than carried out of every codec.
fn request_end(pending: &[u8]) -> Option<Fence> {
    let mut headers = [httparse::EMPTY_HEADER; http1::MAX_HEADERS];
    let (req, len) = http1::parse_request(pending, &mut headers).ok()?;
    let line = http1::RequestLine::new(req.method?.as_bytes(), req.path?.as_bytes());
    let fields = req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let framing = http1::check_request(req.version? == 1, line, fields).ok()?;
    let len = len as u64;
    Some(if framing.chunked { Fence::chunked(len) } else { Fence::length(len + framing.length.unwrap_or(0)) })
}

/// Whether the request at the front of `pending` (a whole head the codec checked) asks to
/// upgrade the connection in a way Weir tunnels ([`http1::upgrade_of`]).
fn asks_upgrade(pending: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; http1::MAX_HEADERS];
    let Ok((req, _)) = http1::parse_request(pending, &mut headers) else { return false };
    if !req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade")) {
        return false;
    }
    let fields: Vec<_> = req.headers.iter().map(|h| (h.name.as_bytes(), h.value)).collect();
    http1::upgrade_of(req.version == Some(1), &fields).is_some()
}

/// Waits, parked, for the client's next bytes: `true` when they came, `false` when the
/// connection should close (idle past the keep-alive timeout, or Weir stops).
async fn parked(io: &ClientIo, limits: &Limits, cancel: &CancellationToken) -> Result<bool, BoxError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Ok(false),
        waited = tokio::time::timeout(limits.keepalive, io.stream.readable()) => match waited {
            Err(_) => Ok(false),
            Ok(ready) => ready.map(|()| true).map_err(Into::into),
        },
    }
}

/// How hyper's turn on a connection ended.
enum Handed {
    /// At a message boundary: the codec reads on.
    Back(ClientIo),
    /// The connection must close (the client asked, a body was left unread, or Weir stops).
    Close(ClientIo),
    /// hyper closed it already (an error, or the client left).
    Gone,
}

/// Serves the request at the front of `io.prefix` (a whole head the codec checked) with a
/// hyper connection, and takes the socket back once its response was sent: hyper is told to
/// stop as soon as the response head is out (after it, so the head does not say `close`).
/// hyper reads no further than that request's end (`io.fence`, set by [`serve`]): a head
/// pipelined behind it is the codec's to read and check, never hyper's (whose own rules
/// differ). Should hyper read one all the same (no fence), that request is checked by the
/// codec's rules ([`checked`]). The connection is handed back only if the request body was
/// read to its end: otherwise the rest of the body would be read as the next request.
async fn serve_one<H: Handler, F: Forward>(
    io: ClientIo,
    shared: Arc<Shared<H, F>>,
    peer: Peer,
    cancel: &CancellationToken,
) -> Result<Handed, BoxError> {
    let conns = &shared.conns;
    let keep_open = io.keep_open();
    keep_open.store(true, Ordering::Relaxed);
    let state = Arc::new(Turn::default());
    let service = {
        let (state, metrics, shared) = (Arc::clone(&state), conns.metrics.clone(), Arc::clone(&shared));
        let body_read = conns.limits.body_read;
        let closing = conns.limits.closing.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            state.started.fetch_add(1, Ordering::Relaxed);
            state.client_close.store(wants_close(&req), Ordering::Relaxed);
            state.complete.store(false, Ordering::Relaxed);
            let (refused, answer) = dispatch(&shared, req, &peer, &metrics, body_read, &state.complete);
            if refused {
                state.refused.store(true, Ordering::Relaxed);
            }
            let (state, closing) = (Arc::clone(&state), closing.clone());
            async move {
                let (mut resp, mut closes) = answer.await;
                // Draining: the response says so, and the client reconnects for the next.
                if closing.is_cancelled() && !closes {
                    resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                    closes = true;
                }
                if closes {
                    state.refused.store(true, Ordering::Relaxed);
                }
                state.answered.notify_one();
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let mut conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(conns.limits.header_read)
        // A head hyper reads itself (pipelined) gets the codec's bound, not hyper's 400 KB.
        .max_buf_size(HYPER_BUF)
        .serve_connection(TokioIo::new(io), service);
    let (mut stopping, mut draining) = (false, false);
    loop {
        tokio::select! {
            done = std::future::poll_fn(|cx| std::pin::Pin::new(&mut conn).poll(cx)) => {
                if let Err(e) = done {
                    keep_open.store(false, Ordering::Relaxed);
                    return Err(e.into());
                }
                break;
            }
            () = state.answered.notified(), if !stopping => {
                stopping = true;
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
            () = cancel.cancelled(), if !draining => {
                draining = true;
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
        }
    }
    let parts = conn.into_parts();
    let mut io = parts.io.into_inner();
    io.fence = None;
    keep_open.store(false, Ordering::Relaxed);
    if state.started.load(Ordering::Relaxed) == 0 {
        return Ok(Handed::Gone);
    }
    if draining
        || state.refused.load(Ordering::Relaxed)
        || state.client_close.load(Ordering::Relaxed)
        || !state.complete.load(Ordering::Acquire)
    {
        return Ok(Handed::Close(io));
    }
    give_back(&mut io, parts.read_buf);
    Ok(Handed::Back(io))
}

/// What one hyper turn learns from the requests it hands to the service.
#[derive(Debug)]
struct Turn {
    started: AtomicU64,
    answered: Notify,
    client_close: AtomicBool,
    /// A request was refused for its framing: the connection closes after the answer.
    refused: AtomicBool,
    /// The last request's body was read to its end.
    complete: Arc<AtomicBool>,
}

impl Default for Turn {
    fn default() -> Self {
        Turn {
            started: AtomicU64::new(0),
            answered: Notify::new(),
            client_close: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            complete: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// The response hyper sends on a turn: the handler's, or a refusal.
type Turned<B> = Response<Either<B, Full<Bytes>>>;

/// A request as hyper hands it over, to either path of hyper's: checked by the codec's rules
/// ([`checked`]) and answered here if refused, otherwise handed to the handler with a
/// [`ClientBody`] that sets `complete` once read to its end. Returns whether it was refused,
/// and the response with whether hyper will end it by closing ([`response_closes`]).
fn dispatch<H: Handler, F: Forward>(
    shared: &Shared<H, F>,
    req: Request<Incoming>,
    peer: &Peer,
    metrics: &ConnMetrics,
    body_read: std::time::Duration,
    complete: &Arc<AtomicBool>,
) -> (bool, impl Future<Output = (Turned<H::Body>, bool)> + Send + use<H, F>) {
    let wording = shared.forward.as_ref().map_or(text_refusal as Wording, Forward::wording);
    let refused = checked(&req, metrics, peer, wording);
    let http10 = req.version() == http::Version::HTTP_10;
    let req = req.map(|b| ClientBody::new(b, body_read, Some(Arc::clone(complete))));
    let handled = refused.is_none().then(|| shared.handler.call(req, peer.clone()));
    let was_refused = refused.is_some();
    let answer = async move {
        let resp = match (handled, refused) {
            (Some(fut), _) => fut.await.map(Either::Left),
            (None, refusal) => refusal.expect("refused when not handled"),
        };
        let closes = response_closes(&resp, http10);
        (resp, closes)
    };
    (was_refused, answer)
}

/// Checks a request hyper parsed with the rules Weir's codec applies
/// ([`http1::check_request`]); a refused one is answered here, in the listener's `wording`,
/// with `Connection: close`.
pub(super) fn checked<B>(
    req: &Request<Incoming>,
    metrics: &ConnMetrics,
    peer: &Peer,
    wording: Wording,
) -> Option<Response<Either<B, Full<Bytes>>>> {
    let head: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    let (status, why) = if head > http1::MAX_HEAD {
        (http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head over 64 KiB")
    } else {
        http1::check_parsed(req).err()?
    };
    metrics.errors.bad_request.inc();
    tracing::info!(client = %peer.addr, status = status.as_u16(), "refused a request: {why}");
    let (content_type, body) = wording(status, why);
    let mut resp = Response::new(Either::Right(Full::new(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    Some(resp)
}

/// Closes a client connection without losing the response just written: the write side is
/// shut first, then whatever the client still sends (the rest of a refused or unread body)
/// is read and dropped for a bounded time, as nginx's lingering close does. Closing with
/// unread bytes would reset the connection, and the client could lose the response.
pub(crate) async fn close(mut io: ClientIo) -> Result<(), BoxError> {
    /// The most a closing connection is drained, in time and bytes.
    const LINGER: Duration = Duration::from_secs(2);
    const LINGER_BYTES: usize = 1 << 20;
    let _ = io.stream.shutdown().await;
    // On the heap: this future is part of every connection's task, parked ones included.
    let mut sink = vec![0u8; 4096];
    let (deadline, mut drained) = (Instant::now() + LINGER, 0);
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, io.stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
    Ok(())
}

/// What the loop learns from the requests hyper hands to the service. One per connection,
/// shared by its successive hyper connections (without a codec ahead of hyper).
#[derive(Debug, Default)]
struct Activity {
    /// Requests whose handling started.
    started: AtomicU64,
    /// Requests whose response head is out of the handler.
    answered: AtomicU64,
    /// The last request asked to close the connection after its response.
    client_close: AtomicBool,
}

/// Without a codec ahead of hyper (the demo backends): hyper serves requests until
/// the connection goes quiet (returns the socket to park, and whether any request was served)
/// or ends (`None`). The connection also closes, rather than parks, when a request body was
/// not read to its end.
async fn serve_until_quiet<H: Handler, F: Forward>(
    io: ClientIo,
    shared: Arc<Shared<H, F>>,
    peer: Peer,
    cancel: &CancellationToken,
) -> Result<Option<(ClientIo, bool)>, BoxError> {
    let conns = &shared.conns;
    let limits = &conns.limits;
    let keep_open = io.keep_open();
    let activity = Arc::new(Activity::default());
    let complete = Arc::new(AtomicBool::new(true));
    let service = {
        let (activity, complete, metrics) = (Arc::clone(&activity), Arc::clone(&complete), conns.metrics.clone());
        let shared = Arc::clone(&shared);
        let body_read = limits.body_read;
        hyper::service::service_fn(move |req: Request<Incoming>| {
            activity.started.fetch_add(1, Ordering::Relaxed);
            activity.client_close.store(wants_close(&req), Ordering::Relaxed);
            complete.store(false, Ordering::Relaxed);
            let (refused, answer) = dispatch(&shared, req, &peer, &metrics, body_read, &complete);
            if refused {
                activity.client_close.store(true, Ordering::Relaxed);
            }
            let activity = Arc::clone(&activity);
            async move {
                let (resp, closes) = answer.await;
                if closes {
                    activity.client_close.store(true, Ordering::Relaxed);
                }
                activity.answered.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let mut conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(HYPER_BUF)
        .serve_connection(TokioIo::new(io), service);
    let mut tick = tokio::time::interval_at(Instant::now() + PARK_AFTER, PARK_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut draining, mut parking) = (0, false, false);
    loop {
        tokio::select! {
            done = std::future::poll_fn(|cx| Pin::new(&mut conn).poll(cx)) => {
                done?;
                break;
            }
            _ = tick.tick(), if !parking => {
                let started = activity.started.load(Ordering::Relaxed);
                // Quiet for a whole tick with nothing in the handler: park (hyper lets a
                // response still streaming finish first).
                if started == seen && activity.answered.load(Ordering::Relaxed) == started {
                    parking = true;
                    keep_open.store(true, Ordering::Relaxed);
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
    keep_open.store(false, Ordering::Relaxed);
    // hyper stopped on its own (the client asked to close, or an HTTP/1.0 client without
    // keep-alive), or Weir is shutting down: close.
    if !parking || draining || activity.client_close.load(Ordering::Relaxed) || !complete.load(Ordering::Acquire) {
        return Ok(None);
    }
    let parts = conn.into_parts();
    let mut io = parts.io.into_inner();
    give_back(&mut io, parts.read_buf);
    Ok(Some((io, activity.started.load(Ordering::Relaxed) > 0)))
}

/// Puts the bytes hyper read but did not use back in front of the socket's, for the next reader.
fn give_back(io: &mut ClientIo, read_buf: Bytes) {
    if read_buf.is_empty() {
        return;
    }
    io.prefix =
        if io.prefix.is_empty() { read_buf } else { Bytes::from([read_buf.as_ref(), io.prefix.as_ref()].concat()) };
}

/// hyper's read buffer bound: a 64 KiB head (the codec's limit) and a little slack.
const HYPER_BUF: usize = 72 * 1024;

/// Whether hyper ends this response by closing the connection (or was told to): it says
/// `Connection: close`, or it goes to an HTTP/1.0 client with no length known in advance, so
/// hyper delimits the body by closing. The connection must not be handed back then: hyper's
/// close was only skipped because the socket is kept for the codec.
fn response_closes<B: http_body::Body>(resp: &Response<B>, http10: bool) -> bool {
    let headers = resp.headers();
    let says_close = Connection::of(headers).close;
    let unframed = !headers.contains_key(http::header::CONTENT_LENGTH) && resp.body().size_hint().exact().is_none();
    says_close || (http10 && unframed)
}

/// Whether a request asks for its connection to close after the response.
fn wants_close(req: &Request<Incoming>) -> bool {
    let c = Connection::of(req.headers());
    match req.version() {
        http::Version::HTTP_10 => !c.keep_alive,
        _ => c.close,
    }
}

/// HTTP/1.1 served by hyper alone for a whole connection: TLS connections (Weir's codec reads
/// plain sockets only). The same checks as on a plain connection ([`dispatch`]), the same
/// deadlines (hyper's header read timeout; the body and send deadlines of the socket under
/// the TLS layer), `Connection: close` once Weir drains, and the connection closed after a
/// keep-alive period with no request.
pub(super) async fn serve_hyper<I, H: Handler, F: Forward>(
    io: I,
    peer: Peer,
    shared: Arc<Shared<H, F>>,
    cancel: CancellationToken,
) -> Result<(), BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.conns.limits.clone();
    let requests = Arc::new(AtomicU64::new(0));
    let service = {
        let (requests, shared) = (Arc::clone(&requests), Arc::clone(&shared));
        let (body_read, closing) = (limits.body_read, limits.closing.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            requests.fetch_add(1, Ordering::Relaxed);
            let complete = Arc::new(AtomicBool::new(true));
            let metrics = &shared.conns.metrics;
            let (_, answer) = dispatch(&shared, req, &peer, metrics, body_read, &complete);
            let closing = closing.clone();
            async move {
                let (mut resp, _) = answer.await;
                if closing.is_cancelled() {
                    resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(HYPER_BUF)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut idle = tokio::time::interval_at(Instant::now() + limits.keepalive, limits.keepalive);
    let (mut seen, mut stopping) = (0, false);
    loop {
        tokio::select! {
            r = conn.as_mut() => return r.map_err(Into::into),
            () = cancel.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = idle.tick(), if !stopping => {
                // A whole keep-alive period with no new request: closed once the response in
                // flight, if any, is out.
                let now = requests.load(Ordering::Relaxed);
                if now == seen {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                seen = now;
            }
        }
    }
}
