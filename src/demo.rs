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
    let socket = tokio::net::TcpListener::bind(addr).await?;
    let bound = socket.local_addr()?;
    let hello = bytes::Bytes::from(format!("Host: {name}, Version: {version}\n"));
    let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handler = move |req: http::Request<crate::data::listener::ClientBody>, _client| {
        let body = match req.uri().path() {
            "/live" | "/ready" => bytes::Bytes::from_static(b"ok\n"),
            "/__weir/hits" => format!("{}\n", hits.load(std::sync::atomic::Ordering::Relaxed)).into(),
            _ => {
                hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                hello.clone()
            }
        };
        async move {
            let mut resp = Response::new(ResponseBody::local(body));
            *resp.status_mut() = StatusCode::OK;
            resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
            resp
        }
    };
    tokio::spawn(listener::serve(socket, handler, cancel, Duration::from_secs(1)));
    Ok(bound)
}

/// Starts a demo backend for every endpoint of every app in `config` and points the config at
/// them. With `ephemeral`, backends bind `127.0.0.1:0` instead of their configured address.
pub async fn start_backends(config: &mut Config, ephemeral: bool, cancel: &CancellationToken) -> std::io::Result<()> {
    for app in config.apps.values_mut() {
        for (version, v) in app.versions.iter_mut() {
            for ep in &mut v.endpoints {
                let name = ep.display_name();
                let at = if ephemeral { SocketAddr::from(([127, 0, 0, 1], 0)) } else { ep.addr };
                ep.addr = spawn_backend(at, &name, version, cancel.child_token())
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
  admin:   http://{admin}

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
Ctrl-C stops it."#
    )
}
