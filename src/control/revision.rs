//! Numbered split revisions of one app, like `kubectl rollout history`.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What made a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// The config file's split, at start.
    Config,
    /// `PUT /apps/{app}/split`.
    Split,
    /// `POST /apps/{app}/promote` of one version.
    Promote {
        /// The version that now takes all traffic.
        version: String,
    },
    /// `POST /apps/{app}/rollback`.
    Rollback {
        /// The revision whose weights were restored.
        to: u64,
    },
    /// A config reload (SIGHUP or `POST /reload`) whose split section changed, or whose
    /// versions no longer fit the split in force.
    Reload,
    /// A step of a rollout Weir runs (or its end: rollback, abort, promotion).
    Rollout {
        /// The version rolled out.
        canary: String,
        /// The step (0-based) it was at.
        step: u64,
    },
}

/// One revision of an app's split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// 1, 2, 3 … per app; never reused.
    pub number: u64,
    /// Weight of every version.
    pub weights: BTreeMap<String, u32>,
    /// Why, as the operator said it (empty when not given).
    pub reason: String,
    /// What made it.
    pub cause: Cause,
    /// Who made it: the admin token's name or the Kubernetes user (`anonymous@<address>` on
    /// an admin API without authentication); empty for Weir itself (the config file at start,
    /// a reload).
    #[serde(default)]
    pub by: String,
    /// When it was stored, RFC 3339 UTC.
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
}

mod rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// Now, to the millisecond: what is shown and stored, so a stored revision reads back equal.
fn now() -> SystemTime {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(since.as_millis() as u64)
}

/// The revisions of one app, newest last, at most `limit` of them.
#[derive(Debug, Clone)]
pub struct History {
    revisions: VecDeque<Revision>,
    limit: usize,
}

impl History {
    /// A history whose revision 1 is the config's split.
    pub fn new(weights: BTreeMap<String, u32>, limit: usize) -> Self {
        let first =
            Revision { number: 1, weights, reason: String::new(), cause: Cause::Config, by: String::new(), at: now() };
        History { revisions: VecDeque::from([first]), limit: limit.max(2) }
    }

    /// A history of stored revisions (oldest first, numbers increasing), keeping the newest
    /// `limit`; `None` when there are none.
    pub fn from_revisions(revisions: Vec<Revision>, limit: usize) -> Option<Self> {
        if revisions.is_empty() {
            return None;
        }
        let mut history = History { revisions: revisions.into(), limit: limit.max(2) };
        history.set_limit(limit);
        Some(history)
    }

    /// The revision in force.
    pub fn current(&self) -> &Revision {
        self.revisions.back().expect("a history is never empty")
    }

    /// The revision numbered `n`, if still kept.
    pub fn get(&self, n: u64) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.number == n)
    }

    /// The revision before the current one, if still kept.
    pub fn previous(&self) -> Option<&Revision> {
        self.revisions.iter().rev().nth(1)
    }

    /// Changes how many revisions are kept (at least 2), dropping the oldest beyond it.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(2);
        while self.revisions.len() > self.limit {
            self.revisions.pop_front();
        }
    }

    /// All kept revisions, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Revision> {
        self.revisions.iter()
    }

    /// Records new weights as the next revision, dropping the oldest beyond the limit.
    pub fn record(&mut self, weights: BTreeMap<String, u32>, reason: String, cause: Cause, by: String) -> &Revision {
        let number = self.current().number + 1;
        self.revisions.push_back(Revision { number, weights, reason, cause, by, at: now() });
        while self.revisions.len() > self.limit {
            self.revisions.pop_front();
        }
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v1: u32, v2: u32) -> BTreeMap<String, u32> {
        BTreeMap::from([("v1".to_string(), v1), ("v2".to_string(), v2)])
    }

    #[test]
    fn numbers_grow_and_old_revisions_drop() {
        let mut h = History::new(w(90, 10), 3);
        assert_eq!(h.current().number, 1);
        assert!(h.previous().is_none());
        h.record(w(50, 50), "half".into(), Cause::Split, "ci".into());
        h.record(w(0, 100), String::new(), Cause::Promote { version: "v2".into() }, String::new());
        assert_eq!(h.previous().unwrap().weights, w(50, 50));
        h.record(w(90, 10), String::new(), Cause::Rollback { to: 1 }, String::new());
        assert_eq!(h.current().number, 4);
        assert!(h.get(1).is_none(), "limit 3 keeps revisions 2..=4");
        assert_eq!(h.iter().map(|r| r.number).collect::<Vec<_>>(), [2, 3, 4]);
    }
}
