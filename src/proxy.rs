//! The per-request path: route → split → pool → upstream, and the one place errors become
//! status codes.

mod body;
mod h1;
mod headers;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, header};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use prometheus::IntCounter;

pub use body::ResponseBody;
pub use headers::{set_forwarded, strip_hop_by_hop};

use crate::listener::{ClientBody, ConnMetrics, Peer};
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::outlier;
use crate::pool::{Endpoint, InFlight};
use crate::snapshot::{App, Snapshot, Version};
use crate::upstream::UpstreamError;

/// Why Weir answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No app serves this host on this listener.
    #[error("no app for host {0:?}")]
    NoRoute(Option<String>),
    /// The chosen version has no endpoint able to take the request.
    #[error("no healthy endpoint in version {0}")]
    NoEndpoint(Arc<str>),
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
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// `weir_unrouted_requests_total`: all the proxy needs of the registry (the rest is
    /// pre-resolved in the snapshot), so a clone costs no reference counts beyond two.
    unrouted: IntCounter,
    /// Requests refused for their framing or size (`weir_client_errors_total{reason="bad_request"}`).
    refused: IntCounter,
    listener: usize,
    proto: &'static str,
    /// Whether Weir's codec forwards the plain HTTP/1.1 requests itself.
    fast: bool,
}

impl Proxy {
    /// A proxy for the listener at index `listener` of the snapshot's listeners, counting in
    /// `conns` what its codec refuses; `fast` turns the HTTP/1.1 fast path on.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: &Metrics,
        listener: usize,
        conns: &ConnMetrics,
        fast: bool,
    ) -> Self {
        Proxy {
            snapshot,
            unrouted: metrics.unrouted.clone(),
            refused: conns.errors.bad_request.clone(),
            listener,
            proto: "http",
            fast,
        }
    }

    /// Proxies one request from `client`. Never fails: errors become responses.
    pub async fn handle(&self, req: Request<ClientBody>, client: Peer) -> Response<ResponseBody> {
        let start = Instant::now();
        // One view of the routing state for the whole request, retries included.
        let snap = self.snapshot.load_full();
        let authority = req.uri().authority().map(|a| a.as_str());
        let host = authority.or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()));
        let (app, version, mut endpoint) = match self.pick(&snap, host) {
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
        set_forwarded(&mut parts.headers, &client.ip, self.proto, parts.uri.authority().map(|a| a.as_str()));
        // An HTTP/1.0 request may come without `Host`; it goes upstream as HTTP/1.1, which
        // needs one: the endpoint's address, as nginx's `$proxy_host`.
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = header::HeaderValue::from_str(&endpoint.addr.to_string())
        {
            parts.headers.insert(header::HOST, v);
        }
        // Only a request without a body can be sent again here (a streamed body is gone once
        // sent); it keeps its head for that.
        let replayable = body.is_end_stream();
        let mut attempts = Attempts::new(app, replayable, parts.method.is_idempotent());
        let mut head = Some(parts);
        let mut body = Some(body);
        loop {
            endpoint.requests.inc();
            let in_flight = InFlight::start(&endpoint.state);
            // Origin form: the request line carries the path, `Host` the client's authority.
            let uri = Uri::from(path.clone());
            let req = if attempts.left > 0 {
                let h = head.as_ref().expect("head is kept while attempts are left");
                let mut req = Request::new(Either::Right(Empty::new()));
                *req.method_mut() = h.method.clone();
                *req.uri_mut() = uri;
                *req.headers_mut() = h.headers.clone();
                req
            } else {
                let mut h = head.take().expect("the last attempt takes the head");
                h.uri = uri;
                h.version = http::Version::HTTP_11;
                let body = match body.take() {
                    Some(b) if !replayable => Either::Left(b),
                    _ => Either::Right(Empty::new()),
                };
                Request::from_parts(h, body)
            };
            match endpoint.client.send(req).await {
                Ok((resp, lease)) => {
                    let (mut parts, body) = resp.into_parts();
                    let check = match crate::http1::check_response(parts.status, &mut parts.headers) {
                        Ok(check) => check,
                        Err(why) => {
                            // The connection is not reused (the lease drops unreleased).
                            drop((lease, in_flight));
                            let e = UpstreamError {
                                kind: UpstreamErrorKind::Protocol,
                                message: format!("invalid response: {why}"),
                                stale: false,
                            };
                            match attempts.after_failure(app, version, endpoint, &e) {
                                Some(next) => {
                                    endpoint = next;
                                    continue;
                                }
                                None => return failed(version, e, start),
                            }
                        }
                    };
                    answered(app, version, endpoint, parts.status, start);
                    strip_hop_by_hop(&mut parts.headers);
                    if check.until_close {
                        parts.headers.insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                    }
                    let lease = if check.reusable { lease } else { lease.no_reuse() };
                    return Response::from_parts(parts, ResponseBody::upstream(body, lease, in_flight));
                }
                Err(e) => {
                    drop(in_flight);
                    match attempts.after_failure(app, version, endpoint, &e) {
                        Some(next) => endpoint = next,
                        None => return failed(version, e, start),
                    }
                }
            }
        }
    }

    /// The app, version and endpoint for a request to `host`, or why there is none (counted).
    fn pick<'s>(
        &self,
        snap: &'s Snapshot,
        host: Option<&str>,
    ) -> Result<(&'s App, &'s Version, &'s Endpoint), ProxyError> {
        let Some(app) = snap.route(self.listener, host) else {
            self.unrouted.inc();
            return Err(ProxyError::NoRoute(host.map(str::to_owned)));
        };
        app.upstream.budget.record_request();
        let (version, endpoint) = choose(app);
        let Some(endpoint) = endpoint else {
            version.metrics.count_error(UpstreamErrorKind::NoEndpoint);
            let err = ProxyError::NoEndpoint(Arc::clone(&version.name));
            tracing::warn!(app = %app.name, version = %version.name, "{err}");
            version.metrics.count_status(err.answer().0);
            return Err(err);
        };
        Ok((app, version, endpoint))
    }
}

