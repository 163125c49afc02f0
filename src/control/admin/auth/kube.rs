//! In-cluster admin authentication the way kube-rbac-proxy does it: a `TokenReview` says who
//! the bearer token belongs to, a `SubjectAccessReview` whether that user may do the call to
//! Weir's virtual resource `splits.weir.dev` (name = the app) in Weir's namespace. So
//! `kubectl` users and CI service accounts are granted it with ordinary RBAC, e.g. a Role with
//! `apiGroups: ["weir.dev"], resources: ["splits"], resourceNames: ["my-app"], verbs: ["get",
//! "update"]`. Answers are cached for [`CACHE_FOR`] (positive and negative), keyed by a
//! SHA-256 of the token and the attributes, never the token itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use super::super::request::ApiError;
use super::Target;

/// How long a review's answer is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 4096;
/// The API group of Weir's virtual resources.
pub const GROUP: &str = "weir.dev";

/// A review's answer: the user, or the status and message of the refusal.
type Answer = Result<String, (u16, String)>;

/// Asks the API server who calls and what they may do.
#[derive(Debug)]
pub struct Reviewer {
    tokens: Api<TokenReview>,
    access: Api<SubjectAccessReview>,
    namespace: String,
    timeout: Duration,
    cache: Mutex<HashMap<[u8; 32], (Instant, Answer)>>,
}

impl Reviewer {
    /// Reviews for calls to the Weir in `namespace`.
    pub fn new(client: Client, namespace: String, timeout: Duration) -> Self {
        Reviewer {
            tokens: Api::all(client.clone()),
            access: Api::all(client),
            namespace,
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The user the token belongs to, if they may do `target`.
    pub async fn check(&self, token: &[u8], target: &Target<'_>) -> Result<String, ApiError> {
        let mut key = Sha256::new();
        key.update(token);
        key.update([0]);
        key.update(format!("{}\0{}\0{}", target.verb, target.resource, target.name.unwrap_or("")));
        let key: [u8; 32] = key.finalize().into();
        if let Some((at, answer)) = self.cache.lock().expect("not poisoned").get(&key).cloned()
            && at.elapsed() < CACHE_FOR
        {
            return answer.map_err(refusal);
        }
        let answer = match tokio::time::timeout(self.timeout, self.review(token, target)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => return Err(unavailable(format!("no answer within {:?}", self.timeout))),
        };
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), answer.clone()));
        answer.map_err(refusal)
    }

    async fn review(&self, token: &[u8], target: &Target<'_>) -> kube::Result<Answer> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(String::from_utf8_lossy(token).into_owned()), audiences: None },
            ..Default::default()
        };
        let reviewed = self.tokens.create(&PostParams::default(), &review).await?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Ok(Err((401, "the bearer token is not valid for this cluster".into())));
        };
        let username = user.username.clone().unwrap_or_default();
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some(target.resource.into()),
                    name: target.name.map(str::to_owned),
                    namespace: Some(self.namespace.clone()),
                    verb: Some(target.verb.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = self.access.create(&PostParams::default(), &access).await?;
        let allowed = reviewed.status.is_some_and(|s| s.allowed);
        Ok(if allowed {
            Ok(username)
        } else {
            let what = match target.name {
                Some(n) => format!("{} {}.{GROUP} {n:?}", target.verb, target.resource),
                None => format!("{} {}.{GROUP}", target.verb, target.resource),
            };
            Err((403, format!("user {username:?} may not {what} in namespace {}", self.namespace)))
        })
    }
}

fn refusal((status, message): (u16, String)) -> ApiError {
    if status == 401 {
        ApiError::unauthenticated(&message)
    } else {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

fn unavailable(why: String) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "auth_unavailable",
        format!("cannot check the caller with the Kubernetes API: {why}"),
    )
}
