//! Rollouts run by Weir on real sockets with real backends and short steps: a healthy canary
//! walks every step to 100 %; a canary failing 10 % of requests is rolled back while stable's
//! share sees no failed request; a canary 3× slower than stable is rolled back; at 1 request a
//! second nothing is decided before the minimum sample; operator calls and a manual split
//! change; `kill -9` mid-rollout resumes at the same step.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Backend, Client};
use serde_json::{Value, json};

fn config(v1: &Backend, v2: &Backend, rollout: &str) -> String {
    format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\n\
         [apps.web]\nlistener = \"main\"\nsplit = {{ v1 = 100, v2 = 0 }}\n\
         versions.v1.endpoints = [{{ name = \"v1-0\", addr = \"{}\" }}]\n\
         versions.v2.endpoints = [{{ name = \"v2-0\", addr = \"{}\" }}]\n\
         retry = {{ attempts = 0 }}\noutlier = {{ max_failures = 0, consecutive_failures = 0 }}\n{rollout}\n",
        v1.addr, v2.addr
    )
}

/// Short steps: 0.6 s analysis windows, at least 25 requests per version in one.
const FAST: &str = "[apps.web.rollout]\ncriteria = { min_requests = 25 }\n\
    plans.quick = [{ set_weight = 20 }, { analyze = \"600ms\" }, { set_weight = 50 }, { analyze = \"600ms\" }, { set_weight = 100 }]\n\
    default_plan = \"quick\"\n";

