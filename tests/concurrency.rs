//! Split changes under load: 32 clients keep sending while 200 changes land; none may fail.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Client, two_versions, urls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_split_changes_under_32_clients_fail_nothing() {
    let (weir, _b) = two_versions(90, 10).await;
    let (url, admin) = urls(&weir);
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (url, done) = (url.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let client = Client::new();
            let (mut ok, mut failed, mut errors) = (0u64, 0u64, Vec::new());
            // Bounded: stops when the changes are done, or after 20,000 requests at most.
            while !done.load(Ordering::Relaxed) && ok + failed < 20_000 {
                match client.send(http::Request::get(&url).body(Default::default()).unwrap()).await {
                    Ok(r) if r.status == 200 && r.body.starts_with("Host: ") => ok += 1,
                    Ok(r) => {
                        failed += 1;
                        errors.push(format!("{} {}", r.status, r.body));
                    }
                    Err(e) => {
                        failed += 1;
                        errors.push(e);
                    }
                }
            }
            (ok, failed, errors)
        }));
    }
    let client = Client::new();
    let mut last_revision = 1;
    for i in 0..200u64 {
        // Alternate weight shifts and full blue/green flips.
        let r = if i % 4 == 3 {
            let v = if i % 8 == 3 { "v2" } else { "v1" };
            client.call("POST", &format!("{admin}/apps/web/promote"), &format!(r#"{{"version":"{v}"}}"#)).await
        } else {
            let v2 = (i * 37) % 101;
            client
                .call(
                    "PUT",
                    &format!("{admin}/apps/web/split"),
                    &format!(r#"{{"weights":{{"v1":{},"v2":{v2}}}}}"#, 100 - v2),
                )
                .await
        };
        assert_eq!(r.status, 200, "change {i}: {}", r.body);
        last_revision = r.json()["revision"].as_u64().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    let mut errors = Vec::new();
    for c in clients {
        let (o, f, e) = c.await.unwrap();
        ok += o;
        failed += f;
        errors.extend(e);
    }
    println!("200 split changes (final revision {last_revision}) under 32 clients: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "failures: {:?}", &errors[..errors.len().min(5)]);
    assert!(ok > 1_000, "the clients barely ran: {ok}");
    weir.shutdown().await;
}
