//! The Kubernetes state store: the state document in one ConfigMap, shared by every replica.
//!
//! - **Writes** replace the ConfigMap with `metadata.resourceVersion` set to the version the
//!   writer's state is based on: the API server refuses it with 409 Conflict when another
//!   replica wrote meanwhile, and the control task re-reads, re-checks and tries again.
//! - **Reads**: every replica watches the ConfigMap (list/watch with the field selector
//!   `metadata.name=<name>`, which RBAC authorizes with `resourceNames`) and hands what it
//!   reads to its control task.
//! - **Reports**: every replica keeps a `coordination.k8s.io/v1` Lease named
//!   `<configmap>-<identity>`, renewed every third of its duration and at once after it applies
//!   a new state, annotated with the state sequence and revisions it applied. `GET /cluster`
//!   and `?wait=all` read them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Document, Loaded, Replica, StoreError, Version};
use crate::config::StateKubernetes;
use crate::control::{Applied, ControlHandle};

/// The ConfigMap key that holds the document.
pub const KEY: &str = "state.json";
/// The label on every replica's Lease, valued with the ConfigMap's name.
pub const LEASE_LABEL: &str = "weir.dev/state";
const SEQUENCE_ANNOTATION: &str = "weir.dev/applied-sequence";
const REVISIONS_ANNOTATION: &str = "weir.dev/applied-revisions";
/// This replica's per-version counts (requests, failures, latency histogram) since it started,
/// which the rollout leader adds up: its verdict covers every replica's traffic.
const COUNTS_ANNOTATION: &str = "weir.dev/counts";

/// The ConfigMap store.
#[derive(Debug)]
pub struct KubeStore {
    api: Api<ConfigMap>,
    name: String,
    namespace: String,
    timeout: Duration,
    /// The ConfigMap as last read or written: a write keeps its other keys and labels.
    last: Mutex<Option<ConfigMap>>,
}

/// Every replica's report, through Leases.
#[derive(Debug, Clone)]
pub struct Leases {
    api: Api<Lease>,
    state: String,
    identity: String,
    duration: Duration,
    timeout: Duration,
    /// Where this replica's per-version counts come from, reported for the rollout leader.
    metrics: Option<crate::metrics::Metrics>,
}

/// The namespace: configured, else `$POD_NAMESPACE`, else the service account's, else
/// `default`.
pub fn namespace(cfg: &StateKubernetes) -> String {
    namespace_or(cfg.namespace.as_deref())
}

/// `explicit`, else `$POD_NAMESPACE`, else the service account's namespace, else `default`.
pub fn namespace_or(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "default".into())
}

impl KubeStore {
    /// The store on `cfg`'s ConfigMap.
    pub fn new(client: Client, cfg: &StateKubernetes) -> KubeStore {
        let namespace = namespace(cfg);
        KubeStore {
            api: Api::namespaced(client, &namespace),
            name: cfg.name.clone(),
            namespace,
            timeout: cfg.api_timeout,
            last: Mutex::new(None),
        }
    }

    /// Every replica's reports, with this one as `identity`.
    pub fn leases(&self, cfg: &StateKubernetes, identity: &str) -> Leases {
        Leases {
            api: Api::namespaced(self.api.clone().into_client(), &self.namespace),
            state: self.name.clone(),
            identity: identity.to_owned(),
            duration: cfg.lease_duration,
            timeout: cfg.api_timeout,
            metrics: None,
        }
    }

    /// `ConfigMap <namespace>/<name>`.
    pub fn describe(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }

