//! The TOML configuration: its schema, whole-document validation, and error locations.
//!
//! A config is parsed and validated as a whole before anything is applied: [`Config::parse`]
//! returns either a config that the snapshot builder accepts, or *every* problem found, each with
//! the dotted path of the field and its `line:column` in the source.

mod locate;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use validate::{MAX_WEIGHT, validate_name, validate_weights};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin API listener and history settings.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Process-wide runtime settings.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Traffic listeners by name (`[listeners.main]`). Apps attach to them by name.
    pub listeners: BTreeMap<String, ListenerConfig>,
    /// Applications by name (`[apps.my-app]`).
    pub apps: BTreeMap<String, AppConfig>,
    /// How to reach the Kubernetes API, for versions that use `discovery` and for the
    /// Kubernetes state store.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// Where the split, its history and rollout progress are kept across restarts and shared
    /// between replicas.
    #[serde(default)]
    pub state: StateConfig,
}

/// `[state]`: the durable state store. At most one of `dir` (standalone) and `kubernetes`
/// (in-cluster, shared by every replica). With neither, the state lives in memory only and a
/// restart goes back to the config file's split (logged as a warning at start).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory Weir keeps its state in (`state.json`, and a `lock` file that keeps a second
    /// Weir off the same directory). Created if missing. `--state-dir` overrides it.
    #[serde(default)]
    pub dir: Option<std::path::PathBuf>,
    /// Keep the state in a ConfigMap every replica reads and writes (compare-and-swap on its
    /// `resourceVersion`) and watches; each replica reports what it applied in a Lease.
    #[serde(default)]
    pub kubernetes: Option<StateKubernetes>,
    /// What to do at start when the stored state exists but cannot be parsed: `refuse`
    /// (default: exit with a message naming the file or object, routing nothing rather than
    /// the wrong split) or `start_from_config` (set the unreadable state aside, keeping its
    /// text, and start from the config file's split).
    #[serde(default)]
    pub on_unreadable: OnUnreadable,
}

/// `[state.kubernetes]`: the ConfigMap state store.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateKubernetes {
    /// The ConfigMap's name. Default `weir-state`; the manifest ships it empty.
    #[serde(default = "default_state_name")]
    pub name: String,
    /// Its namespace. Default: `$POD_NAMESPACE`, else the service account's namespace, else
    /// `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// This replica's name in its Lease and in `GET /cluster`. Default: `$POD_NAME`, else the
    /// host name.
    #[serde(default)]
    pub identity: Option<String>,
    /// A replica whose Lease was not renewed for this long counts as gone. Default `10s`;
    /// replicas renew every third of it.
    #[serde(default = "default_lease_duration", with = "humantime_serde")]
    pub lease_duration: Duration,
    /// Longest wait for one call to the API server (a write answers 503 after it). Default `5s`.
    #[serde(default = "default_api_timeout", with = "humantime_serde")]
    pub api_timeout: Duration,
}

impl StateKubernetes {
    /// A store on the ConfigMap `name` with every other setting at its default.
    pub fn new(name: &str) -> Self {
        StateKubernetes {
            name: name.into(),
            namespace: None,
            identity: None,
            lease_duration: default_lease_duration(),
            api_timeout: default_api_timeout(),
        }
    }
}

fn default_state_name() -> String {
    "weir-state".into()
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(10)
}
fn default_api_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `state.on_unreadable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnreadable {
    /// Exit with a message that names the state and how to recover.
    #[default]
    Refuse,
    /// Keep the unreadable text aside and start from the config file's split.
    StartFromConfig,
}

/// `[kubernetes]`: the API client used by discovery. With neither field set, Weir uses the
/// in-cluster service account, else `$KUBECONFIG` / `~/.kube/config`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Explicit API server URL, e.g. `http://127.0.0.1:8001` behind `kubectl proxy`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Path of a kubeconfig file to use instead of the in-cluster account.
    #[serde(default)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// `discovery`: where a version's endpoints come from in Kubernetes. Exactly one of `service`
