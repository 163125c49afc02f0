//! A version's pool of endpoints and the choice of one endpoint per request.
//!
//! Health and load live in [`EndpointState`] atomics shared by `Arc` beside the snapshot: probes
//! and passive checks flip them without a rebuild, and a rebuild hands the same `Arc` to the
//! endpoints that stay, so their state survives config reloads and split changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use http::uri::Authority;

use crate::config::Balance;

/// Shared, mutable state of one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    /// May take new requests (probes and ejection clear it).
    healthy: AtomicBool,
    /// Requests sent to this endpoint whose response has not finished.
    in_flight: AtomicU32,
}

impl EndpointState {
    /// A new endpoint state, healthy or not.
    pub fn new(healthy: bool) -> Self {
        Self { healthy: AtomicBool::new(healthy), in_flight: AtomicU32::new(0) }
    }
    /// Whether the endpoint may take new requests.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    /// Marks the endpoint (un)able to take new requests; returns the previous value.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }
    /// Requests in flight to this endpoint.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request as in flight until dropped (after the response body ends).
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    /// Starts counting a request against `state`.
    pub fn start(state: &Arc<EndpointState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint of a version, as the data plane sees it.
#[derive(Debug)]
pub struct Endpoint {
    /// Name shown in metrics, logs and the admin API (a pod name under Kubernetes).
    pub name: Arc<str>,
    /// Where to connect.
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once so a request does not format it.
    pub authority: Authority,
    /// Health and load, shared across snapshots.
    pub state: Arc<EndpointState>,
    /// Requests sent to this endpoint (`weir_endpoint_requests_total`).
    pub requests: prometheus::IntCounter,
}

/// The endpoints of one version and how to choose among them.
#[derive(Debug)]
pub struct Pool {
    endpoints: Box<[Endpoint]>,
    balance: Balance,
    cursor: AtomicUsize,
}

impl Pool {
    /// A pool over `endpoints`.
    pub fn new(endpoints: Vec<Endpoint>, balance: Balance) -> Self {
        Pool { endpoints: endpoints.into_boxed_slice(), balance, cursor: AtomicUsize::new(0) }
    }

    /// All endpoints, healthy or not.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// How many endpoints may take requests now.
    pub fn healthy_count(&self) -> usize {
        self.endpoints.iter().filter(|e| e.state.is_healthy()).count()
    }

    /// Chooses a healthy endpoint, or `None` when none is. No lock, no allocation.
    #[inline]
    pub fn pick(&self) -> Option<&Endpoint> {
        let eps = &self.endpoints;
        match eps.len() {
            0 => None,
            1 => eps.first().filter(|e| e.state.is_healthy()),
            n => match self.balance {
                Balance::RoundRobin => {
                    let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                    self.first_healthy_from(start % n)
                }
                Balance::P2c => {
                    let a = fastrand::usize(..n);
                    let mut b = fastrand::usize(..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (ea, eb) = (&eps[a], &eps[b]);
                    match (ea.state.is_healthy(), eb.state.is_healthy()) {
                        (true, true) if eb.state.in_flight() < ea.state.in_flight() => Some(eb),
                        (true, _) => Some(ea),
                        (false, true) => Some(eb),
                        // Both samples are down: scan, so a lone healthy endpoint is still found.
                        (false, false) => self.first_healthy_from(a),
                    }
                }
            },
        }
    }

    fn first_healthy_from(&self, start: usize) -> Option<&Endpoint> {
        let (tail, head) = self.endpoints.split_at(start);
        head.iter().chain(tail).find(|e| e.state.is_healthy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(i: usize) -> Endpoint {
        let addr = SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16));
        Endpoint {
            name: format!("e{i}").into(),
            addr,
            authority: addr.to_string().parse().unwrap(),
            state: Arc::new(EndpointState::new(true)),
            requests: prometheus::IntCounter::new("x", "x").unwrap(),
        }
    }

    fn pool(n: usize, balance: Balance) -> Pool {
        Pool::new((0..n).map(endpoint).collect(), balance)
    }

    #[test]
    fn round_robin_rotates_and_skips_unhealthy() {
        let p = pool(3, Balance::RoundRobin);
        let names: Vec<_> = (0..6).map(|_| p.pick().unwrap().name.to_string()).collect();
        assert_eq!(names, ["e0", "e1", "e2", "e0", "e1", "e2"]);
        p.endpoints()[1].state.set_healthy(false);
        for _ in 0..10 {
            assert_ne!(&*p.pick().unwrap().name, "e1");
        }
    }

    #[test]
    fn p2c_prefers_the_less_loaded_and_never_the_unhealthy() {
        let p = pool(2, Balance::P2c);
        let _busy: Vec<_> = (0..5).map(|_| InFlight::start(&p.endpoints()[0].state)).collect();
        for _ in 0..100 {
            assert_eq!(&*p.pick().unwrap().name, "e1");
        }
        let p = pool(10, Balance::P2c);
        for e in &p.endpoints()[..9] {
            e.state.set_healthy(false);
        }
        for _ in 0..100 {
            assert_eq!(&*p.pick().unwrap().name, "e9");
        }
        p.endpoints()[9].state.set_healthy(false);
        assert!(p.pick().is_none());
    }

    #[test]
    fn in_flight_guard_counts() {
        let s = Arc::new(EndpointState::new(true));
        let g = InFlight::start(&s);
        assert_eq!(s.in_flight(), 1);
        drop(g);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn single_and_empty_pools() {
        assert!(pool(0, Balance::P2c).pick().is_none());
        let p = pool(1, Balance::P2c);
        assert!(p.pick().is_some());
        p.endpoints()[0].state.set_healthy(false);
        assert!(p.pick().is_none());
    }
}
