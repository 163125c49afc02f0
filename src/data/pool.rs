//! A version's pool of endpoints and the choice of one endpoint per request.
//!
//! Health and load live in [`EndpointState`] atomics shared by `Arc` beside the snapshot: probes
//! and passive checks flip them without a rebuild, and a rebuild hands the same `Arc` to the
//! endpoints that stay, so their state survives config reloads and split changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use crate::config::Balance;

/// Why an endpoint takes no new requests: bits of [`EndpointState`]'s `down` flags.
const PROBE_DOWN: u8 = 1;
const EJECTED: u8 = 2;
/// Discovery says not ready, or terminating (draining).
const NOT_READY: u8 = 4;
/// Its ejection time is over and it waits for a trial request to answer (half-open).
const TRIAL: u8 = 8;

/// Shared, mutable state of one endpoint.
///
/// `is_healthy` is one relaxed load of a flags byte; everything else is touched only by probes,
/// on failures, or by the admin API.
#[derive(Debug)]
pub struct EndpointState {
    /// `PROBE_DOWN | EJECTED | NOT_READY | TRIAL` bits; healthy when zero.
    down: AtomicU8,
    /// Requests sent to this endpoint whose response has not finished.
    in_flight: AtomicU32,
    /// Passive failures in the current window, and when (ms on [`clock_ms`](super::clock::clock_ms)) it started.
    failures: AtomicU32,
    window_start_ms: AtomicU64,
    /// Answers (successes) since the window started: failures count as a share of them.
    answered: AtomicU32,
    /// When it was last readmitted after an ejection (ms on `clock_ms`, 0: never).
    readmitted_ms: AtomicU64,
    /// Failures since its last success (Finagle's failure accrual, Envoy's consecutive 5xx).
    consecutive: AtomicU32,
    /// Time to response head, an exponentially weighted moving average in µs (0: no sample
    /// yet). Updated on every answer; read when a version's typical latency is worked out.
    latency_us: AtomicU32,
    /// How many times passive checks ejected it; the ejection time grows with it.
    times_ejected: AtomicU32,
    /// Whether a probe ever passed (a new endpoint needs one pass, a fallen one `rise`).
    ever_up: AtomicBool,
    /// Details for operators (admin API); never read on the request path.
    record: Mutex<HealthRecord>,
    /// Wakes the trial waiting out this endpoint's ejection (its probe answers again).
    trial_wake: Arc<tokio::sync::Notify>,
}

/// When passive failures eject an endpoint (see [`EndpointState::record_failure`]).
#[derive(Debug, Clone, Copy)]
pub struct FailureLimits {
    /// The window failures are counted in, ms.
    pub window_ms: u64,
    /// Failures within it that eject (0: off).
    pub max: u32,
    /// ... provided they are at least this share of its requests, percent.
    pub percent: u8,
    /// Failures in a row that eject (0: off).
    pub consecutive: u32,
}

/// What operators see of an endpoint's health history.
#[derive(Debug, Clone, Default)]
pub struct HealthRecord {
    /// The last probe: when, whether it passed, and what it saw.
    pub last_probe: Option<(SystemTime, bool, String)>,
    /// When the endpoint last went healthy or unhealthy, and why.
    pub last_change: Option<(SystemTime, String)>,
}

