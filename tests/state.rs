//! The file state store, with real `weir serve` processes: the split and its history survive
//! SIGTERM and SIGKILL, and a state that cannot be read stops the start with how to recover.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::process::Weir;
use common::{Backend, Client};

/// One app `web`, v1/v2 on the given backends, state in `state_dir`, no drain delay.
fn config(v1: &Backend, v2: &Backend, state: &str) -> String {
    format!(
        r#"[admin]
addr = "{{admin}}"
[runtime]
drain_delay = "0s"
shutdown_grace = "5s"
[state]
{state}
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

/// Two backends and a weir keeping its state in `<temp>/state`, ready.
async fn file_weir() -> (Weir, tempfile::TempDir, [Backend; 2], String) {
    let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = config(&v1, &v2, &format!("dir = {:?}", state.to_str().unwrap()));
    let mut weir = Weir::spawn(dir.path(), &text, &[]);
    weir.ready().await;
    (weir, dir, [v1, v2], text)
}

async fn app(client: &Client, weir: &Weir) -> serde_json::Value {
    client.get(&format!("{}/apps/web", weir.admin)).await.json()
}

async fn history(client: &Client, weir: &Weir) -> serde_json::Value {
    client.get(&format!("{}/apps/web/history", weir.admin)).await.json()["revisions"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_revision_and_history_survive_a_restart() {
    let (mut weir, _dir, _backends, text) = file_weir().await;
    let client = Client::new();
    let r = client
        .call("PUT", &format!("{}/apps/web/split", weir.admin), r#"{"weights":{"v1":25,"v2":75},"reason":"ramp"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = client.call("POST", &format!("{}/apps/web/promote", weir.admin), r#"{"version":"v2"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let before = history(&client, &weir).await;
    assert_eq!(before.as_array().unwrap().len(), 3);

    assert!(weir.stop().await.success(), "{}", weir.log());
    weir.start();
    weir.ready().await;
    let after = app(&client, &weir).await;
    assert_eq!(after["revision"], 3);
    assert_eq!(after["weights"], serde_json::json!({ "v1": 0, "v2": 100 }));
    assert_eq!(history(&client, &weir).await, before, "the same history, reasons and times included");
    // And it routes by it from its first request.
    let counts = common::count_versions(&client, &weir.traffic, 40, 4).await;
    assert_eq!(counts, BTreeMap::from([("v2".to_string(), 40)]));
    // The next change continues the numbering.
    let r = client.call("POST", &format!("{}/apps/web/rollback", weir.admin), "").await;
    assert_eq!(r.json()["revision"], 4);

    // A second weir on the same state directory is refused, naming it.
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = Weir::spawn(other_dir.path(), &text, &[]);
    let status = other.exit().await;
    assert!(!status.success());
    assert!(other.log().contains("in use by another weir"), "{}", other.log());
}

/// SIGKILL while admin writes are in flight, three times: after each restart the state is
/// the last acknowledged change or a later one (the one in flight), never older, never
/// corrupt, and every kept revision has the weights its change asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_admin_writes_never_loses_an_acknowledged_change() {
    let (mut weir, _dir, _backends, _) = file_weir().await;
    let client = Client::new();
    // Revision n (n >= 2) asks for v1 = n, v2 = 1000 - n: the weights say which write it was.
    let mut acknowledged = 1u64;
    let mut sent = 0u64;
    for (round, kill_after) in [37u64, 61, 102].into_iter().enumerate() {
        let admin = weir.admin.clone();
        let writer = {
            let client = client.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in (acknowledged + 1)..(acknowledged + 1 + 200) {
                    let body = format!(r#"{{"weights":{{"v1":{n},"v2":{}}}}}"#, 1000 - n);
                    let req = http::Request::put(format!("{admin}/apps/web/split"))
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .unwrap();
                    match client.send(req).await {
                        Ok(r) if r.status == 200 => acked.push(r.json()["revision"].as_u64().unwrap()),
                        _ => break,
                    }
                }
                acked
            })
        };
        // Kill once `kill_after` writes are acknowledged: the next is in flight.
        let target = acknowledged + kill_after;
        for _ in 0..2000 {
            let r = client.get(&format!("{}/apps/web", weir.admin)).await;
            if r.json()["revision"].as_u64().unwrap() >= target {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        weir.kill9();
        let acked = writer.await.unwrap();
        let last_acked = *acked.last().expect("some writes were acknowledged");
        sent += acked.len() as u64 + 1;
        weir.start();
        weir.ready().await;
        let now = app(&client, &weir).await;
        let revision = now["revision"].as_u64().unwrap();
        assert!(
            revision == last_acked || revision == last_acked + 1,
            "round {round}: state at revision {revision}, last acknowledged {last_acked}"
        );
        assert_eq!(now["weights"]["v1"], revision, "round {round}: revision {revision}'s weights");
        for r in history(&client, &weir).await.as_array().unwrap() {
            let n = r["number"].as_u64().unwrap();
            if n >= 2 {
                assert_eq!(r["weights"], serde_json::json!({ "v1": n, "v2": 1000 - n }), "revision {n}");
            }
        }
        acknowledged = revision;
    }
    eprintln!("kill -9 rounds: 3, admin writes sent ~{sent}, final revision {acknowledged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_state_stops_the_start_and_says_how_to_recover() {
    let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let garbage = b"{\"format\": 1, \"sequence\": 7, \"apps\": {\"web\": [trunc";
    std::fs::write(state.join("state.json"), garbage).unwrap();
    let refuse = config(&v1, &v2, &format!("dir = {:?}", state.to_str().unwrap()));
    let mut weir = Weir::spawn(dir.path(), &refuse, &[]);
    let status = weir.exit().await;
    assert!(!status.success());
    let log = weir.log();
    assert!(log.contains(state.join("state.json").to_str().unwrap()), "names the file: {log}");
    assert!(log.contains("start_from_config"), "says how to recover: {log}");
    assert_eq!(std::fs::read(state.join("state.json")).unwrap(), garbage, "left as it was");

    // Told to, it sets the text aside and starts from the config file's split.
    let dir2 = tempfile::tempdir().unwrap();
    let text = config(&v1, &v2, &format!("dir = {:?}\non_unreadable = \"start_from_config\"", state.to_str().unwrap()));
    let mut weir = Weir::spawn(dir2.path(), &text, &[]);
    weir.ready().await;
    let client = Client::new();
    let now = app(&client, &weir).await;
    assert_eq!(now["revision"], 1);
    assert_eq!(now["weights"], serde_json::json!({ "v1": 90, "v2": 10 }));
    let kept: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("state.json.unreadable-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(state.join(&kept[0])).unwrap(), garbage);
    assert!(weir.log().contains("unreadable"), "{}", weir.log());
}
