//! The one writer of routing state.
//!
//! Every input that changes routing — today admin commands, soon reloads, discovery events and
//! rollout steps — is a [`Command`] on one channel to one task, which validates it, numbers it,
//! builds the next [`Snapshot`] and stores it before it replies. That ordering is the atomicity
//! promise of the admin API: a 2xx means the new split is already what every new request loads.

pub mod admin;
pub mod build;
pub mod discovery;
pub mod revision;
pub mod rollout;
pub mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, Problem, validate_weights};
use crate::control::discovery::{Discovered, PoolKey};
use crate::control::revision::{Cause, History, Revision};
use crate::control::rollout::{Phase, Rollout};
use crate::control::state::{AppState, Document, FORMAT, Store, StoreError, Version};
use crate::data::health::Health;
use crate::data::snapshot::{Routes, Snapshot, SplitState, Writer};
use crate::metrics::Metrics;
use build::DiscoveredPools;

/// A requested change of one app's split.
#[derive(Debug, Clone)]
pub enum Change {
    /// New weights; versions not named get 0.
    Split(BTreeMap<String, i64>),
    /// All traffic to one version (the blue/green flip).
    Promote(String),
    /// Back to the previous revision's weights, or to revision `n`'s.
    Rollback(Option<u64>),
}

/// A change with its target and preconditions.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    /// App name.
    pub app: String,
    /// What to change.
    pub change: Change,
    /// Operator's reason, kept in history.
    pub reason: String,
    /// Apply only if the app's current revision is this one (`If-Match`).
    pub if_match: Option<u64>,
    /// Who asks (an admin token's name, a Kubernetes user), recorded in the revision.
    pub by: String,
}

/// The result of an accepted change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The app's revision now in force.
    pub revision: u64,
    /// False when the request matched the current split, so nothing was recorded.
    pub changed: bool,
    /// The state document's sequence that carries it (`?wait=all` waits for every replica
    /// to report it).
    pub sequence: u64,
}

/// What this replica has applied: the state's sequence and every app's revision. Published
/// by the control task after every snapshot it stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The state document's sequence (0: nothing stored yet).
    pub sequence: u64,
    /// Revision in force per app.
    pub revisions: BTreeMap<String, u64>,
}

/// The weights and cause of the revision a change makes.
type Planned = (BTreeMap<String, u32>, Cause);

/// Writes that lose a compare-and-swap race are re-based on the newer state and tried again
/// this many times before the change is refused.
const MAX_CONFLICTS: usize = 8;

/// How often rollouts are advanced.
const ROLLOUT_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a change was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No such app.
    #[error("no app named {0:?}")]
    UnknownApp(String),
    /// The weights break a rule; `(version, message)` pairs, version empty for the whole split.
    #[error("invalid weights: {}", .0.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "))]
    InvalidWeights(Vec<(String, String)>),
    /// `promote` named a version the app does not have.
    #[error("no version {version:?} in app {app}; it has {known}")]
    UnknownVersion {
        /// App name.
        app: String,
        /// The version asked for.
        version: String,
        /// The versions it has, comma-separated.
        known: String,
    },
    /// `If-Match` named a revision that is no longer current.
    #[error("revision {expected} is not current; app is at revision {current}")]
    Stale {
        /// Revision the caller expected.
        expected: u64,
        /// Revision in force.
        current: u64,
    },
    /// Rollback target not in the kept history.
    #[error("revision {0} is not in the history")]
    NoSuchRevision(u64),
    /// Rollback with nothing before the current revision.
    #[error("there is no earlier revision to roll back to")]
    NothingToRollBack,
    /// The rollback target names a version the app no longer has (after a reload).
    #[error("revision {revision} sends traffic to version {version:?}, which this app no longer has")]
    RevisionObsolete {
        /// The revision asked for.
        revision: u64,
        /// The missing version.
        version: String,
    },
    /// The state store could not take the change; nothing was changed.
    #[error("the change was not made because the state store is unavailable: {0}")]
    Store(String),
    /// The control task is gone (shutting down).
    #[error("weir is shutting down")]
    Closed,
    /// No rollout of this app is known.
    #[error("app {0} has no rollout")]
    NoRollout(String),
    /// A rollout of this app is under way already.
    #[error("a rollout of app {app} to {canary} is under way ({phase}); abort or promote it first")]
    RolloutUnderWay {
        /// App name.
        app: String,
        /// Its canary.
        canary: String,
        /// Its phase.
        phase: String,
    },
    /// The rollout call cannot be done as asked (a bad plan, resuming one that is not paused…).
    #[error("{0}")]
    Rollout(String),
}

/// Why a reload was refused. Nothing was changed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// Weir was started without a config file (the demo).
    #[error("weir was started without a config file; there is nothing to reload")]
    NoConfigFile,
    /// The file could not be read, or its config is invalid; every problem is listed.
    #[error("{message}")]
    Invalid {
        /// The whole report, as `weir check` prints it.
        message: String,
        /// Each problem.
        problems: Vec<Problem>,
    },
    /// The new split could not be stored; the running config was kept.
    #[error("the reload was not applied because the state store is unavailable: {0}")]
    Store(String),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Revision in force per app after the reload.
    pub revisions: BTreeMap<String, u64>,
    /// Apps that got a new revision from this reload.
    pub new_revisions: Vec<String>,
}

