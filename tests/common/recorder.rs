//! Framing tests on raw sockets: a *recording upstream* that parses what Weir sends it with
//! its own strict HTTP/1.1 parser and records every request, a *scripted upstream* that
//! answers with exact bytes (for the response side), a raw client that reads and strictly
//! parses what Weir sends back, and config text with the listener settings a test needs.
//!
//! The recorder is deliberately stricter than Weir must be: CRLF only, no obs-fold, no space
//! before a colon, no CTL in a value, one `Host`, a `Content-Length` of digits only or one
//! `Transfer-Encoding: chunked` (decoded strictly), never both. Anything else is recorded as
//! malformed and the connection is closed — a request Weir forwarded in a shape a strict
//! server would refuse is a finding in itself.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Longest line (request line, field line, chunk-size line) either parser takes.
const MAX_LINE: usize = 256 * 1024;
/// Most field lines in one head (Weir adds a few to a client's 100).
const MAX_FIELDS: usize = 200;

// ---------------------------------------------------------------------------------------------
// Config text

/// Which of Weir's two HTTP/1 paths a listener uses for requests the fast path could take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The default listener: the fast path for what it handles, hyper for the rest.
    Fast,
    /// `fast_path = false`: every HTTP/1 request through the general (hyper) path.
    General,
}

/// The new `[listeners.NAME]` settings every framing test uses: short deadlines so that the
/// timeout cases finish in about a second, and the path switch.
pub fn listener_settings(path: Path) -> String {
    let mut s = String::from(
        "header_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\nsend_timeout = \"1s\"\nkeepalive_timeout = \"5s\"\n",
    );
    if path == Path::General {
        s.push_str("fast_path = false\n");
    }
    s
}

/// Puts `lines` into the `[listeners.main]` section of a config rendered by
/// `common::config` (or [`weir_config`]).
pub fn with_listener_settings(config: &str, lines: &str) -> String {
    let section = "[listeners.main]\naddr = \"127.0.0.1:0\"\n";
    assert!(config.contains(section), "no [listeners.main] section in:\n{config}");
    config.replacen(section, &format!("{section}{lines}"), 1)
}

/// One app `web` (the listener's default app) with one endpoint at `upstream`, a 500 ms
/// request timeout (time to the response head), and the framing listener settings for `path`.
/// Passive ejection is off: a case whose bad request ends in a 502 must not turn the next
/// case's answers into 503s.
pub fn weir_config(upstream: SocketAddr, path: Path) -> String {
    weir_config_with(upstream, path, "500ms")
}

/// [`weir_config`] with another request timeout, e.g. `"10s"` where the 500 ms one would
/// end a case before the deadline under test does.
pub fn weir_config_with(upstream: SocketAddr, path: Path, request_timeout: &str) -> String {
    let text = format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\n\
         [apps.web]\nlistener = \"main\"\n[apps.web.timeouts]\nrequest = \"{request_timeout}\"\n\
         [apps.web.outlier]\nmax_failures = 0\n\
         [apps.web.split]\nv1 = 100\n\
         [apps.web.versions.v1]\nendpoints = [{{ name = \"up\", addr = \"{upstream}\" }}]\n"
    );
    with_listener_settings(&text, &listener_settings(path))
}

// ---------------------------------------------------------------------------------------------
// What an upstream records

/// One request as an upstream received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Which accepted connection (1, 2, …) of this upstream it came on.
    pub conn: u64,
    pub method: String,
    pub target: String,
    pub version: String,
    /// Field lines in order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The head and the whole body (as framed) arrived.
    pub complete: bool,
    /// Why the strict parser refused it (the connection was closed then).
    pub malformed: Option<String>,
}

impl Recorded {
    /// Every value of the fields named `name` (case-insensitive), in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// The path of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[conn {}] {} {} {}", self.conn, self.method, self.target, self.version)?;
        for (n, v) in &self.headers {
            write!(f, " | {n}: {}", preview(v.as_bytes()))?;
        }
        write!(f, " | body {} bytes {:?}", self.body.len(), preview(&self.body))?;
        if !self.complete {
            write!(f, " | INCOMPLETE")?;
        }
        if let Some(m) = &self.malformed {
            write!(f, " | MALFORMED: {m}")?;
        }
        Ok(())
    }
}

