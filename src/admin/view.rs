//! JSON views of the snapshot.

use serde_json::{Value, json};

use crate::snapshot::App;

/// An app: revision, weights, and each version's endpoints with their health and load.
pub fn app(app: &App) -> Value {
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
                    json!({
                        "name": &*e.name,
                        "addr": e.addr.to_string(),
                        "healthy": e.state.is_healthy(),
                        "in_flight": e.state.in_flight(),
                    })
                })
                .collect();
            json!({
                "name": &*v.name,
                "weight": v.weight,
                "share": if total > 0.0 { f64::from(v.weight) / total } else { 0.0 },
                "healthy_endpoints": v.pool.healthy_count(),
                "endpoints": endpoints,
            })
        })
        .collect();
    let weights: serde_json::Map<String, Value> = app.weights().map(|(v, w)| (v.to_string(), json!(w))).collect();
    json!({
        "name": &*app.name,
        "revision": app.revision,
        "weights": weights,
        "versions": versions,
    })
}