/// The control state: config, histories, the state store, and the snapshot it stores.
#[derive(Debug)]
pub struct Control {
    config: Config,
    config_path: Option<std::path::PathBuf>,
    histories: BTreeMap<String, History>,
    /// The one writer of the routing state.
    snapshot: Writer,
    metrics: Metrics,
    health: Option<Health>,
    discovered: DiscoveredPools,
    /// Where the histories are kept; written before a change is published.
    store: Store,
    /// The stored document's version this state is based on (compare-and-swap).
    stored: Version,
    /// The stored document's sequence.
    sequence: u64,
    /// Per app, the config file's split the stored state was last reconciled with.
    file_splits: BTreeMap<String, BTreeMap<String, i64>>,
    /// Per app, a rollout's progress, kept for the rollout controller.
    rollouts: BTreeMap<String, serde_json::Value>,
    /// Stored apps this config does not have (another replica's config, mid-upgrade): kept
    /// as they are, so this replica's writes do not erase them.
    foreign: BTreeMap<String, AppState>,
    /// This replica's name, written into the document.
    identity: String,
    /// Set while the stored state, as last read, cannot be used: changes are refused.
    broken: Option<String>,
    /// TLS listeners' certificates, re-read on a reload.
    certificates: BTreeMap<String, Arc<crate::data::tls::Certificates>>,
    /// Per app, the window of the analysis under way (in memory: the counts it compares
    /// are this process's).
    windows: BTreeMap<String, rollout::Window>,
    /// Whether this replica drives rollouts (always, unless replicas share a store and
    /// another one leads).
    leading: bool,
    /// The other replicas' counts, as last reported (the leader judges all traffic).
    peers: BTreeMap<String, PeerCounts>,
    applied: watch::Sender<Applied>,
}

impl Control {
    /// Builds and stores the first snapshot from a validated config, with no durable state.
    pub fn new(config: Config, metrics: Metrics) -> Self {
        let limit = config.admin.history_limit;
        let histories =
            config.apps.iter().map(|(name, app)| (name.clone(), History::new(config_weights(app), limit))).collect();
        let file_splits = config.apps.iter().map(|(name, app)| (name.clone(), app.split.clone())).collect();
        let mut control = Control {
            histories,
            snapshot: Writer::new(Snapshot { generation: 0, apps: Box::new([]), listeners: Box::new([]) }),
            metrics,
            config,
            config_path: None,
            health: None,
            discovered: DiscoveredPools::new(),
            store: Store::Memory,
            stored: None,
            sequence: 0,
            file_splits,
            rollouts: BTreeMap::new(),
            foreign: BTreeMap::new(),
            identity: String::new(),
            broken: None,
            certificates: BTreeMap::new(),
            windows: BTreeMap::new(),
            leading: true,
            peers: BTreeMap::new(),
            applied: watch::Sender::new(Applied::default()),
        };
        control.publish();
        control
    }

    /// Builds the control state from `store`: its stored state wins over the config file's
    /// split, except for apps whose `split` section changed since the state was written (the
    /// file's split becomes a new revision), and apps the state does not have yet. When that
    /// changes what is stored, it is written before this returns. A state that cannot be read
    /// is an error naming it, unless `state.on_unreadable = "start_from_config"`.
    pub async fn open(config: Config, metrics: Metrics, store: Store, identity: String) -> Result<Self, StoreError> {
        let on_unreadable = config.state.on_unreadable;
        let mut control = Control::new(config, metrics);
        control.store = store;
        control.identity = identity;
        for _ in 0..MAX_CONFLICTS {
            let loaded = match control.store.load().await {
                Err(StoreError::Unreadable { what, reason })
                    if on_unreadable == crate::config::OnUnreadable::StartFromConfig =>
                {
                    let aside = control.store.set_aside().await?;
                    tracing::warn!(
                        state = %what, %reason, kept_as = %aside,
                        "the stored state is unreadable; set it aside and starting from the config file's split \
                         (state.on_unreadable = \"start_from_config\")"
                    );
                    continue;
                }
                other => other?,
            };
            let must_write = control.reconcile(loaded.doc.as_ref(), loaded.floor);
            control.stored = loaded.version;
            if !must_write {
                control.publish();
                return Ok(control);
            }
            let histories = control.histories.clone();
            match control.commit(histories).await {
                Err(StoreError::Conflict) => continue,
                other => return other.map(|()| control),
            }
        }
        Err(StoreError::Unavailable("the stored state kept changing while this weir started; start it again".into()))
    }

