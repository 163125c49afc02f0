//! What `weir` writes to stderr when it is not a terminal (a file, a pipe, a cluster's log
//! collector): no colour codes, and with `--log-format json` one JSON object per line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Runs `weir [args] demo` on free ports with stderr piped (and `env` set), and returns its
/// log lines up to and including the one that says the admin API listens (at most 30 s).
fn demo_logs(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let mut child = Command::new(WEIR)
        .args(args)
        .args(["demo", "--ephemeral-backends", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("WEIR_LOG_FORMAT")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else { break };
        let done = line.contains("admin API listening");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.iter().any(|l| l.contains("admin API listening")), "no start-up line in {lines:#?}");
    lines
}

#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    for args in [&[][..], &["--log-format", "text"]] {
        let lines = demo_logs(args, &[]);
        for line in &lines {
            assert!(!line.contains('\u{1b}'), "{args:?}: an escape code in {line:?}");
            assert!(line.contains("INFO") || line.contains("WARN"), "{args:?}: {line:?}");
        }
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    // The flag, or the environment (as a Kubernetes manifest would set it).
    for (args, env) in [(&["--log-format", "json"][..], &[][..]), (&[], &[("WEIR_LOG_FORMAT", "json")])] {
        let lines = demo_logs(args, env);
        for line in &lines {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{args:?} {env:?}: not JSON ({e}): {line:?}"));
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
            assert!(v["message"].is_string() && v["target"].is_string(), "{line}");
        }
        let listening = lines.iter().find(|l| l.contains("admin API listening")).unwrap();
        let v: serde_json::Value = serde_json::from_str(listening).unwrap();
        assert_eq!(v["level"], "INFO");
        assert!(v["admin_addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{listening}");
    }
}

#[test]
fn an_unknown_log_format_is_refused() {
    let out = Command::new(WEIR).args(["--log-format", "xml", "check", "--config", "x.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("xml"));
}
