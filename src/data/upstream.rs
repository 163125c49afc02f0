//! The pooled keep-alive HTTP client to an app's endpoints (failures are classified in `upstream/error.rs`).

mod error;
mod idle;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::data::listener::ClientBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{TimeoutConfig, UpstreamConfig, UpstreamProtocol};
use crate::data::clock::clock_ms;
use crate::metrics::UpstreamErrorKind;
pub use error::UpstreamError;
use idle::IdleList;
use rustls::pki_types::ServerName;

/// Body of a request sent upstream: the client's streamed body, or one held whole (nothing, for
/// requests that are re-sent; a mirrored copy's body).
pub type RequestBody = Either<ClientBody, Full<Bytes>>;

/// What one app shares across its endpoints: the retry budget. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    /// Limits retries to a share of requests.
    pub budget: Arc<RetryBudget>,
}

/// How Weir speaks to an app's endpoints: the protocol, and TLS with its verifier.
#[derive(Clone)]
pub struct Transport {
    /// What the config asked for.
    pub config: UpstreamConfig,
    tls: Option<(tokio_rustls::TlsConnector, Option<ServerName<'static>>)>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Transport {
    /// Clear-text HTTP/1.1.
    pub fn plain() -> Self {
        Transport { config: UpstreamConfig::default(), tls: None }
    }

    /// The transport `config` asks for; its CA bundle is loaded now (an error names it).
    pub fn of(config: &UpstreamConfig) -> Result<Self, String> {
        let Some(tls) = &config.tls else { return Ok(Transport { config: config.clone(), tls: None }) };
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(&tls.ca).map_err(|e| format!("cannot read {}: {e}", tls.ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{}: not PEM certificates: {e}", tls.ca.display()))?;
            roots.add(cert).map_err(|e| format!("{}: {e}", tls.ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no CA certificate in it", tls.ca.display()));
        }
        let server_name = match &tls.server_name {
            None => None,
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| format!("server_name {n:?}: {e}"))?),
        };
        Ok(Transport { config: config.clone(), tls: Some((connector(roots, config.protocol), server_name)) })
    }

    /// The transport `config` asks for, or, when its CA bundle cannot be used (a file gone
    /// since validation), one that trusts nothing: every connection fails, loudly, and none
    /// goes out in clear text by mistake.
    pub fn of_or_refusing(config: &UpstreamConfig) -> Self {
        Self::of(config).unwrap_or_else(|e| {
            tracing::error!("upstream TLS unusable, every connection will fail: {e}");
            let connector = connector(rustls::RootCertStore::empty(), config.protocol);
            Transport { config: config.clone(), tls: Some((connector, None)) }
        })
    }

    /// Whether it is clear-text HTTP/1.1, which Weir's own codec speaks (the fast path).
    pub fn is_plain_http1(&self) -> bool {
        self.tls.is_none() && self.config.protocol == UpstreamProtocol::Http1
    }
}

/// A TLS client trusting `roots`, offering `protocol` by ALPN.
fn connector(roots: rustls::RootCertStore, protocol: UpstreamProtocol) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = match protocol {
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
    };
    tokio_rustls::TlsConnector::from(Arc::new(client))
}

/// The keep-alive HTTP/1.1 connections to one endpoint. Each endpoint has its own, so when an
/// endpoint leaves (a reload, a pod gone) its idle connections close as soon as the last
/// snapshot holding it is dropped, and no lock is shared across endpoints. Cloning shares them.
///
/// Two kinds: raw sockets for the HTTP/1.1 fast path ([`HttpClient::raw`]), which writes and
/// reads them itself, and hyper connections for every other exchange ([`HttpClient::send`]).
/// A request takes the most recently used idle connection (the warmest, and it lets the
/// oldest ones age out), or opens one; a connection returns to its idle list only once its
/// response body has been read to the end (see [`Lease`] and [`RawConn`]), so an idle
/// connection is always ready for the next request. Idle connections close after
/// `timeouts.idle`.
#[derive(Debug, Clone)]
pub struct HttpClient {
    conns: Arc<Connections>,
    /// The timeouts this client was built with.
    pub timeouts: TimeoutConfig,
}

#[derive(Debug)]
struct Connections {
    addr: SocketAddr,
    timeouts: TimeoutConfig,
    transport: Transport,
    /// HTTP/2: the one multiplexed connection, opened on first use and again once closed.
    h2: tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<RequestBody>>>,
    hyper: IdleList<SendRequest<RequestBody>>,
    raw: IdleList<TcpStream>,
    /// Whether the task closing expired idle connections runs.
    sweeping: AtomicBool,
}

/// An upstream connection lent to one exchange. [`Lease::release`] gives it back for reuse
/// once the response has been read whole; dropped unreleased, it closes the connection (a
/// response cut short leaves the connection in an unknown state).
#[derive(Debug)]
pub struct Lease {
    sender: Option<SendRequest<RequestBody>>,
    conns: Arc<Connections>,
}

impl Lease {
    /// Makes the connection close after this exchange instead of going back for reuse.
    pub fn no_reuse(mut self) -> Self {
        self.sender = None;
        self
    }