/// and `selector`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Namespace to watch. Default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// A Service whose EndpointSlices (`kubernetes.io/service-name=<service>`) list the pods.
    #[serde(default)]
    pub service: Option<String>,
    /// A label selector for Pods, e.g. `app=my-app,version=v2.0.0`.
    #[serde(default)]
    pub selector: Option<String>,
    /// The port: a number, or a port name (an EndpointSlice port or a container port).
    /// Default: the only port listed.
    #[serde(default)]
    pub port: Option<PortRef>,
}

/// A port by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A port name.
    Name(String),
}

fn default_namespace() -> String {
    "default".into()
}

/// `[admin]`: where the admin API listens and how much history it keeps.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin API. Default `127.0.0.1:9901`. A non-loopback address needs
    /// `tokens_file` (or, deliberately, `allow_unauthenticated = true`).
    #[serde(default = "default_admin_addr")]
    pub addr: SocketAddr,
    /// Revisions kept per app for `GET /apps/{app}/history` and rollback. Default 100, min 2.
    #[serde(default = "default_history_limit")]
    pub history_limit: usize,
    /// Named bearer tokens (`[tokens.NAME] secret = "…", access = "read" | "change"`): every
    /// admin call but `/live`, `/ready` and `/metrics` then needs one. Re-read when it
    /// changes. Without it, only loopback clients may call.
    #[serde(default)]
    pub tokens_file: Option<std::path::PathBuf>,
    /// In-cluster authentication: each caller's bearer token is checked with a Kubernetes
    /// `TokenReview`, and each call with a `SubjectAccessReview` on `splits.weir.dev` (name =
    /// the app; verbs get, list, update), `clusters`, `configs` (reload) or `instances`
    /// (shutdown), so RBAC grants it. Exclusive with `tokens_file`.
    #[serde(default)]
    pub kubernetes_auth: Option<AdminKubernetesAuth>,
    /// Lets any client call the admin API without a token (an `addr` that is not loopback,
    /// with no `tokens_file`, is refused without this). Default false.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

/// `[admin.kubernetes_auth]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminKubernetesAuth {
    /// The namespace the access reviews name. Default: `$POD_NAMESPACE`, else the service
    /// account's, else `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Longest wait for the API server's answer; the call answers 503 after it. Default `5s`.
    #[serde(default = "default_api_timeout", with = "humantime_serde")]
    pub api_timeout: Duration,
}

/// `[runtime]`: process settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Tokio worker threads. Default 0 = one per CPU core.
    #[serde(default)]
    pub worker_threads: usize,
    /// After SIGTERM, how long the traffic listeners keep accepting while `/ready` says 503
    /// and every response says `Connection: close` (HTTP/2: GOAWAY), before they close.
    /// Kubernetes removes a terminating pod from its Service's endpoints at the same time
    /// as it signals it, and every node's proxy takes a moment to follow: new connections
    /// keep arriving meanwhile. Default `5s`. SIGINT (Ctrl-C) does not wait it.
    #[serde(default = "default_drain_delay", with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Once the listeners closed, how long in-flight requests get to finish before Weir
    /// exits. Default `20s`: with the drain delay, 25 s, inside Kubernetes' default
    /// termination grace period of 30 s.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { worker_threads: 0, drain_delay: default_drain_delay(), shutdown_grace: default_shutdown_grace() }
    }
}

fn default_drain_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(20)
}

