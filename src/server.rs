//! Starting a Weir: bind every socket, spawn every task from here, and shut down in order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::admin::Admin;
use crate::control::discovery::{PoolKey, SyncState};
use crate::control::state::file::FileStore;
use crate::control::state::{Replicas, Store, StoreError, default_identity};
use crate::control::{self, Control, ControlHandle};
use crate::data::health;
use crate::data::listener;
use crate::data::proxy::Proxy;
use crate::data::snapshot::Routes;
use crate::metrics::Metrics;

/// Errors of starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Discovery is configured but cannot start.
    #[error("{0}")]
    Discovery(String),
    /// The admin API's tokens file cannot be used.
    #[error("{0}")]
    Auth(String),
    /// The state store cannot be opened or read, or its state cannot be used.
    #[error("{0}")]
    State(String),
    /// A TLS listener's certificates cannot be used.
    #[error("{0}")]
    Tls(String),
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
    pub snapshot: Routes,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Whether every discovered pool has synced.
    pub sync: Arc<SyncState>,
    /// What this replica has applied (state sequence, revisions).
    pub applied: tokio::sync::watch::Receiver<control::Applied>,
    /// The state store's tasks (watch, lease reports): awaited last on shutdown.
    state_tasks: Vec<tokio::task::JoinHandle<()>>,
    ready: Arc<AtomicBool>,
    /// Cancelled by the admin API's `POST /shutdown`.
    shutdown_requested: CancellationToken,
    drain_delay: std::time::Duration,
    closing: CancellationToken,
    traffic_cancel: CancellationToken,
    traffic: TaskTracker,
    admin_cancel: CancellationToken,
    admin_task: tokio::task::JoinHandle<()>,
    control_cancel: CancellationToken,
    control_task: tokio::task::JoinHandle<()>,
}

/// Binds every socket of `config`, stores the first snapshot, waits (bounded) for the first
/// probe of every static endpoint and starts serving. With a static config the listeners
/// accept and `/ready` says ready when this returns; with discovery, both happen once every
/// watched pool has listed (connections meanwhile wait in the listen backlog).
pub async fn start(config: Config) -> Result<Running, Error> {
    start_with(config, None).await
}

