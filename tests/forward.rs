//! The HTTP/1.1 fast path on real sockets: every response framing forwarded byte for byte,
//! pipelining, HEAD, informational responses, header rewriting, buffered request bodies,
//! broken upstreams, and the hand-over to hyper for what the fast path leaves alone.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Backend, Client, config, start, urls};
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNKED: &[&[u8]] = &[b"5\r\nhello\r\n", b"6;ext=1\r\n wor", b"ld\r\n", b"0\r\nx-trailer: 1\r\n", b"\r\n"];
const BIG: usize = 1 << 20;

/// An upstream answering by path with exact bytes: `/len`, `/chunked` (written in pieces),
/// `/until-close` (no length: the body ends when the connection does), `/conn-close`,
/// `/early` (103 then 200), `/204`, `/bad` (not HTTP), `/big` (1 MiB), `/headers` (the request
/// head as the body), `/body` (the method and request body). Counts accepted connections.
async fn scripted() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_scripted(stream));
        }
    });
    (addr, accepted)
}

async fn serve_scripted(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        let text = String::from_utf8_lossy(&head).to_string();
        let length = text
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0usize);
        while buf.len() < length {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf.drain(..length).collect::<Vec<u8>>()).to_string();
        let mut line = text.split(' ');
        let (method, path) = (line.next().unwrap().to_string(), line.next().unwrap().to_string());
        let ok = |body: &str| format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        let result = match path.split('?').next().unwrap_or_default() {
            "/len" if method == "HEAD" => s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").await,
            "/len" => s.write_all(ok("hello").as_bytes()).await,
            "/headers" => s.write_all(ok(&text).as_bytes()).await,
            "/body" => s.write_all(ok(&format!("{method} {body}")).as_bytes()).await,
            "/chunked" => {
                s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
                for piece in CHUNKED {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if s.write_all(piece).await.is_err() {
                        return;
                    }
                }
                Ok(())
            }
            "/until-close" => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil ").await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = s.write_all(b"close").await;
                return;
            }
            "/conn-close" => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbye\n").await;
                return;
            }
            "/early" => {
                s.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n").await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                s.write_all(ok("late").as_bytes()).await
            }
            "/204" => s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await,
            "/bad" => {
                let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
                return;
            }
            "/big" => {
                let body = vec![b'x'; BIG];
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n");
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(&body).await
            }
            _ => s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await,
        };
        if result.is_err() {
            return;
        }
    }
}

async fn weir_in_front_of(addr: SocketAddr) -> weir::Running {
    let text = format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\n\
         [apps.web]\nlistener = \"main\"\n[apps.web.split]\nv1 = 100\n\
         [apps.web.versions.v1]\nendpoints = [{{ name = \"only\", addr = \"{addr}\" }}]\n"
    );
    start(&text).await
}

