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

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, Problem, validate_weights};
use crate::control::discovery::{Discovered, PoolKey};
use crate::control::revision::{Cause, History, Revision};
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
}

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
    /// The control task is gone (shutting down).
    #[error("weir is shutting down")]
    Closed,
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
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Revision in force per app after the reload.
    pub revisions: BTreeMap<String, u64>,
    /// Apps that got a new revision from this reload.
    pub new_revisions: Vec<String>,
}

/// The control state: config, histories, and the snapshot it stores.
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
}

impl Control {
    /// Builds and stores the first snapshot from a validated config.
    pub fn new(config: Config, metrics: Metrics) -> Self {
        let histories = config
            .apps
            .iter()
            .map(|(name, app)| (name.clone(), History::new(config_weights(app), config.admin.history_limit)))
            .collect();
        let mut control = Control {
            histories,
            snapshot: Writer::new(Snapshot { generation: 0, apps: Box::new([]), listeners: Box::new([]) }),
            metrics,
            config,
            config_path: None,
            health: None,
            discovered: DiscoveredPools::new(),
        };
        control.publish();
        control
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
    pub fn reload_file(&mut self) -> Result<Reloaded, ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let config = Config::load(path).map_err(|e| {
            let problems = match &e {
                config::Error::Invalid { problems, .. } => problems.clone(),
                config::Error::Read { .. } => Vec::new(),
            };
            ReloadError::Invalid { message: e.to_string(), problems }
        })?;
        self.reload(config)
    }

    /// Applies a validated config as one new snapshot. Per app, the newest intent wins: a
    /// changed `split` section becomes a new revision; an unchanged one keeps the split in
    /// force (set by the admin API, say), re-keyed to the new set of versions, unless that
    /// would leave no traffic anywhere, in which case the file's split applies.
    pub fn reload(&mut self, new: Config) -> Result<Reloaded, ReloadError> {
        let restart = |field: &str| Problem {
            field: field.into(),
            location: None,
            message: "cannot change on reload; restart weir to change it".into(),
        };
        let mut problems = Vec::new();
        if new.listeners != self.config.listeners {
            problems.push(restart("listeners"));
        }
        if new.admin.addr != self.config.admin.addr {
            problems.push(restart("admin.addr"));
        }
        if new.runtime != self.config.runtime {
            problems.push(restart("runtime"));
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
            let (Some(old_app), Some(mut history)) = (self.config.apps.get(name), self.histories.remove(name)) else {
                histories.insert(name.clone(), History::new(from_file, new.admin.history_limit));
                continue;
            };
            history.set_limit(new.admin.history_limit);
            let kept: BTreeMap<String, u32> = app
                .versions
                .keys()
                .map(|v| (v.clone(), history.current().weights.get(v).copied().unwrap_or(0)))
                .collect();
            let target = if old_app.split != app.split || kept.values().all(|&w| w == 0) { from_file } else { kept };
            if target != history.current().weights {
                history.record(target, String::new(), Cause::Reload, String::new());
                new_revisions.push(name.clone());
            }
            histories.insert(name.clone(), history);
        }
        if !self.histories.is_empty() {
            tracing::info!(apps = ?self.histories.keys().collect::<Vec<_>>(), "apps removed by reload");
        }
        self.histories = histories;
        self.config = new;
        self.publish();
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

    /// Validates and applies one change; on success the new snapshot is stored on return.
    pub fn apply(&mut self, req: ChangeRequest) -> Result<Outcome, ControlError> {
        let app_cfg = self.config.apps.get(&req.app).ok_or_else(|| ControlError::UnknownApp(req.app.clone()))?;
        let history = self.histories.get_mut(&req.app).expect("every app has a history");
        let current = history.current();
        if let Some(expected) = req.if_match
            && expected != current.number
        {
            return Err(ControlError::Stale { expected, current: current.number });
        }
        let versions = || app_cfg.versions.keys();
        let (weights, cause) = match req.change {
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
                    return Err(ControlError::UnknownVersion { app: req.app, version, known });
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
        if weights == current.weights {
            return Ok(Outcome { revision: current.number, changed: false });
        }
        let revision = history.record(weights, req.reason, cause, req.by.clone()).number;
        tracing::info!(app = %req.app, revision, by = %req.by, weights = ?history.current().weights, cause = ?history.current().cause, "split changed");
        self.publish();
        Ok(Outcome { revision, changed: true })
    }

    /// Builds the snapshot from the current config and histories and stores it.
    fn publish(&mut self) {
        let splits: BTreeMap<String, SplitState> = self
            .histories
            .iter()
            .map(|(app, h)| {
                (app.clone(), SplitState { revision: h.current().number, weights: h.current().weights.clone() })
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
    }
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
        loop {
            let cmd = tokio::select! {
                () = cancel.cancelled() => break,
                cmd = rx.recv() => match cmd { Some(c) => c, None => break },
            };
            match cmd {
                Command::Change(req, reply) => {
                    let _ = reply.send(control.apply(req));
                }
                Command::History(app, reply) => {
                    let _ = reply.send(control.history(&app));
                }
                Command::Discovered(key, endpoints, reply) => {
                    control.set_discovered(key, endpoints);
                    let _ = reply.send(());
                }
                Command::Reload(reply) => {
                    let result = control.reload_file();
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
