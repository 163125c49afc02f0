//! The pure part of Kubernetes discovery: watcher events in, a version's endpoint list out.
//!
//! Like kube-runtime's `reflector::store::apply_watcher_event`, but keyed by object and
//! flattened into endpoints: `Init`..`InitDone` are buffered and replace the store as one
//! change, so endpoints that vanished while the watch was down are dropped after a re-list.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use super::Discovered;
use crate::config::PortRef;

/// An object that lists endpoints.
pub trait Source {
    /// Its identity within the watch (namespace/name).
    fn key(&self) -> String;
    /// The endpoints it lists, on `port`.
    fn endpoints(&self, port: Option<&PortRef>) -> Vec<Discovered>;
}

impl Source for EndpointSlice {
    fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace.as_deref().unwrap_or(""), self.metadata.name.as_deref().unwrap_or(""))
    }

    fn endpoints(&self, want: Option<&PortRef>) -> Vec<Discovered> {
        if !matches!(self.address_type.as_str(), "IPv4" | "IPv6") {
            return Vec::new(); // FQDN slices name hosts, not pods.
        }
        let ports = self.ports.as_deref().unwrap_or_default();
        let port = match want {
            Some(PortRef::Number(n)) => Some(*n),
            Some(PortRef::Name(name)) => {
                ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())).and_then(|p| p.port).map(|p| p as u16)
            }
            None if ports.len() == 1 => ports[0].port.map(|p| p as u16),
            None => None,
        };
        let Some(port) = port else { return Vec::new() };
        let mut out = Vec::new();
        for ep in &self.endpoints {
            let c = ep.conditions.clone().unwrap_or_default();
            // The API says nil ready/serving mean "unknown, treat as ready"; nil terminating is false.
            let ready = c.ready.unwrap_or(true);
            let terminating = c.terminating.unwrap_or(false);
            for address in &ep.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else { continue };
                let name = ep.target_ref.as_ref().and_then(|t| t.name.clone()).unwrap_or_else(|| address.clone());
                out.push(Discovered {
                    name,
                    addr: SocketAddr::new(ip, port),
                    ready: ready && !terminating,
                    terminating,
                });
            }
        }
        out
    }
}

impl Source for Pod {
    fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace.as_deref().unwrap_or(""), self.metadata.name.as_deref().unwrap_or(""))
    }

    fn endpoints(&self, want: Option<&PortRef>) -> Vec<Discovered> {
        let status = self.status.clone().unwrap_or_default();
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return Vec::new();
        }
        let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) else {
            return Vec::new(); // not scheduled or no IP yet
        };
        let container_ports: Vec<_> =
            self.spec.iter().flat_map(|s| &s.containers).flat_map(|c| c.ports.iter().flatten()).collect();
        let port = match want {
            Some(PortRef::Number(n)) => Some(*n),
            Some(PortRef::Name(name)) => container_ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port as u16),
            None if container_ports.len() == 1 => Some(container_ports[0].container_port as u16),
            None => None,
        };
        let Some(port) = port else { return Vec::new() };
        let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
        let terminating = self.metadata.deletion_timestamp.is_some();
        let name = self.metadata.name.clone().unwrap_or_else(|| ip.to_string());
        vec![Discovered { name, addr: SocketAddr::new(ip, port), ready: ready && !terminating, terminating }]
    }
}

/// Endpoints per object, and what was last reported.
#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<String, Vec<Discovered>>,
    /// Objects listed since the last `Init`, until `InitDone`.
    relisting: Option<BTreeMap<String, Vec<Discovered>>>,
    synced: bool,
    last: Option<Vec<Discovered>>,
    port: Option<PortRef>,
}

impl Store {
    /// An empty store reading endpoints on `port`.
    pub fn new(port: Option<PortRef>) -> Self {
        Store { port, ..Default::default() }
    }

    /// Whether a full list has been seen.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Applies one event; returns the version's endpoint list when it changed (and the store
    /// has synced: a partial list is never reported).
    pub fn apply<K: Source>(&mut self, event: Event<K>) -> Option<Vec<Discovered>> {
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                return None;
            }
            Event::InitApply(o) => {
                let eps = o.endpoints(self.port.as_ref());
                match &mut self.relisting {
                    Some(buffer) => buffer.insert(o.key(), eps),
                    None => self.objects.insert(o.key(), eps),
                };
                return None;
            }
            Event::InitDone => {
                if let Some(buffer) = self.relisting.take() {
                    self.objects = buffer;
                }
                self.synced = true;
            }
            Event::Apply(o) => {
                self.objects.insert(o.key(), o.endpoints(self.port.as_ref()));
            }
            Event::Delete(o) => {
                self.objects.remove(&o.key());
            }
        }
        if !self.synced {
            return None;
        }
        let now = self.flatten();
        if self.last.as_ref() == Some(&now) {
            return None;
        }
        self.last = Some(now.clone());
        Some(now)
    }

    /// All endpoints, one per address (a pod can sit in two slices while they are updated;
    /// the ready entry wins), ordered by name for stable output.
    fn flatten(&self) -> Vec<Discovered> {
        let mut by_addr: BTreeMap<SocketAddr, Discovered> = BTreeMap::new();
        for ep in self.objects.values().flatten() {
            match by_addr.get(&ep.addr) {
                Some(existing) if existing.ready || !ep.ready => {}
                _ => {
                    by_addr.insert(ep.addr, ep.clone());
                }
            }
        }
        let mut out: Vec<Discovered> = by_addr.into_values().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
        out
    }
}

#[cfg(test)]
mod tests;
