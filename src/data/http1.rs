//! The HTTP/1 field rules every path applies, on raw bytes: where a request head ends and how
//! large it may be ([`parse_request`]), which request heads are refused ([`check_request`]),
//! `Connection` tokens, `Content-Length` and `Transfer-Encoding` values.
//! One implementation each, used by Weir's codec (on `httparse` fields), by hyper's path (on
//! `HeaderMap`s, for requests hyper parsed itself) and by header rewriting.

pub mod chunked;
mod head;

use http::StatusCode;

pub use head::{MAX_HEAD, MAX_HEADERS, Refusal, head_ended, oversized, parse_request};

/// The comma-separated, trimmed, non-empty tokens of some field values.
pub fn tokens<'v>(values: impl Iterator<Item = &'v [u8]>) -> impl Iterator<Item = &'v [u8]> {
    values.flat_map(|v| v.split(|&b| b == b',')).map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// What the `Connection` fields of a head say (RFC 9110 §7.6.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// `close`: the connection ends after this message.
    pub close: bool,
    /// `keep-alive` (what an HTTP/1.0 peer needs to keep the connection).
    pub keep_alive: bool,
    /// `upgrade`.
    pub upgrade: bool,
    /// It names other fields, which are hop-by-hop too and must not be forwarded.
    pub lists_others: bool,
    /// It names a field that frames or routes the message (`Content-Length`,
    /// `Transfer-Encoding`, `Host`): a request smuggling attempt, refused.
    pub lists_framing: bool,
}

impl Connection {
    /// The `Connection` fields of a parsed head.
    pub fn of(headers: &http::HeaderMap) -> Self {
        Self::parse(headers.get_all(http::header::CONNECTION).iter().map(http::HeaderValue::as_bytes))
    }

    /// Parses every `Connection` field value of a head.
    pub fn parse<'v>(values: impl Iterator<Item = &'v [u8]>) -> Self {
        let mut c = Connection::default();
        for t in tokens(values) {
            if t.eq_ignore_ascii_case(b"close") {
                c.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                c.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                c.upgrade = true;
            } else {
                c.lists_others = true;
                c.lists_framing |=
                    [&b"content-length"[..], b"transfer-encoding", b"host"].iter().any(|f| t.eq_ignore_ascii_case(f));
            }
        }
        c
    }
}

/// A `Content-Length` value: 1*DIGIT with optional surrounding whitespace, no sign, no list
/// (RFC 9110 §8.6). At most 18 digits, so it fits any size Weir handles without overflow.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether `value` is exactly one `chunked` token: the only request transfer coding Weir
/// forwards (anything else is refused, as nginx does).
pub fn is_chunked(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// What a checked request head says about its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFraming<'v> {
    /// Its `Content-Length`, if any.
    pub length: Option<u64>,
    /// Whether it has a chunked body.
    pub chunked: bool,
    /// Its one `Host` value (checked: empty or a valid authority), if any.
    pub host: Option<&'v str>,
    /// Its `Connection` fields.
    pub connection: Connection,
}

