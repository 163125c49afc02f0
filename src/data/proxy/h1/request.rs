//! Request heads as Weir's codec checks and rewrites them. Every HTTP/1 request head is
//! checked here, whichever path then forwards it: the framing rules of RFC 9112 are decided
//! once, strictly (reject, close, log — never guess), before any byte goes upstream.

use http::StatusCode;

use super::head::{connection, field, is_hop_by_hop, is_x_forwarded, listed, number, values};
use crate::data::http1::{self, tokens};
use crate::data::proxy::headers::X_FORWARDED_FOR;

/// The largest request body the fast path takes: read whole before the request goes
/// upstream (as nginx buffers bodies up to `client_body_buffer_size`), so it can be sent
/// again on a retry. Larger ones, and chunked ones, are streamed by the general path.
pub const MAX_BODY: usize = 64 * 1024;

/// What to do with a request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'h> {
    /// Weir's codec forwards it: HTTP/1.1, origin-form, no upgrade or expectation, no body
    /// or a `Content-Length` one of at most [`MAX_BODY`].
    Forward {
        /// Length of its body.
        body: usize,
        /// The `Host` field (checked: one, valid).
        host: Option<&'h str>,
        /// The client asked to close the connection after the response.
        close: bool,
        /// GET, HEAD, PUT, DELETE, OPTIONS, TRACE.
        idempotent: bool,
        /// A HEAD request: its response has no body whatever its fields say.
        head: bool,
    },
    /// Checked and sound; the general path (hyper) serves it, for the reason given.
    Fallback(&'static str),
    /// Refused: answered with this status, then the connection closes.
    Reject(StatusCode, &'static str),
}

/// Checks a parsed request head ([`http1::check_request`]) and decides who forwards it.
pub fn inspect<'b>(req: &httparse::Request<'_, 'b>) -> Request<'b> {
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Request::Reject(StatusCode::BAD_REQUEST, "incomplete request line");
    };
    let fields = req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let line = http1::RequestLine::new(method.as_bytes(), target.as_bytes());
    let framing = match http1::check_request(version == 1, line, fields) {
        Ok(f) => f,
        Err((status, why)) => return Request::Reject(status, why),
    };
    // Checked: now, who forwards it.
    if version != 1 {
        return Request::Fallback("HTTP/1.0");
    }
    if !target.starts_with('/') {
        return Request::Fallback("not origin-form");
    }
    if framing.chunked {
        return Request::Fallback("a chunked body");
    }
    if framing.connection.upgrade || values(req.headers, "upgrade").next().is_some() {
        return Request::Fallback("an upgrade");
    }
    if values(req.headers, "expect").next().is_some() {
        return Request::Fallback("an expectation");
    }
    let body = match usize::try_from(framing.length.unwrap_or(0)) {
        Ok(n) if n <= MAX_BODY => n,
        _ => return Request::Fallback("a body over 64 KiB"),
    };
    let idempotent = matches!(method, "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE");
    Request::Forward { body, host: framing.host, close: framing.connection.close, idempotent, head: method == "HEAD" }
}

/// Writes the request to send upstream into `out`: the request line in origin form as
/// HTTP/1.1, the client's fields without hop-by-hop ones and without its `Content-Length`
/// (Weir writes the length of the body it read), then `X-Forwarded-For` (the client's
/// chain, if any, and `client_ip`), `X-Forwarded-Proto` and `X-Forwarded-Host`; then `body`.
/// Only for heads [`inspect`] passed to the codec.
pub fn encode(
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
    let conn = connection(req.headers);
    let (mut had_length, mut te_trailers) = (false, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            had_length = true;
            continue;
        }
        // `TE: trailers` says the client takes trailers: passed on (alone), as the general
        // path's `strip_hop_by_hop` does; other TE codings are hop-by-hop and go.
        if h.name.eq_ignore_ascii_case("te") {
            te_trailers |= tokens(std::iter::once(h.value)).any(|t| t.eq_ignore_ascii_case(b"trailers"));
            continue;
        }
        if is_hop_by_hop(h.name) || is_x_forwarded(h.name) || listed(&conn, req.headers, h.name) {
            continue;
        }
        field(out, h.name.as_bytes(), h.value);
    }
    if te_trailers {
        field(out, b"te", b"trailers");
    }
    if had_length || !body.is_empty() {
        out.extend_from_slice(b"content-length: ");
        number(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(X_FORWARDED_FOR.as_str().as_bytes());
    out.extend_from_slice(b": ");
    for prev in tokens(values(req.headers, "x-forwarded-for")) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip);
    out.extend_from_slice(b"\r\n");
    field(out, b"x-forwarded-proto", proto.as_bytes());
    if let Some(host) = host {
        field(out, b"x-forwarded-host", host.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect_raw(raw: &[u8]) -> String {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut h);
        match req.parse(raw) {
            Ok(httparse::Status::Complete(_)) => format!("{:?}", inspect(&req)),
            other => format!("parse: {other:?}"),
        }
    }

    #[test]
    fn rewrites_a_request_like_the_general_path() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: app.local\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
            Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
            Accept: */*\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut h);
        req.parse(raw).unwrap();
        let Request::Forward { body, host, close, idempotent, head } = inspect(&req) else { panic!() };
        assert_eq!((body, host, close, idempotent, head), (0, Some("app.local"), false, true, false));
        let mut out = Vec::new();
        encode(&req, host, b"127.0.0.1", "http", b"", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nHost: app.local\r\nAccept: */*\r\nte: trailers\r\n\
             x-forwarded-for: 203.0.113.9, 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: app.local\r\n\r\n"
        );
    }

    #[test]
    fn writes_the_length_it_read() {
        let raw = b"PUT /x HTTP/1.1\r\nHost: a\r\ncontent-length:  5 \r\n\r\nhello";
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut h);
        let len = match req.parse(raw).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!(),
        };
        assert!(matches!(inspect(&req), Request::Forward { body: 5, idempotent: true, .. }));
        let mut out = Vec::new();
        encode(&req, Some("a"), b"10.0.0.1", "http", &raw[len..], &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("\r\ncontent-length: 5\r\n") && out.ends_with("\r\n\r\nhello"), "{out}");
        assert_eq!(out.matches("ontent-length").count(), 1);
    }

    #[test]
    fn refuses_ambiguous_framing() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close, Transfer-Encoding\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let got = inspect_raw(raw);
            assert!(got.contains("400"), "{got}: {}", String::from_utf8_lossy(raw));
        }
        for te in ["xchunked", "chunked, identity", "identity", "gzip, chunked"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert!(inspect_raw(raw.as_bytes()).contains("501"), "{te}");
        }
        // What httparse itself refuses: obs-fold, space before the colon, NUL, bare CR.
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        ] {
            assert!(inspect_raw(raw).starts_with("parse: Err"), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn leaves_what_it_does_not_forward_to_the_general_path() {
        let big = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        for raw in [
            big.as_bytes(),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(inspect_raw(raw).starts_with("Fallback"), "{}", String::from_utf8_lossy(raw));
        }
        assert!(
            inspect_raw(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .starts_with("Forward { body: 0, host: Some(\"a\"), close: true, idempotent: false")
        );
    }
}
