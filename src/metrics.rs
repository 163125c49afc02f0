//! Prometheus metrics. Label handles are resolved when a snapshot is built, so a request only
//! increments atomics it already holds (no label lookup, no allocation, no lock).

use std::collections::HashMap;
use std::sync::Arc;

/// The canary analysis's counts per (app, version).
type StatsByVersion = HashMap<(String, String), Arc<crate::data::sketch::VersionStats>>;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Why Weir answered for the upstream, as `kind` label of `weir_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The TCP connection could not be made (refused, unreachable).
    Connect,
    /// The connect or the response headers took longer than the timeout.
    Timeout,
    /// The connection broke, or the upstream sent something that is not HTTP.
    Protocol,
    /// No healthy endpoint in the chosen version.
    NoEndpoint,
    /// The client's request body failed while it was being sent (invalid chunked coding, the
    /// body read timeout, the client left): answered 400, not held against the endpoint.
    Client,
}

impl UpstreamErrorKind {
    /// All kinds, in label order.
    pub const ALL: [UpstreamErrorKind; 5] =
        [Self::Connect, Self::Timeout, Self::Protocol, Self::NoEndpoint, Self::Client];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
            Self::NoEndpoint => "no_endpoint",
            Self::Client => "client",
        }
    }
}

/// All metric families of one Weir process, in one registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    upstream_errors: IntCounterVec,
    endpoint_requests: IntCounterVec,
    weight: IntGaugeVec,
    revision: IntGaugeVec,
    retries: IntCounterVec,
    hedges: IntCounterVec,
    ejections: IntCounterVec,
    trials: IntCounterVec,
    spills: IntCounterVec,
    tunnels: IntGaugeVec,
    mirrored: IntCounterVec,
    /// Per (app, version): the canary analysis's counts, kept across snapshots.
    stats: Arc<std::sync::Mutex<StatsByVersion>>,
    rollout_rollbacks: IntCounterVec,
    probes: IntCounterVec,
    endpoint_healthy: IntGaugeVec,
    discovery: [IntCounterVec; 3],
    client_connections: IntGaugeVec,
    connection_limit: IntCounterVec,
    tls_reload_errors: IntCounterVec,
    client_errors: IntCounterVec,
    state_writes: IntCounterVec,
    /// Requests whose host matched no app (`weir_unrouted_requests_total`).
    pub unrouted: IntCounter,
}

/// Pre-resolved handles for one app version, held in the snapshot.
#[derive(Debug, Clone)]
pub struct VersionMetrics {
    /// Requests by status class: index 0 = 1xx … 4 = 5xx.
    pub requests: [IntCounter; 5],
    /// Time to response headers.
    pub latency: prometheus::Histogram,
    /// Errors by [`UpstreamErrorKind`], indexed like [`UpstreamErrorKind::ALL`].
    pub errors: [IntCounter; 5],
    /// Attempts re-sent to another endpoint.
    pub retries: IntCounter,
    /// Hedges: index 0 = sent, 1 = won (the hedge answered first).
    pub hedges: [IntCounter; 2],
    /// Passive ejections of its endpoints.
    pub ejections: IntCounter,
    /// Trial requests after an ejection: index 0 = answered (readmitted), 1 = failed.
    pub trials: [IntCounter; 2],
    /// Requests this version could not take and sent to another version.
    pub spilled: IntCounter,
    /// Probe results: index 0 = passed, 1 = failed.
    pub probes: [IntCounter; 2],
    /// Upgraded connections open now.
    pub tunnels: prometheus::IntGauge,
    /// What the canary analysis reads (the same for the life of the process).
    pub stats: std::sync::Arc<crate::data::sketch::VersionStats>,
}

impl VersionMetrics {
    /// Counts one response by its status.
    #[inline]
    pub fn count_status(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
    }

    /// Counts one answered request: its status and, when an upstream was asked, the time
    /// to its response head (the histogram and the analysis's sketch).
    #[inline]
    pub fn record(&self, status: http::StatusCode, latency: Option<std::time::Duration>) {
        self.count_status(status);
        if let Some(l) = latency {
            self.latency.observe(l.as_secs_f64());
        }
        self.stats.record(status, latency);
    }

    /// Counts one upstream error.
    #[inline]
    pub fn count_error(&self, kind: UpstreamErrorKind) {
        self.errors[kind as usize].inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("weir_requests_total", "Requests answered, by app, version and status class."),
            &["app", "version", "class"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "weir_request_duration_seconds",
                "Time from receiving a request to sending its response headers.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["app", "version"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new("weir_upstream_errors_total", "Requests Weir answered itself, by cause."),
            &["app", "version", "kind"],
        )
        .expect("valid metric");
        let endpoint_requests = IntCounterVec::new(
            Opts::new("weir_endpoint_requests_total", "Requests sent to each endpoint."),
            &["app", "version", "endpoint"],
        )
        .expect("valid metric");
        let weight = IntGaugeVec::new(
            Opts::new("weir_version_weight", "Current weight of each version in its app's split."),
            &["app", "version"],
        )
        .expect("valid metric");
        let revision =
            IntGaugeVec::new(Opts::new("weir_app_revision", "Current split revision number of each app."), &["app"])
                .expect("valid metric");
        let unrouted =
            IntCounter::new("weir_unrouted_requests_total", "Requests whose Host matched no app (answered 404).")
                .expect("valid metric");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let retries = counter(
            "weir_retries_total",
            "Requests re-sent to another endpoint after failing before reaching the upstream.",
            &["app", "version"],
        );
        let hedges = counter(
            "weir_hedges_total",
            "Requests also sent to a second endpoint while waiting for the first (outcome=sent), \
             and those the second answered first (outcome=won).",
            &["app", "version", "outcome"],
        );
        let ejections = counter("weir_ejections_total", "Endpoints ejected by passive checks.", &["app", "version"]);
        let trials = counter(
            "weir_ejection_trials_total",
            "Trial requests to an endpoint whose ejection time is over, by result (pass readmits it).",
            &["app", "version", "result"],
        );
        let spills = counter(
            "weir_spillover_total",
            "Requests for a version with no healthy endpoint, sent to another version.",
            &["app", "version"],
        );
        let tunnels = IntGaugeVec::new(
            Opts::new(
                "weir_tunnels_open",
                "Upgraded connections (WebSocket and other Upgrade requests) open now, per version.",
            ),
            &["app", "version"],
        )
        .expect("valid metric");
        let mirrored = counter(
            "weir_mirror_requests_total",
            "Mirrored copies of requests, per app and mirror version, by result: answered (the \
             answer is discarded), failed, dropped (queue full or no healthy endpoint), skipped \
             (streamed or too large a body).",
            &["app", "version", "result"],
        );
        let rollout_rollbacks = counter(
            "weir_rollout_rollbacks_total",
            "Rollouts Weir rolled back to stable because the canary failed its analysis.",
            &["app"],
        );
        let probes = counter("weir_probes_total", "Active health probes, by result.", &["app", "version", "result"]);
        let endpoint_healthy = IntGaugeVec::new(
            Opts::new("weir_endpoint_healthy", "1 when the endpoint takes new requests, else 0."),
            &["app", "version", "endpoint"],
        )
        .expect("valid metric");
        let discovery = [
            counter("weir_discovery_events_total", "Watch events received from Kubernetes.", &["app", "version"]),
            counter(
                "weir_discovery_errors_total",
                "Errors from the Kubernetes API while watching.",
                &["app", "version"],
            ),
            counter(
                "weir_discovery_restarts_total",
                "Watchers rebuilt (fresh list) after repeated errors or an HTTP 410.",
                &["app", "version"],
            ),
        ];
        let client_connections = IntGaugeVec::new(
            Opts::new("weir_client_connections", "Client connections open now, per listener."),
            &["listener"],
        )
        .expect("valid metric");
        let connection_limit = counter(
            "weir_connection_limit_reached_total",
            "Times a listener reached max_connections and stopped accepting until one closed.",
            &["listener"],
        );
        let tls_reload_errors = counter(
            "weir_tls_certificate_reload_errors_total",
            "Times a TLS listener's certificate files changed but could not be used (the previous \
             certificates kept serving).",
            &["listener"],
        );
        let client_errors = counter(
            "weir_client_errors_total",
            "Client requests refused for their framing or size (bad_request) and client connections \
             closed for a deadline (header_timeout, body_timeout, send_timeout) or a failed TLS \
             handshake (tls_handshake).",
            &["listener", "reason"],
        );
        let state_writes = counter(
            "weir_state_writes_total",
            "Writes of the durable state (split, history), by result: ok, conflict (another \
             replica wrote first; the change is re-checked and tried again), unavailable.",
            &["result"],
        );
        for c in [
            Box::new(state_writes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(client_connections.clone()),
            Box::new(connection_limit.clone()),
            Box::new(tls_reload_errors.clone()),
            Box::new(client_errors.clone()),
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(endpoint_requests.clone()),
            Box::new(weight.clone()),
            Box::new(revision.clone()),
            Box::new(unrouted.clone()),
            Box::new(retries.clone()),
            Box::new(hedges.clone()),
            Box::new(ejections.clone()),
            Box::new(trials.clone()),
            Box::new(spills.clone()),
            Box::new(tunnels.clone()),
            Box::new(mirrored.clone()),
            Box::new(rollout_rollbacks.clone()),
            Box::new(probes.clone()),
            Box::new(endpoint_healthy.clone()),
            Box::new(discovery[0].clone()),
            Box::new(discovery[1].clone()),
            Box::new(discovery[2].clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            state_writes,
            registry,
            requests,
            latency,
            upstream_errors,
            endpoint_requests,
            weight,
            revision,
            retries,
            hedges,
            ejections,
            trials,
            spills,
            tunnels,
            mirrored,
            stats: Arc::default(),
            rollout_rollbacks,
            probes,
            endpoint_healthy,
            discovery,
            client_connections,
            connection_limit,
            tls_reload_errors,
            client_errors,
            unrouted,
        }
    }

    /// The counter of a TLS listener's failed certificate reloads.
    pub fn tls_reload_errors(&self, listener: &str) -> prometheus::IntCounter {
        self.tls_reload_errors.with_label_values(&[listener])
    }

    /// Handles for one traffic listener's connections.
    pub fn listener(&self, name: &str) -> crate::data::listener::ConnMetrics {
        let error = |reason: &str| self.client_errors.with_label_values(&[name, reason]);
        crate::data::listener::ConnMetrics {
            open: self.client_connections.with_label_values(&[name]),
            limit_reached: self.connection_limit.with_label_values(&[name]),
            errors: crate::data::listener::ClientErrors {
                bad_request: error("bad_request"),
                header_timeout: error("header_timeout"),
                body_timeout: error("body_timeout"),
                send_timeout: error("send_timeout"),
                tls_handshake: error("tls_handshake"),
            },
        }
    }

    /// Handles for one app version.
    pub fn version(&self, app: &str, version: &str) -> VersionMetrics {
        let class = |c: &str| self.requests.with_label_values(&[app, version, c]);
        let kind = |k: UpstreamErrorKind| self.upstream_errors.with_label_values(&[app, version, k.as_str()]);
        VersionMetrics {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(class),
            latency: self.latency.with_label_values(&[app, version]),
            errors: UpstreamErrorKind::ALL.map(kind),
            retries: self.retries.with_label_values(&[app, version]),
            hedges: ["sent", "won"].map(|o| self.hedges.with_label_values(&[app, version, o])),
            ejections: self.ejections.with_label_values(&[app, version]),
            trials: ["pass", "fail"].map(|r| self.trials.with_label_values(&[app, version, r])),
            spilled: self.spills.with_label_values(&[app, version]),
            tunnels: self.tunnels.with_label_values(&[app, version]),
            stats: self.stats(app, version),
            probes: ["pass", "fail"].map(|r| self.probes.with_label_values(&[app, version, r])),
        }
    }

    /// The canary analysis's counts of `app`'s `version` (one per pair for the process).
    pub fn stats(&self, app: &str, version: &str) -> Arc<crate::data::sketch::VersionStats> {
        let mut all = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(all.entry((app.to_owned(), version.to_owned())).or_default())
    }

    /// Every version's counts so far (what this replica reports to the rollout leader).
    pub fn counts(&self) -> crate::control::rollout::analysis::Counts {
        let all = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = crate::control::rollout::analysis::Counts::new();
        for ((app, version), stats) in all.iter() {
            let (requests, failures, latency) = stats.snapshot();
            if requests > 0 {
                let sample = crate::control::rollout::analysis::Sample { requests, failures, latency };
                out.entry(app.clone()).or_default().insert(version.clone(), sample);
            }
        }
        out
    }

    /// Counts a rollout Weir rolled back.
    pub fn rollout_rolled_back(&self, app: &str) {
        self.rollout_rollbacks.with_label_values(&[app]).inc();
    }

    /// The mirroring counters of `app`'s copies to `version`.
    pub fn mirror(&self, app: &str, version: &str) -> crate::data::mirror::MirrorCounters {
        let c = |r: &str| self.mirrored.with_label_values(&[app, version, r]);
        crate::data::mirror::MirrorCounters {
            answered: c("answered"),
            failed: c("failed"),
            dropped: c("dropped"),
            skipped: c("skipped"),
        }
    }

    /// Discovery counters of one pool: events, errors, watcher restarts.
    pub fn discovery(&self, app: &str, version: &str) -> (IntCounter, IntCounter, IntCounter) {
        let [a, b, c] = &self.discovery;
        let l = [app, version];
        (a.with_label_values(&l), b.with_label_values(&l), c.with_label_values(&l))
    }

    /// Handle for one endpoint's health gauge.
    pub fn endpoint_healthy(&self, app: &str, version: &str, endpoint: &str) -> prometheus::IntGauge {
        self.endpoint_healthy.with_label_values(&[app, version, endpoint])
    }

    /// Handle for one endpoint's request counter.
    pub fn endpoint(&self, app: &str, version: &str, endpoint: &str) -> IntCounter {
        self.endpoint_requests.with_label_values(&[app, version, endpoint])
    }

    /// Drops an endpoint's series once it has left its pool, so churning pods do not grow the
    /// exposition forever.
    pub fn forget_endpoint(&self, app: &str, version: &str, endpoint: &str) {
        let _ = self.endpoint_requests.remove_label_values(&[app, version, endpoint]);
        let _ = self.endpoint_healthy.remove_label_values(&[app, version, endpoint]);
    }

    /// Publishes an app's current weights and revision.
    /// Counts one write of the durable state by its result.
    pub fn state_write(&self, result: &str) {
        self.state_writes.with_label_values(&[result]).inc();
    }

    /// Sets the split gauges of one app.
    pub fn set_split(&self, app: &str, weights: &[(&str, u32)], revision: u64) {
        for (version, w) in weights {
            self.weight.with_label_values(&[app, version]).set(i64::from(*w));
        }
        self.revision.with_label_values(&[app]).set(revision as i64);
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}
