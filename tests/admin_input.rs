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

/// What a refused input must not change: the app's revision and weights, its history, its
/// rollout, and the generation of the stored snapshot.
#[derive(Debug, PartialEq)]
struct State {
    revision: Value,
    weights: Value,
    history: Value,
    /// `GET /apps/web/rollout`: none, or the last one's phase and step.
    rollout: Value,
    generation: u64,
}

async fn state(client: &Client, admin: &str, weir: &weir::Running) -> State {
    let app = client.get(&format!("{admin}/apps/web")).await.json();
    let history = client.get(&format!("{admin}/apps/web/history")).await.json();
    State {
        revision: app["revision"].clone(),
        weights: app["weights"].clone(),
        history,
        rollout: client.get(&format!("{admin}/apps/web/rollout")).await.json(),
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
        (
            send(
                "PUT",
                &split,
                json,
                format!(r#"{{"weights":{{"v1":1,"v2":99}},"reason":"{}"}}"#, "r".repeat(1025)).into_bytes(),
            ),
            400,
            Some("reason"),
        ),
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

// ---------------------------------------------------------------------------------------------
// The fuzz: seeded, so a failure reproduces (`WEIR_FUZZ_SEED`, `WEIR_FUZZ_CASES`).

/// One generated input.
#[derive(Debug, Clone)]
enum Input {
    /// A request a real client (hyper's) sends: any method, path, content type and body bytes.
    /// `must_refuse`: the body breaks a rule the generator knows of (a malformed rollout step),
    /// so taking it is a failure.
    Http { method: String, path: String, content_type: Option<String>, body: Vec<u8>, must_refuse: bool },
    /// Bytes on a new connection, for what no well-behaved client sends. `refuse`: they break
    /// a rule, so the answer must be a refusal.
    Raw { what: String, bytes: Vec<u8>, refuse: bool },
}

const KEYS: [&str; 9] = ["weights", "version", "revision", "reason", "v1", "v2", "v3", "x", ""];
/// Numbers no weight or revision takes, in text: past i64/u64, past f64, floats, exponents.
const ODD_NUMBERS: [&str; 16] = [
    "1e400",
    "-1e400",
    "18446744073709551616",
    "-9223372036854775809",
    "9223372036854775808",
    "123456789012345678901234567890",
    "1.5",
    "10.0",
    "1E1",
    "-0.0",
    "1e-400",
    "0.1e1",
    "-1",
    "1000001",
    "4294967296",
    "-0",
];

fn pick<'a>(rng: &mut fastrand::Rng, from: &[&'a str]) -> &'a str {
    from[rng.usize(..from.len())]
}

fn number(rng: &mut fastrand::Rng) -> String {
    match rng.u8(..4) {
        0 => pick(rng, &ODD_NUMBERS).to_string(),
        1 => rng.i64(..).to_string(),
        _ => rng.i64(-5..150).to_string(),
    }
}

fn string(rng: &mut fastrand::Rng) -> String {
    let s = pick(rng, &["v1", "v2", "v3", "", "\\u0000", "\\ud800", "v1\\n", "é", "a\\\"b", "\\u0076\\u0032"]);
    format!("\"{s}\"")
}

/// Any JSON value, up to `depth` deep, with keys drawn from a small set so that a key comes
/// twice in one object now and then (and one is sometimes repeated on purpose).
fn value(rng: &mut fastrand::Rng, depth: u32) -> String {
    match rng.u8(..if depth == 0 { 5 } else { 8 }) {
        0 => "null".into(),
        1 => pick(rng, &["true", "false"]).into(),
        2 => number(rng),
        3 | 4 => string(rng),
        5 => {
            let items: Vec<String> = (0..rng.usize(..4)).map(|_| value(rng, depth - 1)).collect();
            format!("[{}]", items.join(","))
        }
        _ => object(rng, depth - 1, &KEYS),
    }
}

