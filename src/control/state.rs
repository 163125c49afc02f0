//! The durable state of every app — revision history, weights in force, the config file's
//! split it was last reconciled with, and a rollout's progress — and the stores that keep it.
//!
//! The control task is the only reader and writer of a store: it writes a change *before* it
//! publishes the change and answers the admin call, so a 2xx means durable (and, with the
//! Kubernetes store, visible to every replica). The whole state is one JSON document with a
//! `sequence` that grows by one per write; replicas report the sequence they applied.

pub mod file;
#[cfg(feature = "kubernetes")]
pub mod kube;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::control::revision::Revision;

/// The document format this Weir writes and reads.
pub const FORMAT: u32 = 1;

/// Largest document accepted (a ConfigMap holds at most 1 MiB in all).
pub const MAX_BYTES: usize = 900 * 1024;

/// Everything kept, for every app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// [`FORMAT`]. A higher one was written by a newer Weir and is refused, not guessed at.
    pub format: u32,
    /// Grows by one on every write; replicas report the sequence they have applied.
    pub sequence: u64,
    /// The replica (or host) that wrote it.
    #[serde(default)]
    pub written_by: String,
    /// Per app.
    pub apps: BTreeMap<String, AppState>,
}

/// One app's kept state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppState {
    /// The config file's `split` section as it was when its split was last applied: a start
    /// or reload with a different one applies the file's split as a new revision ("newest
    /// intent wins"); with the same one, the stored split stays in force.
    pub file_split: BTreeMap<String, i64>,
    /// Kept revisions, oldest first; the last is in force.
    pub revisions: Vec<Revision>,
    /// A rollout in progress, kept by the rollout controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<serde_json::Value>,
}

impl Document {
    /// Parses and checks a stored document.
    pub fn parse(bytes: &[u8]) -> Result<Document, String> {
        let doc: Document = serde_json::from_slice(bytes).map_err(|e| format!("not a Weir state document: {e}"))?;
        if doc.format != FORMAT {
            return Err(format!(
                "format {} is not the one this weir reads ({FORMAT}); it was written by another weir version",
                doc.format
            ));
        }
        for (app, state) in &doc.apps {
            if state.revisions.is_empty() {
                return Err(format!("app {app:?} has no revisions"));
            }
            if state.revisions.windows(2).any(|w| w[0].number >= w[1].number) {
                return Err(format!("app {app:?}: revision numbers do not increase"));
            }
        }
        Ok(doc)
    }

    /// The stored text: pretty JSON, so `kubectl get cm -o yaml` and `cat` are readable.
    pub fn to_json(&self) -> Result<Vec<u8>, StoreError> {
        let mut text = serde_json::to_vec_pretty(self).expect("a document serializes");
        text.push(b'\n');
        if text.len() > MAX_BYTES {
            return Err(StoreError::Unavailable(format!(
                "the state would be {} bytes, over the {MAX_BYTES}-byte limit; lower admin.history_limit",
                text.len()
            )));
        }
        Ok(text)
    }
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The stored state exists but cannot be used. `what` names the file or object.
    #[error("the state in {what} cannot be read: {reason}")]
    Unreadable {
        /// The file or object.
        what: String,
        /// Why.
        reason: String,
    },
    /// Someone else wrote since the version the write was based on.
    #[error("the state was changed by another replica meanwhile")]
    Conflict,
    /// The store cannot be reached or written now; nothing was written.
    #[error("{0}")]
    Unavailable(String),
}

/// What a store holds: the document (none yet: `None`) and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The stored document.
    pub doc: Option<Document>,
    /// Its version, to base the next write on.
    pub version: Version,
    /// With no document: the highest state sequence any replica reports having applied (a
    /// document set aside or removed by hand leaves replicas that applied a later one). A new
    /// document continues above it, or those replicas would take it for an old one.
    pub floor: u64,
}

/// The version of the stored document a write is based on: the ConfigMap's
/// `resourceVersion`; `None` for the file store (one writer, held by a lock).
pub type Version = Option<String>;

/// Where the state is kept. Clones share the store.
#[derive(Debug, Clone)]
pub enum Store {
    /// Nowhere: a restart goes back to the config file's split.
    Memory,
    /// A directory, for one standalone Weir.
    File(std::sync::Arc<file::FileStore>),
    /// A ConfigMap shared by every replica.
    #[cfg(feature = "kubernetes")]
    Kube(std::sync::Arc<kube::KubeStore>),
}

