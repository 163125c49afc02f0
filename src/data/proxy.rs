//! The per-request path: route → split → pool → upstream, and the one place errors become
//! status codes.

mod attempt;
mod body;
mod h1;
mod headers;

use std::sync::Arc;
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, header};
use http_body::Body as _;
use http_body_util::{Either, Full};
use prometheus::IntCounter;

pub use body::ResponseBody;
pub use headers::{set_forwarded, strip_hop_by_hop};

use crate::data::listener::{ClientBody, ConnMetrics, Peer};
use crate::data::pool::Endpoint;
use crate::data::snapshot::{App, ForceSource, Forced, Routes, Snapshot, Version};
use crate::data::upstream::{Lease, UpstreamError};
use crate::metrics::{Metrics, UpstreamErrorKind};
use attempt::{Attempts, Exchange, Sent};
use hyper::body::Incoming;
use std::future::Future;

/// Why Weir answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No app serves this host on this listener.
    #[error("no app for host {0:?}")]
    NoRoute(Option<String>),
    /// The chosen version has no endpoint able to take the request.
    #[error("no healthy endpoint in version {0}")]
    NoEndpoint(Arc<str>),
    /// `X-Weir-Version` named a version the app does not have.
    #[error("no version {0:?} in this app")]
    UnknownVersion(String),
    /// The upstream exchange failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl ProxyError {
    /// The status and text Weir answers with: the only place errors become status codes.
    /// Unreachable or broken upstream → 502, timeout → 504, no endpoint → 503, no app → 404.
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoRoute(_) => (StatusCode::NOT_FOUND, "weir: no app serves this host\n"),
            ProxyError::NoEndpoint(_) => (StatusCode::SERVICE_UNAVAILABLE, "weir: no healthy endpoint\n"),
            ProxyError::UnknownVersion(_) => {
                (StatusCode::BAD_REQUEST, "weir: X-Weir-Version names a version this app does not have\n")
            }
            ProxyError::Upstream(e) => match e.kind {
                UpstreamErrorKind::Connect => (StatusCode::BAD_GATEWAY, "weir: upstream unreachable\n"),
                UpstreamErrorKind::Protocol => (StatusCode::BAD_GATEWAY, "weir: upstream connection failed\n"),
                UpstreamErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "weir: upstream timed out\n"),
                UpstreamErrorKind::NoEndpoint => (StatusCode::SERVICE_UNAVAILABLE, "weir: no healthy endpoint\n"),
                UpstreamErrorKind::Client => {
                    (StatusCode::BAD_REQUEST, "weir: the request body was invalid or too slow\n")
                }
            },
        }
    }
}

