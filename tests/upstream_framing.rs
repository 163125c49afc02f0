//! Response-side framing, cases U1–U11 of the framing policy (notes/framing-spec.md): a
//! scripted upstream answers with exact (mis)framed bytes and the client, reading strictly,
//! must get a correctly framed response or a clean failure — and the request after it, on the
//! same client connection where the case allows it, its own answer (no desync). Each case
//! runs on both paths: `fast::uN_…` with the default listener and plain GETs, and
//! `general::uN_…` with `fast_path = false` *and* requests carrying an (empty) chunked body,
//! which goes through hyper on any Weir.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::recorder::{Checks, End, Path, RawConn, Recorded, Recorder, Resp, Script, both_paths, list, weir_config};

/// A response the client must never see: a second response hidden after a first one.
const FAKE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsmuggled!";
const LIMIT: Duration = Duration::from_secs(3);

/// What the scripted upstream sends, by path; anything else gets its own
/// `200 own <target>\n`.
fn script(path: &str) -> Script {
    let ms = Duration::from_millis;
    let s = |b: &str| Script::bytes(b);
    match path {
        "/u1" => s("HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"),
        "/u2" => s(
            "HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        "/u3-204-now" => s("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
        "/u3-204-late" => s("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n").then(ms(100), "hello"),
        "/u3-304-now" => s("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello"),
        "/u4" => s("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        "/u5-plus" => s("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"),
        "/u5-list" => s("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        "/u5-two-differing" => s("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        "/u5-two-equal" => s("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        "/u5-hex" => s("HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello"),
        "/u6-bare-lf" => s(&format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n{FAKE}")),
        "/u6-bad-size" => {
            s(&format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{FAKE}"))
        }
        "/u6-negative" => {
            s(&format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n{FAKE}"))
        }
        "/u6-overflow" => s(&format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n{FAKE}"
        )),
        "/u7-fold" => s("HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 5\r\n\r\nhello"),
        "/u7-space" => s("HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 5\r\n\r\nhello"),
        "/u7-space-cl" => s("HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello"),
        "/u8" => {
            s(&format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n{FAKE}"))
        }
        "/u9" => s("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc").then(ms(50), "def").close(),
        "/u10" => s(&format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 5\r\n\r\nhello", "b".repeat(70 * 1024))),
        "/u11-now" => s(&format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello{FAKE}")),
        "/u11-late" => s("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").then(ms(50), FAKE),
        "/u12-status-000" => s("HTTP/1.1 000 Zero\r\nContent-Length: 5\r\n\r\nhello"),
        "/u12-status-099" => s("HTTP/1.1 099 Early\r\nContent-Length: 5\r\n\r\nhello"),
        "/u12-chunked-gzip" => s("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        "/u13-cl-list" => s("HTTP/1.1 200 OK\r\nContent-Length: 5,5\r\n\r\nhello"),
        "/u13-cl-spaced-list" => s("HTTP/1.1 200 OK\r\nContent-Length: 5 ,  5\r\n\r\nhello"),
        "/u13-cl-zeros" => s("HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nhello"),
        "/u13-gzip-chunked" => s("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        _ => s(&format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nown {path}\n", path.len() + 5)),
    }
}

struct Rig {
    weir: weir::Running,
    up: Recorder,
    addr: SocketAddr,
    path: Path,
}

async fn rig(path: Path) -> Rig {
    let up = Recorder::scripted(|req: &Recorded, _| script(req.path())).await;
    let weir = common::start(&weir_config(up.addr, path)).await;
    let addr = weir.listeners["main"];
    Rig { weir, up, addr, path }
}

/// What a case allows after its response.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// The next request must be answered on the same client connection.
    SameConn,
    /// The next request may need a new client connection (Weir may close this one).
    AnyConn,
    /// Weir must close the client connection after this response.
    MustClose,
}

impl Rig {
    fn request(&self, target: &str) -> Vec<u8> {
        match self.path {
            Path::Fast => format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes(),
            // An empty chunked body: hyper serves it on any Weir.
            Path::General => {
                format!("POST {target} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes()
            }
        }
    }

    /// Sends `target`, checks its response with `check`, then sends a follow-up and checks it
    /// gets its own answer; with `fresh_upstream`, also that the follow-up did not go on the
    /// upstream connection the case's response came on.
    async fn case(
        &self,
        c: &mut Checks,
        target: &str,
        check: impl Fn(&Result<Resp, End>) -> Result<(), String>,
        after: After,
        fresh_upstream: bool,
    ) {
        let before = self.up.requests().len();
        let mut conn = RawConn::connect(self.addr).await;
        conn.send(&self.request(target)).await.unwrap();
        let first = conn.response(false, LIMIT).await;
        c.check(check(&first).is_ok(), || format!("(a) {}", check(&first).unwrap_err()));
        let said_close =
            first.as_ref().is_ok_and(|r| r.values("connection").iter().any(|v| v.eq_ignore_ascii_case("close")));
        // Late bytes from the upstream (the "100 ms later" variants) are in Weir's socket
        // before the follow-up is sent: a pool check-out can see them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let next = format!("/next{}", target.replace('/', "-"));
        let mut note = String::new();
        let second = if first.is_ok() && !said_close {
            match conn.send(&self.request(&next)).await {
                Ok(()) => conn.response(false, LIMIT).await,
                Err(e) => Err(End::Truncated(format!("write failed: {e}"))),
            }
        } else {
            Err(End::Closed)
        };
        let second = match second {
            Err(End::Closed) | Err(End::Truncated(_)) if after != After::SameConn => {
                note = "(client connection closed after the case; follow-up on a new one)".into();
                let mut fresh = RawConn::connect(self.addr).await;
                fresh.send(&self.request(&next)).await.unwrap();
                fresh.response(false, LIMIT).await
            }
            other => other,
        };
        if after == After::MustClose {
            let closed = first.is_err() || said_close || note.starts_with("(client connection closed");
            c.check(closed, || "(b) want the client connection closed after the response".into());
        }
        let want = format!("own {next}\n");
        c.check(second.as_ref().is_ok_and(|r| r.status == 200 && r.body_str() == want), || {
            format!("(d) follow-up {next} must get its own answer {want:?}, got {} {note}", show(&second))
        });
        let seen = self.up.settled().await.split_off(before);
        if fresh_upstream {
            let case_conn = seen.iter().find(|r| r.path() == target).map(|r| r.conn);
            let next_conn = seen.iter().find(|r| r.path() == next).map(|r| r.conn);
            c.check(case_conn.is_some() && next_conn.is_some() && case_conn != next_conn, || {
                format!("(e) want the follow-up on a new upstream connection: case on {case_conn:?}, follow-up on {next_conn:?}")
            });
        }
        c.context(|| {
            format!(
                "{target} {:?}: first {}; follow-up {}\n  upstream saw:{}",
                self.path,
                show(&first),
                show(&second),
                list(&seen)
            )
        });
    }
}

fn show(r: &Result<Resp, End>) -> String {
    match r {
        Ok(r) => r.to_string(),
        Err(e) => format!("{e:?}"),
    }
}

fn status(want: u16) -> impl Fn(&Result<Resp, End>) -> Result<(), String> {
    move |r| match r {
        Ok(r) if r.status == want => Ok(()),
        other => Err(format!("want status {want}, got {}", show(other))),
    }
}

fn body_hello(r: &Result<Resp, End>) -> Result<(), String> {
    match r {
        Ok(r) if r.status == 200 && r.body == b"hello" => Ok(()),
        other => Err(format!("want 200 with body \"hello\", got {}", show(other))),
    }
}

both_paths!(
    u01_connection_lists_content_length,
    u02_connection_lists_transfer_encoding,
    u03_no_body_status_with_a_body,
    u04_content_length_and_chunked,
    u05_bad_content_length,
    u06_bad_chunked_body,
    u07_bad_field_syntax,
    u08_unasked_101,
    u09_non_chunked_transfer_coding,
    u10_head_over_64_kib,
    u11_unsolicited_bytes_after_a_response,
    u12_impossible_status_and_chunked_not_last,
    u13_length_lists_leading_zeros_and_codings_before_chunked,
);

async fn u01_connection_lists_content_length(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let check = |r: &Result<Resp, End>| {
        body_hello(r)?;
        let r = r.as_ref().unwrap();
        if r.values("content-length") != ["5"] || !r.values("transfer-encoding").is_empty() {
            return Err(format!("want Weir's own framing Content-Length: 5, got {r}"));
        }
        Ok(())
    };
    rig.case(&mut c, "/u1", check, After::SameConn, false).await;
    rig.weir.shutdown().await;
    c.finish("U1");
}

async fn u02_connection_lists_transfer_encoding(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    rig.case(&mut c, "/u2", body_hello, After::SameConn, false).await;
    rig.weir.shutdown().await;
    c.finish("U2");
}

async fn u03_no_body_status_with_a_body(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let no_body = |want: u16| {
        move |r: &Result<Resp, End>| match r {
            Ok(r) if r.status == want && r.body.is_empty() => Ok(()),
            other => Err(format!("want {want} without a body, got {}", show(other))),
        }
    };
    rig.case(&mut c, "/u3-204-now", no_body(204), After::AnyConn, true).await;
    rig.case(&mut c, "/u3-204-late", no_body(204), After::AnyConn, true).await;
    rig.case(&mut c, "/u3-304-now", no_body(304), After::AnyConn, true).await;
    rig.weir.shutdown().await;
    c.finish("U3");
}

async fn u04_content_length_and_chunked(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    // The strict client parser already refuses a response carrying both; check the value too.
    let check = |r: &Result<Resp, End>| {
        body_hello(r)?;
        let r = r.as_ref().unwrap();
        if r.values("content-length").contains(&"3") {
            return Err(format!("the upstream's Content-Length: 3 was forwarded: {r}"));
        }
        Ok(())
    };
    rig.case(&mut c, "/u4", check, After::AnyConn, true).await;
    rig.weir.shutdown().await;
    c.finish("U4");
}

async fn u05_bad_content_length(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    for target in ["/u5-plus", "/u5-list", "/u5-two-differing", "/u5-two-equal", "/u5-hex"] {
        rig.case(&mut c, target, status(502), After::AnyConn, true).await;
    }
    rig.weir.shutdown().await;
    c.finish("U5");
}

async fn u06_bad_chunked_body(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let check = |r: &Result<Resp, End>| match r {
        Ok(r) if r.status == 502 => Ok(()),
        Err(End::Truncated(_)) | Err(End::Closed) => Ok(()),
        other => Err(format!("want the connection closed mid-body (or a 502), got {}", show(other))),
    };
    for target in ["/u6-bare-lf", "/u6-bad-size", "/u6-negative", "/u6-overflow"] {
        rig.case(&mut c, target, check, After::AnyConn, true).await;
    }
    rig.weir.shutdown().await;
    c.finish("U6");
}

async fn u07_bad_field_syntax(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    for target in ["/u7-fold", "/u7-space", "/u7-space-cl"] {
        rig.case(&mut c, target, status(502), After::AnyConn, true).await;
    }
    rig.weir.shutdown().await;
    c.finish("U7");
}

async fn u08_unasked_101(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    rig.case(&mut c, "/u8", status(502), After::AnyConn, true).await;
    rig.weir.shutdown().await;
    c.finish("U8");
}

async fn u09_non_chunked_transfer_coding(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    let check = |r: &Result<Resp, End>| match r {
        Ok(r) if r.status == 200 && r.body == b"abcdef" => Ok(()),
        other => Err(format!("want 200 with the body until the upstream closed, \"abcdef\", got {}", show(other))),
    };
    rig.case(&mut c, "/u9", check, After::MustClose, false).await;
    rig.weir.shutdown().await;
    c.finish("U9");
}

async fn u10_head_over_64_kib(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    rig.case(&mut c, "/u10", status(502), After::AnyConn, true).await;
    rig.weir.shutdown().await;
    c.finish("U10");
}

async fn u11_unsolicited_bytes_after_a_response(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    rig.case(&mut c, "/u11-now", body_hello, After::AnyConn, true).await;
    rig.case(&mut c, "/u11-late", body_hello, After::AnyConn, true).await;
    rig.weir.shutdown().await;
    c.finish("U11");
}

/// U13: a `Content-Length` list (even of equal values) is refused as on the fast path, one
/// with leading zeros goes on in its plain form, and a coding applied before chunked stays
/// named (else the client takes gzip bytes for the content).
async fn u13_length_lists_leading_zeros_and_codings_before_chunked(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    for target in ["/u13-cl-list", "/u13-cl-spaced-list"] {
        rig.case(&mut c, target, status(502), After::AnyConn, true).await;
    }
    let plain_five = |r: &Result<Resp, End>| match r {
        Ok(r) if r.status == 200 && r.values("content-length") == ["5"] && r.body == b"hello" => Ok(()),
        other => Err(format!("want 200, content-length 5, hello; got {}", show(other))),
    };
    rig.case(&mut c, "/u13-cl-zeros", plain_five, After::SameConn, false).await;
    let gzip_named = |r: &Result<Resp, End>| match r {
        Ok(r) if r.status == 200 && r.values("transfer-encoding").join(",").to_ascii_lowercase().contains("gzip") => {
            Ok(())
        }
        other => Err(format!("want the gzip coding named in Transfer-Encoding; got {}", show(other))),
    };
    rig.case(&mut c, "/u13-gzip-chunked", gzip_named, After::AnyConn, false).await;
    rig.weir.shutdown().await;
    c.finish("U13");
}

async fn u12_impossible_status_and_chunked_not_last(path: Path) {
    let rig = rig(path).await;
    let mut c = Checks::default();
    for target in ["/u12-status-000", "/u12-status-099", "/u12-chunked-gzip"] {
        rig.case(&mut c, target, status(502), After::AnyConn, true).await;
    }
    rig.weir.shutdown().await;
    c.finish("U12");
}
