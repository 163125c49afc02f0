//! The built-in demo backend, answering like the seeds' demo app, and the `weir demo` setup.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode, header};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::data::listener;
use crate::data::proxy::ResponseBody;

/// The config `weir demo` runs (`config/demo.toml`).
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// How a demo backend behaves beyond its name and version (`weir backend --delay`,
/// `--record-ids`): what benchmarks of slow endpoints and of duplicate requests need.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// How long every response waits before its head (`/__weir/*` excepted), like an
    /// endpoint whose requests take that long. Default 0.
    pub delay: Duration,
    /// Remember the `x-request-id` of every request carrying one and list them at
    /// `/__weir/ids`, one per line, so a benchmark can find requests sent twice. Memory grows
    /// with every such request: off by default.
    pub record_ids: bool,
    /// Share of requests answered `500` instead (0–1), spread evenly: a bad canary, to watch
    /// a rollout roll back. Default 0.
    pub fail: f64,
}

/// Starts a demo backend on `addr`: `/live` and `/ready` answer `ok`, `/__weir/hits` the
/// number of other requests served so far (benchmarks read it to measure the split), every
/// other path answers `Host: <name>, Version: <version>\n`. Returns the bound address; serves
/// until `cancel` fires.
pub async fn spawn_backend(
    addr: SocketAddr,
    name: &str,
    version: &str,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    spawn_backend_with(addr, name, version, BackendOptions::default(), cancel).await
}

/// [`spawn_backend`] with [`BackendOptions`]. Requests are counted in `/__weir/hits` when they
/// arrive, before any delay, so a benchmark sees what reached a slow (or resumed) process.
pub async fn spawn_backend_with(
    addr: SocketAddr,
    name: &str,
    version: &str,
    options: BackendOptions,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let socket = tokio::net::TcpListener::bind(addr).await?;
    let bound = socket.local_addr()?;
    let hello = bytes::Bytes::from(format!("Host: {name}, Version: {version}\n"));
    let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ids = Arc::new(std::sync::Mutex::new(String::new()));
    let BackendOptions { delay, record_ids, fail } = options;
    // Evenly spread failures: request n fails when frac(n·φ) < fail.
    let failing = (fail.clamp(0.0, 1.0) * 2f64.powi(64)) as u64;
    let handler = move |req: http::Request<crate::data::listener::ClientBody>, _client| {
        let path = req.uri().path();
        let mut status = StatusCode::OK;
        let body = match path {
            "/live" | "/ready" => bytes::Bytes::from_static(b"ok\n"),
            "/__weir/hits" => format!("{}\n", hits.load(std::sync::atomic::Ordering::Relaxed)).into(),
            "/__weir/ids" => ids.lock().expect("not poisoned").clone().into(),
            _ => {
                let n = hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if failing > 0 && n.wrapping_mul(crate::data::split::GOLDEN) < failing {
                    status = StatusCode::INTERNAL_SERVER_ERROR;
                    bytes::Bytes::from(format!("demo failure (--fail) from {}", String::from_utf8_lossy(&hello)))
                } else {
                    hello.clone()
                }
            }
        };
        if record_ids && let Some(id) = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
            let mut ids = ids.lock().expect("not poisoned");
            ids.push_str(id);
            ids.push('\n');
        }
        let wait = if path.starts_with("/__weir/") { Duration::ZERO } else { delay };
        async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let mut resp = Response::new(ResponseBody::local(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
            resp
        }
    };
    tokio::spawn(listener::serve(socket, handler, cancel, Duration::from_secs(1)));
    Ok(bound)
}

/// Starts a demo backend for every endpoint of every app in `config` and points the config at
/// them. With `ephemeral`, backends bind `127.0.0.1:0` instead of their configured address.
/// `fail_v2`: the share of requests the `v2` backends answer 500 (a bad canary).
pub async fn start_backends(
    config: &mut Config,
    ephemeral: bool,
    fail_v2: f64,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    for app in config.apps.values_mut() {
        for (version, v) in app.versions.iter_mut() {
            for ep in &mut v.endpoints {
                let name = ep.display_name();
                let at = if ephemeral { SocketAddr::from(([127, 0, 0, 1], 0)) } else { ep.addr };
                let fail = if version == "v2" { fail_v2 } else { 0.0 };
                let options = BackendOptions { fail, ..Default::default() };
                ep.addr = spawn_backend_with(at, &name, version, options, cancel.child_token())
                    .await
                    .map_err(|e| std::io::Error::new(e.kind(), format!("demo backend {name} on {at}: {e}")))?;
                ep.name = Some(name);
            }
        }
    }
    Ok(())
}

/// What `weir demo` prints once running: where to look and what to try.
pub fn banner(traffic: SocketAddr, admin: SocketAddr) -> String {
    format!(
        r#"Weir demo is running.
  traffic: http://{traffic}   app "demo": v1 x2, v2 x2, split v1 90 / v2 10
  admin:   http://{admin}   dashboard: http://{admin}/ui

Watch the split (about one v2 in ten):
  while sleep 0.1; do curl -s {traffic}; done

Then, from another terminal:
  # canary to half
  curl -s -X PUT {admin}/apps/demo/split -H 'content-type: application/json' -d '{{"weights":{{"v1":50,"v2":50}},"reason":"canary 50%"}}'
  # blue/green flip: everything to v2
  curl -s -X POST {admin}/apps/demo/promote -H 'content-type: application/json' -d '{{"version":"v2"}}'
  # one-call rollback to the previous revision
  curl -s -X POST {admin}/apps/demo/rollback
  # what happened
  curl -s {admin}/apps/demo/history
  curl -s {admin}/metrics | grep weir_requests_total
  # the same from the command line; or let Weir walk a canary and judge it
  weir ctl --admin {admin} split demo v1=50 v2=50
  weir ctl --admin {admin} rollout start demo --canary v2 --plan canary --watch
Ctrl-C stops it."#
    )
}
