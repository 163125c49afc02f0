//! The fault harness of issue 12, shared by `tests/faults.rs` and `benches/faults.rs` (each
//! includes this file with `#[path]`): `weir backend` processes that can be frozen (SIGSTOP) or
//! slow (`--delay`), a Weir config over them, clients that record every request (half on one
//! keep-alive connection, half on a new connection per request), and a watcher that scrapes
//! Weir's admin API every 100 ms. Everything on 127.0.0.1 with ephemeral ports.
//!
//! What Weir sent to an endpoint is read from its own `weir_endpoint_requests_total`: a frozen
//! process counts nothing until it resumes. What the processes received is their
//! `/__weir/ids` list, read after they resumed, which is how a request sent twice is found.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::TcpStream;

/// The `weir` binary the backends run: `$WEIR_BIN`, else the one Cargo built with this target.
pub fn weir_bin() -> PathBuf {
    std::env::var_os("WEIR_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_weir")), PathBuf::from)
}

/// One `weir backend` process, recording request ids. Dropping it resumes (if frozen),
/// kills and reaps it.
pub struct BackendProc {
    pub name: String,
    pub version: String,
    pub addr: SocketAddr,
    pub delay: Duration,
    child: Child,
    /// Kept open: the process printed its address here and must not meet a closed pipe.
    _stdout: std::io::BufReader<ChildStdout>,
}

impl BackendProc {
    /// Starts `weir backend` on a free port; returns once it printed its bound address (it
    /// listens from then on).
    pub fn spawn(name: &str, version: &str, delay: Duration) -> BackendProc {
        let bin = weir_bin();
        let mut child = Command::new(&bin)
            .args(["backend", "--addr", "127.0.0.1:0", "--record-ids", "--name", name, "--version", version])
            .arg("--delay")
            .arg(humantime::format_duration(delay).to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send((line, reader));
        });
        let Ok((line, reader)) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} backend {name} printed no address within 20 s", bin.display());
        };
        let addr = line.trim().rsplit("http://").next().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
            let _ = child.kill();
            let status = child.wait();
            panic!("{} backend {name}: no address in {line:?} ({status:?}); built without --delay?", bin.display())
        });
        BackendProc { name: name.into(), version: version.into(), addr, delay, child, _stdout: reader }
    }

    /// SIGSTOP: the kernel still accepts connections and buffers requests; nothing answers.
    pub fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONT: the process resumes and answers what queued up meanwhile.
    pub fn thaw(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap_or_else(|e| panic!("{signal} {}: {e}", self.name));
    }

    /// Requests it received so far (its own counter, taken on arrival).
    pub async fn hits(&self) -> Option<u64> {
        let (_, body) = http_get(self.addr, "/__weir/hits").await.ok()?;
        body.trim().parse().ok()
    }

    /// The `x-request-id` of every request it received.
    pub async fn ids(&self) -> Vec<String> {
        let (_, body) =
            http_get(self.addr, "/__weir/ids").await.unwrap_or_else(|e| panic!("ids of {}: {e}", self.name));
        body.lines().map(str::to_owned).collect()
    }
}