    async fn call<T>(&self, what: &str, f: impl Future<Output = kube::Result<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => Err(StoreError::Conflict),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("cannot {what} {}: {e}", self.describe()))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "the Kubernetes API did not answer within {:?} when asked to {what} {}{}",
                self.timeout,
                self.describe(),
                if what == "write" { "; the change may or may not be stored, see GET /apps" } else { "" }
            ))),
        }
    }

    /// The document in the ConfigMap (none when its key is absent or empty) and the
    /// ConfigMap's `resourceVersion`.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        let cm = self.call("read", self.api.get_opt(&self.name)).await?.ok_or_else(|| {
            StoreError::Unavailable(format!(
                "{} does not exist: create it empty (docker/kubernetes/weir.yaml ships it) and let weir's \
                 ServiceAccount get, list, watch and update it",
                self.describe()
            ))
        })?;
        let doc = self.parse(&cm)?;
        let version = cm.metadata.resource_version.clone();
        *self.last.lock().expect("not poisoned") = Some(cm);
        let floor = if doc.is_none() { self.highest_applied().await } else { 0 };
        Ok(Loaded { doc, version, floor })
    }

    /// The highest state sequence in any replica's Lease (their reports outlive the document);
    /// 0, with a warning, when they cannot be listed (a fresh install has none anyway).
    async fn highest_applied(&self) -> u64 {
        let leases: Api<Lease> = Api::namespaced(self.api.clone().into_client(), &self.namespace);
        let params = ListParams::default().labels(&format!("{LEASE_LABEL}={}", self.name));
        match self.call("list the Leases of", leases.list(&params)).await {
            Ok(list) => list
                .items
                .iter()
                .filter_map(|l| l.metadata.annotations.as_ref()?.get(SEQUENCE_ANNOTATION)?.parse::<u64>().ok())
                .max()
                .unwrap_or(0),
            Err(e) => {
                tracing::warn!(
                    state = %self.describe(),
                    "cannot read the replicas' reports, so a new state starts at sequence 1; replicas that \
                     applied a later one ignore it until restarted: {e}"
                );
                0
            }
        }
    }

    /// The document a ConfigMap holds.
    pub fn parse(&self, cm: &ConfigMap) -> Result<Option<Document>, StoreError> {
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(KEY)).filter(|t| !t.trim().is_empty()) else {
            return Ok(None);
        };
        Document::parse(text.as_bytes())
            .map(Some)
            .map_err(|reason| StoreError::Unreadable { what: format!("{} (key {KEY})", self.describe()), reason })
    }

    /// Replaces the document if the ConfigMap is still at `expected`; returns its new
    /// `resourceVersion`. 409 from the API server is [`StoreError::Conflict`].
    pub async fn write(&self, text: Vec<u8>, expected: &Version) -> Result<String, StoreError> {
        let text = String::from_utf8(text).expect("JSON is UTF-8");
        let mut cm = self.last.lock().expect("not poisoned").clone().unwrap_or_else(|| ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        });
        cm.metadata.resource_version = expected.clone();
        cm.metadata.managed_fields = None;
        cm.data.get_or_insert_default().insert(KEY.into(), text);
        let written = self.call("write", self.api.replace(&self.name, &PostParams::default(), &cm)).await?;
        let version = written.metadata.resource_version.clone().unwrap_or_default();
        *self.last.lock().expect("not poisoned") = Some(written);
        Ok(version)
    }

    /// Moves an unreadable document to the key `state.json.unreadable-<unix seconds>` in the
    /// same ConfigMap.
    pub async fn set_aside(&self) -> Result<String, StoreError> {
        let mut cm = self.call("read", self.api.get_opt(&self.name)).await?.ok_or_else(|| {
            StoreError::Unavailable(format!("{} disappeared while setting its state aside", self.describe()))
        })?;
        let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let aside = format!("{KEY}.unreadable-{secs}");
        let data = cm.data.get_or_insert_default();
        if let Some(text) = data.remove(KEY) {
            data.insert(aside.clone(), text);
        }
        cm.metadata.managed_fields = None;
        self.call("update", self.api.replace(&self.name, &PostParams::default(), &cm)).await?;
        Ok(format!("{} key {aside}", self.describe()))
    }

    /// Watches the ConfigMap until `cancel` fires, handing every document read to the
    /// control task (or why it cannot be used). Errors are logged and retried with
    /// kube-runtime's backoff; the last applied state keeps routing meanwhile.
    pub async fn watch(self: std::sync::Arc<Self>, control: ControlHandle, cancel: CancellationToken) {
        loop {
            let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
            let mut stream = watcher::watcher(self.api.clone(), config).backoff(Backoff::default()).boxed();
            let mut errors = 0u32;
            loop {
                let item = tokio::select! {
                    () = cancel.cancelled() => return,
                    item = stream.next() => item,
                };
                let cm = match item {
                    None => break,
                    Some(Ok(Event::Apply(cm) | Event::InitApply(cm))) => cm,
                    Some(Ok(Event::Delete(_))) => {
                        tracing::error!(
                            state = %self.describe(),
                            "the state ConfigMap was deleted; routing stays as last applied, changes will fail \
                             until it exists again"
                        );
                        continue;
                    }
                    Some(Ok(Event::Init | Event::InitDone)) => continue,
                    Some(Err(e)) => {
                        errors += 1;
                        let gone = matches!(&e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410);
                        tracing::warn!(state = %self.describe(), errors, "watching the state failed, routing stays as last applied: {e}");
                        if gone || errors >= 5 {
                            break;
                        }
                        continue;
                    }
                };
                errors = 0;
                let read = match self.parse(&cm) {
                    Ok(Some(doc)) => Ok((doc, cm.metadata.resource_version.clone())),
                    Ok(None) => continue,
                    Err(e) => Err(e.to_string()),
                };
                *self.last.lock().expect("not poisoned") = Some(cm);
                if control.stored(read).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// The state watch's retry delays: 250 ms doubling to at most 2 s. Shorter than
/// kube-runtime's default (up to 30 s): while a replica's watch is down, changes made on other
/// replicas do not reach it, so it must come back soon after the API server does.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Duration::from_millis(250) }
    }
}

impl Iterator for Backoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(2));
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        *self = Backoff::default();
    }
}

