//! A stand-in Kubernetes API server for the resources Weir watches (EndpointSlices, Pods) and
//! the ones it keeps its state in (ConfigMaps, Leases), speaking the wire protocol kube-rs
//! uses, on 127.0.0.1.
//!
//! Faithful: list with `labelSelector` (equality and set-based), `limit`/`continue`, list
//! `metadata.resourceVersion` and per-object `resourceVersion` from one global counter; watch
//! with `resourceVersion=N` replays later events, one JSON event per line; an object that stops
//! matching arrives as DELETED with its previous content and the new resourceVersion; BOOKMARK
//! events carry kind and apiVersion; the stream ends cleanly at `timeoutSeconds` (capped by
//! `max_watch`); a too-old resourceVersion gets HTTP 200 and an in-stream ERROR Status 410.
//! Objects are built by serializing k8s-openapi types. ConfigMaps and Leases also take GET of
//! one object, POST (create: 409 AlreadyExists), PUT (replace: 409 Conflict when the body's
//! `metadata.resourceVersion` is not the stored one, unconditional without it, 404 when
//! missing) and DELETE, and `fieldSelector=metadata.name=<name>` on list and watch.
//!
//! TokenReview and SubjectAccessReview are answered from tables the test sets
//! ([`FakeKube::add_user`], [`FakeKube::grant`]), the reviews received are kept.
//!
//! Not covered compared with a real API server: authentication of Weir itself, real RBAC
//! evaluation (roles, bindings, aggregation; see the manifest test), field selectors other than `metadata.name`, PATCH, `resourceVersionMatch` semantics, streaming lists
//! (`sendInitialEvents`), protobuf, HTTP/2, and admission/validation of the objects.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, std::io::Error>;

/// One change in the store.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: &'static str,
    namespace: String,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (resource, namespace, name) -> object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    log: Vec<Change>,
    /// Watches asking for a resourceVersion below this get 410.
    compacted: u64,
    /// Pending forced failures: (status, watch requests only).
    failures: VecDeque<(u16, bool)>,
    requests: Vec<String>,
    /// Replaces refused with 409 Conflict.
    conflicts: u64,
    /// TokenReview: token → (username, groups).
    users: BTreeMap<String, (String, Vec<String>)>,
    /// SubjectAccessReview: (user, verb, resource, name) allowed; name "" = any.
    grants: std::collections::BTreeSet<(String, String, String, String)>,
    /// Every SubjectAccessReview spec received.
    access_reviews: Vec<Value>,
}

/// The stand-in API server.
pub struct FakeKube {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    /// Cancels the current incarnation (listener and every connection).
    life: Mutex<CancellationToken>,
    /// Ends open watch streams abruptly (mid-chunk), without stopping the server.
    drop_watches: Mutex<CancellationToken>,
    /// Lines to send on open watch streams as they are.
    raw_lines: broadcast::Sender<String>,
    /// Longest watch before a clean end, whatever the client asked.
    pub max_watch: Duration,
    /// Requests are held, unanswered, while set (a partitioned or overloaded API server).
    stalled: std::sync::atomic::AtomicBool,
    /// Requests are carried out, but their answers held while set (the reply is lost).
    answers_held: std::sync::atomic::AtomicBool,
}