    /// A receiver of what this replica has applied, updated after every stored snapshot.
    pub fn applied(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    /// Where the state is kept, for logs.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes a stored document (or none) as this replica's state at start: see
    /// [`Control::open`]. Returns whether the store must be written to agree.
    fn reconcile(&mut self, doc: Option<&Document>, floor: u64) -> bool {
        let limit = self.config.admin.history_limit;
        let mut must_write = doc.is_none();
        self.sequence = doc.map_or(floor, |d| d.sequence);
        self.rollouts.clear();
        self.foreign = doc
            .map(|d| d.apps.iter().filter(|(a, _)| !self.config.apps.contains_key(*a)))
            .into_iter()
            .flatten()
            .map(|(a, s)| (a.clone(), s.clone()))
            .collect();
        for (name, app) in &self.config.apps {
            let stored = doc.and_then(|d| d.apps.get(name));
            let history = match stored.and_then(|s| History::from_revisions(s.revisions.clone(), limit)) {
                None => {
                    must_write = true;
                    History::new(config_weights(app), limit)
                }
                Some(mut history) => {
                    let s = stored.expect("a history came from it");
                    if let Some(r) = &s.rollout {
                        self.rollouts.insert(name.clone(), r.clone());
                    }
                    let why = if s.file_split != app.split {
                        Some("the config file's split changed since the state was written")
                    } else if routed_weights(&history.current().weights, app).is_none() {
                        Some("the stored split gives no traffic to any version the config file has")
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        tracing::info!(app = %name, "{why}: its split becomes a new revision");
                        history.record(config_weights(app), why.into(), Cause::Config, String::new());
                        must_write = true;
                    } else {
                        tracing::info!(app = %name, revision = history.current().number, "split restored from the state");
                    }
                    history
                }
            };
            self.histories.insert(name.clone(), history);
            self.file_splits.insert(name.clone(), app.split.clone());
        }
        must_write
    }

    /// Applies a document another replica stored (read from the store's watch): every app
    /// this config has takes its history from it. Older documents than the one applied, and
    /// this replica's own writes coming back, change nothing.
    pub fn adopt(&mut self, doc: Document, version: Version) {
        if doc.sequence < self.sequence || (doc.sequence == self.sequence && version == self.stored) {
            return;
        }
        let limit = self.config.admin.history_limit;
        for (name, s) in &doc.apps {
            if !self.config.apps.contains_key(name) {
                continue;
            }
            let Some(history) = History::from_revisions(s.revisions.clone(), limit) else { continue };
            self.histories.insert(name.clone(), history);
            self.file_splits.insert(name.clone(), s.file_split.clone());
            match &s.rollout {
                Some(r) => self.rollouts.insert(name.clone(), r.clone()),
                None => self.rollouts.remove(name),
            };
        }
        self.foreign = doc.apps.into_iter().filter(|(a, _)| !self.config.apps.contains_key(a.as_str())).collect();
        tracing::info!(sequence = doc.sequence, by = %doc.written_by, "applied the state another replica stored");
        self.sequence = doc.sequence;
        self.stored = version;
        self.broken = None;
        self.publish();
    }

    /// The store's watch read a document it cannot use: keep routing by what was applied,
    /// refuse changes until a readable one arrives.
    pub fn unreadable(&mut self, why: String) {
        tracing::error!("{why}; routing stays as last applied and changes are refused until it is readable again");
        self.broken = Some(why);
    }

    /// The stored document for these histories, one sequence further.
    fn document(&self, histories: &BTreeMap<String, History>) -> Document {
        let mut apps = self.foreign.clone();
        for (name, h) in histories {
            apps.insert(
                name.clone(),
                AppState {
                    file_split: self.file_splits.get(name).cloned().unwrap_or_default(),
                    revisions: h.iter().cloned().collect(),
                    rollout: self.rollouts.get(name).cloned(),
                },
            );
        }
        Document { format: FORMAT, sequence: self.sequence.saturating_add(1), written_by: self.identity.clone(), apps }
    }

    /// Stores `histories` (compare-and-swap on the version this state is based on), then
    /// makes them the state in force and publishes the snapshot. On any error nothing
    /// changed.
    async fn commit(&mut self, histories: BTreeMap<String, History>) -> Result<(), StoreError> {
        let doc = self.document(&histories);
        let result = self.store.write(&doc, &self.stored).await;
        self.metrics.state_write(match &result {
            Ok(_) => "ok",
            Err(StoreError::Conflict) => "conflict",
            Err(_) => "unavailable",
        });
        let version = result?;
        self.histories = histories;
        self.stored = version;
        self.sequence = doc.sequence;
        self.publish();
        Ok(())
    }

    /// Re-reads the store after a lost compare-and-swap and adopts what it holds.
    async fn refresh(&mut self) -> Result<(), StoreError> {
        let loaded = self.store.load().await?;
        match loaded.doc {
            Some(doc) => self.adopt(doc, loaded.version),
            None => {
                // Emptied meanwhile: go on above what any replica applied.
                self.stored = loaded.version;
                self.sequence = self.sequence.max(loaded.floor);
            }
        }
        Ok(())
    }

    /// The TLS listeners' certificates, which a reload re-reads.
    pub fn set_certificates(&mut self, certificates: BTreeMap<String, Arc<crate::data::tls::Certificates>>) {
        self.certificates = certificates;
    }

    /// Remembers the file this config came from, for reloads.
    pub fn with_config_path(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.config_path = path;
        self
    }

    /// Starts active probes (needs a Tokio runtime). Returns a receiver per started probe,
    /// fired after its first result, so start-up can wait for the first verdicts.
    pub fn start_health(&mut self, cancel: CancellationToken) -> Vec<oneshot::Receiver<()>> {
        let mut health = Health::new(cancel);
        let started = health.sync(&self.snapshot.load_full());
        self.health = Some(health);
        started
    }

    /// Replaces the discovered endpoints of one pool and rebuilds the snapshot.
    pub fn set_discovered(&mut self, key: PoolKey, endpoints: Vec<Discovered>) {
        if self.discovered.get(&key) != Some(&endpoints) {
            self.discovered.insert(key, endpoints);
            self.publish();
        }
    }

    /// Re-reads the config file and applies it.
    pub async fn reload_file(&mut self) -> Result<Reloaded, ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoConfigFile)?;
        // Read and validated off the runtime's threads: a large file (megabytes) takes a
        // while to parse, and the data plane shares those threads (one, by default).
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await.map_err(|e| {
            ReloadError::Invalid { message: format!("reading the config failed: {e}"), problems: Vec::new() }
        })?;
        let config = loaded.map_err(|e| {
            let problems = match &e {
                config::Error::Invalid { problems, .. } => problems.clone(),
                config::Error::Read { .. } => Vec::new(),
            };
            ReloadError::Invalid { message: e.to_string(), problems }
        })?;
        self.reload(config).await
    }

    /// Applies a validated config as one new snapshot. Per app, the newest intent wins: a
    /// changed `split` section becomes a new revision; an unchanged one keeps the split in
    /// force (set by the admin API, say), re-keyed to the new set of versions, unless that
    /// would leave no traffic anywhere, in which case the file's split applies.
    pub async fn reload(&mut self, new: Config) -> Result<Reloaded, ReloadError> {
        let restart = |field: &str| Problem {
            field: field.into(),
            location: None,
            message: "cannot change on reload; restart weir to change it".into(),
        };
        let mut problems = Vec::new();
        // A listener's certificates may change on reload (validation loaded the new files);
        // nothing else of a listener, nor whether it has TLS.
        let without_certificates = |c: &Config| {
            let mut listeners = c.listeners.clone();
            for l in listeners.values_mut() {
                if let Some(tls) = &mut l.tls {
                    tls.certificates.clear();
                }
            }
            listeners
        };
        if without_certificates(&new) != without_certificates(&self.config) {
            problems.push(restart("listeners"));
        }
        if new.admin.addr != self.config.admin.addr {
            problems.push(restart("admin.addr"));
        }
        if new.runtime != self.config.runtime {
            problems.push(restart("runtime"));
        }
        if new.state != self.config.state {
            problems.push(restart("state"));
        }
        if new.kubernetes != self.config.kubernetes || discovery_of(&new) != discovery_of(&self.config) {
            problems.push(restart("discovery"));
        }
        if !problems.is_empty() {
            let message = problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n");
            return Err(ReloadError::Invalid { message, problems });
        }
        let mut new_revisions = Vec::new();
        let mut histories = BTreeMap::new();
        for (name, app) in &new.apps {
            let from_file = config_weights(app);
            let (Some(old_app), Some(mut history)) = (self.config.apps.get(name), self.histories.get(name).cloned())
            else {
                histories.insert(name.clone(), History::new(from_file, new.admin.history_limit));
                continue;
            };
            history.set_limit(new.admin.history_limit);
            let kept: BTreeMap<String, u32> = app
                .versions
                .keys()
                .map(|v| (v.clone(), history.current().weights.get(v).copied().unwrap_or(0)))
                .collect();
            let file_changed = self.file_splits.get(name) != Some(&app.split) && old_app.split != app.split;
            let target = if file_changed || kept.values().all(|&w| w == 0) { from_file } else { kept };
            if target != history.current().weights {
                history.record(target, String::new(), Cause::Reload, String::new());
                new_revisions.push(name.clone());
            }
            histories.insert(name.clone(), history);
        }
        let removed: Vec<&String> = self.histories.keys().filter(|a| !new.apps.contains_key(*a)).collect();
        if !removed.is_empty() {
            tracing::info!(apps = ?removed, "apps removed by reload");
        }
        let file_splits: BTreeMap<String, BTreeMap<String, i64>> =
            new.apps.iter().map(|(n, a)| (n.clone(), a.split.clone())).collect();
        // Removed apps leave the state too (the store keeps other replicas' apps: `foreign`).
        let must_write = !new_revisions.is_empty()
            || file_splits != self.file_splits
            || histories.keys().ne(self.histories.keys())
            || new.admin.history_limit != self.config.admin.history_limit;
        let old = std::mem::replace(&mut self.config, new);
        let old_splits = std::mem::replace(&mut self.file_splits, file_splits);
        if must_write {
            if let Err(e) = self.commit(histories).await {
                (self.config, self.file_splits) = (old, old_splits);
                return Err(ReloadError::Store(e.to_string()));
            }
        } else {
            self.histories = histories;
            self.publish();
        }
        // Certificates are re-read on every reload (their files may have changed too); the
        // new ones were checked by validation, so a failure here is a file changed since.
        for (name, l) in &self.config.listeners {
            if let (Some(tls), Some(certs)) = (&l.tls, self.certificates.get(name))
                && let Err(e) = certs.replace(&tls.certificates)
            {
                tracing::error!(listener = %name, "certificates not reloaded, the previous ones still serve: {e}");
            }
        }
        let revisions = self.histories.iter().map(|(a, h)| (a.clone(), h.current().number)).collect();
        tracing::info!(?revisions, ?new_revisions, "config reloaded");
        Ok(Reloaded { revisions, new_revisions })
    }

    /// A read-only handle on the routing state, for the data plane and the admin API.
    pub fn routes(&self) -> Routes {
        self.snapshot.routes()
    }

    /// Kept revisions of `app`, oldest first.
    pub fn history(&self, app: &str) -> Result<Vec<Revision>, ControlError> {
        let h = self.histories.get(app).ok_or_else(|| ControlError::UnknownApp(app.into()))?;
        Ok(h.iter().cloned().collect())
    }

    /// Validates and applies one change: stored first, then published; on success the new
    /// snapshot is stored on return. A write that lost a race with another replica is
    /// re-based on the newer state and re-checked (its `If-Match` included).
    pub async fn apply(&mut self, req: ChangeRequest) -> Result<Outcome, ControlError> {
        for _ in 0..MAX_CONFLICTS {
            if let Some(why) = &self.broken {
                return Err(ControlError::Store(why.clone()));
            }
            let Some((weights, cause)) = self.plan(&req)? else {
                let current = self.histories[&req.app].current().number;
                return Ok(Outcome { revision: current, changed: false, sequence: self.sequence });
            };
            let mut histories = self.histories.clone();
            let history = histories.get_mut(&req.app).expect("every app has a history");
            let revision = history.record(weights, req.reason.clone(), cause, req.by.clone()).number;
            // A split changed by hand during a rollout pauses it, in the same write.
            let before = self.rollouts.get(&req.app).cloned();
            self.pause_rollout_for(&req.app, revision, &req.by);
            let committed = self.commit(histories).await;
            if committed.is_err() {
                self.restore_rollout(&req.app, before);
            }
            match committed {
                Ok(()) => {
                    let current = self.histories[&req.app].current();
                    tracing::info!(app = %req.app, revision, by = %req.by, weights = ?current.weights, cause = ?current.cause, "split changed");
                    return Ok(Outcome { revision, changed: true, sequence: self.sequence });
                }
                Err(StoreError::Conflict) => {
                    tracing::info!(app = %req.app, "another replica changed the state meanwhile; checking the change again on it");
                    self.refresh().await.map_err(|e| ControlError::Store(e.to_string()))?;
                }
                Err(e) => return Err(ControlError::Store(e.to_string())),
            }
        }
        Err(ControlError::Store("the state kept changing under this change; try again".into()))
    }

    /// The rollout of `app` as stored, if any.
    pub fn rollout_of(&self, app: &str) -> Option<Rollout> {
        let stored = self.rollouts.get(app)?;
        match serde_json::from_value(stored.clone()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(%app, "the stored rollout cannot be read and is ignored: {e}");
                None
            }
        }
    }

    fn restore_rollout(&mut self, app: &str, before: Option<serde_json::Value>) {
        match before {
            Some(v) => self.rollouts.insert(app.to_owned(), v),
            None => self.rollouts.remove(app),
        };
    }

    /// Pauses `app`'s rollout, if one is under way, because its split was changed by hand.
    fn pause_rollout_for(&mut self, app: &str, revision: u64, by: &str) {
        let Some(mut r) = self.rollout_of(app).filter(|r| !r.phase.is_done()) else { return };
        if r.phase == Phase::Progressing {
            r.paused_elapsed_ms = Some(r.elapsed_ms(unix_ms()));
        }
        r.phase = Phase::Paused;
        let who = if by.is_empty() { String::new() } else { format!(" by {by}") };
        r.message = format!(
            "paused: the split was changed by hand (revision {revision}{who}); resume to go on at step {} of {}",
            (r.step + 1).min(r.steps.len()),
            r.steps.len()
        );
        tracing::warn!(%app, "rollout {}", r.message);
        self.windows.remove(app);
        self.rollouts.insert(app.to_owned(), serde_json::to_value(&r).expect("a rollout serializes"));
    }

    /// Stores `r` as `app`'s rollout, with the canary at `canary_weight` (stable the rest)
    /// as a new revision when given, in one write. On an error nothing changed.
    async fn write_rollout(
        &mut self,
        app: &str,
        r: &Rollout,
        canary_weight: Option<u32>,
        reason: String,
        by: &str,
    ) -> Result<Option<u64>, ControlError> {
        for _ in 0..MAX_CONFLICTS {
            if let Some(why) = &self.broken {
                return Err(ControlError::Store(why.clone()));
            }
            let app_cfg = self.config.apps.get(app).ok_or_else(|| ControlError::UnknownApp(app.into()))?;
            let mut histories = self.histories.clone();
            let history = histories.get_mut(app).expect("every app has a history");
            let mut revision = None;
            if let Some(w) = canary_weight {
                let weights: BTreeMap<String, u32> = app_cfg
                    .versions
                    .keys()
                    .map(|v| {
                        let weight = if *v == r.canary {
                            w
                        } else if *v == r.stable {
                            100 - w.min(100)
                        } else {
                            0
                        };
                        (v.clone(), weight)
                    })
                    .collect();
                if weights != history.current().weights {
                    let cause = Cause::Rollout { canary: r.canary.clone(), step: r.step as u64 };
                    revision = Some(history.record(weights, reason.clone(), cause, by.to_owned()).number);
                }
            }
            let before = self.rollouts.insert(app.to_owned(), serde_json::to_value(r).expect("a rollout serializes"));
            match self.commit(histories).await {
                Ok(()) => return Ok(revision),
                Err(StoreError::Conflict) => {
                    self.restore_rollout(app, before);
                    self.refresh().await.map_err(|e| ControlError::Store(e.to_string()))?;
                }
                Err(e) => {
                    self.restore_rollout(app, before);
                    return Err(ControlError::Store(e.to_string()));
                }
            }
        }
        Err(ControlError::Store("the state kept changing under this change; try again".into()))
    }

    /// Answers an operator's rollout call for `app` (start, status, pause, resume, abort,
    /// promote); the rollout as it is afterwards.
    pub async fn rollout_call(&mut self, app: &str, call: RolloutCall, by: String) -> Result<Rollout, ControlError> {
        let app_cfg = self.config.apps.get(app).ok_or_else(|| ControlError::UnknownApp(app.into()))?.clone();
        let current = self.rollout_of(app);
        let now = unix_ms();
        let who = if by.is_empty() { String::new() } else { format!(" by {by}") };
        let refused = |what: &str, r: &Rollout| {
            Err(ControlError::Rollout(format!("cannot {what} the rollout to {}: it is {:?}", r.canary, r.phase)))
        };
        let (r, weight, reason) = match call {
            RolloutCall::Status => return current.ok_or_else(|| ControlError::NoRollout(app.into())),
            RolloutCall::Start { canary, stable, plan, steps } => {
                if let Some(r) = current.as_ref().filter(|r| !r.phase.is_done()) {
                    return Err(ControlError::RolloutUnderWay {
                        app: app.into(),
                        canary: r.canary.clone(),
                        phase: format!("{:?}", r.phase),
                    });
                }
                let known = || app_cfg.versions.keys().cloned().collect::<Vec<_>>().join(", ");
                if !app_cfg.versions.contains_key(&canary) {
                    return Err(ControlError::UnknownVersion { app: app.into(), version: canary, known: known() });
                }
                let weights = &self.histories[app].current().weights;
                let stable = match stable {
                    Some(s) if !app_cfg.versions.contains_key(&s) => {
                        return Err(ControlError::UnknownVersion { app: app.into(), version: s, known: known() });
                    }
                    Some(s) => s,
                    // The version with the most traffic other than the canary.
                    None => weights
                        .iter()
                        .filter(|(v, w)| **v != canary && **w > 0)
                        .max_by_key(|(_, w)| **w)
                        .map(|(v, _)| v.clone())
                        .ok_or_else(|| {
                            ControlError::Rollout(format!(
                                "no version other than {canary} has traffic to roll out from"
                            ))
                        })?,
                };
                if stable == canary {
                    return Err(ControlError::Rollout("the canary and the stable version are the same".into()));
                }
                let (plan, steps) = match (plan, steps) {
                    (_, Some(steps)) => ("custom".to_owned(), steps),
                    (name, None) => {
                        let name = name.unwrap_or_else(|| app_cfg.rollout.default_plan.clone());
                        let steps = app_cfg.rollout.plans.get(&name).cloned().or_else(|| rollout::preset(&name));
                        let steps = steps.ok_or_else(|| {
                            ControlError::Rollout(format!(
                                "no plan named {name:?} (nor a preset: canary, ramped, blue_green)"
                            ))
                        })?;
                        (name, steps)
                    }
                };
                rollout::check_plan(&steps).map_err(ControlError::Rollout)?;
                let failure_limit = app_cfg.rollout.failure_limit;
                let r = Rollout {
                    message: format!("started{who}: {} → {canary} by plan {plan}", stable),
                    looks: Rollout::planned_looks(&steps, failure_limit),
                    stable,
                    canary,
                    plan,
                    steps,
                    step: 0,
                    phase: Phase::Progressing,
                    step_started_ms: now,
                    paused_elapsed_ms: None,
                    failed_analyses: 0,
                    failure_limit,
                    looks_done: 0,
                    criteria: app_cfg.rollout.criteria.clone(),
                    last_analysis: None,
                    started_by: by.clone(),
                    started_ms: now,
                };
                (r, None, String::new())
            }
            RolloutCall::Pause => {
                let mut r = current.ok_or_else(|| ControlError::NoRollout(app.into()))?;
                if r.phase != Phase::Progressing {
                    return refused("pause", &r);
                }
                r.paused_elapsed_ms = Some(r.elapsed_ms(now));
                r.phase = Phase::Paused;
                r.message = format!("paused{who} at step {} of {}", (r.step + 1).min(r.steps.len()), r.steps.len());
                (r, None, String::new())
            }
            RolloutCall::Resume => {
                let mut r = current.ok_or_else(|| ControlError::NoRollout(app.into()))?;
                if r.phase != Phase::Paused {
                    return refused("resume", &r);
                }
                r.step_started_ms = now.saturating_sub(r.paused_elapsed_ms.take().unwrap_or(0));
                r.phase = Phase::Progressing;
                r.message = format!("resumed{who} at step {} of {}", (r.step + 1).min(r.steps.len()), r.steps.len());
                (r, None, String::new())
            }
            RolloutCall::Abort => {
                let mut r = current.ok_or_else(|| ControlError::NoRollout(app.into()))?;
                if r.phase.is_done() {
                    return refused("abort", &r);
                }
                r.phase = Phase::Aborted;
                r.message = format!("aborted{who}: {} has all traffic", r.stable);
                let reason = format!("rollout of {} aborted{who}", r.canary);
                (r, Some(0), reason)
            }
            RolloutCall::Promote => {
                let mut r = current.ok_or_else(|| ControlError::NoRollout(app.into()))?;
                if r.phase.is_done() {
                    return refused("promote", &r);
                }
                r.phase = Phase::Succeeded;
                r.step = r.steps.len();
                r.message = format!("promoted{who}: {} has all traffic", r.canary);
                let reason = format!("rollout of {} promoted{who}", r.canary);
                (r, Some(100), reason)
            }
        };
        self.windows.remove(app);
        self.write_rollout(app, &r, weight, reason, &by).await?;
        tracing::info!(%app, "rollout {}", r.message);
        Ok(r)
    }

    /// Takes the other replicas' latest counts. A replica whose counts went down restarted:
    /// what it had counted stays counted, so the sum only grows (a window's difference stays
    /// true); one that left keeps its last counts.
    pub fn set_peer_counts(&mut self, reports: BTreeMap<String, rollout::analysis::Counts>) {
        for (replica, counts) in reports {
            let peer = self.peers.entry(replica).or_default();
            for (app, versions) in &peer.last {
                for (version, before) in versions {
                    let now = counts.get(app).and_then(|v| v.get(version));
                    if now.is_none_or(|n| n.requests < before.requests) {
                        peer.base.entry(app.clone()).or_default().entry(version.clone()).or_default().merge(before);
                    }
                }
            }
            peer.last = counts;
        }
    }

    /// A version's counts now: this replica's, plus every other replica's last report.
    fn counted(&self, app: &str, version: &str) -> rollout::analysis::Sample {
        let mut total = sample(&self.metrics.stats(app, version));
        for peer in self.peers.values() {
            for counts in [&peer.base, &peer.last] {
                if let Some(s) = counts.get(app).and_then(|v| v.get(version)) {
                    total.merge(s);
                }
            }
        }
        total
    }

    /// Whether this replica runs rollouts (an election among replicas sharing a store
    /// decides; alone, it always does). A new leader judges from a fresh window.
    pub fn set_leading(&mut self, leading: bool) {
        if leading != self.leading {
            tracing::info!(leading, "rollout leadership changed");
            self.windows.clear();
        }
        self.leading = leading;
    }

    /// Advances every rollout under way (the control task calls this on a timer).
    pub async fn tick(&mut self) {
        if !self.leading || self.broken.is_some() {
            return;
        }
        let due: Vec<String> = self
            .rollouts
            .iter()
            .filter(|(_, v)| v.get("phase").and_then(|p| p.as_str()) == Some("progressing"))
            .map(|(a, _)| a.clone())
            .collect();
        for app in due {
            let Some(mut r) = self.rollout_of(&app) else { continue };
            // Read at every tick (a few hundred counters): cheap next to the tick itself.
            let now_counted = (self.counted(&app, &r.canary), self.counted(&app, &r.stable));
            let figures = || now_counted.clone();
            let mut window = self.windows.remove(&app);
            let action = r.advance(unix_ms(), figures, &mut window);
            if let Some(w) = window {
                self.windows.insert(app.clone(), w);
            }
            let rollout::Action::Write { canary_weight, reason, rolled_back } = action else { continue };
            match self.write_rollout(&app, &r, canary_weight, reason, "rollout").await {
                Ok(_) if rolled_back => {
                    self.metrics.rollout_rolled_back(&app);
                    tracing::warn!(%app, "rollout {}", r.message);
                }
                Ok(_) => tracing::info!(%app, "rollout {}", r.message),
                Err(e) => tracing::warn!(%app, "rollout step not stored, tried again on the next tick: {e}"),
            }
        }
    }

    /// Checks a change against the current state: the weights and cause of the revision it
    /// makes, or `None` when it asks for what is already in force.
    fn plan(&self, req: &ChangeRequest) -> Result<Option<Planned>, ControlError> {
        let app_cfg = self.config.apps.get(&req.app).ok_or_else(|| ControlError::UnknownApp(req.app.clone()))?;
        let history = &self.histories[&req.app];
        let current = history.current();
        if let Some(expected) = req.if_match
            && expected != current.number
        {
            return Err(ControlError::Stale { expected, current: current.number });
        }
        let versions = || app_cfg.versions.keys();
        let (weights, cause) = match req.change.clone() {
            Change::Split(w) => {
                let problems = validate_weights(&w, versions());
                if !problems.is_empty() {
                    return Err(ControlError::InvalidWeights(problems));
                }
                (versions().map(|v| (v.clone(), w.get(v).map_or(0, |&x| x as u32))).collect(), Cause::Split)
            }
            Change::Promote(version) => {
                if !app_cfg.versions.contains_key(&version) {
                    let known = versions().cloned().collect::<Vec<_>>().join(", ");
                    return Err(ControlError::UnknownVersion { app: req.app.clone(), version, known });
                }
                let w = versions().map(|v| (v.clone(), u32::from(*v == version) * 100)).collect();
                (w, Cause::Promote { version })
            }
            Change::Rollback(to) => {
                let target = match to {
                    Some(n) => history.get(n).ok_or(ControlError::NoSuchRevision(n))?,
                    None => history.previous().ok_or(ControlError::NothingToRollBack)?,
                };
                // A reload may have removed versions since that revision.
                if let Some((gone, _)) =
                    target.weights.iter().find(|(v, w)| **w > 0 && !app_cfg.versions.contains_key(*v))
                {
                    return Err(ControlError::RevisionObsolete { revision: target.number, version: gone.clone() });
                }
                let w = versions().map(|v| (v.clone(), target.weights.get(v).copied().unwrap_or(0))).collect();
                (w, Cause::Rollback { to: target.number })
            }
        };
        Ok((weights != current.weights).then_some((weights, cause)))
    }

    /// Builds the snapshot from the current config and histories and stores it.
    fn publish(&mut self) {
        let splits: BTreeMap<String, SplitState> = self
            .histories
            .iter()
            .map(|(app, h)| {
                let app_cfg = &self.config.apps[app];
                let weights = routed_weights(&h.current().weights, app_cfg).unwrap_or_else(|| config_weights(app_cfg));
                (app.clone(), SplitState { revision: h.current().number, weights })
            })
            .collect();
        let prev = self.snapshot.load_full();
        let next = Arc::new(build::build(
            &self.config,
            &splits,
            &self.discovered,
            Some(&prev),
            &self.metrics,
            prev.generation + 1,
        ));
        for app in next.apps.iter() {
            let weights: Vec<(&str, u32)> = app.weights().collect();
            self.metrics.set_split(&app.name, &weights, app.revision);
        }
        self.snapshot.store(Arc::clone(&next));
        forget_removed(&self.metrics, &prev, &next);
        if let Some(health) = &mut self.health {
            health.sync(&next);
        }
        let revisions = self.histories.iter().map(|(a, h)| (a.clone(), h.current().number)).collect();
        self.applied.send_replace(Applied { sequence: self.sequence, revisions });
    }
}

