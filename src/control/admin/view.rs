//! JSON views of the snapshot.

use serde_json::{Value, json};

use crate::control::discovery::SyncState;
use crate::data::snapshot::App;

/// An app: revision, weights, and each version's endpoints with their health and load.
pub fn app(app: &App, sync: &SyncState) -> Value {
    let total = app.split.total() as f64;
    let versions: Vec<Value> = app
        .versions
        .iter()
        .map(|v| {
            let endpoints: Vec<Value> = v
                .pool
                .endpoints()
                .iter()
                .map(|e| {
                    let record = e.state.record();
                    let probe = match &v.probe {
                        None => json!(null),
                        Some(_) => json!({
                            "up": e.state.probe_up(),
                            "last": record.last_probe.as_ref().map(|(at, ok, detail)| json!({
                                "at": rfc3339(*at), "passed": ok, "detail": detail,
                            })),
                        }),
                    };
                    json!({
                        "name": &*e.name,
                        "addr": e.addr.to_string(),
                        "healthy": e.state.is_healthy(),
                        "ready": e.state.is_ready(),
                        "ejected": e.state.is_ejected(),
                        "times_ejected": e.state.times_ejected(),
                        "in_flight": e.state.in_flight(),
                        "probe": probe,
                        "last_change": record.last_change.as_ref().map(|(at, why)| json!({ "at": rfc3339(*at), "why": why })),
                    })
                })
                .collect();
            json!({
                "name": &*v.name,
                "weight": v.weight,
                "share": if total > 0.0 { f64::from(v.weight) / total } else { 0.0 },
                "healthy_endpoints": v.pool.healthy_count(),
                // With no healthy endpoint, this version's share spills to the others (or
                // fails with 503 when the app says `on_version_down = "fail"`).
                "available": v.pool.has_healthy(),
                "source": match &v.discovery {
                    None => json!("static"),
                    Some(d) => json!({
                        "kubernetes": d,
                        "status": sync.status(&(app.name.to_string(), v.name.to_string())),
                    }),
                },
                "endpoints": endpoints,
            })
        })
        .collect();
    let weights: serde_json::Map<String, Value> = app.weights().map(|(v, w)| (v.to_string(), json!(w))).collect();
    json!({
        "name": &*app.name,
        "revision": app.revision,
        "weights": weights,
        "on_version_down": if app.spill { "spill" } else { "fail" },
        "versions": versions,
    })
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// An app's rollout: where it is, how long it has been in its step, the analysis so far.
pub fn rollout(app: &str, r: &crate::control::rollout::Rollout) -> Value {
    let now = crate::control::unix_ms();
    let current = r.steps.get(r.step).map(ToString::to_string);
    let at = |ms: u64| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        humantime::format_rfc3339_millis(t).to_string()
    };
    json!({
        "app": app,
        "stable": r.stable,
        "canary": r.canary,
        "plan": r.plan,
        "steps": r.steps,
        "phase": r.phase,
        "step": (r.step + 1).min(r.steps.len()),
        "step_count": r.steps.len(),
        "current_step": current,
        "time_in_step_ms": if r.phase.is_done() { 0 } else { r.elapsed_ms(now) },
        "message": r.message,
        "failed_analyses": r.failed_analyses,
        "failure_limit": r.failure_limit,
        "looks": { "done": r.looks_done, "planned": r.looks, "false_alarm": r.criteria.false_alarm },
        "criteria": r.criteria,
        "analysis": r.last_analysis,
        "started_by": r.started_by,
        "started_at": at(r.started_ms),
    })
}