/// `[listeners.NAME]`: one socket that accepts client traffic (HTTP/1.1 and h2c), with the
/// deadlines and limits every client connection on it gets (nginx's `client_header_timeout`,
/// `client_body_timeout`, `send_timeout`, `keepalive_timeout`, `worker_connections`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Socket address to bind, e.g. `0.0.0.0:8080`.
    pub addr: SocketAddr,
    /// A request head must arrive whole within this time from its first byte, or the
    /// connection closes (slow-header clients). Default `30s`.
    #[serde(default = "default_client_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest wait between two reads of a request body, or the connection closes (and the
    /// request to the upstream is aborted). Default `30s`.
    #[serde(default = "default_client_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Longest a write to the client may stall (a client that stops reading), or the
    /// connection closes. Default `30s`.
    #[serde(default = "default_client_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// An idle keep-alive connection with no new request for this long is closed. Default `60s`.
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Open client connections at most; at the limit Weir stops accepting (new connections
    /// wait in the kernel's backlog), logs it and counts it in
    /// `weir_connection_limit_reached_total`. Default `20000`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Whether plain HTTP/1.1 requests (no body, or a `Content-Length` one up to 64 KiB) are
    /// forwarded by Weir's own codec rather than hyper's. Default `true`; `false` is for
    /// comparing the two paths. Both apply the same framing checks either way.
    #[serde(default = "default_true")]
    pub fast_path: bool,
    /// TLS termination (`[listeners.NAME.tls]`); none: plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `[listeners.NAME.tls]`: the certificates a TLS listener serves, and how.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chains with their keys, PEM files. The first serves clients that send no
    /// SNI name or one no certificate is valid for; the others are chosen by the names they
    /// are valid for (their subjectAltNames, wildcards included). Files are re-read when
    /// their bytes change (checked every second) and on reload.
    pub certificates: Vec<CertificateConfig>,
    /// ALPN protocols offered, in order of preference: `h2`, `http/1.1`. Default both, `h2`
    /// first; `["http/1.1"]` keeps clients on HTTP/1.1.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// A handshake must complete within this. Default `10s`.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

/// One certificate chain and its private key (PKCS#8, PKCS#1 or SEC1), as PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The certificate chain, leaf first (Kubernetes TLS Secret: `tls.crt`).
    pub cert: std::path::PathBuf,
    /// Its private key (`tls.key`).
    pub key: std::path::PathBuf,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ListenerConfig {
    /// A listener on `addr` with every other setting at its default.
    pub fn new(addr: SocketAddr) -> Self {
        ListenerConfig {
            addr,
            header_read_timeout: default_client_timeout(),
            body_read_timeout: default_client_timeout(),
            send_timeout: default_client_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            max_connections: default_max_connections(),
            fast_path: true,
            tls: None,
        }
    }
}

fn default_client_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_failure_percent() -> u8 {
    50
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    20_000
}

/// `[apps.NAME]`: one application with its versions and the split between them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Name of the listener this app is served on.
    pub listener: String,
    /// `Host` header values (without port, case-insensitive) that select this app on a shared
    /// listener. Empty (the default) makes this app the listener's default app, which gets
    /// every request whose host matches no other app. At most one default app per listener.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// How an endpoint is chosen inside a version's pool. Default `p2c`.
    #[serde(default)]
    pub balance: Balance,
    /// Weight per version name: proportional non-negative integers (like Gateway API's
    /// `weight`), at most 1,000,000 each. 0 or absent means no traffic; all-zero is rejected.
    pub split: BTreeMap<String, i64>,
    /// The versions (v1/v2, blue/green, stable/canary) by name, each a pool of endpoints.
    pub versions: BTreeMap<String, VersionConfig>,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// How Weir speaks to the app's endpoints: HTTP/1.1 (the default) or HTTP/2, in clear or
    /// over TLS.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Active health probe of every endpoint of every version; a version's own `probe`
    /// replaces it. None (the default): endpoints count as up, passive checks only.
    #[serde(default)]
    pub probe: Option<ProbeConfig>,
    /// Passive outlier detection: ejecting endpoints that fail real requests.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Retrying requests that failed before reaching an upstream.
    #[serde(default)]
    pub retry: RetryConfig,
    /// When every endpoint of a version is down: `spill` (the default) sends its share to the
    /// other versions with weight > 0, in proportion to their weights; `fail` answers 503.
    #[serde(default)]
    pub on_version_down: VersionDown,
    /// Whether a request with `X-Weir-Version: <version>` goes to that version whatever the
    /// weights, a 0-weight version included (testers reaching green before the flip). A
    /// version the app does not have answers 400, one with no healthy endpoint 503: a forced
    /// request never falls back to another version. Default true; `false` for public
    /// traffic that must not choose.
    #[serde(default = "default_true")]
    pub force_header: bool,
    /// Sticky user buckets: the same user gets the same version for the same weights, on
    /// every replica, and raising a canary's weight only moves users into it.
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
    /// Rules that force a version by a request header or cookie (`[[apps.NAME.force]]`), as
    /// ingress-nginx's canary-by-header and canary-by-cookie do. Precedence: `X-Weir-Version`,
    /// then header rules, then cookie rules (each in config order), then the sticky bucket,
    /// then the weights.
    #[serde(default)]
    pub force: Vec<ForceRule>,
    /// Mirroring (shadow traffic) of a share of the app's requests to a version.
    #[serde(default)]
    pub mirror: Option<MirrorConfig>,
    /// Rollouts run by Weir: the plans, the canary analysis's criteria and limits.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// What a forced request gets when the version it names does not exist or has no healthy
    /// endpoint: `refuse` (the default: 400 for an unknown version, 503 for one that is down,
    /// never a silent fallback) or `fallback` (routed as if it were not forced).
    #[serde(default)]
    pub force_unavailable: ForceUnavailable,
}

