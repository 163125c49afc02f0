//! The HTTP/1.1 fast path: a request without a body or with a `Content-Length` one of up to
//! 64 KiB (read whole first, as nginx buffers small bodies), on a plain HTTP/1.1 connection,
//! is forwarded by Weir itself, between the client's socket and a pooled upstream socket, the
//! way nginx and HAProxy do it: the request head is parsed in place (`httparse`) and
//! rewritten into one buffer, the response head likewise, and the body is copied with its
//! framing as it came (length-delimited, chunked or until close), never decoded or buffered
//! whole. No connection task, channel or header map per exchange.
//!
//! Every HTTP/1 request head on a connection is read and checked here first, whichever path
//! forwards it ([`request::inspect`]): a head with ambiguous framing is answered 400 (or 431,
//! 501) and the connection closes, as nginx and HAProxy do. A sound request this codec does
//! not forward (a chunked or larger body, `Expect`, an upgrade, HTTP/1.0, absolute-form) goes
//! to the general path, hyper, with its bytes unread, one request at a time: the routing,
//! retries, health and metrics are the same functions either way.

#[cfg(test)]
mod fuzz;
mod head;
mod request;
mod response;

use std::time::Instant;

use bytes::{Buf, BytesMut};
use http::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::attempt::{self, Attempts, Exchange, Sent};
use super::{Proxy, ResponseBody};
use crate::data::http1::{self, MAX_HEAD, MAX_HEADERS, chunked};
use crate::data::listener::{ClientIo, Forward, Forwarded, HeadTimeout, Limits, PARK_AFTER, Peer};
use crate::data::pool::Endpoint;
use crate::data::snapshot::{App, Snapshot, Version};
use crate::data::upstream::{HttpClient, RawConn, UpstreamError};
use response::Framing;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Read size for heads.
const HEAD_CHUNK: usize = 4096;
/// Read size for bodies.
const BODY_CHUNK: usize = 16 * 1024;

impl Forward for Proxy {
    fn forward(
        &self,
        io: &mut ClientIo,
        peer: &Peer,
        limits: &Limits,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Forwarded, BoxError>> + Send {
        self.forward_h1(io, peer, limits, cancel)
    }
}

/// Buffers of one busy connection, reused across its requests and dropped when it parks.
struct Buffers {
    /// The request head as it goes upstream (kept for retries).
    req: Vec<u8>,
    /// The response head as it goes to the client, with the first bytes of its body.
    resp: Vec<u8>,
    /// Bytes read from upstream.
    up: BytesMut,
}

/// Where a request goes and what it asked.
struct Route<'s> {
    app: &'s App,
    version: &'s Version,
    endpoint: &'s Endpoint,
    /// The client connection closes after the response.
    close: bool,
    idempotent: bool,
    /// A HEAD request.
    head: bool,
    /// A hedge may go to another version (not forced into this one).
    may_spill: bool,
}

