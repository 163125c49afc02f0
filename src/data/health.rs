//! Active health probes: one task per probed endpoint, kept in step with the snapshot.
//!
//! The control task calls [`Health::sync`] after every store. Endpoints are tracked by their
//! shared state (`Arc<EndpointState>`), which the snapshot builder carries over for endpoints
//! that stay, so a split change or reload neither restarts nor resets their probes. A probe
//! flips the endpoint's atomics directly; no snapshot is rebuilt for health.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::ProbeConfig;
use crate::data::pool::{Endpoint, EndpointState};
use crate::data::snapshot::Snapshot;

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// The probe supervisor.
#[derive(Debug)]
pub struct Health {
    client: ProbeClient,
    tasks: HashMap<usize, Probe>,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct Probe {
    config: ProbeConfig,
    // Holds the state alive so its address (the map key) cannot be reused while tracked.
    _state: Arc<EndpointState>,
    stop: CancellationToken,
}

/// Where and what one probe task probes.
struct Target {
    app: Arc<str>,
    version: Arc<str>,
    endpoint: Arc<str>,
    url: http::Uri,
    host: http::HeaderValue,
    config: ProbeConfig,
    state: Arc<EndpointState>,
    gauge: prometheus::IntGauge,
    counters: [prometheus::IntCounter; 2],
}

impl Health {
    /// A supervisor whose tasks all stop when `cancel` fires.
    pub fn new(cancel: CancellationToken) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A fresh connection per probe, as kubelet does: a pooled one could hide a dead listener.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Health { client, tasks: HashMap::new(), cancel }
    }

    /// Starts probes for endpoints that need one, stops those of endpoints that left or lost
    /// their probe. Returns one receiver per started probe, fired after its first result.
    pub fn sync(&mut self, snapshot: &Snapshot) -> Vec<oneshot::Receiver<()>> {
        let mut started = Vec::new();
        let mut seen = HashMap::new();
        for app in snapshot.apps.iter() {
            for version in app.versions.iter() {
                for ep in version.pool.endpoints() {
                    let key = Arc::as_ptr(&ep.state) as usize;
                    let Some(config) = &version.probe else {
                        // No probe (any more): the endpoint must not stay down by an old verdict.
                        if ep.state.set_probe_up(true) {
                            ep.publish_health();
                        }
                        continue;
                    };
                    seen.insert(key, ());
                    if self.tasks.get(&key).is_some_and(|p| &p.config == config) {
                        continue;
                    }
                    if let Some(old) = self.tasks.remove(&key) {
                        old.stop.cancel();
                    }
                    let (tx, rx) = oneshot::channel();
                    let stop = self.cancel.child_token();
                    let target = target(&app.name, &version.name, ep, config, version.metrics.probes.clone());
                    tokio::spawn(run(self.client.clone(), target, stop.clone(), Some(tx)));
                    self.tasks.insert(key, Probe { config: config.clone(), _state: Arc::clone(&ep.state), stop });
                    started.push(rx);
                }
            }
        }
        self.tasks.retain(|key, probe| {
            let keep = seen.contains_key(key);
            if !keep {
                probe.stop.cancel();
            }
            keep
        });
        started
    }
}

fn target(
    app: &Arc<str>,
    version: &Arc<str>,
    ep: &Endpoint,
    config: &ProbeConfig,
    counters: [prometheus::IntCounter; 2],
) -> Target {
    let addr = SocketAddr::new(ep.addr.ip(), config.port.unwrap_or(ep.addr.port()));
    let url = format!("http://{addr}{}", config.path).parse().expect("validated probe path makes a URI");
    Target {
        app: Arc::clone(app),
        version: Arc::clone(version),
        endpoint: Arc::clone(&ep.name),
        url,
        host: http::HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header"),
        config: config.clone(),
        state: Arc::clone(&ep.state),
        gauge: ep.healthy_gauge.clone(),
        counters,
    }
}

