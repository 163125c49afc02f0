//! The routing snapshot: everything the data plane needs, immutable, swapped whole, and the
//! two handles on it: the one [`Writer`] (the control task's) and read-only [`Routes`] (the
//! data plane's and the admin API's), as kube-runtime's reflector `Writer`/`Store`.
//!
//! The control plane builds snapshots (`control::build`); nothing here writes one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::{OutlierConfig, ProbeConfig, RetryConfig};
use crate::data::pool::Pool;
use crate::data::split::Split;
use crate::data::upstream::Upstream;
use crate::metrics::VersionMetrics;

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
    pub by_host: HashMap<Box<str>, usize>,
    /// App for hosts not listed (the app configured without `hosts`).
    pub default: Option<usize>,
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
    /// Whether `X-Weir-Version: <version>` forces the version.
    pub force_header: bool,
    /// Sticky user buckets, if the app has them.
    pub sticky: Option<crate::data::split::Sticky>,
    /// Forcing rules, header rules first (config order within each kind).
    pub force: Box<[ForceRule]>,
    /// Whether a forced request whose version is unknown or down is routed as unforced.
    pub force_fallback: bool,
    /// Whether its endpoints speak clear-text HTTP/1.1 (Weir's codec forwards to those only).
    pub plain_upstream: bool,
    /// Mirroring, if the app has it.
    pub mirror: Option<crate::data::mirror::Mirror>,
}

/// A forcing rule, ready for requests (see [`crate::config::ForceRule`]).
#[derive(Debug)]
pub struct ForceRule {
    /// Where the value is read.
    pub source: ForceSource,
    /// The index of the version it forces.
    pub version: usize,
    /// What the value must be.
    pub matcher: ForceMatch,
}

/// Where a forcing rule reads its value.
#[derive(Debug)]
pub enum ForceSource {
    /// A request header (lower case).
    Header(http::HeaderName),
    /// A cookie.
    Cookie(Box<str>),
}

/// What a forcing rule's value must be.
#[derive(Debug)]
pub enum ForceMatch {
    /// `always` forces the version, `never` keeps the request out of it.
    AlwaysNever,
    /// Exactly these bytes.
    Exact(Box<[u8]>),
    /// A match of this expression.
    Pattern(regex::bytes::Regex),
}

/// What a forcing rule decides for a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// Into the version at this index.
    Into(usize),
    /// Out of the version at this index.
    OutOf(usize),
}

impl ForceRule {
    /// The rule's decision for `value`, if it decides.
    #[inline]
    pub fn decide(&self, value: &[u8]) -> Option<Forced> {
        let value = value.trim_ascii();
        match &self.matcher {
            ForceMatch::AlwaysNever if value.eq_ignore_ascii_case(b"always") => Some(Forced::Into(self.version)),
            ForceMatch::AlwaysNever if value.eq_ignore_ascii_case(b"never") => Some(Forced::OutOf(self.version)),
            ForceMatch::AlwaysNever => None,
            ForceMatch::Exact(v) => (**v == *value).then_some(Forced::Into(self.version)),
            ForceMatch::Pattern(re) => re.is_match(value).then_some(Forced::Into(self.version)),
        }
    }
}

/// Compiles a forcing rule's pattern, bounded in size (a config is trusted, but a pattern
/// that compiles to megabytes per app is a mistake worth refusing).
pub fn compile_pattern(pattern: &str) -> Result<regex::bytes::Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(pattern).size_limit(1 << 20).dfa_size_limit(1 << 20).build()
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

/// The only handle that stores a new snapshot. Not `Clone`: one is made at start and moved
/// into the control task, so "one writer" is a property of the types, not a convention.
#[derive(Debug)]
pub struct Writer {
    current: Arc<arc_swap::ArcSwap<Snapshot>>,
}

/// A read-only handle on the current snapshot. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Routes {
    current: Arc<arc_swap::ArcSwap<Snapshot>>,
}

impl Writer {
    /// A writer holding `first`.
    pub fn new(first: Snapshot) -> Self {
        Writer { current: Arc::new(arc_swap::ArcSwap::from_pointee(first)) }
    }

    /// Stores the next snapshot: every request that loads after this sees it.
    pub fn store(&self, next: Arc<Snapshot>) {
        self.current.store(next);
    }

    /// A read-only handle on the same state.
    pub fn routes(&self) -> Routes {
        Routes { current: Arc::clone(&self.current) }
    }

    /// The current snapshot.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}

impl Routes {
    /// The current snapshot, for one request (cheap; no reference count taken).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot, owned.
    #[inline]
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_are_stripped() {
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("app.local:8080"), "app.local");
        assert_eq!(strip_port("host"), "host");
    }
}