impl FakeKube {
    pub async fn start(max_watch: Duration) -> Arc<FakeKube> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Arc::new(FakeKube {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            changes: broadcast::channel(4096).0,
            life: Mutex::new(CancellationToken::new()),
            drop_watches: Mutex::new(CancellationToken::new()),
            raw_lines: broadcast::channel(64).0,
            max_watch,
            stalled: std::sync::atomic::AtomicBool::new(false),
            answers_held: std::sync::atomic::AtomicBool::new(false),
        });
        fake.serve(listener);
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let life = self.life.lock().unwrap().clone();
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = life.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (me, life) = (Arc::clone(&me), life.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let me = Arc::clone(&me);
                        async move {
                            let resp = Arc::clone(&me).handle(req).await;
                            while me.answers_held.load(std::sync::atomic::Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = life.cancelled() => {}
                    }
                });
            }
        });
    }

    /// The API goes away: listener closed, every connection dropped.
    pub fn down(&self) {
        self.life.lock().unwrap().cancel();
    }

    /// The API comes back on the same address.
    pub async fn up(self: &Arc<Self>) {
        *self.life.lock().unwrap() = CancellationToken::new();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }

    /// Connections are accepted and requests read, but nothing is answered until
    /// [`FakeKube::unstall`]; a request whose client gave up meanwhile is dropped unapplied.
    pub fn stall(&self) {
        self.stalled.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests are answered again, the held ones first.
    pub fn unstall(&self) {
        self.stalled.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests are carried out (a write is stored, watchers told) but their answers are held
    /// until `hold_answers(false)`: the client cannot know its write took.
    pub fn hold_answers(&self, hold: bool) {
        self.answers_held.store(hold, std::sync::atomic::Ordering::SeqCst);
    }

    /// Breaks every open watch stream mid-flight.
    pub fn drop_watches(&self) {
        let mut t = self.drop_watches.lock().unwrap();
        t.cancel();
        *t = CancellationToken::new();
    }

    /// Sends a line that is not a watch event on every open watch stream.
    pub fn send_malformed_line(&self) {
        let _ = self.raw_lines.send("{\"type\": \"ADDED\", \"object\": {not json\n".into());
    }

    /// The next `count` requests (or watch requests) get HTTP `status` with a Status body.
    pub fn fail_next(&self, status: u16, count: usize, watch_only: bool) {
        let mut s = self.state.lock().unwrap();
        s.failures.extend(std::iter::repeat_n((status, watch_only), count));
    }

    /// Forgets history: watches from any older resourceVersion now get 410 Gone.
    pub fn compact(&self) {
        let mut s = self.state.lock().unwrap();
        s.compacted = s.rv;
        s.log.clear();
    }

    /// Requests seen so far (method and path with query), for assertions.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Creates or replaces an object (an ADDED or MODIFIED event).
    pub fn apply<K: k8s_openapi::Resource + serde::Serialize>(&self, object: &K) {
        let mut value = serde_json::to_value(object).unwrap();
        value["kind"] = json!(K::KIND);
        value["apiVersion"] = json!(K::API_VERSION);
        let ns = value["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = value["metadata"]["name"].as_str().unwrap().to_string();
        let resource = plural::<K>();
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        value["metadata"]["namespace"] = json!(ns);
        value["metadata"]["resourceVersion"] = json!(rv.to_string());
        let old = s.objects.insert((resource, ns.clone(), name), value.clone());
        let change = Change { rv, resource, namespace: ns, old, new: Some(value) };
        s.log.push(change.clone());
        let _ = self.changes.send(change);
    }

    /// Deletes an object (a DELETED event).
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) {
        let resource = plural::<K>();
        let mut s = self.state.lock().unwrap();
        let Some(old) = s.objects.remove(&(resource, namespace.to_string(), name.to_string())) else { return };
        s.rv += 1;
        let change = Change { rv: s.rv, resource, namespace: namespace.into(), old: Some(old), new: None };
        s.log.push(change.clone());
        let _ = self.changes.send(change);
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query: BTreeMap<String, String> =
            req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        while self.stalled.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        {
            let mut s = self.state.lock().unwrap();
            s.requests.push(format!("{} {}", req.method(), req.uri()));
            if let Some(pos) = s.failures.iter().position(|(_, watch_only)| !watch_only || watch) {
                let (status, _) = s.failures.remove(pos).unwrap();
                return status_response(status, "injected failure");
            }
        }
        if req.method() == http::Method::POST
            && (path == "/apis/authentication.k8s.io/v1/tokenreviews"
                || path == "/apis/authorization.k8s.io/v1/subjectaccessreviews")
        {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return status_response(400, &format!("reading the body: {e}")),
            };
            let Ok(mut review) = serde_json::from_slice::<Value>(&body) else {
                return status_response(400, "bad review");
            };
            let mut s = self.state.lock().unwrap();
            if path.ends_with("tokenreviews") {
                let token = review["spec"]["token"].as_str().unwrap_or("");
                review["status"] = match s.users.get(token) {
                    Some((user, groups)) => {
                        json!({ "authenticated": true, "user": { "username": user, "groups": groups, "uid": "uid-1" } })
                    }
                    None => json!({ "authenticated": false, "error": "invalid bearer token" }),
                };
            } else {
                let spec = review["spec"].clone();
                s.access_reviews.push(spec.clone());
                let a = &spec["resourceAttributes"];
                let field = |k: &str| a[k].as_str().unwrap_or("").to_string();
                let user = spec["user"].as_str().unwrap_or("").to_string();
                let allowed = a["group"] == "weir.dev"
                    && [field("name"), String::new()]
                        .into_iter()
                        .any(|n| s.grants.contains(&(user.clone(), field("verb"), field("resource"), n)));
                review["status"] = json!({ "allowed": allowed });
            }
            return json_response(201, &review);
        }
        let segments: Vec<String> = path.trim_matches('/').split('/').map(str::to_string).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let (resource, namespace, name) = match segments.as_slice() {
            ["apis", "discovery.k8s.io", "v1", "namespaces", ns, "endpointslices"] => {
                ("endpointslices", ns.to_string(), None)
            }
            ["api", "v1", "namespaces", ns, "pods"] => ("pods", ns.to_string(), None),
            ["api", "v1", "namespaces", ns, "configmaps", rest @ ..] if rest.len() <= 1 => {
                ("configmaps", ns.to_string(), rest.first().map(|n| n.to_string()))
            }
            ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", rest @ ..] if rest.len() <= 1 => {
                ("leases", ns.to_string(), rest.first().map(|n| n.to_string()))
            }
            _ => return status_response(404, &format!("the server could not find the requested resource {path}")),
        };
        let method = req.method().clone();
        if name.is_some() || method != http::Method::GET {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return status_response(400, &format!("reading the body: {e}")),
            };
            return self.object(method, resource, namespace, name, &body);
        }
        let mut selector = match Selector::parse(query.get("labelSelector").map_or("", String::as_str)) {
            Ok(s) => s,
            Err(e) => return status_response(400, &format!("unable to parse requirement: {e}")),
        };
        if let Some(fields) = query.get("fieldSelector").filter(|f| !f.is_empty()) {
            match fields.strip_prefix("metadata.name==").or_else(|| fields.strip_prefix("metadata.name=")) {
                Some(n) if !n.contains(',') => selector.0.push(Requirement::Name(n.to_string())),
                _ => {
                    return status_response(400, &format!("the stand-in supports only metadata.name=, not {fields:?}"));
                }
            }
        }
        if watch {
            self.watch(resource, namespace, selector, &query)
        } else {
            self.list(resource, &namespace, &selector, &query)
        }
    }

    /// GET, PUT or DELETE of one object; POST (create) to a collection.
    fn object(
        &self,
        method: http::Method,
        resource: &'static str,
        ns: String,
        name: Option<String>,
        body: &[u8],
    ) -> Response<Body> {
        let (kind, api_version) = kind_of(resource);
        let parsed = || -> Result<Value, String> {
            let mut v: Value = serde_json::from_slice(body).map_err(|e| format!("bad object: {e}"))?;
            v["kind"] = json!(kind);
            v["apiVersion"] = json!(api_version);
            v["metadata"]["namespace"] = json!(ns);
            Ok(v)
        };
        let mut s = self.state.lock().unwrap();
        match (method, name) {
            (http::Method::GET, Some(name)) => match s.objects.get(&(resource, ns.clone(), name.clone())) {
                Some(o) => json_response(200, o),
                None => status_response(404, &format!("{resource} \"{name}\" not found")),
            },
            (http::Method::POST, None) => {
                let mut v = match parsed() {
                    Ok(v) => v,
                    Err(e) => return status_response(400, &e),
                };
                let Some(name) = v["metadata"]["name"].as_str().map(str::to_string) else {
                    return status_response(422, "metadata.name is required");
                };
                if s.objects.contains_key(&(resource, ns.clone(), name.clone())) {
                    return status_response(409, &format!("{resource} \"{name}\" already exists"));
                }
                s.rv += 1;
                v["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                let change = Change { rv: s.rv, resource, namespace: ns.clone(), old: None, new: Some(v.clone()) };
                s.objects.insert((resource, ns, name), v.clone());
                s.log.push(change.clone());
                let _ = self.changes.send(change);
                json_response(201, &v)
            }
            (http::Method::PUT, Some(name)) => {
                let mut v = match parsed() {
                    Ok(v) => v,
                    Err(e) => return status_response(400, &e),
                };
                let key = (resource, ns.clone(), name.clone());
                let Some(old) = s.objects.get(&key).cloned() else {
                    return status_response(404, &format!("{resource} \"{name}\" not found"));
                };
                if let Some(asked) = v["metadata"]["resourceVersion"].as_str().filter(|a| !a.is_empty())
                    && Some(asked) != old["metadata"]["resourceVersion"].as_str()
                {
                    s.conflicts += 1;
                    return status_response(
                        409,
                        &format!(
                            "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; \
                             please apply your changes to the latest version and try again"
                        ),
                    );
                }
                s.rv += 1;
                v["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                v["metadata"]["name"] = json!(name);
                let change = Change { rv: s.rv, resource, namespace: ns, old: Some(old), new: Some(v.clone()) };
                s.objects.insert(key, v.clone());
                s.log.push(change.clone());
                let _ = self.changes.send(change);
                json_response(200, &v)
            }
            (http::Method::DELETE, Some(name)) => {
                let Some(old) = s.objects.remove(&(resource, ns.clone(), name.clone())) else {
                    return status_response(404, &format!("{resource} \"{name}\" not found"));
                };
                s.rv += 1;
                let change = Change { rv: s.rv, resource, namespace: ns, old: Some(old.clone()), new: None };
                s.log.push(change.clone());
                let _ = self.changes.send(change);
                json_response(200, &old)
            }
            (m, _) => status_response(405, &format!("the stand-in does not serve {m} here")),
        }
    }

    /// An object as stored, if any.
    pub fn get_raw(&self, resource: &'static str, namespace: &str, name: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(&(resource, namespace.to_string(), name.to_string())).cloned()
    }

    /// Objects of `resource` in `namespace`.
    pub fn list_raw(&self, resource: &'static str, namespace: &str) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.objects.iter().filter(|((r, n, _), _)| *r == resource && n == namespace).map(|(_, o)| o.clone()).collect()
    }

    /// A token the TokenReview stand-in knows, as `username`.
    pub fn add_user(&self, token: &str, username: &str, groups: &[&str]) {
        let groups = groups.iter().map(|g| g.to_string()).collect();
        self.state.lock().unwrap().users.insert(token.into(), (username.into(), groups));
    }

    /// Lets `user` do `verb` on `resource` (weir.dev) named `name` ("" = any name).
    pub fn grant(&self, user: &str, verb: &str, resource: &str, name: &str) {
        self.state.lock().unwrap().grants.insert((user.into(), verb.into(), resource.into(), name.into()));
    }

    /// Every SubjectAccessReview spec received so far.
    pub fn access_reviews(&self) -> Vec<Value> {
        self.state.lock().unwrap().access_reviews.clone()
    }

    /// PUT requests refused with 409 Conflict so far.
    pub fn conflicts(&self) -> u64 {
        self.state.lock().unwrap().conflicts
    }

    fn list(
        &self,
        resource: &'static str,
        ns: &str,
        selector: &Selector,
        q: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let s = self.state.lock().unwrap();
        let all: Vec<&Value> = s
            .objects
            .iter()
            .filter(|((r, n, _), o)| *r == resource && n == ns && selector.matches(o))
            .map(|(_, o)| o)
            .collect();
        let start: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).filter(|&l| l > 0).unwrap_or(usize::MAX);
        let page: Vec<&Value> = all.iter().skip(start).take(limit).copied().collect();
        let mut metadata = json!({ "resourceVersion": s.rv.to_string() });
        if start + page.len() < all.len() {
            metadata["continue"] = json!((start + page.len()).to_string());
        }
        let (kind, api_version) = kind_of(resource);
        let body =
            json!({ "kind": format!("{kind}List"), "apiVersion": api_version, "metadata": metadata, "items": page });
        json_response(200, &body)
    }

    fn watch(
        self: Arc<Self>,
        resource: &'static str,
        ns: String,
        selector: Selector,
        q: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let asked = q.get("timeoutSeconds").and_then(|t| t.parse().ok()).map_or(self.max_watch, Duration::from_secs);
        let timeout = asked.min(self.max_watch);
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(256);
        // Subscribe before reading the log, so no change falls between replay and live.
        let mut live = self.changes.subscribe();
        let mut raw = self.raw_lines.subscribe();
        let dropper = self.drop_watches.lock().unwrap().clone();
        let (replay, too_old, current) = {
            let s = self.state.lock().unwrap();
            let replay: Vec<Change> = s.log.iter().filter(|c| c.rv > from).cloned().collect();
            (replay, from != 0 && from < s.compacted, s.rv)
        };
        let (kind, api_version) = kind_of(resource);
        tokio::spawn(async move {
            let send = |line: String| {
                let tx = tx.clone();
                async move { tx.send(Ok(Bytes::from(line + "\n"))).await.is_ok() }
            };
            if too_old {
                let status = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {from} ({current})"),
                    "reason": "Expired", "code": 410,
                });
                send(json!({ "type": "ERROR", "object": status }).to_string()).await;
                return;
            }
            let mut last = from;
            for c in replay {
                last = c.rv;
                if let Some(line) = event_line(&c, resource, &ns, &selector)
                    && !send(line).await
                {
                    return;
                }
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => {
                        if bookmarks {
                            let rv = last.max(current);
                            let bm = json!({ "kind": kind, "apiVersion": api_version, "metadata": { "resourceVersion": rv.to_string() } });
                            send(json!({ "type": "BOOKMARK", "object": bm }).to_string()).await;
                        }
                        return; // clean end of stream
                    }
                    () = dropper.cancelled() => {
                        let _ = tx.send(Err(std::io::Error::other("watch stream dropped"))).await;
                        return;
                    }
                    line = raw.recv() => {
                        if let Ok(line) = line {
                            let _ = tx.send(Ok(Bytes::from(line))).await;
                        }
                    }
                    change = live.recv() => {
                        let Ok(c) = change else { return };
                        if c.rv <= last {
                            continue;
                        }
                        last = c.rv;
                        if let Some(line) = event_line(&c, resource, &ns, &selector)
                            && !send(line).await
                        {
                            return;
                        }
                    }
                }
            }
        });
        let body = http_body_util::StreamBody::new(ReceiverStream(rx)).boxed();
        let mut resp = Response::new(body);
        resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
        resp
    }
}