/// Like [`start`], remembering `path` so SIGHUP and `POST /reload` can re-read it.
pub async fn start_with(config: Config, path: Option<std::path::PathBuf>) -> Result<Running, Error> {
    let grace = config.runtime.shutdown_grace;
    let metrics = Metrics::new();
    let auth = admin_auth(&config).await?;
    if config.admin.allow_unauthenticated && !config.admin.addr.ip().is_loopback() {
        tracing::warn!(addr = %config.admin.addr, "the admin API is open to any client (admin.allow_unauthenticated)");
    }
    let (store, state) = open_store(&config, &metrics).await?;
    let mut control = open_control(&config, &metrics, store, &state.identity).await?.with_config_path(path);
    let applied = control.applied();
    let replicas = state.replicas(&applied);
    let snapshot = control.routes();
    // One token per phase, so shutdown can stop traffic, admin and control in that order.
    let (traffic_cancel, admin_cancel, control_cancel) =
        (CancellationToken::new(), CancellationToken::new(), CancellationToken::new());
    let traffic = TaskTracker::new();
    let ready = Arc::new(AtomicBool::new(false));
    // Fired when draining begins: every traffic listener's responses say `Connection: close`.
    let closing = CancellationToken::new();

    // Bind everything before serving anything, so a taken port fails start-up cleanly.
    let bind = |addr: SocketAddr, what: String| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, what, source })
    };
    let admin_socket = bind(config.admin.addr, "admin".into()).await?;
    let mut sockets = Vec::new();
    for (name, l) in &config.listeners {
        sockets.push((name.clone(), l.clone(), bind(l.addr, format!("listener {name}")).await?));
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
    // TLS listeners' certificates: loaded before serving; the control task re-reads them on
    // a reload, and a watcher when their files change.
    let mut certificates = BTreeMap::new();
    let mut tls_handshakes = BTreeMap::new();
    for (name, l) in &config.listeners {
        if let Some(tls) = &l.tls {
            tls_handshakes.insert(name.clone(), tls_listener(name, tls, &metrics, &control_cancel, &mut certificates)?);
        }
    }
    let mut control = control;
    control.set_certificates(certificates);
    // Replicas sharing a store elect the one that runs rollouts (a Lease); until elected,
    // this one does not.
    #[cfg(feature = "kubernetes")]
    if matches!(control.store(), crate::control::state::Store::Kube(_)) {
        control.set_leading(false);
    }
    let (control, control_task) = control::spawn(control, control_cancel.clone());
    let state_tasks = state.spawn(&control, &applied, &control_cancel);
    let pools = control::discovery_of(&config);
    let discovers = !pools.is_empty();
    let sync = Arc::new(SyncState::new(pools.keys().cloned()));
    start_discovery(&config, pools, &control, &sync, &metrics, &control_cancel).await?;
    let admin_addr = admin_socket.local_addr().expect("bound socket has an address");
    let shutdown_requested = CancellationToken::new();
    let admin = Admin::new(snapshot.clone(), control.clone(), metrics.clone(), Arc::clone(&ready), Arc::clone(&sync))
        .with_shutdown(shutdown_requested.clone())
        .with_replicas(replicas)
        .with_auth(auth);
    let admin_task = tokio::spawn(admin.serve(admin_socket, admin_cancel.clone(), grace));

    // Opened once discovery has listed every pool and `/ready` says so: traffic never
    // precedes readiness. (A cancelled token is a one-shot latch every listener can await.)
    let open = CancellationToken::new();
    let mut listeners = BTreeMap::new();
    // Listener indexes follow the config's (sorted) listener order, as the snapshot's do.
    for (index, (name, listener_config, socket)) in sockets.into_iter().enumerate() {
        let listener_name = name.clone();
        let addr = socket.local_addr().expect("bound socket has an address");
        tracing::info!(listener = %name, %addr, "listening");
        listeners.insert(name, addr);
        let mut limits = listener::Limits::of(&listener_config);
        limits.closing = closing.clone();
        let tls = tls_handshakes.remove(&listener_name);
        let https = tls.is_some();
        let conns = listener::Connections { limits, metrics: metrics.listener(&listener_name), tls };
        let proxy = Proxy::new(snapshot.clone(), &metrics, index, &conns.metrics, listener_config.fast_path);
        let proxy = if https { proxy.https() } else { proxy };
        // Upgraded connections run as the listeners' tasks (shutdown waits for them too), at
        // most as many as the listener's connections.
        let proxy = proxy.with_tunnels(Arc::new(crate::data::proxy::Tunnels {
            tracker: traffic.clone(),
            stop: traffic_cancel.clone(),
            grace,
            slots: Arc::new(tokio::sync::Semaphore::new(listener_config.max_connections)),
        }));
        // Weir's codec reads and checks every HTTP/1 head; it forwards the requests without a
        // body or with a small one itself, and hands the rest to hyper one at a time.
        let forward = Some(proxy.clone());
        // Boxed: the request's future is large (attempts, hedges, the exchange), and hyper
        // moves a service's future into its dispatcher; moving a pointer instead of the
        // future took 7 % of Weir's CPU under HTTPS load (perf, memcpy in recv_msg).
        let handler = move |req, client| {
            let proxy = proxy.clone();
            Box::pin(async move { proxy.handle(req, client).await })
        };
        // Bound now, accepting once discovery has listed every pool: connections wait in the
        // backlog rather than meet an empty table.
        let (open, cancel) = (open.clone(), traffic_cancel.clone());
        traffic.spawn(async move {
            tokio::select! {
                () = open.cancelled() => listener::serve_with(socket, handler, forward, conns, cancel, grace).await,
                () = cancel.cancelled() => {}
            }
        });
    }
    tracing::info!(%admin_addr, "admin API listening");
    // With discovery, the wait below runs even when every pool has already listed (a fast API
    // server): what it listed must still pass its first probes before traffic is let in.
    if !discovers {
        ready.store(true, Ordering::Release);
        open.cancel();
    } else {
        if !sync.all_synced() {
            tracing::info!("waiting for Kubernetes discovery to list every pool before serving");
        }
        let (sync, ready, snapshot) = (Arc::clone(&sync), Arc::clone(&ready), snapshot.clone());
        let limit = probe_timeouts(&config) + std::time::Duration::from_millis(250);
        let stop = traffic_cancel.clone();
        tokio::spawn(async move {
            let synced = async {
                sync.wait().await;
                // Endpoints discovered just now are probed at once; as for static ones at
                // start, let their first verdicts in before the first requests.
                first_probes(&snapshot, limit).await;
            };
            tokio::select! {
                () = synced => {}
                () = stop.cancelled() => return,
            }
            tracing::info!("discovery synced; serving");
            ready.store(true, Ordering::Release);
            open.cancel();
        });
    }
    traffic.close();
    Ok(Running {
        listeners,
        admin: admin_addr,
        control,
        snapshot,
        metrics,
        sync,
        applied,
        state_tasks,
        ready,
        shutdown_requested,
        drain_delay: config.runtime.drain_delay,
        closing,
        traffic_cancel,
        traffic,
        admin_cancel,
        admin_task,
        control_cancel,
        control_task,
    })
}

