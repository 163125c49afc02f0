//! Bad input to the admin API: every refusal is a 4xx (or 5xx) in the documented JSON error
//! shape, whichever layer refuses it (the JSON reader, the router, or the HTTP layer in front
//! of them), and changes nothing: not the revision, the weights, the history or the snapshot.
//! Issue 12's cases one by one first, then a seeded fuzz over the same families.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::recorder::{RawConn, Resp};
use common::{Client, two_versions, urls};
use http::Request;
use http_body_util::Full;
use serde_json::Value;

/// The admin deadline for a request head and for a request body (see `control/admin.rs`).
const DEADLINE: Duration = Duration::from_secs(10);

/// What a refused input must not change: the app's revision and weights, its history, and the
/// generation of the stored snapshot.
#[derive(Debug, PartialEq)]
struct State {
    revision: Value,
    weights: Value,
    history: Value,
    generation: u64,
}

async fn state(client: &Client, admin: &str, weir: &weir::Running) -> State {
    let app = client.get(&format!("{admin}/apps/web")).await.json();
    let history = client.get(&format!("{admin}/apps/web/history")).await.json();
    State {
        revision: app["revision"].clone(),
        weights: app["weights"].clone(),
        history,
        generation: weir.snapshot.load().generation,
    }
}

/// Checks the documented error shape: a JSON content type, and a body with `error.code` and
/// `error.message` (strings) and `error.details` (a list of `{field, message}`).
fn error_shape(status: u16, content_type: Option<&str>, body: &[u8]) -> Result<Value, String> {
    let show = || format!("{status} {content_type:?} {:?}", String::from_utf8_lossy(body));
    if status < 400 {
        return Err(format!("not a refusal: {}", show()));
    }
    let json_type = content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(format!("content type is not application/json: {}", show()));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON ({e}): {}", show()))?;
    let e = &v["error"];
    let ok = e["code"].as_str().is_some_and(|c| !c.is_empty())
        && e["message"].as_str().is_some_and(|m| !m.is_empty())
        && e["details"]
            .as_array()
            .is_some_and(|d| d.iter().all(|x| x["field"].is_string() && x["message"].is_string()));
    if !ok {
        return Err(format!("not the error shape: {}", show()));
    }
    Ok(v)
}

fn raw_shape(r: &Resp) -> Result<Value, String> {
    error_shape(r.status, r.values("content-type").first().copied(), &r.body)
}

/// Sends `bytes` on a new connection and reads one response, within `limit`.
async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Result<Resp, String> {
    let mut c = RawConn::connect(addr).await;
    c.send_in_background(bytes.to_vec());
    c.response(false, limit).await.map_err(|end| format!("no response: {end:?}"))
}

