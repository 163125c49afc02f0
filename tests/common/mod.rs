//! Shared helpers for integration tests: real backends, a real Weir, a real client, all on
//! 127.0.0.1 with ephemeral ports.
#![allow(dead_code)]
pub mod process;
pub mod recorder;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A test backend answering `Host: <name>, Version: <version>\n`, plus:
/// `/echo` streams the request body back, `/headers` lists the request headers one per line,
/// `/slow` waits 2 s first, `/drip` sends a chunk and waits for [`Backend::release`], `/ready`
/// answers 200 or 503 as set by [`Backend::set_ready`].
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicU64>,
    /// `/drip` sends its first chunk, then waits for this before the second.
    pub release: Arc<tokio::sync::Notify>,
    shared: Arc<Shared>,
    crash: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    hello: String,
    hits: Arc<AtomicU64>,
    release: Arc<tokio::sync::Notify>,
    /// 0 normal, 1 every answer 500, 2 every other answer 500, 3 one in ten.
    mode: AtomicU8,
    ready: AtomicBool,
    served: AtomicU64,
    /// 500s sent.
    errors: AtomicU64,
    /// Connections open now.
    open: AtomicU64,
    /// Connections accepted since start.
    accepted: AtomicU64,
    /// How long `/ready` takes to answer, in ms.
    ready_delay_ms: AtomicU64,
    /// How long every other answer takes, in ms.
    delay_ms: AtomicU64,
}

type TestBody = BoxBody<Bytes, hyper::Error>;

fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into()).map_err(|never: Infallible| match never {}).boxed()
}

impl Backend {
    pub async fn spawn(name: &str, version: &str) -> Backend {
        Self::spawn_at("127.0.0.1:0".parse().unwrap(), name, version).await
    }

