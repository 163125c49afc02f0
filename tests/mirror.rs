//! Mirroring on real sockets: the mirror version receives the configured share of requests
//! (bodies included on the fast path), marked as copies, and a mirror that takes 5 s per
//! request does not slow clients: its copies queue up to the bound, then are dropped.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, Client};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn config(primary: &Backend, mirror: SocketAddr, mirror_section: &str, fast: bool) -> String {
    format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\nfast_path = {fast}\n\
         [apps.web]\nlistener = \"main\"\nsplit = {{ v1 = 1, v2 = 0 }}\nmirror = {mirror_section}\n\
         versions.v1.endpoints = [{{ name = \"v1-0\", addr = \"{}\" }}]\n\
         versions.v2.endpoints = [{{ name = \"v2-0\", addr = \"{mirror}\" }}]\n",
        primary.addr
    )
}

/// A mirror upstream that records what it got: the copies' count, and every request's head
/// and body as text.
struct Recording {
    addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

/// An upstream answering every request after `delay` (its connections kept alive).
async fn upstream(delay: Duration) -> Recording {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // One request: the head, then a Content-Length body if any.
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    record.lock().unwrap().push(format!("{head}\n\n{body}"));
                    buf.drain(..end + 4 + len);
                    tokio::time::sleep(delay).await;
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nmirror\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Recording { addr, seen }
}

async fn settle(seen: &std::sync::Mutex<Vec<String>>, want: usize) -> usize {
    for _ in 0..200 {
        if seen.lock().unwrap().len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    seen.lock().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_gets_its_share_marked_as_copies_with_bodies() {
    let primary = Backend::spawn("v1-0", "v1").await;
    for fast in [true, false] {
        let mirror = upstream(Duration::ZERO).await;
        let weir = common::start(&config(&primary, mirror.addr, "{ version = \"v2\", percent = 25 }", fast)).await;
        let url = format!("http://{}", weir.listeners["main"]);
        let client = Client::new();
        for i in 0..200 {
            let r = client.get(&format!("{url}/get-{i}")).await;
            assert_eq!((r.status.as_u16(), r.version()), (200, "v1"), "clients get the primary's answer");
        }
        let got = settle(&mirror.seen, 50).await;
        assert!(got.abs_diff(50) <= 1, "25 % of 200 requests (exact to one), got {got}, fast_path = {fast}");
        let seen = mirror.seen.lock().unwrap().clone();
        assert!(
            seen.iter().all(|r| r.contains("x-weir-mirror: 1") && r.contains("x-forwarded-for: 127.0.0.1")),
            "{seen:?}"
        );
        // Bodies: held whole on the fast path (up to max_body), so copied there.
        if fast {
            for i in 0..8 {
                let req =
                    http::Request::post(format!("{url}/post-{i}")).body(Full::new(Bytes::from(format!("body-{i}"))));
                assert_eq!(client.send(req.unwrap()).await.unwrap().status, 200);
            }
            settle(&mirror.seen, got + 2).await;
            let seen = mirror.seen.lock().unwrap().clone();
            let posts: Vec<_> = seen.iter().filter(|r| r.starts_with("post")).collect();
            assert!(posts.len().abs_diff(2) <= 1, "25 % of 8 POSTs: {posts:?}");
            assert!(posts.iter().all(|r| r.contains("\n\nbody-")), "{posts:?}");
        }
        let metrics = client.get(&format!("http://{}/metrics", weir.admin)).await.body;
        assert!(
            metrics.contains("weir_mirror_requests_total{app=\"web\",result=\"answered\",version=\"v2\"}"),
            "{metrics}"
        );
        weir.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_taking_5_s_does_not_slow_clients() {
    let primary = Backend::spawn("v1-0", "v1").await;
    let slow = upstream(Duration::from_secs(5)).await;
    let weir =
        common::start(&config(&primary, slow.addr, "{ version = \"v2\", percent = 100, queue = 16 }", true)).await;
    let url = format!("http://{}/", weir.listeners["main"]);
    let client = Client::new();
    let served = Arc::new(AtomicUsize::new(0));
    let mut latencies = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let r = client.get(&url).await;
        latencies.push(t.elapsed());
        assert_eq!(r.status, 200);
        served.fetch_add(1, Ordering::Relaxed);
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    println!("300 requests with a 5 s mirror at 100 %: p50 {:?}, p99 {:?}", latencies[150], p99);
    assert!(p99 < Duration::from_secs(1), "client p99 {p99:?} with a 5 s mirror");
    let metrics = client.get(&format!("http://{}/metrics", weir.admin)).await.body;
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weir_mirror_requests_total{app=\"web\",result=\"dropped\",version=\"v2\"} "))
        .map_or(0, |v| v.trim().parse::<u64>().unwrap());
    assert!(dropped >= 300 - 16 - 16, "the queue of 16 bounds the copies in flight: {dropped} dropped");
    weir.shutdown().await;
}