/// The response for a [`ProxyError`] (see [`ProxyError::answer`]).
pub fn error_response(err: &ProxyError) -> Response<ResponseBody> {
    let (status, text) = err.answer();
    let mut resp = Response::new(ResponseBody::local(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// The proxy service of one listener. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Proxy {
    snapshot: Routes,
    /// `weir_unrouted_requests_total`: all the proxy needs of the registry (the rest is
    /// pre-resolved in the snapshot), so a clone costs no reference counts beyond two.
    unrouted: IntCounter,
    /// Requests refused for their framing or size (`weir_client_errors_total{reason="bad_request"}`).
    refused: IntCounter,
    listener: usize,
    proto: &'static str,
    /// Whether Weir's codec forwards the plain HTTP/1.1 requests itself.
    fast: bool,
    /// Where upgraded connections run, and when they must end.
    tunnels: Option<Arc<Tunnels>>,
}

/// Upgraded connections (WebSocket…) outlive the request that opened them: they run as tasks
/// of the listeners' tracker, so Weir's shutdown waits for them, and after `stop` fires they
/// get `grace` to end on their own before they are closed.
#[derive(Debug)]
pub struct Tunnels {
    /// The tracker shutdown waits on.
    pub tracker: tokio_util::task::TaskTracker,
    /// Fired when the listeners stop (after the drain delay).
    pub stop: tokio_util::sync::CancellationToken,
    /// How long they may last after `stop`.
    pub grace: std::time::Duration,
    /// Tunnels open at most (the listener's `max_connections`): an upgraded connection has
    /// left the listener's connection count, and must not escape every bound.
    pub slots: Arc<tokio::sync::Semaphore>,
}

impl Proxy {
    /// A proxy for the listener at index `listener` of the snapshot's listeners, counting in
    /// `conns` what its codec refuses; `fast` turns the HTTP/1.1 fast path on.
    pub fn new(snapshot: Routes, metrics: &Metrics, listener: usize, conns: &ConnMetrics, fast: bool) -> Self {
        Proxy {
            snapshot,
            unrouted: metrics.unrouted.clone(),
            refused: conns.errors.bad_request.clone(),
            listener,
            proto: "http",
            fast,
            tunnels: None,
        }
    }

    /// Runs upgraded connections under `tunnels` (else as free tasks, ended by nothing but
    /// their peers).
    pub fn with_tunnels(mut self, tunnels: Arc<Tunnels>) -> Self {
        self.tunnels = Some(tunnels);
        self
    }

    /// Says `X-Forwarded-Proto: https` to upstreams (a TLS listener's proxy).
    pub fn https(mut self) -> Self {
        self.proto = "https";
        self
    }

    /// Proxies one request from `client`. Never fails: errors become responses.
    pub async fn handle(&self, mut req: Request<ClientBody>, client: Peer) -> Response<ResponseBody> {
        let start = Instant::now();
        // An upgrade Weir can tunnel: asked for on a connection hyper serves with upgrades
        // (which put the client's side of it in the request), with no body.
        let upgrade = match req.extensions().get::<hyper::upgrade::OnUpgrade>() {
            Some(_) if req.body().is_end_stream() && req.headers().contains_key(header::UPGRADE) => {
                let fields: Vec<_> = req.headers().iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())).collect();
                crate::data::http1::upgrade_of(req.version() == http::Version::HTTP_11, &fields)
                    .and_then(|p| header::HeaderValue::from_bytes(p).ok())
            }
            _ => None,
        };
        let on_client = upgrade.as_ref().and_then(|_| req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>());
        // One view of the routing state for the whole request, retries included.
        let snap = self.snapshot.load_full();
        let authority = req.uri().authority().map(|a| a.as_str());
        let host = authority.or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()));
        let fields = Fields::Map(req.headers());
        let app = match self.route(&snap, host) {
            Ok(app) => app,
            Err(e) => return error_response(&e),
        };
        // A client with no sticky key gets one, in a cookie, when the app says so: its bucket
        // then follows it across addresses and replicas.
        let fresh_key = app.sticky.as_ref().filter(|s| s.set_cookie && sticky_key(s, fields).is_none()).map(|s| {
            let key = format!("{:016x}", fastrand::u64(..));
            (key, s.cookie.clone().unwrap_or_default())
        });
        let (app, version, endpoint, may_spill) =
            match Self::pick_in(app, fields, &client, fresh_key.as_ref().map(|k| k.0.as_bytes())) {
                Ok(picked) => picked,
                Err(e) => return error_response(&e),
            };

        let (mut parts, body) = req.into_parts();
        // An absolute-form target (or HTTP/2's :authority) names the host: the request is
        // routed by it, and the upstream sees it as the one `Host` (RFC 9112 §3.2.2).
        if let Some(auth) = parts.uri.authority().and_then(|a| header::HeaderValue::from_str(a.as_str()).ok()) {
            parts.headers.insert(header::HOST, auth);
        }
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        strip_hop_by_hop(&mut parts.headers);
        // Checked as one plain number already; sent in its plain form (`010` is 8 to a peer
        // that reads a leading zero as octal).
        if canonical_length(&mut parts.headers).is_err() {
            return h1::refusal(StatusCode::BAD_REQUEST, "invalid Content-Length");
        }
        set_forwarded(&mut parts.headers, &client.ip, self.proto, parts.uri.authority().map(|a| a.as_str()));
        // An HTTP/1.0 request may come without `Host`; it goes upstream as HTTP/1.1, which
        // needs one: the endpoint's address, as nginx's `$proxy_host`.
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = header::HeaderValue::from_str(&endpoint.addr.to_string())
        {
            parts.headers.insert(header::HOST, v);
        }
        if let (Some(protocol), Some(on_client)) = (upgrade, on_client) {
            return self.tunnel(app, version, endpoint, parts, path, protocol, on_client, start).await;
        }
        if let Some(mirror) = &app.mirror
            && mirror.wants_for(app, version)
        {
            // Copied only when it has no body: a streamed one cannot be copied without making
            // the client's upload wait for the mirror.
            if body.is_end_stream() {
                let mut copy = Request::new(bytes::Bytes::new());
                *copy.method_mut() = parts.method.clone();
                *copy.uri_mut() = Uri::from(path.clone());
                *copy.headers_mut() = parts.headers.clone();
                mirror.send(app, copy);
            } else {
                mirror.skip();
            }
        }
        // Only a request without a body can be sent again here (a streamed body is gone once
        // sent); it keeps its head for that.
        let replayable = body.is_end_stream();
        let attempts = Attempts::new(app, replayable, parts.method.is_idempotent()).spilling(may_spill);
        let is_head = parts.method == http::Method::HEAD;
        let client_h2 = parts.version == http::Version::HTTP_2;
        let mut body = body;
        let body_done = (!replayable).then(|| body.completion());
        let mut exchange = HyperExchange { path, head: Some(parts), body: Some(body), replayable, is_head, body_done };
        match attempt::drive(app, version, endpoint, attempts, &mut exchange, start).await {
            Ok(Sent { answer: (mut parts, body, lease, check), in_flight, .. }) => {
                // Weir's response is its own HTTP/1.1 message, whatever the upstream spoke.
                parts.version = http::Version::HTTP_11;
                let codings: Vec<_> = parts.headers.get_all(header::TRANSFER_ENCODING).iter().cloned().collect();
                // Codings applied before chunked (`gzip, chunked`): hyper took the chunks off;
                // the others must stay named or the client takes coded bytes for the content.
                let applied: Vec<&[u8]> = crate::data::http1::tokens(codings.iter().map(|v| v.as_bytes()))
                    .filter(|c| !c.eq_ignore_ascii_case(b"chunked"))
                    .collect();
                strip_hop_by_hop(&mut parts.headers);
                // One Content-Length in its plain form: hyper's client takes `5, 5` (equal
                // values, refused here as on the fast path) and `010`, which a client must not
                // get as they came.
                let refuse = |lease: Lease, why: &'static str| {
                    drop(lease.no_reuse());
                    error_response(&ProxyError::Upstream(crate::data::upstream::UpstreamError::protocol(why)))
                };
                if canonical_length(&mut parts.headers).is_err() {
                    return refuse(lease, "invalid Content-Length");
                }
                if !check.until_close && !applied.is_empty() {
                    if client_h2 {
                        // HTTP/2 has no transfer codings to name them with.
                        return refuse(lease, "a transfer coding other than chunked, for an HTTP/2 client");
                    }
                    // hyper chunks the body again after them.
                    if let Ok(v) = header::HeaderValue::from_bytes(&applied.join(&b", "[..])) {
                        parts.headers.insert(header::TRANSFER_ENCODING, v);
                    }
                }
                if check.until_close {
                    // Codings other than chunked go on to the client (it decodes them); the
                    // body ends when the connection does.
                    for c in codings {
                        parts.headers.append(header::TRANSFER_ENCODING, c);
                    }
                    parts.headers.insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                }
                let lease = if check.reusable { lease } else { lease.no_reuse() };
                if let Some((key, name)) = &fresh_key {
                    let secure = if self.proto == "https" { "; Secure" } else { "" };
                    let cookie = format!("{name}={key}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax{secure}");
                    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
                        parts.headers.append(header::SET_COOKIE, v);
                    }
                }
                Response::from_parts(
                    parts,
                    ResponseBody::upstream(body, lease, in_flight, endpoint.client.timeouts.read),
                )
            }
            Err(resp) => resp,
        }
    }

    /// Sends an upgrade request to `endpoint` (once: the upstream may act on it, and a tunnel
    /// is not hedged), and when it switches protocols, joins the two connections in a task
    /// and answers the client 101. A refusal is an ordinary response.
    #[allow(clippy::too_many_arguments)]
    async fn tunnel(
        &self,
        app: &App,
        version: &Version,
        endpoint: &Endpoint,
        mut parts: http::request::Parts,
        path: PathAndQuery,
        protocol: header::HeaderValue,
        on_client: hyper::upgrade::OnUpgrade,
        start: Instant,
    ) -> Response<ResponseBody> {
        parts.uri = Uri::from(path);
        parts.version = http::Version::HTTP_11;
        parts.headers.insert(header::UPGRADE, protocol);
        parts.headers.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
        let slot = match &self.tunnels {
            None => None,
            Some(t) => match Arc::clone(&t.slots).try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    tracing::warn!(app = %app.name, "upgrade refused: the listener's tunnels are all in use");
                    let mut resp = Response::new(ResponseBody::local("weir: too many open tunnels\n"));
                    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    version.metrics.record(resp.status(), None);
                    return resp;
                }
            },
        };
        let req = Request::from_parts(parts, Either::Right(Full::default()));
        let in_flight = crate::data::pool::InFlight::start(&endpoint.state);
        let tried = Instant::now();
        let (mut resp, lease) = match endpoint.client.send_upgrade(req).await {
            Ok(answer) => answer,
            Err(e) => {
                version.metrics.count_error(e.kind);
                crate::data::outlier::on_failure(app, version, endpoint);
                tracing::warn!(app = %app.name, version = %version.name, endpoint = %endpoint.name, "upgrade failed: {e}");
                return attempt::failed(version, e, start);
            }
        };
        attempt::answered(app, version, endpoint, resp.status(), start, tried);
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let on_upstream = switched.then(|| hyper::upgrade::on(&mut resp));
        let (mut parts, body) = resp.into_parts();
        let check = match crate::data::http1::check_response_to(parts.status, &mut parts.headers, false, true) {
            Ok(check) => check,
            Err(why) => {
                return attempt::failed(version, UpstreamError::protocol(format!("invalid response: {why}")), start);
            }
        };
        let switched_to = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = http::Version::HTTP_11;
        let Some(on_upstream) = on_upstream else {
            // Declined: the answer goes back as any other.
            if check.until_close {
                parts.headers.insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            }
            return Response::from_parts(
                parts,
                ResponseBody::upstream(body, lease, in_flight, endpoint.client.timeouts.read),
            );
        };
        let Some(switched_to) = switched_to else {
            let e = UpstreamError::protocol("101 Switching Protocols without Upgrade".to_string());
            return attempt::failed(version, e, start);
        };
        parts.headers.insert(header::UPGRADE, switched_to);
        parts.headers.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
        let names = (Arc::clone(&app.name), Arc::clone(&version.name));
        let run = join(
            on_client,
            on_upstream,
            version.metrics.tunnels.clone(),
            (in_flight, slot),
            names,
            self.tunnels.clone(),
        );
        match &self.tunnels {
            Some(t) => drop(t.tracker.spawn(run)),
            None => drop(tokio::spawn(run)),
        }
        Response::from_parts(parts, ResponseBody::Local(None))
    }

    /// The app for a request to `host`, or why there is none (counted).
    fn route<'s>(&self, snap: &'s Snapshot, host: Option<&str>) -> Result<&'s App, ProxyError> {
        snap.route(self.listener, host).ok_or_else(|| {
            self.unrouted.inc();
            ProxyError::NoRoute(host.map(str::to_owned))
        })
    }

    /// The version and endpoint of `app` for a request, or why there is none (counted).
    /// `fresh_key`: the sticky key just made for a client that had none.
    fn pick_in<'s>(
        app: &'s App,
        fields: Fields<'_>,
        client: &Peer,
        fresh_key: Option<&[u8]>,
    ) -> Result<(&'s App, &'s Version, &'s Endpoint, bool), ProxyError> {
        app.upstream.budget.record_request();
        let unforced = |excluded| unforced(app, fields, client, fresh_key, excluded);
        let forced = forced(app, fields);
        // A hedge may go to another version only for a request no rule placed (into a version
        // or out of one).
        let may_spill = matches!(forced, Ok(None));
        let (version, endpoint) = match forced {
            Ok(None) => unforced(None),
            Ok(Some(Forced::Into(i))) => {
                let v = &app.versions[i];
                match v.pool.pick() {
                    // Forced: never spilled elsewhere, unless the app says to fall back.
                    None if app.force_fallback => unforced(None),
                    picked => (v, picked),
                }
            }
            Ok(Some(Forced::OutOf(i))) => unforced(Some(i)),
            Err(_) if app.force_fallback => unforced(None),
            Err(name) => return Err(ProxyError::UnknownVersion(String::from_utf8_lossy(name).into_owned())),
        };
        let Some(endpoint) = endpoint else {
            version.metrics.count_error(UpstreamErrorKind::NoEndpoint);
            let err = ProxyError::NoEndpoint(Arc::clone(&version.name));
            tracing::warn!(app = %app.name, version = %version.name, "{err}");
            version.metrics.record(err.answer().0, None);
            return Err(err);
        };
        Ok((app, version, endpoint, may_spill))
    }
}