    /// Returns the connection to its endpoint's idle list.
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take() {
            self.conns.hyper.check_in(sender);
        }
    }
}

/// A raw upstream socket lent to one exchange of the HTTP/1.1 fast path, which frames the
/// request and response itself. [`RawConn::release`] gives it back once a response was read
/// exactly to its end; dropped, it closes.
#[derive(Debug)]
pub struct RawConn {
    /// The socket.
    pub stream: TcpStream,
    /// Whether it served an earlier exchange (and so may have been closed by the upstream
    /// meanwhile).
    pub reused: bool,
    conns: Arc<Connections>,
}

impl RawConn {
    /// Returns the connection to its endpoint's idle list.
    pub fn release(self) {
        self.conns.raw.check_in(self.stream);
    }

    /// Marks a failure on this reused connection as the upstream having closed it while
    /// idle: the connections idle longer are as stale, and close.
    pub fn stale(&self) {
        self.conns.raw.clear();
    }
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

impl HttpClient {
    /// A client for the endpoint at `addr`, with no connection yet.
    pub fn new(addr: SocketAddr, timeouts: &TimeoutConfig) -> Self {
        Self::with_transport(addr, timeouts, Transport::plain())
    }

    /// A client for the endpoint at `addr` speaking `transport`.
    pub fn with_transport(addr: SocketAddr, timeouts: &TimeoutConfig, transport: Transport) -> Self {
        let conns = Connections {
            addr,
            timeouts: timeouts.clone(),
            transport,
            h2: tokio::sync::Mutex::new(None),
            hyper: IdleList::new(),
            raw: IdleList::new(),
            sweeping: AtomicBool::new(false),
        };
        HttpClient { conns: Arc::new(conns), timeouts: timeouts.clone() }
    }

    /// How it speaks to the endpoint.
    pub fn transport(&self) -> &Transport {
        &self.conns.transport
    }

    /// Whether two handles share one set of connections.
    pub fn same_pool(&self, other: &HttpClient) -> bool {
        Arc::ptr_eq(&self.conns, &other.conns)
    }

    /// A raw connection for the HTTP/1.1 fast path: an idle one, or a new one.
    pub async fn raw(&self) -> Result<RawConn, UpstreamError> {
        let (stream, reused) = match self.conns.raw.check_out(self.conns.idle_ms()) {
            Some(stream) => (stream, true),
            None => (Box::pin(self.conns.open()).await?, false),
        };
        Ok(RawConn { stream, reused, conns: Arc::clone(&self.conns) })
    }

    /// Sends `req` (its URI in origin form) and waits for the response headers, within the
    /// request timeout. The [`Lease`] goes with the response body.
    pub async fn send(
        &self,
        req: http::Request<RequestBody>,
    ) -> Result<(http::Response<Incoming>, Lease), UpstreamError> {
        self.within_request_timeout(self.exchange(req)).await
    }

    /// Sends an `Upgrade` request on a connection of its own, within the request timeout; the
    /// [`Lease`] never returns it to the pool.
    pub async fn send_upgrade(
        &self,
        req: http::Request<RequestBody>,
    ) -> Result<(http::Response<Incoming>, Lease), UpstreamError> {
        let resp = self.within_request_timeout(self.conns.upgrade(req)).await?;
        Ok((resp, Lease { sender: None, conns: Arc::clone(&self.conns) }))
    }

