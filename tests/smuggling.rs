//! Request smuggling and request-side framing, cases R1–R18 of the framing policy
//! (notes/framing-spec.md), on raw sockets, once with the default listener (fast path) and
//! once with `fast_path = false` (every request through hyper): `fast::rN_…` and
//! `general::rN_…`.
//!
//! Each case asserts (a) the statuses the client got, (b) whether Weir closed the connection,
//! and (c) what a recording upstream with its own strict parser saw: nothing for a rejected
//! request, never a `/smuggled` target, and exactly the requests the client meant otherwise.
//! Most cases end their bytes with a pipelined `GET /next … Connection: close`: it must be
//! answered correctly, or — when the connection is to close — not at all.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::recorder::{
    Checks, Exchange, Path, RawConn, Recorded, Recorder, both_paths, exchange, list, weir_config_with,
};
use tokio::io::AsyncWriteExt;

const NEXT: &str = "GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// Weir in front of one recording upstream.
struct Rig {
    weir: weir::Running,
    up: Recorder,
    addr: SocketAddr,
    path: Path,
}

async fn rig(path: Path) -> Rig {
    rig_with(path, "500ms").await
}

async fn rig_with(path: Path, request_timeout: &str) -> Rig {
    let up = Recorder::spawn().await;
    let weir = common::start(&weir_config_with(up.addr, path, request_timeout)).await;
    let addr = weir.listeners["main"];
    Rig { weir, up, addr, path }
}

impl Rig {
    /// Each request (plus a pipelined `NEXT`) must get exactly one response with a status in
    /// `statuses`, then the connection closes, and the upstream sees nothing at all.
    async fn rejects(&self, case: &str, variants: &[(&str, Vec<u8>)], statuses: &[u16], checks: &mut Checks) {
        for (label, bytes) in variants {
            let before = self.up.requests().len();
            let mut all = bytes.clone();
            all.extend_from_slice(NEXT.as_bytes());
            let ex = exchange(self.addr, &all).await;
            let seen = self.up.settled().await.split_off(before);
            let what = || {
                format!(
                    "{case} {:?} [{label}] sent {:?}:{ex}\n  upstream saw:{}",
                    self.path,
                    preview(bytes),
                    list(&seen)
                )
            };
            checks.check(ex.responses.len() == 1 && statuses.contains(&ex.responses[0].status), || {
                format!("(a) want exactly one response, status in {statuses:?}, got {:?}", ex.statuses())
            });
            checks.check(ex.closed(), || "(b) want the connection closed".to_string());
            checks.check(seen.is_empty(), || "(c) want nothing upstream".to_string());
            checks.context(what);
        }
    }

    /// The requests (`bytes` then a pipelined `NEXT`) are all answered 200 by the upstream, in
    /// order, the connection closes after `NEXT`, and the upstream saw `want` then `/next`.
    async fn accepts(
        &self,
        case: &str,
        label: &str,
        bytes: &[u8],
        want: &[(&str, &str, &[u8])],
        checks: &mut Checks,
    ) -> Vec<Recorded> {
        let before = self.up.requests().len();
        let mut all = bytes.to_vec();
        all.extend_from_slice(NEXT.as_bytes());
        let ex = exchange(self.addr, &all).await;
        let seen = self.up.settled().await.split_off(before);
        let what = || {
            format!("{case} {:?} [{label}] sent {:?}:{ex}\n  upstream saw:{}", self.path, preview(bytes), list(&seen))
        };
        let mut targets: Vec<&str> = want.iter().map(|w| w.1).collect();
        targets.push("/next");
        let got: Vec<String> =
            ex.responses.iter().map(|r| format!("{} {}", r.status, strip_n(&r.body_str()))).collect();
        let expect: Vec<String> = targets.iter().map(|t| format!("200 {t}\n")).collect();
        checks.check(got == expect, || format!("(a) want responses {expect:?}, got {got:?}"));
        checks.check(ex.closed(), || "(b) want the connection closed after /next".to_string());
        let shape: Vec<(String, String, Vec<u8>, bool)> = seen
            .iter()
            .map(|r| (r.method.clone(), r.target.clone(), r.body.clone(), r.complete && r.malformed.is_none()))
            .collect();
        let mut want_shape: Vec<(String, String, Vec<u8>, bool)> =
            want.iter().map(|(m, t, b)| (m.to_string(), t.to_string(), b.to_vec(), true)).collect();
        want_shape.push(("GET".into(), "/next".into(), Vec::new(), true));
        checks.check(shape == want_shape, || {
            format!("(c) want upstream to see exactly {want:?} + GET /next, well-formed")
        });
        checks.context(what);
        seen
    }
}

