//! Attacks on Weir's framing and deadlines found in an attacker's review of ab514d9. Each test
//! asserts the safe behaviour; each failed at ab514d9 (F1–F8).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::recorder::{End, Path, RawConn, Recorded, Recorder, Script, list, weir_config, weir_config_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(3);

/// A scripted upstream: CONNECT gets `200 Connection Established`; `/chunked` a chunked body;
/// `/until-close` an HTTP/1.0 close-delimited body; `/gzip-close` `Transfer-Encoding: gzip`; `/late304` a 304 with a
/// Content-Length whose "body" comes 200 ms later, `/headlate` a HEAD answer whose body comes
/// 200 ms later (and is a whole fake response), anything else `own <path>`.
fn script(req: &Recorded) -> Script {
    let ms = Duration::from_millis;
    let fake = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsmuggled!";
    if req.method == "CONNECT" {
        return Script::bytes("HTTP/1.1 200 Connection Established\r\n\r\n");
    }
    match req.path() {
        "/gzip-close" => Script::bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello").close(),
        "/until-close" => Script::bytes("HTTP/1.0 200 OK\r\n\r\nhello").close(),
        "/chunked" => Script::bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        "/late304" => Script::bytes(format!("HTTP/1.1 304 Not Modified\r\nContent-Length: {}\r\n\r\n", fake.len()))
            .then(ms(200), fake),
        "/headlate" => {
            Script::bytes(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", fake.len())).then(ms(200), fake)
        }
        p => {
            let body = format!("own {p}\n");
            let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            if req.method != "HEAD" {
                out.extend_from_slice(body.as_bytes());
            }
            Script::bytes(out)
        }
    }
}

async fn rig(path: Path) -> (weir::Running, Recorder, SocketAddr) {
    let up = Recorder::scripted(|req: &Recorded, _| script(req)).await;
    let weir = common::start(&weir_config(up.addr, path)).await;
    let addr = weir.listeners["main"];
    (weir, up, addr)
}

/// Reads everything the client gets until Weir closes or is quiet for `idle`.
async fn read_all(s: &mut tokio::net::TcpStream, idle: Duration) -> (Vec<u8>, bool) {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(idle, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (all, true),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => return (all, false),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// F1: HTTP/1.0 keep-alive request, upstream answers chunked: hyper writes a close-delimited
// body (HTTP/1.0 has no chunked) with "connection: keep-alive", then Weir takes the socket back
// instead of closing it. The client cannot tell where the body ends; a pipelined second
// request's response becomes part of the first response's body.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_close_delimited_or_close_response_then_connection_reused() {
    let mut failures = Vec::new();
    let cases: [(&str, &str); 4] = [
        // HTTP/1.1 on hyper's path, upstream TE other than chunked: Weir itself answers with
        // `connection: close` (check_response.until_close), then serves /second anyway.
        (
            "HTTP/1.1 general path, Transfer-Encoding: gzip upstream",
            "POST /gzip-close HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        // HTTP/1.0 keep-alive, upstream answers chunked (length unknown to hyper).
        ("HTTP/1.0 keep-alive, chunked upstream", "GET /chunked HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"),
        // HTTP/1.0 keep-alive, upstream body delimited by close.
        (
            "HTTP/1.0 keep-alive, close-delimited upstream",
            "GET /until-close HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        ),
        // HTTP/1.1 on hyper's path (chunked request body), upstream body delimited by close:
        // Weir answers with `connection: close` and must then not serve what follows.
        (
            "HTTP/1.1 general path, close-delimited upstream",
            "POST /until-close HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    for path in [Path::Fast, Path::General] {
        for (label, first) in cases {
            let (weir, up, addr) = rig(path).await;
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("{first}GET /second HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.unwrap();
            let (got, closed) = read_all(&mut s, Duration::from_secs(2)).await;
            let text = String::from_utf8_lossy(&got).to_string();
            let seen = up.settled().await;
            weir.shutdown().await;
            // Safe: the connection closes after the first response (it said close, or its
            // body ends at the close), and /second is not served on it (RFC 9112 §9.6). Or,
            // to an HTTP/1.1 client, Weir re-frames a close-delimited body as chunked (as nginx
            // does): then both answers arrive, each framed, in order.
            let served_second = seen.iter().any(|r| r.path() == "/second");
            let reframed = first.contains("HTTP/1.1")
                && text.starts_with("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n")
                && text.contains("\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 12\r\n")
                && text.ends_with("\r\n\r\nown /second\n");
            if !reframed && (!closed || served_second) {
                failures.push(format!(
                    "{path:?} [{label}]: closed={closed}, /second served={served_second}; client read:\n    {text:?}\n  upstream saw:{}",
                    list(&seen)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// F2: CONNECT. The codec passes it to hyper ("not origin-form"); Weir forwards `CONNECT /` to
// the upstream; a 2xx answer makes hyper treat the client connection as a tunnel (no body,
// upgrade pending), and Weir then hands the socket back to the codec, which parses the
// "tunnel" bytes as HTTP requests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_connect_tunnel_bytes_parsed_as_requests() {
    let mut failures = Vec::new();
    for path in [Path::Fast, Path::General] {
        let (weir, up, addr) = rig(path).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        let first = String::from_utf8_lossy(&head).to_string();
        // The client now believes it has a tunnel and sends bytes through it.
        let _ = s.write_all(b"GET /through-the-tunnel HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let (rest, _) = read_all(&mut s, Duration::from_secs(1)).await;
        let seen = up.settled().await;
        weir.shutdown().await;
        let tunnel_parsed = seen.iter().any(|r| r.path() == "/through-the-tunnel");
        let connect_upstream = seen.iter().any(|r| r.method == "CONNECT");
        if tunnel_parsed || connect_upstream || first.starts_with("HTTP/1.1 2") {
            failures.push(format!(
                "{path:?}: CONNECT answered {first:?}; tunnel bytes answered {:?}\n  upstream saw:{}",
                String::from_utf8_lossy(&rest),
                list(&seen)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// F3: a request pipelined behind one hyper serves is read by hyper in the same turn, with
// hyper's own limits: a 100 KiB head that Weir's codec refuses with 431 gets a 200.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_pipelined_head_over_64k_in_hypers_turn() {
    let (weir, up, addr) = rig(Path::Fast).await;
    let big = format!("GET /big-head HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(100 * 1024));
    // Control: alone, it is refused.
    let mut alone = RawConn::connect(addr).await;
    alone.send(big.as_bytes()).await.unwrap();
    let control = alone.response(false, LIMIT).await.map(|r| r.status);
    // Behind a request hyper serves (an empty chunked body), in one write.
    let mut bytes = b"POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec();
    bytes.extend_from_slice(big.as_bytes());
    let mut c = RawConn::connect(addr).await;
    c.send_in_background(bytes);
    let ex = c.responses(Duration::from_secs(2)).await;
    let seen = up.settled().await;
    weir.shutdown().await;
    assert_eq!(control, Ok(431), "control: a 100 KiB head alone");
    assert!(
        !seen.iter().any(|r| r.path() == "/big-head"),
        "a 100 KiB head behind a chunked POST reached the upstream (alone it gets 431): statuses {:?}\nupstream saw:{}",
        ex.statuses(),
        list(&seen)
    );
}

// ---------------------------------------------------------------------------------------------
// F4: a bodiless response (304, or the answer to HEAD) whose advertised body arrives late: the
// upstream connection goes back to the pool at once; the next request (pipelined here) takes
// it and gets the late bytes as its response.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_late_body_after_bodiless_response_desyncs_pooled_connection() {
    let mut failures = Vec::new();
    for path in [Path::Fast, Path::General] {
        for (label, first) in [
            ("304 + CL, body 200 ms later", "GET /late304 HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("HEAD, body 200 ms later", "HEAD /headlate HTTP/1.1\r\nHost: a\r\n\r\n"),
        ] {
            let (weir, up, addr) = rig(path).await;
            let mut c = RawConn::connect(addr).await;
            let next = match path {
                Path::Fast => "GET /next HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
                Path::General => {
                    "POST /next HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string()
                }
            };
            c.send(format!("{first}{next}").as_bytes()).await.unwrap();
            let r1 = c.response(true, LIMIT).await;
            let r2 = c.response(false, LIMIT).await;
            let seen = up.settled().await;
            weir.shutdown().await;
            let ok = matches!(&r2, Ok(r) if r.body_str() == "own /next\n") || matches!(&r2, Err(End::Closed));
            if !ok {
                failures.push(format!(
                    "{path:?} [{label}]: first {:?}; the pipelined /next got {:?}\n  upstream saw:{}",
                    r1.map(|r| r.to_string()),
                    r2.map(|r| r.to_string()),
                    list(&seen)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// F7: an origin-form target whose query contains "://" counts as absolute-form in
// `check_request` (target.contains("://")), so an HTTP/1.1 request without Host passes the
// codec and the fast path forwards it with no Host at all (RFC 9112 §3.2: 400).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_no_host_passes_when_query_contains_scheme() {
    let mut failures = Vec::new();
    for path in [Path::Fast, Path::General] {
        let (weir, up, addr) = rig(path).await;
        let mut c = RawConn::connect(addr).await;
        c.send(b"GET /login?next=http://x/ HTTP/1.1\r\n\r\n").await.unwrap();
        let r = c.response(false, LIMIT).await;
        let seen = up.settled().await;
        weir.shutdown().await;
        if !matches!(&r, Ok(r) if r.status == 400) || !seen.is_empty() {
            failures.push(format!(
                "{path:?}: HTTP/1.1 without Host got {:?}\n  upstream saw:{}",
                r.map(|r| r.to_string()),
                list(&seen)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// F5: h2c slow reader. A client that keeps reading the socket but never opens HTTP/2 flow
// control (never polls the body, so no WINDOW_UPDATE) stalls the response forever: no write to
// the socket ever blocks, so `send_timeout` never fires, and the stream, the upstream
// connection and its unread 64 MiB stay held. HTTP/1 (R16) closes both within seconds.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_h2c_slow_reader_dodges_send_timeout() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let up = Recorder::spawn().await;
    let weir = common::start(&weir_config_with(up.addr, Path::Fast, "10s")).await;
    let addr = weir.listeners["main"];
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://a/big?bytes={}", 64 << 20))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Never poll the body: h2 flow control stalls Weir's response, the socket does not.
    let closed = up.wait_until(Duration::from_secs(8), |u| u.accepted() >= 1 && u.open() == 0).await;
    let client_alive = !driver.is_finished();
    drop(resp);
    driver.abort();
    weir.shutdown().await;
    assert!(
        closed,
        "8 s after the response head (send_timeout = 1s) the upstream connection is still open \
         (client connection alive: {client_alive}): an h2c client holds a stream and an upstream connection forever"
    );
}

// ---------------------------------------------------------------------------------------------
// F6: h2c idle connection that ignores the graceful-shutdown PING. After keepalive_timeout
// with no stream, Weir sends GOAWAY + PING (h2's graceful shutdown) and waits for the PING
// ack before closing; a client that never acks holds the connection (and a max_connections
// slot) forever. An idle HTTP/1 connection closes after keepalive_timeout (5 s here).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f6_h2c_idle_connection_ignoring_ping_is_never_closed() {
    let up = Recorder::spawn().await;
    let weir = common::start(&weir_config(up.addr, Path::Fast)).await;
    let addr = weir.listeners["main"];
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // empty SETTINGS
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(12);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut frames = Vec::new();
    let mut acked = false;
    let closed_after = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => break None,
            Ok(Ok(0)) | Ok(Err(_)) => break Some(start.elapsed()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        // Parse whole frames: ack the server's SETTINGS once, ignore everything else (PING).
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (buf[3], buf[4]);
            frames.push((ty, flags));
            if ty == 4 && flags & 1 == 0 && !acked {
                s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap();
                acked = true;
            }
            buf.drain(..9 + len);
        }
    };
    weir.shutdown().await;
    let names: Vec<&str> = frames
        .iter()
        .map(|(t, _)| match t {
            4 => "SETTINGS",
            6 => "PING",
            7 => "GOAWAY",
            8 => "WINDOW_UPDATE",
            _ => "other",
        })
        .collect();
    assert!(
        closed_after.is_some_and(|d| d < Duration::from_secs(10)),
        "h2c connection with no stream still open 12 s in (keepalive_timeout = 5s); frames from Weir: {names:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// F8: a Host with userinfo (`x@a`) is not a valid Host (RFC 9112 §3.2: uri-host [":" port]);
// `check_request` accepts any `http::uri::Authority`, so it is routed (by "x@a") and forwarded.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f8_host_with_userinfo_is_accepted() {
    let mut failures = Vec::new();
    for path in [Path::Fast, Path::General] {
        let (weir, up, addr) = rig(path).await;
        for raw in
            ["GET /userinfo HTTP/1.1\r\nHost: x@a\r\n\r\n", "GET http://u:p@a/abs-userinfo HTTP/1.1\r\nHost: a\r\n\r\n"]
        {
            let mut c = RawConn::connect(addr).await;
            c.send(raw.as_bytes()).await.unwrap();
            let r = c.response(false, LIMIT).await;
            if !matches!(&r, Ok(r) if r.status == 400) {
                failures.push(format!("{path:?} {raw:?}: got {:?}", r.map(|r| r.to_string())));
            }
        }
        let seen = up.settled().await;
        if !seen.is_empty() {
            failures.push(format!("{path:?}: upstream saw:{}", list(&seen)));
        }
        weir.shutdown().await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