impl Running {
    /// Resolves when the admin API was asked to shut Weir down (`POST /shutdown`).
    pub async fn shutdown_requested(&self) {
        self.shutdown_requested.cancelled().await;
    }

    /// Stops as a terminating pod should (SIGTERM): [`Running::shutdown_after`] the
    /// configured `runtime.drain_delay`.
    pub async fn terminate(self) {
        let delay = self.drain_delay;
        self.shutdown_after(delay).await;
    }

    /// Stops without a drain delay (SIGINT, tests): [`Running::shutdown_after`] zero.
    pub async fn shutdown(self) {
        self.shutdown_after(std::time::Duration::ZERO).await;
    }

    /// Stops in order: `/ready` turns 503 and every response says `Connection: close`
    /// (HTTP/2: GOAWAY) while the traffic listeners keep accepting for `drain_delay`; then
    /// they stop accepting and their in-flight requests get the grace period to finish; then
    /// the admin API (which answered 503 on `/ready` meanwhile) and last the control task end.
    pub async fn shutdown_after(self, drain_delay: std::time::Duration) {
        self.ready.store(false, Ordering::Release);
        self.closing.cancel();
        if !drain_delay.is_zero() {
            tracing::info!("draining: still accepting for {drain_delay:?}, asking clients to reconnect");
            tokio::time::sleep(drain_delay).await;
        }
        self.traffic_cancel.cancel();
        self.traffic.wait().await;
        self.admin_cancel.cancel();
        let _ = self.admin_task.await;
        self.control_cancel.cancel();
        let _ = self.control_task.await;
        // The lease reporter deletes this replica's Lease on its way out (bounded by the
        // store's API timeout).
        for task in self.state_tasks {
            let _ = task.await;
        }
    }
}

/// The admin API's gate from `[admin]`.
async fn admin_auth(config: &Config) -> Result<crate::control::admin::auth::Auth, Error> {
    use crate::control::admin::auth::Auth;
    let Some(k) = &config.admin.kubernetes_auth else { return Auth::new(&config.admin).map_err(Error::Auth) };
    #[cfg(feature = "kubernetes")]
    {
        let client = crate::control::discovery::kube::client(&config.kubernetes)
            .await
            .map_err(|e| Error::Auth(e.to_string()))?;
        let namespace = crate::control::state::kube::namespace_or(k.namespace.as_deref());
        tracing::info!(%namespace, "admin callers are checked with TokenReview and SubjectAccessReview");
        Ok(Auth::kubernetes(crate::control::admin::auth::kube::Reviewer::new(client, namespace, k.api_timeout)))
    }
    #[cfg(not(feature = "kubernetes"))]
    {
        let _ = k;
        Err(Error::Auth("admin.kubernetes_auth needs a weir built with the `kubernetes` feature".into()))
    }
}