impl EndpointState {
    /// A new endpoint state: healthy at once (`awaiting_probe = false`), or only after its
    /// first passing probe.
    pub fn new(awaiting_probe: bool) -> Self {
        let down = if awaiting_probe { PROBE_DOWN } else { 0 };
        Self {
            down: AtomicU8::new(down),
            in_flight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            window_start_ms: AtomicU64::new(0),
            answered: AtomicU32::new(0),
            readmitted_ms: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            latency_us: AtomicU32::new(0),
            times_ejected: AtomicU32::new(0),
            ever_up: AtomicBool::new(!awaiting_probe),
            record: Mutex::new(HealthRecord::default()),
            trial_wake: Arc::default(),
        }
    }
    /// What the trial waiting out an ejection listens on (see [`EndpointState::wake_trial`]).
    pub fn trial_wake(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.trial_wake)
    }
    /// Ends the wait of a trial waiting out this endpoint's ejection, so that its trial request
    /// goes now. Nothing happens when no trial is waiting (one already sent decides alone).
    pub fn wake_trial(&self) {
        self.trial_wake.notify_waiters();
    }
    /// Whether the endpoint may take new requests.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.down.load(Ordering::Relaxed) == 0
    }
    /// Whether probes currently say the endpoint is up.
    pub fn probe_up(&self) -> bool {
        self.down.load(Ordering::Relaxed) & PROBE_DOWN == 0
    }
    /// Whether passive checks have ejected it (also while it awaits its trial).
    pub fn is_ejected(&self) -> bool {
        self.down.load(Ordering::Relaxed) & (EJECTED | TRIAL) != 0
    }
    /// Whether its ejection time is over and it awaits a trial request.
    pub fn in_trial(&self) -> bool {
        self.down.load(Ordering::Relaxed) & TRIAL != 0
    }
    /// Whether any probe ever passed (or none was needed).
    pub fn ever_up(&self) -> bool {
        self.ever_up.load(Ordering::Acquire)
    }
    /// Whether discovery reports it ready (always true for static endpoints).
    pub fn is_ready(&self) -> bool {
        self.down.load(Ordering::Relaxed) & NOT_READY == 0
    }
    /// Sets discovery's readiness (ready, or not ready/terminating).
    pub fn set_ready(&self, ready: bool) {
        if ready {
            self.down.fetch_and(!NOT_READY, Ordering::Relaxed);
        } else {
            self.down.fetch_or(NOT_READY, Ordering::Relaxed);
        }
    }
    /// Sets the probe verdict; returns whether it changed.
    pub fn set_probe_up(&self, up: bool) -> bool {
        if up {
            // Cleared before `ever_up` is set, and published with it: whoever sees `ever_up`
            // (start-up waits on it before letting traffic in) sees the endpoint up too. The
            // other order let a preempted probe task open the listeners onto a pool that was
            // still down for a moment (a 503 the CI machine hit).
            let was_down = self.down.fetch_and(!PROBE_DOWN, Ordering::AcqRel) & PROBE_DOWN != 0;
            self.ever_up.store(true, Ordering::Release);
            was_down
        } else {
            self.down.fetch_or(PROBE_DOWN, Ordering::Relaxed) & PROBE_DOWN == 0
        }
    }
    /// Same as [`EndpointState::set_probe_up`] (for callers that think in health).
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.set_probe_up(healthy)
    }
    /// Requests in flight to this endpoint.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
    /// Times ejected so far.
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }
    /// Counts an answer that took `latency`: ends a run of failures and feeds the latency
    /// average (weight 1/8 per answer). Relaxed, and racing updates may lose a sample: it is
    /// an estimate.
    #[inline]
    pub fn record_success(&self, latency: std::time::Duration) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        let sample = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX).max(1);
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }
    /// Its average time to response head in µs, `None` before its first answer.
    pub fn latency_us(&self) -> Option<u32> {
        Some(self.latency_us.load(Ordering::Relaxed)).filter(|&us| us > 0)
    }
    /// Counts a passive failure at `now_ms`; true when it is the `consecutive`-th in a row
    /// (no answer between), or when `max` failures fell within the window *and* they are at
    /// least `percent` % of the window's requests (nginx's `max_fails` in `fail_timeout`,
    /// with Envoy's failure percentage: a busy endpoint with a few errors stays in). The
    /// window starts at a failure after the last one expired. Ejecting resets both counts. A
    /// limit of 0 is off.
    pub fn record_failure(&self, now_ms: u64, limits: &FailureLimits) -> bool {
        let run = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if limits.consecutive > 0 && run >= limits.consecutive {
            self.reset_window(now_ms);
            return true;
        }
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let count = if now_ms.saturating_sub(start) > limits.window_ms {
            self.window_start_ms.store(now_ms, Ordering::Relaxed);
            self.answered.store(0, Ordering::Relaxed);
            self.failures.store(1, Ordering::Relaxed);
            1
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed) + 1
        };
        let requests = u64::from(count) + u64::from(self.answered.load(Ordering::Relaxed));
        if limits.max > 0 && count >= limits.max && u64::from(count) * 100 >= u64::from(limits.percent) * requests {
            self.reset_window(now_ms);
            true
        } else {
            false
        }
    }
    fn reset_window(&self, now_ms: u64) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.answered.store(0, Ordering::Relaxed);
        self.window_start_ms.store(now_ms, Ordering::Relaxed);
    }
    /// Forgets earlier ejections once it has been back for `after_ms` (Envoy decays its
    /// ejection multiplier too): a good endpoint's next ejection is short again.
    pub fn forget_ejections(&self, now_ms: u64, after_ms: u64) {
        let back = self.readmitted_ms.load(Ordering::Relaxed);
        if back > 0 && now_ms.saturating_sub(back) >= after_ms && !self.is_ejected() {
            self.times_ejected.store(0, Ordering::Relaxed);
        }
    }
    /// Ejects the endpoint; returns the number of this ejection (1, 2, …), or `None` when it
    /// was ejected already.
    pub fn eject(&self) -> Option<u32> {
        let before = self.down.fetch_or(EJECTED, Ordering::Relaxed);
        (before & (EJECTED | TRIAL) == 0).then(|| self.times_ejected.fetch_add(1, Ordering::Relaxed) + 1)
    }
    /// Ends an ejection's time: the endpoint stays out until a trial answers ([`Self::readmit`]).
    pub fn await_trial(&self) {
        self.down.fetch_or(TRIAL, Ordering::Relaxed);
        self.down.fetch_and(!EJECTED, Ordering::Relaxed);
    }
    /// Ends an ejection: a trial answered. Returns whether it was ejected.
    pub fn readmit(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        self.readmitted_ms.store(super::clock::clock_ms().max(1), Ordering::Relaxed);
        self.down.fetch_and(!(EJECTED | TRIAL), Ordering::Relaxed) & (EJECTED | TRIAL) != 0
    }
    /// A failed trial: ejected again. Returns the number of this ejection.
    pub fn eject_again(&self) -> u32 {
        self.down.fetch_or(EJECTED, Ordering::Relaxed);
        self.down.fetch_and(!TRIAL, Ordering::Relaxed);
        self.times_ejected.fetch_add(1, Ordering::Relaxed) + 1
    }
    /// Records a probe result for operators.
    pub fn note_probe(&self, ok: bool, detail: String) {
        self.record.lock().expect("health record lock").last_probe = Some((SystemTime::now(), ok, detail));
    }
    /// Records a health change for operators.
    pub fn note_change(&self, why: String) {
        self.record.lock().expect("health record lock").last_change = Some((SystemTime::now(), why));
    }
    /// What operators see.
    pub fn record(&self) -> HealthRecord {
        self.record.lock().expect("health record lock").clone()
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
    /// Health and load, shared across snapshots.
    pub state: Arc<EndpointState>,
    /// Requests sent to this endpoint (`weir_endpoint_requests_total`).
    pub requests: prometheus::IntCounter,
    /// `weir_endpoint_healthy`, set whenever health changes.
    pub healthy_gauge: prometheus::IntGauge,
    /// Its own pooled connections.
    pub client: crate::data::upstream::HttpClient,
}

