//! Data-plane behaviour on real sockets: headers, streaming, errors, h2c, host routing.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Backend, ChannelBody, Client, start, two_versions, urls};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_headers_and_drops_hop_by_hop() {
    let (weir, _b) = two_versions(100, 0).await;
    let (url, _) = urls(&weir);
    let req = Request::get(format!("{url}/headers"))
        .header("host", "shop.example:8080")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-custom", "kept")
        .body(Full::default())
        .unwrap();
    let r = Client::new().send(req).await.unwrap();
    assert_eq!(r.status, 200);
    let seen: Vec<&str> = r.body.lines().collect();
    assert!(seen.contains(&"host: shop.example:8080"), "{seen:?}");
    assert!(seen.contains(&"x-custom: kept"));
    assert!(seen.contains(&"x-forwarded-for: 203.0.113.7, 127.0.0.1"), "{seen:?}");
    assert!(seen.contains(&"x-forwarded-proto: http"));
    assert!(seen.contains(&"x-forwarded-host: shop.example:8080"));
    for gone in ["x-private", "keep-alive"] {
        assert!(!seen.iter().any(|l| l.starts_with(&format!("{gone}:"))), "{gone} was forwarded: {seen:?}");
    }
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_without_buffering() {
    let (weir, _b) = two_versions(100, 0).await;
    let (url, _) = urls(&weir);
    // Request body: send one chunk, read its echo back before sending the next. A proxy that
    // buffered the whole request body would never return the first echo, and this would hang
    // until the timeout.
    let client: HyperClient<_, ChannelBody> = HyperClient::builder(TokioExecutor::new()).build_http();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let req = Request::post(format!("{url}/echo")).body(ChannelBody(rx)).unwrap();
    tx.send(Bytes::from_static(b"ping-1")).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await.unwrap().unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("first echo streamed");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "ping-1");
    tx.send(Bytes::from_static(b"ping-2")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "ping-2");

    // Response body: the backend holds its second chunk until released.
    let backend_release = _b[0].release.clone();
    let backend_release2 = _b[1].release.clone();
    let plain: HyperClient<_, Full<Bytes>> = HyperClient::builder(TokioExecutor::new()).build_http();
    let resp = plain.get(format!("{url}/drip").parse().unwrap()).await.unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("first chunk streamed");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "first\n");
    backend_release.notify_one();
    backend_release2.notify_one();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "second\n");

    // A large body arrives intact.
    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = plain.request(Request::post(format!("{url}/echo")).body(Full::new(Bytes::from(big.clone()))).unwrap());
    let got = r.await.unwrap().into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), big.len());
    assert!(got == big);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_is_502_and_slow_is_504_with_a_text_body() {
    let slow = Backend::spawn("slow", "v1").await;
    let dead = Backend::spawn("dead", "v2").await;
    let cfg = common::config(
        &[("v1", &[&slow]), ("v2", &[&dead])],
        &[("v1", 1), ("v2", 0)],
        "timeouts = { request = \"300ms\", connect = \"500ms\" }",
    );
    dead.kill().await;
    let weir = start(&cfg).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    let r = client.get(&format!("{url}/slow")).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.body, "weir: upstream timed out\n");
    client.call("POST", &format!("{admin}/apps/web/promote"), r#"{"version":"v2"}"#).await;
    let r = client.get(&url).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body, "weir: upstream unreachable\n");
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_h2c_clients() {
    let (weir, _b) = two_versions(0, 100).await;
    let (url, _) = urls(&weir);
    let client: HyperClient<_, Full<Bytes>> = HyperClient::builder(TokioExecutor::new()).http2_only(true).build_http();
    for _ in 0..10 {
        let resp = client.get(url.parse().unwrap()).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"Host: web-v2-"), "{body:?}");
    }
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_share_a_listener_by_host() {
    let web = Backend::spawn("web-0", "v1").await;
    let api = Backend::spawn("api-0", "stable").await;
    let cfg = format!(
        r#"
[admin]
addr = "127.0.0.1:0"
[listeners.main]
addr = "127.0.0.1:0"
[apps.web]
listener = "main"
hosts = ["web.example"]
split = {{ v1 = 1 }}
versions.v1.endpoints = [{{ addr = "{}", name = "web-0" }}]
[apps.api]
listener = "main"
hosts = ["api.example"]
split = {{ stable = 1 }}
versions.stable.endpoints = [{{ addr = "{}", name = "api-0" }}]
"#,
        web.addr, api.addr
    );
    let weir = start(&cfg).await;
    let (url, _) = urls(&weir);
    let client = Client::new();
    let get = |host: &'static str| Request::get(&url).header("host", host).body(Full::default()).unwrap();
    assert_eq!(client.send(get("web.example")).await.unwrap().body, "Host: web-0, Version: v1\n");
    assert_eq!(client.send(get("API.example:80")).await.unwrap().body, "Host: api-0, Version: stable\n");
    let r = client.send(get("other.example")).await.unwrap();
    assert_eq!(r.status, 404);
    weir.shutdown().await;
}

