//! The admin API: JSON over HTTP on its own listener.
//!
//! Reads come from the stored snapshot; changes go to the control task and are answered only
//! after the new snapshot is stored. Every refusal is a 4xx with a JSON body saying what is
//! wrong, and changes nothing.

pub mod auth;
mod json;
mod request;
mod view;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::discovery::SyncState;
use crate::control::state::{Replica, Replicas};
use crate::control::{Change, ChangeRequest, ControlError, ControlHandle, RolloutCall};
use crate::data::listener::{self, CheckHeads, ClientBody, ConnMetrics, Connections, Limits};
use crate::data::proxy::ResponseBody;
use crate::data::snapshot::Routes;
use crate::metrics::Metrics;

pub use request::{ApiError, BODY_LIMIT, BODY_TIMEOUT};

/// A request head on the admin listener must arrive whole within this, or it is answered 408
/// and the connection closes. Shorter than a traffic listener's default (30 s): admin clients
/// are scripts and operators on a near network, and every held connection is a task.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the admin handlers need. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    snapshot: Routes,
    control: ControlHandle,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    sync: Arc<SyncState>,
    /// Cancelled by `POST /shutdown`: Weir drains and exits, as on SIGTERM.
    shutdown: tokio_util::sync::CancellationToken,
    /// Every replica's report of what it applied (`GET /cluster`, `?wait=all`).
    replicas: Option<Replicas>,
    /// Who may call what.
    auth: Arc<auth::Auth>,
}

impl Admin {
    /// An admin API over the given state. `ready` backs `GET /ready`.
    pub fn new(
        snapshot: Routes,
        control: ControlHandle,
        metrics: Metrics,
        ready: Arc<AtomicBool>,
        sync: Arc<SyncState>,
    ) -> Self {
        let auth = Arc::new(auth::Auth::open());
        Admin { snapshot, control, metrics, ready, sync, shutdown: Default::default(), replicas: None, auth }
    }

    /// Who may call what (default: everyone).
    pub fn with_auth(self, auth: auth::Auth) -> Self {
        Admin { auth: Arc::new(auth), ..self }
    }

    /// Where `GET /cluster` and `?wait=all` read every replica's report.
    pub fn with_replicas(self, replicas: Replicas) -> Self {
        Admin { replicas: Some(replicas), ..self }
    }

    /// `POST /shutdown` cancels `token` (the server drains and exits on it).
    pub fn with_shutdown(self, token: tokio_util::sync::CancellationToken) -> Self {
        Admin { shutdown: token, ..self }
    }

    /// Serves the admin API on `socket` until `cancel` fires (then in-flight calls get
    /// `grace`). Each HTTP/1 request head is read within [`HEADER_TIMEOUT`] and checked by the
    /// traffic listeners' rules before hyper reads it ([`CheckHeads`]), and bodies must arrive
    /// within [`BODY_TIMEOUT`]; every refusal, the HTTP layer's included, is answered in the
    /// JSON error shape.
    pub async fn serve(self, socket: TcpListener, cancel: CancellationToken, grace: Duration) {
        let limits = Limits { header_read: HEADER_TIMEOUT, body_read: BODY_TIMEOUT, ..Limits::default() };
        let conns = Connections { limits, metrics: ConnMetrics::unregistered(), tls: None };
        let heads = CheckHeads::new(refusal, &conns.metrics);
        let handler = move |req, client| self.clone().handle(req, client);
        listener::serve_with(socket, handler, Some(heads), conns, cancel, grace).await;
    }

    /// Serves one admin request.
    pub async fn handle(self, req: Request<ClientBody>, client: crate::data::listener::Peer) -> Response<ResponseBody> {
        let had_body = !http_body::Body::is_end_stream(req.body());
        match self.route(req, client.addr.ip().to_canonical()).await {
            Ok(resp) => resp,
            // A refused request's body may be unread, which leaves the connection unusable.
            Err(e) if had_body => e.closing().into_response(),
            Err(e) => e.into_response(),
        }
    }

