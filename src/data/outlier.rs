//! Passive outlier detection: endpoints that fail real requests are ejected, and come back
//! only once a trial request is answered in time (a circuit breaker's half-open state).
//!
//! Runs only on the failure path. The ejection ends by a task, not by a clock read on every
//! pick, so the request path stays one load of the endpoint's flags.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Request, header};
use http_body_util::{Either, Full};

use crate::config::{HedgeAfter, OutlierConfig};
use crate::data::clock::clock_ms;
use crate::data::pool::{Endpoint, EndpointState};
use crate::data::snapshot::{App, Version};
use crate::data::upstream::HttpClient;

/// Counts a failure of `endpoint` (an error, a timeout, a 5xx where counted, or a hedge that
/// answered before it); ejects it when that makes `consecutive_failures` in a row or
/// `max_failures` within the window, unless that would eject more of the version than
/// `max_ejected_percent` (one endpoint always may go).
pub fn on_failure(app: &App, version: &Version, endpoint: &Endpoint) {
    let o = &app.outlier;
    let limits = crate::data::pool::FailureLimits {
        window_ms: o.window.as_millis() as u64,
        max: o.max_failures,
        percent: o.failure_percent,
        consecutive: o.consecutive_failures,
    };
    let now = clock_ms();
    if !endpoint.state.record_failure(now, &limits) {
        return;
    }
    endpoint.state.forget_ejections(now, o.max_ejection.as_millis() as u64);
    let pool = &version.pool;
    let ejected = pool.ejected_count();
    let allowed = ejected == 0 || (ejected + 1) * 100 <= pool.endpoints().len() * usize::from(o.max_ejected_percent);
    if !allowed {
        tracing::warn!(
            app = %app.name, version = %version.name, endpoint = %endpoint.name,
            "not ejecting: {ejected} of {} endpoints already ejected", pool.endpoints().len()
        );
        return;
    }
    let Some(times) = endpoint.state.eject() else { return };
    let duration = ejection_time(o.base_ejection, o.max_ejection, times);
    version.metrics.ejections.inc();
    endpoint.publish_health();
    let why = format!(
        "ejected for {duration:?} after {} failures in a row, or {} within {:?} making {} % of its requests (ejection #{times})",
        o.consecutive_failures, o.max_failures, o.window, o.failure_percent
    );
    tracing::warn!(app = %app.name, version = %version.name, endpoint = %endpoint.name, "{why}");
    endpoint.state.note_change(why);
    let trial = Trial {
        state: Arc::downgrade(&endpoint.state),
        wake: endpoint.state.trial_wake(),
        client: endpoint.client.clone(),
        request: trial_request(version, endpoint),
        // In time means as fast as the version's hedge deadline now: an endpoint slower
        // than its siblings stays out, one as slow as they are (a slow version) comes back.
        deadline: app
            .retry
            .hedge_after
            .delay(pool.typical_latency())
            .or(HedgeAfter::Auto.delay(pool.typical_latency()))
            .unwrap_or(endpoint.client.timeouts.request)
            .min(endpoint.client.timeouts.request),
        count_5xx: o.count_5xx,
        outlier: o.clone(),
        gauge: endpoint.healthy_gauge.clone(),
        metrics: version.metrics.clone(),
        names: (Arc::clone(&app.name), Arc::clone(&version.name), Arc::clone(&endpoint.name)),
    };
    tokio::spawn(trial.run(duration, times));
}

/// Ejection time for the `times`-th ejection: base × times, at most `max`.
pub fn ejection_time(base: Duration, max: Duration, times: u32) -> Duration {
    base.saturating_mul(times).min(max)
}

/// What it takes to end one endpoint's ejection.
struct Trial {
    /// Weak: an endpoint that leaves the snapshot ends its trials.
    state: Weak<EndpointState>,
    /// Ends the wait early: the endpoint's probe failed during this ejection and passes again.
    wake: Arc<tokio::sync::Notify>,
    client: HttpClient,
    request: (String, header::HeaderValue),
    deadline: Duration,
    count_5xx: bool,
    outlier: OutlierConfig,
    gauge: prometheus::IntGauge,
    metrics: crate::metrics::VersionMetrics,
    names: (Arc<str>, Arc<str>, Arc<str>),
}

