//! One behaviour, two codecs: the same valid requests through Weir with `fast_path = true`
//! and with `fast_path = false`, each to its own recording upstream, must reach the upstream
//! the same way (method, target, version, every header with its multiplicity, body) and give
//! the client the same response (status, headers except `Date`, body).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::recorder::{Path, RawConn, Recorded, Recorder, Resp, weir_config};

/// (label, is HEAD, request bytes). Sent in order on one keep-alive connection, one at a time.
fn requests() -> Vec<(&'static str, bool, String)> {
    let long = "v".repeat(6000);
    vec![
        ("GET with a query", false, "GET /search?q=a%20b&lang=en&x= HTTP/1.1\r\nHost: app.local\r\nUser-Agent: eq/1\r\nAccept: */*\r\n\r\n".into()),
        ("HEAD", true, "HEAD /page HTTP/1.1\r\nHost: app.local\r\n\r\n".into()),
        (
            "POST with a small body",
            false,
            "POST /form HTTP/1.1\r\nHost: app.local\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\r\na=1&b=hello".into(),
        ),
        (
            "PUT JSON",
            false,
            "PUT /items/42 HTTP/1.1\r\nHost: app.local\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"name\":\"x\"}\n".into(),
        ),
        ("DELETE", false, "DELETE /items/42 HTTP/1.1\r\nHost: app.local\r\nAuthorization: Bearer abc\r\n\r\n".into()),
        ("OPTIONS", false, "OPTIONS /items HTTP/1.1\r\nHost: app.local\r\nOrigin: https://example.com\r\nAccess-Control-Request-Method: PUT\r\n\r\n".into()),
        (
            "X-Forwarded-For chain",
            false,
            "GET /xff HTTP/1.1\r\nHost: app.local\r\nX-Forwarded-For: 203.0.113.1, 198.51.100.2\r\nX-Forwarded-For: 192.0.2.3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: front.example\r\nForwarded: for=203.0.113.1\r\n\r\n".into(),
        ),
        (
            "Connection: keep-alive + a listed header",
            false,
            "GET /conn HTTP/1.1\r\nHost: app.local\r\nConnection: keep-alive, X-Hop\r\nX-Hop: drop-me\r\nKeep-Alive: timeout=5\r\nX-Keep: yes\r\nTE: trailers\r\n\r\n".into(),
        ),
        (
            "repeated fields",
            false,
            "GET /multi HTTP/1.1\r\nHost: app.local\r\nAccept: text/html\r\nAccept: application/json\r\nCookie: a=1\r\nCookie: b=2\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n".into(),
        ),
        ("percent-encoded path", false, "GET /p%C3%A4th/%2e%2e/x%2Fy;p=1?x=%41&y=%2F HTTP/1.1\r\nHost: app.local\r\n\r\n".into()),
        ("long header value", false, format!("GET /long HTTP/1.1\r\nHost: app.local\r\nX-Long: {long}\r\nCookie: {long}\r\n\r\n")),
        (
            "odd-but-valid field syntax",
            false,
            "GET /fields HTTP/1.1\r\nhost: App.Local\r\nX-Empty:\r\nX-Tab:\tv\t\r\nX-Mixed-CASE: Value With  Spaces\r\nContent-Length: 0\r\n\r\n".into(),
        ),
        ("POST without a body", false, "POST /empty HTTP/1.1\r\nHost: app.local\r\nContent-Length: 0\r\n\r\n".into()),
        ("GET asking to close", false, "GET /bye HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n".into()),
    ]
}

/// Everything one path produced for one request.
struct Outcome {
    upstream: Option<Recorded>,
    response: Result<Resp, String>,
}

