//! Hot reload through `POST /reload`: valid configs apply atomically, invalid ones change
//! nothing, and reloads combine with admin-made splits by "newest intent wins".

mod common;

use std::path::Path;

use common::{Backend, Client, config, urls};

struct Setup {
    weir: weir::Running,
    client: Client,
    admin: String,
    url: String,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

async fn setup(text: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, text).unwrap();
    let weir = weir::server::start_with(weir::Config::load(&path).unwrap(), Some(path.clone())).await.unwrap();
    let (url, admin) = urls(&weir);
    Setup { weir, client: Client::new(), admin, url, _dir: dir, path }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_changes_nothing() {
    let (a, b) = (Backend::spawn("a", "v1").await, Backend::spawn("b", "v2").await);
    let good = config(&[("v1", &[&a]), ("v2", &[&b])], &[("v1", 90), ("v2", 10)], "");
    let s = setup(&good).await;
    let r = s.client.call("PUT", &format!("{}/apps/web/split", s.admin), r#"{"weights":{"v1":50,"v2":50}}"#).await;
    assert_eq!(r.status, 200);
    let before = s.client.get(&format!("{}/apps/web", s.admin)).await.json();
    let generation = s.weir.snapshot.load().generation;

    let broken = [
        // Syntax error.
        good.replace("[apps.web.split]", "[apps.web.split"),
        // Semantic errors: all-zero split, unknown listener.
        good.replace("v1 = 90\nv2 = 10", "v1 = 0\nv2 = 0"),
        good.replace("listener = \"main\"", "listener = \"nope\""),
        // Valid on its own, but listeners cannot change without a restart.
        good.replace("[listeners.main]\naddr = \"127.0.0.1:0\"", "[listeners.main]\naddr = \"127.0.0.1:1\""),
    ];
    for text in broken {
        write(&s.path, &text);
        let r = s.client.call("POST", &format!("{}/reload", s.admin), "").await;
        assert_eq!(r.status, 400, "{}", r.body);
        let err = r.json();
        assert_eq!(err["error"]["code"], "invalid_config");
        assert!(!err["error"]["details"].as_array().unwrap().is_empty(), "{err:#}");
        let after = s.client.get(&format!("{}/apps/web", s.admin)).await.json();
        assert_eq!(after, before, "a refused reload changed the app");
        assert_eq!(s.weir.snapshot.load().generation, generation);
    }
    // Problems carry their location.
    write(&s.path, &good.replace("v1 = 90\nv2 = 10", "v1 = 90\nv3 = 10"));
    let err = s.client.call("POST", &format!("{}/reload", s.admin), "").await.json();
    let detail = &err["error"]["details"][0];
    assert_eq!(detail["field"], "apps.web.split.v3");
    assert!(
        detail["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:1: ", good.lines().position(|l| l == "v2 = 10").unwrap() + 1)),
        "{detail}"
    );
    // Traffic still flows as before.
    assert_eq!(s.client.get(&s.url).await.status, 200);
    s.weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_admin_splits_combine_newest_intent_wins() {
    let (a, b, c) = (Backend::spawn("a", "v1").await, Backend::spawn("b", "v2").await, Backend::spawn("c", "v2").await);
    let original = config(&[("v1", &[&a]), ("v2", &[&b])], &[("v1", 90), ("v2", 10)], "");
    let s = setup(&original).await;
    let admin = &s.admin;
    s.client.call("PUT", &format!("{admin}/apps/web/split"), r#"{"weights":{"v1":20,"v2":80}}"#).await;

    // Same split section, one more endpoint: the admin's 20/80 (revision 2) stays.
    write(&s.path, &config(&[("v1", &[&a]), ("v2", &[&b, &c])], &[("v1", 90), ("v2", 10)], ""));
    let r = s.client.call("POST", &format!("{admin}/reload"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["new_revisions"], serde_json::json!([]));
    let view = s.client.get(&format!("{admin}/apps/web")).await.json();
    assert_eq!(view["revision"], 2);
    assert_eq!(view["weights"], serde_json::json!({"v1": 20, "v2": 80}));
    assert_eq!(view["versions"][1]["endpoints"].as_array().unwrap().len(), 2);
    for _ in 0..50 {
        s.client.get(&s.url).await;
    }
    assert!(c.hits.load(std::sync::atomic::Ordering::SeqCst) > 0, "the added endpoint takes traffic");

    // A changed split section is a newer intent: it becomes revision 3.
    write(&s.path, &config(&[("v1", &[&a]), ("v2", &[&b, &c])], &[("v1", 70), ("v2", 30)], ""));
    let r = s.client.call("POST", &format!("{admin}/reload"), "").await;
    assert_eq!(r.json()["new_revisions"], serde_json::json!(["web"]));
    let view = s.client.get(&format!("{admin}/apps/web")).await.json();
    assert_eq!((view["revision"].as_u64(), &view["weights"]), (Some(3), &serde_json::json!({"v1": 70, "v2": 30})));
    let history = s.client.get(&format!("{admin}/apps/web/history")).await.json();
    assert_eq!(history["revisions"][2]["cause"]["kind"], "reload");

    // Removing the version that carries the admin's traffic falls back to the file's split;
    // rolling back to a revision that needs it is refused.
    s.client.call("PUT", &format!("{admin}/apps/web/split"), r#"{"weights":{"v1":0,"v2":100}}"#).await;
    write(&s.path, &config(&[("v1", &[&a])], &[("v1", 1)], ""));
    assert_eq!(s.client.call("POST", &format!("{admin}/reload"), "").await.status, 200);
    let view = s.client.get(&format!("{admin}/apps/web")).await.json();
    assert_eq!(view["weights"], serde_json::json!({"v1": 1}));
    let r = s.client.call("POST", &format!("{admin}/apps/web/rollback"), r#"{"revision":4}"#).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "revision_obsolete");
    s.weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_without_a_config_file_is_refused() {
    let a = Backend::spawn("a", "v1").await;
    let weir = common::start(&config(&[("v1", &[&a])], &[("v1", 1)], "")).await;
    let (_, admin) = urls(&weir);
    let r = Client::new().call("POST", &format!("{admin}/reload"), "").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"]["code"], "no_config_file");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_finishes_in_flight_requests_then_its_connections_close() {
    let (a, b) = (Backend::spawn("a", "v1").await, Backend::spawn("b", "v1").await);
    let s = setup(&config(&[("v1", &[&a, &b])], &[("v1", 1)], "")).await;
    // Warm both pools, then hold a slow request on each endpoint.
    for _ in 0..20 {
        assert_eq!(s.client.get(&s.url).await.status, 200);
    }
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/slow", s.url);
            tokio::spawn(async move { Client::new().get(&url).await })
        })
        .collect();
    while a.hits.load(std::sync::atomic::Ordering::SeqCst) + b.hits.load(std::sync::atomic::Ordering::SeqCst) < 24 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(a.open_connections() >= 1);

    write(&s.path, &config(&[("v1", &[&b])], &[("v1", 1)], ""));
    assert_eq!(s.client.call("POST", &format!("{}/reload", s.admin), "").await.status, 200);
    let hits = a.hits.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..50 {
        assert_eq!(s.client.get(&s.url).await.body, "Host: b, Version: v1\n", "no new request reaches a");
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), hits);
    // Its in-flight requests finish normally...
    for r in slow {
        assert_eq!(r.await.unwrap().status, 200);
    }
    // ...and then its pooled connections close (long before the 90 s idle timeout).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while a.open_connections() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "a still has {} connections", a.open_connections());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(b.open_connections() >= 1, "b keeps its warm connections");
    s.weir.shutdown().await;
}
