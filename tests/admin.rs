//! The admin API contract: reads, changes, history, and refusals that change nothing.

mod common;

use bytes::Bytes;
use common::{Client, two_versions, urls};
use http::Request;
use http_body_util::Full;

async fn revision_and_weights(client: &Client, admin: &str) -> (u64, serde_json::Value) {
    let app = client.get(&format!("{admin}/apps/web")).await.json();
    (app["revision"].as_u64().unwrap(), app["weights"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_and_changes_nothing() {
    let (weir, _b) = two_versions(90, 10).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    let split = format!("{admin}/apps/web/split");
    let promote = format!("{admin}/apps/web/promote");
    let rollback = format!("{admin}/apps/web/rollback");
    let before = revision_and_weights(&client, &admin).await;
    let generation = weir.snapshot.load().generation;

    let raw = |method: &str, url: &str, ct: Option<&str>, body: Vec<u8>| {
        let mut b = Request::builder().method(method).uri(url);
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    };
    let json = Some("application/json");
    let cases: Vec<(Request<Full<Bytes>>, u16, &str)> = vec![
        (raw("PUT", &split, json, b"{\"weights\":".to_vec()), 400, "invalid_json"),
        (raw("PUT", &split, json, b"[1,2]".to_vec()), 400, "invalid_json"),
        (raw("PUT", &split, json, br#"{"weights":{"v1":50,"v2":50},"extra":1}"#.to_vec()), 400, "invalid_json"),
        (raw("PUT", &split, json, br#"{"weights":{"v1":50.5}}"#.to_vec()), 400, "invalid_json"),
        (raw("PUT", &split, json, br#"{"weights":{"v1":-5,"v2":10}}"#.to_vec()), 400, "invalid_weights"),
        (raw("PUT", &split, json, br#"{"weights":{"v1":0,"v2":0}}"#.to_vec()), 400, "invalid_weights"),
        (raw("PUT", &split, json, br#"{"weights":{}}"#.to_vec()), 400, "invalid_weights"),
        (raw("PUT", &split, json, br#"{"weights":{"v3":10}}"#.to_vec()), 400, "invalid_weights"),
        (raw("PUT", &split, json, br#"{"weights":{"v1":1000001}}"#.to_vec()), 400, "invalid_weights"),
        (raw("PUT", &split, Some("text/plain"), br#"{"weights":{"v1":1}}"#.to_vec()), 415, "unsupported_media_type"),
        (raw("PUT", &split, None, br#"{"weights":{"v1":1}}"#.to_vec()), 415, "unsupported_media_type"),
        (raw("PUT", &split, json, Vec::new()), 400, "missing_body"),
        (raw("PUT", &split, json, vec![b' '; 70 * 1024]), 413, "body_too_large"),
        (
            raw("PUT", &format!("{admin}/apps/nope/split"), json, br#"{"weights":{"v1":1}}"#.to_vec()),
            404,
            "unknown_app",
        ),
        (raw("POST", &split, json, br#"{"weights":{"v1":1}}"#.to_vec()), 405, "method_not_allowed"),
        (raw("POST", &promote, json, br#"{"version":"v9"}"#.to_vec()), 400, "unknown_version"),
        (raw("POST", &promote, json, br#"{}"#.to_vec()), 400, "invalid_json"),
        (raw("POST", &rollback, json, Vec::new()), 409, "nothing_to_roll_back"),
        (raw("POST", &rollback, json, br#"{"revision":42}"#.to_vec()), 404, "unknown_revision"),
        (raw("GET", &format!("{admin}/nope"), None, Vec::new()), 404, "not_found"),
        (raw("DELETE", &format!("{admin}/apps/web"), None, Vec::new()), 405, "method_not_allowed"),
    ];
    for (req, status, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let r = client.send(req).await.unwrap();
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.body);
        let err = r.json();
        assert_eq!(err["error"]["code"], code, "{what}: {}", r.body);
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
        assert_eq!(revision_and_weights(&client, &admin).await, before, "{what} changed the split");
        assert_eq!(weir.snapshot.load().generation, generation, "{what} stored a snapshot");
    }

    // A refusal that leaves the body unread says `Connection: close` on the wire, so clients do
    // not reuse a connection that still holds the rest of the body.
    let raw = oversized_put_on_the_wire(weir.admin).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{raw}");

    // The details name the offending field.
    let r = client.call("PUT", &split, r#"{"weights":{"v1":-5,"v2":10}}"#).await;
    assert_eq!(r.json()["error"]["details"][0]["field"], "weights.v1");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_makes_changes_conditional() {
    let (weir, _b) = two_versions(90, 10).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    let url = format!("{admin}/apps/web/split");
    let app = client.get(&format!("{admin}/apps/web")).await;
    assert_eq!(app.headers["etag"], "\"1\"");

    let put = |rev: &str, body: &str| {
        Request::put(&url)
            .header("content-type", "application/json")
            .header("if-match", rev)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let r = client.send(put("\"1\"", r#"{"weights":{"v1":50,"v2":50}}"#)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["etag"], "\"2\"");
    // A second operator still holding revision 1 is refused.
    let r = client.send(put("\"1\"", r#"{"weights":{"v1":0,"v2":100}}"#)).await.unwrap();
    assert_eq!(r.status, 412, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "stale_revision");
    let r = client.send(put("abc", r#"{"weights":{"v1":0,"v2":100}}"#)).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(revision_and_weights(&client, &admin).await.0, 2);
    let r = client.send(put("*", r#"{"weights":{"v1":0,"v2":100}}"#)).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["revision"], 3);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_every_change_and_rollback_to_a_revision() {
    let (weir, _b) = two_versions(90, 10).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    let r = client
        .call("PUT", &format!("{admin}/apps/web/split"), r#"{"weights":{"v1":50,"v2":50},"reason":"canary half"}"#)
        .await;
    assert_eq!(r.json()["changed"], true);
    client.call("POST", &format!("{admin}/apps/web/promote"), r#"{"version":"v2","reason":"flip"}"#).await;
    // The same split again records nothing.
    let r = client.call("POST", &format!("{admin}/apps/web/promote"), r#"{"version":"v2"}"#).await;
    assert_eq!((r.status.as_u16(), &r.json()["changed"], &r.json()["revision"]), (200, &false.into(), &3.into()));
    let r = client.call("POST", &format!("{admin}/apps/web/rollback"), r#"{"revision":1,"reason":"bad canary"}"#).await;
    assert_eq!(r.json()["revision"], 4);
    assert_eq!(r.json()["weights"], serde_json::json!({"v1": 90, "v2": 10}));

    let h = client.get(&format!("{admin}/apps/web/history")).await.json();
    let revs = h["revisions"].as_array().unwrap();
    let summary: Vec<(u64, &str, &str)> = revs
        .iter()
        .map(|r| (r["number"].as_u64().unwrap(), r["cause"]["kind"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [(1, "config", ""), (2, "split", "canary half"), (3, "promote", "flip"), (4, "rollback", "bad canary")]
    );
    assert_eq!(revs[3]["cause"]["to"], 1);
    assert!(revs[0]["at"].as_str().unwrap().ends_with('Z'));

    let apps = client.get(&format!("{admin}/apps")).await.json();
    assert_eq!(apps["apps"][0]["name"], "web");
    assert_eq!(apps["apps"][0]["versions"][0]["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(client.get(&format!("{admin}/live")).await.status, 200);
    assert_eq!(client.get(&format!("{admin}/ready")).await.status, 200);
    weir.shutdown().await;
}

async fn oversized_put_on_the_wire(admin: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let head =
        "PUT /apps/web/split HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 900000\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
