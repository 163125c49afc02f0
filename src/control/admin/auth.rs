//! Who may call the admin API.
//!
//! - With `admin.tokens_file`: every call but `/live`, `/ready` and `/metrics` needs
//!   `Authorization: Bearer <secret>` of a named token, `read` (GET calls) or `change` (also the
//!   calls that change the split, reload or shut down). The token's name is recorded in every
//!   revision it makes (`by`). Secrets are compared in constant time: both sides are hashed to
//!   32 bytes with SHA-256 and every token is compared every time, so timing reveals neither
//!   which token matched nor a secret's length. The file is re-read when it changes (a
//!   Kubernetes Secret volume rotating, an edit); a file that no longer reads keeps the tokens
//!   in force and says why in the log.
//! - Without it: only loopback clients (127.0.0.0/8, ::1) may call, unless the config says
//!   `admin.allow_unauthenticated = true` (and Weir refuses to start with a non-loopback
//!   `admin.addr` without one or the other: see config validation).
//! - `POST /shutdown` from loopback is always allowed: the pod's own preStop hook
//!   (`weir shutdown`) calls it, and whoever can reach loopback in the pod can signal Weir
//!   anyway.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::request::ApiError;

#[cfg(feature = "kubernetes")]
pub mod kube;

/// What a call does, as Weir's virtual Kubernetes resource (for in-cluster authorization):
/// `splits.weir.dev` named after the app, `clusters`, `configs`, `instances`.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Kubernetes verb: get, list, update, delete.
    pub verb: &'static str,
    /// Resource in the `weir.dev` group.
    pub resource: &'static str,
    /// Resource name (the app), if the call is about one.
    pub name: Option<&'a str>,
}

impl Target<'_> {
    /// The access level of the target, for tokens.
    pub fn access(&self) -> Access {
        if matches!(self.verb, "get" | "list") { Access::Read } else { Access::Change }
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Reading state (GET).
    Read,
    /// Changing it: split, promote, rollback, reload, shutdown.
    Change,
}

/// A shortest secret accepted (a guessable token is no authentication).
pub const MIN_SECRET: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tokens: BTreeMap<String, TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    secret: String,
    access: Access,
}

#[derive(Debug, Clone)]
struct Token {
    name: String,
    digest: [u8; 32],
    access: Access,
}

/// The tokens of one reading of the file.
#[derive(Debug, Clone)]
pub struct Tokens(Vec<Token>);

impl Tokens {
    /// Reads and checks a tokens file; the error names the file and the problem.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let at = |m: String| format!("admin.tokens_file {}: {m}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        let file: File = toml::from_str(&text).map_err(|e| at(e.message().to_owned()))?;
        if file.tokens.is_empty() {
            return Err(at("no [tokens.NAME] defined".into()));
        }
        let mut tokens = Vec::new();
        for (name, t) in file.tokens {
            crate::config::validate_name(&name).map_err(|m| at(format!("token name {name:?}: {m}")))?;
            if t.secret.len() < MIN_SECRET {
                return Err(at(format!("tokens.{name}.secret: must be at least {MIN_SECRET} characters")));
            }
            let digest: [u8; 32] = Sha256::digest(t.secret.as_bytes()).into();
            if let Some(other) = tokens.iter().find(|o: &&Token| o.digest == digest) {
                return Err(at(format!("tokens.{name}.secret: the same secret as tokens.{}", other.name)));
            }
            tokens.push(Token { name, digest, access: t.access });
        }
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "admin tokens file is readable by group or others; chmod 600 it");
            }
        }
        Ok(Tokens(tokens))
    }

    /// The token whose secret is `presented`, checked against every token in constant time.
    fn find(&self, presented: &[u8]) -> Option<&Token> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.digest.ct_eq(&digest)) {
                found = Some(t);
            }
        }
        found
    }
}

/// How often the tokens file is checked for changes, at most.
const RECHECK: Duration = Duration::from_secs(1);

/// The admin API's gate.
#[derive(Debug)]
pub struct Auth {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    /// No tokens: loopback only, unless open.
    Local { open: bool },
    /// Bearer tokens from a file.
    Tokens { path: PathBuf, state: Mutex<Loaded> },
    /// TokenReview + SubjectAccessReview.
    #[cfg(feature = "kubernetes")]
    Kube(Box<kube::Reviewer>),
}

