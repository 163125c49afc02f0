//! Endpoint discovery: sources that tell the control task which endpoints a version has.
//!
//! A source sends the full endpoint list of one version (an app's version = one pool) to the
//! control task whenever it changes; the control task stores it beside the config and rebuilds
//! the snapshot through the same builder as static endpoints. Sources never remove endpoints
//! because they lost contact: only an event from the source does.

#[cfg(feature = "kubernetes")]
pub mod kube;
#[cfg(feature = "kubernetes")]
pub mod reduce;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

/// One endpoint as a discovery source reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discovered {
    /// Pod name (or the address when unknown).
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// May take new requests (ready and not terminating).
    pub ready: bool,
    /// Shutting down: in-flight requests finish, no new ones.
    pub terminating: bool,
}

/// Identifies one discovered pool: (app, version).
pub type PoolKey = (String, String);

/// Sync state of every discovered pool: readiness waits until each has listed once.
#[derive(Debug, Default)]
pub struct SyncState {
    pending: AtomicUsize,
    synced: tokio::sync::Notify,
    pools: Mutex<BTreeMap<PoolKey, PoolStatus>>,
}

/// What operators see of one discovered pool.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolStatus {
    /// Has listed its objects at least once.
    pub synced: bool,
    /// Errors from the API so far.
    pub errors: u64,
    /// The last error, if any (cleared on the next good event).
    pub last_error: Option<String>,
    /// Times the watcher was rebuilt after repeated failures.
    pub restarts: u64,
}

impl SyncState {
    /// A state waiting for `pools`.
    pub fn new(pools: impl IntoIterator<Item = PoolKey>) -> Self {
        let pools: BTreeMap<PoolKey, PoolStatus> = pools.into_iter().map(|k| (k, PoolStatus::default())).collect();
        SyncState {
            pending: AtomicUsize::new(pools.len()),
            synced: tokio::sync::Notify::new(),
            pools: Mutex::new(pools),
        }
    }

    /// Whether every pool has synced once.
    pub fn all_synced(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Resolves once every pool has synced.
    pub async fn wait(&self) {
        loop {
            let notified = self.synced.notified();
            if self.all_synced() {
                return;
            }
            notified.await;
        }
    }

    /// Marks `key` synced (idempotent).
    pub fn mark_synced(&self, key: &PoolKey) {
        let mut pools = self.pools.lock().expect("sync state lock");
        if let Some(p) = pools.get_mut(key)
            && !p.synced
        {
            p.synced = true;
            if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.synced.notify_waiters();
            }
        }
    }

    /// Records an API error for `key`; `restarted` when the watcher is being rebuilt.
    pub fn record_error(&self, key: &PoolKey, error: String, restarted: bool) {
        if let Some(p) = self.pools.lock().expect("sync state lock").get_mut(key) {
            p.errors += 1;
            p.last_error = Some(error);
            p.restarts += u64::from(restarted);
        }
    }

    /// Clears the last error of `key` after a good event.
    pub fn record_ok(&self, key: &PoolKey) {
        if let Some(p) = self.pools.lock().expect("sync state lock").get_mut(key) {
            p.last_error = None;
        }
    }

    /// Status of one pool.
    pub fn status(&self, key: &PoolKey) -> Option<PoolStatus> {
        self.pools.lock().expect("sync state lock").get(key).cloned()
    }
}
