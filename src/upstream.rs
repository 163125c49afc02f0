//! The pooled keep-alive HTTP client to an app's endpoints, and how its failures are classified.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::TimeoutConfig;
use crate::metrics::UpstreamErrorKind;

/// Body of a request sent upstream: the client's streamed body, or nothing (for requests that
/// are re-sent, which carry no body).
pub type RequestBody = Either<Incoming, Empty<Bytes>>;

/// One app's upstream client. Cloning shares the connection pool.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Arc<Client<HttpConnector, RequestBody>>,
    /// The timeouts this client was built with.
    pub timeouts: TimeoutConfig,
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

impl Upstream {
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
        Upstream { client: Arc::new(client), timeouts: timeouts.clone() }
    }

    /// Whether two handles share one connection pool.
    pub fn same_pool(&self, other: &Upstream) -> bool {
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
