//! The routing snapshot: everything the data plane needs, immutable, swapped whole.
//!
//! [`build`] is a plain function of (config, current splits, previous snapshot): no I/O, so it is
//! unit-tested with hand-built inputs. It carries over what must outlive a rebuild — endpoint
//! health/load atomics and upstream connection pools — from the previous snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::{AppConfig, Config, OutlierConfig, ProbeConfig, RetryConfig, VersionDown};
use crate::discovery::{Discovered, PoolKey};
use crate::metrics::{Metrics, VersionMetrics};
use crate::pool::{Endpoint, EndpointState, Pool};
use crate::split::Split;
use crate::upstream::{HttpClient, Upstream};

/// The split an app runs now: its weights and the revision that set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitState {
    /// Revision number (1 = the config's split at start).
    pub revision: u64,
    /// Weight per version name; versions not listed get 0.
    pub weights: BTreeMap<String, u32>,
}

/// All apps and how listeners reach them.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every stored snapshot.
    pub generation: u64,
    /// Apps in name order.
    pub apps: Box<[App]>,
    /// Routing per listener, in listener-name order (the order listeners were bound).
    pub listeners: Box<[ListenerRoutes]>,
}

/// Host routing of one listener.
#[derive(Debug, Default)]
pub struct ListenerRoutes {
    /// Listener name.
    pub name: String,
    /// Lower-case host → index into [`Snapshot::apps`].
    by_host: HashMap<Box<str>, usize>,
    /// App for hosts not listed (the app configured without `hosts`).
    default: Option<usize>,
}

/// One application: its versions and split.
#[derive(Debug)]
pub struct App {
    /// App name.
    pub name: Arc<str>,
    /// The split revision this snapshot serves.
    pub revision: u64,
    /// Versions in name order, aligned with the split's weights.
    pub versions: Box<[Version]>,
    /// Per-request version choice.
    pub split: Split,
    /// What its endpoints share: the retry budget.
    pub upstream: Upstream,
    /// Passive ejection settings.
    pub outlier: OutlierConfig,
    /// Retry settings.
    pub retry: RetryConfig,
    /// Whether a version with no healthy endpoint spills its share to the others.
    pub spill: bool,
}

/// One version of an app.
#[derive(Debug)]
pub struct Version {
    /// Version name (v1, blue, canary …).
    pub name: Arc<str>,
    /// Current weight.
    pub weight: u32,
    /// Its endpoints.
    pub pool: Pool,
    /// Pre-resolved metric handles.
    pub metrics: VersionMetrics,
    /// The active probe of its endpoints, if any.
    pub probe: Option<ProbeConfig>,
    /// Where its endpoints come from, when discovered.
    pub discovery: Option<crate::config::DiscoveryConfig>,
}

impl Snapshot {
    /// The app serving `host` on listener `listener`. `host` may carry a port and any case.
    #[inline]
    pub fn route(&self, listener: usize, host: Option<&str>) -> Option<&App> {
        let routes = self.listeners.get(listener)?;
        let index = host.map(strip_port).and_then(|h| lookup_host(&routes.by_host, h)).or(routes.default)?;
        self.apps.get(index)
    }

    /// The app called `name`.
    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| &*a.name == name)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Case-insensitive lookup without allocating: most hosts arrive lower-case already; others
/// are lowered into a stack buffer.
fn lookup_host(map: &HashMap<Box<str>, usize>, host: &str) -> Option<usize> {
    if map.is_empty() {
        return None;
    }
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return map.get(host).copied();
    }
    let mut buf = [0u8; 255];
    let bytes = host.as_bytes();
    let lowered = buf.get_mut(..bytes.len())?;
    lowered.copy_from_slice(bytes);
    lowered.make_ascii_lowercase();
    map.get(std::str::from_utf8(lowered).ok()?).copied()
}

impl App {
    /// Weights aligned with `versions`.
    pub fn weights(&self) -> impl Iterator<Item = (&str, u32)> {
        self.versions.iter().map(|v| (&*v.name, v.weight))
    }