/// What to do with the request at the front of the buffer.
enum Step<'s> {
    /// Send it upstream; its head was `len` bytes.
    Forward { len: usize, route: Route<'s> },
    /// Answer it from Weir (no route, no endpoint, or refused: then `close`).
    Answer { len: usize, close: bool, head: bool, resp: Response<ResponseBody> },
    /// Its body is not all here yet: read until the buffer holds this many bytes.
    Incomplete(usize),
    /// Leave it to hyper.
    Fallback(&'static str),
    /// Refuse it (400, 431, 501) and close the connection.
    Refuse(Response<ResponseBody>),
}

/// The answer to a request refused for its framing or size.
pub(super) fn refusal(status: StatusCode, why: &str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(format!("weir: {why}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

impl Proxy {
    async fn forward_h1(
        &self,
        client: &mut ClientIo,
        peer: &Peer,
        limits: &Limits,
        cancel: &CancellationToken,
    ) -> Result<Forwarded, BoxError> {
        let mut buf = client.take_prefix(HEAD_CHUNK);
        let mut bufs = Buffers { req: Vec::with_capacity(1024), resp: Vec::with_capacity(1024), up: BytesMut::new() };
        // Parked after a whole tick with no request and nothing pending (one timer per busy
        // spell, not per request).
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PARK_AFTER, PARK_AFTER);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The head (or small body) deadline: armed only while one is incomplete after a read,
        // so a request that arrives in one read sets no timer.
        let deadline = tokio::time::sleep(limits.header_read);
        tokio::pin!(deadline);
        let mut busy = !buf.is_empty();
        // Once a head is whole and has a body: the bytes the request takes, body included.
        let mut need = 0;
        loop {
            let mut searched = 0;
            let mut timing = false;
            // The buffer's length when the body deadline was last set: only a read that
            // brought bytes sets it again (a tick of the park timer must not).
            let mut timed_len = usize::MAX;
            while if need > 0 { buf.len() < need } else { !head::head_ended(&buf, searched) } {
                if need == 0 && buf.len() > MAX_HEAD {
                    let too_large = http1::oversized(&buf);
                    let resp = refusal(too_large.status, &too_large.why);
                    return self.refuse(client, peer, resp, &mut bufs.resp).await;
                }
                searched = buf.len();
                // A head: one deadline from its first byte. A body: one per read that brought
                // some of it.
                if need == 0 && !buf.is_empty() && !timing {
                    deadline.as_mut().reset(tokio::time::Instant::now() + limits.header_read);
                    timing = true;
                } else if need > 0 && buf.len() != timed_len {
                    deadline.as_mut().reset(tokio::time::Instant::now() + limits.body_read);
                    timing = true;
                    timed_len = buf.len();
                }
                let spare = buf.capacity() - buf.len();
                if need > buf.len() + spare {
                    buf.reserve(need - buf.len());
                } else if spare < HEAD_CHUNK / 4 {
                    buf.reserve(HEAD_CHUNK);
                }
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Ok(Forwarded::Close),
                    () = &mut deadline, if timing => return Err(HeadTimeout.into()),
                    _ = tick.tick() => {
                        if buf.is_empty() && !busy {
                            return Ok(Forwarded::Park);
                        }
                        busy = false;
                    }
                    read = client.read_buf(&mut buf) => if read? == 0 {
                        return Ok(Forwarded::Close);
                    },
                }
            }
            busy = true;
            let start = Instant::now();
            // One view of the routing state for the whole request, retries included.
            let snap = self.snapshot.load_full();
            let step = self.prepare(&snap, &buf, peer, &mut bufs.req);
            need = 0;
            match step {
                Step::Incomplete(len) => need = len,
                Step::Fallback(why) => {
                    tracing::trace!(client = %peer.addr, "to the general path: {why}");
                    client.prefix = buf.freeze();
                    return Ok(Forwarded::Fallback);
                }
                Step::Refuse(resp) => return self.refuse(client, peer, resp, &mut bufs.resp).await,
                Step::Answer { len, close, head, resp } => {
                    buf.advance(len);
                    let close = close || cancel.is_cancelled() || limits.closing.is_cancelled();
                    encode_local(&resp, close, head, &mut bufs.resp);
                    client.write_all(&bufs.resp).await?;
                    if close {
                        return Ok(Forwarded::Close);
                    }
                }
                Step::Forward { len, route } => {
                    buf.advance(len);
                    let closing = Close { request: false, stop: cancel, drain: &limits.closing };
                    if !self.exchange(route, client, &mut bufs, closing, start).await? {
                        return Ok(Forwarded::Close);
                    }
                }
            }
        }
    }

    /// Answers a request refused for its framing or size, counted and logged; the
    /// connection then closes (what follows the head cannot be trusted).
    async fn refuse(
        &self,
        client: &mut ClientIo,
        peer: &Peer,
        resp: Response<ResponseBody>,
        out: &mut Vec<u8>,
    ) -> Result<Forwarded, BoxError> {
        self.refused.inc();
        let why = match resp.body() {
            ResponseBody::Local(Some(b)) => String::from_utf8_lossy(b).trim().to_owned(),
            _ => String::new(),
        };
        tracing::info!(client = %peer.addr, status = resp.status().as_u16(), "refused a request: {why}");
        encode_local(&resp, true, false, out);
        client.write_all(out).await?;
        Ok(Forwarded::Close)
    }

    /// Parses and checks the request at the front of `buf`, routes it, and writes it as it
    /// goes upstream (head and body) into `out`. Nothing is counted or routed before the body
    /// is whole. No I/O.
    fn prepare<'s>(&self, snap: &'s Snapshot, buf: &[u8], peer: &Peer, out: &mut Vec<u8>) -> Step<'s> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (req, len) = match http1::parse_request(buf, &mut headers) {
            Ok(parsed) => parsed,
            Err(refused) => return Step::Refuse(refusal(refused.status, &refused.why)),
        };
        let (body, host, close, idempotent, head) = match request::inspect(&req) {
            request::Request::Forward { .. } if !self.fast => return Step::Fallback("the fast path is off"),
            request::Request::Forward { body, host, close, idempotent, head } => (body, host, close, idempotent, head),
            request::Request::Fallback(why) => return Step::Fallback(why),
            request::Request::Reject(status, why) => return Step::Refuse(refusal(status, why)),
        };
        let Some(body) = buf.get(len..len + body) else { return Step::Incomplete(len + body) };
        let len = len + body.len();
        let fields = super::Fields::Raw(req.headers);
        let picked = self.route(snap, host).and_then(|app| {
            if !app.plain_upstream {
                return Ok(Err("the app's endpoints speak HTTP/2 or TLS"));
            }
            // A client to give a sticky cookie: the general path sets it (once per client).
            if app.sticky.as_ref().is_some_and(|s| s.set_cookie && super::sticky_key(s, fields).is_none()) {
                return Ok(Err("a sticky cookie to set"));
            }
            Self::pick_in(app, fields, peer, None).map(Ok)
        });
        match picked {
            Ok(Err(why)) => Step::Fallback(why),
            Err(e) => Step::Answer { len, close, head, resp: super::error_response(&e) },
            Ok(Ok((app, version, endpoint, may_spill))) => {
                request::encode(&req, host, peer.ip.as_bytes(), self.proto, body, out);
                if let Some(mirror) = &app.mirror
                    && mirror.wants_for(app, version)
                {
                    match crate::data::mirror::from_wire(out, mirror.max_body) {
                        Some(copy) => mirror.send(app, copy),
                        None => mirror.skip(),
                    }
                }
                Step::Forward { len, route: Route { app, version, endpoint, close, idempotent, head, may_spill } }
            }
        }
    }

    /// Sends the request in `bufs.req` upstream (with the general path's retries) and
    /// forwards the response. `Ok(false)`: the client connection closes after it (as it
    /// does once `closing`: Weir stops or drains, by the time the response head is written).
    async fn exchange(
        &self,
        route: Route<'_>,
        client: &mut ClientIo,
        bufs: &mut Buffers,
        closing: Close<'_>,
        start: Instant,
    ) -> Result<bool, BoxError> {
        let Route { app, version, endpoint, close, idempotent, head, may_spill } = route;
        let close = Close { request: close, ..closing };
        let attempts = Attempts::new(app, true, idempotent).spilling(may_spill);
        // The attempt writes into the connection's buffers; a hedge that answers first
        // brings its own, which then take their place.
        let mut raw = RawExchange {
            req: &bufs.req,
            up: std::mem::take(&mut bufs.up),
            out: std::mem::take(&mut bufs.resp),
            head,
            close,
        };
        let sent = attempt::drive(app, version, endpoint, attempts, &mut raw, start).await;
        let used = match &sent {
            Ok(Sent { spare: Some(_), .. }) => None,
            _ => Some(raw),
        };
        match sent {
            Ok(Sent { answer: (conn, len, resp), endpoint, in_flight, spare, .. }) => {
                let used = used.or(spare).expect("the answer came from one of the two");
                (bufs.up, bufs.resp) = (used.up, used.out);
                bufs.up.advance(len);
                forward_body(client, conn, resp, bufs, endpoint.client.timeouts.read).await?;
                drop(in_flight);
                Ok(!resp.close)
            }
            Err(failure) => {
                let used = used.expect("no hedge answered");
                (bufs.up, bufs.resp) = (used.up, used.out);
                let close = close.now();
                encode_local(&failure, close, head, &mut bufs.resp);
                client.write_all(&bufs.resp).await?;
                Ok(!close)
            }
        }
    }
}

