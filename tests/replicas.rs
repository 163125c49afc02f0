//! Three `weir serve` replicas sharing one split through the stand-in Kubernetes API
//! (tests/common/fake_kube.rs: ConfigMaps with resourceVersion compare-and-swap, Leases,
//! watches), with 32 clients spread over them the whole time.
#![cfg(feature = "kubernetes")]

mod common;
#[path = "common/fake_kube.rs"]
mod fake_kube;

use std::time::{Duration, Instant};

use common::process::Weir;
use common::{Backend, Client, Load};
use fake_kube::FakeKube;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

fn config(api: &str, identity: &str, v1: &Backend, v2: &Backend) -> String {
    format!(
        r#"[admin]
addr = "{{admin}}"
[runtime]
drain_delay = "0s"
shutdown_grace = "5s"
[kubernetes]
api_url = "{api}"
[state.kubernetes]
name = "weir-state"
namespace = "default"
identity = "{identity}"
lease_duration = "3s"
api_timeout = "1s"
[listeners.main]
addr = "{{traffic}}"
[apps.web]
listener = "main"
split = {{ v1 = 90, v2 = 10 }}
versions.v1.endpoints = [{{ name = "v1-0", addr = "{}" }}]
versions.v2.endpoints = [{{ name = "v2-0", addr = "{}" }}]
"#,
        v1.addr, v2.addr
    )
}

