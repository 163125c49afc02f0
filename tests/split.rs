//! The split holds: statistically, exactly at the extremes, and right after a change.

mod common;

use common::{Client, count_versions, two_versions, urls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_ten_holds_within_five_sigma_over_10k_requests() {
    let (weir, _b) = two_versions(90, 10).await;
    let (url, _) = urls(&weir);
    let counts = count_versions(&Client::new(), &url, 10_000, 8).await;
    let v2 = counts.get("v2").copied().unwrap_or(0) as f64;
    // Binomial n = 10,000, p = 0.1: sigma = 30, so 5 sigma = 150.
    let sigma = (10_000.0f64 * 0.1 * 0.9).sqrt();
    assert!((v2 - 1000.0).abs() <= 5.0 * sigma, "v2 got {v2} of 10,000: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 10_000);
    println!("90/10 over 10,000 requests: {counts:?}");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_hundred_and_hundred_zero_are_exact() {
    for (v1, v2) in [(0, 100), (100, 0)] {
        let (weir, _b) = two_versions(v1, v2).await;
        let (url, _) = urls(&weir);
        let counts = count_versions(&Client::new(), &url, 1_000, 4).await;
        let only = if v1 == 0 { "v2" } else { "v1" };
        assert_eq!(counts.get(only), Some(&1_000), "{v1}/{v2}: {counts:?}");
        assert_eq!(counts.len(), 1);
        weir.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_change_returns_the_next_1000_requests_follow_it() {
    let (weir, _b) = two_versions(90, 10).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    // Warm the pools so the change races real in-flight traffic patterns.
    count_versions(&client, &url, 100, 4).await;

    let r = client.call("PUT", &format!("{admin}/apps/web/split"), r#"{"weights":{"v1":0,"v2":100}}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let counts = count_versions(&client, &url, 1_000, 4).await;
    assert_eq!(counts.get("v2"), Some(&1_000), "after PUT 0/100: {counts:?}");

    let r = client.call("POST", &format!("{admin}/apps/web/promote"), r#"{"version":"v1"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let counts = count_versions(&client, &url, 1_000, 4).await;
    assert_eq!(counts.get("v1"), Some(&1_000), "after promote v1: {counts:?}");

    // Rollback returns to the previous revision (0/100).
    let r = client.call("POST", &format!("{admin}/apps/web/rollback"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let counts = count_versions(&client, &url, 1_000, 4).await;
    assert_eq!(counts.get("v2"), Some(&1_000), "after rollback: {counts:?}");

    // 50/50 is exact over any even window thanks to the low-discrepancy sequence.
    let r = client.call("PUT", &format!("{admin}/apps/web/split"), r#"{"weights":{"v1":50,"v2":50}}"#).await;
    assert_eq!(r.status, 200);
    let counts = count_versions(&client, &url, 1_000, 1).await;
    assert!(counts["v1"].abs_diff(500) <= 1, "{counts:?}");
    weir.shutdown().await;
}