    pub async fn spawn_at(addr: SocketAddr, name: &str, version: &str) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let shared = Arc::new(Shared {
            hello: format!("Host: {name}, Version: {version}\n"),
            hits: hits.clone(),
            release: release.clone(),
            mode: AtomicU8::new(0),
            ready: AtomicBool::new(true),
            served: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            open: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            ready_delay_ms: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
        });
        let crash = tokio_util::sync::CancellationToken::new();
        let (sh, cr) = (shared.clone(), crash.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (shared, crash) = (sh.clone(), cr.clone());
                shared.open.fetch_add(1, Ordering::SeqCst);
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let counted = shared.clone();
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(answer(req, &shared).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    // A crash drops the connection mid-flight, as a killed process would.
                    tokio::select! {
                        _ = conn => {}
                        () = crash.cancelled() => {}
                    }
                    counted.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Backend { addr, name: name.to_string(), hits, release, shared, crash, task }
    }

    /// Makes the backend answer 500 to everything (true) or behave again (false).
    pub fn fail(&self, failing: bool) {
        self.shared.mode.store(u8::from(failing), Ordering::SeqCst);
    }

    /// Makes every other answer a 500.
    pub fn fail_half(&self) {
        self.shared.mode.store(2, Ordering::SeqCst);
    }

    /// Makes one answer in ten a 500 (the tenth, twentieth...).
    pub fn fail_tenth(&self) {
        self.shared.mode.store(3, Ordering::SeqCst);
    }

    /// Makes every answer but `/ready` and `/live` take `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes `/ready` answer only after `delay` (a slow probe).
    pub fn set_ready_delay(&self, delay: Duration) {
        self.shared.ready_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Connections open to this backend now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since the backend started.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// 500s this backend has sent.
    pub fn errors_sent(&self) -> u64 {
        self.shared.errors.load(Ordering::SeqCst)
    }

    /// What `/ready` answers: 200 (true) or 503.
    pub fn set_ready(&self, ready: bool) {
        self.shared.ready.store(ready, Ordering::SeqCst);
    }

    /// Stops accepting and closes the listening socket; returns once it is closed, so new
    /// connections are refused. Connections already open live on until their peer closes.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Like a killed process: the listener closes and every open connection drops at once,
    /// in-flight requests included.
    pub async fn crash(self) {
        self.crash.cancel();
        self.kill().await;
    }
}

async fn answer(req: Request<Incoming>, s: &Shared) -> Response<TestBody> {
    let path = req.uri().path();
    if path == "/ready" {
        let delay = s.ready_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    if path == "/ready" || path == "/live" {
        let ok = path == "/live" || s.ready.load(Ordering::SeqCst);
        let mut r = Response::new(full(if ok { "ok\n" } else { "not ready\n" }));
        if !ok {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        return r;
    }
    s.hits.fetch_add(1, Ordering::SeqCst);
    let n = s.served.fetch_add(1, Ordering::SeqCst);
    let fail = match s.mode.load(Ordering::SeqCst) {
        1 => true,
        2 => n % 2 == 1,
        3 => n % 10 == 9,
        _ => false,
    };
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if fail {
        s.errors.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(full("broken\n"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    match path {
        "/echo" => Response::new(req.into_body().boxed()),
        "/headers" => {
            let mut out = String::new();
            for (k, v) in req.headers() {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            Response::new(full(out))
        }
        "/drip" => {
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let release = s.release.clone();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first\n")).await;
                release.notified().await;
                let _ = tx.send(Bytes::from_static(b"second\n")).await;
            });
            Response::new(ChannelBody(rx).boxed())
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::new(full(s.hello.clone()))
        }
        _ => Response::new(full(s.hello.clone())),
    }
}

/// A body fed from a channel: each message is one data frame; the body ends when the sender
/// is dropped. Lets a test interleave sending and receiving.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Renders a config for one app `web` on listener `main` with the given versions and weights.
pub fn config(versions: &[(&str, &[&Backend])], weights: &[(&str, i64)], extra: &str) -> String {
    let mut s = String::from("[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\n");
    s.push_str("[apps.web]\nlistener = \"main\"\n");
    s.push_str(extra);
    s.push_str("\n[apps.web.split]\n");
    for (v, w) in weights {
        s.push_str(&format!("{v} = {w}\n"));
    }
    for (v, backends) in versions {
        s.push_str(&format!("[apps.web.versions.{v}]\nendpoints = [\n"));
        for b in *backends {
            s.push_str(&format!("  {{ name = \"{}\", addr = \"{}\" }},\n", b.name, b.addr));
        }
        s.push_str("]\n");
    }
    s
}

/// `text` with `[admin] tokens_file` naming a file written with `tokens` in `dir`.
pub fn with_tokens_file(text: &str, dir: &std::path::Path, tokens: &str) -> String {
    let file = dir.join("tokens.toml");
    std::fs::write(&file, tokens).unwrap();
    text.replacen("[admin]\n", &format!("[admin]\ntokens_file = {:?}\n", file.to_str().unwrap()), 1)
}

/// Starts Weir from config text.
pub async fn start(config: &str) -> weir::Running {
    let config = weir::Config::parse(config, "test").unwrap_or_else(|e| panic!("{e}"));
    weir::start(config).await.expect("weir starts")
}

/// A standard v1 ×2 / v2 ×2 setup at the given weights.
pub async fn two_versions(v1: i64, v2: i64) -> (weir::Running, Vec<Backend>) {
    let b = vec![
        Backend::spawn("web-v1-0", "v1").await,
        Backend::spawn("web-v1-1", "v1").await,
        Backend::spawn("web-v2-0", "v2").await,
        Backend::spawn("web-v2-1", "v2").await,
    ];
    let text = config(&[("v1", &[&b[0], &b[1]]), ("v2", &[&b[2], &b[3]])], &[("v1", v1), ("v2", v2)], "");
    (start(&text).await, b)
}

/// A real HTTP/1.1 client with a keep-alive pool.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

/// A response: status, body, headers.
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
    pub headers: http::HeaderMap,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// The `Version:` a demo/test backend reported.
    pub fn version(&self) -> &str {
        self.body.trim().rsplit("Version: ").next().unwrap_or("")
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        Client { inner: HyperClient::builder(TokioExecutor::new()).build_http() }
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let resp = tokio::time::timeout(Duration::from_secs(10), self.inner.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status: parts.status, body: String::from_utf8_lossy(&body).into_owned(), headers: parts.headers })
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send(Request::get(url).body(Full::default()).unwrap()).await.unwrap()
    }

    /// A JSON admin call.
    pub async fn call(&self, method: &str, url: &str, json: &str) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json.to_string())))
            .unwrap();
        self.send(req).await.unwrap()
    }
}

