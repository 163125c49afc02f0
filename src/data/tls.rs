//! TLS termination with rustls: certificates from PEM files, chosen by SNI, re-read without a
//! restart when their files change (a Kubernetes Secret volume swaps a symlink) and on reload.
//!
//! A listener's [`Certificates`] hold the loaded set behind an [`ArcSwap`]: a handshake reads
//! it with no lock, and a reload or a file change swaps in a whole new set, or nothing when the
//! new files are bad (the error is logged and counted; the old certificates keep serving).

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::config::{CertificateConfig, TlsConfig};

/// How often certificate files are checked for a change.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// SNI names whose certificate choice is remembered, at most (hostile clients send any name).
const NAME_CACHE: usize = 1024;

/// Why a certificate set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no PEM certificate, or no PEM private key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The key does not belong to the certificate, or is of a kind rustls cannot use.
    #[error("{key} does not fit {cert}: {why}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        why: String,
    },
    /// The TLS configuration itself (protocol versions, provider) was refused.
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// One loaded certificate with the bytes it came from (to see a change).
struct Loaded {
    keys: Vec<Arc<CertifiedKey>>,
    /// A hash of every file's bytes, in order.
    fingerprint: u64,
    /// SNI name → index of the certificate valid for it (`None`: none is, the first serves).
    by_name: RwLock<HashMap<Box<str>, Option<usize>>>,
}

impl Loaded {
    fn choose(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let first = || Arc::clone(&self.keys[0]);
        let Some(name) = name.filter(|_| self.keys.len() > 1) else { return first() };
        if let Some(hit) = self.by_name.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return hit.map_or_else(first, |i| Arc::clone(&self.keys[i]));
        }
        let found = ServerName::try_from(name).ok().and_then(|server| {
            self.keys.iter().position(|k| {
                k.end_entity_cert().ok().and_then(|c| webpki::EndEntityCert::try_from(c).ok()).is_some_and(|cert| {
                    // Names only: an IP address in SNI is not allowed (RFC 6066 §3).
                    matches!(server, ServerName::DnsName(_)) && cert.verify_is_valid_for_subject_name(&server).is_ok()
                })
            })
        });
        let mut cache = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() < NAME_CACHE {
            cache.insert(name.into(), found);
        }
        found.map_or_else(first, |i| Arc::clone(&self.keys[i]))
    }
}

/// A TLS listener's certificates: the files they come from and the set loaded from them.
pub struct Certificates {
    listener: String,
    sources: Mutex<Vec<CertificateConfig>>,
    loaded: ArcSwap<Loaded>,
    provider: Arc<CryptoProvider>,
    reload_errors: prometheus::IntCounter,
    /// The fingerprint of the last set of files that failed to load.
    failed: AtomicU64,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates").field("listener", &self.listener).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.loaded.load().choose(hello.server_name()))
    }
}

impl Certificates {
    /// Loads the certificates of listener `listener`; an error names the file and the problem.
    pub fn load(
        listener: &str,
        sources: &[CertificateConfig],
        reload_errors: prometheus::IntCounter,
    ) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load(sources, &provider)?;
        Ok(Arc::new(Certificates {
            listener: listener.to_owned(),
            sources: Mutex::new(sources.to_vec()),
            loaded: ArcSwap::from_pointee(loaded),
            provider,
            reload_errors,
            failed: AtomicU64::new(0),
        }))
    }

    /// Checks that `sources` load (for a reload, before anything changes).
    pub fn check(sources: &[CertificateConfig]) -> Result<(), TlsError> {
        load(sources, &Arc::new(rustls::crypto::ring::default_provider())).map(drop)
    }

    /// Loads from `sources` (a reload's, or the same files again) and serves them from the
    /// next handshake on; on an error nothing changes.
    pub fn replace(&self, sources: &[CertificateConfig]) -> Result<(), TlsError> {
        let loaded = load(sources, &self.provider)?;
        *self.sources.lock().unwrap_or_else(|e| e.into_inner()) = sources.to_vec();
        self.loaded.store(Arc::new(loaded));
        tracing::info!(listener = %self.listener, "certificates loaded");
        Ok(())
    }

    /// Re-reads the files if their bytes changed; a bad new set is logged and counted, and
    /// the old one keeps serving.
    pub fn refresh(&self) {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Ok(fingerprint) = fingerprint(&sources) else {
            // Mid-swap (a file briefly missing) or gone: the next check tells.
            return;
        };
        if fingerprint == self.loaded.load().fingerprint {
            return;
        }
        match load(&sources, &self.provider) {
            Ok(loaded) => {
                self.loaded.store(Arc::new(loaded));
                tracing::info!(listener = %self.listener, "certificate files changed: reloaded");
            }
            Err(e) => {
                // Counted and logged once per change of the files, not every second.
                if self.failed.swap(fingerprint, Ordering::Relaxed) != fingerprint {
                    self.reload_errors.inc();
                    tracing::error!(listener = %self.listener, "certificate files changed but cannot be used; still serving the previous ones: {e}");
                }
            }
        }
    }

    /// The rustls server configuration: these certificates, TLS 1.2 and 1.3, ALPN `alpn` in
    /// order of preference, session resumption by ticket and by cache.
    pub fn server_config(self: &Arc<Self>, config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = config.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Setup(e.to_string()))?;
        server.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
        Ok(Arc::new(server))
    }

    /// Checks the files every second until `cancel`, re-reading them when they changed.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(WATCH_EVERY) => {}
            }
            let this = Arc::clone(&self);
            // File reads block: off the reactor.
            let _ = tokio::task::spawn_blocking(move || this.refresh()).await;
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Each source's certificate file and key file, as bytes.
type Files = Vec<(Vec<u8>, Vec<u8>)>;

/// Every source's certificate and key file, as bytes.
fn read_all(sources: &[CertificateConfig]) -> Result<Files, TlsError> {
    sources.iter().map(|s| Ok((read(&s.cert)?, read(&s.key)?))).collect()
}

/// A hash of the files' bytes: what tells a change.
fn hash_files(files: &Files) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}

fn fingerprint(sources: &[CertificateConfig]) -> Result<u64, TlsError> {
    read_all(sources).map(|files| hash_files(&files))
}

fn load(sources: &[CertificateConfig], provider: &Arc<CryptoProvider>) -> Result<Loaded, TlsError> {
    let files = read_all(sources)?;
    let mut keys = Vec::with_capacity(sources.len());
    for (s, (cert_pem, key_pem)) in sources.iter().zip(&files) {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem { path: s.cert.clone(), what: format!("not PEM certificates: {e}") })?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                path: s.cert.clone(),
                what: "no certificate (-----BEGIN CERTIFICATE-----) in it".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            path: s.key.clone(),
            what: format!("no private key (PKCS#8, PKCS#1 or SEC1 PEM) in it: {e}"),
        })?;
        let mismatch = |why: String| TlsError::Mismatch { cert: s.cert.clone(), key: s.key.clone(), why };
        let signing = provider.key_provider.load_private_key(key).map_err(|e| mismatch(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| mismatch(e.to_string()))?;
        keys.push(Arc::new(certified));
    }
    if keys.is_empty() {
        return Err(TlsError::Setup("no certificates configured".into()));
    }
    Ok(Loaded { keys, fingerprint: hash_files(&files), by_name: RwLock::new(HashMap::new()) })
}