/// A stored revision's weights keyed by `app`'s versions (a version this config does not
/// have gets no traffic; one the revision does not name gets 0), or `None` when that leaves
/// no traffic anywhere.
fn routed_weights(weights: &BTreeMap<String, u32>, app: &config::AppConfig) -> Option<BTreeMap<String, u32>> {
    let routed: BTreeMap<String, u32> =
        app.versions.keys().map(|v| (v.clone(), weights.get(v).copied().unwrap_or(0))).collect();
    routed.values().any(|&w| w > 0).then_some(routed)
}

/// Every (app, version) that uses discovery, with its source.
pub fn discovery_of(config: &Config) -> BTreeMap<PoolKey, config::DiscoveryConfig> {
    let mut out = BTreeMap::new();
    for (app, a) in &config.apps {
        for (version, v) in &a.versions {
            if let Some(d) = &v.discovery {
                out.insert((app.clone(), version.clone()), d.clone());
            }
        }
    }
    out
}

/// The weights a config's split gives every version of `app` (absent = 0).
fn config_weights(app: &config::AppConfig) -> BTreeMap<String, u32> {
    app.versions.keys().map(|v| (v.clone(), app.split.get(v).map_or(0, |&w| w as u32))).collect()
}

/// Drops the per-endpoint series of endpoints that left, so churn does not grow the exposition.
/// Their in-flight requests finish on the old snapshot; new ones cannot reach them.
fn forget_removed(metrics: &Metrics, prev: &Snapshot, next: &Snapshot) {
    for app in prev.apps.iter() {
        for version in app.versions.iter() {
            for ep in version.pool.endpoints() {
                let stays = next
                    .app(&app.name)
                    .and_then(|a| a.versions.iter().find(|v| v.name == version.name))
                    .is_some_and(|v| v.pool.endpoints().iter().any(|e| e.name == ep.name));
                if !stays {
                    tracing::info!(
                        app = %app.name, version = %version.name, endpoint = %ep.name,
                        in_flight = ep.state.in_flight(), "endpoint removed; draining its in-flight requests"
                    );
                    metrics.forget_endpoint(&app.name, &version.name, &ep.name);
                }
            }
        }
    }
}