/// Checks the fields of a request head (RFC 9112 §3.2, §6.1, §6.3; RFC 9110 §7.6.1) and says
/// how its body is framed, or why it is refused — the status and the reason. Strict where the
/// RFC allows a choice, as nginx and HAProxy are: two `Content-Length` fields even if equal,
/// `Content-Length` with `Transfer-Encoding`, a transfer coding other than `chunked` (501),
/// `Transfer-Encoding` in HTTP/1.0, no or several `Host` fields, and a `Connection` field that
/// lists `Content-Length`, `Transfer-Encoding` or `Host` are all refused. `http11`: the
/// request is HTTP/1.1; `absolute`: its target carries the authority.
pub fn check_request<'v>(
    http11: bool,
    line: RequestLine<'_>,
    fields: impl Iterator<Item = (&'v [u8], &'v [u8])>,
) -> Result<RequestFraming<'v>, (StatusCode, &'static str)> {
    let bad = |why| Err((StatusCode::BAD_REQUEST, why));
    // A reverse proxy opens no tunnels: CONNECT would turn the connection into one whose
    // bytes the next hop reads as it likes (nginx refuses it too).
    if line.method.eq_ignore_ascii_case(b"CONNECT") {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "CONNECT (Weir is not a forward proxy)"));
    }
    let absolute = line.authority;
    if absolute.is_some_and(|a| a.contains(&b'@')) {
        return bad("userinfo in the target");
    }
    if !line.target_ok {
        return bad("a request target that is not a path, an absolute URI, or * for OPTIONS");
    }
    let (mut length, mut chunked, mut host, mut hosts) = (None, false, None, 0);
    let mut connection_values: [Option<&[u8]>; 4] = [None; 4];
    let mut connections = 0;
    for (name, value) in fields {
        // `Content_Length` and the like: some upstreams (CGI, WSGI) read `_` as `-`, so they
        // would see framing Weir did not (nginx drops such fields by default).
        if name.contains(&b'_') && framing_alias(name) {
            return bad("a field name that reads as Content-Length or Transfer-Encoding with _ for -");
        }
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return bad("more than one Content-Length");
            }
            match content_length(value) {
                Some(n) => length = Some(n),
                None => return bad("invalid Content-Length"),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked {
                return bad("more than one Transfer-Encoding");
            }
            if !is_chunked(value) {
                return Err((StatusCode::NOT_IMPLEMENTED, "a transfer coding other than chunked"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            match connection_values.get_mut(connections) {
                Some(slot) => *slot = Some(value),
                None => return bad("more than four Connection fields"),
            }
            connections += 1;
        }
    }
    if chunked && length.is_some() {
        return bad("both Content-Length and Transfer-Encoding");
    }
    if chunked && !http11 {
        return bad("Transfer-Encoding in an HTTP/1.0 request");
    }
    if hosts > 1 {
        return bad("more than one Host");
    }
    // An absolute-form target names the host itself (RFC 9112 §3.2.2; nginx takes it too).
    if hosts == 0 && http11 && absolute.is_none() {
        return bad("no Host in an HTTP/1.1 request");
    }
    let host = match host {
        None => None,
        Some(h) if valid_host(h) => Some(std::str::from_utf8(h).expect("valid_host admits ASCII only")),
        Some(_) => return bad("invalid Host"),
    };
    let connection = Connection::parse(connection_values.into_iter().flatten());
    if connection.lists_framing {
        return bad("Connection lists Content-Length, Transfer-Encoding or Host");
    }
    Ok(RequestFraming { length, chunked, host, connection })
}

/// The request line, as far as the field rules need it.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'l> {
    /// The method.
    pub method: &'l [u8],
    /// The authority of an absolute-form target (`http://authority/...`), if it is one.
    pub authority: Option<&'l [u8]>,
    /// The target is origin-form (`/path`), absolute-form, or `*` for OPTIONS, and has no
    /// fragment (RFC 9112 §3.2): anything else (`abc`, `b:80`, `/a#x`) is refused, not
    /// guessed at (hyper would read `b:80` as an authority, the fast path pass `#x` on).
    pub target_ok: bool,
}

impl<'l> RequestLine<'l> {
    /// The line of a request with `target` as sent: absolute-form only by its scheme.
    pub fn new(method: &'l [u8], target: &'l [u8]) -> Self {
        let t = target;
        let authority = [&b"http://"[..], b"https://"]
            .iter()
            .find(|scheme| t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme))
            .map(|scheme| {
                let rest = &t[scheme.len()..];
                &rest[..rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len())]
            });
        let form =
            t.first() == Some(&b'/') || authority.is_some() || (t == b"*" && method.eq_ignore_ascii_case(b"OPTIONS"));
        RequestLine { method, authority, target_ok: form && !t.contains(&b'#') }
    }
}