impl Store {
    /// What and where, for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Store::Memory => "memory (not kept across restarts)".into(),
            Store::File(f) => format!("file {}", f.path().display()),
            #[cfg(feature = "kubernetes")]
            Store::Kube(k) => k.describe(),
        }
    }

    /// Whether writes outlive the process.
    pub fn durable(&self) -> bool {
        !matches!(self, Store::Memory)
    }

    /// The stored document and its version.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        match self {
            Store::Memory => Ok(Loaded { doc: None, version: None, floor: 0 }),
            Store::File(f) => f.load().await.map(|doc| Loaded { doc, version: None, floor: 0 }),
            #[cfg(feature = "kubernetes")]
            Store::Kube(k) => k.load().await,
        }
    }

    /// Writes `doc` if the stored version is still `expected`; returns the new version.
    pub async fn write(&self, doc: &Document, expected: &Version) -> Result<Version, StoreError> {
        let text = doc.to_json()?;
        match self {
            Store::Memory => Ok(None),
            Store::File(f) => f.write(text).await.map(|()| None),
            #[cfg(feature = "kubernetes")]
            Store::Kube(k) => k.write(text, expected).await.map(Some),
        }
    }

    /// Moves unreadable stored state out of the way, keeping its text (`on_unreadable =
    /// "start_from_config"`); returns where it went.
    pub async fn set_aside(&self) -> Result<String, StoreError> {
        match self {
            Store::Memory => Ok(String::new()),
            Store::File(f) => f.set_aside().await,
            #[cfg(feature = "kubernetes")]
            Store::Kube(k) => k.set_aside().await,
        }
    }
}

/// One replica's report of what it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replica {
    /// Its identity (the pod's name in a cluster).
    pub name: String,
    /// The state sequence it applied.
    pub sequence: u64,
    /// The revision in force per app there.
    pub revisions: BTreeMap<String, u64>,
    /// When it last reported.
    #[serde(serialize_with = "rfc3339")]
    pub last_report: std::time::SystemTime,
    /// Whether its report is recent enough (its lease has not expired).
    pub live: bool,
    /// Whether it is the replica answering.
    pub this: bool,
    /// Its per-version counts for the rollout analysis, as reported (not shown).
    #[serde(skip)]
    pub counts: Option<String>,
}

fn rfc3339<S: serde::Serializer>(t: &std::time::SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// Where the replicas' reports are read: this process alone, or every replica's Lease.
#[derive(Debug, Clone)]
pub enum Replicas {
    /// A standalone Weir: itself.
    Local {
        /// Its name.
        identity: String,
        /// What it applied.
        applied: tokio::sync::watch::Receiver<crate::control::Applied>,
    },
    /// Replicas sharing a ConfigMap.
    #[cfg(feature = "kubernetes")]
    Kube(Box<kube::Leases>),
}

impl Replicas {
    /// Every replica's last report.
    pub async fn list(&self) -> Result<Vec<Replica>, String> {
        match self {
            Replicas::Local { identity, applied } => {
                let a = applied.borrow().clone();
                Ok(vec![Replica {
                    name: identity.clone(),
                    sequence: a.sequence,
                    revisions: a.revisions,
                    last_report: std::time::SystemTime::now(),
                    live: true,
                    this: true,
                    counts: None,
                }])
            }
            #[cfg(feature = "kubernetes")]
            Replicas::Kube(leases) => leases.list().await,
        }
    }
}

/// This process's name among replicas: `$POD_NAME`, else the host name, else `weir`.
pub fn default_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weir".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::revision::History;

    fn doc() -> Document {
        let h = History::new(BTreeMap::from([("v1".into(), 90), ("v2".into(), 10)]), 10);
        let app = AppState {
            file_split: BTreeMap::from([("v1".into(), 90), ("v2".into(), 10)]),
            revisions: h.iter().cloned().collect(),
            rollout: None,
        };
        Document { format: FORMAT, sequence: 3, written_by: "a".into(), apps: BTreeMap::from([("web".into(), app)]) }
    }

    #[test]
    fn round_trips() {
        let d = doc();
        assert_eq!(Document::parse(&d.to_json().unwrap()).unwrap(), d);
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let mut d = doc();
        d.format = 2;
        assert!(Document::parse(&serde_json::to_vec(&d).unwrap()).unwrap_err().contains("format 2"));
        let mut d = doc();
        d.apps.get_mut("web").unwrap().revisions.clear();
        assert!(Document::parse(&serde_json::to_vec(&d).unwrap()).unwrap_err().contains("no revisions"));
        let mut d = doc();
        let r = d.apps["web"].revisions[0].clone();
        d.apps.get_mut("web").unwrap().revisions.push(r);
        assert!(Document::parse(&serde_json::to_vec(&d).unwrap()).unwrap_err().contains("do not increase"));
        assert!(Document::parse(b"{\"format\":1,").is_err());
        assert!(Document::parse(b"").is_err());
    }
}
