//! Starting a Weir: bind every socket, spawn every task from here, and shut down in order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::config::Config;
use crate::control::{self, Control, ControlHandle};
use crate::health;
use crate::listener;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::snapshot::Snapshot;

/// Errors of starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which socket it was for.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running Weir.
#[derive(Debug)]
pub struct Running {
    /// Bound address of each traffic listener, by name.
    pub listeners: BTreeMap<String, SocketAddr>,
    /// Bound address of the admin API.
    pub admin: SocketAddr,
    /// Sends changes to the control task.
    pub control: ControlHandle,
    /// The routing state the data plane reads.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// The metrics registry.
    pub metrics: Metrics,
    ready: Arc<AtomicBool>,
    traffic_cancel: CancellationToken,
    traffic: TaskTracker,
    admin_cancel: CancellationToken,
    admin_task: tokio::task::JoinHandle<()>,
    control_cancel: CancellationToken,
    control_task: tokio::task::JoinHandle<()>,
}

/// Binds every socket of `config`, stores the first snapshot and starts serving. Returns once
/// the listeners accept connections and `/ready` says ready.
pub async fn start(config: Config) -> Result<Running, Error> {
    start_with(config, None).await
}

/// Like [`start`], remembering `path` so SIGHUP and `POST /reload` can re-read it.
pub async fn start_with(config: Config, path: Option<std::path::PathBuf>) -> Result<Running, Error> {
    let grace = config.runtime.shutdown_grace;
    let metrics = Metrics::new();
    let mut control = Control::new(config.clone(), metrics.clone()).with_config_path(path);
    let snapshot = control.snapshot();
    // One token per phase, so shutdown can stop traffic, admin and control in that order.
    let (traffic_cancel, admin_cancel, control_cancel) =
        (CancellationToken::new(), CancellationToken::new(), CancellationToken::new());
    let traffic = TaskTracker::new();
    let ready = Arc::new(AtomicBool::new(false));

    // Bind everything before serving anything, so a taken port fails start-up cleanly.
    let bind = |addr: SocketAddr, what: String| async move {
        listener::bind(addr).await.map_err(|source| Error::Bind { addr, what, source })
    };
    let admin_socket = bind(config.admin.addr, "admin".into()).await?;
    let mut sockets = Vec::new();
    for (name, l) in &config.listeners {
        sockets.push((name.clone(), bind(l.addr, format!("listener {name}")).await?));
    }

    // Probe every endpoint once before serving, so the first requests do not go to endpoints
    // that are down (nor get 503 because nothing was probed yet). Bounded by the longest
    // probe timeout; a probe that has not answered by then leaves its endpoint down.
    let first = control.start_health(control_cancel.child_token());
    if !first.is_empty() {
        let limit = probe_timeouts(&config) + std::time::Duration::from_millis(250);
        tracing::info!(endpoints = first.len(), "waiting for the first probe of every endpoint (at most {limit:?})");
        health::first_results(first, limit).await;
    }
    let (control, control_task) = control::spawn(control, control_cancel.clone());
    let admin_addr = admin_socket.local_addr().expect("bound socket has an address");
    let admin = Admin::new(Arc::clone(&snapshot), control.clone(), metrics.clone(), Arc::clone(&ready));
    let admin_handler = move |req, client| admin.clone().handle(req, client);
    let admin_task = tokio::spawn(listener::serve(admin_socket, admin_handler, admin_cancel.clone(), grace));

    let mut listeners = BTreeMap::new();
    // Listener indexes follow the config's (sorted) listener order, as the snapshot's do.
    for (index, (name, socket)) in sockets.into_iter().enumerate() {
        let addr = socket.local_addr().expect("bound socket has an address");
        tracing::info!(listener = %name, %addr, "listening");
        listeners.insert(name, addr);
        let proxy = Proxy::new(Arc::clone(&snapshot), metrics.clone(), index);
        let handler = move |req, client| {
            let proxy = proxy.clone();
            async move { proxy.handle(req, client).await }
        };
        traffic.spawn(listener::serve(socket, handler, traffic_cancel.clone(), grace));
    }
    tracing::info!(%admin_addr, "admin API listening");
    ready.store(true, Ordering::Release);
    traffic.close();
    Ok(Running {
        listeners,
        admin: admin_addr,
        control,
        snapshot,
        metrics,
        ready,
        traffic_cancel,
        traffic,
        admin_cancel,
        admin_task,
        control_cancel,
        control_task,
    })
}

impl Running {
    /// Stops in order: `/ready` turns 503; traffic listeners stop accepting and their
    /// in-flight requests get the grace period to finish; then the admin API (which answered
    /// 503 on `/ready` meanwhile) and last the control task end.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        self.traffic_cancel.cancel();
        self.traffic.wait().await;
        self.admin_cancel.cancel();
        let _ = self.admin_task.await;
        self.control_cancel.cancel();
        let _ = self.control_task.await;
    }
}

/// The longest probe timeout in `config`.
fn probe_timeouts(config: &Config) -> std::time::Duration {
    config
        .apps
        .values()
        .flat_map(|a| a.probe.iter().chain(a.versions.values().filter_map(|v| v.probe.as_ref())))
        .map(|p| p.timeout)
        .max()
        .unwrap_or_default()
}