/// Requests at about `per_second` until stopped; counts failures by the version that
/// answered (a request Weir failed itself counts for no version).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<[AtomicU64; 2]>,
    failed: Arc<[AtomicU64; 3]>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(url: String, per_second: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok: Arc<[AtomicU64; 2]> = Arc::new(Default::default());
        let failed: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let (s, o, f) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            let client = Client::new();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let (client, url, o, f) = (client.clone(), url.clone(), Arc::clone(&o), Arc::clone(&f));
                tokio::spawn(async move {
                    let r = client.get(&url).await;
                    let v = match r.version() {
                        "v1" => 0,
                        "v2" => 1,
                        _ => 2,
                    };
                    if r.status == 200 {
                        o[v.min(1)].fetch_add(1, Ordering::Relaxed);
                    } else {
                        // A 500 from a backend has no version line: tell them apart by body.
                        let v = if r.body.contains("broken") { 1 } else { 2 };
                        f[v].fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Load { stop, ok, failed, task }
    }

    async fn stop(self) -> ([u64; 2], [u64; 3]) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        (
            self.ok.each_ref().map(|a| a.load(Ordering::Relaxed)),
            self.failed.each_ref().map(|a| a.load(Ordering::Relaxed)),
        )
    }
}

async fn rollout(client: &Client, admin: &str) -> Value {
    client.get(&format!("{admin}/apps/web/rollout")).await.json()
}

/// Polls the rollout until `done` says so (or `limit`); the last view.
async fn until(client: &Client, admin: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let r = rollout(client, admin).await;
        if done(&r) || start.elapsed() > limit {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn weights(client: &Client, admin: &str) -> (u64, u64) {
    let app = client.get(&format!("{admin}/apps/web")).await.json();
    let w = |v: &str| {
        app["versions"].as_array().unwrap().iter().find(|x| x["name"] == v).unwrap()["weight"].as_u64().unwrap()
    };
    (w("v1"), w("v2"))
}

async fn start_rollout(client: &Client, admin: &str, body: Value) -> Value {
    let r = client.call("POST", &format!("{admin}/apps/web/rollouts"), &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

/// Two backends (v1, v2) and Weir in front at 100/0 with `rollout` in its config:
/// backends, Weir, traffic URL, admin URL, a client.
async fn rig(rollout: &str) -> ([Backend; 2], weir::Running, String, String, Client) {
    let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
    let weir = common::start(&config(&v1, &v2, rollout)).await;
    let (url, admin) = common::urls(&weir);
    ([v1, v2], weir, url, admin, Client::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_walks_every_step_to_100() {
    let (_backends, weir, url, admin, client) = rig(FAST).await;
    let load = Load::start(url, 200);
    let started = start_rollout(&client, &admin, json!({ "canary": "v2" })).await;
    assert_eq!((started["phase"].as_str(), started["stable"].as_str()), (Some("progressing"), Some("v1")));
    let r = until(&client, &admin, Duration::from_secs(30), |r| r["phase"] != "progressing").await;
    let (ok, failed) = load.stop().await;
    assert_eq!(r["phase"], "succeeded", "{r:#}");
    assert_eq!(weights(&client, &admin).await, (0, 100));
    assert_eq!(failed, [0, 0, 0], "no failed request during the rollout ({ok:?} answered)");
    let history = client.get(&format!("{admin}/apps/web/history")).await.json();
    let reasons: Vec<&str> =
        history["revisions"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
    for want in ["rollout 1/5: set_weight 20", "rollout 3/5: set_weight 50", "rollout 5/5: set_weight 100"] {
        assert!(reasons.contains(&want), "{want:?} not in {reasons:?}");
    }
    assert_eq!(r["looks"]["done"], 2, "{r:#}");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_10_percent_is_rolled_back_and_stable_fails_nothing() {
    let ([_v1, v2], weir, url, admin, client) = rig(FAST).await;
    v2.fail_tenth();
    let load = Load::start(url, 200);
    start_rollout(&client, &admin, json!({ "canary": "v2" })).await;
    let r = until(&client, &admin, Duration::from_secs(40), |r| r["phase"] != "progressing").await;
    let (ok, failed) = load.stop().await;
    assert_eq!(r["phase"], "rolled_back", "{r:#}");
    assert_eq!(weights(&client, &admin).await, (100, 0));
    assert_eq!(failed[0], 0, "stable's share failed: {failed:?}");
    assert_eq!(failed[2], 0, "Weir failed requests itself: {failed:?}");
    println!("rolled back: {} — answered {ok:?}, failed {failed:?}", r["message"]);
    let history = client.get(&format!("{admin}/apps/web/history")).await.json();
    let last = history["revisions"].as_array().unwrap().last().unwrap().clone();
    let reason = last["reason"].as_str().unwrap();
    assert!(reason.contains("rolled back") && reason.contains("failed;") && reason.contains("canary"), "{reason}");
    assert!(
        reason.contains("failure rate") || reason.contains("success rate"),
        "the evidence names the test: {reason}"
    );
    let metrics = client.get(&format!("{admin}/metrics")).await.body;
    assert!(metrics.contains("weir_rollout_rollbacks_total{app=\"web\"} 1"), "{metrics}");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_3x_slower_than_stable_is_rolled_back() {
    let ([v1, v2], weir, url, admin, client) = rig(FAST).await;
    v1.set_delay(Duration::from_millis(5));
    v2.set_delay(Duration::from_millis(15));
    let load = Load::start(url, 200);
    start_rollout(&client, &admin, json!({ "canary": "v2" })).await;
    let r = until(&client, &admin, Duration::from_secs(40), |r| r["phase"] != "progressing").await;
    load.stop().await;
    assert_eq!(r["phase"], "rolled_back", "{r:#}");
    assert!(r["message"].as_str().unwrap().contains("stable's"), "{}", r["message"]);
    assert_eq!(weights(&client, &admin).await, (100, 0));
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_one_request_a_second_nothing_is_decided_before_the_minimum_sample() {
    let (_backends, weir, url, admin, client) = rig(FAST).await;
    let load = Load::start(url, 1);
    start_rollout(&client, &admin, json!({ "canary": "v2" })).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = rollout(&client, &admin).await;
    load.stop().await;
    assert_eq!((r["phase"].as_str(), r["step"].as_u64()), (Some("progressing"), Some(2)), "{r:#}");
    assert_eq!(r["looks"]["done"], 0, "{r:#}");
    assert_eq!(r["analysis"]["result"], "not_yet", "{r:#}");
    assert_eq!(weights(&client, &admin).await, (80, 20), "still at the first weight");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_calls_and_a_manual_change_pause_it() {
    let plan = "[apps.web.rollout]\nplans.slow = [{ set_weight = 10 }, { pause = \"1h\" }, { set_weight = 100 }]\n";
    let (_backends, weir, _, admin, client) = rig(plan).await;
    let call = |what: &str| {
        let (client, url) = (client.clone(), format!("{admin}/apps/web/rollout/{what}"));
        async move { client.call("POST", &url, "").await }
    };
    assert_eq!(call("pause").await.status, 404, "no rollout yet");
    let bad = client.call("POST", &format!("{admin}/apps/web/rollouts"), r#"{"canary":"v9"}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let bad = client.call("POST", &format!("{admin}/apps/web/rollouts"), r#"{"canary":"v2","plan":"nope"}"#).await;
    assert_eq!(bad.status, 409, "{}", bad.body);
    start_rollout(&client, &admin, json!({ "canary": "v2", "plan": "slow" })).await;
    let again = client.call("POST", &format!("{admin}/apps/web/rollouts"), r#"{"canary":"v2"}"#).await;
    assert_eq!(again.status, 409, "one rollout at a time: {}", again.body);
    let r = until(&client, &admin, Duration::from_secs(5), |r| r["step"] == 2).await;
    assert_eq!(r["current_step"], "pause 1h", "{r:#}");
    assert_eq!(weights(&client, &admin).await, (90, 10));
    // A manual change pauses it, and says so.
    let set = client.call("PUT", &format!("{admin}/apps/web/split"), r#"{"weights":{"v1":95,"v2":5}}"#).await;
    assert_eq!(set.status, 200, "{}", set.body);
    let r = rollout(&client, &admin).await;
    assert_eq!(r["phase"], "paused", "{r:#}");
    assert!(r["message"].as_str().unwrap().contains("changed by hand"), "{r:#}");
    assert_eq!(call("resume").await.status, 200);
    assert_eq!(call("promote").await.status, 200);
    assert_eq!(rollout(&client, &admin).await["phase"], "succeeded");
    assert_eq!(weights(&client, &admin).await, (0, 100));
    assert_eq!(call("abort").await.status, 409, "a finished rollout cannot be aborted");
    // A new one can start, and abort puts stable back at once.
    start_rollout(&client, &admin, json!({ "canary": "v1", "plan": [{ "set_weight": 50 }, { "pause": "manual" }] }))
        .await;
    until(&client, &admin, Duration::from_secs(5), |r| r["phase"] == "paused").await;
    assert_eq!(weights(&client, &admin).await, (50, 50));
    let aborted = call("abort").await;
    assert_eq!(aborted.status, 200, "{}", aborted.body);
    assert_eq!(weights(&client, &admin).await, (0, 100), "stable (v2 now) has all traffic");
    weir.shutdown().await;
}

#[test]
fn kill_9_mid_rollout_resumes_at_the_same_step() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let plan = "[apps.web.rollout]\nplans.slow = [{ set_weight = 30 }, { pause = \"1h\" }, { set_weight = 100 }]\n";
        let text = config(&v1, &v2, plan)
            .replace("addr = \"127.0.0.1:0\"\n[listeners", "addr = \"{admin}\"\n[listeners")
            .replace("[listeners.main]\naddr = \"127.0.0.1:0\"", "[listeners.main]\naddr = \"{traffic}\"")
            .replace("[apps.web]", &format!("[state]\ndir = \"{}\"\n[apps.web]", state.display()));
        let mut weir = common::process::Weir::spawn(dir.path(), &text, &[]);
        weir.ready().await;
        let admin = weir.admin.clone();
        let client = Client::new();
        start_rollout(&client, &admin, json!({ "canary": "v2", "plan": "slow" })).await;
        let before = until(&client, &admin, Duration::from_secs(5), |r| r["step"] == 2).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let revision = client.get(&format!("{admin}/apps/web")).await.json()["revision"].clone();
        weir.kill9();
        weir.start();
        weir.ready().await;
        let after = rollout(&client, &admin).await;
        assert_eq!((after["step"].clone(), after["phase"].clone()), (before["step"].clone(), json!("progressing")));
        assert!(
            after["time_in_step_ms"].as_u64().unwrap() >= 1200,
            "the step's time is counted from the store: {after:#}"
        );
        assert_eq!(client.get(&format!("{admin}/apps/web")).await.json()["revision"], revision);
        assert_eq!(weights(&client, &admin).await, (70, 30));
        weir.stop().await;
    });
}