/// Writes `request` on a new connection and reads until Weir closes it.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("Weir closes").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_every_framing_and_reuses_the_upstream_connection() {
    let (addr, accepted) = scripted().await;
    let weir = weir_in_front_of(addr).await;
    let (url, _) = urls(&weir);
    let client = Client::new();
    for _ in 0..3 {
        let r = client.get(&format!("{url}/len")).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "hello"));
    }
    let r = client.get(&format!("{url}/chunked")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "hello world"));
    let r = client.get(&format!("{url}/big")).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, BIG));
    assert!(r.body.bytes().all(|b| b == b'x'));
    let r = client.get(&format!("{url}/204")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (204, ""));
    let r = client.get(&format!("{url}/early")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "late"), "the 103 is skipped, as hyper's client does");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "every response ended cleanly: one upstream connection");

    // A body that runs to the upstream's close: whole, the client told to close too, and the
    // upstream connection not reused.
    let r = client.get(&format!("{url}/until-close")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "until close"));
    assert_eq!(r.headers["connection"], "close");
    let r = client.get(&format!("{url}/conn-close")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "bye\n"));
    assert!(r.headers.get("connection").is_none(), "the upstream's Connection is its own");
    assert_eq!(client.get(&format!("{url}/len")).await.body, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "closed upstream connections are not reused");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_head_are_answered_in_order_byte_for_byte() {
    let (addr, _) = scripted().await;
    let weir = weir_in_front_of(addr).await;
    let got = raw(
        weir.listeners["main"],
        b"GET /len HTTP/1.1\r\nHost: a\r\n\r\nGET /chunked HTTP/1.1\r\nHost: a\r\n\r\n\
          HEAD /len HTTP/1.1\r\nHost: a\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let chunked: Vec<u8> = CHUNKED.concat();
    let want = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello\
         HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{}\
         HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n\
         HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        String::from_utf8(chunked).unwrap()
    );
    assert_eq!(got, want);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_request_heads_like_the_general_path() {
    let (addr, _) = scripted().await;
    let weir = weir_in_front_of(addr).await;
    let got = raw(
        weir.listeners["main"],
        b"GET /headers?q=1 HTTP/1.1\r\nHost: app.local:8080\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\n\
          TE: trailers\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
          X-Keep: yes\r\n\r\n",
    )
    .await;
    let body = got.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(
        body,
        "GET /headers?q=1 HTTP/1.1\r\nHost: app.local:8080\r\nX-Keep: yes\r\nte: trailers\r\n\
         x-forwarded-for: 203.0.113.9, 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: app.local:8080\r\n\r\n"
    );
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upstream_head_is_a_502_and_the_connection_goes_on() {
    let (addr, accepted) = scripted().await;
    let weir = weir_in_front_of(addr).await;
    let got = raw(
        weir.listeners["main"],
        b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\nHEAD /bad HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /len HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (first, rest) = got.split_once("weir: upstream connection failed\n").expect("a 502 with a body");
    assert!(first.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{got}");
    assert!(rest.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{got}");
    assert!(!rest.contains("weir: upstream connection failed"), "no body for HEAD: {got}");
    assert!(rest.ends_with("connection: close\r\n\r\nhello"), "{got}");
    assert!(accepted.load(Ordering::SeqCst) >= 3, "a broken connection is not reused");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_up_to_64_kib_are_read_whole_and_forwarded_with_their_head() {
    let (addr, accepted) = scripted().await;
    let weir = weir_in_front_of(addr).await;
    let listener = weir.listeners["main"];
    // Pipelined: a body, then a request without one, then a body that says close.
    let got = raw(
        listener,
        b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /len HTTP/1.1\r\nHost: a\r\n\r\n\
          PUT /body HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nPOST hello\
         HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello\
         HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nPUT abc"
    );

    // A body that arrives in pieces, well after its head, goes upstream whole.
    let mut s = TcpStream::connect(listener).await.unwrap();
    let body = "x".repeat(40_000);
    let head = format!("POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    for piece in body.as_bytes().chunks(15_000) {
        tokio::time::sleep(Duration::from_millis(30)).await;
        s.write_all(piece).await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{}", &out[..100.min(out.len())]);
    assert!(out.ends_with(&format!("\r\n\r\nPOST {body}")), "the body whole, in one request");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one upstream connection for all of it");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_fast_path_leaves_alone_goes_through_hyper_on_the_same_connection() {
    let b = Backend::spawn("web-v1-0", "v1").await;
    let weir = start(&config(&[("v1", &[&b])], &[("v1", 100)], "")).await;
    let (url, _) = urls(&weir);
    let listener = weir.listeners["main"];
    // On one connection: fast, then a chunked body (hyper streams it), then fast again once
    // hyper hands the connection back.
    let got = raw(
        listener,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          6\r\na body\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(got.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{got}");
    assert!(got.contains("a body"), "{got}");

    // A body over 64 KiB is streamed by hyper, not buffered.
    let client = Client::new();
    let big = "y".repeat(200_000);
    let post = Request::post(format!("{url}/echo")).body(Full::from(big.clone())).unwrap();
    let r = client.send(post).await.unwrap();
    assert_eq!((r.status.as_u16(), r.body.len()), (200, big.len()));
    assert_eq!(client.get(&url).await.status, 200);

    // HTTP/1.0, an absolute-form target, an invalid head and a signed length: hyper's answers.
    let got = raw(listener, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n") && got.ends_with("Version: v1\n"), "{got}");
    let target = format!("GET http://{listener}/ HTTP/1.1\r\nConnection: close\r\n\r\n");
    let got = raw(listener, target.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    let got = raw(listener, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    let got = raw(listener, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc").await;
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    weir.shutdown().await;
}

/// An upstream that answers every request and closes a connection left idle for 50 ms (a
/// short keep-alive timeout, as Node's 5 s one is to clients slower than that).
async fn idle_closing() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return, // idle too long, or closed: the socket closes
                        }
                    }
                    buf.clear();
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_closed_an_idle_connection_is_not_sent_a_request_on_it() {
    let (addr, accepted) = idle_closing().await;
    let weir = weir_in_front_of(addr).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    for i in 0..5 {
        assert_eq!(client.get(&url).await.status, 200, "GET {i}");
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Not idempotent, so no retry would save it: the dead socket must be noticed at
        // check-out, before anything is written on it.
        let got = raw(
            weir.listeners["main"],
            b"POST /order HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "POST {i}: {got}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10, "a fresh connection for every request after an idle close");
    let view = client.get(&format!("{admin}/apps/web")).await.json();
    assert_eq!(common::endpoint(&view, "only")["healthy"], true);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_body_is_sent_again_after_a_refused_connection() {
    let live = Backend::spawn("live", "v1").await;
    let dead = Backend::spawn("dead", "v1").await;
    // No probes, strict rotation: every other request meets the dead endpoint until passive
    // ejection takes it out.
    let cfg = config(&[("v1", &[&live, &dead])], &[("v1", 100)], "balance = \"round_robin\"");
    dead.kill().await;
    let weir = start(&cfg).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    for i in 0..10 {
        // Not idempotent, but a refused connection means nothing reached the upstream, and
        // Weir holds the whole body: it goes to the live endpoint.
        let post = Request::post(format!("{url}/echo")).body(Full::from(format!("order={i}"))).unwrap();
        let r = client.send(post).await.unwrap();
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, format!("order={i}").as_str()), "POST {i}");
    }
    let metrics = client.get(&format!("{admin}/metrics")).await.body;
    let retries: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("weir_retries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(retries >= 1, "the dead endpoint was tried and the body sent again: {retries} retries");
    weir.shutdown().await;
}
