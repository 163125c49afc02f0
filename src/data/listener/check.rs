//! A codec that forwards nothing: it reads each request head and checks it, for a listener
//! whose handler serves every request itself (the admin API).
//!
//! Without it, hyper would read the heads alone, and answer what it refuses (a NUL in a field,
//! a 64 KiB URI, too many fields, a bad `Content-Length`) with an empty body of its own,
//! accept what Weir's traffic listeners refuse (two equal `Content-Length` fields, or
//! `Content-Length` beside `Transfer-Encoding`), and leave a head cut short to its own timer.
//! Here every head is read within the header read timeout and checked by the rules of
//! [`http1`], the ones the proxy's codec applies; a refused one is answered in the listener's
//! [`Wording`] and the connection closes (lingering, as every refusal's); a sound one goes to
//! hyper unread ([`Forwarded::Fallback`]).

use bytes::Bytes;
use http::StatusCode;
use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{BoxError, ClientIo, ConnMetrics, Forward, Forwarded, HeadTimeout, Limits, PARK_AFTER, Peer, Wording};
use crate::data::http1::{self, MAX_HEAD, MAX_HEADERS, Refusal};

/// Read size for heads.
const HEAD_CHUNK: usize = 4096;

/// Checks every HTTP/1 request head before hyper reads it; answers refusals in `wording`.
#[derive(Debug, Clone)]
pub struct CheckHeads {
    wording: Wording,
    /// Requests refused (`weir_client_errors_total{reason="bad_request"}` where registered).
    refused: IntCounter,
}

impl CheckHeads {
    /// A head check answering refusals in `wording`, counting them in `metrics`.
    pub fn new(wording: Wording, metrics: &ConnMetrics) -> Self {
        CheckHeads { wording, refused: metrics.errors.bad_request.clone() }
    }

    async fn read(
        &self,
        io: &mut ClientIo,
        peer: &Peer,
        limits: &Limits,
        cancel: &CancellationToken,
    ) -> Result<Forwarded, BoxError> {
        let mut buf = io.take_prefix(HEAD_CHUNK);
        // Nothing pending: park after a quiet tick. A head: whole within the header read
        // timeout from its first byte.
        let mut started = !buf.is_empty();
        let timer = tokio::time::sleep(if started { limits.header_read } else { PARK_AFTER });
        tokio::pin!(timer);
        let mut searched = 0;
        loop {
            if http1::head_ended(&buf, searched) {
                return match check(&buf) {
                    Ok(()) => {
                        io.prefix = buf.freeze();
                        Ok(Forwarded::Fallback)
                    }
                    Err(refused) => self.refuse(io, peer, &refused).await.map(|()| Forwarded::Close),
                };
            }
            if buf.len() > MAX_HEAD {
                return self.refuse(io, peer, &http1::oversized(&buf)).await.map(|()| Forwarded::Close);
            }
            searched = buf.len();
            if buf.capacity() - buf.len() < HEAD_CHUNK / 4 {
                buf.reserve(HEAD_CHUNK);
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(Forwarded::Close),
                () = &mut timer => {
                    if !started {
                        return Ok(Forwarded::Park);
                    }
                    // Said, so a client that is merely slow knows why; then closed.
                    let late = Refusal {
                        status: StatusCode::REQUEST_TIMEOUT,
                        why: "request head not complete within the header read timeout".into(),
                    };
                    self.answer(io, &late).await?;
                    return Err(HeadTimeout.into());
                }
                read = io.read_buf(&mut buf) => {
                    if read? == 0 {
                        return Ok(Forwarded::Close);
                    }
                    if !started {
                        started = true;
                        timer.as_mut().reset(Instant::now() + limits.header_read);
                    }
                }
            }
        }
    }

    /// Answers a refused request, counted and logged; the connection then closes (what
    /// follows the head cannot be trusted).
    async fn refuse(&self, io: &mut ClientIo, peer: &Peer, refused: &Refusal) -> Result<(), BoxError> {
        self.refused.inc();
        tracing::info!(client = %peer.addr, status = refused.status.as_u16(), "refused a request: {}", refused.why);
        self.answer(io, refused).await
    }

    /// Writes the answer to a refusal, saying `Connection: close`.
    async fn answer(&self, io: &mut ClientIo, refused: &Refusal) -> Result<(), BoxError> {
        let (content_type, body) = (self.wording)(refused.status, &refused.why);
        io.write_all(&encode(refused.status, content_type, &body)).await?;
        Ok(())
    }
}

impl Forward for CheckHeads {
    fn forward(
        &self,
        io: &mut ClientIo,
        peer: &Peer,
        limits: &Limits,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Forwarded, BoxError>> + Send {
        self.read(io, peer, limits, cancel)
    }

    fn wording(&self) -> Wording {
        self.wording
    }
}

/// Checks the whole head at the front of `buf` as the proxy's codec does
/// ([`http1::parse_request`], [`http1::check_request`]), and that hyper, which reads it next,
/// takes its target: hyper answers a target it cannot parse into a `Uri` (a byte outside
/// URI characters) with a 400 of its own, without the listener's wording.
fn check(buf: &[u8]) -> Result<(), Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (req, _) = http1::parse_request(buf, &mut headers)?;
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Refusal::bad("incomplete request line"));
    };
    let line = http1::RequestLine::new(method.as_bytes(), target.as_bytes());
    let fields = req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    http1::check_request(version == 1, line, fields)?;
    if http::Uri::try_from(target).is_err() {
        return Err(Refusal::bad("a request target that is not a valid URI"));
    }
    Ok(())
}

/// A whole response that closes the connection.
fn encode(status: StatusCode, content_type: &str, body: &Bytes) -> Vec<u8> {
    let reason = status.canonical_reason().unwrap_or("");
    let head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_str(),
        body.len()
    );
    [head.as_bytes(), body].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(raw: &[u8]) -> Result<(), u16> {
        check(raw).map_err(|r| r.status.as_u16())
    }

    #[test]
    fn checks_by_the_proxys_rules_and_hypers_target() {
        assert_eq!(status(b"PUT /apps/a/split HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"), Ok(()));
        assert_eq!(status(b"GET /live HTTP/1.0\r\n\r\n"), Ok(()));
        for (raw, code) in [
            (&b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n"[..], 400),
            (b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX: \0\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\n\r\n", 405),
            // httparse takes `<`, `>`, `"`, and a backtick in a target; http's `Uri` does not.
            (b"GET /a<b> HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /a?\"b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ] {
            assert_eq!(status(raw), Err(code), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn answers_close_the_connection() {
        let out = encode(StatusCode::URI_TOO_LONG, "application/json", &Bytes::from_static(b"{}"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
        );
    }
}
