//! Property tests of the codec's parsers on generated and mutated input, with fixed seeds so
//! a failure reproduces: the chunked scanner finds the same end however its input is split,
//! and a request head the codec forwards always has unambiguous framing, whatever fields were
//! thrown at it. (Random bytes must never panic either.)

use super::chunked::Scanner;
use super::request::{self, Request};

/// A valid chunked body with random sizes, extensions and trailers.
fn chunked_body(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.usize(0..5) {
        let size = rng.usize(1..300);
        out.extend_from_slice(format!("{size:x}").as_bytes());
        if rng.bool() {
            out.extend_from_slice(b";name=\"v\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend((0..size).map(|_| rng.u8(..)));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    if rng.bool() {
        out.extend_from_slice(b"X-Checksum: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Scans `bytes` fed in the given pieces.
fn scan_split(bytes: &[u8], cuts: &[usize]) -> Result<Option<usize>, super::chunked::Invalid> {
    let mut s = Scanner::default();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        if cut < at {
            continue;
        }
        if let Some(n) = s.scan(&bytes[at..cut])? {
            return Ok(Some(at + n));
        }
        at = cut;
    }
    Ok(None)
}

#[test]
fn chunked_scanner_is_split_invariant() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_c0de);
    for _ in 0..5_000 {
        let mut body = chunked_body(&mut rng);
        let valid_len = body.len();
        // Half the time, a few random bytes changed or inserted.
        let mutated = rng.bool();
        if mutated {
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..body.len());
                if rng.bool() {
                    body[at] = rng.u8(..);
                } else {
                    body.insert(at, rng.u8(..));
                }
            }
        }
        body.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        let whole = Scanner::default().scan(&body);
        if !mutated {
            assert_eq!(whole, Ok(Some(valid_len)));
        }
        let mut cuts: Vec<usize> = (0..rng.usize(0..6)).map(|_| rng.usize(..=body.len())).collect();
        cuts.sort_unstable();
        assert_eq!(scan_split(&body, &cuts), whole, "cuts {cuts:?} of {:?}", String::from_utf8_lossy(&body));
    }
}

/// Request heads built from fields chosen to collide: framing, Host and Connection variants.
fn request_head(rng: &mut fastrand::Rng) -> String {
    const FIELDS: &[&str] = &[
        "Host: a",
        "Host: b",
        "Host: ",
        "Content-Length: 5",
        "Content-Length: 0",
        "Content-Length: +5",
        "Content-Length: 5, 5",
        "Content-Length: 70000",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked, identity",
        "Connection: close",
        "Connection: keep-alive, X-A",
        "Connection: content-length",
        "Connection: Transfer-Encoding",
        "Connection: host",
        "Expect: 100-continue",
        "Upgrade: websocket",
        "X-A: 1",
        "X-Forwarded-For: 192.0.2.1",
    ];
    let method = ["GET", "POST", "HEAD", "PUT"][rng.usize(..4)];
    let target = ["/", "/x?y=1", "http://a/x", "*"][rng.usize(..4)];
    let version = if rng.u8(..10) == 0 { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut head = format!("{method} {target} {version}\r\n");
    // Mostly one plain Host first, so the generator reaches the forwarding path often.
    if rng.u8(..4) != 0 {
        head.push_str("Host: a\r\n");
    }
    for _ in 0..rng.usize(0..6) {
        head.push_str(FIELDS[rng.usize(..FIELDS.len())]);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

#[test]
fn forwarded_heads_have_unambiguous_framing() {
    let mut rng = fastrand::Rng::with_seed(0x0dd_f00d);
    let mut forwarded = 0;
    for _ in 0..20_000 {
        let head = request_head(&mut rng);
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut fields);
        let Ok(httparse::Status::Complete(len)) = req.parse(head.as_bytes()) else { continue };
        let count = |name: &str| req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
        match request::inspect(&req) {
            Request::Forward { body, host, .. } => {
                forwarded += 1;
                assert_eq!(count("host"), 1, "{head}");
                assert_eq!(count("transfer-encoding"), 0, "{head}");
                assert!(count("content-length") <= 1, "{head}");
                let lower = head.to_ascii_lowercase();
                assert!(!lower.contains("connection: content-length") && !lower.contains("connection: host"), "{head}");
                // What goes upstream parses back with exactly the framing Weir read.
                let payload = vec![b'x'; body];
                let mut out = Vec::new();
                request::encode(&req, host, b"127.0.0.1", "http", &payload, &mut out);
                let mut up_fields = [httparse::EMPTY_HEADER; 24];
                let mut up = httparse::Request::new(&mut up_fields);
                let Ok(httparse::Status::Complete(up_len)) = up.parse(&out) else { panic!("{head}") };
                let lengths: Vec<&[u8]> = up
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| h.value)
                    .collect();
                assert!(lengths.len() <= 1, "{head}");
                assert_eq!(lengths.first().map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap()), body);
                assert_eq!(out.len() - up_len, body, "{head}");
                assert!(up.headers.iter().all(|h| !h.name.eq_ignore_ascii_case("transfer-encoding")));
            }
            Request::Fallback(_) | Request::Reject(..) => {}
        }
        let _ = len;
    }
    assert!(forwarded > 1_000, "the generator reaches the forwarding path ({forwarded})");
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = fastrand::Rng::with_seed(42);
    for _ in 0..20_000 {
        let mut bytes = b"GET / HTTP/1.1\r\n".to_vec();
        const ALPHABET: &[u8] = b"\r\n :;,aZ0\t\x00\x7fHost-Content-Length";
        bytes.extend((0..rng.usize(0..200)).map(|_| ALPHABET[rng.usize(..ALPHABET.len())]));
        bytes.extend_from_slice(b"\r\n\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut fields);
        if let Ok(httparse::Status::Complete(_)) = req.parse(&bytes) {
            let _ = request::inspect(&req);
        }
        let _ = Scanner::default().scan(&bytes);
    }
}