fn object(rng: &mut fastrand::Rng, depth: u32, keys: &[&str]) -> String {
    let mut entries: Vec<String> =
        (0..rng.usize(..5)).map(|_| format!("\"{}\":{}", pick(rng, keys), value(rng, depth))).collect();
    if !entries.is_empty() && rng.u8(..3) == 0 {
        let again = entries[rng.usize(..entries.len())].clone();
        entries.insert(rng.usize(..=entries.len()), again);
    }
    format!("{{{}}}", entries.join(","))
}

/// A body shaped like one the call takes, with odd values, repeated keys, wrong types.
fn shaped(rng: &mut fastrand::Rng, action: &str) -> String {
    let weight = |rng: &mut fastrand::Rng| if rng.u8(..3) == 0 { value(rng, 1) } else { number(rng) };
    let reason = |rng: &mut fastrand::Rng| match rng.u8(..4) {
        0 => format!(",\"reason\":{}", value(rng, 1)),
        1 => ",\"reason\":\"fuzz\"".to_string(),
        _ => String::new(),
    };
    let body = match action {
        "split" => {
            let mut entries: Vec<String> = (0..rng.usize(1..4))
                .map(|_| format!("\"{}\":{}", pick(rng, &["v1", "v2", "v3"]), weight(rng)))
                .collect();
            if rng.u8(..3) == 0 {
                let again = entries[rng.usize(..entries.len())].clone();
                entries.insert(rng.usize(..=entries.len()), again);
            }
            let weights = if rng.u8(..6) == 0 { value(rng, 2) } else { format!("{{{}}}", entries.join(",")) };
            format!("{{\"weights\":{weights}{}}}", reason(rng))
        }
        "promote" => {
            let v = if rng.bool() { string(rng) } else { value(rng, 2) };
            format!("{{\"version\":{v}{}}}", reason(rng))
        }
        _ => {
            let r = if rng.bool() { number(rng) } else { value(rng, 2) };
            format!("{{\"revision\":{r}{}}}", reason(rng))
        }
    };
    // The same fields as an array, or the body twice.
    match rng.u8(..10) {
        0 => format!("[{}]", body.trim_start_matches('{').trim_end_matches('}')),
        1 => format!("{body}{body}"),
        _ => body,
    }
}

/// Cuts, bad UTF-8, a byte-order mark, or nothing.
fn damaged(rng: &mut fastrand::Rng, body: String) -> Vec<u8> {
    let mut bytes = body.into_bytes();
    match rng.u8(..12) {
        0 if !bytes.is_empty() => bytes.truncate(rng.usize(..bytes.len())),
        1 => bytes.insert(rng.usize(..=bytes.len()), [0xff, 0xfe, 0x80, 0xc0][rng.usize(..4)]),
        2 => {
            let at = rng.usize(..=bytes.len());
            drop(bytes.splice(at..at, [0xc3, 0x28]));
        }
        3 => drop(bytes.splice(0..0, [0xef, 0xbb, 0xbf])),
        _ => {}
    }
    bytes
}

fn http_input(rng: &mut fastrand::Rng) -> Input {
    let action = pick(rng, &["split", "promote", "rollback"]);
    let allowed = if action == "split" { "PUT" } else { "POST" };
    let method = match rng.u8(..10) {
        0..=6 => allowed,
        _ => pick(rng, &["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"]),
    };
    let path = match rng.u8(..12) {
        0 => "/apps/nope/".to_string() + action,
        1 => "/apps/web".into(),
        2 => "/apps/web/history".into(),
        3 => pick(rng, &["/nope", "/apps", "/apps/web/split/x", "/reload", "//apps/web/split"]).into(),
        _ => format!("/apps/web/{action}"),
    };
    let content_type = match rng.u8(..10) {
        0 => None,
        1 => Some(pick(rng, &["text/plain", "application/x-www-form-urlencoded", "", "application/jsonx", "json"])),
        2 => Some(pick(rng, &["APPLICATION/JSON", "application/json; charset=utf-8", "application/json;"])),
        _ => Some("application/json"),
    }
    .map(str::to_string);
    let body = match rng.u8(..10) {
        0..=5 => shaped(rng, action),
        6..=8 => value(rng, 3),
        _ => String::new(),
    };
    Input::Http { method: method.into(), path, content_type, body: damaged(rng, body), must_refuse: false }
}