/// A request to the control task.
#[derive(Debug)]
pub enum Command {
    /// Apply a change; the reply comes after the snapshot is stored.
    Change(ChangeRequest, oneshot::Sender<Result<Outcome, ControlError>>),
    /// Read an app's history.
    History(String, oneshot::Sender<Result<Vec<Revision>, ControlError>>),
    /// Re-read and apply the config file.
    Reload(oneshot::Sender<Result<Reloaded, ReloadError>>),
    /// A discovery source's new endpoint list for one pool.
    Discovered(PoolKey, Vec<Discovered>, oneshot::Sender<()>),
    /// The store's watch read the stored document (another replica's write, or this one's
    /// coming back), or a document it cannot use.
    Stored(Result<(Document, Version), String>),
    /// An operator's rollout call: app, call, caller.
    Rollout(String, RolloutCall, String, oneshot::Sender<Result<Rollout, ControlError>>),
    /// Whether this replica runs rollouts now (replicas sharing a store elect one).
    Leading(bool),
    /// The other replicas' reported counts, by replica, for the leader's analysis.
    PeerCounts(BTreeMap<String, rollout::analysis::Counts>),
}

/// Another replica's counts: its last report, and what it had counted before it restarted.
#[derive(Debug, Default)]
struct PeerCounts {
    last: rollout::analysis::Counts,
    base: rollout::analysis::Counts,
}