/// `[apps.NAME.rollout]`: how Weir rolls a canary out (`POST /apps/NAME/rollouts`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// The plan used when a start call names none: one of `plans`, or a preset (`canary`:
    /// 5 → 25 → 50 → 100 with 2 min analyses between; `ramped`: 20 % steps with 1 min
    /// analyses; `blue_green`: a 5 min analysis of the idle colour on forced requests, then
    /// the flip). Default `canary`.
    #[serde(default = "default_plan")]
    pub default_plan: String,
    /// Named plans: lists of steps `{ set_weight = N }`, `{ pause = "30s" }` (or `"manual"`,
    /// until resumed), `{ analyze = "1m" }`.
    #[serde(default)]
    pub plans: BTreeMap<String, Vec<crate::control::rollout::Step>>,
    /// Failed analyses that roll the canary back. Default 2.
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    /// What the canary is held to.
    #[serde(default)]
    pub criteria: crate::control::rollout::analysis::Criteria,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            default_plan: default_plan(),
            plans: BTreeMap::new(),
            failure_limit: default_failure_limit(),
            criteria: Default::default(),
        }
    }
}

fn default_plan() -> String {
    "canary".into()
}
fn default_failure_limit() -> u32 {
    2
}

/// `[apps.NAME.mirror]`: copies of a share of the app's requests, sent to a version on the
/// side; their answers are read and discarded, and the client never waits for them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The version that gets the copies (often a 0-weight one).
    pub version: String,
    /// Share of requests copied, in percent (0–100, fractions allowed). Exact over any window,
    /// as the split is.
    pub percent: f64,
    /// Largest request body copied, in bytes. Default 65536 (Weir holds bodies up to 64 KiB
    /// whole on its HTTP/1.1 fast path; streamed bodies are never copied).
    #[serde(default = "default_mirror_max_body")]
    pub max_body: usize,
    /// Copies in flight at most; beyond, copies are dropped and counted. Default 256.
    #[serde(default = "default_mirror_queue")]
    pub queue: usize,
}

fn default_mirror_max_body() -> usize {
    64 * 1024
}
fn default_mirror_queue() -> usize {
    256
}

/// `[[apps.NAME.force]]`: one rule forcing requests into (or out of) a version. Exactly one of
/// `header` and `cookie`; at most one of `value` and `pattern`. Without either, the field's
/// value `always` forces the request into `version` and `never` keeps it out (routed by the
/// other versions' weights); other values leave the request to the next rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForceRule {
    /// The request header read, e.g. `x-canary`.
    #[serde(default)]
    pub header: Option<String>,
    /// The cookie read, e.g. `canary`.
    #[serde(default)]
    pub cookie: Option<String>,
    /// The version the rule forces.
    pub version: String,
    /// The exact value that forces it.
    #[serde(default)]
    pub value: Option<String>,
    /// A regular expression (Rust `regex` syntax, unanchored unless written with `^…$`) the
    /// value must match to force it.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// See [`AppConfig::force_unavailable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForceUnavailable {
    /// Answer 400 (unknown version) or 503 (no healthy endpoint).
    #[default]
    Refuse,
    /// Route the request by the sticky bucket or the weights instead.
    Fallback,
}