/// The first bytes of `b`, escaped, for messages.
pub fn preview(b: &[u8]) -> String {
    let cut = &b[..b.len().min(160)];
    let mut s = String::from_utf8_lossy(cut).escape_debug().to_string();
    if b.len() > cut.len() {
        s.push_str(&format!("…(+{} bytes)", b.len() - cut.len()));
    }
    s
}

#[derive(Default)]
struct Log {
    requests: Mutex<Vec<Recorded>>,
    /// Bumped on every change to `requests`, so a test can wait for quiet.
    changes: AtomicU64,
    accepted: AtomicU64,
    open: AtomicU64,
    /// Complete requests answered (the `N` in `req N <target>`).
    answered: AtomicU64,
}

impl Log {
    fn push(&self, r: Recorded) -> usize {
        let mut all = self.requests.lock().unwrap();
        all.push(r);
        self.changes.fetch_add(1, Ordering::SeqCst);
        all.len() - 1
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut Recorded)) {
        f(&mut self.requests.lock().unwrap()[i]);
        self.changes.fetch_add(1, Ordering::SeqCst);
    }
}

/// What a scripted upstream sends for one request: byte parts, each after a delay, then
/// optionally closing the connection.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub parts: Vec<(Duration, Vec<u8>)>,
    pub close: bool,
}

impl Script {
    /// `bytes` at once.
    pub fn bytes(bytes: impl AsRef<[u8]>) -> Script {
        Script { parts: vec![(Duration::ZERO, bytes.as_ref().to_vec())], close: false }
    }
    /// Then `bytes` after `delay`.
    pub fn then(mut self, delay: Duration, bytes: impl AsRef<[u8]>) -> Script {
        self.parts.push((delay, bytes.as_ref().to_vec()));
        self
    }
    /// And close the connection after the last part.
    pub fn close(mut self) -> Script {
        self.close = true;
        self
    }
    /// The recorder's own answer: `200` with `req N <target>\n` (no body bytes for HEAD).
    pub fn recorder_answer(req: &Recorded, n: u64) -> Script {
        let body = format!("req {n} {}\n", req.target);
        let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        if req.method != "HEAD" {
            out.extend_from_slice(body.as_bytes());
        }
        Script::bytes(out)
    }
}

type Responder = Arc<dyn Fn(&Recorded, u64) -> Script + Send + Sync>;

/// An upstream on `127.0.0.1:0` that records every request it gets (see the module doc).
///
/// It answers each complete request `200` with body `req N <target>\n` (N counts the requests
/// it answered, from 1), keeping the connection alive, with these exceptions by path:
/// `/early` is answered right after its head, before its body is read (which is then read and
/// recorded as usual); `/hang` and every later request on that connection get no answer;
/// `/big?bytes=N` answers with N bytes of `x`.
/// The scripted variant ([`Recorder::scripted`]) answers with whatever its closure returns.
pub struct Recorder {
    pub addr: SocketAddr,
    log: Arc<Log>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// A recording upstream with the standard answers.
    pub async fn spawn() -> Recorder {
        Self::spawn_with(Arc::new(Script::recorder_answer)).await
    }

    /// A scripted upstream: `respond(request, n)` gives the bytes for each complete request
    /// (`n` counts them from 1). Requests are recorded the same way.
    pub async fn scripted(respond: impl Fn(&Recorded, u64) -> Script + Send + Sync + 'static) -> Recorder {
        Self::spawn_with(Arc::new(respond)).await
    }

