//! The pooled keep-alive HTTP client to an app's endpoints, and how its failures are classified.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::TimeoutConfig;
use crate::metrics::UpstreamErrorKind;
use crate::pool::clock_ms;

/// Body of a request sent upstream: the client's streamed body, or nothing (for requests that
/// are re-sent, which carry no body).
pub type RequestBody = Either<Incoming, Empty<Bytes>>;

/// What one app shares across its endpoints: the retry budget. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    /// Limits retries to a share of requests.
    pub budget: Arc<RetryBudget>,
}

/// The pooled keep-alive client of one endpoint. Each endpoint has its own pool, so when an
/// endpoint leaves (a reload, a pod gone) its idle connections close as soon as the last
/// snapshot holding it is dropped, that is, once its in-flight requests finished; and no pool
/// lock is shared across endpoints. Cloning shares the pool.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: Arc<Client<HttpConnector, RequestBody>>,
    /// The timeouts this client was built with.
    pub timeouts: TimeoutConfig,
}

/// Retries allowed per window: `min + percent × requests in the window / 100` (linkerd's and
/// Finagle's retry budget), so retries cannot multiply load when a whole version fails.
/// Requests count with one relaxed add; the window rolls only when a retry asks.
#[derive(Debug, Default)]
pub struct RetryBudget {
    requests: AtomicU64,
    window_start_ms: AtomicU64,
    window_base: AtomicU64,
    window_retries: AtomicU64,
}

/// Length of a retry budget window.
const BUDGET_WINDOW_MS: u64 = 10_000;

impl RetryBudget {
    /// Counts one request.
    #[inline]
    pub fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if it has one.
    pub fn try_retry(&self, percent: u32, min: u32) -> bool {
        let now = clock_ms();
        let requests = self.requests.load(Ordering::Relaxed);
        if now.saturating_sub(self.window_start_ms.load(Ordering::Relaxed)) > BUDGET_WINDOW_MS {
            self.window_start_ms.store(now, Ordering::Relaxed);
            self.window_base.store(requests, Ordering::Relaxed);
            self.window_retries.store(0, Ordering::Relaxed);
        }
        let in_window = requests.saturating_sub(self.window_base.load(Ordering::Relaxed));
        let allowed = u64::from(min) + in_window * u64::from(percent) / 100;
        if self.window_retries.fetch_add(1, Ordering::Relaxed) < allowed {
            true
        } else {
            self.window_retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

/// Why an upstream exchange failed before response headers arrived.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct UpstreamError {
    /// Classification, for the status code and metrics.
    pub kind: UpstreamErrorKind,
    /// The underlying error's text, for the log line.
    pub message: String,
}

impl HttpClient {
    /// A client with its own connection pool.
    pub fn new(timeouts: &TimeoutConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(timeouts.idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false)
            .build(connector);
        HttpClient { client: Arc::new(client), timeouts: timeouts.clone() }
    }

    /// Whether two handles share one connection pool.
    pub fn same_pool(&self, other: &HttpClient) -> bool {
        Arc::ptr_eq(&self.client, &other.client)
    }

    /// Sends `req` and waits for the response headers, within the request timeout.
    pub async fn send(&self, req: http::Request<RequestBody>) -> Result<http::Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeouts.request, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(UpstreamError {
                kind: UpstreamErrorKind::Timeout,
                message: format!("no response headers within {:?}", self.timeouts.request),
            }),
        }
    }
}

/// Sorts a client error into connect / timeout / protocol, with its full cause chain as text.
fn classify(err: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut message = err.to_string();
    let mut timed_out = false;
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            timed_out = true;
        }
        source = s.source();
    }
    let kind = if timed_out {
        UpstreamErrorKind::Timeout
    } else if err.is_connect() {
        UpstreamErrorKind::Connect
    } else {
        UpstreamErrorKind::Protocol
    };
    UpstreamError { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_min_plus_a_share_of_requests() {
        let b = RetryBudget::default();
        let granted = (0..50).filter(|_| b.try_retry(20, 10)).count();
        assert_eq!(granted, 10, "with no traffic only the minimum");
        for _ in 0..100 {
            b.record_request();
        }
        let granted = (0..50).filter(|_| b.try_retry(20, 10)).count();
        assert_eq!(granted, 20, "20 % of 100 requests on top of the 10 already used");
    }
}