/// What an operator asks of an app's rollout.
#[derive(Debug, Clone)]
pub enum RolloutCall {
    /// Start one to `canary`, from `stable` (default: the version with the most traffic), by
    /// the named plan (default: the app's) or the given steps.
    Start {
        /// The version rolled out.
        canary: String,
        /// The version rolled out from.
        stable: Option<String>,
        /// A plan's name.
        plan: Option<String>,
        /// Or its steps.
        steps: Option<Vec<rollout::Step>>,
    },
    /// Where it is.
    Status,
    /// Stop at the current step.
    Pause,
    /// Go on from it.
    Resume,
    /// Stable gets all traffic at once; the rollout ends.
    Abort,
    /// The canary gets all traffic at once; the rollout ends.
    Promote,
}

/// Milliseconds since the Unix epoch: a rollout's times are stored, and read by other
/// replicas and by this one after a restart.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A version's counts now, as the analysis reads them.
fn sample(stats: &crate::data::sketch::VersionStats) -> rollout::analysis::Sample {
    let (requests, failures, latency) = stats.snapshot();
    rollout::analysis::Sample { requests, failures, latency }
}

/// Sends commands to the control task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    tx: mpsc::Sender<Command>,
}

impl ControlHandle {
    /// Applies a change and waits until it is in force.
    pub async fn change(&self, req: ChangeRequest) -> Result<Outcome, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Change(req, tx)).await.map_err(|_| ControlError::Closed)?;
        rx.await.map_err(|_| ControlError::Closed)?
    }

    /// Hands the control task the other replicas' counts (the leader adds them to its own).
    pub async fn peer_counts(&self, counts: BTreeMap<String, rollout::analysis::Counts>) -> Result<(), ControlError> {
        self.tx.send(Command::PeerCounts(counts)).await.map_err(|_| ControlError::Closed)
    }

    /// Tells the control task whether this replica runs rollouts.
    pub async fn leading(&self, leading: bool) -> Result<(), ControlError> {
        self.tx.send(Command::Leading(leading)).await.map_err(|_| ControlError::Closed)
    }

    /// Makes a rollout call for `app` as `by`.
    pub async fn rollout(&self, app: &str, call: RolloutCall, by: String) -> Result<Rollout, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Rollout(app.to_owned(), call, by, tx)).await.map_err(|_| ControlError::Closed)?;
        rx.await.map_err(|_| ControlError::Closed)?
    }

    /// Re-reads the config file and applies it; the reply comes after the snapshot is stored.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let (tx, rx) = oneshot::channel();
        let closed = || ReloadError::Invalid { message: "weir is shutting down".into(), problems: Vec::new() };
        self.tx.send(Command::Reload(tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Hands a pool's discovered endpoints to the control task; returns once they are stored.
    pub async fn discovered(&self, key: PoolKey, endpoints: Vec<Discovered>) -> Result<(), ControlError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Discovered(key, endpoints, tx)).await.map_err(|_| ControlError::Closed)?;
        rx.await.map_err(|_| ControlError::Closed)
    }

    /// Hands what the store's watch read to the control task.
    pub async fn stored(&self, read: Result<(Document, Version), String>) -> Result<(), ControlError> {
        self.tx.send(Command::Stored(read)).await.map_err(|_| ControlError::Closed)
    }

    /// An app's kept revisions.
    pub async fn history(&self, app: &str) -> Result<Vec<Revision>, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::History(app.to_string(), tx)).await.map_err(|_| ControlError::Closed)?;
        rx.await.map_err(|_| ControlError::Closed)?
    }
}

