//! WebSocket through Weir on real sockets: the upgrade is proxied both ways (plain HTTP/1.1,
//! both listener paths, and over TLS), an open WebSocket survives 20 split changes and a
//! reload, it is counted per version, and a SIGTERM-style shutdown gives it the grace period.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::Client;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo backend answering `<version>:<message>`; other requests get a 200 with
/// `Version: <version>` (so it also serves as a plain backend).
async fn ws_backend(version: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(serve(stream, version));
        }
    });
    addr
}

async fn serve(stream: TcpStream, version: &'static str) {
    let mut head = [0u8; 4096];
    let n = stream.peek(&mut head).await.unwrap_or(0);
    let asks = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase().contains("upgrade: websocket");
    if !asks {
        use tokio::io::AsyncWriteExt;
        let mut stream = stream;
        let body = format!("Version: {version}\n");
        let _ = stream
            .write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                    .as_bytes(),
            )
            .await;
        return;
    }
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) => Message::text(format!("{version}:{t}")),
            Message::Close(_) => return,
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

fn config(v1: SocketAddr, v2: SocketAddr, weights: (u32, u32), listener_extra: &str) -> String {
    format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\n{listener_extra}\n\
         [apps.web]\nlistener = \"main\"\nsplit = {{ v1 = {}, v2 = {} }}\n\
         versions.v1.endpoints = [{{ name = \"v1-0\", addr = \"{v1}\" }}]\n\
         versions.v2.endpoints = [{{ name = \"v2-0\", addr = \"{v2}\" }}]\n",
        weights.0, weights.1
    )
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn open(addr: SocketAddr) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/chat")).await.expect("websocket opens");
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("an echo within 5 s");
    match reply {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("want a text echo, got {other:?}"),
    }
}

async fn tunnels_open(admin: SocketAddr, version: &str) -> i64 {
    let metrics = Client::new().get(&format!("http://{admin}/metrics")).await.body;
    let prefix = format!("weir_tunnels_open{{app=\"web\",version=\"{version}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse().unwrap())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_survives_20_split_changes_and_a_reload() {
    let (v1, v2) = (ws_backend("v1").await, ws_backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    write(&path, &config(v1, v2, (100, 0), ""));
    let weir = weir::server::start_with(weir::Config::load(&path).unwrap(), Some(path.clone())).await.unwrap();
    let (addr, admin) = (weir.listeners["main"], weir.admin);
    let client = Client::new();

    let mut ws = open(addr).await;
    assert_eq!(echo(&mut ws, "hello").await, "v1:hello");
    assert_eq!(tunnels_open(admin, "v1").await, 1, "counted per version");
    for i in 0..20 {
        let (a, b) = if i % 2 == 0 { (0, 100) } else { (100, 0) };
        let body = format!(r#"{{"weights":{{"v1":{a},"v2":{b}}}}}"#);
        assert_eq!(client.call("PUT", &format!("http://{admin}/apps/web/split"), &body).await.status, 200);
        // The open WebSocket stays on its version; new ones follow the split.
        assert_eq!(echo(&mut ws, &format!("m{i}")).await, format!("v1:m{i}"), "after split change {i}");
    }
    let mut fresh = open(addr).await;
    assert_eq!(echo(&mut fresh, "new").await, "v1:new", "the last change set v1 to 100");
    write(&path, &config(v1, v2, (0, 100), ""));
    assert_eq!(client.call("POST", &format!("http://{admin}/reload"), "").await.status, 200);
    assert_eq!(echo(&mut ws, "after reload").await, "v1:after reload");
    let mut newer = open(addr).await;
    assert_eq!(echo(&mut newer, "x").await, "v2:x", "a new WebSocket follows the reloaded split");
    assert_eq!(tunnels_open(admin, "v2").await, 1);

    for mut w in [ws, fresh, newer] {
        w.close(None).await.unwrap();
    }
    let mut closed = false;
    for _ in 0..50 {
        if tunnels_open(admin, "v1").await == 0 && tunnels_open(admin, "v2").await == 0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "closed tunnels are no longer counted");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_on_both_http1_paths_and_plain_requests_after_them() {
    let (v1, v2) = (ws_backend("v1").await, ws_backend("v2").await);
    for extra in ["", "fast_path = false"] {
        let weir = common::start(&config(v1, v2, (0, 100), extra)).await;
        let addr = weir.listeners["main"];
        let mut ws = open(addr).await;
        assert_eq!(echo(&mut ws, "a").await, "v2:a", "{extra}");
        // Plain requests are unaffected, and h2c upgrade requests are not tunnelled.
        let r = Client::new().get(&format!("http://{addr}/")).await;
        assert_eq!((r.status.as_u16(), r.version()), (200, "v2"), "{extra}");
        ws.close(None).await.unwrap();
        drop(ws);
        weir.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_open_websockets_the_grace_period() {
    let (v1, v2) = (ws_backend("v1").await, ws_backend("v2").await);
    let text = config(v1, v2, (1, 0), "").replace("[apps.web]", "[runtime]\nshutdown_grace = \"1s\"\n[apps.web]");
    let weir = common::start(&text).await;
    let mut ws = open(weir.listeners["main"]).await;
    assert_eq!(echo(&mut ws, "a").await, "v1:a");
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(weir.shutdown());
    // Still usable during the grace period...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(echo(&mut ws, "during").await, "v1:during");
    // ...then closed, and shutdown completes.
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("shutdown completes").unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the grace period: {:?}", started.elapsed());
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the tunnel closes");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}

/// An upgraded connection leaves the listener's connection count, so open tunnels are capped
/// at the listener's `max_connections` on their own: one more upgrade is answered 503, and
/// a closed tunnel frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_are_bounded_by_max_connections() {
    let (v1, v2) = (ws_backend("v1").await, ws_backend("v2").await);
    let weir = common::start(&config(v1, v2, (1, 0), "max_connections = 2")).await;
    let addr = weir.listeners["main"];
    let (mut a, mut b) = (open(addr).await, open(addr).await);
    assert_eq!(echo(&mut a, "a").await, "v1:a");
    assert_eq!(echo(&mut b, "b").await, "v1:b");
    match tokio_tungstenite::connect_async(format!("ws://{addr}/chat")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("a third tunnel was let in: {:?}", other.map(|(_, r)| r.status())),
    }
    a.close(None).await.unwrap();
    drop(a);
    let mut third = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/chat")).await {
            third = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = third.expect("a closed tunnel frees its place");
    assert_eq!(echo(&mut c, "c").await, "v1:c");
    for mut w in [b, c] {
        w.close(None).await.unwrap();
    }
    weir.shutdown().await;
}
