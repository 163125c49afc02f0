//! Finding where a chunked body ends (RFC 9112 §7.1) while its bytes are forwarded as they
//! are: the fast path does not decode chunks, it follows their sizes and checks every line,
//! so what it passes on is chunked coding any strict recipient reads the same way. The
//! listener uses it too, to stop hyper at the end of a chunked request body (`ClientIo`'s
//! fence), so that hyper never reads the next request's head.

/// Where a scan is within a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk-size line's hex digits (`digits` read so far).
    Size {
        digits: u8,
    },
    /// In a chunk extension, up to the line end.
    Extension,
    /// After the CR that ends a size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// After chunk data: its CRLF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// After the CR of a trailer line.
    TrailerLf,
    /// After the CR of the final empty line.
    FinalLf,
    Done,
}

/// The longest chunk extension, and the most trailer bytes, a body may carry: bounded, so a
/// peer cannot stream an endless line (hyper bounds extensions likewise).
const MAX_EXTENSION: u32 = 4096;
const MAX_TRAILERS: u32 = 64 * 1024;

/// Follows a chunked body across reads, strictly: every line ends in CRLF (a bare LF or CR
/// is refused, never passed on), sizes are hex digits only and fit in 60 bits, extensions and
/// trailers are bounded and hold no control characters.
#[derive(Debug, Clone)]
pub struct Scanner {
    state: State,
    /// The size being read, then the data left in the current chunk.
    size: u64,
    /// Bytes of the current extension, or of the trailers so far.
    line: u32,
}

/// The body is not valid chunked coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body")]
pub struct Invalid;

impl Default for Scanner {
    fn default() -> Self {
        Scanner { state: State::Size { digits: 0 }, size: 0, line: 0 }
    }
}

/// A byte that may appear inside an extension or a trailer line: visible ASCII, SP, HTAB,
/// or obs-text.
fn in_line(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

impl Scanner {
    /// Scans the next bytes of the body. `Some(n)`: the body ends after the first `n` of them;
    /// `None`: all of them belong to it and more follow.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, Invalid> {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == State::Data {
                let take = self.size.min((bytes.len() - i) as u64);
                self.size -= take;
                i += take as usize;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::Size { digits }, _) if b.is_ascii_hexdigit() => {
                    // 15 hex digits is 2^60 bytes; more is no size anyone sends.
                    if digits >= 15 {
                        return Err(Invalid);
                    }
                    self.size = self.size << 4 | u64::from((b as char).to_digit(16).unwrap_or(0));
                    State::Size { digits: digits + 1 }
                }
                (State::Size { digits: 0 }, _) => return Err(Invalid),
                (State::Size { .. }, b';' | b' ' | b'\t') => {
                    self.line = 0;
                    State::Extension
                }
                (State::Size { .. } | State::Extension, b'\r') => State::SizeLf,
                (State::Extension, _) if in_line(b) => {
                    self.line += 1;
                    if self.line > MAX_EXTENSION {
                        return Err(Invalid);
                    }
                    State::Extension
                }
                (State::SizeLf, b'\n') => {
                    if self.size == 0 {
                        self.line = 0;
                        State::TrailerStart
                    } else {
                        State::Data
                    }
                }
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size { digits: 0 },
                (State::TrailerStart, b'\r') => State::FinalLf,
                (State::Trailer, b'\r') => State::TrailerLf,
                (State::TrailerStart | State::Trailer, _) if in_line(b) => {
                    self.line += 1;
                    if self.line > MAX_TRAILERS {
                        return Err(Invalid);
                    }
                    State::Trailer
                }
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::FinalLf, b'\n') => State::Done,
                _ => return Err(Invalid),
            };
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Whether the whole body was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"5\r\nhello\r\n1a;name=v\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n";

    #[test]
    fn finds_the_end_whole_and_in_every_split() {
        let mut all = BODY.to_vec();
        all.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(Scanner::default().scan(&all), Ok(Some(BODY.len())));
        for split in 0..BODY.len() {
            let mut s = Scanner::default();
            assert_eq!(s.scan(&BODY[..split]), Ok(None), "{split}");
            assert_eq!(s.scan(&all[split..]), Ok(Some(BODY.len() - split)), "{split}");
            assert!(s.is_done());
        }
    }

    #[test]
    fn no_trailer() {
        assert_eq!(Scanner::default().scan(b"0\r\n\r\n"), Ok(Some(5)));
        assert_eq!(Scanner::default().scan(b"3\r\nabc\r\n0\r\n\r\n"), Ok(Some(13)));
    }

    #[test]
    fn rejects_what_is_not_strictly_chunked() {
        let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(5000));
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"fffffffffffffffff\r\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"3\nabc\n0\n\n",
            b"3\r\nabc\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"5\rhello",
            b"5;a\0b\r\n",
            long_ext.as_bytes(),
        ] {
            assert_eq!(Scanner::default().scan(bad), Err(Invalid), "{}", String::from_utf8_lossy(bad));
        }
    }
}