/// The state store a config asks for, with what its tasks need.
struct StateSetup {
    identity: String,
    #[cfg(feature = "kubernetes")]
    kube: Option<(Arc<crate::control::state::kube::KubeStore>, crate::control::state::kube::Leases)>,
}

impl StateSetup {
    fn replicas(&self, applied: &tokio::sync::watch::Receiver<control::Applied>) -> Replicas {
        #[cfg(feature = "kubernetes")]
        if let Some((_, leases)) = &self.kube {
            return Replicas::Kube(Box::new(leases.clone()));
        }
        Replicas::Local { identity: self.identity.clone(), applied: applied.clone() }
    }

    /// Starts the Kubernetes store's watch and this replica's lease reports.
    fn spawn(
        self,
        control: &ControlHandle,
        applied: &tokio::sync::watch::Receiver<control::Applied>,
        cancel: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        #[cfg(feature = "kubernetes")]
        if let Some((store, leases)) = self.kube {
            return vec![
                tokio::spawn(store.watch(control.clone(), cancel.child_token())),
                tokio::spawn(leases.clone().lead_rollouts(control.clone(), cancel.child_token())),
                tokio::spawn(leases.run(applied.clone(), cancel.child_token())),
            ];
        }
        let _ = (control, applied, cancel);
        Vec::new()
    }
}

/// Opens the store `[state]` names.
async fn open_store(config: &Config, metrics: &Metrics) -> Result<(Store, StateSetup), Error> {
    let identity = config.state.kubernetes.as_ref().and_then(|k| k.identity.clone()).unwrap_or_else(default_identity);
    if let Some(dir) = &config.state.dir {
        let store = FileStore::open(dir).map_err(|e| Error::State(e.to_string()))?;
        #[cfg(feature = "kubernetes")]
        return Ok((Store::File(Arc::new(store)), StateSetup { identity, kube: None }));
        #[cfg(not(feature = "kubernetes"))]
        return Ok((Store::File(Arc::new(store)), StateSetup { identity }));
    }
    if let Some(k) = &config.state.kubernetes {
        #[cfg(feature = "kubernetes")]
        {
            let client = crate::control::discovery::kube::client(&config.kubernetes)
                .await
                .map_err(|e| Error::State(e.to_string()))?;
            let store = Arc::new(crate::control::state::kube::KubeStore::new(client, k));
            let leases = store.leases(k, &identity).with_metrics(metrics.clone());
            return Ok((Store::Kube(Arc::clone(&store)), StateSetup { identity, kube: Some((store, leases)) }));
        }
        #[cfg(not(feature = "kubernetes"))]
        {
            let _ = (k, metrics);
            return Err(Error::State("state.kubernetes needs a weir built with the `kubernetes` feature".into()));
        }
    }
    tracing::warn!(
        "no [state] store is configured: the split lives in memory, and a restart goes back to the config \
         file's split and forgets the history (set state.dir, or state.kubernetes in a cluster)"
    );
    #[cfg(feature = "kubernetes")]
    return Ok((Store::Memory, StateSetup { identity, kube: None }));
    #[cfg(not(feature = "kubernetes"))]
    return Ok((Store::Memory, StateSetup { identity }));
}

