//! Split changes under load: 32 clients keep sending while 200 changes land; none may fail.

mod common;

use common::{Client, Load, two_versions, urls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_split_changes_under_32_clients_fail_nothing() {
    let (weir, _b) = two_versions(90, 10).await;
    let (url, admin) = urls(&weir);
    let load = Load::start(&url, 32, 20_000);
    let client = Client::new();
    let mut last_revision = 1;
    for i in 0..200u64 {
        // Alternate weight shifts and full blue/green flips.
        let r = if i % 4 == 3 {
            let v = if i % 8 == 3 { "v2" } else { "v1" };
            client.call("POST", &format!("{admin}/apps/web/promote"), &format!(r#"{{"version":"{v}"}}"#)).await
        } else {
            let v2 = (i * 37) % 101;
            let body = format!(r#"{{"weights":{{"v1":{},"v2":{v2}}}}}"#, 100 - v2);
            client.call("PUT", &format!("{admin}/apps/web/split"), &body).await
        };
        assert_eq!(r.status, 200, "change {i}: {}", r.body);
        last_revision = r.json()["revision"].as_u64().unwrap();
    }
    let report = load.stop().await;
    println!(
        "200 split changes (final revision {last_revision}) under 32 clients: {} ok, {} failed",
        report.ok, report.failed
    );
    assert_eq!(report.failed, 0, "failures: {:?}", report.errors);
    assert!(report.ok > 1_000, "the clients barely ran: {}", report.ok);
    weir.shutdown().await;
}
