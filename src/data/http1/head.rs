//! Reading a request head off a connection, before the field rules of
//! [`check_request`](super::check_request): where it ends, how large it may be, and parsing it.
//! Every codec of Weir's that reads request heads (the proxy's, and the admin listener's head
//! check) refuses the same heads with the same status.

use std::borrow::Cow;

use http::StatusCode;

/// Fields per head, as hyper allows.
pub const MAX_HEADERS: usize = 100;
/// A head longer than this is refused: 431 to a client (414 when its request line alone is
/// this long), 502 for an upstream's.
pub const MAX_HEAD: usize = 64 * 1024;

/// A request refused for its framing or size: the status it is answered with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 405, 408, 414, 431 or 501.
    pub status: StatusCode,
    /// Why, for the answer and the log.
    pub why: Cow<'static, str>,
}

impl Refusal {
    /// A 400 for `why`.
    pub fn bad(why: impl Into<Cow<'static, str>>) -> Self {
        Refusal { status: StatusCode::BAD_REQUEST, why: why.into() }
    }
}

impl From<(StatusCode, &'static str)> for Refusal {
    fn from((status, why): (StatusCode, &'static str)) -> Self {
        Refusal { status, why: Cow::Borrowed(why) }
    }
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

/// The refusal of a head of more than [`MAX_HEAD`] bytes (`head`: as much of it as was read):
/// 414 when the request line alone is that long, as nginx answers a long URI; 431 otherwise.
pub fn oversized(head: &[u8]) -> Refusal {
    if head.iter().take(MAX_HEAD).any(|&b| b == b'\n') {
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head over 64 KiB").into()
    } else {
        (StatusCode::URI_TOO_LONG, "request line over 64 KiB").into()
    }
}

/// Parses the request head at the front of `buf` (whole: [`head_ended`] found its end) into
/// `headers`, and says how long it is. Refused: a head that does not parse (400: obs-fold, a
/// space before a colon, NUL or another CTL, a bare CR, a bad request line), more than
/// [`MAX_HEADERS`] fields or more than [`MAX_HEAD`] bytes (431, or 414).
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<(httparse::Request<'h, 'b>, usize), Refusal> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(Refusal::bad("a request head that does not parse")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err((StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "over 100 header fields").into());
        }
        Err(e) => return Err(Refusal::bad(format!("invalid request head: {e}"))),
    };
    if len > MAX_HEAD {
        return Err(oversized(&buf[..len]));
    }
    Ok((req, len))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn status(raw: &[u8]) -> Result<usize, u16> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        parse_request(raw, &mut headers).map(|(_, len)| len).map_err(|r| r.status.as_u16())
    }

    #[test]
    fn refuses_what_does_not_parse_and_what_is_too_large() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"), Ok(27));
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        ] {
            assert_eq!(status(bad), Err(400), "{}", String::from_utf8_lossy(bad));
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), Err(431));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status(big.as_bytes()), Err(431));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status(long.as_bytes()), Err(414));
        assert_eq!(oversized(&long.as_bytes()[..MAX_HEAD]).status, StatusCode::URI_TOO_LONG);
        assert_eq!(oversized(&big.as_bytes()[..MAX_HEAD]).status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
}
