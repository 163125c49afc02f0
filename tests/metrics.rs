//! The Prometheus exposition counts what was sent, per version and endpoint.

mod common;

use common::{Backend, Client, count_versions, start, two_versions, urls};

/// The value of the series whose name and labels are exactly `series`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_per_version_and_endpoint() {
    let (weir, backends) = two_versions(70, 30).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    let counts = count_versions(&client, &url, 1_000, 4).await;
    let m = client.get(&format!("{admin}/metrics")).await;
    assert_eq!(m.status, 200);
    assert!(m.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = m.body;
    for v in ["v1", "v2"] {
        let counted = value(&text, &format!("weir_requests_total{{app=\"web\",class=\"2xx\",version=\"{v}\"}}"));
        assert_eq!(counted as usize, counts[v], "{v}");
        let latency = value(&text, &format!("weir_request_duration_seconds_count{{app=\"web\",version=\"{v}\"}}"));
        assert_eq!(latency as usize, counts[v]);
    }
    let mut per_endpoint = 0.0;
    for b in &backends {
        let version = if b.name.contains("v1") { "v1" } else { "v2" };
        let n = value(
            &text,
            &format!("weir_endpoint_requests_total{{app=\"web\",endpoint=\"{}\",version=\"{version}\"}}", b.name),
        );
        assert_eq!(n as u64, b.hits.load(std::sync::atomic::Ordering::SeqCst), "{}", b.name);
        per_endpoint += n;
    }
    assert_eq!(per_endpoint as usize, 1_000);
    assert_eq!(value(&text, "weir_version_weight{app=\"web\",version=\"v1\"}"), 70.0);
    assert_eq!(value(&text, "weir_app_revision{app=\"web\"}"), 1.0);

    client.call("PUT", &format!("{admin}/apps/web/split"), r#"{"weights":{"v1":1,"v2":3}}"#).await;
    let text = client.get(&format!("{admin}/metrics")).await.body;
    assert_eq!(value(&text, "weir_version_weight{app=\"web\",version=\"v2\"}"), 3.0);
    assert_eq!(value(&text, "weir_app_revision{app=\"web\"}"), 2.0);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_are_counted_by_kind() {
    let dead = Backend::spawn("dead", "v1").await;
    let cfg = common::config(&[("v1", &[&dead])], &[("v1", 1)], "");
    dead.kill().await;
    let weir = start(&cfg).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    for _ in 0..3 {
        assert_eq!(client.get(&url).await.status, 502);
    }
    let text = client.get(&format!("{admin}/metrics")).await.body;
    assert_eq!(value(&text, "weir_upstream_errors_total{app=\"web\",kind=\"connect\",version=\"v1\"}"), 3.0);
    assert_eq!(value(&text, "weir_requests_total{app=\"web\",class=\"5xx\",version=\"v1\"}"), 3.0);
    weir.shutdown().await;
}