/// The trial: `GET` on the version's probe path (else `/`), as the endpoint's own `Host`.
fn trial_request(version: &Version, endpoint: &Endpoint) -> (String, header::HeaderValue) {
    let path = version.probe.as_ref().map_or("/", |p| p.path.as_str()).to_owned();
    let host = header::HeaderValue::from_str(&endpoint.addr.to_string()).expect("a socket address is a valid header");
    (path, host)
}

impl Trial {
    /// Waits out the ejection (the `times`-th), then sends trials until one is answered in
    /// time (readmitted) or the endpoint leaves; each failed trial ejects it again, for
    /// longer.
    async fn run(self, mut wait: Duration, mut times: u32) {
        let (app, version, endpoint) = &self.names;
        // The deadline set at ejection reflects the version's latency then; should the whole
        // version have slowed since (or its trial path be slower than its traffic), a trial
        // that timed out gets twice as long the next time, up to the request timeout, so a
        // healthy endpoint is never kept out for good.
        let mut deadline = self.deadline;
        loop {
            // The ejection's time, or less if its probe saw it fail and answer again (a pod
            // that was frozen and resumed): the trial then goes at once, and it, not the
            // probe, decides — a probe passes on an idle pod that real requests overload.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
            let Some(state) = self.state.upgrade() else { return };
            // Ejected anew since (by another path): that ejection has a trial of its own.
            if !state.is_ejected() || state.times_ejected() != times {
                return;
            }
            state.await_trial();
            drop(state);
            let outcome = self.try_once(deadline).await;
            let Some(state) = self.state.upgrade() else { return };
            match outcome {
                Ok(status) => {
                    self.metrics.trials[0].inc();
                    // Ejected anew while the trial was out: that ejection has its own
                    // trial; this one answers for an older one.
                    if state.times_ejected() != times {
                        return;
                    }
                    if state.readmit() {
                        self.gauge.set(i64::from(state.is_healthy()));
                        let why = format!("ejection ended: a trial request was answered ({status})");
                        tracing::info!(%app, %version, %endpoint, "{why}");
                        state.note_change(why);
                    }
                    return;
                }
                Err(why) => {
                    self.metrics.trials[1].inc();
                    if !state.is_ejected() || state.times_ejected() != times {
                        return;
                    }
                    if why.timed_out {
                        deadline = deadline.saturating_mul(2).min(self.client.timeouts.request);
                    }
                    let why = why.detail;
                    times = state.eject_again();
                    self.metrics.ejections.inc();
                    wait = ejection_time(self.outlier.base_ejection, self.outlier.max_ejection, times);
                    let why = format!("trial request failed ({why}): ejected again for {wait:?} (ejection #{times})");
                    tracing::warn!(%app, %version, %endpoint, "{why}");
                    state.note_change(why);
                }
            }
        }
    }

    /// One trial request; `Ok(status)` when answered within `deadline` (below 500 when 5xx
    /// answers count as failures).
    async fn try_once(&self, deadline: Duration) -> Result<http::StatusCode, TrialFailure> {
        let failed = |detail: String| TrialFailure { detail, timed_out: false };
        let (path, host) = &self.request;
        let mut req = Request::new(Either::Right(Full::default()));
        *req.uri_mut() = path.parse().map_err(|e| failed(format!("trial path {path:?}: {e}")))?;
        req.headers_mut().insert(header::HOST, host.clone());
        req.headers_mut().insert(header::USER_AGENT, header::HeaderValue::from_static("weir-trial"));
        match tokio::time::timeout(deadline, self.client.send(req)).await {
            Err(_) => Err(TrialFailure { detail: format!("no answer within {deadline:?}"), timed_out: true }),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Ok(Ok((resp, _lease))) if self.count_5xx && resp.status().is_server_error() => {
                Err(failed(format!("answered {}", resp.status())))
            }
            Ok(Ok((resp, _lease))) => Ok(resp.status()),
        }
    }
}

/// Why a trial failed.
struct TrialFailure {
    detail: String,
    /// It was not answered within its deadline (rather than refused or answered 5xx).
    timed_out: bool,
}
