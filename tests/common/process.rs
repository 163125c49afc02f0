//! `weir serve` as a real process: config written to a temp dir, stderr kept in a file for the
//! assertion messages, SIGTERM/SIGKILL, restart on the same config.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A free loopback port (bound and released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `weir serve` process.
pub struct Weir {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>` of the listener `main`.
    pub traffic: String,
    /// `http://127.0.0.1:<port>` of the admin API.
    pub admin: String,
    /// The config file it runs.
    pub config: PathBuf,
    stderr: PathBuf,
    env: Vec<(String, String)>,
}

impl Weir {
    /// Writes `text` into `dir` as `weir.toml`, replacing `{admin}` and `{traffic}` with free
    /// loopback addresses, and starts it. Does not wait for readiness: see [`Weir::ready`].
    pub fn spawn(dir: &Path, text: &str, env: &[(&str, &str)]) -> Weir {
        let (traffic, admin) = (free_port(), free_port());
        let text = text
            .replace("{admin}", &format!("127.0.0.1:{admin}"))
            .replace("{traffic}", &format!("127.0.0.1:{traffic}"));
        let config = dir.join("weir.toml");
        std::fs::write(&config, text).unwrap();
        let mut weir = Weir {
            child: None,
            traffic: format!("http://127.0.0.1:{traffic}"),
            admin: format!("http://127.0.0.1:{admin}"),
            stderr: dir.join("weir.stderr"),
            config,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        weir.start();
        weir
    }

    /// Starts (again) on the same config and addresses.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr).unwrap();
        let child = Command::new(WEIR)
            .args(["serve", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until `/ready` answers 200 (at most 30 s); panics with its log otherwise.
    pub async fn ready(&mut self) {
        let client = super::Client::new();
        for _ in 0..600 {
            let req = http::Request::get(format!("{}/ready", self.admin)).body(Default::default()).unwrap();
            if client.send(req).await.is_ok_and(|r| r.status == 200) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("weir exited with {status} before it was ready:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("weir did not become ready within 30 s:\n{}", self.log());
    }

    /// Everything it wrote to stderr, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        let pid = self.child.as_ref().expect("running").id();
        kill(Pid::from_raw(pid as i32), signal).unwrap();
    }

    /// SIGKILL, and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (at most 60 s) for it to exit.
    pub async fn exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        for _ in 0..1200 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        panic!("weir did not exit within 60 s:\n{}", self.log());
    }

    /// SIGTERM, then waits for the exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.exit().await
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        self.kill9();
    }
}