/// `[apps.NAME.upstream]`: the protocol to the app's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http1` (the default; pooled keep-alive connections) or `http2` (one multiplexed
    /// connection per endpoint: gRPC, which needs trailers). Over TLS it is offered by ALPN.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints; none: clear text.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
}

/// See [`UpstreamConfig::protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 (h2c in clear text, h2 over TLS).
    Http2,
}

/// `[apps.NAME.upstream.tls]`: TLS to the endpoints, verified against a CA bundle.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM bundle of the CAs the endpoints' certificates must chain to.
    pub ca: std::path::PathBuf,
    /// The name their certificates must be valid for (and sent as SNI). Default: the
    /// endpoint's IP address (its certificate must then list it).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// `[apps.NAME.sticky]`: where a request's user key comes from. The header is read first,
/// then the cookie; a request with neither is keyed by its client address.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// A request header carrying the user key, e.g. `x-user-id`.
    #[serde(default)]
    pub header: Option<String>,
    /// A cookie carrying it, e.g. `session`.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Salt of the hash; the same on every replica. Default: the app's name.
    #[serde(default)]
    pub salt: Option<String>,
    /// Whether a client with neither the header nor the cookie gets a random key in the
    /// cookie (`Set-Cookie`, a year, `HttpOnly; SameSite=Lax`, `Secure` over TLS), so its
    /// bucket follows it across addresses and replicas instead of its address's. Needs
    /// `cookie`. Default false.
    #[serde(default)]
    pub set_cookie: bool,
}

/// What to do with a version's share when none of its endpoints is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionDown {
    /// Send it to the other versions that have weight and a healthy endpoint.
    #[default]
    Spill,
    /// Answer 503 for it.
    Fail,
}

/// `probe`: an HTTP GET per endpoint on an interval (HAProxy's `check` with rise/fall).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Path to GET, e.g. `/ready`. Default `/ready`.
    #[serde(default = "default_probe_path")]
    pub path: String,
    /// Port to probe on the endpoint's address. Default: the endpoint's own port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Time between probes of one endpoint. Default `1s`.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A probe not answered within this fails. Default `1s`.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Passes in a row that bring a fallen endpoint back (HAProxy `rise`). Default 2. A new
    /// endpoint takes traffic after its first pass.
    #[serde(default = "default_rise")]
    pub healthy_threshold: u32,
    /// Failures in a row that take an endpoint out (HAProxy `fall`). Default 3.
    #[serde(default = "default_fall")]
    pub unhealthy_threshold: u32,
    /// Inclusive range of statuses that pass. Default `[200, 399]`.
    #[serde(default = "default_expected_status")]
    pub expected_status: [u16; 2],
}

/// `outlier`: passive ejection on failed requests. Failures are connect errors, resets and
/// timeouts, plus 5xx answers when `count_5xx`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Failures within `window` that eject an endpoint (nginx's `max_fails`). Default 5;
    /// 0 turns passive ejection off.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// Failures in a row, with no answer between, that eject an endpoint (Finagle's failure
    /// accrual, Envoy's `consecutive_gateway_failure`): a frozen endpoint whose requests all
    /// time out or lose to their hedge goes out at once, however slowly the failures come.
    /// Default 5; 0 turns it off.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// ... provided those failures are at least this share of the endpoint's requests in the
    /// window, in percent (Envoy's failure percentage): a busy endpoint with a few errors (or
    /// a client hitting one failing path) is not ejected for them. Default 50; 0 counts
    /// failures alone (nginx).
    #[serde(default = "default_failure_percent")]
    pub failure_percent: u8,
    /// The window failures are counted in (nginx's `fail_timeout`). Default `10s`.
    #[serde(default = "default_failure_window", with = "humantime_serde")]
    pub window: Duration,
    /// Whether 5xx answers count as failures. Default true.
    #[serde(default = "default_true")]
    pub count_5xx: bool,
    /// Ejection time, multiplied by how often the endpoint was ejected (Envoy). Default `30s`.
    /// When it is over, one trial request (`GET` on the probe's path, else `/`) must be
    /// answered in time before the endpoint takes traffic again; a failed trial ejects it
    /// again, for longer.
    #[serde(default = "default_base_ejection", with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Longest ejection. Default `300s`.
    #[serde(default = "default_max_ejection", with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Most of a version's endpoints that may be ejected at once, in percent; one endpoint may
    /// always be. Default 50.
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u8,
}

