//! The field rules every HTTP/1 path applies, on raw bytes: `Connection` tokens,
//! `Content-Length` and `Transfer-Encoding` values. One parser each, used by Weir's codec,
//! by the general path's header rewriting and by the listener.

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