/// The watch event a change means for a watcher of `resource` in `ns` with `selector`.
fn event_line(c: &Change, resource: &str, ns: &str, selector: &Selector) -> Option<String> {
    if c.resource != resource || c.namespace != ns {
        return None;
    }
    let was = c.old.as_ref().is_some_and(|o| selector.matches(o));
    let is = c.new.as_ref().is_some_and(|o| selector.matches(o));
    let (kind, object) = match (was, is) {
        (false, true) if c.old.is_none() => ("ADDED", c.new.clone().unwrap()),
        (false, true) => ("ADDED", c.new.clone().unwrap()),
        (true, true) => ("MODIFIED", c.new.clone().unwrap()),
        (true, false) => {
            // Gone from this watch: its previous content, at the new resourceVersion.
            let mut old = c.old.clone().unwrap();
            old["metadata"]["resourceVersion"] = json!(c.rv.to_string());
            ("DELETED", old)
        }
        (false, false) => return None,
    };
    Some(json!({ "type": kind, "object": object }).to_string())
}

struct ReceiverStream(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_util::Stream for ReceiverStream {
    type Item = Result<http_body::Frame<Bytes>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|m| m.map(|r| r.map(http_body::Frame::data)))
    }
}

fn plural<K: k8s_openapi::Resource>() -> &'static str {
    match K::KIND {
        "EndpointSlice" => "endpointslices",
        "Pod" => "pods",
        "ConfigMap" => "configmaps",
        "Lease" => "leases",
        other => panic!("the stand-in serves EndpointSlices, Pods, ConfigMaps and Leases, not {other}"),
    }
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "endpointslices" => ("EndpointSlice", "discovery.k8s.io/v1"),
        "configmaps" => ("ConfigMap", "v1"),
        "leases" => ("Lease", "coordination.k8s.io/v1"),
        _ => ("Pod", "v1"),
    }
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    let mut resp =
        Response::new(Full::new(Bytes::from(body.to_string())).map_err(|never: Infallible| match never {}).boxed());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp
}

