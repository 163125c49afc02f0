//! Response heads from upstreams as Weir's codec checks and rewrites them. Weir owns the
//! framing it sends: it works out where the body ends from what it read (RFC 9112 §6.3),
//! drops the upstream's `Content-Length` and `Transfer-Encoding`, and writes its own.

use super::head::{connection, field, is_hop_by_hop, listed, number, values};
use crate::data::http1 as fields;

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, or 204, 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding, forwarded as it comes once checked.
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
/// fields without hop-by-hop ones and without its framing fields, the framing Weir derived,
/// and `Connection: close` when `close` or when the body runs to the end of the upstream
/// connection. `head` says the request was HEAD. Informational (1xx) heads are not passed here.
/// An invalid or duplicated `Content-Length` is an error (502 to the client).
pub fn encode(
    resp: &httparse::Response<'_, '_>,
    head: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Response, &'static str> {
    let status = resp.code.ok_or("no status code")?;
    let conn = connection(resp.headers);
    let mut length = None;
    for v in values(resp.headers, "content-length") {
        if length.is_some() {
            return Err("more than one Content-Length");
        }
        length = Some(fields::content_length(v).ok_or("invalid Content-Length")?);
    }
    let codings: Vec<&[u8]> = fields::tokens(values(resp.headers, "transfer-encoding")).collect();
    let coded = values(resp.headers, "transfer-encoding").next().is_some();
    // Chunked is applied once, last; chunked anywhere else is a broken message.
    let chunked = codings.last().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
    if codings[..codings.len().saturating_sub(1)].iter().any(|c| c.eq_ignore_ascii_case(b"chunked")) {
        return Err("chunked applied more than once");
    }
    let bodiless = head || status == 204 || status == 304;
    let framing = match (bodiless, coded, chunked, length) {
        (true, ..) => Framing::Empty,
        (false, true, true, _) => Framing::Chunked,
        (false, true, false, _) => Framing::UntilClose,
        (false, false, _, Some(n)) => Framing::Length(n),
        (false, false, _, None) => Framing::UntilClose,
    };
    let close = close || framing == Framing::UntilClose;
    // Reused only when the message said unambiguously where it ends: not with both framing
    // fields (RFC 9112 §6.1: close after), and not a bodiless response (HEAD, 204, 304) that
    // announced a body: should the upstream send it anyway, late, its bytes would be read as
    // the next client's response. (Costs a new upstream connection after such a HEAD.)
    let ambiguous = (coded && length.is_some()) || (bodiless && (coded || length.is_some_and(|n| n > 0)));
    let reusable = resp.version == Some(1) && !conn.close && framing != Framing::UntilClose && !ambiguous;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    number(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if is_hop_by_hop(h.name) || h.name.eq_ignore_ascii_case("content-length") || listed(&conn, resp.headers, h.name)
        {
            continue;
        }
        field(out, h.name.as_bytes(), h.value);
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            number(out, n);
            out.extend_from_slice(b"\r\n");
        }
        // Forwarded chunk by chunk as it came: codings applied before chunked (gzip, …) stay
        // named, or the client would take the coded bytes for the representation.
        Framing::Chunked => {
            out.extend_from_slice(b"transfer-encoding: ");
            for (i, c) in codings.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(c);
            }
            out.extend_from_slice(b"\r\n");
        }
        // Other codings, until close: the client decodes them.
        Framing::UntilClose if coded => {
            for v in values(resp.headers, "transfer-encoding") {
                field(out, b"transfer-encoding", v);
            }
        }
        Framing::UntilClose => {}
        // A HEAD or 304 response's length describes the representation, not this message.
        Framing::Empty if status != 204 && !coded => {
            if let Some(n) = length {
                out.extend_from_slice(b"content-length: ");
                number(out, n);
                out.extend_from_slice(b"\r\n");
            }
        }
        Framing::Empty => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Response { status, framing, reusable, close })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(raw: &[u8], head: bool, close: bool) -> Result<(Response, String), &'static str> {
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut h);
        assert!(resp.parse(raw).unwrap().is_complete());
        let mut out = Vec::new();
        let r = encode(&resp, head, close, &mut out)?;
        Ok((r, String::from_utf8(out).unwrap()))
    }

    #[test]
    fn frames_responses_per_rfc_9112() {
        let (r, out) =
            response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\n", false, false).unwrap();
        assert_eq!((r.framing, r.reusable, r.close), (Framing::Length(5), true, false));
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");

        let (r, out) =
            response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", false, true)
                .unwrap();
        assert_eq!((r.framing, r.close, r.reusable), (Framing::Chunked, true, false));
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");

        let (r, out) = response(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n", false, false).unwrap();
        assert_eq!((r.framing, r.reusable, r.close), (Framing::UntilClose, false, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nServer: old\r\nconnection: close\r\n\r\n");

        let (r, out) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false).unwrap();
        assert_eq!(r.framing, Framing::Empty);
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        let (r, _) = response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false, false).unwrap();
        assert_eq!((r.framing, r.reusable), (Framing::Empty, false));
        let (r, _) = response(b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n", false, false).unwrap();
        assert_eq!((r.framing, r.reusable), (Framing::Empty, true));
        let (r, out) =
            response(b"HTTP/1.1 503 \r\nConnection: close, X-Debug\r\nX-Debug: 1\r\n\r\n", false, false).unwrap();
        assert_eq!((r.status, r.framing, r.reusable), (503, Framing::UntilClose, false));
        assert_eq!(out, "HTTP/1.1 503 \r\nconnection: close\r\n\r\n");
    }

    #[test]
    fn framing_listed_in_connection_is_still_weirs() {
        let (r, out) =
            response(b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n", false, false)
                .unwrap();
        assert_eq!(r.framing, Framing::Length(5));
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        let (r, out) = response(
            b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
    }

    #[test]
    fn a_204_that_announces_a_body_is_not_reused() {
        let (r, out) = response(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", false, false).unwrap();
        assert_eq!((r.framing, r.reusable), (Framing::Empty, false));
        assert_eq!(out, "HTTP/1.1 204 No Content\r\n\r\n");
        let (r, _) = response(b"HTTP/1.1 204 No Content\r\n\r\n", false, false).unwrap();
        assert!(r.reusable);
    }

    #[test]
    fn refuses_bad_lengths() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        ] {
            assert!(response(raw, false, false).is_err(), "{}", String::from_utf8_lossy(raw));
        }
        let (_, out) = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, false).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", "the gzip coding stays named");
        let (r, out) = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, false).unwrap();
        assert_eq!((r.framing, r.close), (Framing::UntilClose, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\nconnection: close\r\n\r\n");
    }
}