    /// Runs `exchange` (connect, send, read the response head) within the request timeout.
    pub async fn within_request_timeout<T>(
        &self,
        exchange: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        match tokio::time::timeout(self.timeouts.request, exchange).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out()),
        }
    }

    /// The error of an exchange that got no response head within the request timeout.
    pub fn timed_out(&self) -> UpstreamError {
        UpstreamError::new(
            UpstreamErrorKind::Timeout,
            format!("no response headers within {:?}", self.timeouts.request),
        )
    }

    /// [`HttpClient::send`] without the request timeout: the caller applies it.
    pub async fn exchange(
        &self,
        mut req: http::Request<RequestBody>,
    ) -> Result<(http::Response<Incoming>, Lease), UpstreamError> {
        if self.conns.transport.config.protocol == UpstreamProtocol::Http2 {
            let resp = self.conns.exchange_h2(req).await?;
            return Ok((resp, Lease { sender: None, conns: Arc::clone(&self.conns) }));
        }
        loop {
            let (mut sender, reused) = match self.conns.hyper.check_out(self.conns.idle_ms()) {
                Some(sender) => (sender, true),
                // Boxed: the rare path should not grow every request's future.
                None => (Box::pin(self.conns.handshake()).await?, false),
            };
            // A fresh connection takes its first request before its task has run; a reused
            // one is ready unless the upstream closed it meanwhile.
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease { sender: Some(sender), conns: Arc::clone(&self.conns) })),
                Err(mut e) => match e.take_message() {
                    // The upstream closed an idle connection as it was taken (its keep-alive
                    // timeout): nothing was sent, so the request goes on another connection.
                    Some(unsent) if reused => req = unsent,
                    _ => {
                        let e = e.into_error();
                        // A reused connection that broke (closed, reset, cut mid-head) was
                        // closed by the upstream while idle; one that answered garbage was
                        // not: that is the endpoint's fault, and it is blamed.
                        let broke = !(e.is_parse() || e.is_parse_status() || e.is_parse_too_large() || e.is_user());
                        let mut err = UpstreamError::from_hyper(e);
                        if reused && broke && err.kind == UpstreamErrorKind::Protocol {
                            // The connections idle longer than this one are as stale: close
                            // them, so the next try opens a fresh one.
                            self.conns.hyper.clear();
                            err.stale = true;
                        }
                        return Err(err);
                    }
                },
            }
        }
    }
}

impl Connections {
    fn idle_ms(&self) -> u64 {
        self.timeouts.idle.as_millis() as u64
    }