    /// When version `down` has no healthy endpoint: another version with weight and a healthy
    /// endpoint, chosen in proportion to the weights. A rare path, so it scans.
    pub fn spill_from(&self, down: usize) -> Option<usize> {
        let open = |(i, v): &(usize, &Version)| *i != down && v.weight > 0 && v.pool.has_healthy();
        let total: u64 = self.versions.iter().enumerate().filter(open).map(|(_, v)| u64::from(v.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut point = fastrand::u64(..total);
        for (i, v) in self.versions.iter().enumerate().filter(open) {
            match point.checked_sub(u64::from(v.weight)) {
                Some(rest) => point = rest,
                None => return Some(i),
            }
        }
        None
    }
}

/// Discovered endpoints per (app, version), for versions that use discovery.
pub type DiscoveredPools = BTreeMap<PoolKey, Vec<Discovered>>;

/// Builds the next snapshot. `splits` holds the current split of every app in `config`;
/// `discovered` the endpoints of versions that use discovery (none yet: an empty pool).
pub fn build(
    config: &Config,
    splits: &BTreeMap<String, SplitState>,
    discovered: &DiscoveredPools,
    prev: Option<&Snapshot>,
    metrics: &Metrics,
    generation: u64,
) -> Snapshot {
    let apps: Box<[App]> = config
        .apps
        .iter()
        .map(|(name, app)| {
            let prev_app = prev.and_then(|p| p.app(name));
            build_app(name, app, &splits[name], discovered, prev_app, metrics)
        })
        .collect();
    let listeners = config
        .listeners
        .keys()
        .map(|listener| {
            let mut routes = ListenerRoutes { name: listener.clone(), ..Default::default() };
            for (i, (_, app)) in config.apps.iter().enumerate().filter(|(_, (_, a))| &a.listener == listener) {
                if app.hosts.is_empty() {
                    routes.default = Some(i);
                }
                for h in &app.hosts {
                    routes.by_host.insert(h.to_ascii_lowercase().into(), i);
                }
            }
            routes
        })
        .collect();
    Snapshot { generation, apps, listeners }
}

fn build_app(
    name: &str,
    app: &AppConfig,
    split: &SplitState,
    discovered: &DiscoveredPools,
    prev: Option<&App>,
    metrics: &Metrics,
) -> App {
    let versions: Box<[Version]> = app
        .versions
        .iter()
        .map(|(vname, v)| {
            let prev_pool = prev.and_then(|p| p.versions.iter().find(|pv| &*pv.name == vname));
            let probe = app.probe_for(vname).cloned();
            // Static and discovered endpoints take one path: (name, address, ready).
            let listed: Vec<(String, std::net::SocketAddr, bool)> = match &v.discovery {
                None => v.endpoints.iter().map(|e| (e.display_name(), e.addr, true)).collect(),
                Some(_) => discovered
                    .get(&(name.to_string(), vname.clone()))
                    .map(|d| d.iter().map(|e| (e.name.clone(), e.addr, e.ready)).collect())
                    .unwrap_or_default(),
            };
            let endpoints = listed
                .into_iter()
                .map(|(ep_name, addr, ready)| {
                    // Same address in the same version: the same endpoint, keep its state
                    // and its warm connections (unless the timeouts changed).
                    let prev_ep = prev_pool.and_then(|p| p.pool.endpoints().iter().find(|e| e.addr == addr));
                    // New endpoints wait for their first passing probe, if probed.
                    let state = prev_ep
                        .map(|e| Arc::clone(&e.state))
                        .unwrap_or_else(|| Arc::new(EndpointState::new(probe.is_some())));
                    state.set_ready(ready);
                    let client = prev_ep
                        .filter(|e| e.client.timeouts == app.timeouts)
                        .map(|e| e.client.clone())
                        .unwrap_or_else(|| HttpClient::new(addr, &app.timeouts));
                    let healthy_gauge = metrics.endpoint_healthy(name, vname, &ep_name);
                    healthy_gauge.set(i64::from(state.is_healthy()));
                    Endpoint {
                        requests: metrics.endpoint(name, vname, &ep_name),
                        healthy_gauge,
                        client,
                        name: ep_name.into(),
                        addr,
                        state,
                    }
                })
                .collect();
            Version {
                name: vname.as_str().into(),
                weight: split.weights.get(vname).copied().unwrap_or(0),
                pool: Pool::new(endpoints, app.balance),
                metrics: metrics.version(name, vname),
                probe,
                discovery: v.discovery.clone(),
            }
        })
        .collect();
    let weights: Vec<u32> = versions.iter().map(|v| v.weight).collect();
    // The retry budget outlives rebuilds, so a split change does not refill it.
    let upstream = prev.map(|p| p.upstream.clone()).unwrap_or_default();
    App {
        name: name.into(),
        revision: split.revision,
        split: Split::new(&weights),
        versions,
        upstream,
        outlier: app.outlier.clone(),
        retry: app.retry.clone(),
        spill: app.on_version_down == VersionDown::Spill,
    }
}

#[cfg(test)]
mod tests;
