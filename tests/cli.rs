//! The `weir` binary as a user runs it: `check`, `demo`, and shutdown on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(WEIR).args(["check", "--config"]).arg(&path).output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), all.replace(&path.display().to_string(), "weir.toml"))
}

#[test]
fn check_reports_every_problem_with_line_column_and_field() {
    let (ok, out) = check(
        r#"[listeners.main]
addr = "127.0.0.1:8080"

[apps.web]
listener = "mian"
[apps.web.split]
v1 = 0
v3 = 10
[apps.web.versions.v1]
endpoints = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9001" }]
"#,
    );
    assert!(!ok);
    assert!(out.contains("weir.toml:5:1: apps.web.listener: no listener named \"mian\""), "{out}");
    assert!(out.contains("weir.toml:8:1: apps.web.split.v3: unknown version \"v3\""), "{out}");
    assert!(out.contains("weir.toml:10:"), "{out}");
    assert!(out.contains("apps.web.versions.v1.endpoints[1].addr: 127.0.0.1:9001 is also listed"), "{out}");
    assert!(out.contains("3 problem(s)"), "{out}");
}

#[test]
fn check_reports_type_and_syntax_errors_with_location() {
    let (ok, out) = check(
        "[listeners.main]\naddr = \"127.0.0.1:8080\"\n[apps.web]\nlistener = \"main\"\nsplit = { v1 = \"ten\" }\nversions = {}\n",
    );
    assert!(!ok);
    assert!(out.contains("weir.toml:5:16: apps.web.split.v1:"), "{out}");
    let (ok, out) = check("[listeners.main\naddr = 1\n");
    assert!(!ok);
    assert!(out.contains("weir.toml:1:"), "{out}");
    let (ok, out) = check("[listeners.main]\naddr = \"127.0.0.1:80\"\nport = 9\n[apps]\n");
    assert!(!ok);
    assert!(out.contains("listeners.main.port") && out.contains("unknown field"), "{out}");
}

#[test]
fn shipped_configs_pass_check() {
    let mut checked = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(WEIR).args(["check", "--config"]).arg(&path).output().unwrap();
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 3, "expected the demo, canary and blue/green examples");
}

/// Runs `weir demo` on free ports, drives it like the README says, and stops it with SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_readme_story_and_exits_zero_on_sigterm() {
    let mut child = Command::new(WEIR)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--ephemeral-backends"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = |prefix: &str| -> String {
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("demo printed no {prefix}");
    };
    let traffic = addr("traffic:");
    let admin = addr("admin:");
    let client = common::Client::new();
    let counts = common::count_versions(&client, &traffic, 100, 1).await;
    assert_eq!(counts.get("v2"), Some(&10), "90/10 over 100 requests: {counts:?}");
    let body = client.get(&traffic).await.body;
    assert!(body.starts_with("Host: demo-v") && body.contains(", Version: v"), "{body}");

    let r = client.call("POST", &format!("{admin}/apps/demo/promote"), r#"{"version":"v2"}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(common::count_versions(&client, &traffic, 50, 1).await.get("v2"), Some(&50));
    let r = client.call("POST", &format!("{admin}/apps/demo/rollback"), "").await;
    assert_eq!(r.json()["weights"], serde_json::json!({"v1": 90, "v2": 10}));

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status:?}");
    // Its listener is gone.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = tokio::net::TcpStream::connect(traffic.trim_start_matches("http://")).await;
    assert!(refused.is_err());
}