/// The general path's attempt: hyper's client, the head kept for the attempts that may follow.
struct HyperExchange {
    /// Origin form: the request line carries the path, `Host` the client's authority.
    path: PathAndQuery,
    head: Option<http::request::Parts>,
    body: Option<ClientBody>,
    replayable: bool,
    /// A HEAD request: its response has no body, whatever its fields say.
    is_head: bool,
    /// Set once the client's streamed body was read to its end (none: no streamed body).
    body_done: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Exchange for HyperExchange {
    type Answer = (http::response::Parts, Incoming, Lease, crate::data::http1::ResponseCheck);

    fn send<'s>(
        &'s mut self,
        endpoint: &'s Endpoint,
        last: bool,
    ) -> impl Future<Output = Result<Self::Answer, UpstreamError>> + Send + 's {
        let uri = Uri::from(self.path.clone());
        let req = if !last {
            let h = self.head.as_ref().expect("the head is kept while attempts are left");
            let mut req = Request::new(Either::Right(Full::default()));
            *req.method_mut() = h.method.clone();
            *req.uri_mut() = uri;
            *req.headers_mut() = h.headers.clone();
            req
        } else {
            let mut h = self.head.take().expect("the last attempt takes the head");
            h.uri = uri;
            h.version = http::Version::HTTP_11;
            let body = match self.body.take() {
                Some(b) if !self.replayable => Either::Left(b),
                _ => Either::Right(Full::default()),
            };
            Request::from_parts(h, body)
        };
        async move {
            let (resp, lease) = endpoint.client.exchange(req).await?;
            let (mut parts, body) = resp.into_parts();
            // Refused: the connection is not reused (the lease drops unreleased).
            let check = crate::data::http1::check_response(parts.status, &mut parts.headers, self.is_head)
                .map_err(|why| UpstreamError::protocol(format!("invalid response: {why}")))?;
            Ok((parts, body, lease, check))
        }
    }

    fn status(answer: &Self::Answer) -> StatusCode {
        answer.0.status
    }

    fn spare(&self) -> Self {
        HyperExchange {
            path: self.path.clone(),
            head: self.head.clone(),
            body: None,
            replayable: self.replayable,
            is_head: self.is_head,
            body_done: None,
        }
    }

    fn client_sending(&self) -> bool {
        self.body_done.as_ref().is_some_and(|done| !done.load(std::sync::atomic::Ordering::Acquire))
    }
}