    /// Opens a TCP connection, within the connect timeout.
    async fn open(self: &Arc<Self>) -> Result<TcpStream, UpstreamError> {
        let addr = self.addr;
        let stream = match tokio::time::timeout(self.timeouts.connect, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(UpstreamError::connect(addr, e)),
            Err(_) => {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::Timeout,
                    format!("connect to {addr}: no answer within {:?}", self.timeouts.connect),
                ));
            }
        };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            spawn_sweeper(Arc::downgrade(self), self.timeouts.idle);
        }
        Ok(stream)
    }

    /// Opens a hyper HTTP/1.1 connection, its task spawned.
    async fn handshake(self: &Arc<Self>) -> Result<SendRequest<RequestBody>, UpstreamError> {
        let addr = self.addr;
        macro_rules! serve {
            ($io:expr) => {{
                let (sender, conn) = Self::handshake_h1($io).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, "upstream connection ended: {e}");
                    }
                });
                sender
            }};
        }
        Ok(match self.connect().await? {
            Io::Plain(io) => serve!(io),
            Io::Tls(io) => serve!(*io),
        })
    }

    /// Opens a connection, with TLS when the transport says so (the handshake within the
    /// connect timeout too).
    async fn connect(self: &Arc<Self>) -> Result<Io, UpstreamError> {
        let stream = self.open().await?;
        let Some((connector, name)) = &self.transport.tls else { return Ok(Io::Plain(TokioIo::new(stream))) };
        let name = name.clone().unwrap_or_else(|| ServerName::IpAddress(self.addr.ip().into()));
        match tokio::time::timeout(self.timeouts.connect, connector.connect(name, stream)).await {
            Ok(Ok(tls)) => Ok(Io::Tls(Box::new(TokioIo::new(tls)))),
            Ok(Err(e)) => Err(UpstreamError::connect(self.addr, e)),
            Err(_) => Err(UpstreamError::connect(
                self.addr,
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"),
            )),
        }
    }

    async fn handshake_h1<I>(
        io: I,
    ) -> Result<(SendRequest<RequestBody>, http1::Connection<I, RequestBody>), UpstreamError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        // Response heads over 64 KiB are refused, as Weir's own codec does.
        http1::Builder::new().max_buf_size(64 * 1024).handshake(io).await.map_err(UpstreamError::from_hyper)
    }

    /// HTTP/2: the shared connection (opened if there is none or it closed), then the request
    /// as one more stream on it.
    async fn exchange_h2(
        self: &Arc<Self>,
        mut req: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        // HTTP/2 names the host in `:authority` and the scheme in `:scheme`: the request's
        // `Host` (which Weir always sets) becomes the authority.
        let scheme = if self.transport.tls.is_some() { "https" } else { "http" };
        let host = req.headers_mut().remove(http::header::HOST);
        let authority =
            host.as_ref().and_then(|h| h.to_str().ok()).map_or_else(|| self.addr.to_string(), str::to_owned);
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = http::Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| UpstreamError::protocol(format!("cannot name the request for HTTP/2: {e}")))?;
        *req.version_mut() = http::Version::HTTP_2;
        let mut sender = {
            let mut shared = self.h2.lock().await;
            match shared.as_ref().filter(|s| !s.is_closed()) {
                Some(s) => s.clone(),
                None => {
                    let s = Box::pin(self.handshake_h2()).await?;
                    *shared = Some(s.clone());
                    s
                }
            }
        };
        sender.ready().await.map_err(UpstreamError::from_hyper)?;
        sender.send_request(req).await.map_err(UpstreamError::from_hyper)
    }

    async fn handshake_h2(
        self: &Arc<Self>,
    ) -> Result<hyper::client::conn::http2::SendRequest<RequestBody>, UpstreamError> {
        let addr = self.addr;
        let mut builder = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            // A dead connection is noticed within seconds, not at the next request's timeout.
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .max_header_list_size(64 * 1024);
        macro_rules! serve {
            ($io:expr) => {{
                let (sender, conn) = builder.handshake($io).await.map_err(UpstreamError::from_hyper)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, "upstream HTTP/2 connection ended: {e}");
                    }
                });
                sender
            }};
        }
        Ok(match self.connect().await? {
            Io::Plain(io) => serve!(io),
            Io::Tls(io) => serve!(*io),
        })
    }

    /// Sends an `Upgrade` request on a connection of its own (never pooled: if the upstream
    /// switches protocols, the connection becomes the tunnel), with upgrades enabled, always
    /// HTTP/1.1.
    async fn upgrade(
        self: &Arc<Self>,
        req: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let addr = self.addr;
        macro_rules! send {
            ($io:expr) => {{
                let (mut sender, conn) = Self::handshake_h1($io).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(%addr, "upstream upgrade connection ended: {e}");
                    }
                });
                sender.send_request(req).await.map_err(UpstreamError::from_hyper)
            }};
        }
        match self.connect().await? {
            Io::Plain(io) => send!(io),
            Io::Tls(io) => send!(*io),
        }
    }

    fn close_expired(&self) {
        self.hyper.close_expired(self.idle_ms());
        self.raw.close_expired(self.idle_ms());
    }
}

/// An upstream connection's byte stream, as hyper reads it.
enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// Closes a client's expired idle connections every half idle timeout (at least every 100 ms,
/// at most every 30 s), until the client is gone.
fn spawn_sweeper(conns: Weak<Connections>, idle: Duration) {
    let every = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match conns.upgrade() {
                Some(c) => c.close_expired(),
                None => break,
            }
        }
    });
}

/// Sorts a connection error into timeout / protocol, with its full cause chain as text.
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