/// Base URL of the first traffic listener and of the admin API.
pub fn urls(w: &weir::Running) -> (String, String) {
    (format!("http://{}", w.listeners["main"]), format!("http://{}", w.admin))
}

/// Sends `n` requests over `concurrency` connections and counts versions by `Version:`.
pub async fn count_versions(client: &Client, url: &str, n: usize, concurrency: usize) -> BTreeMap<String, usize> {
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (client, url) = (client.clone(), url.to_string());
        let share = n / concurrency + usize::from(i < n % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut counts = BTreeMap::new();
            for _ in 0..share {
                let r = client.get(&url).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.body);
                *counts.entry(r.version().to_string()).or_insert(0) += 1;
            }
            counts
        }));
    }
    let mut total = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, for the assertion message.
    pub errors: Vec<String>,
}

/// `clients` concurrent clients, each sending GETs in a loop (each on its own keep-alive
/// connection pool) until stopped, bounded by `max_per_client` requests and 60 s.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl Load {
    pub fn start(url: &str, clients: usize, max_per_client: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop) = (url.to_string(), stop.clone());
                tokio::spawn(async move {
                    let client = Client::new();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                    let mut r = LoadReport::default();
                    while !stop.load(Ordering::Relaxed)
                        && r.ok + r.failed < max_per_client
                        && tokio::time::Instant::now() < deadline
                    {
                        match client.send(Request::get(&url).body(Full::default()).unwrap()).await {
                            Ok(resp) if resp.status == 200 && resp.body.starts_with("Host: ") => r.ok += 1,
                            Ok(resp) => {
                                r.failed += 1;
                                if r.errors.len() < 5 {
                                    r.errors.push(format!("{} {}", resp.status, resp.body.trim()));
                                }
                            }
                            Err(e) => {
                                r.failed += 1;
                                if r.errors.len() < 5 {
                                    r.errors.push(e);
                                }
                            }
                        }
                    }
                    r
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Lets the clients run until at least `n` more requests completed (bounded by 30 s).
    pub async fn run_for_requests(&self, backends: &[&Backend], n: u64) {
        let count = || backends.iter().map(|b| b.hits.load(Ordering::SeqCst)).sum::<u64>();
        let target = count() + n;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while count() < target && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadReport::default();
        for t in self.tasks {
            let r = t.await.unwrap();
            total.ok += r.ok;
            total.failed += r.failed;
            total.errors.extend(r.errors);
        }
        total.errors.truncate(5);
        total
    }
}

/// Polls `GET /apps/{app}` until `pred` holds (a readiness signal, not a timed assertion: it
/// returns as soon as the condition holds); panics after 30 s, which only a loaded machine and
/// a backoff at its longest come near.
pub async fn wait_for_app(
    client: &Client,
    admin: &str,
    app: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let view = client.get(&format!("{admin}/apps/{app}")).await.json();
        if pred(&view) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {view:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The endpoint named `name` in an app view.
pub fn endpoint<'a>(view: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    view["versions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["endpoints"].as_array().unwrap())
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no endpoint {name} in {view:#}"))
}

/// Waits until a backend's hit count stops moving: no new request reaches it and its in-flight
/// ones are done (a drain signal, polled every 50 ms).
pub async fn drained(b: &Backend) {
    let mut last = b.hits.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = b.hits.load(Ordering::SeqCst);
        if now == last {
            return;
        }
        last = now;
    }
}