/// `req 7 /a\n` → `/a\n`: the target the upstream answered for.
fn strip_n(body: &str) -> String {
    body.strip_prefix("req ")
        .and_then(|b| b.split_once(' '))
        .map(|(_, t)| t.to_string())
        .unwrap_or_else(|| body.to_string())
}

fn preview(b: &[u8]) -> String {
    common::recorder::preview(b)
}

fn post(target: &str, fields: &str, body: &str) -> Vec<u8> {
    format!("POST {target} HTTP/1.1\r\nHost: a\r\n{fields}\r\n{body}").into_bytes()
}

fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

/// No `/smuggled` target anywhere upstream.
fn no_smuggled(seen: &[Recorded]) -> bool {
    !seen.iter().any(|r| r.target.contains("smuggled"))
}

both_paths!(
    r01_cl_te,
    r02_te_cl,
    r03_transfer_encoding_other_than_chunked,
    r04_bad_content_length,
    r05_connection_lists_framing_or_host,
    r06_chunked_body_abuse,
    r07_bare_lf_accepted_bare_cr_rejected,
    r08_obs_fold,
    r09_ctl_in_value_or_target,
    r10_absolute_form_wins_over_host,
    r11_host_count,
    r12_http10_with_transfer_encoding,
    r13_pipelining_across_paths,
    r14_early_answer_to_an_unread_body,
    r15_slowloris,
    r16_slow_reader,
    r17_head_limits,
    r18_slow_body,
    r19_request_target_forms,
);

