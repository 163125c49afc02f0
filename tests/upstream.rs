//! Weir's keep-alive connections to upstreams, on real sockets: reuse, idle close, and the
//! race of an upstream closing a kept-alive connection as a request goes out on it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Backend, Client, config, start, urls};
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuses_connections_and_closes_them_when_idle() {
    let b = Backend::spawn("web-v1-0", "v1").await;
    let extra = "[apps.web.timeouts]\nidle = \"300ms\"\n";
    let weir = start(&config(&[("v1", &[&b])], &[("v1", 100)], extra)).await;
    let (url, _) = urls(&weir);
    let client = Client::new();
    for _ in 0..50 {
        assert_eq!(client.get(&url).await.status, 200);
    }
    assert_eq!(b.connections_accepted(), 1, "50 requests in a row share one upstream connection");

    // 8 at once need at most 8 connections, and they are kept for the next burst.
    for _ in 0..3 {
        let burst: Vec<_> = (0..8)
            .map(|_| Client::new())
            .map(|c| {
                let url = url.clone();
                tokio::spawn(async move { c.get(&url).await.status })
            })
            .collect();
        for r in burst {
            assert_eq!(r.await.unwrap(), 200);
        }
    }
    let after_bursts = b.connections_accepted();
    assert!(after_bursts <= 9, "bursts of 8 reuse their connections: {after_bursts} accepted");

    // Unused past the idle timeout, they are closed by Weir.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.open_connections(), 0, "idle connections closed after the idle timeout");
    assert_eq!(client.get(&url).await.status, 200, "and a new one is opened on demand");
    assert_eq!(b.connections_accepted(), after_bursts + 1);
    weir.shutdown().await;
}

/// An upstream that answers the first request on each connection and then, on the second,
/// closes the connection without answering: what a kept-alive connection looks like when the
/// upstream's idle timeout fires just as a request is sent on it.
async fn closing_upstream() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                let mut answered = false;
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    if !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    if answered {
                        return; // closes with the second request unanswered
                    }
                    seen.clear();
                    answered = true;
                    let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                    if stream.write_all(resp).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_closed_under_a_request_fails_no_idempotent_request() {
    let (addr, accepted) = closing_upstream().await;
    let text = format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\n\
         [apps.web]\nlistener = \"main\"\n[apps.web.split]\nv1 = 100\n\
         [apps.web.versions.v1]\nendpoints = [{{ name = \"only\", addr = \"{addr}\" }}]\n"
    );
    let weir = start(&text).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    for i in 0..20 {
        let r = client.get(&url).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    // Every second request met a closing connection and went again on a fresh one.
    assert!(accepted.load(Ordering::SeqCst) >= 19, "{} connections", accepted.load(Ordering::SeqCst));
    let view = client.get(&format!("{admin}/apps/web")).await.json();
    let ep = common::endpoint(&view, "only");
    assert_eq!(ep["healthy"], true, "a stale connection is not the endpoint's failure: {ep}");

    // A POST may have been acted on: it is not sent again, and fails as a 502.
    let post = Request::post(&url).body(Full::from("order=1")).unwrap();
    let statuses = [client.send(post).await.unwrap().status, {
        let post = Request::post(&url).body(Full::from("order=2")).unwrap();
        client.send(post).await.unwrap().status
    }];
    assert!(statuses.contains(&http::StatusCode::BAD_GATEWAY), "{statuses:?}");
    weir.shutdown().await;
}
