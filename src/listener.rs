//! Accepting connections and serving HTTP/1.1 and h2c on them, with graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The client end of a connection, worked out once per connection rather than per request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its IP as a header value, for `X-Forwarded-For` (a clone is a reference count).
    pub ip: HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_maybe_shared(bytes::Bytes::from(addr.ip().to_string()))
            .expect("an IP address is a valid header value");
        Peer { addr, ip }
    }
}

/// Serves connections from `listener` until `cancel` fires, then stops accepting and lets open
/// connections finish their in-flight requests for up to `grace` (idle keep-alive connections
/// are closed at once, HTTP/2 gets GOAWAY).
///
/// `handler` is called once per request with the client's [`Peer`].
pub async fn serve<H, Fut, B>(listener: TcpListener, handler: H, cancel: CancellationToken, grace: Duration)
where
    H: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, client) = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        serve_one(&builder, &graceful, stream, client, handler.clone());
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period of {grace:?} ended with connections still open");
    }
}

fn serve_one<H, Fut, B>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    client: SocketAddr,
    handler: H,
) where
    H: Fn(Request<Incoming>, Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let peer = Peer::new(client);
    let service = hyper::service::service_fn(move |req| {
        let fut = handler(req, peer.clone());
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%client, "connection ended: {e}");
        }
    });
}