/// Counts a response whose head came from `endpoint`: its status, the time to it, and a 5xx
/// against the endpoint where the app counts those.
fn answered(app: &App, version: &Version, endpoint: &Endpoint, status: StatusCode, start: Instant) {
    if status.is_server_error() && app.outlier.count_5xx {
        outlier::on_failure(app, version, endpoint);
    }
    version.metrics.count_status(status);
    version.metrics.latency.observe(start.elapsed().as_secs_f64());
}

/// The response to a request whose last attempt failed with `e`, counted.
fn failed(version: &Version, e: UpstreamError, start: Instant) -> Response<ResponseBody> {
    let resp = error_response(&ProxyError::Upstream(e));
    version.metrics.count_status(resp.status());
    version.metrics.latency.observe(start.elapsed().as_secs_f64());
    resp
}

/// The retries one request has left, and what decides them.
struct Attempts {
    /// Further attempts allowed (0 for a request whose body cannot be sent again).
    left: u32,
    idempotent: bool,
    /// Whether the one retry after a stale connection was used.
    stale_retried: bool,
}

impl Attempts {
    fn new(app: &App, replayable: bool, idempotent: bool) -> Self {
        Attempts { left: if replayable { app.retry.attempts } else { 0 }, idempotent, stale_retried: false }
    }

    /// Counts an attempt's failure on `endpoint` and picks where the request goes next: the
    /// same endpoint, another one, or nowhere (`None`: answer with the error).
    fn after_failure<'a>(
        &mut self,
        app: &'a App,
        version: &'a Version,
        endpoint: &'a Endpoint,
        e: &UpstreamError,
    ) -> Option<&'a Endpoint> {
        // A kept-alive connection closed under the request by the upstream: the same
        // endpoint gets it again, once, on a fresh connection. Only requests safe to repeat,
        // as the upstream may have read it.
        if e.stale && self.idempotent && self.left > 0 && !self.stale_retried {
            tracing::debug!(app = %app.name, endpoint = %endpoint.name, "stale upstream connection: {}", e.message);
            self.stale_retried = true;
            return Some(endpoint);
        }
        version.metrics.count_error(e.kind);
        if e.kind == UpstreamErrorKind::Client {
            tracing::info!(app = %app.name, endpoint = %endpoint.name, "{}", e.message);
            return None;
        }
        outlier::on_failure(app, version, endpoint);
        // Nothing reached the upstream after a connect error; after a reset it may have, so
        // only idempotent requests go again.
        let safe = match e.kind {
            UpstreamErrorKind::Connect => true,
            UpstreamErrorKind::Protocol => self.idempotent,
            UpstreamErrorKind::Timeout | UpstreamErrorKind::NoEndpoint | UpstreamErrorKind::Client => false,
        };
        let next = (self.left > 0 && safe)
            .then(|| version.pool.pick_other(endpoint.addr))
            .flatten()
            .filter(|_| app.upstream.budget.try_retry(app.retry.budget_percent, app.retry.budget_min));
        match next {
            Some(next) => {
                tracing::debug!(
                    app = %app.name, version = %version.name, from = %endpoint.name, to = %next.name,
                    kind = e.kind.as_str(), "retrying on another endpoint: {}", e.message
                );
                version.metrics.retries.inc();
                self.left -= 1;
                Some(next)
            }
            None => {
                tracing::warn!(
                    app = %app.name, version = %version.name, endpoint = %endpoint.name,
                    kind = e.kind.as_str(), "upstream error: {}", e.message
                );
                None
            }
        }
    }
}

/// The version for a request and a healthy endpoint in it. When the chosen version has none
/// and the app spills, another version with weight takes the request.
#[inline]
fn choose(app: &App) -> (&Version, Option<&Endpoint>) {
    let index = app.split.pick();
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