    async fn spawn_with(respond: Responder) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log::default());
        let shared = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = shared.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                shared.open.fetch_add(1, Ordering::SeqCst);
                let (log, respond) = (shared.clone(), respond.clone());
                tokio::spawn(async move {
                    serve(stream, conn, &log, &respond).await;
                    log.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Recorder { addr, log, task }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.requests.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.log.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.log.open.load(Ordering::SeqCst)
    }

    /// The requests once nothing has changed for 150 ms (late bytes a test must not miss:
    /// a smuggled request would arrive after the response the client already has), bounded by
    /// 2 s.
    pub async fn settled(&self) -> Vec<Recorded> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = self.log.changes.load(Ordering::SeqCst);
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = self.log.changes.load(Ordering::SeqCst);
            if now == last || Instant::now() >= deadline {
                return self.requests();
            }
            last = now;
        }
    }

    /// Waits (polling, bounded by `limit`) until `pred` holds; says whether it did.
    pub async fn wait_until(&self, limit: Duration, pred: impl Fn(&Recorder) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if pred(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// All requests, one per line, for assertion messages.
pub fn list(requests: &[Recorded]) -> String {
    if requests.is_empty() {
        return "(none)".into();
    }
    requests.iter().map(|r| format!("\n    {r}")).collect()
}

// ---------------------------------------------------------------------------------------------
// A strict line reader shared by both parsers

enum Fail {
    /// The peer closed (or reset) the connection; `partial` if a message had begun.
    Closed { partial: bool },
    /// The bytes break the grammar.
    Malformed(String),
    /// No bytes within the deadline (client side only).
    Timeout { partial: bool },
}

struct Reader<R> {
    io: R,
    buf: Vec<u8>,
    deadline: Option<Instant>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(io: R) -> Self {
        Reader { io, buf: Vec::new(), deadline: None }
    }

    /// Reads more bytes; `partial` says whether a message is under way (for the error).
    async fn fill(&mut self, partial: bool) -> Result<(), Fail> {
        let mut chunk = [0u8; 16 * 1024];
        let read = self.io.read(&mut chunk);
        let n = match self.deadline {
            Some(d) => match tokio::time::timeout_at(d, read).await {
                Ok(r) => r,
                Err(_) => return Err(Fail::Timeout { partial }),
            },
            None => read.await,
        };
        match n {
            Ok(0) | Err(_) => Err(Fail::Closed { partial }),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// One CRLF-terminated line, without the CRLF. A bare LF or a bare CR is malformed.
    async fn line(&mut self, partial: bool) -> Result<Vec<u8>, Fail> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                if i == 0 || self.buf[i - 1] != b'\r' {
                    return Err(Fail::Malformed(format!("bare LF after {:?}", preview(&self.buf[..i]))));
                }
                let line: Vec<u8> = self.buf[..i - 1].to_vec();
                if line.contains(&b'\r') {
                    return Err(Fail::Malformed(format!("bare CR in {:?}", preview(&line))));
                }
                self.buf.drain(..=i);
                return Ok(line);
            }
            if let Some(i) = self.buf.iter().position(|&b| b == b'\r')
                && i + 1 < self.buf.len()
            {
                return Err(Fail::Malformed(format!("bare CR after {:?}", preview(&self.buf[..i]))));
            }
            if self.buf.len() > MAX_LINE {
                return Err(Fail::Malformed(format!("line over {MAX_LINE} bytes")));
            }
            self.fill(partial || !self.buf.is_empty()).await?;
        }
    }

    /// Exactly `n` bytes.
    async fn exact(&mut self, n: usize, mut sink: impl FnMut(&[u8])) -> Result<(), Fail> {
        let mut left = n;
        loop {
            let take = left.min(self.buf.len());
            if take > 0 {
                sink(&self.buf[..take]);
                self.buf.drain(..take);
                left -= take;
            }
            if left == 0 {
                return Ok(());
            }
            self.fill(true).await?;
        }
    }

    /// Field lines up to the empty line, strictly: token name, colon right after it, OWS,
    /// a value of VCHAR/obs-text/SP/HTAB, no obs-fold.
    async fn fields(&mut self) -> Result<Vec<(String, String)>, Fail> {
        let mut fields = Vec::new();
        loop {
            let line = self.line(true).await?;
            if line.is_empty() {
                return Ok(fields);
            }
            fields.push(field(&line).map_err(Fail::Malformed)?);
            if fields.len() > MAX_FIELDS {
                return Err(Fail::Malformed(format!("more than {MAX_FIELDS} fields")));
            }
        }
    }

    /// A chunked body, strictly: hex size (1–16 digits, no sign, no `0x`), an optional
    /// well-formed extension, CRLF after every chunk, then trailers and the empty line.
    async fn chunked(&mut self, mut sink: impl FnMut(&[u8])) -> Result<Vec<(String, String)>, Fail> {
        loop {
            let line = self.line(true).await?;
            let text = String::from_utf8_lossy(&line).to_string();
            let (size, ext) = match text.split_once(';') {
                Some((s, e)) => (s, Some(e)),
                None => (text.as_str(), None),
            };
            if size.is_empty() || size.len() > 16 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Fail::Malformed(format!("bad chunk size line {:?}", preview(&line))));
            }
            if let Some(ext) = ext
                && (ext.len() > 4096 || ext.bytes().any(|b| b.is_ascii_control()))
            {
                return Err(Fail::Malformed("bad chunk extension".into()));
            }
            let size = u64::from_str_radix(size, 16).unwrap() as usize;
            if size == 0 {
                return self.fields().await;
            }
            self.exact(size, &mut sink).await?;
            let end = self.line(true).await?;
            if !end.is_empty() {
                return Err(Fail::Malformed(format!("no CRLF after chunk data: {:?}", preview(&end))));
            }
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn field(line: &[u8]) -> Result<(String, String), String> {
    if line[0] == b' ' || line[0] == b'\t' {
        return Err(format!("obs-fold: {:?}", preview(line)));
    }
    let colon = line.iter().position(|&b| b == b':').ok_or_else(|| format!("no colon: {:?}", preview(line)))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(format!("bad field name: {:?}", preview(line)));
    }
    let value = line[colon + 1..].trim_ascii();
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("CTL in value: {:?}", preview(line)));
    }
    Ok((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()))
}

