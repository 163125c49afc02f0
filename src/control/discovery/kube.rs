//! Kubernetes discovery: one kube-rs watcher per discovered version, feeding the control task.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::reduce::{Source, Store};
use super::{PoolKey, SyncState};
use crate::config::{DiscoveryConfig, KubernetesConfig};
use crate::control::ControlHandle;
use crate::metrics::Metrics;

/// Consecutive watcher errors after which the watcher is rebuilt from a fresh list.
const REBUILD_AFTER_ERRORS: u32 = 5;

/// Errors of creating the API client.
#[derive(Debug, thiserror::Error)]
#[error("cannot create a Kubernetes client: {0}")]
pub struct ClientError(String);

/// The API client: the explicit URL, else the kubeconfig file, else in-cluster/inferred. All
/// three are production paths; tests use the first against a stand-in API server.
pub async fn client(cfg: &KubernetesConfig) -> Result<Client, ClientError> {
    let err = |e: &dyn std::fmt::Display| ClientError(e.to_string());
    let config = if let Some(url) = &cfg.api_url {
        kube::Config::new(url.parse().map_err(|e| err(&e))?)
    } else if let Some(path) = &cfg.kubeconfig {
        let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(&e))?;
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| err(&e))?
    } else {
        kube::Config::infer().await.map_err(|e| err(&e))?
    };
    Client::try_from(config).map_err(|e| err(&e))
}

/// One pool's watch: what to watch and where to report.
pub struct PoolWatch {
    /// The API client.
    pub client: Client,
    /// (app, version).
    pub key: PoolKey,
    /// The source.
    pub cfg: DiscoveryConfig,
    /// Where endpoint lists go.
    pub control: ControlHandle,
    /// Readiness bookkeeping.
    pub sync: Arc<SyncState>,
    /// Discovery metrics.
    pub metrics: Metrics,
    /// Stops the watch.
    pub cancel: CancellationToken,
}

/// Watches one version's pool until its `cancel` fires.
pub async fn watch(w: PoolWatch) {
    let (client, namespace) = (w.client.clone(), w.cfg.namespace.clone());
    if let Some(service) = w.cfg.service.clone() {
        let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
        run(api, format!("kubernetes.io/service-name={service}"), w).await
    } else if let Some(selector) = w.cfg.selector.clone() {
        let api: Api<Pod> = Api::namespaced(client, &namespace);
        run(api, selector, w).await
    }
}

async fn run<K>(api: Api<K>, selector: String, w: PoolWatch)
where
    K: kube::Resource + Source + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let PoolWatch { key, cfg, control, sync, metrics, cancel, .. } = w;
    let (app, version) = (&key.0, &key.1);
    let mut store = Store::new(cfg.port.clone());
    let (events, errors, restarts) = metrics.discovery(app, version);
    // The store outlives watcher rebuilds: a rebuilt watcher re-lists (Init..InitDone), which
    // replaces the endpoints as one change; until then the last known ones keep serving.
    loop {
        let config = watcher::Config::default().labels(&selector);
        let mut stream = watcher(api.clone(), config).default_backoff().boxed();
        let mut consecutive_errors = 0u32;
        loop {
            let item = tokio::select! {
                () = cancel.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                None => break,
                Some(Ok(event)) => {
                    consecutive_errors = 0;
                    events.inc();
                    sync.record_ok(&key);
                    if let Some(endpoints) = store.apply(event) {
                        let ready = endpoints.iter().filter(|e| e.ready).count();
                        tracing::info!(%app, %version, endpoints = endpoints.len(), ready, "discovered endpoints changed");
                        if control.discovered(key.clone(), endpoints).await.is_err() {
                            return; // shutting down
                        }
                    }
                    if store.synced() {
                        sync.mark_synced(&key);
                    }
                }
                Some(Err(e)) => {
                    consecutive_errors += 1;
                    errors.inc();
                    // kube#1042: a watch refused with HTTP 410 is retried with the same stale
                    // resourceVersion forever. Rebuilding the watcher forces a fresh list.
                    let gone = matches!(&e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410);
                    let rebuild = gone || consecutive_errors >= REBUILD_AFTER_ERRORS;
                    tracing::warn!(
                        %app, %version, consecutive_errors, rebuild,
                        "Kubernetes watch error, serving the last known endpoints: {e}"
                    );
                    sync.record_error(&key, e.to_string(), rebuild);
                    if rebuild {
                        restarts.inc();
                        break;
                    }
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
