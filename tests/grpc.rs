//! HTTP/2 to upstreams: a gRPC-style exchange (HTTP/2 both ways, `te: trailers`, a body,
//! then trailers) through Weir to an h2c upstream and to an h2 upstream over TLS verified
//! against a CA bundle, with concurrent streams on one upstream connection.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A gRPC-like upstream: echoes the request body prefixed with `version`, then trailers
/// `grpc-status: 0` and `grpc-message` carrying what it saw of the request (its `te`, whether
/// it came as HTTP/2). Counts the connections it accepted.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

type Echo = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>>;

async fn answer(req: Request<Incoming>, version: &'static str) -> Result<Response<Echo>, std::convert::Infallible> {
    let te = req.headers().get("te").map(|v| v.to_str().unwrap_or("?").to_owned()).unwrap_or_default();
    let h2 = req.version() == http::Version::HTTP_2;
    let authority = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("grpc-message", format!("te={te};h2={h2};authority={authority}").parse().unwrap());
    let frames =
        vec![Ok(Frame::data(Bytes::from(format!("{version}:")))), Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
    let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    resp.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
    Ok(resp)
}

impl Upstream {
    async fn spawn(version: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(req, version));
                    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    let _ = match tls {
                        None => builder.serve_connection(TokioIo::new(tcp), service).await,
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else { return };
                            builder.serve_connection(TokioIo::new(stream), service).await
                        }
                    };
                });
            }
        });
        Upstream { addr, connections }
    }
}

fn config(upstream: SocketAddr, upstream_section: &str) -> String {
    format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\n\
         [apps.web]\nlistener = \"main\"\nsplit = {{ v1 = 1 }}\n\
         versions.v1.endpoints = [{{ name = \"v1-0\", addr = \"{upstream}\" }}]\n{upstream_section}\n"
    )
}

/// One unary call over h2c to Weir: the echoed body and the trailers.
async fn call(weir: SocketAddr, message: &'static str) -> (String, HeaderMap) {
    let tcp = tokio::net::TcpStream::connect(weir).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://web.test/echo.Echo/Say")
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(message.as_bytes())))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers came through");
    (String::from_utf8(collected.to_bytes().to_vec()).unwrap(), trailers)
}

async fn check_calls(weir: &weir::Running, upstream: &Upstream, authority: &str) {
    let addr = weir.listeners["main"];
    let calls: Vec<_> = (0..8).map(|_| tokio::spawn(call(addr, "hello"))).collect();
    for c in calls {
        let (body, trailers) = c.await.unwrap();
        assert_eq!(body, "v1:hello");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], format!("te=trailers;h2=true;authority={authority}").as_str());
    }
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1, "8 concurrent calls share one HTTP/2 connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_exchange_with_trailers_over_h2c() {
    let upstream = Upstream::spawn("v1", None).await;
    let weir = common::start(&config(upstream.addr, "upstream = { protocol = \"http2\" }")).await;
    check_calls(&weir, &upstream, "web.test").await;
    weir.shutdown().await;
}

fn write_certificate(
    dir: &Path,
    name: &str,
) -> (rustls::pki_types::CertificateDer<'static>, tokio_rustls::TlsAcceptor) {
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    (cert.der().clone(), tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_to_the_upstream_verified_by_a_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (_, acceptor) = write_certificate(dir.path(), "backend.test");
    let upstream = Upstream::spawn("v1", Some(acceptor)).await;
    let ca = dir.path().join("ca.pem");
    let section = format!(
        "[apps.web.upstream]\nprotocol = \"http2\"\ntls = {{ ca = \"{}\", server_name = \"backend.test\" }}",
        ca.display()
    );
    let weir = common::start(&config(upstream.addr, &section)).await;
    check_calls(&weir, &upstream, "web.test").await;
    weir.shutdown().await;

    // A certificate for another name is refused: 502, never a request sent in clear text.
    let wrong = section.replace("backend.test\" }", "other.test\" }");
    let weir = common::start(&config(upstream.addr, &wrong)).await;
    let r = common::Client::new().get(&format!("http://{}/", weir.listeners["main"])).await;
    assert_eq!(r.status, 502, "{}", r.body);
    weir.shutdown().await;
    // A CA file that is not one is refused at load, naming the field.
    std::fs::write(&ca, "junk").unwrap();
    let err = weir::Config::parse(&config(upstream.addr, &section), "test").expect_err("junk CA").to_string();
    assert!(err.contains("apps.web.upstream.tls") && err.contains("ca.pem"), "{err}");
}