/// Whether a `Host` value is `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2), or
/// empty: a reg-name or IPv4 address (unreserved, pct-encoded, sub-delims) or an IP literal in
/// brackets, then an optional port of digits. No userinfo. Checked on every request, so it
/// allocates nothing.
pub fn valid_host(h: &[u8]) -> bool {
    let (host, port) = match h.first() {
        Some(b'[') => match h.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &h[1..end];
                let ok =
                    !literal.is_empty() && literal.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !ok {
                    return false;
                }
                (&h[..0], &h[end + 1..])
            }
            None => return false,
        },
        _ => match h.iter().rposition(|&b| b == b':') {
            Some(colon) => (&h[..colon], &h[colon..]),
            None => (h, &h[..0]),
        },
    };
    let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b);
    let port_ok = port.is_empty() || (port[0] == b':' && port.len() <= 6 && port[1..].iter().all(u8::is_ascii_digit));
    host.iter().all(reg_name) && port_ok
}

/// Whether a field name with `_` in it reads as a framing field once `_` becomes `-`.
fn framing_alias(name: &[u8]) -> bool {
    [&b"content-length"[..], b"transfer-encoding"].iter().any(|f| {
        f.len() == name.len()
            && f.iter().zip(name).all(|(&a, &b)| a == b.to_ascii_lowercase() || (a == b'-' && b == b'_'))
    })
}

/// [`check_request`] on a request hyper parsed.
pub fn check_parsed<B>(req: &http::Request<B>) -> Result<(), (StatusCode, &'static str)> {
    let http11 = req.version() == http::Version::HTTP_11;
    let fields = req.headers().iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    // hyper parsed the target already: only an absolute-form one has an authority.
    let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
    let method = req.method().as_str().as_bytes();
    let path = req.uri().path_and_query().map_or("", |p| p.as_str());
    let target_ok = path.starts_with('/') || (path == "*" && method == b"OPTIONS");
    let line = RequestLine { method, authority, target_ok };
    check_request(http11, line, fields).map(|_| ())
}

/// The protocol a request asks to switch to, when Weir tunnels it: an HTTP/1.1 request whose
/// `Connection` lists `upgrade` and that has an `Upgrade` field, other than `h2c` (HTTP/2 on
/// this very connection: Weir speaks it itself, with prior knowledge).
pub fn upgrade_of<'v>(http11: bool, fields: &[(&'v [u8], &'v [u8])]) -> Option<&'v [u8]> {
    if !http11 {
        return None;
    }
    let named = |name: &'static [u8]| fields.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, v)| v);
    if !Connection::parse(named(b"connection")).upgrade {
        return None;
    }
    let protocol = named(b"upgrade").next()?;
    let h2c = tokens(std::iter::once(protocol)).any(|t| t.eq_ignore_ascii_case(b"h2c"));
    (!h2c && !protocol.trim_ascii().is_empty()).then_some(protocol)
}

/// What a response head hyper parsed from an upstream means for the two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseCheck {
    /// The upstream connection may take another request after this response.
    pub reusable: bool,
    /// The body runs until the upstream closes (a coding other than chunked): the client
    /// connection must close after it too.
    pub until_close: bool,
}

/// Checks a response head from an upstream, for the general path (Weir's codec applies the
/// same rules in `proxy::h1::response`): two `Content-Length` fields, or a 101 to a request
/// that did not ask to upgrade, are refused (502); `Content-Length` beside
/// `Transfer-Encoding` is dropped and the upstream connection not reused (RFC 9112 §6.1), as
/// after a bodiless response (`head`: the request was HEAD) that announced a body.
pub fn check_response(
    status: StatusCode,
    headers: &mut http::HeaderMap,
    head: bool,
) -> Result<ResponseCheck, &'static str> {
    check_response_to(status, headers, head, false)
}