/// Starts the control task; it runs until `cancel` fires or every handle is dropped.
pub fn spawn(mut control: Control, cancel: CancellationToken) -> (ControlHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        // Rollouts advance on this tick: steps and analysis windows are timed to it.
        let mut tick = tokio::time::interval(ROLLOUT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cmd = tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    control.tick().await;
                    continue;
                }
                cmd = rx.recv() => match cmd { Some(c) => c, None => break },
            };
            match cmd {
                Command::Rollout(app, call, by, reply) => {
                    let _ = reply.send(control.rollout_call(&app, call, by).await);
                }
                Command::Leading(leading) => control.set_leading(leading),
                Command::PeerCounts(counts) => control.set_peer_counts(counts),
                Command::Change(req, reply) => {
                    let _ = reply.send(control.apply(req).await);
                }
                Command::Stored(Ok((doc, version))) => control.adopt(doc, version),
                Command::Stored(Err(why)) => control.unreadable(why),
                Command::History(app, reply) => {
                    let _ = reply.send(control.history(&app));
                }
                Command::Discovered(key, endpoints, reply) => {
                    control.set_discovered(key, endpoints);
                    let _ = reply.send(());
                }
                Command::Reload(reply) => {
                    let result = control.reload_file().await;
                    if let Err(e) = &result {
                        tracing::error!("reload refused, running config unchanged:\n{e}");
                    }
                    let _ = reply.send(result);
                }
            }
        }
    });
    (ControlHandle { tx }, task)
}

#[cfg(test)]
mod tests;
