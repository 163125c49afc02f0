//! Building the next routing snapshot: a plain function of (config, current splits,
//! discovered endpoints, previous snapshot) with no I/O, unit-tested with hand-built inputs
//! (as kube-runtime's `apply_watcher_event`). It carries over what must outlive a rebuild —
//! endpoint health/load atomics and upstream connection pools — from the previous snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{AppConfig, Config, VersionDown};
use crate::control::discovery::{Discovered, PoolKey};
use crate::data::pool::{Endpoint, EndpointState, Pool};
use crate::data::snapshot::{App, ListenerRoutes, Snapshot, SplitState, Version};
use crate::data::split::Split;
use crate::data::upstream::{HttpClient, Transport};
use crate::metrics::Metrics;

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
    // The previous snapshot's transport while the config's is the same (its CA bundle is
    // read once, not on every rebuild).
    let transport = prev
        .and_then(|p| {
            p.versions
                .iter()
                .flat_map(|v| v.pool.endpoints())
                .map(|e| e.client.transport())
                .find(|t| t.config == app.upstream)
                .cloned()
        })
        .unwrap_or_else(|| Transport::of_or_refusing(&app.upstream));
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
                        .filter(|e| e.client.timeouts == app.timeouts && e.client.transport().config == app.upstream)
                        .map(|e| e.client.clone())
                        .unwrap_or_else(|| HttpClient::with_transport(addr, &app.timeouts, transport.clone()));
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
        force_header: app.force_header,
        sticky: app.sticky.as_ref().map(|s| {
            let header = s.header.as_deref().and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok());
            let mut sticky =
                crate::data::split::Sticky::new(header, s.cookie.as_deref(), s.salt.as_deref().unwrap_or(name));
            sticky.set_cookie = s.set_cookie && s.cookie.is_some();
            sticky
        }),
        force: force_rules(app),
        plain_upstream: transport.is_plain_http1(),
        mirror: app.mirror.as_ref().and_then(|m| {
            use crate::data::mirror::{Mirror, MirrorShared};
            let index = app.versions.keys().position(|v| *v == m.version)?;
            // The queue and counters outlive snapshots (copies in flight keep their slots).
            let shared = prev
                .and_then(|p| p.mirror.as_ref())
                .filter(|pm| pm.version == index && pm.shared().queue() == m.queue)
                .map(|pm| Arc::clone(pm.shared()))
                .unwrap_or_else(|| MirrorShared::new(m.queue, metrics.mirror(name, &m.version)));
            Some(Mirror::new(index, m.percent, m.max_body, shared))
        }),
        force_fallback: app.force_unavailable == crate::config::ForceUnavailable::Fallback,
    }
}

#[cfg(test)]
mod tests;

/// An app's forcing rules, header rules first (validated: every name and pattern is good).
fn force_rules(app: &AppConfig) -> Box<[crate::data::snapshot::ForceRule]> {
    use crate::data::snapshot::{ForceMatch, ForceRule, ForceSource, compile_pattern};
    let rule = |r: &crate::config::ForceRule| {
        let source = match (&r.header, &r.cookie) {
            (Some(h), _) => ForceSource::Header(http::HeaderName::from_bytes(h.as_bytes()).ok()?),
            (None, Some(c)) => ForceSource::Cookie(c.as_str().into()),
            (None, None) => return None,
        };
        let matcher = match (&r.value, &r.pattern) {
            (Some(v), _) => ForceMatch::Exact(v.trim().as_bytes().into()),
            (None, Some(p)) => ForceMatch::Pattern(compile_pattern(p).ok()?),
            (None, None) => ForceMatch::AlwaysNever,
        };
        // Versions are in name order, as the config's map is.
        let version = app.versions.keys().position(|v| *v == r.version)?;
        Some(ForceRule { source, version, matcher })
    };
    let (headers, cookies): (Vec<_>, Vec<_>) =
        app.force.iter().filter_map(rule).partition(|r| matches!(r.source, ForceSource::Header(_)));
    headers.into_iter().chain(cookies).collect()
}
