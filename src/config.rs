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
}

/// `[admin]`: where the admin API listens and how much history it keeps.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin API. Default `127.0.0.1:9901` (loopback only: the admin API has no
    /// authentication, so expose it deliberately).
    #[serde(default = "default_admin_addr")]
    pub addr: SocketAddr,
    /// Revisions kept per app for `GET /apps/{app}/history` and rollback. Default 100, min 2.
    #[serde(default = "default_history_limit")]
    pub history_limit: usize,
}

/// `[runtime]`: process settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Tokio worker threads. Default 0 = one per CPU core.
    #[serde(default)]
    pub worker_threads: usize,
    /// After SIGTERM/SIGINT, how long in-flight requests get to finish before Weir exits.
    /// Default `30s` (Kubernetes' default termination grace period).
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { worker_threads: 0, shutdown_grace: default_shutdown_grace() }
    }
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

/// `[listeners.NAME]`: one socket that accepts client traffic (HTTP/1.1 and h2c).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Socket address to bind, e.g. `0.0.0.0:8080`.
    pub addr: SocketAddr,
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
    /// Static endpoints of this version (standalone mode). At least one.
    pub endpoints: Vec<EndpointConfig>,
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
    /// `30s`. The response body then streams without a deadline. Exceeding it answers 504.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request: Duration,
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
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { addr: default_admin_addr(), history_limit: default_history_limit() }
    }
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self { connect: default_connect_timeout(), request: default_request_timeout(), idle: default_idle_timeout() }
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
