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
        .replace("[listeners.main]", "[runtime]\nshutdown_grace = \"20s\"\n[listeners.main]");
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
    let client = Client::new();
    let mut saw_not_ready = false;
    for _ in 0..100 {
        let req = http::Request::get(format!("{}/ready", s.admin)).body(Default::default()).unwrap();
        if client.send(req).await.is_ok_and(|r| r.status == 503) {
            saw_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
    }
    let status = s.exit().await;
    assert!(status.success(), "exit status {status:?}");
    println!("SIGTERM with 20 slow requests in flight: 20 completed with 200, new connections refused, exit 0");
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
