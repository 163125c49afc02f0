//! The per-request path: route → split → pool → upstream, and the one place errors become
//! status codes.

mod body;
mod headers;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, header};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use prometheus::IntCounter;

pub use body::ResponseBody;
pub use headers::{set_forwarded, strip_hop_by_hop};

use crate::listener::Peer;
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

/// Maps every [`ProxyError`] to its response: the only place this happens.
/// Unreachable or broken upstream → 502, timeout → 504, no endpoint → 503, no app → 404.
pub fn error_response(err: &ProxyError) -> Response<ResponseBody> {
    let (status, text) = match err {
        ProxyError::NoRoute(_) => (StatusCode::NOT_FOUND, "weir: no app serves this host\n"),
        ProxyError::NoEndpoint(_) => (StatusCode::SERVICE_UNAVAILABLE, "weir: no healthy endpoint\n"),
        ProxyError::Upstream(e) => match e.kind {
            UpstreamErrorKind::Connect => (StatusCode::BAD_GATEWAY, "weir: upstream unreachable\n"),
            UpstreamErrorKind::Protocol => (StatusCode::BAD_GATEWAY, "weir: upstream connection failed\n"),
            UpstreamErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "weir: upstream timed out\n"),
            UpstreamErrorKind::NoEndpoint => (StatusCode::SERVICE_UNAVAILABLE, "weir: no healthy endpoint\n"),
        },
    };
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
    listener: usize,
    proto: &'static str,
}

impl Proxy {
    /// A proxy for the listener at index `listener` of the snapshot's listeners.
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, metrics: &Metrics, listener: usize) -> Self {
        Proxy { snapshot, unrouted: metrics.unrouted.clone(), listener, proto: "http" }
    }

    /// Proxies one request from `client`. Never fails: errors become responses.
    pub async fn handle(&self, req: Request<Incoming>, client: Peer) -> Response<ResponseBody> {
        let start = Instant::now();
        // One view of the routing state for the whole request, retries included.
        let snap = self.snapshot.load_full();
        let authority = req.uri().authority().map(|a| a.as_str());
        let host = authority.or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()));
        let Some(app) = snap.route(self.listener, host) else {
            self.unrouted.inc();
            return error_response(&ProxyError::NoRoute(host.map(str::to_owned)));
        };
        app.upstream.budget.record_request();
        let (version, endpoint) = choose(app);
        let Some(mut endpoint) = endpoint else {
            version.metrics.count_error(UpstreamErrorKind::NoEndpoint);
            let err = ProxyError::NoEndpoint(Arc::clone(&version.name));
            tracing::warn!(app = %app.name, version = %version.name, "{err}");
            let resp = error_response(&err);
            version.metrics.count_status(resp.status());
            return resp;
        };

        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        strip_hop_by_hop(&mut parts.headers);
        set_forwarded(&mut parts.headers, &client.ip, self.proto, parts.uri.authority().map(|a| a.as_str()));
        // Only a request without a body can be sent again; it keeps its head for that.
        let replayable = body.is_end_stream();
        let idempotent = parts.method.is_idempotent();
        let mut attempts_left = if replayable { app.retry.attempts } else { 0 };
        let mut head = Some(parts);
        let mut body = Some(body);
        let mut stale_retried = false;
        loop {
            endpoint.requests.inc();
            let in_flight = InFlight::start(&endpoint.state);
            // Origin form: the request line carries the path, `Host` the client's authority.
            let uri = Uri::from(path.clone());
            let req = if attempts_left > 0 {
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
            let result = endpoint.client.send(req).await;
            match result {
                Ok((resp, lease)) => {
                    let (mut parts, body) = resp.into_parts();
                    if parts.status.is_server_error() && app.outlier.count_5xx {
                        outlier::on_failure(app, version, endpoint);
                    }
                    strip_hop_by_hop(&mut parts.headers);
                    version.metrics.count_status(parts.status);
                    version.metrics.latency.observe(start.elapsed().as_secs_f64());
                    return Response::from_parts(parts, ResponseBody::upstream(body, lease, in_flight));
                }
                Err(e) => {
                    drop(in_flight);
                    // A kept-alive connection closed under the request by the upstream: the
                    // same endpoint gets it again, once, on a fresh connection. Only requests
                    // safe to repeat, as the upstream may have read it.
                    if e.stale && idempotent && attempts_left > 0 && !stale_retried {
                        tracing::debug!(app = %app.name, endpoint = %endpoint.name, "stale upstream connection: {}", e.message);
                        stale_retried = true;
                        continue;
                    }
                    version.metrics.count_error(e.kind);
                    outlier::on_failure(app, version, endpoint);
                    // Nothing reached the upstream after a connect error; after a reset it may
                    // have, so only idempotent requests go again.
                    let safe = match e.kind {
                        UpstreamErrorKind::Connect => true,
                        UpstreamErrorKind::Protocol => idempotent,
                        UpstreamErrorKind::Timeout | UpstreamErrorKind::NoEndpoint => false,
                    };
                    let next = (attempts_left > 0 && safe)
                        .then(|| version.pool.pick_other(endpoint.addr))
                        .flatten()
                        .filter(|_| app.upstream.budget.try_retry(app.retry.budget_percent, app.retry.budget_min));
                    if let Some(next) = next {
                        tracing::debug!(
                            app = %app.name, version = %version.name, from = %endpoint.name, to = %next.name,
                            kind = e.kind.as_str(), "retrying on another endpoint: {}", e.message
                        );
                        version.metrics.retries.inc();
                        attempts_left -= 1;
                        endpoint = next;
                        continue;
                    }
                    tracing::warn!(
                        app = %app.name, version = %version.name, endpoint = %endpoint.name,
                        kind = e.kind.as_str(), "upstream error: {}", e.message
                    );
                    let resp = error_response(&ProxyError::Upstream(e));
                    version.metrics.count_status(resp.status());
                    version.metrics.latency.observe(start.elapsed().as_secs_f64());
                    return resp;
                }
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