/// Builds the control state from the store. An unreachable store is tried again for a few
/// seconds; a state that cannot be used stops the start with what to do about it (Weir never
/// guesses a split, and never silently goes back to the file's).
async fn open_control(config: &Config, metrics: &Metrics, store: Store, identity: &str) -> Result<Control, Error> {
    const TRIES: u32 = 10;
    let describe = store.describe();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match Control::open(config.clone(), metrics.clone(), store.clone(), identity.to_owned()).await {
            Ok(control) => {
                tracing::info!(state = %describe, "state store opened");
                return Ok(control);
            }
            Err(StoreError::Unreadable { what, reason }) => {
                return Err(Error::State(format!(
                    "the state in {what} cannot be read: {reason}\n\
                     weir will not guess a split, nor silently go back to the config file's. To recover, either:\n  \
                     - fix it (it is the JSON document weir wrote), or remove it to start from the config file's \
                     split (history is lost), or\n  \
                     - set state.on_unreadable = \"start_from_config\": weir keeps its text aside and starts from \
                     the config file's split"
                )));
            }
            Err(e) if attempt < TRIES => {
                tracing::warn!(state = %describe, attempt, "cannot open the state store, trying again in 1s: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(Error::State(format!("cannot open the state store ({describe}): {e}"))),
        }
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

/// Starts one watcher per discovered pool.
async fn start_discovery(
    config: &Config,
    pools: BTreeMap<PoolKey, crate::config::DiscoveryConfig>,
    control: &ControlHandle,
    sync: &Arc<SyncState>,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    if pools.is_empty() {
        return Ok(());
    }
    #[cfg(feature = "kubernetes")]
    {
        let client = crate::control::discovery::kube::client(&config.kubernetes)
            .await
            .map_err(|e| Error::Discovery(e.to_string()))?;
        for (key, cfg) in pools {
            tracing::info!(app = %key.0, version = %key.1, source = ?cfg, "watching Kubernetes for endpoints");
            tokio::spawn(crate::control::discovery::kube::watch(crate::control::discovery::kube::PoolWatch {
                client: client.clone(),
                key,
                cfg,
                control: control.clone(),
                sync: Arc::clone(sync),
                metrics: metrics.clone(),
                cancel: cancel.child_token(),
            }));
        }
        Ok(())
    }
    #[cfg(not(feature = "kubernetes"))]
    {
        let _ = (config, control, sync, metrics, cancel);
        Err(Error::Discovery("this weir was built without the `kubernetes` feature; discovery is unavailable".into()))
    }
}

/// A TLS listener's handshake, with its certificates loaded (kept in `certificates` for
/// reloads) and watched for changes until `cancel`.
fn tls_listener(
    name: &str,
    tls: &crate::config::TlsConfig,
    metrics: &Metrics,
    cancel: &CancellationToken,
    certificates: &mut BTreeMap<String, Arc<crate::data::tls::Certificates>>,
) -> Result<listener::Tls, Error> {
    let tls_error = |e: crate::data::tls::TlsError| Error::Tls(format!("listener {name}: {e}"));
    let certs = crate::data::tls::Certificates::load(name, &tls.certificates, metrics.tls_reload_errors(name))
        .map_err(tls_error)?;
    let server = certs.server_config(tls).map_err(tls_error)?;
    tokio::spawn(Arc::clone(&certs).watch(cancel.clone()));
    certificates.insert(name.to_owned(), certs);
    Ok(listener::Tls { acceptor: tokio_rustls::TlsAcceptor::from(server), handshake_timeout: tls.handshake_timeout })
}

/// Waits until every endpoint whose version is probed has passed a probe, at most `limit`.
/// Start-up only: it polls the snapshot.
async fn first_probes(snapshot: &Routes, limit: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let snap = snapshot.load();
        // A probed version with no endpoint yet counts as pending too: right after discovery
        // syncs, the control task may not have stored the snapshot with what it listed (a
        // race the tests hit under load). A pool that is really empty waits out `limit`.
        // An endpoint whose first probe failed (a transient error on a loaded machine) is
        // pending too, until one passes or `limit`: serving before would answer 503.
        let pending = snap.apps.iter().flat_map(|a| a.versions.iter()).filter(|v| v.probe.is_some()).any(|v| {
            let endpoints = v.pool.endpoints();
            endpoints.is_empty() || endpoints.iter().any(|e| !e.state.ever_up())
        });
        if !pending || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