impl Drop for BackendProc {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` backends of `version` named `<version>-<i>`, with the given delays (index-wise;
/// missing = none).
pub fn backends(version: &str, count: usize, delays: &[Duration]) -> Vec<BackendProc> {
    (0..count)
        .map(|i| BackendProc::spawn(&format!("{version}-{i}"), version, delays.get(i).copied().unwrap_or_default()))
        .collect()
}

/// Weir's config: one listener, app `web` split v1 50 / v2 50 over the given backends,
/// defaults for everything else; `app_extra` goes into `[apps.web]` (e.g. a probe).
pub fn config(v1: &[BackendProc], v2: &[BackendProc], app_extra: &str) -> String {
    let mut s = String::from("[admin]\naddr = \"127.0.0.1:0\"\n\n[listeners.main]\naddr = \"127.0.0.1:0\"\n\n");
    s.push_str(&format!("[apps.web]\nlistener = \"main\"\n{app_extra}\n\n[apps.web.split]\nv1 = 50\nv2 = 50\n"));
    for (version, list) in [("v1", v1), ("v2", v2)] {
        s.push_str(&format!("\n[apps.web.versions.{version}]\nendpoints = [\n"));
        for b in list {
            s.push_str(&format!("  {{ name = \"{}\", addr = \"{}\" }},\n", b.name, b.addr));
        }
        s.push_str("]\n");
    }
    s
}

/// Starts Weir in this process from config text.
pub async fn start_weir(text: &str) -> weir::Running {
    let config = weir::Config::parse(text, "faults.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    weir::start(config).await.expect("weir starts")
}

/// One GET on a fresh connection: status and body, within 5 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let once = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path).header(header::HOST, addr.to_string()).body(Full::<Bytes>::default()).unwrap();
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        conn.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), once).await.map_err(|_| "no answer within 5 s".to_string())?
}

/// Waits until no backend's request count moves for 300 ms (at most 5 s): whatever a
/// resumed process had queued is done.
pub async fn quiesce(backends: &[&BackendProc]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = Vec::new();
    loop {
        let mut now = Vec::new();
        for b in backends {
            now.push(b.hits().await);
        }
        if now == last || Instant::now() > deadline {
            return;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// GET, or POST with a small body (not idempotent: must never reach two endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    Get,
    Post,
}

/// One request as a client saw it.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Its `x-request-id`: `GET-c<client>-<n>` or `POST-…`.
    pub id: String,
    pub method: Method,
    pub keepalive: bool,
    /// When it was sent, since the load started.
    pub at: Duration,
    /// Until its response was whole (or it failed).
    pub took: Duration,
    /// `None`: 200 with a backend's answer. Else the status (`"504"`) or what broke.
    pub error: Option<String>,
    /// The endpoint that answered (the `Host:` of the body).
    pub served_by: Option<String>,
}

/// How the clients behave.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Clients; the first half reuse one keep-alive connection, the others open a new one per
    /// request (`Connection: close`).
    pub clients: usize,
    /// Every n-th request of a client is a POST (0: none).
    pub post_every: u64,
    /// Wait between two requests of one client (0: a closed loop).
    pub pause: Duration,
    /// A request not answered by then is given up (counted as `client timeout`).
    pub timeout: Duration,
}

/// Clients sending requests in a loop until stopped.
pub struct Load {
    pub started: Instant,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(target: SocketAddr, o: &LoadOptions) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks = (0..o.clients)
            .map(|i| tokio::spawn(client(i, target, i < o.clients / 2, o.clone(), stop.clone(), started)))
            .collect();
        Load { started, stop, tasks }
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sleeps until `at` after the start.
    pub async fn until(&self, at: Duration) {
        tokio::time::sleep_until((self.started + at).into()).await;
    }

    /// Stops sending and waits for the requests in flight (each bounded by the timeout).
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("client task"));
        }
        all.sort_by_key(|s| s.at);
        all
    }
}

/// A client connection; its task ends when this is dropped.
struct Conn {
    send: SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn client(
    i: usize,
    target: SocketAddr,
    keepalive: bool,
    o: LoadOptions,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut conn = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let method = if o.post_every > 0 && n.is_multiple_of(o.post_every) { Method::Post } else { Method::Get };
        let id = format!("{}-c{i}-{n}", if method == Method::Get { "GET" } else { "POST" });
        let sent = Instant::now();
        let result = tokio::time::timeout(o.timeout, exchange(&mut conn, target, keepalive, method, &id)).await;
        let took = sent.elapsed();
        let (error, served_by) = match result {
            Err(_) => (Some("client timeout".to_string()), None),
            Ok(Err(e)) => (Some(e), None),
            Ok(Ok((200, body))) if body.starts_with("Host: ") => (None, body[6..].split(',').next().map(str::to_owned)),
            Ok(Ok((200, body))) => (Some(format!("200 with {body:?}")), None),
            Ok(Ok((status, _))) => (Some(status.to_string()), None),
        };
        if error.is_some() {
            conn = None;
        }
        samples.push(Sample { id, method, keepalive, at: sent - started, took, error, served_by });
        if !o.pause.is_zero() {
            tokio::time::sleep(o.pause).await;
        }
    }
    samples
}

/// One request on the kept connection (opened when missing or closed by Weir) or, without
/// keep-alive, on a new one.
async fn exchange(
    conn: &mut Option<Conn>,
    target: SocketAddr,
    keepalive: bool,
    method: Method,
    id: &str,
) -> Result<(u16, String), String> {
    if !keepalive || conn.as_ref().is_none_or(|c| c.send.is_closed()) {
        *conn = None;
        let stream = TcpStream::connect(target).await.map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = stream.set_nodelay(true);
        let (send, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| kind(&e))?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Some(Conn { send, task });
    }
    let c = conn.as_mut().expect("just opened");
    c.send.ready().await.map_err(|e| kind(&e))?;
    let mut req = Request::builder()
        .uri("/")
        .header(header::HOST, target.to_string())
        .header("x-request-id", id)
        .method(if method == Method::Get { http::Method::GET } else { http::Method::POST });
    if !keepalive {
        req = req.header(header::CONNECTION, "close");
    }
    let body = match method {
        Method::Get => Full::default(),
        Method::Post => {
            req = req.header(header::CONTENT_TYPE, "text/plain");
            Full::new(Bytes::from(format!("order {id}\n")))
        }
    };
    let resp = c.send.send_request(req.body(body).expect("valid request")).await.map_err(|e| kind(&e))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| kind(&e))?.to_bytes();
    if !keepalive {
        *conn = None;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A short name for what broke.
fn kind(e: &hyper::Error) -> String {
    if e.is_incomplete_message() {
        "closed before the response".into()
    } else if e.is_closed() || e.is_canceled() {
        "connection closed".into()
    } else if e.is_parse() {
        "bad response".into()
    } else {
        format!("error: {e}")
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

/// Latency and failures of one kind of request.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub n: usize,
    pub failed: usize,
    /// Failures by what went wrong.
    pub failures: BTreeMap<String, usize>,
    pub over_250ms: usize,
    pub over_1s: usize,
    pub over_2s: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// The figures of `samples`.
pub fn stats<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Stats {
    let mut s = Stats::default();
    let mut took = Vec::new();
    for x in samples {
        s.n += 1;
        if let Some(e) = &x.error {
            s.failed += 1;
            *s.failures.entry(e.clone()).or_default() += 1;
        }
        s.over_250ms += usize::from(x.took > Duration::from_millis(250));
        s.over_1s += usize::from(x.took > Duration::from_secs(1));
        s.over_2s += usize::from(x.took > Duration::from_secs(2));
        took.push(x.took);
    }
    took.sort();
    let at = |q: f64| took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1))).copied();
    s.p50 = at(0.5).unwrap_or_default();
    s.p99 = at(0.99).unwrap_or_default();
    s.max = took.last().copied().unwrap_or_default();
    s
}

/// Request ids that reached more than one endpoint (or one twice), with where they went.
pub fn duplicates(received: &[(String, Vec<String>)]) -> BTreeMap<String, Vec<String>> {
    let mut seen: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (backend, ids) in received {
        for id in ids {
            seen.entry(id).or_default().push(backend.clone());
        }
    }
    seen.into_iter().filter(|(_, at)| at.len() > 1).map(|(id, at)| (id.to_owned(), at)).collect()
}

// ---------------------------------------------------------------------------------------------
// Watching Weir

/// One Prometheus series: name, labels, value.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Series {
    /// `name{a="x",…}` with the labels sorted, `app` left out.
    pub fn key(&self) -> String {
        let labels: Vec<String> =
            self.labels.iter().filter(|(k, _)| *k != "app").map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// Parses the Prometheus text format (the subset Weir writes).
pub fn parse_metrics(text: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        out.push(Series { name: name.to_owned(), labels, value });
    }
    out
}

/// One endpoint in the admin API's app view.
#[derive(Debug, Clone, Default)]
pub struct EndpointView {
    pub healthy: bool,
    pub ejected: bool,
    pub times_ejected: u64,
    /// `last_change.why`: Weir's last reason to take it out or let it back in.
    pub last_change: Option<String>,
}

/// What Weir's admin API said at one moment.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Since the load started.
    pub at: Duration,
    pub series: Vec<Series>,
    /// `GET /apps/web`, by endpoint name.
    pub endpoints: BTreeMap<String, EndpointView>,
}

impl Scrape {
    /// The sum of the series named `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
            .map(|s| s.value)
            .sum()
    }

    /// The value of the one series named `name` with exactly these labels (besides `app`).
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series
            .iter()
            .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
            .map(|s| s.value)
    }

    /// `weir_endpoint_requests_total` of one endpoint: requests Weir sent to it.
    pub fn sent_to(&self, endpoint: &str) -> u64 {
        self.value("weir_endpoint_requests_total", &[("endpoint", endpoint)]) as u64
    }
}