/// The request header that forces a version (when the app allows it).
pub const FORCE_HEADER: &str = "x-weir-version";

/// A request's header fields as either path holds them.
#[derive(Clone, Copy)]
enum Fields<'a> {
    /// hyper's (the general path, HTTP/2).
    Map(&'a http::HeaderMap),
    /// Weir's codec's (the HTTP/1.1 fast path).
    Raw(&'a [httparse::Header<'a>]),
}

impl<'a> Fields<'a> {
    /// The first field named `name` (lower case). No allocation.
    fn first(self, name: &[u8]) -> Option<&'a [u8]> {
        match self {
            Fields::Map(m) => std::str::from_utf8(name).ok().and_then(|n| m.get(n)).map(|v| v.as_bytes()),
            Fields::Raw(h) => h.iter().find(|f| f.name.as_bytes().eq_ignore_ascii_case(name)).map(|f| f.value),
        }
    }

    /// The value of cookie `name` in the first `Cookie` field that has it (HTTP/2 clients
    /// may split cookies over several fields). No allocation.
    fn cookie(self, name: &str) -> Option<&'a [u8]> {
        match self {
            Fields::Map(m) => {
                m.get_all(header::COOKIE).iter().find_map(|v| crate::data::split::cookie(v.as_bytes(), name))
            }
            Fields::Raw(h) => h
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case("cookie"))
                .find_map(|f| crate::data::split::cookie(f.value, name)),
        }
    }
}