fn json_request(method: &str, url: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A raw `PUT /apps/web/split` that would set v1 to 1 and v2 to 99 if accepted, with `extra`
/// field lines (CRLF-terminated) after `Host` and `target` as the request target.
fn raw_split(target: &str, extra: &str) -> Vec<u8> {
    let body = r#"{"weights":{"v1":1,"v2":99}}"#;
    format!(
        "PUT {target} HTTP/1.1\r\nHost: admin\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_are_refused_with_their_path() {
    let (weir, _b) = two_versions(90, 10).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    let before = state(&client, &admin, &weir).await;
    let split = format!("{admin}/apps/web/split");
    let promote = format!("{admin}/apps/web/promote");
    for (url, body, field) in [
        // Issue 12: applied as 60/40 before.
        (&split, r#"{"weights":{"v1":-1,"v1":60,"v2":40}}"#, "weights.v1"),
        (&split, r#"{"weights":{"v1":50,"v2":50},"weights":{"v1":60,"v2":40}}"#, "weights"),
        (&split, r#"{"weights":{"v1":50,"v2":50},"reason":"a","reason":"b"}"#, "reason"),
        (&promote, r#"{"version":"v2","version":"v1"}"#, "version"),
    ] {
        let r = client.send(json_request(if url == &split { "PUT" } else { "POST" }, url, body)).await.unwrap();
        let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok());
        let err = error_shape(r.status.as_u16(), ct, r.body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(err["error"]["code"], "duplicate_key", "{body}: {}", r.body);
        assert_eq!(err["error"]["details"][0]["field"], field, "{body}: {}", r.body);
        assert_eq!(state(&client, &admin, &weir).await, before, "{body} changed something");
    }
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_and_other_shapes_in_place_of_objects_are_refused() {
    let (weir, _b) = two_versions(90, 10).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    // A second revision, so that a rollback to revision 1 would change the split.
    let r = client.call("PUT", &format!("{admin}/apps/web/split"), r#"{"weights":{"v1":50,"v2":50}}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let before = state(&client, &admin, &weir).await;
    for (method, action, body) in [
        // Issue 12: serde's derive takes a sequence for a struct; both were applied before.
        ("POST", "promote", r#"["v2"]"#),
        ("POST", "rollback", "[1]"),
        ("POST", "rollback", "[1, \"why\"]"),
        ("PUT", "split", r#"[{"v1":1,"v2":99}]"#),
        ("POST", "rollback", "null"),
        ("POST", "rollback", "1"),
        ("POST", "promote", r#""v2""#),
        ("POST", "promote", "true"),
        ("PUT", "split", r#"{"weights":[1,99]}"#),
        ("PUT", "split", r#"{"weights":{"v1":"1","v2":99}}"#),
        ("PUT", "split", r#"{"weights":{"v1":null,"v2":99}}"#),
        ("PUT", "split", r#"{"weights":{"v1":{"x":1},"v2":99}}"#),
        ("POST", "promote", r#"{"version":["v2"]}"#),
        ("POST", "rollback", r#"{"revision":"1"}"#),
    ] {
        let r = client.send(json_request(method, &format!("{admin}/apps/web/{action}"), body)).await.unwrap();
        let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok());
        error_shape(r.status.as_u16(), ct, r.body.as_bytes()).unwrap_or_else(|e| panic!("{action} {body}: {e}"));
        assert_eq!(r.status, 400, "{action} {body}: {}", r.body);
        assert_eq!(state(&client, &admin, &weir).await, before, "{action} {body} changed something");
    }
    // A wrong type names the field.
    let r = client.call("PUT", &format!("{admin}/apps/web/split"), r#"{"weights":{"v1":"1","v2":99}}"#).await;
    assert_eq!(r.json()["error"]["details"][0]["field"], "weights.v1", "{}", r.body);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_utf8_types_and_methods_are_refused_in_json() {
    let (weir, _b) = two_versions(90, 10).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    let before = state(&client, &admin, &weir).await;
    let split = format!("{admin}/apps/web/split");
    let send = |method: &str, url: &str, ct: Option<&str>, body: Vec<u8>| {
        let mut b = Request::builder().method(method).uri(url);
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    };
    let json = Some("application/json");
    // Each: the request, its status, the field the refusal names (if it names one).
    type Case<'a> = (Request<Full<Bytes>>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (send("PUT", &split, json, br#"{"weights":{"v1":1e400,"v2":1}}"#.to_vec()), 400, Some("weights.v1")),
        (
            send("PUT", &split, json, br#"{"weights":{"v1":18446744073709551616,"v2":1}}"#.to_vec()),
            400,
            Some("weights.v1"),
        ),
        (
            send("PUT", &split, json, br#"{"weights":{"v1":-9223372036854775809,"v2":1}}"#.to_vec()),
            400,
            Some("weights.v1"),
        ),
        (send("PUT", &split, json, br#"{"weights":{"v1":9223372036854775807,"v2":1}}"#.to_vec()), 400, None),
        (send("PUT", &split, json, br#"{"weights":{"v1":10.0,"v2":90}}"#.to_vec()), 400, Some("weights.v1")),
        (send("PUT", &split, json, br#"{"weights":{"v1":1E1,"v2":90}}"#.to_vec()), 400, Some("weights.v1")),
        (
            send("POST", &format!("{admin}/apps/web/rollback"), json, br#"{"revision":-1}"#.to_vec()),
            400,
            Some("revision"),
        ),
        (
            send("POST", &format!("{admin}/apps/web/rollback"), json, br#"{"revision":1.0}"#.to_vec()),
            400,
            Some("revision"),
        ),
        (send("PUT", &split, json, b"{\"weights\":{\"v1\xff\":1,\"v2\":99}}".to_vec()), 400, None),
        (send("PUT", &split, json, b"{\"weights\":{\"v1\":1,\"v2\":99},\"reason\":\"\xc3\x28\"}".to_vec()), 400, None),
        (send("PUT", &split, json, b"\xef\xbb\xbf{\"weights\":{\"v1\":1,\"v2\":99}}".to_vec()), 400, None),
        (send("PUT", &split, json, br#"{"weights":{"v1":1,"v2":99}} {}"#.to_vec()), 400, None),
        (send("PUT", &split, json, br#"{"weights":{"v1":1,"v2":99},"reason":"\ud800"}"#.to_vec()), 400, None),
        (send("PUT", &split, Some("text/json"), br#"{"weights":{"v1":1,"v2":99}}"#.to_vec()), 415, None),
        (send("PUT", &split, Some("application/x-www-form-urlencoded"), b"v1=1&v2=99".to_vec()), 415, None),
        (send("PATCH", &split, json, br#"{"weights":{"v1":1,"v2":99}}"#.to_vec()), 405, None),
        (send("DELETE", &split, json, br#"{"weights":{"v1":1,"v2":99}}"#.to_vec()), 405, None),
        (send("OPTIONS", &format!("{admin}/apps/web"), None, Vec::new()), 405, None),
        (send("FOO", &format!("{admin}/apps/web/promote"), json, br#"{"version":"v2"}"#.to_vec()), 405, None),
    ];
    for (req, status, field) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let r = client.send(req).await.unwrap();
        let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok());
        let err = error_shape(r.status.as_u16(), ct, r.body.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.body);
        if let Some(field) = field {
            assert_eq!(err["error"]["details"][0]["field"], field, "{what}: {}", r.body);
        }
        assert_eq!(state(&client, &admin, &weir).await, before, "{what} changed something");
    }
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_layer_refusals_are_in_json_too() {
    let (weir, _b) = two_versions(90, 10).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    let before = state(&client, &admin, &weir).await;
    let split = "/apps/web/split";
    let long_uri = format!("{split}?{}", "a".repeat(64 * 1024));
    let many: String = (0..101).map(|i| format!("X-F{i}: {i}\r\n")).collect();
    let big_field = format!("X-Big: {}\r\n", "b".repeat(70 * 1024));
    let body = r#"{"weights":{"v1":1,"v2":99}}"#;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("NUL in a field value", raw_split(split, "X-A: a\0b\r\n"), 400),
        ("NUL in the target", raw_split("/apps/web/split\0", ""), 400),
        ("a 64 KiB URI", raw_split(&long_uri, ""), 414),
        ("a 70 KiB field", raw_split(split, &big_field), 431),
        ("101 fields", raw_split(split, &many), 431),
        ("Content-Length: abc", raw_split(split, "Content-Length: abc\r\n"), 400),
        ("two Content-Length", raw_split(split, &format!("Content-Length: {}\r\n", body.len())), 400),
        ("Content-Length and Transfer-Encoding", raw_split(split, "Transfer-Encoding: chunked\r\n"), 400),
        (
            "a transfer coding other than chunked",
            format!(
                "PUT {split} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n"
            )
            .into_bytes(),
            501,
        ),
        (
            "Content-Length: -1",
            format!(
                "PUT {split} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: -1\r\n\r\n{body}"
            )
            .into_bytes(),
            400,
        ),
        (
            "Content-Length: 1,1",
            format!("PUT {split} HTTP/1.1\r\nHost: a\r\nContent-Length: 28, 28\r\n\r\n{body}").into_bytes(),
            400,
        ),
        ("space before a colon", raw_split(split, "X-A : 1\r\n"), 400),
        ("obs-fold", raw_split(split, "X-A: 1\r\n 2\r\n"), 400),
        ("bare CR", raw_split(split, "X-A: 1\r2\r\n"), 400),
        ("two Host fields", raw_split(split, "Host: b\r\n"), 400),
        ("a bad request line", b"PUT  /apps/web/split HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("not HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400),
        // httparse takes these bytes in a target, hyper's `Uri` does not (it answered with
        // its own empty 400).
        ("a target with <", raw_split("/apps/web/split<", ""), 400),
        ("a target with a quote", raw_split("/apps/web/split?a\"b", ""), 400),
        ("a target with a backtick", raw_split("/apps/web/split`", ""), 400),
        ("CONNECT", b"CONNECT admin:443 HTTP/1.1\r\nHost: admin:443\r\n\r\n".to_vec(), 405),
    ];
    let mut failures = Vec::new();
    for (what, bytes, status) in cases {
        match raw(weir.admin, &bytes, Duration::from_secs(5)).await {
            Ok(r) => {
                if let Err(e) = raw_shape(&r) {
                    failures.push(format!("{what}: {e}"));
                } else if r.status != status {
                    failures.push(format!("{what}: {} instead of {status}: {}", r.status, r.body_str()));
                }
            }
            Err(e) => failures.push(format!("{what}: {e}")),
        }
        if state(&client, &admin, &weir).await != before {
            failures.push(format!("{what} changed something"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    weir.shutdown().await;
}

/// A refusal hyper's own turn raises (a head pipelined behind a request hyper serves, which
/// hyper may read itself) has the same shape, whichever reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_refusals_are_in_json() {
    let (weir, _b) = two_versions(90, 10).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    let before = state(&client, &admin, &weir).await;
    let body = r#"{"weights":{"v1":1,"v2":99}}"#;
    // The split as it is (accepted, records nothing), with a chunked body.
    let same = r#"{"weights":{"v1":90,"v2":10}}"#;
    let chunked = format!(
        "PUT /apps/web/split HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{same}\r\n0\r\n\r\n",
        same.len()
    );
    let firsts: [&[u8]; 2] = [b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n", chunked.as_bytes()];
    let seconds = [
        // hyper takes these (it drops the second Content-Length, and one beside
        // Transfer-Encoding); Weir's rules do not.
        raw_split("/apps/web/split", &format!("Content-Length: {}\r\n", body.len())),
        raw_split("/apps/web/split", "Transfer-Encoding: chunked\r\n"),
        raw_split("/apps/web/split", "Content_Length: 3\r\n"),
        // hyper refuses these itself.
        raw_split("/apps/web/split", "X-A: a\0b\r\n"),
        raw_split("/apps/web/split<", ""),
    ];
    let mut failures = Vec::new();
    for first in firsts {
        for second in &seconds {
            let what = format!("{:?} then {:?}", String::from_utf8_lossy(first), String::from_utf8_lossy(second));
            let mut c = RawConn::connect(weir.admin).await;
            c.send_in_background([first, second.as_slice()].concat());
            let mut check = async || -> Result<(), String> {
                let one = c.response(false, Duration::from_secs(5)).await.map_err(|e| format!("{e:?}"))?;
                if one.status != 200 {
                    return Err(format!("first: {one}"));
                }
                let two = c.response(false, Duration::from_secs(5)).await.map_err(|e| format!("second: {e:?}"))?;
                raw_shape(&two)?;
                if two.status != 400 {
                    return Err(format!("second: {two}"));
                }
                if c.wait_closed(Duration::from_secs(5)).await.is_none() {
                    return Err("the connection stayed open".into());
                }
                Ok(())
            };
            if let Err(e) = check().await {
                failures.push(format!("{what}: {e}"));
            }
            if state(&client, &admin, &weir).await != before {
                failures.push(format!("{what}: changed something"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    weir.shutdown().await;
}

/// A body cut short (the client declares more than it sends, then waits) is answered or the
/// connection closed within the admin deadline, never held; so is a head cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bodies_and_heads_are_not_held() {
    let (weir, _b) = two_versions(90, 10).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    let before = state(&client, &admin, &weir).await;
    let body = r#"{"weights":{"v1":1,"v2":99}}"#;
    let cases = [
        (
            "a body cut short",
            format!(
                "PUT /apps/web/split HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{body}"
            ),
        ),
        (
            "a chunked body cut short",
            format!(
                "PUT /apps/web/split HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n",
                body.len()
            ),
        ),
        ("a head cut short", "PUT /apps/web/split HTTP/1.1\r\nHost: a\r\nContent-Type: appl".to_string()),
    ];
    let tasks: Vec<_> = cases
        .into_iter()
        .map(|(what, bytes)| {
            let addr = weir.admin;
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let mut c = RawConn::connect(addr).await;
                // The writer stays open (the client neither sends more nor closes).
                c.send_in_background(bytes.into_bytes());
                let limit = DEADLINE + Duration::from_secs(3);
                let outcome = match c.response(false, limit).await {
                    Ok(r) => raw_shape(&r).map(|_| format!("{} after {:?}", r.status, start.elapsed())),
                    Err(common::recorder::End::Closed) => Ok(format!("closed after {:?}", start.elapsed())),
                    Err(end) => Err(format!("{end:?} after {:?}", start.elapsed())),
                };
                (what, outcome, start.elapsed())
            })
        })
        .collect();
    for t in tasks {
        let (what, outcome, took) = t.await.unwrap();
        let outcome = outcome.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(took < DEADLINE + Duration::from_secs(2), "{what}: {outcome}");
    }
    assert_eq!(state(&client, &admin, &weir).await, before);
    weir.shutdown().await;
}