/// `retry`: a request that failed before any byte reached the upstream is sent to another
/// endpoint of the same version. Only requests whose body Weir holds are retried (bodyless ones,
/// and HTTP/1.1 `Content-Length` bodies up to 64 KiB, read whole first); after a reset, only
/// idempotent ones (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), since the upstream may have seen it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Extra attempts per request. Default 2; 0 turns retries off.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    /// Retries allowed per 10 s, in percent of requests in that time. Default 20.
    #[serde(default = "default_budget_percent")]
    pub budget_percent: u32,
    /// Retries always allowed per 10 s, whatever the traffic. Default 10.
    #[serde(default = "default_budget_min")]
    pub budget_min: u32,
    /// When an idempotent request Weir can send again (no body, or a body it read whole)
    /// that is still waiting for its response head is also sent to a second endpoint of its version; the first answer wins and the
    /// other attempt is cancelled (Envoy's hedging on per-try timeout). `"auto"` (default):
    /// five times the typical endpoint's average latency, at least 250 ms; a duration: that
    /// long; `"off"`. A hedge uses one of `attempts` and the retry budget. When the hedge
    /// wins, the first endpoint is counted as failed.
    #[serde(default)]
    pub hedge_after: HedgeAfter,
}

/// `retry.hedge_after`: `"auto"`, `"off"` or a duration like `"500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum HedgeAfter {
    /// Derived from the version's observed latency.
    #[default]
    Auto,
    /// Never hedge.
    Off,
    /// After this long.
    After(Duration),
}

impl HedgeAfter {
    /// The shortest delay `auto` picks.
    pub const AUTO_MIN: Duration = Duration::from_millis(250);
    /// `auto`'s delay as a multiple of the typical endpoint's average latency.
    pub const AUTO_FACTOR: u32 = 5;

    /// The delay before a hedge, given the version's typical latency (`None`: not known
    /// yet, so `auto` does not hedge).
    pub fn delay(self, typical: Option<Duration>) -> Option<Duration> {
        match self {
            HedgeAfter::Off => None,
            HedgeAfter::After(d) => Some(d),
            HedgeAfter::Auto => typical.map(|t| (t * Self::AUTO_FACTOR).max(Self::AUTO_MIN)),
        }
    }
}

impl TryFrom<String> for HedgeAfter {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "auto" => Ok(HedgeAfter::Auto),
            "off" => Ok(HedgeAfter::Off),
            _ => match humantime::parse_duration(&s) {
                Ok(d) if !d.is_zero() => Ok(HedgeAfter::After(d)),
                Ok(_) => Err("hedge_after must be above 0 (use \"off\" to turn hedging off)".into()),
                Err(e) => Err(format!("hedge_after must be \"auto\", \"off\" or a duration like \"500ms\": {e}")),
            },
        }
    }
}

impl From<HedgeAfter> for String {
    fn from(h: HedgeAfter) -> String {
        match h {
            HedgeAfter::Auto => "auto".into(),
            HedgeAfter::Off => "off".into(),
            HedgeAfter::After(d) => humantime::format_duration(d).to_string(),
        }
    }
}