/// What forces the request, by precedence: `X-Weir-Version` (when the app allows it), then
/// the app's header rules, then its cookie rules. `Err` names a version the app lacks.
#[inline]
fn forced<'a>(app: &App, fields: Fields<'a>) -> Result<Option<Forced>, &'a [u8]> {
    if app.force_header
        && let Some(name) = fields.first(FORCE_HEADER.as_bytes())
    {
        let name = name.trim_ascii();
        return match app.versions.iter().position(|v| v.name.as_bytes() == name) {
            Some(i) => Ok(Some(Forced::Into(i))),
            None => Err(name),
        };
    }
    for rule in &app.force {
        let value = match &rule.source {
            ForceSource::Header(h) => fields.first(h.as_str().as_bytes()),
            ForceSource::Cookie(c) => fields.cookie(c),
        };
        if let Some(decided) = value.and_then(|v| rule.decide(v)) {
            return Ok(Some(decided));
        }
    }
    Ok(None)
}

/// The version for a request no rule forced into one: by the user's sticky bucket when the
/// app has them, else by the weights; never `excluded` (a `never` rule), which then gives up
/// spilling too.
#[inline]
fn unforced<'s>(
    app: &'s App,
    fields: Fields<'_>,
    client: &Peer,
    fresh_key: Option<&[u8]>,
    excluded: Option<usize>,
) -> (&'s Version, Option<&'s Endpoint>) {
    let unit = match &app.sticky {
        None => app.split.next_unit(),
        Some(sticky) => {
            let key = sticky_key(sticky, fields).or(fresh_key).unwrap_or_else(|| client.ip.as_bytes());
            sticky.unit(key)
        }
    };
    match excluded {
        None => choose(app, app.split.pick_unit(unit)),
        Some(out) => match app.split.pick_unit_excluding(unit, out) {
            Some(i) => (&app.versions[i], app.versions[i].pool.pick()),
            // No other version has weight: nothing may take it.
            None => (&app.versions[out], None),
        },
    }
}

