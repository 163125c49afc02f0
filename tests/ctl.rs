//! `weir ctl`, the real binary, against a real Weir with admin tokens: every command's exit
//! status and output, and what it changed.

mod common;

use std::process::Output;

use common::{Backend, Client, config, start, urls};

const TOKENS: &str = "[tokens.ci-pipeline]\nsecret = \"change-me-0123456789\"\naccess = \"change\"\n\
                      [tokens.dashboard]\nsecret = \"read-only-0123456789\"\naccess = \"read\"\n";
const CHANGE: &str = "change-me-0123456789";
const READ: &str = "read-only-0123456789";

/// `weir ctl <args>` against `admin` with `token` (through `WEIR_TOKEN`).
async fn ctl(admin: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.arg("ctl").arg("--admin").arg(admin).args(args).env_remove("WEIR_TOKEN").env_remove("WEIR_ADMIN");
    if let Some(t) = token {
        cmd.env("WEIR_TOKEN", t);
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output()).await.expect("weir ctl ends").unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_steers_a_running_weir() {
    let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
    let dir = tempfile::tempdir().unwrap();
    let text = config(&[("v1", &[&v1]), ("v2", &[&v2])], &[("v1", 90), ("v2", 10)], "");
    let text = common::with_tokens_file(&text, dir.path(), TOKENS);
    let weir = start(&text).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    let weights = || async {
        let req = http::Request::get(format!("{admin}/apps/web"))
            .header("authorization", format!("Bearer {READ}"))
            .body(Default::default())
            .unwrap();
        client.send(req).await.unwrap().json()["weights"].clone()
    };

    // A split, by the change token: exit 0, one line saying what is in force now.
    let o = ctl(&admin, Some(CHANGE), &["split", "web", "v1=70", "v2=30", "--reason", "canary to 30"]).await;
    assert_eq!(code(&o), 0, "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("web: revision 2: v1 70 (70.0%) · v2 30 (30.0%)"), "{}", out(&o));
    assert_eq!(weights().await, serde_json::json!({ "v1": 70, "v2": 30 }));

    // Refusals: exit 1, the API's code and message on stderr, nothing changed.
    for (token, args, says) in [
        (None, vec!["split", "web", "v1=1", "v2=1"], "error: 401 unauthenticated"),
        (Some(READ), vec!["split", "web", "v1=1", "v2=1"], "error: 403 forbidden"),
        (Some(CHANGE), vec!["split", "web", "v1=0", "v2=0"], "error: 400"),
        (Some(CHANGE), vec!["split", "web", "v1=1", "v9=1"], "v9"),
        (Some(CHANGE), vec!["split", "web", "v1=1", "v2=1", "--if-match", "1"], "error: 412"),
        (Some(CHANGE), vec!["promote", "nope", "v2"], "error: 404"),
        (
            Some(CHANGE),
            vec!["rollout", "start", "web", "--canary", "v2", "--plan", r#"[{"set_weight":20,"x":1}]"#],
            "plan[0]",
        ),
    ] {
        let o = ctl(&admin, token, &args).await;
        assert_eq!(code(&o), 1, "{args:?}: {}{}", out(&o), err(&o));
        assert!(err(&o).contains(says), "{args:?}: {}", err(&o));
    }
    // Usage errors are clap's (exit 2), before any call.
    let o = ctl(&admin, Some(CHANGE), &["split", "web", "v1"]).await;
    assert_eq!(code(&o), 2, "{}", err(&o));
    assert_eq!(weights().await, serde_json::json!({ "v1": 70, "v2": 30 }), "refusals changed nothing");

    // Status, apps, history (text and JSON), cluster, with the read-only token.
    let o = ctl(&admin, Some(READ), &["status", "web"]).await;
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(out(&o).contains("v1-0") && out(&o).contains("healthy"), "{}", out(&o));
    let o = ctl(&admin, Some(READ), &["apps"]).await;
    assert!(out(&o).starts_with("web") && out(&o).contains("revision 2"), "{}", out(&o));
    let o = ctl(&admin, Some(READ), &["history", "web"]).await;
    assert!(out(&o).contains("ci-pipeline") && out(&o).contains("canary to 30"), "{}", out(&o));
    let o = ctl(&admin, Some(READ), &["history", "web", "-o", "json"]).await;
    let history: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON with -o json");
    assert_eq!(history["revisions"].as_array().unwrap().len(), 2);
    let o = ctl(&admin, Some(READ), &["cluster"]).await;
    assert!(out(&o).contains("(answered this call)") && out(&o).contains("web=2"), "{}", out(&o));

    // A blue/green flip and the one-call rollback, to a named revision too.
    let o = ctl(&admin, Some(CHANGE), &["promote", "web", "v2"]).await;
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(weights().await, serde_json::json!({ "v1": 0, "v2": 100 }));
    let o = ctl(&admin, Some(CHANGE), &["rollback", "web"]).await;
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(weights().await, serde_json::json!({ "v1": 70, "v2": 30 }));
    let o = ctl(&admin, Some(CHANGE), &["rollback", "web", "--to", "1"]).await;
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(weights().await, serde_json::json!({ "v1": 90, "v2": 10 }));
    // --wait on a Weir without replicas: nothing to wait for, applied at once.
    let o = ctl(&admin, Some(CHANGE), &["split", "web", "v1=50", "v2=50", "--wait"]).await;
    assert_eq!(code(&o), 0, "{}{}", out(&o), err(&o));

    // A rollout followed to its end: a line per step, exit 0 once it succeeded.
    let plan = r#"[{"set_weight":50},{"pause":"300ms"},{"set_weight":100}]"#;
    let o = ctl(
        &admin,
        Some(CHANGE),
        &["rollout", "start", "web", "--canary", "v2", "--stable", "v1", "--plan", plan, "--watch"],
    )
    .await;
    assert_eq!(code(&o), 0, "{}{}", out(&o), err(&o));
    assert!(out(&o).lines().last().unwrap_or("").contains("v1 → v2: succeeded"), "{}", out(&o));
    assert_eq!(weights().await, serde_json::json!({ "v1": 0, "v2": 100 }));
    let o = ctl(&admin, Some(READ), &["rollout", "status", "web"]).await;
    assert!(out(&o).contains("plan:") && out(&o).contains("set_weight 50"), "{}", out(&o));
    // A second one, aborted: status --watch exits 4.
    let o = ctl(
        &admin,
        Some(CHANGE),
        &[
            "rollout",
            "start",
            "web",
            "--canary",
            "v1",
            "--stable",
            "v2",
            "--plan",
            r#"[{"set_weight":10},{"pause":"manual"},{"set_weight":100}]"#,
        ],
    )
    .await;
    assert_eq!(code(&o), 0, "{}{}", out(&o), err(&o));
    let o = ctl(&admin, Some(CHANGE), &["rollout", "abort", "web"]).await;
    assert_eq!(code(&o), 0, "{}", err(&o));
    let o = ctl(&admin, Some(READ), &["rollout", "status", "web", "--watch"]).await;
    assert_eq!(code(&o), 4, "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("aborted"), "{}", out(&o));

    // Nobody there: exit 1 and a hint.
    let o = ctl("http://127.0.0.1:1", Some(CHANGE), &["apps"]).await;
    assert_eq!(code(&o), 1);
    assert!(err(&o).contains("is Weir's admin API there"), "{}", err(&o));
    weir.shutdown().await;
}