fn default_probe_path() -> String {
    "/ready".into()
}
fn default_probe_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_expected_status() -> [u16; 2] {
    [200, 399]
}
fn default_max_failures() -> u32 {
    5
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_failure_window() -> Duration {
    Duration::from_secs(10)
}
fn default_true() -> bool {
    true
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejected_percent() -> u8 {
    50
}
fn default_retry_attempts() -> u32 {
    2
}
fn default_budget_percent() -> u32 {
    20
}
fn default_budget_min() -> u32 {
    10
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            max_failures: default_max_failures(),
            consecutive_failures: default_consecutive_failures(),
            window: default_failure_window(),
            count_5xx: true,
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
            max_ejected_percent: default_max_ejected_percent(),
            failure_percent: default_failure_percent(),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: default_retry_attempts(),
            budget_percent: default_budget_percent(),
            budget_min: default_budget_min(),
            hedge_after: HedgeAfter::Auto,
        }
    }
}

/// Endpoint choice inside one version's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Power of two choices on in-flight requests: two random endpoints, the less busy wins.
    #[default]
    P2c,
    /// Strict rotation.
    RoundRobin,
}

/// `[apps.NAME.versions.VERSION]`: one version's pool.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VersionConfig {
    /// Static endpoints of this version (standalone mode). Either these or `discovery`.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Endpoints discovered from Kubernetes instead of listed.
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
    /// This version's probe, replacing the app's `probe` as a whole.
    #[serde(default)]
    pub probe: Option<ProbeConfig>,
}

impl AppConfig {
    /// The probe that applies to `version`: its own, else the app's.
    pub fn probe_for(&self, version: &str) -> Option<&ProbeConfig> {
        self.versions.get(version).and_then(|v| v.probe.as_ref()).or(self.probe.as_ref())
    }
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Socket address of the endpoint, e.g. `10.0.0.7:8080`.
    pub addr: SocketAddr,
    /// Name used in metrics, logs and the admin API. Default: the address.
    #[serde(default)]
    pub name: Option<String>,
}

impl EndpointConfig {
    /// The name this endpoint is shown under.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.addr.to_string())
    }
}

/// `[apps.NAME.timeouts]`: upstream timeouts, written like `"1s"` or `"250ms"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    /// TCP connect timeout to an endpoint. Default `1s`. Exceeding it answers 504.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect: Duration,
    /// Time from sending the request until the upstream's response headers arrive. Default
    /// `30s`. Exceeding it answers 504.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request: Duration,
    /// Longest silence of the upstream between two reads of a response body (nginx's
    /// `proxy_read_timeout`); past it the response is cut and the client connection closes
    /// (or its HTTP/2 stream resets). Default `60s`: long enough for server-sent events
    /// with the usual 15–30 s heartbeats.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read: Duration,
    /// How long an idle pooled upstream connection is kept. Default `90s`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle: Duration,
}

fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
fn default_history_limit() -> usize {
    100
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: default_admin_addr(),
            history_limit: default_history_limit(),
            tokens_file: None,
            kubernetes_auth: None,
            allow_unauthenticated: false,
        }
    }
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            request: default_request_timeout(),
            read: default_read_timeout(),
            idle: default_idle_timeout(),
        }
    }
}

/// One problem in a config: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `apps.demo.split.v3`; empty for syntax errors.
    pub field: String,
    /// 1-based line and column in the source, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((line, col)) = self.location {
            write!(f, "{line}:{col}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Errors of loading a config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The config has problems; each is listed.
    #[error("{}", render_problems(.origin, .problems))]
    Invalid {
        /// The file (or other source) it came from.
        origin: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn render_problems(origin: &str, problems: &[Problem]) -> String {
    let mut out = format!("{} problem(s) in {origin}:", problems.len());
    for p in problems {
        out.push_str(&format!("\n  {origin}:{p}"));
    }
    out
}

/// `Result` for config loading.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors (usually the file path).
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let invalid = |problems| Error::Invalid { origin: origin.to_string(), problems };
        let config: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => return Err(invalid(vec![locate::parse_error(text, &e)])),
        };
        let problems = config.problems();
        if problems.is_empty() { Ok(config) } else { Err(invalid(locate::locate_all(text, problems))) }
    }

    /// Every semantic problem of this config, with field paths but no locations.
    pub fn problems(&self) -> Vec<Problem> {
        validate::validate(self)
    }
}