fn values<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
}

/// How a message's body is framed.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Strict Content-Length: one field, 1–18 digits.
fn length(fields: &[(String, String)]) -> Result<Option<usize>, String> {
    match values(fields, "content-length").as_slice() {
        [] => Ok(None),
        [v] if !v.is_empty() && v.len() <= 18 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(v.parse().unwrap())),
        other => Err(format!("bad Content-Length {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream side

async fn serve(stream: TcpStream, conn: u64, log: &Log, respond: &Responder) {
    let (rd, mut wr) = stream.into_split();
    let mut r = Reader::new(rd);
    let mut mute = false;
    loop {
        let line = match r.line(false).await {
            Ok(line) => line,
            Err(Fail::Closed { partial: false }) => return,
            Err(Fail::Closed { .. }) => {
                let partial = preview(&r.buf);
                log.push(Recorded {
                    conn,
                    malformed: Some(format!("head cut short: {partial:?}")),
                    ..Default::default()
                });
                return;
            }
            Err(Fail::Malformed(m)) => {
                log.push(Recorded { conn, malformed: Some(m), ..Default::default() });
                return;
            }
            Err(Fail::Timeout { .. }) => return,
        };
        let mut rec = Recorded { conn, ..Default::default() };
        let text = String::from_utf8_lossy(&line).into_owned();
        let parts: Vec<&str> = text.split(' ').collect();
        let good_line = parts.len() == 3
            && !parts[0].is_empty()
            && parts[0].bytes().all(is_tchar)
            && !parts[1].is_empty()
            && parts[1].bytes().all(|b| b > 0x20 && b != 0x7f)
            && (parts[2] == "HTTP/1.1" || parts[2] == "HTTP/1.0");
        if !good_line {
            rec.malformed = Some(format!("bad request line {:?}", preview(&line)));
            log.push(rec);
            return;
        }
        (rec.method, rec.target, rec.version) = (parts[0].into(), parts[1].into(), parts[2].into());
        match r.fields().await {
            Ok(fields) => rec.headers = fields,
            Err(e) => {
                rec.malformed = Some(match e {
                    Fail::Malformed(m) => m,
                    _ => "closed inside the head".into(),
                });
                log.push(rec);
                return;
            }
        }
        let framing = framing_of_request(&rec);
        let framing = match framing {
            Ok(f) => f,
            Err(m) => {
                rec.malformed = Some(m);
                log.push(rec);
                return;
            }
        };
        let path = rec.path().to_string();
        let i = log.push(rec.clone());
        if path == "/hang" {
            mute = true;
        }
        let mut answered_early = false;
        if path == "/early" && !mute {
            let n = log.answered.fetch_add(1, Ordering::SeqCst) + 1;
            if play(&mut wr, &respond(&rec, n)).await.is_err() {
                return;
            }
            answered_early = true;
        }
        let result = match framing {
            Framing::Length(n) => r.exact(n, |b| log.update(i, |rec| rec.body.extend_from_slice(b))).await,
            Framing::Chunked => r.chunked(|b| log.update(i, |rec| rec.body.extend_from_slice(b))).await.map(|_| ()),
            Framing::Close => unreachable!("requests are never close-delimited"),
        };
        match result {
            Ok(()) => log.update(i, |rec| rec.complete = true),
            Err(Fail::Malformed(m)) => {
                log.update(i, |rec| rec.malformed = Some(m));
                return;
            }
            Err(_) => return,
        }
        if mute || answered_early {
            continue;
        }
        let rec = log.requests.lock().unwrap()[i].clone();
        let script = if path == "/big" {
            big_answer(&rec)
        } else {
            let n = log.answered.fetch_add(1, Ordering::SeqCst) + 1;
            respond(&rec, n)
        };
        if play(&mut wr, &script).await.is_err() || script.close {
            return;
        }
    }
}

fn framing_of_request(rec: &Recorded) -> Result<Framing, String> {
    let hosts = rec.values("host");
    if hosts.len() > 1 || (rec.version == "HTTP/1.1" && hosts.len() != 1) {
        return Err(format!("{} Host fields", hosts.len()));
    }
    let te = rec.values("transfer-encoding");
    let cl = length(&rec.headers)?;
    match (te.as_slice(), cl) {
        ([], None) => Ok(Framing::Length(0)),
        ([], Some(n)) => Ok(Framing::Length(n)),
        ([t], None) if t.eq_ignore_ascii_case("chunked") && rec.version == "HTTP/1.1" => Ok(Framing::Chunked),
        _ => Err(format!("request framing: TE {te:?}, CL {cl:?}")),
    }
}

/// `/big?bytes=N`: N bytes of `x`, written in 64 KiB pieces (a slow reader stalls it).
fn big_answer(rec: &Recorded) -> Script {
    let n: usize = rec.target.split("bytes=").nth(1).and_then(|v| v.parse().ok()).unwrap_or(1 << 20);
    let mut s = Script::bytes(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n"));
    let piece = vec![b'x'; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let take = left.min(piece.len());
        s.parts.push((Duration::ZERO, piece[..take].to_vec()));
        left -= take;
    }
    s
}

async fn play(wr: &mut tokio::net::tcp::OwnedWriteHalf, script: &Script) -> std::io::Result<()> {
    for (delay, bytes) in &script.parts {
        if !delay.is_zero() {
            tokio::time::sleep(*delay).await;
        }
        wr.write_all(bytes).await?;
    }
    if script.close {
        let _ = wr.shutdown().await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The client side

/// One response as the client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Interim (1xx) responses that came before it.
    pub interim: Vec<u16>,
}

impl Resp {
    /// Every value of the fields named `name` (case-insensitive).
    pub fn values(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.version, self.status)?;
        for (n, v) in &self.headers {
            write!(f, " | {n}: {}", preview(v.as_bytes()))?;
        }
        write!(f, " | body {:?}", preview(&self.body))
    }
}

/// How reading responses on a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Weir closed (or reset) the connection at a message boundary.
    Closed,
    /// Weir closed the connection in the middle of a response (what was read is in the text).
    Truncated(String),
    /// Nothing more within the time allowed: the connection is still open.
    Open,
    /// Bytes that are not a valid response (strictly parsed).
    Garbage(String),
}

/// A raw client connection to Weir.
pub struct RawConn {
    r: Reader<tokio::net::tcp::OwnedReadHalf>,
    w: Option<tokio::net::tcp::OwnedWriteHalf>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        Self::from(TcpStream::connect(addr).await.unwrap())
    }

    /// A connection whose receive buffer is as small as the kernel allows: a slow reader.
    pub async fn connect_small_window(addr: SocketAddr) -> RawConn {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        Self::from(socket.connect(addr).await.unwrap())
    }

    fn from(stream: TcpStream) -> RawConn {
        let (rd, wr) = stream.into_split();
        RawConn { r: Reader::new(rd), w: Some(wr) }
    }

    /// Writes `bytes` whole; an error (Weir closed) is returned, not a panic.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.as_mut().expect("writer not handed off").write_all(bytes).await
    }

    /// Writes `bytes` from a task of its own (a body bigger than the socket buffers must not
    /// block reading), ignoring errors. Returns when the write is done.
    pub fn send_in_background(&mut self, bytes: Vec<u8>) -> tokio::task::JoinHandle<()> {
        let mut w = self.w.take().expect("writer not handed off");
        tokio::spawn(async move {
            let _ = w.write_all(&bytes).await;
            // Keep the write half (and so the socket) open until the test is done reading.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(w);
        })
    }

    /// Hands the write half to the caller (to dribble bytes from another task).
    pub fn take_writer(&mut self) -> tokio::net::tcp::OwnedWriteHalf {
        self.w.take().expect("writer not handed off")
    }

    /// Reads one response within `limit`; `head` if it answers a HEAD request. 1xx responses
    /// are collected into the final one's `interim`.
    pub async fn response(&mut self, head: bool, limit: Duration) -> Result<Resp, End> {
        self.r.deadline = Some(Instant::now() + limit);
        let result = self.response_inner(head).await;
        self.r.deadline = None;
        result.map_err(|f| match f {
            Fail::Closed { partial: false } => End::Closed,
            Fail::Closed { partial: true } => End::Truncated(preview(&self.r.buf)),
            Fail::Timeout { partial: false } => End::Open,
            Fail::Timeout { partial: true } => {
                End::Truncated(format!("stalled mid-response: {}", preview(&self.r.buf)))
            }
            Fail::Malformed(m) => End::Garbage(m),
        })
    }

    async fn response_inner(&mut self, head: bool) -> Result<Resp, Fail> {
        let mut interim = Vec::new();
        loop {
            let line = self.r.line(false).await?;
            let text = String::from_utf8_lossy(&line).into_owned();
            let mut parts = text.splitn(3, ' ');
            let version = parts.next().unwrap_or_default().to_string();
            let status = parts.next().and_then(|s| if s.len() == 3 { s.parse::<u16>().ok() } else { None });
            let Some(status) = status.filter(|_| version == "HTTP/1.1" || version == "HTTP/1.0") else {
                return Err(Fail::Malformed(format!("bad status line {:?}", preview(&line))));
            };
            let headers = self.r.fields().await?;
            if (100..200).contains(&status) && status != 101 {
                interim.push(status);
                continue;
            }
            let te = values(&headers, "transfer-encoding");
            let framing = if head || status == 204 || status == 304 || (100..200).contains(&status) {
                Framing::Length(0)
            } else if !te.is_empty() {
                let last = te.last().unwrap().rsplit(',').next().unwrap().trim();
                if !values(&headers, "content-length").is_empty() {
                    return Err(Fail::Malformed(format!("response with TE and CL: {headers:?}")));
                }
                if last.eq_ignore_ascii_case("chunked") { Framing::Chunked } else { Framing::Close }
            } else {
                match length(&headers).map_err(Fail::Malformed)? {
                    Some(n) => Framing::Length(n),
                    None => Framing::Close,
                }
            };
            let mut body = Vec::new();
            match framing {
                Framing::Length(n) => self.r.exact(n, |b| body.extend_from_slice(b)).await?,
                Framing::Chunked => {
                    self.r.chunked(|b| body.extend_from_slice(b)).await?;
                }
                // What arrived so far stays in the buffer, to show in a stall's message.
                Framing::Close => loop {
                    match self.r.fill(true).await {
                        Ok(()) => {}
                        Err(Fail::Closed { .. }) => {
                            body.append(&mut self.r.buf);
                            break;
                        }
                        Err(Fail::Timeout { .. }) => {
                            let head = format!("{version} {status} {headers:?}");
                            let seen = format!("{} then body {:?}", preview(head.as_bytes()), preview(&self.r.buf));
                            self.r.buf.clear();
                            return Err(Fail::Malformed(format!("close-delimited body never closed: {seen}")));
                        }
                        Err(e) => return Err(e),
                    }
                },
            }
            return Ok(Resp { version, status, headers, body, interim });
        }
    }

    /// Reads responses (none to HEAD requests) until the connection closes, garbage arrives,
    /// or nothing arrives for `idle`.
    pub async fn responses(&mut self, idle: Duration) -> Exchange {
        let start = Instant::now();
        let mut responses = Vec::new();
        loop {
            match self.response(false, idle).await {
                Ok(r) => responses.push(r),
                Err(end) => return Exchange { responses, end, elapsed: start.elapsed() },
            }
        }
    }

    /// Waits up to `limit` for Weir to close the connection, discarding whatever arrives;
    /// returns the time it took and the bytes discarded, or None if it stayed open.
    pub async fn wait_closed(&mut self, limit: Duration) -> Option<(Duration, usize)> {
        let start = Instant::now();
        let deadline = start + limit;
        let mut n = self.r.buf.len();
        self.r.buf.clear();
        self.r.deadline = Some(deadline);
        loop {
            match self.r.fill(true).await {
                Ok(()) => {
                    n += self.r.buf.len();
                    self.r.buf.clear();
                }
                Err(Fail::Closed { .. }) => {
                    self.r.deadline = None;
                    return Some((start.elapsed(), n));
                }
                Err(_) => {
                    self.r.deadline = None;
                    return None;
                }
            }
        }
    }
}

/// What a client read on one connection.
#[derive(Debug)]
pub struct Exchange {
    pub responses: Vec<Resp>,
    pub end: End,
    pub elapsed: Duration,
}

impl Exchange {
    /// Weir closed the connection (at a boundary or mid-response).
    pub fn closed(&self) -> bool {
        matches!(self.end, End::Closed | End::Truncated(_))
    }
    pub fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.responses {
            write!(f, "\n    {r}")?;
        }
        write!(f, "\n    then {:?} after {:?}", self.end, self.elapsed)
    }
}

