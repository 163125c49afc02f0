//! Request and response heads as the HTTP/1.1 fast path reads and rewrites them: the same
//! rules as the general path's [`strip_hop_by_hop`](super::super::strip_hop_by_hop) and
//! [`set_forwarded`](super::super::set_forwarded), on `httparse` fields instead of a
//! `HeaderMap`, written straight into the bytes that go out.

use httparse::Header;

use super::super::headers::{HOP_BY_HOP, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// Whether `name` is a hop-by-hop field (the general path's list). A response keeps
/// `Transfer-Encoding` when `keep_transfer_encoding`: its chunked framing is forwarded as it came.
fn is_hop_by_hop(name: &str, keep_transfer_encoding: bool) -> bool {
    HOP_BY_HOP.iter().any(|h| {
        h.as_str().eq_ignore_ascii_case(name) && !(keep_transfer_encoding && h == http::header::TRANSFER_ENCODING)
    })
}

/// Whether `name` is one of the `X-Forwarded-*` fields Weir sets itself.
fn is_x_forwarded(name: &str) -> bool {
    [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST].iter().any(|x| x.as_str().eq_ignore_ascii_case(name))
}

/// The comma-separated tokens of every `name` field.
fn tokens<'h>(headers: &'h [Header<'h>], name: &'static str) -> impl Iterator<Item = &'h [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// What the `Connection` fields of a head say.
#[derive(Debug, Default, Clone, Copy)]
struct Connection {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// It names fields beyond the standard hop-by-hop ones, which must go too.
    lists_others: bool,
}

impl Connection {
    fn of(headers: &[Header<'_>]) -> Self {
        let mut c = Connection::default();
        for t in tokens(headers, "connection") {
            if t.eq_ignore_ascii_case(b"close") {
                c.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                c.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                c.upgrade = true;
            } else {
                c.lists_others = true;
            }
        }
        c
    }

    /// Whether a field called `name` is dropped for being named in `Connection`.
    fn drops(&self, headers: &[Header<'_>], name: &str) -> bool {
        self.lists_others && tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// A request the fast path forwards, or why it leaves it to the general path.
#[derive(Debug)]
pub enum Request<'h> {
    /// HTTP/1.1, origin-form, no upgrade or expectation, no body or a `Content-Length` one of
    /// at most [`MAX_BODY`]: forwarded as rewritten.
    Forward {
        /// Length of its body (`Content-Length`, at most [`MAX_BODY`]).
        body: usize,
        /// The `Host` field, if any.
        host: Option<&'h str>,
        /// The client asked to close the connection after the response.
        close: bool,
        /// GET, HEAD, PUT, DELETE, OPTIONS, TRACE.
        idempotent: bool,
        /// A HEAD request: its response has no body whatever its fields say.
        head: bool,
    },
    /// Anything else, left to hyper.
    Fallback(&'static str),
}

/// The largest request body the fast path takes: read whole before the request goes
/// upstream (as nginx buffers bodies up to `client_body_buffer_size`), so it can be sent
/// again on a retry. Larger ones, and bodies of unknown length, are streamed by hyper.
pub const MAX_BODY: usize = 64 * 1024;

/// A `Content-Length` value: digits only (no sign, no spaces inside), as RFC 9110 §8.6 has it.
fn content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Looks at a parsed request: can the fast path forward it?
pub fn inspect_request<'b>(req: &httparse::Request<'_, 'b>) -> Request<'b> {
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Request::Fallback("incomplete request line");
    };
    if version != 1 {
        return Request::Fallback("HTTP/1.0");
    }
    if !path.starts_with('/') {
        return Request::Fallback("not origin-form");
    }
    let mut host = None;
    let mut body = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Request::Fallback("several Host fields");
            }
            host = Some(std::str::from_utf8(h.value).map_err(|_| ()));
        } else if name.eq_ignore_ascii_case("content-length") {
            match (content_length(h.value), body) {
                (None, _) => return Request::Fallback("an invalid Content-Length (hyper answers 400)"),
                (Some(n), Some(prev)) if n != prev => return Request::Fallback("conflicting Content-Length fields"),
                (n, _) => body = n,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Request::Fallback("a chunked body, an expectation or an upgrade");
        }
    }
    let Ok(host) = host.transpose() else { return Request::Fallback("a Host that is not text") };
    let conn = Connection::of(req.headers);
    if conn.upgrade {
        return Request::Fallback("an upgrade");
    }
    let body = match usize::try_from(body.unwrap_or(0)) {
        Ok(n) if n <= MAX_BODY => n,
        _ => return Request::Fallback("a body over 64 KiB (hyper streams it)"),
    };
    let idempotent = matches!(method, "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE");
    Request::Forward { body, host, close: conn.close, idempotent, head: method == "HEAD" }
}

/// Writes the request to send upstream into `out`: the request line in origin form as
/// HTTP/1.1, the client's fields without hop-by-hop ones, then `X-Forwarded-For` (the
/// client's chain, if any, and `client_ip`), `X-Forwarded-Proto` and `X-Forwarded-Host`;
/// then `body`.
pub fn encode_request(
    req: &httparse::Request<'_, '_>,
    host: Option<&str>,
    client_ip: &[u8],
    proto: &str,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    let (method, path) = (req.method.unwrap_or("GET"), req.path.unwrap_or("/"));
    out.clear();
    for part in [method.as_bytes(), b" ", path.as_bytes(), b" HTTP/1.1\r\n"] {
        out.extend_from_slice(part);
    }
    let conn = Connection::of(req.headers);
    for h in req.headers.iter() {
        if is_hop_by_hop(h.name, false) || is_x_forwarded(h.name) || conn.drops(req.headers, h.name) {
            continue;
        }
        field(out, h.name.as_bytes(), h.value);
    }
    out.extend_from_slice(X_FORWARDED_FOR.as_str().as_bytes());
    out.extend_from_slice(b": ");
    for prev in tokens(req.headers, X_FORWARDED_FOR.as_str()) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip);
    out.extend_from_slice(b"\r\n");
    field(out, X_FORWARDED_PROTO.as_str().as_bytes(), proto.as_bytes());
    if let Some(host) = host {
        field(out, X_FORWARDED_HOST.as_str().as_bytes(), host.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for part in [name, b": ", value, b"\r\n"] {
        out.extend_from_slice(part);
    }
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, or 204, 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding, forwarded as it comes.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A response head from upstream, rewritten for the client.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    /// Its status code.
    pub status: u16,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the upstream connection can take another request after this response.
    pub reusable: bool,
    /// Whether the client connection closes after it (`Connection: close` was written).
    pub close: bool,
}

/// Writes the response for the client into `out`: the status line as HTTP/1.1, the upstream's
/// fields without hop-by-hop ones (its framing kept), and `Connection: close` when `close` or
/// when the body runs to the end of the upstream connection. `head` says the request was
/// HEAD. Informational (1xx) heads are not passed here.
pub fn encode_response(
    resp: &httparse::Response<'_, '_>,
    head: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Response, &'static str> {
    let status = resp.code.ok_or("no status code")?;
    let conn = Connection::of(resp.headers);
    // Chunked when it is the last coding; any other coding runs to the connection's close.
    let chunked = tokens(resp.headers, "transfer-encoding").last().map(|last| last.eq_ignore_ascii_case(b"chunked"));
    let mut length = None;
    for h in resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
        let n = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
        match (n, length) {
            (None, _) => return Err("invalid Content-Length"),
            (Some(n), Some(prev)) if n != prev => return Err("conflicting Content-Length fields"),
            (n, _) => length = n,
        }
    }
    let framing = if head || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let close = close || framing == Framing::UntilClose;
    let reusable = resp.version == Some(1) && !conn.close && framing != Framing::UntilClose;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if is_hop_by_hop(h.name, true)
            || conn.drops(resp.headers, h.name)
            // With a transfer coding, Content-Length means nothing and must not be sent.
            || (chunked.is_some() && h.name.eq_ignore_ascii_case("content-length"))
        {
            continue;
        }
        field(out, h.name.as_bytes(), h.value);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Response { status, framing, reusable, close })
}

/// A three-digit status code as text (httparse guarantees three digits).
fn itoa3(code: u16) -> [u8; 3] {
    [b'0' + (code / 100 % 10) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8]
}

/// Whether `buf` holds the empty line that ends a head (CRLF or bare LF line ends), looking
/// from about `from` on (bytes before it were already searched).
pub fn head_ended(buf: &[u8], from: usize) -> bool {
    let tail = buf.get(from.saturating_sub(2)..).unwrap_or_default();
    tail.iter().enumerate().any(|(i, &b)| {
        b == b'\n'
            && match tail.get(i + 1) {
                Some(b'\n') => true,
                Some(b'\r') => tail.get(i + 2) == Some(&b'\n'),
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<'b, 'h>(raw: &'b [u8], headers: &'h mut [Header<'b>]) -> httparse::Request<'h, 'b> {
        let mut req = httparse::Request::new(headers);
        assert!(req.parse(raw).unwrap().is_complete());
        req
    }

    #[test]
    fn rewrites_a_request_like_the_general_path() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: app.local\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
            Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
            Accept: */*\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 16];
        let req = parse(raw, &mut h);
        let Request::Forward { body, host, close, idempotent, head } = inspect_request(&req) else { panic!() };
        assert_eq!((body, host, close, idempotent, head), (0, Some("app.local"), false, true, false));
        let mut out = Vec::new();
        encode_request(&req, host, b"127.0.0.1", "http", b"", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nHost: app.local\r\nAccept: */*\r\nx-forwarded-for: 203.0.113.9, 127.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: app.local\r\n\r\n"
        );
    }

    #[test]
    fn leaves_bodies_upgrades_and_old_versions_to_the_general_path() {
        let big = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        for raw in [
            big.as_bytes(),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            let mut h = [httparse::EMPTY_HEADER; 16];
            let req = parse(raw, &mut h);
            assert!(matches!(inspect_request(&req), Request::Fallback(_)), "{}", String::from_utf8_lossy(raw));
        }
        let mut h = [httparse::EMPTY_HEADER; 16];
        let req = parse(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", &mut h);
        assert!(matches!(inspect_request(&req), Request::Forward { body: 0, close: true, idempotent: false, .. }));
        let mut h = [httparse::EMPTY_HEADER; 16];
        let req = parse(b"PUT /x HTTP/1.1\r\nHost: a\r\ncontent-length:  5 \r\n\r\nhello", &mut h);
        assert!(matches!(inspect_request(&req), Request::Forward { body: 5, idempotent: true, .. }));
    }

    fn response(raw: &[u8], head: bool, close: bool) -> (Response, String) {
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut h);
        assert!(resp.parse(raw).unwrap().is_complete());
        let mut out = Vec::new();
        let r = encode_response(&resp, head, close, &mut out).unwrap();
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn frames_responses_per_rfc_9112() {
        let (r, out) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\n", false, false);
        assert_eq!((r.framing, r.reusable, r.close), (Framing::Length(5), true, false));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");

        let (r, out) =
            response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", false, true);
        assert_eq!((r.framing, r.close), (Framing::Chunked, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n");

        let (r, out) = response(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n", false, false);
        assert_eq!((r.framing, r.reusable, r.close), (Framing::UntilClose, false, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nServer: old\r\nconnection: close\r\n\r\n");

        let (r, _) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false);
        assert_eq!(r.framing, Framing::Empty);
        let (r, _) = response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false, false);
        assert_eq!(r.framing, Framing::Empty);
        let (r, out) = response(b"HTTP/1.1 503 \r\nConnection: close, X-Debug\r\nX-Debug: 1\r\n\r\n", false, false);
        assert_eq!((r.status, r.framing, r.reusable), (503, Framing::UntilClose, false));
        assert_eq!(out, "HTTP/1.1 503 \r\nconnection: close\r\n\r\n");
    }

    #[test]
    fn rejects_conflicting_lengths() {
        let mut h = [httparse::EMPTY_HEADER; 4];
        let mut resp = httparse::Response::new(&mut h);
        resp.parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").unwrap();
        assert!(encode_response(&resp, false, false, &mut Vec::new()).is_err());
    }

    #[test]
    fn finds_the_end_of_a_head_across_reads() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(head_ended(raw, 0));
        for split in 1..raw.len() {
            assert!(!head_ended(&raw[..split], 0), "{split}");
            assert!(head_ended(raw, split), "{split}");
        }
        assert!(head_ended(b"GET / HTTP/1.1\nHost: a\n\n", 0));
        assert!(head_ended(b"GET / HTTP/1.1\nHost: a\n\r\n", 0));
    }
}