/// An upstream that goes silent mid-body is cut after `timeouts.read`, on the fast path, on
/// hyper's HTTP/1 path and on HTTP/2 (h2c): the client sees the body end in error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_silent_past_the_read_timeout_is_cut_on_every_path() {
    let b = Backend::spawn("v1-0", "v1").await;
    for (fast, h2) in [(true, false), (false, false), (true, true)] {
        let mut text = common::config(&[("v1", &[&b])], &[("v1", 1)], "timeouts = { read = \"300ms\" }");
        if !fast {
            text =
                text.replacen("addr = \"127.0.0.1:0\"\n[apps", "addr = \"127.0.0.1:0\"\nfast_path = false\n[apps", 1);
        }
        let weir = start(&text).await;
        let (url, _) = urls(&weir);
        let client: HyperClient<_, Full<Bytes>> =
            HyperClient::builder(TokioExecutor::new()).http2_only(h2).build_http();
        let resp = client.get(format!("{url}/drip").parse().unwrap()).await.unwrap();
        let started = std::time::Instant::now();
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await;
        let what = format!("fast_path = {fast}, h2 = {h2}");
        assert!(body.expect(&what).is_err(), "{what}: the silent body ended as if complete");
        assert!(started.elapsed() < Duration::from_secs(5), "{what}: cut after {:?}", started.elapsed());
        weir.shutdown().await;
    }
}

/// A client that uploads its (chunked) body slower than the request timeout, though never
/// pausing as long as the body read timeout: the request ends with 400 (the client's doing),
/// and the endpoint that waited for the body is not held responsible — three such uploads
/// where three failures in a row would eject it leave it in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_the_clients_fault_not_the_endpoints() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that answers once it has the whole (chunked) body, as most do.
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = up.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(5).any(|w| w == b"0\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            });
        }
    });
    let text = format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\nbody_read_timeout = \"5s\"\n\
         [apps.web]\nlistener = \"main\"\nsplit = {{ v1 = 1 }}\noutlier = {{ consecutive_failures = 3 }}\n\
         versions.v1.endpoints = [{{ name = \"v1-0\", addr = \"{up_addr}\" }}]\n[apps.web.timeouts]\nrequest = \"1s\"\n"
    );
    let weir = start(&text).await;
    let addr = weir.listeners["main"];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        for _ in 0..4 {
            // One byte every 600 ms: within the body read timeout, past the request timeout.
            if c.write_all(b"1\r\na\r\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await;
        let head = String::from_utf8_lossy(&answer).into_owned();
        statuses.push(head.split_whitespace().nth(1).unwrap_or("none").to_owned());
    }
    let (_, admin) = urls(&weir);
    let app = Client::new().get(&format!("{admin}/apps/web")).await.json();
    let endpoint = &app["versions"][0]["endpoints"][0];
    assert_eq!(statuses, ["400", "400", "400"], "a slow upload is answered 400, not 504");
    assert_eq!(endpoint["ejected"], false, "the endpoint was blamed for the client's slow body: {endpoint}");
    weir.shutdown().await;
}