impl Endpoint {
    /// An endpoint outside any snapshot, with unregistered metric handles and a default client:
    /// for benchmarks and tests of the pick path.
    pub fn detached(name: &str, addr: SocketAddr, state: EndpointState) -> Self {
        Endpoint {
            name: name.into(),
            addr,
            state: Arc::new(state),
            requests: prometheus::IntCounter::new("detached_requests", "-").expect("valid metric"),
            healthy_gauge: prometheus::IntGauge::new("detached_healthy", "-").expect("valid metric"),
            client: crate::data::upstream::HttpClient::new(addr, &Default::default()),
        }
    }

    /// Publishes the current health to the gauge.
    pub fn publish_health(&self) {
        self.healthy_gauge.set(i64::from(self.state.is_healthy()));
    }
}

/// The endpoints of one version and how to choose among them.
#[derive(Debug)]
pub struct Pool {
    endpoints: Box<[Endpoint]>,
    balance: Balance,
    cursor: AtomicUsize,
    /// The typical endpoint's latency (µs, 0: unknown) and when it was worked out
    /// ([`Pool::typical_latency`]).
    typical_us: AtomicU32,
    typical_at_ms: AtomicU64,
}

/// How often a pool's typical latency is worked out again.
const TYPICAL_EVERY_MS: u64 = 100;

