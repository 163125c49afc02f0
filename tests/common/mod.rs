//! Shared helpers for integration tests: real backends, a real Weir, a real client, all on
//! 127.0.0.1 with ephemeral ports.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// `/slow` waits 2 s first.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicU64>,
    /// `/drip` sends its first chunk, then waits for this before the second.
    pub release: Arc<tokio::sync::Notify>,
    alive: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

type TestBody = BoxBody<Bytes, hyper::Error>;

fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into()).map_err(|never: Infallible| match never {}).boxed()
}

impl Backend {
    pub async fn spawn(name: &str, version: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hello: Arc<str> = format!("Host: {name}, Version: {version}\n").into();
        let hits = Arc::new(AtomicU64::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let release = Arc::new(tokio::sync::Notify::new());
        let (h, a, r) = (hits.clone(), alive.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (hello, hits, alive, release) = (hello.clone(), h.clone(), a.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (hello, hits, alive, release) =
                            (hello.clone(), hits.clone(), alive.clone(), release.clone());
                        async move { Ok::<_, Infallible>(answer(req, &hello, &hits, &alive, release).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Backend { addr, name: name.to_string(), hits, release, alive, task }
    }

    /// Makes the backend answer 500 to everything (true) or behave again (false).
    pub fn fail(&self, failing: bool) {
        self.alive.store(!failing, Ordering::SeqCst);
    }

    /// Stops accepting and closes the listening socket; returns once it is closed, so new
    /// connections are refused. Connections already open live on until their peer closes.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn answer(
    req: Request<Incoming>,
    hello: &str,
    hits: &AtomicU64,
    alive: &AtomicBool,
    release: Arc<tokio::sync::Notify>,
) -> Response<TestBody> {
    hits.fetch_add(1, Ordering::SeqCst);
    if !alive.load(Ordering::SeqCst) {
        let mut r = Response::new(full("broken\n"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    match req.uri().path() {
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
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first\n")).await;
                release.notified().await;
                let _ = tx.send(Bytes::from_static(b"second\n")).await;
            });
            Response::new(ChannelBody(rx).boxed())
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::new(full(hello.to_string()))
        }
        _ => Response::new(full(hello.to_string())),
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
