//! TLS termination on real sockets with certificates generated here: a real rustls handshake,
//! SNI choosing between two certificates, h2 and HTTP/1.1 by ALPN (split by weight on both),
//! a certificate replaced on disk and served by the next handshake, and bad files refused.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Backend;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for `names`, written as `<stem>.crt` / `<stem>.key` in `dir`.
fn certificate(dir: &Path, stem: &str, names: &[&str]) -> CertificateDer<'static> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), signing_key.serialize_pem()).unwrap();
    cert.der().clone()
}

/// A client trusting exactly `roots`, offering `alpn`.
fn connector(roots: &[CertificateDer<'static>], alpn: &[&str]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// A client that accepts any certificate, to see which one a name that none is valid for gets.
fn any_certificate() -> TlsConnector {
    #[derive(Debug)]
    struct Any(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any(provider)))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn handshake(connector: &TlsConnector, addr: std::net::SocketAddr, name: &str) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector.connect(ServerName::try_from(name.to_owned()).unwrap(), tcp).await.unwrap()
}

/// The leaf certificate the server presented.
fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

fn get(host: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path).header("host", host).body(Full::default()).unwrap()
}

async fn body_of(resp: http::Response<hyper::body::Incoming>) -> String {
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn tls_config(dir: &Path, v1: &Backend, v2: &Backend, extra: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[admin]
addr = "127.0.0.1:0"
[listeners.main]
addr = "127.0.0.1:0"
[listeners.main.tls]
certificates = [
  {{ cert = "{d}/a.crt", key = "{d}/a.key" }},
  {{ cert = "{d}/b.crt", key = "{d}/b.key" }},
]
{extra}
[apps.web]
listener = "main"
split = {{ v1 = 50, v2 = 50 }}
versions.v1.endpoints = [{{ name = "v1-0", addr = "{}" }}]
versions.v2.endpoints = [{{ name = "v2-0", addr = "{}" }}]
"#,
        v1.addr, v2.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_and_split_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let a = certificate(dir.path(), "a", &["a.test", "*.a.test"]);
    let b = certificate(dir.path(), "b", &["b.test"]);
    let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
    let weir = common::start(&tls_config(dir.path(), &v1, &v2, "")).await;
    let addr = weir.listeners["main"];
    let both = connector(&[a.clone(), b.clone()], &["h2", "http/1.1"]);

    // SNI picks the certificate valid for the name (a wildcard too); the first serves names
    // no certificate has.
    for (name, want) in [("a.test", &a), ("x.a.test", &a), ("b.test", &b)] {
        let s = handshake(&both, addr, name).await;
        assert_eq!(&presented(&s), want, "SNI {name}");
    }
    let s = handshake(&any_certificate(), addr, "unknown.test").await;
    assert_eq!(presented(&s), a, "no certificate for the name: the first one");

    // h2 by ALPN, split 50/50 by weight over one connection's streams.
    let s = handshake(&both, addr, "b.test").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let mut versions = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..20 {
        let resp = h2
            .send_request(http::Request::get("https://b.test/").body(Full::<Bytes>::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = body_of(resp).await;
        *versions.entry(body.trim().rsplit("Version: ").next().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(versions.get("v1"), Some(&10), "{versions:?}");
    assert_eq!(versions.get("v2"), Some(&10), "{versions:?}");

    // HTTP/1.1 by ALPN (or none), keep-alive, and the upstream is told it was HTTPS.
    for alpn in [&["http/1.1"][..], &[]] {
        let s = handshake(&connector(&[a.clone(), b.clone()], alpn), addr, "a.test").await;
        assert_ne!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        for _ in 0..4 {
            // The same connection each time: it must be ready again (kept alive) first.
            h1.ready().await.expect("the connection is kept alive");
            let resp = h1.send_request(get("a.test", "/headers")).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = body_of(resp).await;
            assert!(body.contains("x-forwarded-proto: https"), "{body}");
        }
    }
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_serves_the_next_handshake_and_bad_files_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = certificate(dir.path(), "a", &["a.test"]);
    certificate(dir.path(), "b", &["b.test"]);
    let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
    let weir = common::start(&tls_config(dir.path(), &v1, &v2, "")).await;
    let addr = weir.listeners["main"];

    // A Kubernetes Secret volume: new files written aside, then swapped in by rename.
    let staged = tempfile::tempdir_in(dir.path()).unwrap();
    let a2 = certificate(staged.path(), "a", &["a.test"]);
    std::fs::rename(staged.path().join("a.key"), dir.path().join("a.key")).unwrap();
    std::fs::rename(staged.path().join("a.crt"), dir.path().join("a.crt")).unwrap();
    let trusting = connector(&[a.clone(), a2.clone()], &[]);
    let mut seen = None;
    for _ in 0..60 {
        let s = handshake(&trusting, addr, "a.test").await;
        if presented(&s) == a2 {
            seen = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.is_some(), "the replaced certificate was not served within 6 s");

    // A key that does not fit: the previous certificate keeps serving.
    let other = tempfile::tempdir().unwrap();
    certificate(other.path(), "x", &["a.test"]);
    std::fs::copy(other.path().join("x.key"), dir.path().join("a.key")).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = handshake(&trusting, addr, "a.test").await;
    assert_eq!(presented(&s), a2, "a bad key replaced a good certificate");
    let metrics = common::Client::new().get(&format!("http://{}/metrics", weir.admin)).await.body;
    assert!(
        metrics.contains("weir_tls_certificate_reload_errors_total{listener=\"main\"} 1"),
        "{}",
        metrics.lines().filter(|l| l.contains("tls")).collect::<Vec<_>>().join("\n")
    );
    weir.shutdown().await;
}

#[test]
fn bad_certificate_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "a", &["a.test"]);
    certificate(dir.path(), "b", &["b.test"]);
    let text = |cert: &str, key: &str| {
        let d = dir.path().display();
        format!(
            "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\n[listeners.main.tls]\n\
             certificates = [{{ cert = \"{d}/{cert}\", key = \"{d}/{key}\" }}]\n[apps.web]\nlistener = \"main\"\n\
             split = {{ v1 = 1 }}\nversions.v1.endpoints = [{{ name = \"a\", addr = \"127.0.0.1:1\" }}]\n"
        )
    };
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
    for (cert, key, says) in [
        ("a.crt", "b.key", "does not fit"),
        ("missing.crt", "a.key", "missing.crt"),
        ("junk.pem", "a.key", "no certificate"),
        ("a.crt", "junk.pem", "no private key"),
        ("a.crt", "a.crt", "no private key"),
    ] {
        let err = weir::Config::parse(&text(cert, key), "test").expect_err(cert).to_string();
        assert!(err.contains("listeners.main.tls.certificates[0]") && err.contains(says), "{cert}/{key}: {err}");
    }
    assert!(weir::Config::parse(&text("a.crt", "a.key"), "test").is_ok());
}
