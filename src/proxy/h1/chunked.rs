//! Finding where a chunked body ends (RFC 9112 §7.1) while its bytes are forwarded as they
//! are: the fast path does not decode chunks, it only follows their sizes.

/// Where a scan is within a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk-size line's hex digits (`digits` read so far).
    Size {
        digits: u8,
    },
    /// In a chunk extension, up to the line end.
    Extension,
    /// After a CR that ends a size line.
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
    /// After the CR of the final empty line.
    FinalLf,
    Done,
}

/// Follows a chunked body across reads.
#[derive(Debug, Clone)]
pub struct Scanner {
    state: State,
    /// The size being read, then the data left in the current chunk.
    size: u64,
}

/// The body is not valid chunked coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body")]
pub struct Invalid;

impl Default for Scanner {
    fn default() -> Self {
        Scanner { state: State::Size { digits: 0 }, size: 0 }
    }
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
                    // 16 hex digits fill a u64; more is no size anyone sends.
                    if digits >= 15 {
                        return Err(Invalid);
                    }
                    self.size = self.size << 4 | u64::from((b as char).to_digit(16).unwrap_or(0));
                    State::Size { digits: digits + 1 }
                }
                (State::Size { digits: 0 }, _) => return Err(Invalid),
                (State::Size { .. }, b';' | b' ' | b'\t') => State::Extension,
                (State::Size { .. } | State::Extension, b'\r') => State::SizeLf,
                (State::Size { .. } | State::Extension | State::SizeLf, b'\n') => self.size_line_done(),
                (State::Extension, _) => State::Extension,
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataCr | State::DataLf, b'\n') => State::Size { digits: 0 },
                (State::TrailerStart, b'\r') => State::FinalLf,
                (State::TrailerStart | State::FinalLf, b'\n') => State::Done,
                (State::Trailer, b'\n') => State::TrailerStart,
                (State::TrailerStart | State::Trailer, _) => State::Trailer,
                _ => return Err(Invalid),
            };
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn size_line_done(&mut self) -> State {
        if self.size == 0 { State::TrailerStart } else { State::Data }
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
    fn bare_lf_line_ends_and_no_trailer() {
        assert_eq!(Scanner::default().scan(b"3\nabc\n0\n\n"), Ok(Some(9)));
        assert_eq!(Scanner::default().scan(b"0\r\n\r\n"), Ok(Some(5)));
    }

    #[test]
    fn rejects_what_is_not_chunked() {
        for bad in [&b"x\r\n"[..], b"\r\n", b"5\r\nhelloXX", b"fffffffffffffffff\r\n"] {
            assert_eq!(Scanner::default().scan(bad), Err(Invalid), "{}", String::from_utf8_lossy(bad));
        }
    }
}