/// Plan steps, each with whether Weir must take it.
const STEPS: [(&str, bool); 21] = [
    (r#"{"set_weight":20}"#, true),
    (r#"{"set_weight":100}"#, true),
    (r#"{"pause":"manual"}"#, true),
    (r#"{"pause":"1h"}"#, true),
    (r#"{"analyze":"1m"}"#, true),
    (r#"[20]"#, false),
    (r#"["1h"]"#, false),
    (r#"{"set_weight":20,"junk":1}"#, false),
    (r#"{"set_weight":20,"pause":"1s"}"#, false),
    (r#"{"weight":20}"#, false),
    (r#"{}"#, false),
    (r#"{"set_weight":101}"#, false),
    (r#"{"set_weight":-1}"#, false),
    (r#"{"set_weight":"20"}"#, false),
    (r#"{"set_weight":20.5}"#, false),
    (r#"{"set_weight":1e400}"#, false),
    (r#"{"pause":"soon"}"#, false),
    (r#"{"analyze":60}"#, false),
    (r#"{"set_weight":20,"set_weight":30}"#, false),
    ("null", false),
    ("20", false),
];

/// `POST /apps/web/rollouts` with a plan of steps drawn from [`STEPS`] (or a name), some
/// malformed: a body with a malformed step must be refused, whatever else it holds.
fn rollout_input(rng: &mut fastrand::Rng) -> Input {
    let canary = pick(rng, &["\"v2\"", "\"v2\"", "\"v2\"", "\"v1\"", "\"v3\"", "2", "[\"v2\"]"]);
    let stable = match rng.u8(..4) {
        0 => String::new(),
        _ => format!(",\"stable\":{}", pick(rng, &["\"v1\"", "\"v1\"", "\"v2\"", "null", "\"v9\""])),
    };
    let mut must_refuse = false;
    let plan = match rng.u8(..8) {
        0 => ",\"plan\":\"canary\"".to_string(),
        1 => format!(",\"plan\":{}", pick(rng, &["\"nope\"", "{}", "7", "[]", "[[]]"])),
        _ => {
            let steps: Vec<&str> = (0..rng.usize(1..5))
                .map(|_| {
                    let (step, good) = STEPS[rng.usize(..STEPS.len())];
                    must_refuse |= !good;
                    step
                })
                .collect();
            format!(",\"plan\":[{}]", steps.join(","))
        }
    };
    let extra = if rng.u8(..8) == 0 { ",\"junk\":1" } else { "" };
    let body = format!("{{\"canary\":{canary}{stable}{plan}{extra}}}");
    Input::Http {
        method: "POST".into(),
        path: "/apps/web/rollouts".into(),
        content_type: Some("application/json".into()),
        body: body.into_bytes(),
        must_refuse,
    }
}

/// A raw `PUT /apps/web/split` that would change the weights if it were accepted, broken in
/// one way the HTTP layer must refuse (or, for a few, in a way it may take).
fn raw_input(rng: &mut fastrand::Rng) -> Input {
    let v1 = rng.u32(0..100);
    let body = format!("{{\"weights\":{{\"v1\":{v1},\"v2\":{}}}}}", 100 - v1);
    let cl = body.len();
    let head = |target: &str, version: &str, fields: &str| {
        format!("PUT {target} {version}\r\nHost: admin\r\nContent-Type: application/json\r\n{fields}\r\n")
    };
    let split = "/apps/web/split";
    let with = |fields: String| head(split, "HTTP/1.1", &fields) + &body;
    let many: String = (0..rng.usize(101..140)).map(|i| format!("X-F{i}: {i}\r\n")).collect();
    let (what, bytes, refuse): (&str, String, bool) = match rng.u8(..30) {
        0 => ("NUL in a value", with(format!("X-A: a\0b\r\nContent-Length: {cl}\r\n")), true),
        1 => (
            "NUL in the target",
            head("/apps/web/split\0", "HTTP/1.1", &format!("Content-Length: {cl}\r\n")) + &body,
            true,
        ),
        2 => ("NUL in a name", with(format!("X-\0A: 1\r\nContent-Length: {cl}\r\n")), true),
        3 => {
            let uri = format!("{split}?{}", "a".repeat(rng.usize(64 * 1024..80 * 1024)));
            ("a long URI", head(&uri, "HTTP/1.1", &format!("Content-Length: {cl}\r\n")) + &body, true)
        }
        4 => (
            "a long head",
            with(format!("X-Big: {}\r\nContent-Length: {cl}\r\n", "b".repeat(rng.usize(64 * 1024..90 * 1024)))),
            true,
        ),
        5 => ("too many fields", with(format!("{many}Content-Length: {cl}\r\n")), true),
        6 => {
            let v = pick(rng, &["abc", "-1", "+28", "0x1c", "", " ", "99999999999999999999", "28 28", "1e2", "28,28"]);
            ("a bad Content-Length", with(format!("Content-Length: {v}\r\n")), true)
        }
        7 => ("two equal Content-Length", with(format!("Content-Length: {cl}\r\nContent-Length: {cl}\r\n")), true),
        8 => ("two Content-Length", with(format!("Content-Length: {cl}\r\nContent-Length: {}\r\n", cl + 1)), true),
        9 => (
            "Content-Length and Transfer-Encoding",
            with(format!("Content-Length: {cl}\r\nTransfer-Encoding: chunked\r\n")),
            true,
        ),
        10 => (
            "Transfer-Encoding and Content-Length",
            with(format!("Transfer-Encoding: chunked\r\nContent-Length: {cl}\r\n")),
            true,
        ),
        11 => {
            let te = pick(rng, &["gzip", "chunked, gzip", "xchunked", "identity", "gzip, chunked", "chunked;q=1"]);
            ("an unsupported transfer coding", with(format!("Transfer-Encoding: {te}\r\n")), true)
        }
        12 => {
            ("two Transfer-Encoding", with("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n".into()), true)
        }
        13 => {
            ("Transfer-Encoding in HTTP/1.0", head(split, "HTTP/1.0", "Transfer-Encoding: chunked\r\n") + &body, true)
        }
        14 => ("a space before a colon", with(format!("Content-Length : {cl}\r\n")), true),
        15 => ("obs-fold", with(format!("X-A: 1\r\n 2\r\nContent-Length: {cl}\r\n")), true),
        16 => ("a bare CR", with(format!("X-A: 1\r2\r\nContent-Length: {cl}\r\n")), true),
        17 => ("two Host fields", with(format!("Host: b\r\nContent-Length: {cl}\r\n")), true),
        18 => ("Content_Length", with(format!("Content_Length: {cl}\r\nContent-Length: {cl}\r\n")), true),
        19 => (
            "Connection lists Content-Length",
            with(format!("Connection: content-length\r\nContent-Length: {cl}\r\n")),
            true,
        ),
        20 => {
            let version = pick(rng, &["HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/1.1 x"]);
            ("a bad version", head(split, version, &format!("Content-Length: {cl}\r\n")) + &body, true)
        }
        21 => (
            "a target hyper cannot parse",
            head(
                pick(rng, &["/apps/web/split<", "/apps/web/split?\"", "/apps/web/`"]),
                "HTTP/1.1",
                &format!("Content-Length: {cl}\r\n"),
            ) + &body,
            true,
        ),
        22 => (
            "userinfo in the target",
            head("http://u:p@admin/apps/web/split", "HTTP/1.1", &format!("Content-Length: {cl}\r\n")) + &body,
            true,
        ),
        23 => ("CONNECT", "CONNECT admin:443 HTTP/1.1\r\nHost: admin:443\r\n\r\n".into(), true),
        24 => {
            let junk: String = (0..rng.usize(1..200)).map(|_| char::from(rng.u8(..128))).collect();
            ("random bytes then an end of head", format!("{junk}\r\n\r\n"), true)
        }
        25 => ("an invalid Host", with(format!("Host: a b\r\nContent-Length: {cl}\r\n")), true),
        26 => {
            // A good request, then a bad one on the same connection (read by whichever path).
            let first = format!(
                "GET /live HTTP/1.1\r\nHost: a\r\n\r\n{}",
                with(format!("Content-Length: {cl}\r\nContent-Length: {cl}\r\n"))
            );
            ("pipelined behind a good request", first, true)
        }
        27 => (
            "a bad chunk size",
            with("Transfer-Encoding: chunked\r\n".into()).replace(&body, &format!("zz\r\n{body}\r\n0\r\n\r\n")),
            true,
        ),
        // Sound, but unusual: taken (the change applies) or refused, either in JSON.
        28 => ("bare LF line ends", with(format!("Content-Length: {cl}\r\n")).replace("\r\n", "\n"), false),
        _ => (
            "absolute-form",
            head("http://admin/apps/web/split", "HTTP/1.1", &format!("Content-Length: {cl}\r\n")) + &body,
            false,
        ),
    };
    Input::Raw { what: what.into(), bytes: bytes.into_bytes(), refuse }
}

/// What one input got: accepted (2xx, state may change), or refused in the JSON shape.
enum Outcome {
    Accepted,
    Refused(u16),
}

async fn send(admin: &str, addr: SocketAddr, input: &Input) -> Result<Outcome, String> {
    match input {
        Input::Http { method, path, content_type, body, must_refuse } => {
            // A connection of its own: a refused or unread body closes it.
            let client = Client::new();
            let mut b = Request::builder().method(method.as_str()).uri(format!("{admin}{path}"));
            if let Some(ct) = content_type {
                b = b.header("content-type", ct);
            }
            let r = client.send(b.body(Full::new(Bytes::from(body.clone()))).unwrap()).await?;
            if r.status.is_success() {
                if *must_refuse {
                    return Err(format!("a malformed body was taken: {} {}", r.status, r.body));
                }
                return Ok(Outcome::Accepted);
            }
            let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok());
            error_shape(r.status.as_u16(), ct, r.body.as_bytes())?;
            Ok(Outcome::Refused(r.status.as_u16()))
        }
        Input::Raw { bytes, refuse, .. } => {
            let mut c = RawConn::connect(addr).await;
            c.send_in_background(bytes.clone());
            // A pipelined case answers the good request first.
            let mut r = c.response(false, Duration::from_secs(5)).await.map_err(|e| format!("no answer: {e:?}"))?;
            if r.status == 200 && r.body_str() == "live\n" {
                r = c.response(false, Duration::from_secs(5)).await.map_err(|e| format!("no second answer: {e:?}"))?;
            }
            if (200..300).contains(&r.status) && !refuse {
                return Ok(Outcome::Accepted);
            }
            raw_shape(&r)?;
            Ok(Outcome::Refused(r.status))
        }
    }
}

/// Requests whose body never arrives whole: each must be answered (in JSON) or closed within
/// the admin deadline. Returns how many were answered and how many closed.
async fn truncated(addr: SocketAddr, mut rng: fastrand::Rng, n: usize) -> Result<(usize, usize), String> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let action = pick(&mut rng, &["split", "promote", "rollback"]);
            let method = if action == "split" { "PUT" } else { "POST" };
            let body = r#"{"weights":{"v1":1,"v2":99},"version":"v2","revision":1}"#;
            let sent = &body[..rng.usize(..body.len())];
            let bytes = if rng.bool() {
                let declared = body.len() + rng.usize(1..100_000);
                format!("{method} /apps/web/{action} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{sent}")
            } else {
                format!("{method} /apps/web/{action} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{sent}", body.len())
            };
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let mut c = RawConn::connect(addr).await;
                c.send_in_background(bytes.clone().into_bytes());
                let got = c.response(false, DEADLINE + Duration::from_secs(3)).await;
                let took = start.elapsed();
                let what = format!("{bytes:?} ({took:?})");
                if took > DEADLINE + Duration::from_secs(2) {
                    return Err(format!("held past the deadline: {what}"));
                }
                match got {
                    Ok(r) => raw_shape(&r).map(|_| true).map_err(|e| format!("{e}: {what}")),
                    Err(common::recorder::End::Closed) => Ok(false),
                    Err(end) => Err(format!("{end:?}: {what}")),
                }
            })
        })
        .collect();
    let (mut answered, mut closed) = (0, 0);
    for t in tasks {
        if t.await.unwrap()? {
            answered += 1;
        } else {
            closed += 1;
        }
    }
    Ok((answered, closed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_refusals_are_json_and_change_nothing() {
    let seed = std::env::var("WEIR_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let cases: usize = std::env::var("WEIR_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    let mut rng = fastrand::Rng::with_seed(seed);
    let (weir, _b) = two_versions(90, 10).await;
    let (_, admin) = urls(&weir);
    let client = Client::new();
    // A second revision, so that a rollback can change something.
    client.call("PUT", &format!("{admin}/apps/web/split"), r#"{"weights":{"v1":50,"v2":50}}"#).await;
    // Bodies that never arrive whole, alongside the rest.
    let slow = tokio::spawn(truncated(weir.admin, fastrand::Rng::with_seed(seed ^ 1), 8));

    let mut state_now = state(&client, &admin, &weir).await;
    let (mut accepted, mut changes, mut statuses) = (0, 0, std::collections::BTreeMap::<u16, usize>::new());
    let mut rollouts = 0;
    let mut failures = Vec::new();
    for i in 0..cases {
        let input = match rng.u8(..12) {
            0..=3 => raw_input(&mut rng),
            4..=5 => rollout_input(&mut rng),
            _ => http_input(&mut rng),
        };
        let show = || match &input {
            Input::Http { method, path, content_type, body, .. } => {
                format!("#{i} {method} {path} {content_type:?} {:?}", String::from_utf8_lossy(body))
            }
            Input::Raw { what, bytes, .. } => {
                let b = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                format!("#{i} raw, {what}: {b:?}")
            }
        };
        match send(&admin, weir.admin, &input).await {
            Ok(Outcome::Accepted) => {
                accepted += 1;
                if matches!(&input, Input::Http { path, .. } if path.ends_with("/rollouts")) {
                    // A rollout started: stop it, so that the state holds still again.
                    // (A plan of weights alone may already have finished: nothing to abort.)
                    let r = client.call("POST", &format!("{admin}/apps/web/rollout/abort"), "").await;
                    if r.status != 200 {
                        let now = client.get(&format!("{admin}/apps/web/rollout")).await.json();
                        assert!(r.status == 409 && now["phase"] == "succeeded", "abort: {} (rollout: {now})", r.body);
                    }
                    rollouts += 1;
                }
                state_now = state(&client, &admin, &weir).await;
            }
            Ok(Outcome::Refused(status)) => {
                *statuses.entry(status).or_default() += 1;
                let after = state(&client, &admin, &weir).await;
                if after != state_now {
                    changes += 1;
                    failures.push(format!("{} was refused ({status}) but changed {state_now:?} to {after:?}", show()));
                    state_now = after;
                }
            }
            Err(e) => failures.push(format!("{}: {e}", show())),
        }
    }
    let (answered, closed) = slow.await.unwrap().unwrap_or_else(|e| {
        failures.push(format!("truncated body: {e}"));
        (0, 0)
    });
    if state(&client, &admin, &weir).await != state_now {
        changes += 1;
        failures.push("a truncated body changed something".into());
    }
    let refused: usize = statuses.values().sum();
    println!(
        "seed {seed}: {cases} cases, {accepted} accepted, {refused} refused in the JSON shape {statuses:?}, \
         {changes} changes by refusals; {rollouts} rollouts started (and aborted); 8 truncated bodies: \
         {answered} answered in JSON, {closed} closed"
    );
    assert!(failures.is_empty(), "seed {seed}: {} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(refused > cases / 2, "seed {seed}: only {refused} of {cases} refused: the generator lost its edge");
    assert!(rollouts > 0 || seed != 12, "seed 12 starts rollouts: none was taken");
    weir.shutdown().await;
}
