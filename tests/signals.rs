//! The `weir serve` process and its signals: SIGTERM drains, SIGHUP reloads.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Backend, Client, config};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A free loopback port (bound and released; the OS does not hand it out again at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Served {
    /// Taken by a test that waits for the exit itself; otherwise killed and reaped on drop.
    child: Option<Child>,
    traffic: String,
    admin: String,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

/// Writes `text` (with its two `127.0.0.1:0` placeholders made real) and runs `weir serve`.
async fn serve(text: &str) -> Served {
    let (traffic, admin) = (free_port(), free_port());
    let text = text
        .replacen("[admin]\naddr = \"127.0.0.1:0\"", &format!("[admin]\naddr = \"127.0.0.1:{admin}\""), 1)
        .replacen(
            "[listeners.main]\naddr = \"127.0.0.1:0\"",
            &format!("[listeners.main]\naddr = \"127.0.0.1:{traffic}\""),
            1,
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &text).unwrap();
    let child = Command::new(WEIR)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin = format!("http://127.0.0.1:{admin}");
    let client = Client::new();
    for _ in 0..200 {
        let req = http::Request::get(format!("{admin}/ready")).body(Default::default()).unwrap();
        if client.send(req).await.is_ok_and(|r| r.status == 200) {
            return Served {
                child: Some(child),
                traffic: format!("http://127.0.0.1:{traffic}"),
                admin,
                _dir: dir,
                path,
            };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    panic!("weir serve did not become ready");
}

/// Whether `/ready` says 503 within half a second.
async fn turns_not_ready(admin: &str) -> bool {
    let client = Client::new();
    for _ in 0..100 {
        let req = http::Request::get(format!("{admin}/ready")).body(Default::default()).unwrap();
        if client.send(req).await.is_ok_and(|r| r.status == 503) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

impl Served {
    fn signal(&self, signal: Signal) {
        let pid = self.child.as_ref().expect("still running").id();
        kill(Pid::from_raw(pid as i32), signal).unwrap();
    }

    /// Waits for the process to exit.
    async fn exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("still running");
        tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_20_slow_requests_finish_refuses_new_ones_and_exits_zero() {
    let slow = Backend::spawn("slow", "v1").await;
    let text = config(&[("v1", &[&slow])], &[("v1", 1)], "")
        .replace("[listeners.main]", "[runtime]\ndrain_delay = \"0s\"\nshutdown_grace = \"20s\"\n[listeners.main]");
    let mut s = serve(&text).await;
    let done = Arc::new(AtomicU64::new(0));
    let mut requests = Vec::new();
    for _ in 0..20 {
        let (url, done) = (format!("{}/slow", s.traffic), done.clone());
        requests.push(tokio::spawn(async move {
            let r = Client::new().get(&url).await;
            done.fetch_add(1, Ordering::SeqCst);
            r
        }));
    }
    // All 20 are in flight at the backend (it answers after 2 s).
    while slow.hits.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.signal(Signal::SIGTERM);

    // While they drain: /ready says 503 and the traffic port refuses new connections.
    let saw_not_ready = turns_not_ready(&s.admin).await;
    let addr = s.traffic.trim_start_matches("http://").to_string();
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let finished_before_refusal = done.load(Ordering::SeqCst);
    assert!(saw_not_ready, "/ready never said 503 during the drain");
    assert!(refused, "new connections were still accepted");
    assert_eq!(finished_before_refusal, 0, "the slow requests should still be in flight");

    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "Host: slow, Version: v1\n");
        // Sent before SIGTERM, answered after it: the client is told not to reuse the
        // connection (Weir closes it next).
        assert_eq!(r.headers.get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]), "{:?}", r.headers);
    }
    let status = s.exit().await;
    assert!(status.success(), "exit status {status:?}");
    println!("SIGTERM with 20 slow requests in flight: 20 completed with 200, new connections refused, exit 0");
}

/// Sends one request on `c` and reads its response (a `Content-Length` body): the status and
/// the head.
async fn exchange(c: &mut tokio::net::TcpStream, req: &[u8]) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = async {
        c.write_all(req).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or(format!("bad head {head:?}"))?;
                let length: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse().ok())
                    .ok_or(format!("no length in {head:?}"))?;
                while buf.len() < end + 4 + length {
                    let n = c.read(&mut chunk).await.map_err(|e| format!("read body: {e}"))?;
                    if n == 0 {
                        return Err("closed in the body".into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok((status, head));
            }
            let n = c.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("closed before a response ({} bytes)", buf.len()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.map_err(|_| "timed out".to_string())?
}

/// What one client loop saw during a drain.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    failed: Vec<String>,
    /// Responses that said `Connection: close` (HTTP/1) after SIGTERM.
    told_to_close: u64,
    /// HTTP/2 requests sent again after GOAWAY refused them unprocessed.
    goaway_retries: u64,
}

/// A client that sends GET after GET until `until`: over one keep-alive connection it
/// reopens when told to close (as browsers and pooled clients do), or a new connection per
/// request, or HTTP/2 (hyper's client, which reconnects after GOAWAY).
async fn client_loop(kind: &'static str, traffic: String, until: tokio::time::Instant) -> Seen {
    let mut seen = Seen::default();
    let addr = traffic.trim_start_matches("http://").to_string();
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut conn: Option<tokio::net::TcpStream> = None;
    while tokio::time::Instant::now() < until {
        let result: Result<bool, String> = match kind {
            "h2" => {
                // A request the server refused unprocessed by GOAWAY may be sent again (RFC
                // 9113 §6.8), as browsers, curl and Go do; hyper's client leaves that to us.
                let mut r = h2.get(traffic.parse().unwrap()).await;
                if let Err(e) = &r
                    && format!("{e:?}").contains("GoAway(b\"\", NO_ERROR, Remote)")
                {
                    seen.goaway_retries += 1;
                    r = h2.get(traffic.parse().unwrap()).await;
                }
                match r {
                    Ok(r) if r.status() == 200 => Ok(false),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(format!("h2: {e:?}")),
                }
            }
            _ => {
                let fresh = kind == "fresh" || conn.is_none();
                if fresh {
                    conn = match tokio::net::TcpStream::connect(&addr).await {
                        Ok(c) => Some(c),
                        Err(e) => {
                            seen.failed.push(format!("connect: {e}"));
                            continue;
                        }
                    };
                }
                let close = if kind == "fresh" { "Connection: close\r\n" } else { "" };
                let req = format!("GET / HTTP/1.1\r\nHost: app\r\n{close}\r\n");
                let c = conn.as_mut().unwrap();
                match exchange(c, req.as_bytes()).await {
                    Ok((200, head)) => {
                        let says_close = head.to_ascii_lowercase().contains("connection: close");
                        if says_close || kind == "fresh" {
                            conn = None;
                        }
                        Ok(says_close && kind == "keepalive")
                    }
                    Ok((status, _)) => Err(format!("status {status}")),
                    Err(e) => {
                        conn = None;
                        Err(e)
                    }
                }
            }
        };
        match result {
            Ok(told) => {
                seen.ok += 1;
                seen.told_to_close += u64::from(told);
            }
            Err(e) => seen.failed.push(e),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_keep_sending_through_the_drain_delay_see_no_failure() {
    let b = Backend::spawn("web", "v1").await;
    let text = config(&[("v1", &[&b])], &[("v1", 1)], "")
        .replace("[listeners.main]", "[runtime]\ndrain_delay = \"2s\"\nshutdown_grace = \"5s\"\n[listeners.main]");
    let mut s = serve(&text).await;
    // Clients run from before SIGTERM until the drain delay (2 s) is all but over (after it,
    // a Service would no longer send them here): the last requests start 250 ms before the
    // listener closes.
    let t0 = tokio::time::Instant::now();
    let until = t0 + Duration::from_millis(500) + Duration::from_millis(1_750);
    let mut loops = Vec::new();
    for kind in ["keepalive", "keepalive", "keepalive", "fresh", "fresh", "fresh", "h2", "h2"] {
        loops.push((kind, tokio::spawn(client_loop(kind, s.traffic.clone(), until))));
    }
    // A keep-alive connection that sits idle from before SIGTERM and is used again late in
    // the drain: still open, served, and told to close.
    let idle = {
        let addr = s.traffic.trim_start_matches("http://").to_string();
        tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
            let req = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n";
            let (first, _) = exchange(&mut c, req).await?;
            tokio::time::sleep_until(t0 + Duration::from_millis(500 + 1_600)).await;
            let (second, head) = exchange(&mut c, req).await.map_err(|e| format!("idle connection, late: {e}"))?;
            Ok::<_, String>((first, second, head.to_ascii_lowercase().contains("connection: close")))
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.signal(Signal::SIGTERM);
    let not_ready = turns_not_ready(&s.admin).await;
    let (mut ok, mut failed, mut told) = (0, Vec::new(), 0);
    for (kind, l) in loops {
        let seen = l.await.unwrap();
        println!(
            "{kind}: {} ok, {} failed, {} told to close, {} sent again after GOAWAY",
            seen.ok,
            seen.failed.len(),
            seen.told_to_close,
            seen.goaway_retries
        );
        ok += seen.ok;
        told += seen.told_to_close;
        failed.extend(seen.failed.into_iter().map(|f| format!("{kind}: {f}")));
    }
    let idle = idle.await.unwrap();
    println!("idle keep-alive connection used 1.6 s into the drain: {idle:?}");
    assert_eq!(idle, Ok((200, 200, true)), "an idle keep-alive connection used late in the drain");
    assert!(not_ready, "/ready never said 503 after SIGTERM");
    assert!(failed.is_empty(), "{} failed: {:?}", failed.len(), &failed[..failed.len().min(10)]);
    assert!(told >= 3, "keep-alive clients were not told to reconnect ({told})");
    // The drain delay is over: the listener closed, and Weir exits 0.
    let status = s.exit().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(t0.elapsed() >= Duration::from_millis(2_400), "exited before the drain delay ended");
    println!(
        "SIGTERM with 8 clients sending through a 2 s drain delay: {ok} ok, 0 failed, {told} told to close, exit 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let a = Backend::spawn("a", "v1").await;
    let b = Backend::spawn("b", "v2").await;
    let mut s = serve(&config(&[("v1", &[&a]), ("v2", &[&b])], &[("v1", 90), ("v2", 10)], "")).await;
    let text = std::fs::read_to_string(&s.path).unwrap().replace("v1 = 90\nv2 = 10", "v1 = 0\nv2 = 1");
    std::fs::write(&s.path, text).unwrap();
    s.signal(Signal::SIGHUP);
    let client = Client::new();
    let mut weights = serde_json::Value::Null;
    for _ in 0..200 {
        weights = client.get(&format!("{}/apps/web", s.admin)).await.json()["weights"].clone();
        if weights == serde_json::json!({"v1": 0, "v2": 1}) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(weights, serde_json::json!({"v1": 0, "v2": 1}));
    assert_eq!(client.get(&s.traffic).await.body, "Host: b, Version: v2\n");
    // An invalid file on SIGHUP is refused; weir keeps running with what it had.
    std::fs::write(&s.path, "not toml [").unwrap();
    s.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.get(&s.traffic).await.body, "Host: b, Version: v2\n");
    s.signal(Signal::SIGTERM);
    let status = s.exit().await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_shutdown_drains_and_waits_as_the_prestop_hook_does() {
    let b = Backend::spawn("web", "v1").await;
    let text = config(&[("v1", &[&b])], &[("v1", 1)], "")
        .replace("[listeners.main]", "[runtime]\ndrain_delay = \"1s\"\nshutdown_grace = \"5s\"\n[listeners.main]");
    let mut s = serve(&text).await;
    let admin = s.admin.trim_start_matches("http://").to_string();
    let t0 = std::time::Instant::now();
    let hook = tokio::task::spawn_blocking(move || {
        Command::new(WEIR).args(["shutdown", "--admin", &admin, "--wait"]).output().unwrap()
    });
    // Draining: not ready, and traffic still served.
    let not_ready = turns_not_ready(&s.admin).await;
    assert!(not_ready, "/ready never said 503 after POST /shutdown");
    let r = Client::new().get(&s.traffic).await;
    assert_eq!(r.status, 200, "traffic is still served during the drain delay");
    assert_eq!(r.headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    let out = hook.await.unwrap();
    assert!(out.status.success(), "weir shutdown: {}", String::from_utf8_lossy(&out.stderr));
    assert!(t0.elapsed() >= Duration::from_secs(1), "returned before the drain delay");
    let status = s.exit().await;
    assert!(status.success(), "exit status {status:?}");
}