    async fn route(
        &self,
        req: Request<ClientBody>,
        peer: std::net::IpAddr,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let method = req.method().clone();
        // Probes and scrapes stay open; every other call is checked before anything is read.
        // The dashboard page holds no data: it asks for it with the operator's token.
        let open = matches!(segments.as_slice(), ["live" | "ready" | "metrics" | "ui"]);
        let by = if open {
            String::new()
        } else {
            self.auth.check(req.headers(), peer, &target(&segments, &method)).await?
        };
        match (segments.as_slice(), &method) {
            (["live"], &Method::GET) => Ok(text(StatusCode::OK, "live\n", "text/plain; charset=utf-8")),
            (["ready"], &Method::GET) => Ok(if self.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n", "text/plain; charset=utf-8")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n", "text/plain; charset=utf-8")
            }),
            (["metrics"], &Method::GET) => {
                Ok(text(StatusCode::OK, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8"))
            }
            (["ui"], &Method::GET) => Ok(dashboard()),
            (["reload"], &Method::POST) => self.reload().await,
            (["shutdown"], &Method::POST) => {
                // As SIGTERM: /ready turns 503, the drain delay, then the grace period.
                tracing::info!("POST /shutdown: draining, then exiting");
                self.shutdown.cancel();
                Ok(json_response(StatusCode::ACCEPTED, &json!({ "shutting_down": true })))
            }
            (["cluster"], &Method::GET) => {
                let replicas = self.list_replicas().await?;
                Ok(json_response(StatusCode::OK, &json!({ "replicas": replicas })))
            }
            (["apps"], &Method::GET) => {
                let snap = self.snapshot.load();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "apps": snap.apps.iter().map(|a| view::app(a, &self.sync)).collect::<Vec<_>>() }),
                ))
            }
            (["apps", app], &Method::GET) => {
                let snap = self.snapshot.load();
                let a = snap.app(app).ok_or_else(|| ControlError::UnknownApp((*app).into()))?;
                Ok(with_etag(json_response(StatusCode::OK, &view::app(a, &self.sync)), a.revision))
            }
            (["apps", app, "history"], &Method::GET) => {
                let revisions = self.control.history(app).await?;
                Ok(json_response(StatusCode::OK, &json!({ "app": app, "revisions": revisions })))
            }
            (["apps", app, action @ ("split" | "promote" | "rollback")], m) if allowed(action) == m => {
                let app = (*app).to_owned();
                let action = (*action).to_owned();
                self.change(app, &action, req, by).await
            }
            (["apps", app, "rollouts"], &Method::POST) => {
                let body: request::RolloutBody = request::json_body(req, true).await?.expect("required body");
                let (plan, steps) = match body.plan {
                    None => (None, None),
                    Some(request::PlanBody::Named(n)) => (Some(n), None),
                    Some(request::PlanBody::Steps(s)) => (None, Some(s)),
                };
                let call = RolloutCall::Start { canary: body.canary, stable: body.stable, plan, steps };
                let r = self.control.rollout(app, call, by).await?;
                Ok(json_response(StatusCode::CREATED, &view::rollout(app, &r)))
            }
            (["apps", app, "rollout"], &Method::GET) => {
                let r = self.control.rollout(app, RolloutCall::Status, by).await?;
                Ok(json_response(StatusCode::OK, &view::rollout(app, &r)))
            }
            (["apps", app, "rollout", action @ ("pause" | "resume" | "abort" | "promote")], &Method::POST) => {
                let call = match *action {
                    "pause" => RolloutCall::Pause,
                    "resume" => RolloutCall::Resume,
                    "abort" => RolloutCall::Abort,
                    _ => RolloutCall::Promote,
                };
                let r = self.control.rollout(app, call, by).await?;
                Ok(json_response(StatusCode::OK, &view::rollout(app, &r)))
            }
            (["apps", _, "rollouts"] | ["apps", _, "rollout", "pause" | "resume" | "abort" | "promote"], _) => {
                Err(ApiError::method("POST"))
            }
            (["apps", _, "rollout"], _) => Err(ApiError::method("GET")),
            (["reload" | "shutdown"], _) => Err(ApiError::method("POST")),
            (["live" | "ready" | "metrics" | "ui" | "apps" | "cluster"] | ["apps", _] | ["apps", _, "history"], _) => {
                Err(ApiError::method("GET"))
            }
            (["apps", _, action @ ("split" | "promote" | "rollback")], _) => {
                Err(ApiError::method(allowed(action).as_str()))
            }
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no admin endpoint at {path:?}"))),
        }
    }

    async fn reload(&self) -> Result<Response<ResponseBody>, ApiError> {
        let done = self.control.reload().await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({ "reloaded": true, "revisions": done.revisions, "new_revisions": done.new_revisions }),
        ))
    }

    async fn change(
        &self,
        app: String,
        action: &str,
        req: Request<ClientBody>,
        by: String,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let if_match = request::if_match(req.headers())?;
        let wait = request::wait(req.uri().query())?;
        let (change, reason) = match action {
            "split" => {
                let body: request::SplitBody = request::json_body(req, true).await?.expect("required body");
                (Change::Split(body.weights), body.reason)
            }
            "promote" => {
                let body: request::PromoteBody = request::json_body(req, true).await?.expect("required body");
                (Change::Promote(body.version), body.reason)
            }
            _ => {
                let body: request::RollbackBody = request::json_body(req, false).await?.unwrap_or_default();
                (Change::Rollback(body.revision), body.reason)
            }
        };
        let outcome = self.control.change(ChangeRequest { app: app.clone(), change, reason, if_match, by }).await?;
        // The control task stored the snapshot before replying: this load sees the change.
        let snap = self.snapshot.load();
        let a = snap.app(&app).ok_or(ControlError::UnknownApp(app))?;
        let mut body = view::app(a, &self.sync);
        body["changed"] = json!(outcome.changed);
        let mut status = StatusCode::OK;
        if let Some(timeout) = wait {
            let waited = self.wait_all(outcome.sequence, timeout).await;
            if !waited["all_applied"].as_bool().unwrap_or(false) {
                // Stored and in force here; not confirmed everywhere within the timeout.
                status = StatusCode::ACCEPTED;
            }
            body["wait"] = waited;
        }
        Ok(with_etag(json_response(status, &body), outcome.revision))
    }

    async fn list_replicas(&self) -> Result<Vec<Replica>, ApiError> {
        let Some(replicas) = &self.replicas else { return Ok(Vec::new()) };
        replicas.list().await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "state_unavailable",
                format!("cannot read the replicas' reports: {e}"),
            )
        })
    }

    /// Waits until every live replica reports state `sequence` or later, or `timeout`; says
    /// which replicas had not (the laggards) when it gives up.
    async fn wait_all(&self, sequence: u64, timeout: Duration) -> serde_json::Value {
        let start = tokio::time::Instant::now();
        loop {
            let (replicas, error) = match self.list_replicas().await {
                Ok(r) => (r, None),
                Err(e) => (Vec::new(), Some(e.message().to_owned())),
            };
            let live: Vec<&Replica> = replicas.iter().filter(|r| r.live).collect();
            let laggards: Vec<&&Replica> = live.iter().filter(|r| r.sequence < sequence).collect();
            let done = error.is_none() && laggards.is_empty();
            if done || start.elapsed() >= timeout {
                return json!({
                    "all_applied": done,
                    "sequence": sequence,
                    "waited_ms": start.elapsed().as_millis() as u64,
                    "applied": live.iter().filter(|r| r.sequence >= sequence).map(|r| &r.name).collect::<Vec<_>>(),
                    "laggards": laggards,
                    "error": error,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The admin API's wording of a refusal by the HTTP layer (a head refused for its framing or
/// size, or not whole in time): the JSON error shape every other refusal has, with a code
/// for the status.
fn refusal(status: StatusCode, why: &str) -> (&'static str, Bytes) {
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "header_too_large",
        StatusCode::NOT_IMPLEMENTED => "not_implemented",
        _ => "bad_request",
    };
    ("application/json", json_text(&ApiError::new(status, code, why).body()).into())
}

/// A call as Weir's virtual Kubernetes resource, for authorization (one table: here).
fn target<'a>(segments: &[&'a str], method: &Method) -> auth::Target<'a> {
    use auth::Target;
    let write = *method != Method::GET;
    match segments {
        ["apps"] => Target { verb: "list", resource: "splits", name: None },
        ["apps", app, ..] => Target { verb: if write { "update" } else { "get" }, resource: "splits", name: Some(app) },
        ["reload"] => Target { verb: "update", resource: "configs", name: None },
        ["shutdown"] => Target { verb: "delete", resource: "instances", name: None },
        // `/cluster`, and anything else (answered 404/405 once let in).
        _ => Target { verb: if write { "update" } else { "get" }, resource: "clusters", name: None },
    }
}

fn allowed(action: &str) -> Method {
    if action == "split" { Method::PUT } else { Method::POST }
}

/// `GET /ui`: the live dashboard, one page that polls this API once a second. Names from the
/// API are set as text, never HTML; the policy allows only its own inline script and style and
/// requests to this origin.
fn dashboard() -> Response<ResponseBody> {
    let mut resp = text(StatusCode::OK, include_str!("admin/dashboard.html"), "text/html; charset=utf-8");
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    resp
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>, content_type: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    text(status, json_text(value), "application/json")
}

fn json_text(value: &serde_json::Value) -> String {
    let mut body = serde_json::to_string_pretty(value).expect("JSON values serialize");
    body.push('\n');
    body
}

fn with_etag(mut resp: Response<ResponseBody>, revision: u64) -> Response<ResponseBody> {
    let etag = header::HeaderValue::from_str(&format!("\"{revision}\"")).expect("digits are a valid header");
    resp.headers_mut().insert(header::ETAG, etag);
    resp
}