/// A request's sticky key: its header, else its cookie.
#[inline]
fn sticky_key<'a>(sticky: &crate::data::split::Sticky, fields: Fields<'a>) -> Option<&'a [u8]> {
    sticky
        .header
        .as_ref()
        .and_then(|h| fields.first(h.as_str().as_bytes()))
        .or_else(|| fields.cookie(sticky.cookie.as_deref()?))
}

/// The version at `index` of the weight line and a healthy endpoint in it. When the chosen
/// version has none and the app spills, another version with weight takes the request.
#[inline]
fn choose(app: &App, index: usize) -> (&Version, Option<&Endpoint>) {
    let chosen = &app.versions[index];
    if let Some(e) = chosen.pool.pick() {
        return (chosen, Some(e));
    }
    match app.spill.then(|| app.spill_from(index)).flatten() {
        Some(other) => {
            chosen.metrics.spilled.inc();
            let v = &app.versions[other];
            (v, v.pool.pick())
        }
        None => (chosen, None),
    }
}

/// Rewrites `Content-Length` as one plain number (`010` → `10`) when it is not one already
/// (no allocation then: most messages); `Err` when it is not exactly one number (a list, even
/// of equal values, as the fast path refuses it too).
fn canonical_length(headers: &mut http::HeaderMap) -> Result<(), ()> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(v) = values.next() else { return Ok(()) };
    if values.next().is_some() {
        return Err(());
    }
    let n = crate::data::http1::content_length(v.as_bytes()).ok_or(())?;
    let b = v.as_bytes();
    let plain = b.iter().all(u8::is_ascii_digit) && (b.len() == 1 || b[0] != b'0');
    if !plain {
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(n));
    }
    Ok(())
}

/// One tunnel: waits for both sides to switch, then copies both ways until either side closes,
/// or, once Weir stops, the grace period is over. A split change never touches it: it is
/// bound to its endpoint, not to the routing table.
async fn join(
    on_client: hyper::upgrade::OnUpgrade,
    on_upstream: hyper::upgrade::OnUpgrade,
    open: prometheus::IntGauge,
    held: (crate::data::pool::InFlight, Option<tokio::sync::OwnedSemaphorePermit>),
    (app, version): (Arc<str>, Arc<str>),
    tunnels: Option<Arc<Tunnels>>,
) {
    let (client, upstream) = match tokio::try_join!(on_client, on_upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(%app, %version, "upgrade not completed: {e}");
            return;
        }
    };
    let (mut client, mut upstream) = (hyper_util::rt::TokioIo::new(client), hyper_util::rt::TokioIo::new(upstream));
    open.inc();
    let stopped = async {
        match &tunnels {
            Some(t) => {
                t.stop.cancelled().await;
                tokio::time::sleep(t.grace).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = copied {
                tracing::debug!(%app, %version, "tunnel ended: {e}");
            }
        }
        () = stopped => tracing::info!(%app, %version, "tunnel closed at the end of the shutdown grace period"),
    }
    open.dec();
    drop(held);
}