/// Whether a response closes its client connection: the request asked (or must), or Weir is
/// stopping or draining by the time the head is written, so that a request that started
/// before SIGTERM and is answered during (or after) the drain delay tells its client to
/// reconnect, instead of leaving a keep-alive connection that is about to close.
#[derive(Clone, Copy)]
struct Close<'a> {
    request: bool,
    stop: &'a CancellationToken,
    drain: &'a CancellationToken,
}

impl Close<'_> {
    fn now(&self) -> bool {
        self.request || self.stop.is_cancelled() || self.drain.is_cancelled()
    }
}

/// The fast path's attempt: the request already written into one buffer, sent on a pooled raw
/// socket, the response head read and rewritten.
struct RawExchange<'b> {
    req: &'b [u8],
    up: BytesMut,
    out: Vec<u8>,
    head: bool,
    close: Close<'b>,
}

impl Exchange for RawExchange<'_> {
    type Answer = (RawConn, usize, response::Response);

    fn send<'s>(
        &'s mut self,
        endpoint: &'s Endpoint,
        _last: bool,
    ) -> impl Future<Output = Result<Self::Answer, UpstreamError>> + Send + 's {
        attempt(&endpoint.client, self.req, &mut self.up, &mut self.out, self.head, self.close)
    }

    fn status(answer: &Self::Answer) -> StatusCode {
        StatusCode::from_u16(answer.2.status).unwrap_or(StatusCode::BAD_GATEWAY)
    }

    fn spare(&self) -> Self {
        RawExchange { req: self.req, up: BytesMut::new(), out: Vec::new(), head: self.head, close: self.close }
    }
}

