//! The promise: under 32 concurrent clients, no request fails during weight changes and flips,
//! backend crashes, or a rolling replacement through reloads; a half-failing backend costs at
//! most its ejection threshold (plus what was already in flight to it).

mod common;

use std::time::Duration;

use common::{Backend, Client, Load, config, endpoint, start, urls, wait_for_app};

const PROBE: &str = r#"probe = { path = "/ready", interval = "100ms", timeout = "500ms" }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_changes_and_flips_under_load_fail_nothing() {
    let b: Vec<Backend> = vec![
        Backend::spawn("v1-0", "v1").await,
        Backend::spawn("v1-1", "v1").await,
        Backend::spawn("v2-0", "v2").await,
        Backend::spawn("v2-1", "v2").await,
    ];
    let weir =
        start(&config(&[("v1", &[&b[0], &b[1]]), ("v2", &[&b[2], &b[3]])], &[("v1", 90), ("v2", 10)], PROBE)).await;
    let (url, admin) = urls(&weir);
    let load = Load::start(&url, 32, 50_000);
    let client = Client::new();
    let (mut changes, mut flips) = (0, 0);
    for i in 0..120u64 {
        let r = if i % 6 == 5 {
            flips += 1;
            let v = if flips % 2 == 1 { "v2" } else { "v1" };
            client.call("POST", &format!("{admin}/apps/web/promote"), &format!(r#"{{"version":"{v}"}}"#)).await
        } else {
            changes += 1;
            let v2 = (i * 13) % 101;
            let body = format!(r#"{{"weights":{{"v1":{},"v2":{v2}}}}}"#, 100 - v2);
            client.call("PUT", &format!("{admin}/apps/web/split"), &body).await
        };
        assert_eq!(r.status, 200, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = load.stop().await;
    println!("(a) {changes} weight changes + {flips} flips: {} requests ok, {} failed", report.ok, report.failed);
    assert_eq!((changes, flips), (100, 20));
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.ok > 1_000);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_crashing_one_backend_of_each_version_fails_nothing() {
    let mut b: Vec<Option<Backend>> = Vec::new();
    for (name, v) in [("v1-0", "v1"), ("v1-1", "v1"), ("v2-0", "v2"), ("v2-1", "v2")] {
        b.push(Some(Backend::spawn(name, v).await));
    }
    let r = |i: usize| b[i].as_ref().unwrap();
    let cfg = config(&[("v1", &[r(0), r(1)]), ("v2", &[r(2), r(3)])], &[("v1", 50), ("v2", 50)], PROBE);
    let weir = start(&cfg).await;
    let (url, admin) = urls(&weir);
    let load = Load::start(&url, 32, 50_000);
    load.run_for_requests(&[r(0), r(1), r(2), r(3)], 3_000).await;
    // Abruptly, in the middle of traffic: listener and open connections gone at once.
    b[0].take().unwrap().crash().await;
    b[2].take().unwrap().crash().await;
    let survivors = [b[1].as_ref().unwrap(), b[3].as_ref().unwrap()];
    load.run_for_requests(&survivors, 5_000).await;
    let report = load.stop().await;
    let client = Client::new();
    let view = client.get(&format!("{admin}/apps/web")).await.json();
    let text = client.get(&format!("{admin}/metrics")).await.body;
    let retries: u64 = text
        .lines()
        .filter(|l| l.starts_with("weir_retries_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    println!(
        "(b) crashed v1-0 and v2-0 under load: {} requests ok, {} failed, {retries} retried",
        report.ok, report.failed
    );
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    for gone in ["v1-0", "v2-0"] {
        assert_eq!(endpoint(&view, gone)["healthy"], false, "{gone} should be out: {view:#}");
    }
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_rolling_replacement_through_reloads_fails_nothing() {
    // The seeds' ramped strategy (maxSurge 1, maxUnavailable 0): add a new v1 endpoint, wait
    // until it is ready, remove an old one, let it drain, kill it; repeat for every old one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let v2 = Backend::spawn("v2-0", "v2").await;
    let mut v1: Vec<Backend> = vec![Backend::spawn("v1-old-0", "v1").await, Backend::spawn("v1-old-1", "v1").await];
    let write = |v1: &[&Backend]| {
        let text = config(&[("v1", v1), ("v2", &[&v2])], &[("v1", 90), ("v2", 10)], PROBE);
        std::fs::write(&path, text).unwrap();
    };
    write(&v1.iter().collect::<Vec<_>>());
    let weir = weir::server::start_with(weir::Config::load(&path).unwrap(), Some(path.clone())).await.unwrap();
    let (url, admin) = urls(&weir);
    let client = Client::new();
    let load = Load::start(&url, 32, 50_000);
    let mut reloads = 0;
    for step in 0..2 {
        let new = Backend::spawn(&format!("v1-new-{step}"), "v1").await;
        let mut with_new: Vec<&Backend> = v1.iter().collect();
        with_new.push(&new);
        write(&with_new);
        let r = client.call("POST", &format!("{admin}/reload"), "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        reloads += 1;
        wait_for_app(&client, &admin, "web", "new endpoint ready", |v| endpoint(v, &new.name)["healthy"] == true).await;
        load.run_for_requests(&[&new], 200).await;

        let old = v1.remove(0);
        let mut without_old: Vec<&Backend> = v1.iter().collect();
        without_old.push(&new);
        write(&without_old);
        let r = client.call("POST", &format!("{admin}/reload"), "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        reloads += 1;
        common::drained(&old).await;
        old.crash().await;
        v1.push(new);
        load.run_for_requests(&[&v1[0], &v1[1]], 1_000).await;
    }
    let report = load.stop().await;
    let view = client.get(&format!("{admin}/apps/web")).await.json();
    let names: Vec<&str> =
        view["versions"][0]["endpoints"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    println!(
        "(c) replaced every v1 endpoint with {reloads} reloads: {} requests ok, {} failed",
        report.ok, report.failed
    );
    assert_eq!(names, ["v1-new-0", "v1-new-1"]);
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_a_half_failing_backend_is_ejected_within_its_threshold() {
    let good = Backend::spawn("good", "v1").await;
    let bad = Backend::spawn("bad", "v1").await;
    bad.fail_half();
    let extra = r#"outlier = { max_failures = 5, window = "10s", base_ejection = "60s" }"#;
    let weir = start(&config(&[("v1", &[&good, &bad])], &[("v1", 1)], extra)).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    let load = Load::start(&url, 32, 50_000);
    wait_for_app(&client, &admin, "web", "bad ejected", |v| endpoint(v, "bad")["ejected"] == true).await;
    load.run_for_requests(&[&good], 3_000).await;
    let report = load.stop().await;
    let sent = bad.errors_sent();
    println!(
        "(d) half-failing endpoint ejected after {sent} 500s (threshold 5): clients saw {} failed of {}",
        report.failed,
        report.ok + report.failed
    );
    // Every 500 the backend sent reached a client (5xx answers are not retried: the upstream
    // acted on the request), and they stopped at the ejection: the threshold's worth plus the
    // requests already in flight to it when it was ejected (at most one per client).
    assert_eq!(report.failed, sent);
    assert!((5..=5 + 32).contains(&sent), "{sent} failures");
    let text = client.get(&format!("{admin}/metrics")).await.body;
    assert!(text.contains("weir_ejections_total{app=\"web\",version=\"v1\"} 1"), "{text}");
    weir.shutdown().await;
}