fn status_response(code: u16, message: &str) -> Response<Body> {
    let reason = match code {
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        422 => "Invalid",
        410 => "Expired",
        _ => "InternalError",
    };
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    json_response(code, &body)
}

/// A label selector: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`, `!a`.
#[derive(Debug, Clone, Default)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    /// From `fieldSelector=metadata.name=<name>`.
    Name(String),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, ch) in text.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        let mut reqs = Vec::new();
        for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or(format!("bad set in {part:?}"))?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set(rest)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if part.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                Requirement::Exists(part.into())
            } else {
                return Err(format!("unable to parse {part:?}"));
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v),
            Requirement::NotEq(k, v) => get(k) != Some(v),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Name(n) => object["metadata"]["name"].as_str() == Some(n),
        })
    }
}

#[cfg(test)]
mod selector_tests {
    use super::*;

    #[test]
    fn equality_and_set_based_selectors() {
        let obj = json!({ "metadata": { "labels": { "app": "web", "version": "v2.0.0", "track": "canary" } } });
        for (sel, want) in [
            ("app=web", true),
            ("app==web,version=v2.0.0", true),
            ("app!=web", false),
            ("version in (v1.0.0, v2.0.0)", true),
            ("version notin (v2.0.0)", false),
            ("track", true),
            ("!track", false),
            ("app=web,tier", false),
            ("", true),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&obj), want, "{sel}");
        }
    }
}