/// One attempt: a connection to the endpoint, the request written, and a final response head
/// read (1xx informational heads are skipped, as hyper's client does) and rewritten into
/// `out`. Returns the connection, the head's length in `up`, and what it says.
async fn attempt(
    client: &HttpClient,
    req: &[u8],
    up: &mut BytesMut,
    out: &mut Vec<u8>,
    head: bool,
    close: Close<'_>,
) -> Result<(RawConn, usize, response::Response), UpstreamError> {
    let mut conn = client.raw().await?;
    up.clear();
    // A reused connection that fails before any byte of response came back was closed by
    // the upstream while idle: stale, not the endpoint's fault.
    let io_error = |conn: &RawConn, up: &BytesMut, doing: &str, e: std::io::Error| {
        let e = UpstreamError::io(doing, e, conn.reused && up.is_empty());
        if e.stale {
            conn.stale();
        }
        e
    };
    if let Err(e) = conn.stream.write_all(req).await {
        return Err(io_error(&conn, up, "writing the request", e));
    }
    let protocol = UpstreamError::protocol;
    let mut searched = 0;
    loop {
        if head::head_ended(up, searched) {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(up) {
                Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                    return Err(protocol(format!("response head over {MAX_HEAD} bytes")));
                }
                Ok(httparse::Status::Complete(len)) => match resp.code {
                    Some(101) => return Err(protocol("101 Switching Protocols to a request without upgrade".into())),
                    // httparse takes any three digits; no status below 100 exists (hyper
                    // refuses them on the general path too).
                    Some(code) if code < 100 => return Err(protocol(format!("invalid status code {code:03}"))),
                    Some(100..=199) => {
                        up.advance(len);
                        searched = 0;
                        continue;
                    }
                    _ => {
                        let r = response::encode(&resp, head, close.now(), out)
                            .map_err(|e| protocol(format!("invalid response head: {e}")))?;
                        return Ok((conn, len, r));
                    }
                },
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(protocol(format!("invalid response head: {e}"))),
            }
        }
        if up.len() > MAX_HEAD {
            return Err(protocol(format!("response head over {MAX_HEAD} bytes")));
        }
        searched = up.len();
        if up.capacity() - up.len() < HEAD_CHUNK / 4 {
            up.reserve(HEAD_CHUNK);
        }
        match conn.stream.read_buf(up).await {
            Ok(0) => {
                let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a response");
                return Err(io_error(&conn, up, "reading the response", eof));
            }
            Ok(_) => {}
            Err(e) => return Err(io_error(&conn, up, "reading the response", e)),
        }
    }
}

