//! Client keep-alive on raw sockets: a quiet connection is parked (hyper's state and buffers
//! dropped) and picks up again on the next request, even one that arrived in pieces across
//! the park; `Connection: close` is honoured; shutdown closes parked connections at once.

mod common;

use std::time::Duration;

use common::two_versions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than the listener's park delay (one to two quiet ticks of 250 ms).
const PARKED: Duration = Duration::from_millis(1_000);

/// A raw client socket; bytes read past one response (a pipelined one's) stay for the next.
struct Raw {
    s: TcpStream,
    carry: Vec<u8>,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> Raw {
        Raw { s: TcpStream::connect(addr).await.unwrap(), carry: Vec::new() }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes).await
    }

    /// Sends `request` and reads its response.
    async fn exchange(&mut self, request: &[u8]) -> (String, String) {
        self.write_all(request).await.unwrap();
        self.read_response().await
    }

    /// Reads one response with a `content-length` body; returns its head and body.
    async fn read_response(&mut self) -> (String, String) {
        let mut buf = std::mem::take(&mut self.carry);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                    })
                    .expect("content-length");
                while buf.len() < end + 4 + len {
                    let n =
                        tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk)).await.unwrap().unwrap();
                    assert!(n > 0, "closed mid-body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                self.carry = buf.split_off(end + 4 + len);
                return (head, body);
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "closed before a response: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server closes the connection within `within`.
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut b = [0u8; 64];
        matches!(tokio::time::timeout(within, self.s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_serves_the_next_request() {
    let (weir, _b) = two_versions(100, 0).await;
    let mut s = Raw::connect(weir.listeners["main"]).await;
    for round in 0..3 {
        let (head, body) = s.exchange(GET).await;
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        assert!(body.contains("Version: v1"), "{body}");
        tokio::time::sleep(PARKED).await;
    }
    // Two requests in one write after a park: both answered, in order.
    s.write_all(&[GET, GET].concat()).await.unwrap();
    for _ in 0..2 {
        assert!(s.read_response().await.0.starts_with("HTTP/1.1 200"));
    }
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_split_across_a_park_is_served() {
    let (weir, _b) = two_versions(100, 0).await;
    let mut s = Raw::connect(weir.listeners["main"]).await;
    s.exchange(GET).await;
    // The first half of a head, then silence past the park, then the rest.
    s.write_all(b"GET /headers HTTP/1.1\r\nHost: shop.exa").await.unwrap();
    tokio::time::sleep(PARKED).await;
    let (head, body) = s.exchange(b"mple\r\nX-Half: two\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("host: shop.example") && body.contains("x-half: two"), "{body}");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_and_http_1_0_are_honoured() {
    let (weir, _b) = two_versions(100, 0).await;
    let mut s = Raw::connect(weir.listeners["main"]).await;
    assert!(s.exchange(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.0.starts_with("HTTP/1.1 200"));
    assert!(s.closed_within(Duration::from_secs(5)).await, "closed after Connection: close");

    let mut s = Raw::connect(weir.listeners["main"]).await;
    assert!(s.exchange(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await.0.starts_with("HTTP/1.0 200"));
    assert!(s.closed_within(Duration::from_secs(5)).await, "closed after an HTTP/1.0 request");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_parked_connections_at_once() {
    let (weir, _b) = two_versions(100, 0).await;
    let mut parked = Raw::connect(weir.listeners["main"]).await;
    parked.exchange(GET).await;
    tokio::time::sleep(PARKED).await;
    let mut fresh = Raw::connect(weir.listeners["main"]).await;
    fresh.exchange(GET).await;

    let started = std::time::Instant::now();
    let stopping = tokio::spawn(weir.shutdown());
    assert!(parked.closed_within(Duration::from_secs(5)).await, "parked connection closed");
    assert!(fresh.closed_within(Duration::from_secs(5)).await, "idle unparked connection closed");
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "no wait for idle connections: {:?}", started.elapsed());
}
