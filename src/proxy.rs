//! The per-request path: route → split → pool → upstream, and the one place errors become
//! status codes.

mod body;
mod headers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::Either;
use hyper::body::Incoming;

pub use body::ResponseBody;
pub use headers::{set_forwarded, strip_hop_by_hop};

use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::pool::InFlight;
use crate::snapshot::Snapshot;
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
    metrics: Metrics,
    listener: usize,
    proto: &'static str,
}

impl Proxy {
    /// A proxy for the listener at index `listener` of the snapshot's listeners.
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, metrics: Metrics, listener: usize) -> Self {
        Proxy { snapshot, metrics, listener, proto: "http" }
    }

    /// Proxies one request from `client`. Never fails: errors become responses.
    pub async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<ResponseBody> {
        let start = Instant::now();
        // One view of the routing state for the whole request.
        let snap = self.snapshot.load_full();
        let authority = req.uri().authority().map(|a| a.as_str());
        let host = authority.or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()));
        let Some(app) = snap.route(self.listener, host) else {
            self.metrics.unrouted.inc();
            return error_response(&ProxyError::NoRoute(host.map(str::to_owned)));
        };
        let version = &app.versions[app.split.pick()];
        let Some(endpoint) = version.pool.pick() else {
            version.metrics.count_error(UpstreamErrorKind::NoEndpoint);
            let err = ProxyError::NoEndpoint(Arc::clone(&version.name));
            tracing::warn!(app = %app.name, version = %version.name, "{err}");
            let resp = error_response(&err);
            version.metrics.count_status(resp.status());
            return resp;
        };
        endpoint.requests.inc();
        let in_flight = InFlight::start(&endpoint.state);

        let (mut parts, body) = req.into_parts();
        let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query =
            Some(parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
        parts.uri = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        set_forwarded(&mut parts.headers, client.ip(), self.proto, authority.as_deref());

        let result = app.upstream.send(Request::from_parts(parts, Either::Left(body))).await;
        version.metrics.latency.observe(start.elapsed().as_secs_f64());
        match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                version.metrics.count_status(parts.status);
                Response::from_parts(parts, ResponseBody::Upstream { body, in_flight })
            }
            Err(e) => {
                version.metrics.count_error(e.kind);
                tracing::warn!(
                    app = %app.name, version = %version.name, endpoint = %endpoint.name,
                    kind = e.kind.as_str(), "upstream error: {}", e.message
                );
                let resp = error_response(&ProxyError::Upstream(e));
                version.metrics.count_status(resp.status());
                resp
            }
        }
    }
}
