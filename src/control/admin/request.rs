//! Parsing admin requests, and admin errors with their status codes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::data::listener::ClientBody;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::json;

use super::json::{self, Invalid};
use crate::control::{ControlError, ReloadError};
use crate::data::listener::ClientBodyError;
use crate::data::proxy::ResponseBody;

/// Largest admin request body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// An admin request body must arrive whole within this once its call starts reading it (and
/// no read may wait longer either): a client that declares more than it sends, or sends a
/// byte at a time, is answered 408 and the connection closes, rather than holding it (and a
/// task) open.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// `PUT /apps/{app}/split`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitBody {
    /// Weight per version.
    pub weights: BTreeMap<String, i64>,
    /// Why, kept in history (at most [`MAX_REASON`] bytes).
    #[serde(default, deserialize_with = "reason")]
    pub reason: String,
}

/// The longest `reason` kept: history is bounded by `admin.history_limit` revisions, and so,
/// with this, in bytes (the stored state must fit a ConfigMap).
pub const MAX_REASON: usize = 1024;

fn reason<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if text.len() > MAX_REASON {
        return Err(serde::de::Error::custom(format!(
            "a reason of {} bytes; at most {MAX_REASON} are kept",
            text.len()
        )));
    }
    Ok(text)
}

/// `POST /apps/{app}/rollouts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    /// The version to roll out.
    pub canary: String,
    /// The version to roll out from (default: the one with the most traffic).
    #[serde(default)]
    pub stable: Option<String>,
    /// A plan: its name (the app's plans or a preset), or its steps.
    #[serde(default)]
    pub plan: Option<PlanBody>,
}

/// A plan in a start call: a name or the steps themselves.
#[derive(Debug)]
pub enum PlanBody {
    /// One of the app's plans, or a preset.
    Named(String),
    /// The steps.
    Steps(Vec<crate::control::rollout::Step>),
}

/// A string or an array of steps, each step read strictly (a refusal names `plan[i]`), where
/// `#[serde(untagged)]` would only say that nothing matched.
impl<'de> Deserialize<'de> for PlanBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PlanVisitor;
        impl<'de> serde::de::Visitor<'de> for PlanVisitor {
            type Value = PlanBody;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a plan's name or an array of steps")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<PlanBody, E> {
                Ok(PlanBody::Named(name.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<PlanBody, A::Error> {
                let mut steps = Vec::new();
                while let Some(step) = seq.next_element()? {
                    steps.push(step);
                }
                Ok(PlanBody::Steps(steps))
            }
        }
        d.deserialize_any(PlanVisitor)
    }
}

/// `POST /apps/{app}/promote`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// The version to send all traffic to.
    pub version: String,
    /// Why, kept in history (at most [`MAX_REASON`] bytes).
    #[serde(default, deserialize_with = "reason")]
    pub reason: String,
}

/// `POST /apps/{app}/rollback` (body optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// Revision to return to; default the one before the current.
    #[serde(default)]
    pub revision: Option<u64>,
    /// Why, kept in history (at most [`MAX_REASON`] bytes).
    #[serde(default, deserialize_with = "reason")]
    pub reason: String,
}

/// A refused admin request: status, a stable code, a message, and per-field details.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<(String, String)>,
    allow: Option<&'static str>,
    /// Say `WWW-Authenticate: Bearer` (a 401).
    challenge: bool,
    /// The request body was left unread: the connection cannot carry another request, so
    /// say `Connection: close` or a client would reuse it and fail its next request.
    close: bool,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            allow: None,
            challenge: false,
            close: false,
        }
    }

    /// 401 with `WWW-Authenticate: Bearer realm="weir"`.
    pub fn unauthenticated(message: &str) -> Self {
        ApiError { challenge: true, ..Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message) }
    }

    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// 405 with the allowed method.
    pub fn method(allow: &str) -> Self {
        let allow = match allow {
            "PUT" => "PUT",
            "POST" => "POST",
            _ => "GET",
        };
        ApiError {
            allow: Some(allow),
            ..Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("use {allow}"))
        }
    }

    /// What it says.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Also closes the connection after answering.
    pub fn closing(self) -> Self {
        ApiError { close: true, ..self }
    }

    /// The documented error shape: `{"error":{"code":..,"message":..,"details":[{"field":..,
    /// "message":..}]}}`.
    pub fn body(&self) -> serde_json::Value {
        let details: Vec<_> =
            self.details.iter().map(|(field, message)| json!({ "field": field, "message": message })).collect();
        json!({ "error": { "code": self.code, "message": self.message, "details": details } })
    }

    /// The JSON response.
    pub fn into_response(self) -> Response<ResponseBody> {
        let mut resp = super::json_response(self.status, &self.body());
        if let Some(allow) = self.allow {
            resp.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        if self.challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"weir\""));
        }
        if self.close {
            resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Maps every control refusal to its status: the only place this happens.
impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let message = e.to_string();
        let (status, code) = match &e {
            ControlError::UnknownApp(_) => (StatusCode::NOT_FOUND, "unknown_app"),
            ControlError::InvalidWeights(_) => (StatusCode::BAD_REQUEST, "invalid_weights"),
            ControlError::UnknownVersion { .. } => (StatusCode::BAD_REQUEST, "unknown_version"),
            ControlError::Stale { .. } => (StatusCode::PRECONDITION_FAILED, "stale_revision"),
            ControlError::NoSuchRevision(_) => (StatusCode::NOT_FOUND, "unknown_revision"),
            ControlError::NothingToRollBack => (StatusCode::CONFLICT, "nothing_to_roll_back"),
            ControlError::RevisionObsolete { .. } => (StatusCode::CONFLICT, "revision_obsolete"),
            ControlError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "state_unavailable"),
            ControlError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ControlError::NoRollout(_) => (StatusCode::NOT_FOUND, "no_rollout"),
            ControlError::RolloutUnderWay { .. } => (StatusCode::CONFLICT, "rollout_under_way"),
            ControlError::Rollout(_) => (StatusCode::CONFLICT, "rollout_refused"),
        };
        let details = match e {
            ControlError::InvalidWeights(d) => d
                .into_iter()
                .map(|(v, m)| (if v.is_empty() { "weights".into() } else { format!("weights.{v}") }, m))
                .collect(),
            _ => Vec::new(),
        };
        ApiError { details, ..ApiError::new(status, code, message) }
    }
}