impl Leases {
    /// Reports this replica's per-version counts too, from `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn lease_name(&self) -> String {
        let mut name = format!("{}-{}", self.state, self.identity.to_ascii_lowercase());
        name.truncate(253);
        name
    }

    async fn call<T>(&self, f: impl Future<Output = kube::Result<T>>) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("the Kubernetes API did not answer within {:?}", self.timeout)),
        }
    }

    /// Creates or renews this replica's Lease with what it applied.
    pub async fn report(&self, applied: &Applied) -> Result<(), String> {
        let name = self.lease_name();
        let now = MicroTime(Timestamp::now());
        let mut annotations = BTreeMap::from([
            (SEQUENCE_ANNOTATION.to_owned(), applied.sequence.to_string()),
            (REVISIONS_ANNOTATION.to_owned(), serde_json::to_string(&applied.revisions).expect("serializes")),
        ]);
        if let Some(metrics) = &self.metrics {
            annotations
                .insert(COUNTS_ANNOTATION.to_owned(), serde_json::to_string(&metrics.counts()).expect("serializes"));
        }
        let spec = |acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: acquired.or_else(|| Some(now.clone())),
            renew_time: Some(now.clone()),
            ..Default::default()
        };
        match self.call(self.api.get_opt(&name)).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name),
                        labels: Some(BTreeMap::from([(LEASE_LABEL.to_owned(), self.state.clone())])),
                        annotations: Some(annotations),
                        ..Default::default()
                    },
                    spec: Some(spec(None)),
                };
                self.call(self.api.create(&PostParams::default(), &lease)).await.map(drop)
            }
            Some(mut lease) => {
                let acquired = lease.spec.as_ref().and_then(|s| s.acquire_time.clone());
                lease.spec = Some(spec(acquired));
                lease.metadata.annotations.get_or_insert_default().extend(annotations);
                lease.metadata.labels.get_or_insert_default().insert(LEASE_LABEL.to_owned(), self.state.clone());
                lease.metadata.managed_fields = None;
                self.call(self.api.replace(&name, &PostParams::default(), &lease)).await.map(drop)
            }
        }
    }

    /// Reports at once whenever `applied` changes and every third of the lease duration,
    /// until `cancel` fires; then deletes this replica's Lease (it is leaving).
    pub async fn run(self, mut applied: watch::Receiver<Applied>, cancel: CancellationToken) {
        let every = self.duration / 3;
        let mut failing = false;
        loop {
            let current = applied.borrow_and_update().clone();
            match self.report(&current).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("reporting this replica's applied state works again");
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(lease = %self.lease_name(), "cannot report this replica's applied state: {e}");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = applied.changed() => if changed.is_err() { break },
                () = tokio::time::sleep(if failing { every.min(Duration::from_secs(1)) } else { every }) => {}
            }
        }
        let name = self.lease_name();
        if let Err(e) = self.call(self.api.delete(&name, &DeleteParams::default())).await {
            tracing::warn!(lease = %name, "could not delete this replica's lease on the way out: {e}");
        }
    }

    /// The Lease of the replica that runs rollouts: one per shared state, not labelled as a
    /// replica's report.
    fn leader_name(&self) -> String {
        let mut name = format!("{}-rollouts", self.state);
        name.truncate(253);
        name
    }

    /// Takes rollout leadership if nobody holds it (or the holder stopped renewing for its
    /// lease duration), renews it if this replica holds it; whether this replica leads now.
    /// Both are compare-and-swap on the Lease's `resourceVersion`: of two replicas taking
    /// over at once, one wins.
    pub async fn lead(&self) -> Result<bool, String> {
        let name = self.leader_name();
        let now = MicroTime(Timestamp::now());
        let seconds = self.duration.as_secs().clamp(1, i32::MAX as u64) as i32;
        let lost = |e: &str| e.contains("409") || e.contains("Conflict") || e.contains("AlreadyExists");
        match self.call(self.api.get_opt(&name)).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(name), ..Default::default() },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.call(self.api.create(&PostParams::default(), &lease)).await {
                    Ok(_) => Ok(true),
                    Err(e) if lost(&e) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
                let renewed = spec.renew_time.map_or(SystemTime::UNIX_EPOCH, |t| SystemTime::from(t.0));
                let held_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
                if !mine && renewed + held_for > SystemTime::now() {
                    return Ok(false);
                }
                lease.spec = Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: if mine { spec.acquire_time } else { Some(now.clone()) },
                    renew_time: Some(now),
                    lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
                    ..Default::default()
                });
                lease.metadata.managed_fields = None;
                match self.call(self.api.replace(&name, &PostParams::default(), &lease)).await {
                    Ok(_) => {
                        if !mine {
                            tracing::info!(lease = %name, "this replica now runs rollouts");
                        }
                        Ok(true)
                    }
                    Err(e) if lost(&e) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Keeps rollout leadership up to date every third of the lease duration, telling the
    /// control task when it changes, until `cancel`; gives it up on the way out (so another
    /// replica takes over at once). A replica that cannot reach the API server stops leading:
    /// another may have taken over, and its writes would fail anyway.
    pub async fn lead_rollouts(self, control: ControlHandle, cancel: CancellationToken) {
        let every = (self.duration / 3).max(Duration::from_millis(200));
        let mut leading = false;
        loop {
            let now = match self.lead().await {
                Ok(l) => l,
                Err(e) => {
                    if leading {
                        tracing::warn!("cannot renew rollout leadership, stepping down: {e}");
                    }
                    false
                }
            };
            if now != leading {
                leading = now;
                if control.leading(leading).await.is_err() {
                    return;
                }
            }
            // The leader adds every other replica's counts to its own.
            if leading && let Ok(replicas) = self.list().await {
                let counts = replicas
                    .into_iter()
                    .filter(|r| !r.this)
                    .filter_map(|r| Some((r.name, serde_json::from_str(r.counts.as_deref()?).ok()?)))
                    .collect();
                if control.peer_counts(counts).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
        if leading {
            let name = self.leader_name();
            if let Ok(Some(mut lease)) = self.call(self.api.get_opt(&name)).await {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                }
                lease.metadata.managed_fields = None;
                let _ = self.call(self.api.replace(&name, &PostParams::default(), &lease)).await;
            }
        }
    }

    /// Every replica's last report.
    pub async fn list(&self) -> Result<Vec<Replica>, String> {
        let params = ListParams::default().labels(&format!("{LEASE_LABEL}={}", self.state));
        let leases = self.call(self.api.list(&params)).await?;
        let now = SystemTime::now();
        Ok(leases
            .items
            .into_iter()
            .map(|l| {
                let annotations = l.metadata.annotations.unwrap_or_default();
                let spec = l.spec.unwrap_or_default();
                let renewed = spec.renew_time.map_or(SystemTime::UNIX_EPOCH, |t| SystemTime::from(t.0));
                let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
                let name = spec.holder_identity.unwrap_or_else(|| l.metadata.name.unwrap_or_default());
                Replica {
                    this: name == self.identity,
                    name,
                    sequence: annotations.get(SEQUENCE_ANNOTATION).and_then(|s| s.parse().ok()).unwrap_or(0),
                    revisions: annotations
                        .get(REVISIONS_ANNOTATION)
                        .and_then(|s| serde_json::from_str(s).ok())
                        .unwrap_or_default(),
                    live: renewed + duration > now,
                    last_report: renewed,
                    counts: annotations.get(COUNTS_ANNOTATION).cloned(),
                }
            })
            .collect())
    }
}