/// One endpoint's probe loop: rise/fall thresholds on consecutive results.
async fn run(client: ProbeClient, t: Target, stop: CancellationToken, mut first: Option<oneshot::Sender<()>>) {
    let (mut passes, mut fails) = (0u32, 0u32);
    // The ejection (its number) during which a probe last failed.
    let mut failed_while_ejected: Option<u32> = None;
    loop {
        let (ok, detail) = tokio::select! {
            () = stop.cancelled() => return,
            r = probe_once(&client, &t) => r,
        };
        t.counters[usize::from(!ok)].inc();
        if !ok && t.state.is_ejected() {
            failed_while_ejected = Some(t.state.times_ejected());
        }
        if ok {
            passes += 1;
            fails = 0;
        } else {
            fails += 1;
            passes = 0;
        }
        let change = verdict(t.state.probe_up(), t.state.ever_up(), passes, fails, &t.config);
        // Ejected, its probe failed during this ejection (or went down) and now passes: it
        // answers again (a frozen pod that resumed, even one frozen for fewer probes than
        // `unhealthy_threshold`), so its trial request goes now instead of at the end of the
        // ejection, and the trial decides. A probe that never failed (a pod slow or failing
        // only for real requests) wakes nothing.
        if ok && t.state.is_ejected() && (failed_while_ejected == Some(t.state.times_ejected()) || change == Some(true))
        {
            failed_while_ejected = None;
            tracing::info!(app = %t.app, version = %t.version, endpoint = %t.endpoint, "its probe passes again: trial request now");
            t.state.wake_trial();
        }
        if let Some(now_up) = change {
            t.state.set_probe_up(now_up);
            t.gauge.set(i64::from(t.state.is_healthy()));
            let why = if now_up {
                format!("probe passed {passes} time(s) in a row")
            } else {
                format!("probe failed {fails} time(s) in a row: {detail}")
            };
            if now_up {
                tracing::info!(app = %t.app, version = %t.version, endpoint = %t.endpoint, "endpoint up: {why}");
            } else {
                tracing::warn!(app = %t.app, version = %t.version, endpoint = %t.endpoint, "endpoint down: {why}");
            }
            t.state.note_change(why);
        }
        // Recorded after the verdict is applied: whoever sees a first probe result (start-up
        // waits for them) also sees its effect on the endpoint.
        t.state.note_probe(ok, detail);
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(t.config.interval) => {}
        }
    }
}

/// Whether an endpoint's probe state changes after a result, given the passes or failures in
/// a row so far: `Some(true)` up, `Some(false)` down. A new endpoint (never up) comes up on its
/// first pass; a fallen one needs `healthy_threshold` passes; `unhealthy_threshold` failures
/// take one down.
pub fn verdict(up: bool, ever_up: bool, passes: u32, fails: u32, config: &ProbeConfig) -> Option<bool> {
    let rise = if ever_up { config.healthy_threshold } else { 1 };
    if !up && passes >= rise {
        Some(true)
    } else if up && fails >= config.unhealthy_threshold {
        Some(false)
    } else {
        None
    }
}

/// One probe: GET the path, pass when the status is in the expected range within the timeout.
async fn probe_once(client: &ProbeClient, t: &Target) -> (bool, String) {
    let req = http::Request::get(t.url.clone())
        .header(http::header::HOST, t.host.clone())
        .header(http::header::USER_AGENT, "weir-probe")
        .body(Empty::new())
        .expect("a GET with a valid URI builds");
    match tokio::time::timeout(t.config.timeout, client.request(req)).await {
        Err(_) => (false, format!("no answer within {:?}", t.config.timeout)),
        Ok(Err(e)) => {
            (false, format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()))
        }
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let [lo, hi] = t.config.expected_status;
            ((lo..=hi).contains(&status), format!("HTTP {status}"))
        }
    }
}

/// Waits for the first result of each started probe, at most `limit` in all.
pub async fn first_results(started: Vec<oneshot::Receiver<()>>, limit: Duration) {
    let all = async {
        for rx in started {
            let _ = rx.await;
        }
    };
    let _ = tokio::time::timeout(limit, all).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rise: u32, fall: u32) -> ProbeConfig {
        let text = format!("path = \"/ready\"\nhealthy_threshold = {rise}\nunhealthy_threshold = {fall}");
        toml::from_str(&text).unwrap()
    }

    /// Feeds results through `verdict` as the probe loop does; returns the state after each.
    fn run(mut up: bool, mut ever_up: bool, results: &[bool], c: &ProbeConfig) -> Vec<bool> {
        let (mut passes, mut fails) = (0, 0);
        results
            .iter()
            .map(|&ok| {
                if ok {
                    (passes, fails) = (passes + 1, 0);
                } else {
                    (passes, fails) = (0, fails + 1);
                }
                if let Some(now) = verdict(up, ever_up, passes, fails, c) {
                    up = now;
                    ever_up |= now;
                }
                up
            })
            .collect()
    }

    #[test]
    fn falls_after_unhealthy_threshold_and_rises_after_healthy_threshold() {
        let c = config(2, 3);
        // Up: two failures are tolerated, the third takes it down; a pass in between resets.
        assert_eq!(
            run(true, true, &[false, false, true, false, false, false], &c),
            [true, true, true, true, true, false]
        );
        // Down after having been up: needs two passes in a row.
        assert_eq!(run(false, true, &[true, false, true, true], &c), [false, false, false, true]);
    }

    #[test]
    fn a_new_endpoint_takes_traffic_after_its_first_pass() {
        let c = config(3, 3);
        assert_eq!(run(false, false, &[false, false, true], &c), [false, false, true]);
    }
}