impl Pool {
    /// A pool over `endpoints`.
    pub fn new(endpoints: Vec<Endpoint>, balance: Balance) -> Self {
        Pool {
            endpoints: endpoints.into_boxed_slice(),
            balance,
            cursor: AtomicUsize::new(0),
            typical_us: AtomicU32::new(0),
            typical_at_ms: AtomicU64::new(0),
        }
    }

    /// The latency of the version's typical endpoint: the median of its healthy endpoints'
    /// average times to response head, `None` before any answered. The median, so that a
    /// minority of slow or frozen endpoints does not move it: they are what it is measured
    /// against. Worked out at most every 100 ms, by whichever request asks.
    pub fn typical_latency(&self) -> Option<std::time::Duration> {
        let now = super::clock::clock_ms();
        let at = self.typical_at_ms.load(Ordering::Relaxed);
        if at == 0 || now.saturating_sub(at) >= TYPICAL_EVERY_MS {
            self.typical_at_ms.store(now.max(1), Ordering::Relaxed);
            let mut samples: Vec<u32> =
                self.endpoints.iter().filter(|e| e.state.is_healthy()).filter_map(|e| e.state.latency_us()).collect();
            let typical = if samples.is_empty() {
                0
            } else {
                let middle = (samples.len() - 1) / 2;
                *samples.select_nth_unstable(middle).1
            };
            self.typical_us.store(typical, Ordering::Relaxed);
        }
        Some(self.typical_us.load(Ordering::Relaxed))
            .filter(|&us| us > 0)
            .map(|us| std::time::Duration::from_micros(u64::from(us)))
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

    /// A healthy endpoint other than the one at `not` (for a retry), if there is one.
    pub fn pick_other(&self, not: SocketAddr) -> Option<&Endpoint> {
        match self.pick() {
            Some(e) if e.addr != not => Some(e),
            _ => {
                let start = fastrand::usize(..self.endpoints.len().max(1));
                let (tail, head) = self.endpoints.split_at(start.min(self.endpoints.len()));
                head.iter().chain(tail).find(|e| e.addr != not && e.state.is_healthy())
            }
        }
    }

    /// Whether any endpoint may take a request.
    pub fn has_healthy(&self) -> bool {
        self.endpoints.iter().any(|e| e.state.is_healthy())
    }

    /// How many endpoints passive checks have ejected.
    pub fn ejected_count(&self) -> usize {
        self.endpoints.iter().filter(|e| e.state.is_ejected()).count()
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
        Endpoint::detached(&format!("e{i}"), addr, EndpointState::new(false))
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
    fn probe_and_ejection_flags_combine() {
        let s = EndpointState::new(true);
        assert!(!s.is_healthy() && !s.ever_up());
        assert!(s.set_probe_up(true));
        assert!(s.is_healthy() && s.ever_up());
        assert_eq!(s.eject(), Some(1));
        assert_eq!(s.eject(), None, "already ejected");
        assert!(!s.is_healthy());
        s.set_probe_up(false);
        s.readmit();
        assert!(!s.is_healthy(), "still down by probe");
        s.set_probe_up(true);
        assert!(s.is_healthy());
        assert_eq!(s.eject(), Some(2));
    }

    fn limits(max: u32, percent: u8, consecutive: u32) -> FailureLimits {
        FailureLimits { window_ms: 10_000, max, percent, consecutive }
    }

    #[test]
    fn failures_count_within_a_window() {
        let s = EndpointState::new(false);
        let ok = std::time::Duration::from_millis(1);
        let l = limits(3, 0, 0);
        assert!(!s.record_failure(1_000, &l));
        assert!(!s.record_failure(2_000, &l));
        assert!(s.record_failure(3_000, &l), "third failure in the window ejects");
        assert!(!s.record_failure(4_000, &l), "the count restarts after ejecting");
        // Failures spread wider than the window never add up, answered or not between.
        for t in 0..10 {
            assert!(!s.record_failure(100_000 + t * 20_000, &l));
            s.record_success(ok);
        }
        assert!(!s.record_failure(5_000, &limits(0, 0, 0)), "0 disables ejection");
    }

    #[test]
    fn a_busy_endpoint_with_a_few_errors_stays_in() {
        let s = EndpointState::new(false);
        let ok = std::time::Duration::from_millis(1);
        let l = limits(5, 50, 5);
        // 1 failure in 100 requests, for 50 failures: never ejected.
        for i in 0..5_000u64 {
            if i % 100 == 0 {
                assert!(!s.record_failure(1_000 + i, &l), "ejected at request {i}");
            } else {
                s.record_success(ok);
            }
        }
        // Half failing: out within the threshold.
        let ejected = (0..20u64).any(|i| {
            if i % 2 == 0 {
                s.record_success(ok);
                false
            } else {
                s.record_failure(20_000 + i, &l)
            }
        });
        assert!(ejected, "a half-failing endpoint stayed in");
    }

    #[test]
    fn failures_in_a_row_eject_however_slowly_they_come() {
        let s = EndpointState::new(false);
        let ok = std::time::Duration::from_millis(1);
        let l = limits(5, 50, 5);
        // 30 s apart (a request timeout each): never 5 within a 10 s window, but 5 in a row.
        for t in 0..4 {
            assert!(!s.record_failure(t * 30_000, &l));
        }
        assert!(s.record_failure(4 * 30_000, &l), "the fifth in a row ejects");
        // An answer between ends the run.
        for t in 0..20 {
            assert!(!s.record_failure(200_000 + t * 30_000, &l));
            s.record_success(ok);
        }
    }

    #[test]
    fn ejections_are_forgotten_after_a_good_spell() {
        let s = EndpointState::new(false);
        assert_eq!(s.eject(), Some(1));
        s.await_trial();
        s.readmit();
        assert_eq!(s.eject(), Some(2));
        s.await_trial();
        s.readmit();
        let now = crate::data::clock::clock_ms();
        s.forget_ejections(now, 300_000);
        assert_eq!(s.times_ejected(), 2, "back for less than the decay time");
        s.forget_ejections(now + 300_001, 300_000);
        assert_eq!(s.eject(), Some(1), "the next ejection is short again");
    }

    #[test]
    fn an_ejection_ends_only_with_a_trial() {
        let s = EndpointState::new(false);
        assert_eq!(s.eject(), Some(1));
        s.await_trial();
        assert!(!s.is_healthy() && s.is_ejected() && s.in_trial(), "out until the trial answers");
        assert_eq!(s.eject(), None, "a failure meanwhile does not eject twice");
        assert_eq!(s.eject_again(), 2, "a failed trial ejects again");
        assert!(!s.in_trial() && s.is_ejected());
        s.await_trial();
        assert!(s.readmit());
        assert!(s.is_healthy() && !s.is_ejected());
        assert!(!s.readmit(), "readmitting a healthy endpoint changes nothing");
    }

    #[test]
    fn typical_latency_is_the_median_endpoint() {
        let p = pool(4, Balance::P2c);
        assert_eq!(p.typical_latency(), None, "nothing answered yet");
        let ms = std::time::Duration::from_millis;
        for (i, e) in p.endpoints().iter().enumerate() {
            // One endpoint far slower than the rest: the median ignores it.
            e.state.record_success(if i == 3 { ms(3_000) } else { ms(2) });
        }
        p.typical_at_ms.store(0, Ordering::Relaxed);
        assert_eq!(p.typical_latency(), Some(ms(2)));
        // All slow: the typical endpoint is slow, so none stands out.
        for e in p.endpoints() {
            e.state.latency_us.store(3_000_000, Ordering::Relaxed);
        }
        p.typical_at_ms.store(0, Ordering::Relaxed);
        assert_eq!(p.typical_latency(), Some(ms(3_000)));
        // The average moves by an eighth of each new sample.
        let s = EndpointState::new(false);
        s.record_success(ms(8));
        s.record_success(ms(16));
        assert_eq!(s.latency_us(), Some(9_000));
    }

    #[test]
    fn pick_other_avoids_the_failed_endpoint() {
        let p = pool(3, Balance::P2c);
        let first = p.endpoints()[0].addr;
        for _ in 0..50 {
            assert_ne!(p.pick_other(first).unwrap().addr, first);
        }
        let p = pool(1, Balance::P2c);
        assert!(p.pick_other(p.endpoints()[0].addr).is_none());
    }

    #[test]
    fn in_flight_guard_counts() {
        let s = Arc::new(EndpointState::new(false));
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
