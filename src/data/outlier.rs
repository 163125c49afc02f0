//! Passive outlier detection: endpoints that fail real requests are ejected for a while.
//!
//! Runs only on the failure path. The ejection ends by a timer, not by a clock read on every
//! pick, so the request path stays one load of the endpoint's flags.

use std::sync::Arc;
use std::time::Duration;

use crate::data::clock::clock_ms;
use crate::data::pool::Endpoint;
use crate::data::snapshot::{App, Version};

/// Counts a failure of `endpoint`; ejects it when it reached the app's limit, unless that
/// would eject more of the version than `max_ejected_percent` (one endpoint always may go).
pub fn on_failure(app: &App, version: &Version, endpoint: &Endpoint) {
    let o = &app.outlier;
    let window_ms = o.window.as_millis() as u64;
    if !endpoint.state.record_failure(clock_ms(), window_ms, o.max_failures) {
        return;
    }
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
    let why =
        format!("ejected for {duration:?} after {} failures within {:?} (ejection #{times})", o.max_failures, o.window);
    tracing::warn!(app = %app.name, version = %version.name, endpoint = %endpoint.name, "{why}");
    endpoint.state.note_change(why);
    let state = Arc::clone(&endpoint.state);
    let gauge = endpoint.healthy_gauge.clone();
    let (app, version, name) = (Arc::clone(&app.name), Arc::clone(&version.name), Arc::clone(&endpoint.name));
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        state.readmit();
        gauge.set(i64::from(state.is_healthy()));
        state.note_change(format!("ejection ended after {duration:?}"));
        tracing::info!(%app, %version, endpoint = %name, "ejection ended");
    });
}

/// Ejection time for the `times`-th ejection: base × times, at most `max`.
pub fn ejection_time(base: Duration, max: Duration, times: u32) -> Duration {
    base.saturating_mul(times).min(max)
}
