//! One request's attempts, the same for every path: each attempt is counted and holds the
//! endpoint's in-flight count; after a failure [`Attempts::after_failure`] decides whether
//! the request goes again (same endpoint after a stale connection, another endpoint, or
//! nowhere). Paths differ only in how one attempt is sent ([`Exchange`]): hyper's client for
//! the general path, Weir's codec for the fast path.

use std::future::Future;
use std::time::Instant;

use http::{Response, StatusCode};

use super::{ProxyError, ResponseBody, error_response};
use crate::data::outlier;
use crate::data::pool::{Endpoint, InFlight};
use crate::data::snapshot::{App, Version};
use crate::data::upstream::UpstreamError;
use crate::metrics::UpstreamErrorKind;

/// How one attempt of a request is sent on a path.
pub(super) trait Exchange {
    /// What an attempt that got a response head yields.
    type Answer;
    /// Sends the request to `endpoint` once and reads the response head. `last`: no attempt
    /// will follow (a body that cannot be sent twice may go now).
    fn send<'s>(
        &'s mut self,
        endpoint: &'s Endpoint,
        last: bool,
    ) -> impl Future<Output = Result<Self::Answer, UpstreamError>> + Send + 's;
    /// The status of an answer, as counted.
    fn status(answer: &Self::Answer) -> StatusCode;
}

/// An attempt that got a response head: the answer, the endpoint that gave it, and its
/// in-flight count, held until the body is through.
pub(super) struct Sent<'a, T> {
    pub answer: T,
    pub endpoint: &'a Endpoint,
    pub in_flight: InFlight,
}

/// Runs the attempts of one request on `exchange`, starting at `endpoint`. `Err`: the
/// response to give instead (the last failure's, counted).
pub(super) async fn drive<'a, X: Exchange>(
    app: &'a App,
    version: &'a Version,
    mut endpoint: &'a Endpoint,
    mut attempts: Attempts,
    exchange: &mut X,
    start: Instant,
) -> Result<Sent<'a, X::Answer>, Response<ResponseBody>> {
    loop {
        endpoint.requests.inc();
        let in_flight = InFlight::start(&endpoint.state);
        match exchange.send(endpoint, attempts.left == 0).await {
            Ok(answer) => {
                answered(app, version, endpoint, X::status(&answer), start);
                return Ok(Sent { answer, endpoint, in_flight });
            }
            Err(e) => {
                drop(in_flight);
                match attempts.after_failure(app, version, endpoint, &e) {
                    Some(next) => endpoint = next,
                    None => return Err(failed(version, e, start)),
                }
            }
        }
    }
}

/// Counts a response whose head came from `endpoint`: its status, the time to it, and a 5xx
/// against the endpoint where the app counts those.
pub(super) fn answered(app: &App, version: &Version, endpoint: &Endpoint, status: StatusCode, start: Instant) {
    if status.is_server_error() && app.outlier.count_5xx {
        outlier::on_failure(app, version, endpoint);
    }
    version.metrics.count_status(status);
    version.metrics.latency.observe(start.elapsed().as_secs_f64());
}

/// The response to a request whose last attempt failed with `e`, counted.
pub(super) fn failed(version: &Version, e: UpstreamError, start: Instant) -> Response<ResponseBody> {
    let resp = error_response(&ProxyError::Upstream(e));
    version.metrics.count_status(resp.status());
    version.metrics.latency.observe(start.elapsed().as_secs_f64());
    resp
}

/// The retries one request has left, and what decides them.
pub(super) struct Attempts {
    /// Further attempts allowed (0 for a request whose body cannot be sent again).
    pub(super) left: u32,
    idempotent: bool,
    /// Whether the one retry after a stale connection was used.
    stale_retried: bool,
}

impl Attempts {
    pub(super) fn new(app: &App, replayable: bool, idempotent: bool) -> Self {
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
