//! Only operators change the split: bearer tokens from a file, read or change access, the
//! token's name in history, rotation of the file, and the refusal to expose an admin API
//! without authentication. (A client from a non-loopback address being refused without
//! tokens is a unit test in src/control/admin/auth.rs: test traffic stays on loopback.)

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Backend, Client, config, start, urls};
use http_body_util::Full;

const TOKENS: &str = "[tokens.ci-pipeline]\nsecret = \"change-me-0123456789\"\naccess = \"change\"\n\
                      [tokens.dashboard]\nsecret = \"read-only-0123456789\"\naccess = \"read\"\n";

async fn call(client: &Client, method: &str, url: &str, token: Option<&str>, body: &str) -> common::Reply {
    let mut req = http::Request::builder().method(method).uri(url).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    client.send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.unwrap()
}

#[tokio::test]
async fn tokens_decide_who_reads_and_who_changes() {
    let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
    let dir = tempfile::tempdir().unwrap();
    let text = config(&[("v1", &[&v1]), ("v2", &[&v2])], &[("v1", 90), ("v2", 10)], "");
    let text = common::with_tokens_file(&text, dir.path(), TOKENS);
    let tokens = dir.path().join("tokens.toml");
    let weir = start(&text).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    let split = |v1: u32, v2: u32| format!(r#"{{"weights":{{"v1":{v1},"v2":{v2}}}}}"#);

    // Probes, scrapes and the dashboard's page (no data in it) need no token.
    for open in ["/live", "/ready", "/metrics", "/ui"] {
        assert_eq!(call(&client, "GET", &format!("{admin}{open}"), None, "").await.status, 200, "{open}");
    }
    let page = call(&client, "GET", &format!("{admin}/ui"), None, "").await;
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    assert!(page.body.contains("<title>Weir</title>") && page.body.contains("textContent"));
    assert!(!page.body.contains("innerHTML"), "names from the API are set as text only");
    // No token, a wrong one: 401 with the challenge, in the JSON error shape.
    for token in [None, Some("wrong-token-0123456789")] {
        let r = call(&client, "GET", &format!("{admin}/apps"), token, "").await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"weir\"");
        assert_eq!(r.json()["error"]["code"], "unauthenticated");
        let r = call(&client, "PUT", &format!("{admin}/apps/web/split"), token, &split(50, 50)).await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    // Read access: reads yes, changes 403, and the split is unchanged.
    let read = Some("read-only-0123456789");
    assert_eq!(call(&client, "GET", &format!("{admin}/apps/web/history"), read, "").await.status, 200);
    let r = call(&client, "PUT", &format!("{admin}/apps/web/split"), read, &split(50, 50)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "forbidden");
    let r = call(&client, "POST", &format!("{admin}/reload"), read, "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let app = call(&client, "GET", &format!("{admin}/apps/web"), read, "").await.json();
    assert_eq!((app["revision"].clone(), app["weights"]["v2"].clone()), (1.into(), 10.into()));
    // Change access: the change is made and history says who made it.
    let change = Some("change-me-0123456789");
    let r = call(&client, "PUT", &format!("{admin}/apps/web/split"), change, &split(50, 50)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let history = call(&client, "GET", &format!("{admin}/apps/web/history"), read, "").await.json();
    assert_eq!(history["revisions"][1]["by"], "ci-pipeline", "{history}");
    assert_eq!(history["revisions"][0]["by"], "", "revision 1 is the config's");

    // Rotation: the file is re-read when it changes (checked at most once a second).
    std::fs::write(&tokens, TOKENS.replace("change-me-0123456789", "rotated-secret-0123456789")).unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if call(&client, "GET", &format!("{admin}/apps"), change, "").await.status == 401 {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "the old secret still works after rotation");
    let r = call(&client, "POST", &format!("{admin}/apps/web/rollback"), Some("rotated-secret-0123456789"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A broken file keeps the tokens in force.
    std::fs::write(&tokens, "[tokens.x]\nsecret = \"short\"\naccess = \"read\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = call(&client, "GET", &format!("{admin}/apps"), Some("rotated-secret-0123456789"), "").await;
    assert_eq!(r.status, 200, "a broken tokens file must not lock operators out: {}", r.body);
    weir.shutdown().await;
}

#[test]
fn an_admin_api_reachable_from_other_hosts_needs_authentication() {
    let base = "[listeners.main]\naddr = \"127.0.0.1:0\"\n[apps.web]\nlistener = \"main\"\nsplit = { v1 = 1 }\n\
                versions.v1.endpoints = [{ addr = \"127.0.0.1:1\" }]\n";
    let open = format!("[admin]\naddr = \"0.0.0.0:9901\"\n{base}");
    let e = weir::Config::parse(&open, "weir.toml").unwrap_err().to_string();
    assert!(e.contains("admin.addr") && e.contains("tokens_file") && e.contains("allow_unauthenticated"), "{e}");
    let told = format!("[admin]\naddr = \"0.0.0.0:9901\"\nallow_unauthenticated = true\n{base}");
    assert!(weir::Config::parse(&told, "weir.toml").is_ok());
    let tokens = format!("[admin]\naddr = \"0.0.0.0:9901\"\ntokens_file = \"/etc/weir/tokens.toml\"\n{base}");
    assert!(weir::Config::parse(&tokens, "weir.toml").is_ok());
}

#[test]
fn weir_check_and_start_refuse_a_bad_tokens_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, "[tokens.ci]\nsecret = \"short\"\naccess = \"change\"\n").unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\naddr = \"127.0.0.1:0\"\ntokens_file = {:?}\n[listeners.main]\naddr = \"127.0.0.1:0\"\n\
             [apps.web]\nlistener = \"main\"\nsplit = {{ v1 = 1 }}\nversions.v1.endpoints = [{{ addr = \"127.0.0.1:1\" }}]\n",
            tokens.to_str().unwrap()
        ),
    )
    .unwrap();
    for cmd in ["check", "serve"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args([cmd, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("tokens.toml") && err.contains("at least 16"), "{cmd}: {err}");
    }
}

/// In-cluster: TokenReview says who calls, SubjectAccessReview what they may do, against the
/// stand-in API server (tests/common/fake_kube.rs).
#[cfg(feature = "kubernetes")]
#[path = "common/fake_kube.rs"]
mod fake_kube;

#[cfg(feature = "kubernetes")]
#[tokio::test]
async fn kubernetes_identities_and_rbac_decide() {
    let fake = fake_kube::FakeKube::start(Duration::from_secs(30)).await;
    fake.add_user("token-of-ci-000000", "system:serviceaccount:apps:weir-deployer", &["system:serviceaccounts"]);
    fake.add_user("token-of-viewer-00", "alice@example.com", &[]);
    fake.grant("system:serviceaccount:apps:weir-deployer", "update", "splits", "web");
    fake.grant("system:serviceaccount:apps:weir-deployer", "get", "splits", "web");
    fake.grant("alice@example.com", "get", "splits", "web");
    let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
    let mut text = config(&[("v1", &[&v1]), ("v2", &[&v2])], &[("v1", 90), ("v2", 10)], "");
    text =
        text.replacen("[admin]\n", "[admin.kubernetes_auth]\nnamespace = \"apps\"\napi_timeout = \"1s\"\n[admin]\n", 1);
    text.push_str(&format!("[kubernetes]\napi_url = \"{}\"\n", fake.url()));
    let weir = start(&text).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    let body = r#"{"weights":{"v1":50,"v2":50}}"#;

    let r = call(&client, "PUT", &format!("{admin}/apps/web/split"), Some("not-a-token"), body).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = call(&client, "PUT", &format!("{admin}/apps/web/split"), Some("token-of-viewer-00"), body).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("update splits.weir.dev \"web\""), "{}", r.body);
    assert_eq!(call(&client, "GET", &format!("{admin}/apps/web"), Some("token-of-viewer-00"), "").await.status, 200);
    assert_eq!(call(&client, "GET", &format!("{admin}/apps"), Some("token-of-viewer-00"), "").await.status, 403);
    let r = call(&client, "PUT", &format!("{admin}/apps/web/split"), Some("token-of-ci-000000"), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let history =
        call(&client, "GET", &format!("{admin}/apps/web/history"), Some("token-of-ci-000000"), "").await.json();
    assert_eq!(history["revisions"][1]["by"], "system:serviceaccount:apps:weir-deployer");
    // The review carried the caller and the call's attributes.
    let reviews = fake.access_reviews();
    let update = reviews
        .iter()
        .find(|r| {
            r["resourceAttributes"]["verb"] == "update" && r["user"] == "system:serviceaccount:apps:weir-deployer"
        })
        .expect("an update review for the CI account");
    assert_eq!(update["groups"], serde_json::json!(["system:serviceaccounts"]));
    assert_eq!(
        update["resourceAttributes"],
        serde_json::json!({ "group": "weir.dev", "resource": "splits", "name": "web", "namespace": "apps", "verb": "update" })
    );
    // API server gone: a call whose answer is not cached is not let in (503); the answers
    // of the last 10 s still hold.
    fake.down();
    let r = call(&client, "GET", &format!("{admin}/cluster"), Some("token-of-ci-000000"), "").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "auth_unavailable");
    let r = call(&client, "POST", &format!("{admin}/apps/web/rollback"), Some("token-of-ci-000000"), "").await;
    assert_eq!(r.status, 200, "cached for 10 s: {}", r.body);
    weir.shutdown().await;
}
