//! Why an upstream exchange failed, classified in one place for every path: the kind decides
//! the status code (in `proxy`), the metric label, whether the endpoint is blamed and whether
//! the request may go again. The underlying error is kept as the source.

use crate::data::listener::ClientBodyError;
use crate::metrics::UpstreamErrorKind;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an upstream exchange failed before response headers arrived.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct UpstreamError {
    /// Classification, for the status code and metrics.
    pub kind: UpstreamErrorKind,
    /// What Weir was doing and what went wrong, for the log line.
    pub message: String,
    /// The request went out on a kept-alive connection that the upstream had closed (its idle
    /// timeout racing Weir's): no fault of the endpoint, and worth one more try there.
    pub stale: bool,
    /// The underlying error, if any.
    #[source]
    pub source: Option<BoxError>,
}

impl UpstreamError {
    /// An error of `kind` with a message and no underlying error.
    pub fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        UpstreamError { kind, message: message.into(), stale: false, source: None }
    }

    /// The upstream sent something that is not a valid HTTP/1 response, or broke a rule.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::Protocol, message)
    }

    /// Connecting failed: refused or unreachable (`Connect`), or timed out.
    pub fn connect(addr: std::net::SocketAddr, e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::TimedOut => UpstreamErrorKind::Timeout,
            _ => UpstreamErrorKind::Connect,
        };
        UpstreamError { kind, message: format!("connect to {addr}: {e}"), stale: false, source: Some(e.into()) }
    }

    /// A socket error while `doing` something on an upstream connection. `idle_closed`: the
    /// connection was reused and no byte of response came back, so the upstream most likely
    /// closed it while idle (stale, not the endpoint's fault).
    pub fn io(doing: &str, e: std::io::Error, idle_closed: bool) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::TimedOut => UpstreamErrorKind::Timeout,
            _ => UpstreamErrorKind::Protocol,
        };
        let stale = idle_closed && kind == UpstreamErrorKind::Protocol;
        UpstreamError { kind, message: format!("{doing}: {e}"), stale, source: Some(e.into()) }
    }

    /// An error from hyper's client: the client's own body failing is the client's fault;
    /// a timeout anywhere in the chain is a timeout; anything else a protocol error.
    pub fn from_hyper(err: hyper::Error) -> Self {
        if let Some(client) = ClientBodyError::in_chain(&err) {
            let message = client.to_string();
            return UpstreamError { kind: UpstreamErrorKind::Client, message, stale: false, source: Some(err.into()) };
        }
        let mut message = err.to_string();
        let mut timed_out = err.is_timeout();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
                timed_out = true;
            }
            source = s.source();
        }
        let kind = if timed_out { UpstreamErrorKind::Timeout } else { UpstreamErrorKind::Protocol };
        UpstreamError { kind, message, stale: false, source: Some(err.into()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified_once() {
        let reset = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = UpstreamError::io("reading the response", reset(), true);
        assert_eq!((e.kind, e.stale), (UpstreamErrorKind::Protocol, true));
        assert!(std::error::Error::source(&e).is_some(), "keeps its source");
        let e = UpstreamError::io("reading the response", reset(), false);
        assert!(!e.stale);
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        let e = UpstreamError::io("writing the request", timeout, true);
        assert_eq!((e.kind, e.stale), (UpstreamErrorKind::Timeout, false));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(UpstreamError::connect(([127, 0, 0, 1], 1).into(), refused).kind, UpstreamErrorKind::Connect);
    }
}