/// Connects, writes `bytes` (from its own task), and reads responses until Weir closes the
/// connection or is quiet for 3 s.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Exchange {
    let mut c = RawConn::connect(addr).await;
    c.send_in_background(bytes.to_vec());
    c.responses(Duration::from_secs(3)).await
}

/// Failed checks of one test, gathered so that every variant is reported, not only the first:
/// [`Checks::check`] notes a failure, [`Checks::context`] files the failures noted since with
/// one description of what was sent and seen, [`Checks::finish`] panics if anything failed.
#[derive(Default)]
pub struct Checks {
    failed: Vec<String>,
    pending: Vec<String>,
}

impl Checks {
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.pending.push(what());
        }
    }
    pub fn context(&mut self, context: impl FnOnce() -> String) {
        if !self.pending.is_empty() {
            self.failed.push(format!(
                "{}
    {}",
                context(),
                self.pending.join("\n    ")
            ));
            self.pending.clear();
        }
    }
    pub fn finish(mut self, name: &str) {
        self.context(|| "(no context)".into());
        assert!(
            self.failed.is_empty(),
            "{name}: {} failed case(s):\n- {}",
            self.failed.len(),
            self.failed.join("\n- ")
        );
    }
}

/// Declares each case twice, `fast::case` and `general::case`: a case is an
/// `async fn case(path: Path)` in the test file, run once per HTTP/1 path.
#[allow(unused_macros)]
macro_rules! both_paths {
    ($($case:ident),* $(,)?) => {
        mod fast {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Path::Fast).await
                }
            )*
        }
        mod general {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Path::General).await
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_paths;
