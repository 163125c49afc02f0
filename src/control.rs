//! The one writer of routing state.
//!
//! Every input that changes routing — today admin commands, soon reloads, discovery events and
//! rollout steps — is a [`Command`] on one channel to one task, which validates it, numbers it,
//! builds the next [`Snapshot`] and stores it before it replies. That ordering is the atomicity
//! promise of the admin API: a 2xx means the new split is already what every new request loads.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, validate_weights};
use crate::metrics::Metrics;
use crate::revision::{Cause, History, Revision};
use crate::snapshot::{self, Snapshot, SplitState};

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
    /// The control task is gone (shutting down).
    #[error("weir is shutting down")]
    Closed,
}

/// The control state: config, histories, and the snapshot it stores.
#[derive(Debug)]
pub struct Control {
    config: Config,
    histories: BTreeMap<String, History>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Metrics,
}

impl Control {
    /// Builds and stores the first snapshot from a validated config.
    pub fn new(config: Config, metrics: Metrics) -> Self {
        let histories = config
            .apps
            .iter()
            .map(|(name, app)| {
                let weights =
                    app.versions.keys().map(|v| (v.clone(), app.split.get(v).map_or(0, |&w| w as u32))).collect();
                (name.clone(), History::new(weights, config.admin.history_limit))
            })
            .collect();
        let mut control = Control {
            histories,
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot {
                generation: 0,
                apps: Box::new([]),
                listeners: Box::new([]),
            })),
            metrics,
            config,
        };
        control.publish();
        control
    }

    /// The shared snapshot handle the data plane reads.
    pub fn snapshot(&self) -> Arc<ArcSwap<Snapshot>> {
        Arc::clone(&self.snapshot)
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.config
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
                (target.weights.clone(), Cause::Rollback { to: target.number })
            }
        };
        if weights == current.weights {
            return Ok(Outcome { revision: current.number, changed: false });
        }
        let revision = history.record(weights, req.reason, cause).number;
        tracing::info!(app = %req.app, revision, weights = ?history.current().weights, cause = ?history.current().cause, "split changed");
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
        let next = snapshot::build(&self.config, &splits, Some(&prev), &self.metrics, prev.generation + 1);
        for app in next.apps.iter() {
            let weights: Vec<(&str, u32)> = app.weights().collect();
            self.metrics.set_split(&app.name, &weights, app.revision);
        }
        self.snapshot.store(Arc::new(next));
    }
}

/// A request to the control task.
#[derive(Debug)]
pub enum Command {
    /// Apply a change; the reply comes after the snapshot is stored.
    Change(ChangeRequest, oneshot::Sender<Result<Outcome, ControlError>>),
    /// Read an app's history.
    History(String, oneshot::Sender<Result<Vec<Revision>, ControlError>>),
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
            }
        }
    });
    (ControlHandle { tx }, task)
}

#[cfg(test)]
mod tests;