#[derive(Debug)]
struct Loaded {
    tokens: Tokens,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Auth {
    /// From `[admin]`: reads the tokens file if there is one (an error names it).
    pub fn new(admin: &crate::config::AdminConfig) -> Result<Auth, String> {
        let mode = match &admin.tokens_file {
            None => Mode::Local { open: admin.allow_unauthenticated },
            Some(path) => {
                let tokens = Tokens::load(path)?;
                let loaded = Loaded { tokens, stamp: stamp(path), checked: Instant::now() };
                Mode::Tokens { path: path.clone(), state: Mutex::new(loaded) }
            }
        };
        Ok(Auth { mode })
    }

    /// In-cluster: callers checked with the Kubernetes API.
    #[cfg(feature = "kubernetes")]
    pub fn kubernetes(reviewer: kube::Reviewer) -> Auth {
        Auth { mode: Mode::Kube(Box::new(reviewer)) }
    }

    /// A gate that lets everyone in (tests and embedding).
    pub fn open() -> Auth {
        Auth { mode: Mode::Local { open: true } }
    }

    /// Who is calling, if they may do what `need` says: the token's name or Kubernetes user
    /// (without tokens: `anonymous@<address>`), or the 401/403 to answer.
    pub async fn check(&self, headers: &HeaderMap, peer: IpAddr, target: &Target<'_>) -> Result<String, ApiError> {
        let (need, shutdown) = (target.access(), target.resource == "instances");
        match &self.mode {
            Mode::Local { open } => {
                if *open || peer.is_loopback() {
                    Ok(format!("anonymous@{peer}"))
                } else {
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "without admin.tokens_file, the admin API answers only loopback clients",
                    ))
                }
            }
            Mode::Tokens { path, state } => {
                if shutdown && peer.is_loopback() {
                    return Ok(String::new());
                }
                let Some(presented) = bearer(headers) else {
                    return Err(ApiError::unauthenticated("this call needs Authorization: Bearer <token>"));
                };
                let mut loaded = state.lock().expect("not poisoned");
                refresh(path, &mut loaded);
                let Some(token) = loaded.tokens.find(presented) else {
                    return Err(ApiError::unauthenticated("the bearer token is not valid"));
                };
                if token.access < need {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!("token {:?} may read but not change", token.name),
                    ));
                }
                Ok(token.name.clone())
            }
            #[cfg(feature = "kubernetes")]
            Mode::Kube(reviewer) => {
                if shutdown && peer.is_loopback() {
                    return Ok(String::new());
                }
                let Some(presented) = bearer(headers) else {
                    return Err(ApiError::unauthenticated("this call needs Authorization: Bearer <token>"));
                };
                reviewer.check(presented, target).await
            }
        }
    }
}

/// Re-reads the tokens file if it changed (checked at most once per [`RECHECK`]).
fn refresh(path: &Path, loaded: &mut Loaded) {
    if loaded.checked.elapsed() < RECHECK {
        return;
    }
    loaded.checked = Instant::now();
    let now = stamp(path);
    if now == loaded.stamp {
        return;
    }
    loaded.stamp = now;
    match Tokens::load(path) {
        Ok(tokens) => {
            tracing::info!(file = %path.display(), tokens = tokens.0.len(), "admin tokens file re-read");
            loaded.tokens = tokens;
        }
        Err(e) => tracing::error!("{e}; the tokens read before stay in force"),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| rest.trim_ascii()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("tokens.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        for (text, why) in [
            ("[tokens.ci]\nsecret = \"short\"\naccess = \"change\"\n", "at least 16"),
            ("[tokens.ci]\nsecret = \"0123456789abcdefXYZ\"\naccess = \"admin\"\n", "unknown variant"),
            (
                "[tokens.a]\nsecret = \"0123456789abcdefXYZ\"\naccess = \"read\"\n[tokens.b]\nsecret = \"0123456789abcdefXYZ\"\naccess = \"read\"\n",
                "same secret",
            ),
            ("tokens = {}\n", "no [tokens.NAME]"),
            ("[tokens.ci]\nsecret = \"0123456789abcdefXYZ\"\naccess = \"read\"\nextra = 1\n", "unknown field"),
        ] {
            let e = Tokens::load(&write(dir.path(), text)).unwrap_err();
            assert!(e.contains(why) && e.contains("tokens.toml"), "{e}");
        }
        assert!(Tokens::load(&dir.path().join("missing")).unwrap_err().contains("missing"));
    }

    const GET: Target = Target { verb: "get", resource: "splits", name: Some("web") };
    const UPDATE: Target = Target { verb: "update", resource: "splits", name: Some("web") };
    const SHUTDOWN: Target = Target { verb: "delete", resource: "instances", name: None };

    #[tokio::test]
    async fn tokens_by_access_and_loopback_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "[tokens.ci]\nsecret = \"change-me-0123456789\"\naccess = \"change\"\n\
             [tokens.viewer]\nsecret = \"read-only-0123456789\"\naccess = \"read\"\n",
        );
        let admin = crate::config::AdminConfig { tokens_file: Some(path), ..Default::default() };
        let auth = Auth::new(&admin).unwrap();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let with = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, t.parse().unwrap());
            h
        };
        assert_eq!(auth.check(&with("Bearer change-me-0123456789"), ip, &UPDATE).await.unwrap(), "ci");
        assert_eq!(auth.check(&with("bearer  read-only-0123456789 "), ip, &GET).await.unwrap(), "viewer");
        assert_eq!(auth.check(&with("Bearer read-only-0123456789"), ip, &UPDATE).await.unwrap_err().status(), 403);
        assert_eq!(auth.check(&with("Bearer nope"), ip, &GET).await.unwrap_err().status(), 401);
        assert_eq!(auth.check(&HeaderMap::new(), ip, &GET).await.unwrap_err().status(), 401);
        assert!(auth.check(&HeaderMap::new(), "127.0.0.1".parse().unwrap(), &SHUTDOWN).await.is_ok());

        let local = Auth::new(&crate::config::AdminConfig::default()).unwrap();
        assert!(local.check(&HeaderMap::new(), "::1".parse().unwrap(), &UPDATE).await.is_ok());
        assert_eq!(local.check(&HeaderMap::new(), ip, &GET).await.unwrap_err().status(), 403);
    }
}