/// Writes the response head in `bufs.resp` and the body after it, copied from `conn` as it
/// comes. Once the body was read to where its framing says it ends, with nothing after it,
/// the connection goes back to the pool (if `resp` allows) before the last bytes are written
/// to the client: the next request, from any client, can have it. An error (either side
/// gone, or the upstream silent for `read_timeout` between two reads, nginx's
/// `proxy_read_timeout`) closes the client connection: a response cut short cannot be told
/// apart from a whole one any other way.
async fn forward_body(
    client: &mut ClientIo,
    mut conn: RawConn,
    resp: response::Response,
    bufs: &mut Buffers,
    read_timeout: std::time::Duration,
) -> Result<(), BoxError> {
    let Buffers { resp: out, up, .. } = bufs;
    let mut body = BodyEnd::new(resp.framing);
    // The head and what came of the body with it go out in one write.
    let first = body.take(up)?;
    out.extend_from_slice(&up[..first]);
    if body.done() {
        finish(conn, resp.reusable && up.len() == first);
        return Ok(client.write_all(out).await?);
    }
    client.write_all(out).await?;
    loop {
        up.clear();
        up.reserve(BODY_CHUNK);
        let read = tokio::time::timeout(read_timeout, conn.stream.read_buf(up)).await;
        if read.map_err(|_| "upstream sent nothing of the body within the read timeout")?? == 0 {
            if resp.framing == Framing::UntilClose {
                return Ok(());
            }
            return Err("upstream closed the connection before the end of the body".into());
        }
        let n = body.take(up)?;
        if body.done() {
            finish(conn, resp.reusable && up.len() == n);
            return Ok(client.write_all(&up[..n]).await?);
        }
        client.write_all(&up[..n]).await?;
    }
}

/// Gives a connection whose response was read whole back to its pool, or closes it.
fn finish(conn: RawConn, reusable: bool) {
    if reusable {
        conn.release();
    }
}

/// Tracks how much of a body is left, by its framing.
struct BodyEnd {
    framing: Framing,
    left: u64,
    chunks: chunked::Scanner,
}

impl BodyEnd {
    fn new(framing: Framing) -> Self {
        let left = if let Framing::Length(n) = framing { n } else { 0 };
        BodyEnd { framing, left, chunks: chunked::Scanner::default() }
    }

    /// How many of `bytes` belong to the body.
    fn take(&mut self, bytes: &[u8]) -> Result<usize, chunked::Invalid> {
        Ok(match self.framing {
            Framing::Empty => 0,
            Framing::Length(_) => {
                let n = self.left.min(bytes.len() as u64);
                self.left -= n;
                n as usize
            }
            Framing::Chunked => self.chunks.scan(bytes)?.unwrap_or(bytes.len()),
            Framing::UntilClose => bytes.len(),
        })
    }

    fn done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunks.is_done(),
            Framing::UntilClose => false,
        }
    }
}

/// Writes a response Weir made (see [`super::error_response`]) into `out`.
fn encode_local(resp: &Response<ResponseBody>, close: bool, head: bool, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let body: &[u8] = match resp.body() {
        ResponseBody::Local(Some(b)) => b,
        _ => &[],
    };
    out.clear();
    let status = resp.status();
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or(""));
    for (name, value) in resp.headers() {
        for part in [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    let _ = write!(out, "content-length: {}\r\n", body.len());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(body);
    }
}