/// Scrapes `/metrics` and `/apps/web` every `every` until stopped.
pub struct Watch {
    started: Instant,
    stop: Arc<AtomicBool>,
    scrapes: Arc<std::sync::Mutex<Vec<Scrape>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    pub fn start(admin: SocketAddr, started: Instant, every: Duration) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, out) = (stop.clone(), scrapes.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Some(s) = scrape(admin, started).await {
                    out.lock().expect("not poisoned").push(s);
                }
            }
        });
        Watch { started, stop, scrapes, task }
    }

    /// Scrapes now, in addition to the ticks, and returns it: taken right before a fault
    /// starts or ends, it gives the exact count at that moment (the ticks are 100 ms apart).
    pub async fn scrape_now(&self, admin: SocketAddr) -> Scrape {
        let s = scrape(admin, self.started).await.expect("the admin API answers");
        let mut scrapes = self.scrapes.lock().expect("not poisoned");
        let at = scrapes.partition_point(|x| x.at <= s.at);
        scrapes.insert(at, s.clone());
        s
    }

    /// The newest scrape.
    pub fn latest(&self) -> Option<Scrape> {
        self.scrapes.lock().expect("not poisoned").last().cloned()
    }

    /// Waits (at most `limit`) for a scrape that satisfies `pred`; returns when it was taken
    /// (since the load started).
    pub async fn wait_for(&self, limit: Duration, pred: impl Fn(&Scrape) -> bool) -> Option<Duration> {
        let deadline = Instant::now() + limit;
        let mut seen = 0;
        loop {
            {
                let scrapes = self.scrapes.lock().expect("not poisoned");
                if let Some(s) = scrapes[seen..].iter().find(|s| pred(s)) {
                    return Some(s.at);
                }
                seen = scrapes.len();
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops (after the scrape under way); returns them all, in order.
    pub async fn stop(self) -> Vec<Scrape> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("watch task");
        let mut scrapes = std::mem::take(&mut *self.scrapes.lock().expect("not poisoned"));
        scrapes.sort_by_key(|s| s.at);
        scrapes
    }
}

/// One look at Weir's admin API (`None` if it did not answer).
pub async fn scrape(admin: SocketAddr, started: Instant) -> Option<Scrape> {
    let (_, app) = http_get(admin, "/apps/web").await.ok()?;
    let (_, metrics) = http_get(admin, "/metrics").await.ok()?;
    // Stamped once both were read: a scrape taken before a moment saw nothing after it.
    let at = started.elapsed();
    let app: serde_json::Value = serde_json::from_str(&app).ok()?;
    let mut endpoints = BTreeMap::new();
    for v in app["versions"].as_array()? {
        for e in v["endpoints"].as_array()? {
            let view = EndpointView {
                healthy: e["healthy"] == true,
                ejected: e["ejected"] == true,
                times_ejected: e["times_ejected"].as_u64().unwrap_or(0),
                last_change: e["last_change"]["why"].as_str().map(str::to_owned),
            };
            endpoints.insert(e["name"].as_str()?.to_owned(), view);
        }
    }
    Some(Scrape { at, series: parse_metrics(&metrics), endpoints })
}

/// What happened to one endpoint around a fault from `from` to `to` (since the load started).
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// Requests Weir sent it from `from` to `to`.
    pub sent: u64,
    /// … of which after `from` + 1 s.
    pub sent_after_1s: u64,
    /// … of which in the last 3 s before `to`.
    pub sent_last_3s: u64,
    /// The last scrape (since `from`) at which its count had grown: the last new request
    /// went out at most this long after the fault began (100 ms resolution). `None`: none.
    pub last_new: Option<Duration>,
    /// First scrape since `from` at which `weir_endpoint_healthy` said 0.
    pub unhealthy: Option<Duration>,
    /// First scrape since `from` at which `GET /apps/web` said `"ejected": true`.
    pub ejected: Option<Duration>,
    /// First scrape after `to` at which it got a new request, since `to`.
    pub back: Option<Duration>,
}