impl From<ReloadError> for ApiError {
    fn from(e: ReloadError) -> Self {
        match e {
            ReloadError::NoConfigFile => ApiError::new(StatusCode::CONFLICT, "no_config_file", e.to_string()),
            ReloadError::Store(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", e.to_string()),
            ReloadError::Invalid { message, problems } => {
                let details = problems
                    .into_iter()
                    .map(|p| {
                        let at = p.location.map(|(l, c)| format!("{l}:{c}: ")).unwrap_or_default();
                        (p.field, format!("{at}{}", p.message))
                    })
                    .collect();
                ApiError { details, ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_config", message) }
            }
        }
    }
}

/// Every refusal of a body that is not what the call takes (see [`json`]) is a 400 that
/// names the field, when there is one.
impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        let message = e.to_string();
        let (code, detail) = match e {
            Invalid::NotUtf8 | Invalid::NotAnObject(_) => ("invalid_json", None),
            Invalid::Duplicate { path } => ("duplicate_key", Some((path, "occurs more than once".to_owned()))),
            Invalid::Json { path, message } => ("invalid_json", (!path.is_empty()).then_some((path, message))),
        };
        ApiError { details: detail.into_iter().collect(), ..ApiError::new(StatusCode::BAD_REQUEST, code, message) }
    }
}

/// Longest `?wait=all` (and its default).
pub const WAIT_MAX: Duration = Duration::from_secs(60);
const WAIT_DEFAULT: Duration = Duration::from_secs(10);

/// Parses the query of a change: `wait=all` (answer once every live replica applied it) and
/// `timeout=5s` (how long to wait; default 10 s, at most 60 s). `None`: do not wait.
pub fn wait(query: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m);
    let (mut wait, mut timeout) = (false, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "wait" if v == "all" => wait = true,
            "wait" => return Err(bad(format!("wait must be \"all\", not {v:?}"))),
            "timeout" => {
                let d = humantime::parse_duration(v)
                    .map_err(|e| bad(format!("timeout must be a duration like 5s, not {v:?}: {e}")))?;
                if d.is_zero() || d > WAIT_MAX {
                    return Err(bad(format!("timeout must be above 0 and at most {}s", WAIT_MAX.as_secs())));
                }
                timeout = Some(d);
            }
            _ => return Err(bad(format!("unknown query parameter {k:?}; this call takes wait=all and timeout"))),
        }
    }
    if timeout.is_some() && !wait {
        return Err(bad("timeout only applies with wait=all".into()));
    }
    Ok(wait.then(|| timeout.unwrap_or(WAIT_DEFAULT)))
}

/// Parses `If-Match: 3`, `"3"` or `*` (any revision).
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    s.trim_matches('"').parse().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_if_match",
            format!("If-Match must be a revision number like \"3\", not {s:?}"),
        )
    })
}

/// Reads a JSON body of at most [`BODY_LIMIT`] bytes. An empty body is `None` unless
/// `required`; a non-empty one must be `application/json`.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    req: Request<ClientBody>,
    required: bool,
) -> Result<Option<T>, ApiError> {
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("body is over {BODY_LIMIT} bytes"));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT) {
        return Err(too_large());
    }
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let timed_out = || {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive whole within {}s", BODY_TIMEOUT.as_secs()),
        )
    };
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), BODY_LIMIT).collect());
    let bytes = read
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else if matches!(ClientBodyError::in_chain(e.as_ref()), Some(ClientBodyError::Timeout)) {
                timed_out()
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("reading the body failed: {e}"))
            }
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return if required {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "missing_body", "this call needs a JSON body"))
        } else {
            Ok(None)
        };
    }
    let is_json = content_type
        .as_deref()
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be application/json, not {:?}", content_type.unwrap_or_default()),
        ));
    }
    Ok(Some(json::from_slice(&bytes)?))
}