async fn run(path: Path) -> Vec<Outcome> {
    let up = Recorder::spawn().await;
    let weir = common::start(&weir_config(up.addr, path)).await;
    let addr = weir.listeners["main"];
    let mut conn = RawConn::connect(addr).await;
    let mut out = Vec::new();
    for (i, (label, head, bytes)) in requests().into_iter().enumerate() {
        let before = up.requests().len();
        let response = match conn.send(bytes.as_bytes()).await {
            Ok(()) => conn.response(head, Duration::from_secs(3)).await.map_err(|e| format!("{e:?}")),
            Err(e) => Err(format!("write failed: {e}")),
        };
        // A connection Weir closed (it may, after an error) is replaced for the next request.
        if response.is_err() || response.as_ref().is_ok_and(|r| r.values("connection").contains(&"close")) {
            conn = RawConn::connect(addr).await;
        }
        let seen = up.settled().await.split_off(before);
        assert!(seen.len() <= 1, "{path:?} request {i} ({label}) reached the upstream {} times", seen.len());
        out.push(Outcome { upstream: seen.into_iter().next(), response });
    }
    weir.shutdown().await;
    out
}

/// Header lines as a multiset: lowercase name → sorted values (the addresses of this run
/// replaced, so two runs compare).
fn fields(headers: &[(String, String)], skip: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, v) in headers {
        let n = n.to_ascii_lowercase();
        if !skip.contains(&n.as_str()) {
            m.entry(n).or_default().push(v.clone());
        }
    }
    for v in m.values_mut() {
        v.sort();
    }
    m
}

fn diff_fields(
    what: &str,
    a: &BTreeMap<String, Vec<String>>,
    b: &BTreeMap<String, Vec<String>>,
    out: &mut Vec<String>,
) {
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for n in names {
        let (va, vb) = (a.get(n), b.get(n));
        if va != vb {
            let show = |v: Option<&Vec<String>>| {
                v.map(|v| v.iter().map(|x| common::recorder::preview(x.as_bytes())).collect::<Vec<_>>())
            };
            out.push(format!("{what} header {n}: fast {:?} / general {:?}", show(va), show(vb)));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_and_general_paths_forward_and_answer_the_same() {
    let fast = run(Path::Fast).await;
    let general = run(Path::General).await;
    let mut report = Vec::new();
    for (i, ((label, _, bytes), (f, g))) in requests().iter().zip(fast.iter().zip(&general)).enumerate() {
        let mut d = Vec::new();
        match (&f.upstream, &g.upstream) {
            (Some(a), Some(b)) => {
                for (what, x, y) in [
                    ("method", &a.method, &b.method),
                    ("target", &a.target, &b.target),
                    ("version", &a.version, &b.version),
                ] {
                    if x != y {
                        d.push(format!("upstream {what}: fast {x:?} / general {y:?}"));
                    }
                }
                if a.body != b.body || a.complete != b.complete || a.malformed != b.malformed {
                    d.push(format!("upstream body/state: fast {a} / general {b}"));
                }
                diff_fields("upstream", &fields(&a.headers, &[]), &fields(&b.headers, &[]), &mut d);
            }
            (a, b) => {
                if a.is_some() != b.is_some() {
                    d.push(format!(
                        "upstream: fast {:?} / general {:?}",
                        a.as_ref().map(|r| r.to_string()),
                        b.as_ref().map(|r| r.to_string())
                    ));
                }
            }
        }
        match (&f.response, &g.response) {
            (Ok(a), Ok(b)) => {
                if (a.version.as_str(), a.status, &a.body) != (b.version.as_str(), b.status, &b.body) {
                    d.push(format!("response: fast {a} / general {b}"));
                }
                diff_fields("response", &fields(&a.headers, &["date"]), &fields(&b.headers, &["date"]), &mut d);
            }
            (a, b) => {
                let show = |r: &Result<Resp, String>| match r {
                    Ok(r) => r.to_string(),
                    Err(e) => e.clone(),
                };
                if a.is_ok() != b.is_ok() || a.is_err() {
                    d.push(format!("response: fast {} / general {}", show(a), show(b)));
                }
            }
        }
        if !d.is_empty() {
            let first = bytes.lines().next().unwrap_or_default();
            report.push(format!("request {i} ({label}: {first}):\n    {}", d.join("\n    ")));
        }
    }
    assert!(
        report.is_empty(),
        "the two paths differ on {} of {} requests:\n{}",
        report.len(),
        fast.len(),
        report.join("\n")
    );
}