async fn r01_cl_te(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let full = post("/r1", &format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", body.len()), &body);
    // The same with a CL covering only the last chunk: a TE-reading peer would see the smuggled request.
    let short = post("/r1", "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", &body);
    rig.rejects("R1", &[("CL covers all", full), ("CL short", short)], &[400], &mut c).await;
    rig.weir.shutdown().await;
    c.finish("R1");
}

async fn r02_te_cl(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    // A CL-reading peer takes only the first chunk-size line as the body; the chunk data is a
    // whole request to it.
    let body = format!("{}0\r\n\r\n", chunk(SMUGGLED));
    let size_line = format!("{:x}\r\n", SMUGGLED.len()).len();
    let te_cl = post("/r2", &format!("Transfer-Encoding: chunked\r\nContent-Length: {size_line}\r\n"), &body);
    rig.rejects("R2", &[("TE then CL", te_cl)], &[400], &mut c).await;
    rig.weir.shutdown().await;
    c.finish("R2");
}

async fn r03_transfer_encoding_other_than_chunked(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let body = format!("{}0\r\n\r\n", chunk("hello"));
    let v = |te: &str| post("/r3", &format!("{te}\r\n"), &body);
    let variants = [
        ("xchunked", v("Transfer-Encoding: xchunked")),
        ("chunked, identity", v("Transfer-Encoding: chunked, identity")),
        ("identity", v("Transfer-Encoding: identity")),
        ("gzip, chunked", v("Transfer-Encoding: gzip, chunked")),
        ("two TE lines chunked+chunked", v("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked")),
        ("two TE lines gzip+chunked", v("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked")),
    ];
    rig.rejects("R3", &variants, &[400, 501], &mut c).await;
    rig.rejects("R3", &[("space before colon", v("Transfer-Encoding : chunked"))], &[400], &mut c).await;
    rig.weir.shutdown().await;
    c.finish("R3");
}

async fn r04_bad_content_length(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let v = |cl: &str| post("/r4", &format!("{cl}\r\n"), &format!("hello{SMUGGLED}"));
    let variants = [
        ("two equal fields", v("Content-Length: 5\r\nContent-Length: 5")),
        ("two fields 5/41", v(&format!("Content-Length: 5\r\nContent-Length: {}", 5 + SMUGGLED.len()))),
        ("list 5, 5", v("Content-Length: 5, 5")),
        ("+5", v("Content-Length: +5")),
        ("-1", v("Content-Length: -1")),
        ("0x5", v("Content-Length: 0x5")),
        ("5 5", v("Content-Length: 5 5")),
        ("21 digits, value 5", v("Content-Length: 000000000000000000005")),
        ("20 digits, overflow", v("Content-Length: 99999999999999999999")),
    ];
    rig.rejects("R4", &variants, &[400], &mut c).await;
    // OWS around a valid value is fine.
    let ok = post("/r4ok", "Content-Length:  5 \r\n", "hello");
    let seen = rig.accepts("R4", "OWS around 5", &ok, &[("POST", "/r4ok", b"hello")], &mut c).await;
    c.check(seen.first().is_none_or(|r| r.values("content-length") == ["5"]), || {
        format!("R4 {path:?} OWS: want upstream Content-Length [\"5\"]:{}", list(&seen))
    });
    rig.weir.shutdown().await;
    c.finish("R4");
}

async fn r05_connection_lists_framing_or_host(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let chunked = format!("{}0\r\n\r\n", chunk("hello"));
    let variants = [
        ("content-length", post("/r5", "Connection: content-length\r\nContent-Length: 5\r\n", "hello")),
        ("x-foo, Content-LENGTH", post("/r5", "Connection: x-foo, Content-LENGTH\r\nContent-Length: 5\r\n", "hello")),
        (
            "keep-alive, Transfer-Encoding",
            post("/r5", "Connection: keep-alive, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n", &chunked),
        ),
        ("close, HOST (GET)", b"GET /r5 HTTP/1.1\r\nHost: a\r\nConnection: close, HOST\r\n\r\n".to_vec()),
        (
            "host in a second Connection line",
            b"GET /r5 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: host\r\n\r\n".to_vec(),
        ),
    ];
    rig.rejects("R5", &variants, &[400], &mut c).await;
    rig.weir.shutdown().await;
    c.finish("R5");
}

async fn r06_chunked_body_abuse(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    // hyper bounds chunk extensions at 16 KiB per body (Weir's own scanner, on the response
    // side, at 4 KiB per extension): a longer one is refused.
    let ext = "a".repeat(20 * 1024);
    let variants: Vec<(&str, String)> = vec![
        ("17 hex digits (overflow to 5)", format!("10000000000000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        ("-5", format!("-5\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        ("0x5", format!("0x5\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        ("junk after size", format!("5 junk\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        ("no CRLF after chunk data", format!("5\r\nhelloXX0\r\n\r\n{SMUGGLED}")),
        ("extension > 16 KiB", format!("5;{ext}\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
    ];
    for (label, body) in variants {
        let before = rig.up.requests().len();
        let mut bytes = post("/r6", "Transfer-Encoding: chunked\r\n", &body);
        bytes.extend_from_slice(NEXT.as_bytes());
        let ex = exchange(rig.addr, &bytes).await;
        let seen = rig.up.settled().await.split_off(before);
        let what = || format!("R6 {path:?} [{label}]:{ex}\n  upstream saw:{}", list(&seen));
        c.check(ex.closed(), || "(b) want the connection closed".to_string());
        c.check(ex.statuses().is_empty() || ex.statuses() == [400], || "(a) want no response or one 400".to_string());
        c.check(no_smuggled(&seen), || "(c) /smuggled reached the upstream".to_string());
        c.check(!seen.iter().any(|r| r.complete && r.path() != "/r6"), || {
            "(c) a complete request other than /r6 reached the upstream".to_string()
        });
        c.check(!seen.iter().any(|r| r.path() == "/r6" && r.complete), || {
            "(c) the upstream got /r6 complete (the bad body passed as a good one)".to_string()
        });
        c.context(what);
    }
    rig.weir.shutdown().await;
    c.finish("R6");
}

async fn r07_bare_lf_accepted_bare_cr_rejected(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let seen = rig
        .accepts("R7", "bare LF GET", b"GET /r7 HTTP/1.1\nHost: a\nX-A: 1\n\n", &[("GET", "/r7", b"")], &mut c)
        .await;
    c.check(seen.first().is_some_and(|r| r.values("x-a") == ["1"]), || {
        format!("R7 {path:?}: X-A not forwarded:{}", list(&seen))
    });
    rig.accepts(
        "R7",
        "bare LF POST with a body",
        b"POST /r7b HTTP/1.1\nHost: a\nContent-Length: 5\n\nhello",
        &[("POST", "/r7b", b"hello")],
        &mut c,
    )
    .await;
    rig.accepts(
        "R7",
        "mixed CRLF and LF",
        b"GET /r7c HTTP/1.1\r\nHost: a\nX-A: 1\r\n\n",
        &[("GET", "/r7c", b"")],
        &mut c,
    )
    .await;
    let variants = [
        ("bare CR between fields", b"GET /r7 HTTP/1.1\r\nHost: a\r\nX-A: 1\rX-B: 2\r\n\r\n".to_vec()),
        ("bare CR inside a value", b"GET /r7 HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n".to_vec()),
        ("bare CR ending the request line", b"GET /r7 HTTP/1.1\rHost: a\r\n\r\n".to_vec()),
    ];
    rig.rejects("R7", &variants, &[400], &mut c).await;
    rig.weir.shutdown().await;
    c.finish("R7");
}

async fn r08_obs_fold(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let variants = [
        ("SP fold", b"GET /r8 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n".to_vec()),
        ("HTAB fold", b"GET /r8 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tfolded\r\n\r\n".to_vec()),
        ("fold right after the request line", b"GET /r8 HTTP/1.1\r\n X-A: 1\r\nHost: a\r\n\r\n".to_vec()),
        ("folded Content-Length", post("/r8", "Content-Length:\r\n 5\r\n", "hello")),
    ];
    rig.rejects("R8", &variants, &[400], &mut c).await;
    rig.weir.shutdown().await;
    c.finish("R8");
}

async fn r09_ctl_in_value_or_target(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let variants = [
        ("NUL in a value", b"GET /r9 HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n".to_vec()),
        ("0x01 in a value", b"GET /r9 HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n".to_vec()),
        ("DEL in a value", b"GET /r9 HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n".to_vec()),
        ("NUL in the target", b"GET /r9\0x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("0x01 in the target", b"GET /r9\x01x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("NUL in Host", b"GET /r9 HTTP/1.1\r\nHost: a\0b\r\n\r\n".to_vec()),
    ];
    rig.rejects("R9", &variants, &[400], &mut c).await;
    rig.weir.shutdown().await;
    c.finish("R9");
}

async fn r10_absolute_form_wins_over_host(path: Path) {
    // Two apps: `web` for app.local, `other` the default one.
    let (app, other) = (Recorder::spawn().await, Recorder::spawn().await);
    let text = format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\n\
         [apps.web]\nlistener = \"main\"\nhosts = [\"app.local\"]\n[apps.web.split]\nv1 = 100\n\
         [apps.web.versions.v1]\nendpoints = [{{ name = \"app\", addr = \"{}\" }}]\n\
         [apps.other]\nlistener = \"main\"\n[apps.other.split]\nv1 = 100\n\
         [apps.other.versions.v1]\nendpoints = [{{ name = \"other\", addr = \"{}\" }}]\n",
        app.addr, other.addr
    );
    let text = common::recorder::with_listener_settings(&text, &common::recorder::listener_settings(path));
    let weir = common::start(&text).await;
    let mut c = Checks::default();
    let bytes = b"GET http://app.local/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n\
                  GET /next HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n";
    let ex = exchange(weir.listeners["main"], bytes).await;
    let (seen, elsewhere) = (app.settled().await, other.settled().await);
    let what = || format!("R10 {path:?}:{ex}\n  app.local saw:{}\n  other saw:{}", list(&seen), list(&elsewhere));
    let got: Vec<String> = ex.responses.iter().map(|r| format!("{} {}", r.status, strip_n(&r.body_str()))).collect();
    c.check(got == ["200 /x?q=1\n", "200 /next\n"], || format!("(a) want 200 /x?q=1 then 200 /next, got {got:?}"));
    c.check(ex.closed(), || "(b) want the connection closed after /next".to_string());
    c.check(elsewhere.is_empty(), || "(c) the Host app got requests".to_string());
    let first = seen.first();
    c.check(first.is_some_and(|r| r.target == "/x?q=1" && r.complete && r.malformed.is_none()), || {
        "(c) want upstream target /x?q=1 (origin-form)".to_string()
    });
    c.check(first.is_some_and(|r| r.values("host") == ["app.local"]), || {
        "(c) want exactly one Host: app.local upstream".to_string()
    });
    c.context(what);
    weir.shutdown().await;
    c.finish("R10");
}

async fn r11_host_count(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let variants = [
        ("two different Host", b"GET /r11 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec()),
        ("two equal Host", b"GET /r11 HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n".to_vec()),
        ("no Host in HTTP/1.1", b"GET /r11 HTTP/1.1\r\nX-A: 1\r\n\r\n".to_vec()),
    ];
    rig.rejects("R11", &variants, &[400], &mut c).await;
    // HTTP/1.0 without Host is fine (and the connection ends after it: 1.0 without keep-alive).
    let before = rig.up.requests().len();
    let ex = exchange(rig.addr, b"GET /r11 HTTP/1.0\r\nX-A: 1\r\n\r\n").await;
    let seen = rig.up.settled().await.split_off(before);
    let what = || format!("R11 {path:?} [HTTP/1.0 without Host]:{ex}\n  upstream saw:{}", list(&seen));
    c.check(ex.statuses() == [200] && ex.closed(), || "(a,b) want one 200 then close".to_string());
    c.check(seen.len() == 1 && seen[0].target == "/r11" && seen[0].complete && seen[0].malformed.is_none(), || {
        "(c) want upstream to see GET /r11 well-formed (one Host if forwarded as 1.1)".to_string()
    });
    c.context(what);
    rig.weir.shutdown().await;
    c.finish("R11");
}

async fn r12_http10_with_transfer_encoding(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let bytes =
        format!("POST /r12 HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n", chunk("hello"));
    rig.rejects("R12", &[("HTTP/1.0 + chunked", bytes.into_bytes())], &[400], &mut c).await;
    rig.weir.shutdown().await;
    c.finish("R12");
}

async fn r13_pipelining_across_paths(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let bytes = format!(
        "GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
         POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}{}0\r\n\r\n\
         POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
         GET /d HTTP/1.1\r\nHost: a\r\n\r\n",
        chunk("hello"),
        chunk(" world")
    );
    rig.accepts(
        "R13",
        "GET, chunked POST, CL POST, GET",
        bytes.as_bytes(),
        &[("GET", "/a", b""), ("POST", "/b", b"hello world"), ("POST", "/c", b"abc"), ("GET", "/d", b"")],
        &mut c,
    )
    .await;
    rig.weir.shutdown().await;
    c.finish("R13");
}

async fn r14_early_answer_to_an_unread_body(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    // (target, body length, the status of the one response to it)
    let variants = [("/early", 1 << 20, 200), ("/early", 30_000, 200), ("/hang", 1 << 20, 504)];
    for (target, len, status) in variants {
        // Padding, then whole smuggled requests up to the end of the body.
        let k = len / SMUGGLED.len();
        let body = format!("{}{}", "x".repeat(len - k * SMUGGLED.len()), SMUGGLED.repeat(k));
        let mut bytes = post(target, &format!("Content-Length: {len}\r\n"), &body);
        bytes.extend_from_slice(NEXT.as_bytes());
        let before = rig.up.requests().len();
        let ex = exchange(rig.addr, &bytes).await;
        let seen = rig.up.settled().await.split_off(before);
        let what = || format!("R14 {path:?} [{target}, {len} bytes]:{ex}\n  upstream saw:{}", list(&seen));
        let first_ok = ex
            .responses
            .first()
            .is_some_and(|r| r.status == status && (status != 200 || strip_n(&r.body_str()) == format!("{target}\n")));
        c.check(first_ok, || format!("(a) want first response {status} for {target}"));
        let rest_ok = match ex.responses.get(1..) {
            None | Some([]) => true,
            Some([next]) => next.status == 200 && strip_n(&next.body_str()) == "/next\n",
            Some(_) => false,
        };
        c.check(rest_ok, || "(a) want nothing more than /next's own answer after it".to_string());
        c.check(ex.closed(), || "(b) want the connection closed (after /next or at once)".to_string());
        c.check(no_smuggled(&seen), || "(c) /smuggled reached the upstream".to_string());
        c.check(seen.iter().all(|r| r.path() == target || r.path() == "/next"), || {
            format!("(c) want only {target} (and /next) upstream")
        });
        c.context(what);
    }
    rig.weir.shutdown().await;
    c.finish("R14");
}

async fn r15_slowloris(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let head = format!("GET /r15 HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n", "p".repeat(80));
    // (label, bytes, piece size): pieces go out every 100 ms.
    let variants = [
        ("1 byte / 100 ms", head.clone().into_bytes(), 1),
        ("leading CRLFs, 1 byte / 100 ms", format!("\r\n\r\n\r\n\r\n{head}").into_bytes(), 1),
        (
            "100 KiB head, 4 KiB / 100 ms",
            format!("GET /r15 HTTP/1.1\r\nHost: a\r\n{}\r\n", "X-Pad: ".to_string() + &"p".repeat(100 * 1024) + "\r\n")
                .into_bytes(),
            4096,
        ),
    ];
    for (label, bytes, piece) in variants {
        let before = rig.up.requests().len();
        let mut conn = RawConn::connect(rig.addr).await;
        let mut w = conn.take_writer();
        let writer = tokio::spawn(async move {
            for p in bytes.chunks(piece) {
                if w.write_all(p).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let closed = conn.wait_closed(Duration::from_secs(5)).await;
        writer.abort();
        let seen = rig.up.settled().await.split_off(before);
        c.check(closed.is_some_and(|(t, _)| t < Duration::from_secs(3)), || {
            format!("(b) R15 {path:?} [{label}]: want closed in < 3 s, got {closed:?} (None: still open after 5 s)")
        });
        c.check(seen.is_empty(), || format!("(c) R15 {path:?} [{label}]: upstream saw:{}", list(&seen)));
        c.context(|| format!("R15 {path:?} [{label}]"));
    }
    rig.weir.shutdown().await;
    c.finish("R15");
}

async fn r16_slow_reader(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    const BIG: usize = 64 << 20;
    let mut conn = RawConn::connect_small_window(rig.addr).await;
    conn.send(format!("GET /big?bytes={BIG} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.unwrap();
    let start = tokio::time::Instant::now();
    let started = rig.up.wait_until(Duration::from_secs(2), |u| u.accepted() >= 1).await;
    c.check(started, || format!("R16 {path:?}: the request never reached the upstream"));
    // The client never reads; Weir must give up on it and close both sides.
    let upstream_closed = rig.up.wait_until(Duration::from_secs(6), |u| u.open() == 0).await;
    let after = start.elapsed();
    c.check(upstream_closed, || format!("R16 {path:?}: upstream connection still open {after:?} after the request"));
    let closed = conn.wait_closed(Duration::from_secs(3)).await;
    c.check(closed.is_some_and(|(_, n)| n < BIG), || {
        format!("(b) R16 {path:?}: want the client connection closed before the body was all sent, got {closed:?} (None: open)")
    });
    c.context(|| format!("R16 {path:?} [GET /big?bytes={BIG}, client never reads]"));
    rig.weir.shutdown().await;
    c.finish("R16");
}

async fn r17_head_limits(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let big = format!("GET /r17 HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(70 * 1024));
    let many: String = (0..100).map(|i| format!("X-F{i}: {i}\r\n")).collect();
    let many = format!("GET /r17 HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    rig.rejects("R17", &[("head 70 KiB", big.into_bytes()), ("101 fields", many.into_bytes())], &[431], &mut c).await;
    // Under both limits: fine.
    let fields: String = (0..80).map(|i| format!("X-F{i}: {i}\r\n")).collect();
    let ok = format!("GET /r17ok HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n{fields}\r\n", "b".repeat(32 * 1024));
    let seen = rig.accepts("R17", "32 KiB value + 81 fields", ok.as_bytes(), &[("GET", "/r17ok", b"")], &mut c).await;
    c.check(
        seen.first().is_some_and(|r| r.values("x-f79") == ["79"] && r.values("x-big")[0].len() == 32 * 1024),
        || format!("R17 {path:?}: fields lost on the way:{}", list(&seen)),
    );
    rig.weir.shutdown().await;
    c.finish("R17");
}

async fn r18_slow_body(path: Path) {
    // A long request timeout: only the body read timeout may end this one.
    let rig = rig_with(path, "10s").await;
    let mut c = Checks::default();
    let mut conn = RawConn::connect(rig.addr).await;
    let mut w = conn.take_writer();
    let head = format!("POST /r18 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}", chunk("hello"));
    let writer = tokio::spawn(async move {
        let _ = w.write_all(head.as_bytes()).await;
        // Longer than body_read_timeout (1 s) between two pieces of the body.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let _ = w.write_all(format!("{}0\r\n\r\n", chunk("world")).as_bytes()).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let ex: Exchange = conn.responses(Duration::from_secs(4)).await;
    writer.abort();
    let seen = rig.up.settled().await;
    let what = || format!("R18 {path:?}:{ex}\n  upstream saw:{}", list(&seen));
    c.check(ex.closed() && ex.elapsed < Duration::from_millis(2400), || {
        "(b) want the connection closed before the late piece (~1 s)".to_string()
    });
    c.check(!ex.statuses().contains(&200), || "(a) the slow body was answered 200".into());
    c.check(!seen.iter().any(|r| r.complete), || "(c) want the upstream request never complete".to_string());
    let aborted = rig.up.wait_until(Duration::from_secs(2), |u| u.open() == 0).await;
    c.check(aborted, || "(c) want the upstream connection closed (request aborted)".to_string());
    c.context(what);
    // A Content-Length body (the fast path reads these whole) that stops after 3 of 10 bytes,
    // and one that never starts: cut by the body read timeout, not held open.
    for (label, sent) in [("3 of 10 bytes", "abc"), ("no byte", "")] {
        let mut conn = RawConn::connect(rig.addr).await;
        let mut w = conn.take_writer();
        let head = format!("POST /r18 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n{sent}");
        let writer = tokio::spawn(async move {
            let _ = w.write_all(head.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let ex: Exchange = conn.responses(Duration::from_secs(5)).await;
        writer.abort();
        c.check(ex.closed() && ex.elapsed < Duration::from_millis(3500), || {
            format!("(d) a stalled Content-Length body ({label}) held the connection: {ex}")
        });
        c.check(!ex.statuses().contains(&200), || format!("(d) a stalled body ({label}) was answered 200"));
    }
    rig.weir.shutdown().await;
    c.finish("R18");
}

/// HTTP/2 requests go upstream as HTTP/1.1, so they get the same field rules: CONNECT (with a
/// body, an upstream that gives CONNECT none would read it as a second request) and
/// a `Content_Length` alias are refused before anything reaches the upstream; a plain request
/// on the same connection still goes through.
#[tokio::test]
async fn h2_requests_get_the_http1_rules() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let rig = rig(Path::Fast).await;
    let tcp = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let smuggled = Bytes::from_static(SMUGGLED.as_bytes());
    // (hyper's client sends no CONNECT with a body; refusing the method covers that case.)
    let connect = http::Request::builder().method("CONNECT").uri("a:80").body(Full::<Bytes>::default()).unwrap();
    let alias =
        http::Request::post("http://a/r-alias").header("content_length", "5").body(Full::new(smuggled)).unwrap();
    for (what, req, want) in [("CONNECT", connect, 405), ("Content_Length", alias, 400)] {
        let resp = h2.send_request(req).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(resp.status(), want, "{what}");
    }
    let ok = h2.send_request(http::Request::get("http://a/after").body(Full::<Bytes>::default()).unwrap()).await;
    let body = ok.unwrap().into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("/after"), "{body:?}");
    let seen = rig.up.settled().await;
    assert_eq!(seen.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(), ["/after"], "upstream saw:{}", list(&seen));
    rig.weir.shutdown().await;
}

/// R19: a target that is neither a path, an absolute URI, nor `*` for OPTIONS (`abc`, an
/// authority `b:80` outside CONNECT), or one with a fragment, is refused rather than guessed
/// at (hyper reads `b:80` as an authority and routes by it).
async fn r19_request_target_forms(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let line = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes();
    let variants = [
        ("a word", line("abc")),
        ("an authority", line("b:80")),
        ("a fragment", line("/r19#frag")),
        ("* for GET", line("*")),
    ];
    rig.rejects("R19", &variants, &[400], &mut c).await;
    rig.weir.shutdown().await;
    c.finish("R19");
}