/// The [`Timeline`] of `endpoint` in `scrapes`.
pub fn timeline(scrapes: &[Scrape], endpoint: &str, from: Duration, to: Duration) -> Timeline {
    // The count at time t: the last scrape taken at or before t.
    let count_at = |t: Duration| scrapes.iter().take_while(|s| s.at <= t).last().map_or(0, |s| s.sent_to(endpoint));
    let at_from = count_at(from);
    let at_to = count_at(to);
    let mut t = Timeline {
        sent: at_to - at_from,
        sent_after_1s: at_to - count_at(from + Duration::from_secs(1)).max(at_from),
        sent_last_3s: at_to - count_at(to.saturating_sub(Duration::from_secs(3))).max(at_from),
        ..Timeline::default()
    };
    let mut prev = at_from;
    for s in scrapes.iter().filter(|s| s.at > from) {
        let since = s.at - from;
        let healthy = s.gauge("weir_endpoint_healthy", &[("endpoint", endpoint)]);
        if healthy == Some(0.0) && t.unhealthy.is_none() {
            t.unhealthy = Some(since);
        }
        if s.endpoints.get(endpoint).is_some_and(|e| e.ejected) && t.ejected.is_none() {
            t.ejected = Some(since);
        }
        let count = s.sent_to(endpoint);
        if s.at <= to && count > prev {
            t.last_new = Some(since);
        }
        if s.at > to && count > at_to && t.back.is_none() {
            t.back = Some(s.at - to);
        }
        prev = count;
    }
    t
}

/// The change, first scrape to last, of every counter whose name contains one of `patterns`
/// (by [`Series::key`]), e.g. `["retr", "hedg", "eject"]`.
pub fn counter_deltas(scrapes: &[Scrape], patterns: &[&str]) -> BTreeMap<String, f64> {
    let (Some(first), Some(last)) = (scrapes.first(), scrapes.last()) else { return BTreeMap::new() };
    let wanted = |s: &&Series| s.name.ends_with("_total") && patterns.iter().any(|p| s.name.contains(p));
    let before: BTreeMap<String, f64> = first.series.iter().filter(wanted).map(|s| (s.key(), s.value)).collect();
    let mut out = BTreeMap::new();
    for s in last.series.iter().filter(wanted) {
        *out.entry(s.key()).or_default() += s.value - before.get(&s.key()).copied().unwrap_or(0.0);
    }
    out
}

/// `1.234s`, `12ms`.
pub fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) { format!("{:.2}s", d.as_secs_f64()) } else { format!("{}ms", d.as_millis()) }
}