/// [`check_response`], for a request that asked to upgrade when `upgrade` (a 101 is then
/// its answer, not an error).
pub fn check_response_to(
    status: StatusCode,
    headers: &mut http::HeaderMap,
    head: bool,
    upgrade: bool,
) -> Result<ResponseCheck, &'static str> {
    if status == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
        return Err("101 Switching Protocols to a request that did not ask to upgrade");
    }
    if headers.get_all(http::header::CONTENT_LENGTH).iter().count() > 1 {
        return Err("more than one Content-Length");
    }
    // hyper's read buffer bound is not exact; the head's size is (64 KiB, as the codec's).
    if headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() > 64 * 1024 {
        return Err("response head over 64 KiB");
    }
    let coded = headers.contains_key(http::header::TRANSFER_ENCODING);
    let mut check = ResponseCheck { reusable: true, until_close: false };
    // A bodiless response (HEAD, 204, 304) that announced a body: should its bytes come
    // anyway, late, they would be read as the next response on that connection.
    let announced = coded
        || headers.get(http::header::CONTENT_LENGTH).and_then(|v| content_length(v.as_bytes())).is_some_and(|n| n > 0);
    if (head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED) && announced {
        check.reusable = false;
        return Ok(check);
    }
    if coded {
        let codings = headers.get_all(http::header::TRANSFER_ENCODING).iter().map(http::HeaderValue::as_bytes);
        let chunked: Vec<bool> = tokens(codings).map(|c| c.eq_ignore_ascii_case(b"chunked")).collect();
        // Chunked anywhere but last (`chunked, gzip`): refused, as Weir's codec does; passed
        // on, the client would get the codings plus the chunked its own framing adds.
        if chunked.iter().rev().skip(1).any(|&c| c) {
            return Err("chunked is not the final transfer coding");
        }
        check.until_close = chunked.last() != Some(&true);
        if headers.remove(http::header::CONTENT_LENGTH).is_some() {
            check.reusable = false;
        }
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tokens() {
        let c = Connection::parse([&b"keep-alive, X-Debug"[..], b" Upgrade "].into_iter());
        assert!(c.keep_alive && c.upgrade && c.lists_others && !c.close && !c.lists_framing);
        for v in ["content-length", "close, Transfer-Encoding", "HOST"] {
            assert!(Connection::parse([v.as_bytes()].into_iter()).lists_framing, "{v}");
        }
    }

    fn check(method: &str, target: &str, fields: &[(&str, &str)]) -> Result<(), u16> {
        let line = RequestLine::new(method.as_bytes(), target.as_bytes());
        let fields = fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
        check_request(true, line, fields).map(|_| ()).map_err(|(status, _)| status.as_u16())
    }

    #[test]
    fn hosts() {
        for ok in ["", "a", "app.local", "app.local:8080", "127.0.0.1:80", "[::1]", "[::1]:8080", "xn--bcher-kva.ch"] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in ["a b", "x@a", "a:8x", "[::1", "[zz]", "a/b", "a:123456", "[]:80", "a\0"] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn request_line_rules() {
        assert_eq!(check("GET", "/", &[("Host", "a")]), Ok(()));
        assert_eq!(check("CONNECT", "a:443", &[("Host", "a:443")]), Err(405));
        // Absolute-form only by its scheme: a query that contains "://" is not one.
        assert_eq!(check("GET", "http://a/x", &[]), Ok(()));
        assert_eq!(check("GET", "HTTPS://a", &[]), Ok(()));
        assert_eq!(check("GET", "/login?next=http://x/", &[]), Err(400));
        // No userinfo, in Host or in the target.
        assert_eq!(check("GET", "/", &[("Host", "x@a")]), Err(400));
        assert_eq!(check("GET", "http://u:p@a/", &[("Host", "a")]), Err(400));
        // Framing fields spelled with `_`.
        assert_eq!(check("POST", "/", &[("Host", "a"), ("Transfer_Encoding", "chunked")]), Err(400));
        assert_eq!(check("POST", "/", &[("Host", "a"), ("content_length", "5")]), Err(400));
        assert_eq!(check("GET", "/", &[("Host", "a"), ("X_Custom", "1")]), Ok(()));
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b" 42 "), Some(42));
        for bad in ["", "+5", "-1", "0x5", "5 5", "5,5", "1e3", "9999999999999999999", " "] {
            assert_eq!(content_length(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn chunked_only_alone() {
        assert!(is_chunked(b"chunked") && is_chunked(b" Chunked"));
        for bad in ["xchunked", "chunked, identity", "gzip, chunked", "identity", "chunked;q=1", ""] {
            assert!(!is_chunked(bad.as_bytes()), "{bad}");
        }
    }
}
