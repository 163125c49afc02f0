//! Active probes on real sockets: thresholds both ways, new endpoints, probe ports, and a whole
//! version down.

mod common;

use std::sync::atomic::Ordering;

use common::{Backend, Client, config, endpoint, start, urls, wait_for_app};

const PROBE: &str = r#"probe = { path = "/ready", interval = "50ms", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 3 }"#;

fn metric(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series)).map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_take_an_endpoint_out_after_fall_and_back_after_rise() {
    let a = Backend::spawn("a", "v1").await;
    let b = Backend::spawn("b", "v1").await;
    let weir = start(&config(&[("v1", &[&a, &b])], &[("v1", 1)], PROBE)).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    wait_for_app(&client, &admin, "web", "a healthy", |v| endpoint(v, "a")["healthy"] == true).await;

    a.set_ready(false);
    wait_for_app(&client, &admin, "web", "a down", |v| endpoint(v, "a")["healthy"] == false).await;
    let text = client.get(&format!("{admin}/metrics")).await.body;
    let fails = metric(&text, "weir_probes_total{app=\"web\",result=\"fail\",version=\"v1\"} ");
    assert!(fails >= 3, "went down after {fails} failed probes, threshold is 3");
    let view = client.get(&format!("{admin}/apps/web")).await.json();
    let a_view = endpoint(&view, "a");
    assert_eq!(a_view["probe"]["last"]["passed"], false);
    assert_eq!(a_view["probe"]["last"]["detail"], "HTTP 503");
    assert!(a_view["last_change"]["why"].as_str().unwrap().contains("failed 3 time(s) in a row"), "{a_view}");

    // While down it gets no request.
    let before = a.hits.load(Ordering::SeqCst);
    for _ in 0..200 {
        assert_eq!(client.get(&url).await.status, 200);
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), before);

    a.set_ready(true);
    wait_for_app(&client, &admin, "web", "a back", |v| endpoint(v, "a")["healthy"] == true).await;
    let view = client.get(&format!("{admin}/apps/web")).await.json();
    assert!(endpoint(&view, "a")["last_change"]["why"].as_str().unwrap().contains("passed 2 time(s) in a row"));
    for _ in 0..200 {
        client.get(&url).await;
    }
    assert!(a.hits.load(Ordering::SeqCst) > before, "a takes traffic again");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_endpoint_gets_traffic_only_after_passing_its_probe() {
    let a = Backend::spawn("a", "v1").await;
    let b = Backend::spawn("b", "v1").await;
    b.set_ready(false);
    let weir = start(&config(&[("v1", &[&a, &b])], &[("v1", 1)], PROBE)).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    // Start-up waited for the first probes: b is already known down, a already up.
    let view = client.get(&format!("{admin}/apps/web")).await.json();
    assert_eq!(endpoint(&view, "a")["healthy"], true, "{view:#}");
    assert_eq!(endpoint(&view, "b")["healthy"], false, "{view:#}");
    for _ in 0..100 {
        assert_eq!(client.get(&url).await.status, 200);
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), 0);
    b.set_ready(true);
    wait_for_app(&client, &admin, "web", "b up", |v| endpoint(v, "b")["healthy"] == true).await;
    for _ in 0..100 {
        client.get(&url).await;
    }
    assert!(b.hits.load(Ordering::SeqCst) > 0);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_can_use_their_own_port() {
    let app = Backend::spawn("app", "v1").await;
    let other = Backend::spawn("other", "v1").await;
    // The probe port is another listener on the same address, like the seeds' :8086.
    let probe_side = Backend::spawn("probe-side", "x").await;
    let extra = format!(
        r#"probe = {{ path = "/ready", port = {}, interval = "50ms", timeout = "500ms", unhealthy_threshold = 1 }}"#,
        probe_side.addr.port()
    );
    let weir = start(&config(&[("v1", &[&app]), ("v2", &[&other])], &[("v1", 1), ("v2", 0)], &extra)).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    wait_for_app(&client, &admin, "web", "app up", |v| endpoint(v, "app")["healthy"] == true).await;
    probe_side.set_ready(false);
    wait_for_app(&client, &admin, "web", "app down by its probe port", |v| endpoint(v, "app")["healthy"] == false)
        .await;
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_with_nothing_healthy_spills_or_fails_as_configured() {
    for (mode, expect_failures) in [("spill", false), ("fail", true)] {
        let a = Backend::spawn("a", "v1").await;
        let b = Backend::spawn("b", "v2").await;
        a.set_ready(false);
        let extra = format!("{PROBE}\non_version_down = \"{mode}\"");
        let weir = start(&config(&[("v1", &[&a]), ("v2", &[&b])], &[("v1", 50), ("v2", 50)], &extra)).await;
        let (url, admin) = urls(&weir);
        let client = Client::new();
        let (mut ok, mut unavailable) = (0u32, 0u32);
        for _ in 0..100 {
            match client.get(&url).await.status.as_u16() {
                200 => ok += 1,
                503 => unavailable += 1,
                s => panic!("unexpected {s}"),
            }
        }
        let view = client.get(&format!("{admin}/apps/web")).await.json();
        assert_eq!(view["versions"][0]["available"], false);
        assert_eq!(view["on_version_down"], mode);
        if expect_failures {
            // The split is exact to within one request over any window.
            assert!(
                unavailable.abs_diff(50) <= 1 && ok + unavailable == 100,
                "fail: v1's half gets 503: {ok}/{unavailable}"
            );
        } else {
            assert_eq!((ok, unavailable), (100, 0), "spill: v2 takes v1's half");
            let text = client.get(&format!("{admin}/metrics")).await.body;
            let spilled = metric(&text, "weir_spillover_total{app=\"web\",version=\"v1\"} ");
            assert!(spilled.abs_diff(50) <= 1, "{spilled} spilled");
        }
        weir.shutdown().await;
    }
}