/// The stand-in API server with an empty state ConfigMap, two backends, and three
/// `weir serve` replicas (`weir-a`, `-b`, `-c`) on it, ready; `extra` is appended to each
/// replica's config.
async fn three_replicas(extra: &str) -> (std::sync::Arc<FakeKube>, [Backend; 2], Vec<tempfile::TempDir>, Vec<Weir>) {
    let fake = FakeKube::start(Duration::from_secs(30)).await;
    fake.apply(&ConfigMap {
        metadata: ObjectMeta {
            name: Some("weir-state".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas: Vec<Weir> = (0..3)
        .map(|i| Weir::spawn(dirs[i].path(), &format!("{}{extra}", config(&fake.url(), NAMES[i], &v1, &v2)), &[]))
        .collect();
    for w in &mut replicas {
        w.ready().await;
    }
    (fake, [v1, v2], dirs, replicas)
}

const NAMES: [&str; 3] = ["weir-a", "weir-b", "weir-c"];

async fn revision(client: &Client, weir: &Weir) -> Option<u64> {
    let req = http::Request::get(format!("{}/apps/web", weir.admin)).body(Default::default()).unwrap();
    client.send(req).await.ok().and_then(|r| r.json()["revision"].as_u64())
}

/// Polls until every replica routes by `rev` (at most `limit`); returns how long it took.
async fn converge(client: &Client, replicas: &[Weir], rev: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for w in replicas {
            all &= revision(client, w).await == Some(rev);
        }
        if all {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "replicas did not all reach revision {rev} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls until every replica routes by one revision, `from` or later (at most `limit`);
/// returns it.
async fn agree(client: &Client, replicas: &[Weir], from: u64, limit: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let mut revs = Vec::new();
        for w in replicas {
            revs.push(revision(client, w).await);
        }
        if let Some(Some(r)) = revs.first().copied()
            && r >= from
            && revs.iter().all(|x| *x == Some(r))
        {
            return r;
        }
        assert!(start.elapsed() < limit, "replicas did not agree within {limit:?}: {revs:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn split(v1: u64, v2: u64) -> String {
    json!({ "weights": { "v1": v1, "v2": v2 } }).to_string()
}

async fn put(client: &Client, weir: &Weir, query: &str, body: String, if_match: Option<u64>) -> common::Reply {
    let mut req =
        http::Request::put(format!("{}/apps/web/split{query}", weir.admin)).header("content-type", "application/json");
    if let Some(rev) = if_match {
        req = req.header("if-match", format!("\"{rev}\""));
    }
    let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    client.send(req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_split() {
    let (fake, backends, _dirs, mut replicas) = three_replicas("").await;
    let client = Client::new();
    // 32 clients: 11, 11 and 10 per replica.
    let mut loads: Vec<Option<Load>> =
        replicas.iter().enumerate().map(|(i, w)| Some(Load::start(&w.traffic, 11 - i / 2, 1_000_000))).collect();
    let mut failed = 0u64;
    let mut ok = 0u64;

    // Every replica reports itself in a Lease: GET /cluster on any lists all three.
    let mut seen = 0;
    for _ in 0..200 {
        let cluster = client.get(&format!("{}/cluster", replicas[1].admin)).await.json();
        seen = cluster["replicas"].as_array().unwrap().iter().filter(|r| r["live"] == true).count();
        if seen == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(seen, 3, "GET /cluster lists the three replicas");

    // A change on any replica is routed by all three: measure how long that takes.
    let mut times = Vec::new();
    for i in 0..9u64 {
        let r = put(&client, &replicas[(i % 3) as usize], "", split(10 + i, 90 - i), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let rev = r.json()["revision"].as_u64().unwrap();
        times.push(converge(&client, &replicas, rev, Duration::from_secs(10)).await);
    }
    times.sort();
    eprintln!(
        "propagation to all 3 replicas over 9 changes: median {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(times[times.len() - 1] < Duration::from_secs(1), "every change routed everywhere within 1 s: {times:?}");

    // ?wait=all answers once all three applied it: they route by it at once.
    let r = put(&client, &replicas[1], "?wait=all&timeout=10s", split(0, 100), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["wait"]["all_applied"], true, "{body}");
    assert_eq!(body["wait"]["applied"].as_array().unwrap().len(), 3, "{body}");
    let rev = body["revision"].as_u64().unwrap();
    for w in &replicas {
        assert_eq!(revision(&client, w).await, Some(rev), "wait=all answered before {} applied it", w.admin);
        let counts = common::count_versions(&client, &w.traffic, 20, 2).await;
        assert_eq!(counts.get("v2"), Some(&20), "{counts:?}");
    }
    eprintln!("wait=all answered after {} ms", body["wait"]["waited_ms"]);

    // Two writes at once with the same If-Match, on two replicas: one wins, one gets 412.
    let (a, c) = tokio::join!(
        put(&client, &replicas[0], "", split(40, 60), Some(rev)),
        put(&client, &replicas[2], "", split(60, 40), Some(rev)),
    );
    let mut statuses = [a.status.as_u16(), c.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 412], "a: {} c: {}", a.body, c.body);
    let rev = rev + 1;
    converge(&client, &replicas, rev, Duration::from_secs(10)).await;
    // Without If-Match both apply, one after the other, and both are in the history.
    let conflicts = fake.conflicts();
    let (a, c) = tokio::join!(
        put(&client, &replicas[0], "", split(30, 70), None),
        put(&client, &replicas[2], "", split(70, 30), None),
    );
    assert_eq!((a.status.as_u16(), c.status.as_u16()), (200, 200), "a: {} c: {}", a.body, c.body);
    let mut revs = [a.json()["revision"].as_u64().unwrap(), c.json()["revision"].as_u64().unwrap()];
    revs.sort();
    assert_eq!(revs, [rev + 1, rev + 2]);
    let rev = rev + 2;
    converge(&client, &replicas, rev, Duration::from_secs(10)).await;
    let history = client.get(&format!("{}/apps/web/history", replicas[1].admin)).await.json();
    let weights: Vec<_> = history["revisions"].as_array().unwrap().iter().map(|r| r["weights"].clone()).collect();
    assert!(weights.contains(&json!({ "v1": 30, "v2": 70 })) && weights.contains(&json!({ "v1": 70, "v2": 30 })));
    eprintln!("concurrent writes: {} compare-and-swap conflicts resolved", fake.conflicts() - conflicts);

    // The API server hangs for 2 s (a partition, an overloaded server): a write gives up after
    // api_timeout (1 s) with 503 saying it may or may not be stored, routing goes on, and once
    // the server answers again every replica agrees on one state.
    fake.stall();
    let hung = Instant::now();
    let r = put(&client, &replicas[0], "", split(45, 55), None).await;
    let gave_up = hung.elapsed();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("may or may not be stored"), "{}", r.body);
    assert!(gave_up < Duration::from_secs(3), "the write was held {gave_up:?}");
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(hung.elapsed())).await;
    fake.unstall();
    let rev = agree(&client, &replicas, rev, Duration::from_secs(10)).await;
    eprintln!("API server hung 2 s: the write gave up after {gave_up:?} with 503; all agree on revision {rev} after");
    // The API server stores the write but its answer is lost: 503 "may or may not be stored",
    // and it was: every replica, the writer included, comes to route by it (from the watch).
    fake.hold_answers(true);
    let r = put(&client, &replicas[1], "", split(35, 65), None).await;
    fake.hold_answers(false);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("may or may not be stored"), "{}", r.body);
    let took = converge(&client, &replicas, rev + 1, Duration::from_secs(10)).await;
    let app = client.get(&format!("{}/apps/web", replicas[1].admin)).await.json();
    assert_eq!(app["weights"], json!({ "v1": 35, "v2": 65 }), "{app}");
    eprintln!("a write stored but unanswered: 503, then routed by all three {took:?} after the API answered again");
    let rev = rev + 1;

    // The API server goes away for 10 s: every replica keeps routing by the last split, and
    // changes answer 503 with the reason; nothing is lost or reset when it returns.
    let before = rev;
    fake.down();
    let down = Instant::now();
    let r = put(&client, &replicas[0], "", split(50, 50), None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "state_unavailable", "{}", r.body);
    assert!(
        r.json()["error"]["message"].as_str().is_some_and(|m| m.contains("ConfigMap default/weir-state")),
        "{}",
        r.body
    );
    for w in &replicas {
        assert_eq!(revision(&client, w).await, Some(rev), "nothing changed while the API was down");
    }
    // A fourth replica starting now (a scale-up, a rescheduled pod) waits for the API, not
    // ready, and comes up on the stored split once it returns.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(down.elapsed())).await;
    let dir_d = tempfile::tempdir().unwrap();
    let mut late = Weir::spawn(dir_d.path(), &config(&fake.url(), "weir-d", &backends[0], &backends[1]), &[]);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    // (Its admin API, /ready included, opens only with its state: the log says why it waits.)
    assert!(late.log().contains("cannot open the state store, trying again"), "{}", late.log());
    fake.up().await;
    let up = Instant::now();
    let rev = loop {
        let r = put(&client, &replicas[1], "", split(50, 50), None).await;
        if r.status == 200 {
            break r.json()["revision"].as_u64().unwrap();
        }
        assert!(up.elapsed() < Duration::from_secs(15), "writes did not work again: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rev, before + 1, "the numbering went on where it was");
    let took = converge(&client, &replicas, rev, Duration::from_secs(15)).await;
    eprintln!(
        "after 10 s without the API: first write {:?} after it returned, all converged {took:?} later",
        up.elapsed() - took
    );
    late.ready().await;
    eprintln!("a replica started 4 s into the outage was ready {:?} after the API returned", up.elapsed());
    converge(&client, std::slice::from_ref(&late), rev, Duration::from_secs(5)).await;
    assert!(late.stop().await.success());

    // One replica frozen (SIGSTOP; its clients stopped first): its Lease (3 s) is still
    // live, so ?wait=all waits for it, gives up after the timeout with 202 and names it.
    let report = loads[2].take().unwrap().stop().await;
    (ok, failed) = (ok + report.ok, failed + report.failed);
    replicas[2].signal(nix::sys::signal::Signal::SIGSTOP);
    let r = put(&client, &replicas[0], "?wait=all&timeout=500ms", split(25, 75), None).await;
    // The same through `weir ctl … --wait`: exit 3, naming it.
    let ctl = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "ctl",
            "--admin",
            &replicas[1].admin,
            "split",
            "web",
            "v1=24",
            "v2=76",
            "--wait",
            "--wait-timeout",
            "300ms",
        ])
        .env_remove("WEIR_TOKEN")
        .output()
        .await
        .unwrap();
    replicas[2].signal(nix::sys::signal::Signal::SIGCONT);
    let said = String::from_utf8_lossy(&ctl.stdout);
    assert_eq!(ctl.status.code(), Some(3), "{said}{}", String::from_utf8_lossy(&ctl.stderr));
    assert!(said.contains("not yet applied by") && said.contains("weir-c"), "{said}");
    assert_eq!(r.status, 202, "{}", r.body);
    let body = r.json();
    assert_eq!(body["wait"]["all_applied"], false, "{body}");
    // (weir-b may lag too on a loaded machine; the writer and the frozen one are certain.)
    let laggards: Vec<_> = body["wait"]["laggards"].as_array().unwrap().iter().map(|l| l["name"].clone()).collect();
    assert!(laggards.contains(&json!("weir-c")) && !laggards.contains(&json!("weir-a")), "{body}");
    let applied = body["wait"]["applied"].as_array().unwrap();
    assert!(applied.contains(&json!("weir-a")) && !applied.contains(&json!("weir-c")), "{body}");
    let rev = body["revision"].as_u64().unwrap() + 1;
    let took = converge(&client, &replicas, rev, Duration::from_secs(10)).await;
    eprintln!(
        "wait=all with weir-c frozen: 202 after {} ms naming it; it caught up {took:?} after SIGCONT",
        body["wait"]["waited_ms"]
    );
    // GET /cluster shows what each replica applied.
    let cluster = client.get(&format!("{}/cluster", replicas[0].admin)).await.json();
    for r in cluster["replicas"].as_array().unwrap() {
        assert!(r["sequence"].as_u64().unwrap() > 0 && r["last_report"].is_string(), "{cluster}");
        assert!(r["revisions"]["web"].as_u64().is_some(), "{cluster}");
    }

    // One replica killed (its clients stopped first: in a cluster the Service stops sending
    // to it) and restarted: it comes back on the current split.
    replicas[2].kill9();
    let r = put(&client, &replicas[0], "", split(20, 80), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rev = r.json()["revision"].as_u64().unwrap();
    replicas[2].start();
    replicas[2].ready().await;
    assert_eq!(revision(&client, &replicas[2]).await, Some(rev), "a restarted replica starts on the current split");
    loads[2] = Some(Load::start(&replicas[2].traffic, 10, 1_000_000));
    tokio::time::sleep(Duration::from_millis(500)).await;

    for load in loads.into_iter().flatten() {
        let report = load.stop().await;
        ok += report.ok;
        failed += report.failed;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
    eprintln!("32 clients over 3 replicas: {ok} requests, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 1000, "the clients ran: {ok}");
}

/// The replica driving a rollout (the holder of the `<state>-rollouts` Lease) is killed with
/// SIGKILL mid-rollout; once its lease expires another replica takes over and continues from
/// the stored step. Clients of the two survivors see no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_leader_dies_and_another_continues_from_the_same_step() {
    let plan = "[apps.web.rollout]\n\
        plans.steps = [{ set_weight = 20 }, { pause = \"6s\" }, { set_weight = 60 }, { pause = \"1h\" }]\n";
    let (fake, _backends, _dirs, mut replicas) = three_replicas(plan).await;
    let client = Client::new();
    let r = client
        .call("POST", &format!("{}/apps/web/rollouts", replicas[1].admin), r#"{"canary":"v2","plan":"steps"}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let rollout = |w: &Weir| format!("{}/apps/web/rollout", w.admin);
    // At the 6 s pause: the leader set 20 %.
    let start = Instant::now();
    while client.get(&rollout(&replicas[0])).await.json()["step"] != 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "the rollout never reached its pause");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = fake.get_raw("leases", "default", "weir-state-rollouts").expect("a leader Lease");
    let holder = leader["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    let dead = NAMES.iter().position(|n| *n == holder).unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != dead).collect();
    let loads: Vec<Load> = survivors.iter().map(|&i| Load::start(&replicas[i].traffic, 4, 1_000_000)).collect();
    replicas[dead].kill9();
    let killed = Instant::now();
    // Another replica takes over after the 3 s lease and goes on: 60 %, then the long pause.
    let mut last = serde_json::Value::Null;
    while killed.elapsed() < Duration::from_secs(20) {
        last = client.get(&rollout(&replicas[survivors[0]])).await.json();
        if last["step"] == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["step"], 4, "no survivor continued the rollout: {last:#}");
    eprintln!("rollout continued by another replica {:?} after the leader was killed", killed.elapsed());
    let holder_now =
        fake.get_raw("leases", "default", "weir-state-rollouts").unwrap()["spec"]["holderIdentity"].clone();
    assert_ne!(holder_now, json!(holder), "leadership moved");
    let history = client.get(&format!("{}/apps/web/history", replicas[survivors[1]].admin)).await.json();
    let reasons: Vec<&str> =
        history["revisions"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.iter().filter(|r| r.starts_with("rollout ")).count(), 2, "each step once: {reasons:?}");
    let mut failed = 0;
    for load in loads {
        let report = load.stop().await;
        failed += report.failed;
        assert!(report.ok > 0);
    }
    assert_eq!(failed, 0, "clients of the survivors saw failures");
    for i in survivors {
        replicas[i].stop().await;
    }
}

/// The leader judges every replica's traffic, not only its own: here it gets none at all
/// (clients reach only the two other replicas), and a canary failing 10 % of requests is
/// still judged, from the counts the others report in their Leases, and rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_judges_the_traffic_of_every_replica() {
    let plan = "[apps.web.rollout]\ncriteria = { min_requests = 20 }\n\
        plans.steps = [{ set_weight = 50 }, { analyze = \"2s\" }, { set_weight = 100 }]\n";
    let (fake, [_v1, v2], _dirs, mut replicas) = three_replicas(plan).await;
    v2.fail_tenth();
    let start = Instant::now();
    let holder = loop {
        if let Some(l) = fake.get_raw("leases", "default", "weir-state-rollouts") {
            break l["spec"]["holderIdentity"].as_str().unwrap().to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "nobody took rollout leadership");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let leader = NAMES.iter().position(|n| *n == holder).unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let loads: Vec<Load> = others.iter().map(|&i| Load::start(&replicas[i].traffic, 4, 1_000_000)).collect();
    let client = Client::new();
    let r = client
        .call("POST", &format!("{}/apps/web/rollouts", replicas[others[0]].admin), r#"{"canary":"v2","plan":"steps"}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let url = format!("{}/apps/web/rollout", replicas[leader].admin);
    let mut last = serde_json::Value::Null;
    while start.elapsed() < Duration::from_secs(40) {
        // (The leader learns of the rollout through the store's watch: "no rollout" at first.)
        last = client.get(&url).await.json();
        if ["rolled_back", "succeeded", "aborted"].iter().any(|p| last["phase"] == *p) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for load in loads {
        load.stop().await;
    }
    assert_eq!(last["phase"], "rolled_back", "{last:#}");
    let canary = &last["analysis"]["evidence"]["canary"];
    assert!(canary["requests"].as_u64().unwrap() >= 20, "judged from the others' counts: {last:#}");
    for w in &mut replicas {
        w.stop().await;
    }
}

/// The shared state becomes unreadable under three running replicas (a bad hand edit): they
/// keep routing by what they applied and refuse changes (503); a replica restarting on it
/// refuses to start and says how to recover; restarted with `on_unreadable =
/// "start_from_config"` it sets the text aside and starts from the file's split, with a state
/// sequence above every replica's, so the two that kept running adopt it and take changes
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_shared_state_is_set_aside_and_every_replica_recovers() {
    let (fake, _backends, _dirs, mut replicas) = three_replicas("").await;
    let client = Client::new();
    let loads: Vec<Load> = replicas[..2].iter().map(|w| Load::start(&w.traffic, 4, 1_000_000)).collect();
    let mut rev = 0;
    for i in 0..3u64 {
        let r = put(&client, &replicas[0], "", split(30 + i, 70 - i), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        rev = r.json()["revision"].as_u64().unwrap();
    }
    converge(&client, &replicas, rev, Duration::from_secs(10)).await;

    let mut cm: ConfigMap =
        serde_json::from_value(fake.get_raw("configmaps", "default", "weir-state").unwrap()).unwrap();
    cm.data.get_or_insert_default().insert("state.json".into(), "{\"format\": 1, \"sequence\": oops".into());
    fake.apply(&cm);
    let start = Instant::now();
    loop {
        let r = put(&client, &replicas[1], "", split(50, 50), None).await;
        if r.status == 503 {
            assert_eq!(r.json()["error"]["code"], "state_unavailable", "{}", r.body);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "changes still taken on an unreadable state: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in &replicas[..2] {
        assert_eq!(revision(&client, w).await, Some(rev), "routing stays as last applied");
    }

    // Restarted on it: refuses to start, naming the ConfigMap and the way out.
    replicas[2].kill9();
    replicas[2].start();
    let status = replicas[2].exit().await;
    assert!(!status.success());
    let log = replicas[2].log();
    assert!(log.contains("ConfigMap default/weir-state") && log.contains("start_from_config"), "{log}");

    // Told to start from the config file: the text is kept aside, the file's split is in force.
    let mut text = std::fs::read_to_string(&replicas[2].config).unwrap();
    text.push_str("[state]\non_unreadable = \"start_from_config\"\n");
    std::fs::write(&replicas[2].config, text).unwrap();
    replicas[2].start();
    replicas[2].ready().await;
    let cm = fake.get_raw("configmaps", "default", "weir-state").unwrap();
    let keys: Vec<&String> = cm["data"].as_object().unwrap().keys().collect();
    assert!(keys.iter().any(|k| k.starts_with("state.json.unreadable-")), "{keys:?}");
    let fresh = revision(&client, &replicas[2]).await.unwrap();
    let app = client.get(&format!("{}/apps/web", replicas[2].admin)).await.json();
    assert_eq!(app["weights"], json!({ "v1": 90, "v2": 10 }), "{app}");
    // The two that kept running adopt it (its sequence is above theirs) and take changes again.
    converge(&client, &replicas, fresh, Duration::from_secs(10)).await;
    let r = put(&client, &replicas[1], "", split(60, 40), None).await;
    assert_eq!(r.status, 200, "a replica that saw the unreadable state takes changes again: {}", r.body);
    converge(&client, &replicas, r.json()["revision"].as_u64().unwrap(), Duration::from_secs(10)).await;
    for load in loads {
        let report = load.stop().await;
        assert_eq!(report.failed, 0, "{:?}", report.errors);
        assert!(report.ok > 0);
    }
}
