//! `weir ctl`: the admin API from a terminal or a CI job — what `kubectl rollout` is to
//! Deployments. Every command is one admin call (a rollout watch polls one); the answer is
//! printed for people, or as the API's JSON with `-o json`.
//!
//! Exit status: 0 done; 1 refused by Weir (its JSON error printed) or Weir unreachable; 3 a
//! `--wait` that timed out before every replica applied the change (stored and in force
//! where it was made); 4 a watched rollout that ended rolled back or aborted.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// Where and how to reach the admin API.
#[derive(Debug, Args)]
pub struct Target {
    /// The admin API, e.g. `http://127.0.0.1:9901` (a `kubectl port-forward` in a cluster).
    #[arg(long, global = true, env = "WEIR_ADMIN", default_value = "http://127.0.0.1:9901")]
    pub admin: String,
    /// Bearer token for the admin API (an `[admin] tokens_file` token, or `kubectl create
    /// token …` in a cluster). Prefer the environment variable: arguments show in `ps`.
    #[arg(long, global = true, env = "WEIR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output: `text` for people, `json` for scripts (the API's answer as it is).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Give up on a call after this long.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// The admin API's JSON.
    Json,
}

/// `--wait`: confirmation from every replica.
#[derive(Debug, Args)]
pub struct Wait {
    /// Answer only once every live replica routes by the change (`?wait=all`); exit 3 if
    /// some had not within `--wait-timeout`.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub wait_timeout: Duration,
}

/// `weir ctl …`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every app: revision and weights.
    Apps,
    /// One app: its split and every endpoint's health.
    Status {
        /// The app.
        app: String,
    },
    /// Set the split, e.g. `weir ctl split web v1=90 v2=10`.
    Split {
        /// The app.
        app: String,
        /// `VERSION=WEIGHT`, one per version (weights are proportional).
        #[arg(required = true, value_parser = weight)]
        weights: Vec<(String, u64)>,
        /// Why, kept in the history.
        #[arg(long)]
        reason: Option<String>,
        /// Apply only if the app is still at this revision (else 412).
        #[arg(long)]
        if_match: Option<u64>,
        /// `--wait`, `--wait-timeout`.
        #[command(flatten)]
        wait: Wait,
    },
    /// Send all traffic to one version (a blue/green flip).
    Promote {
        /// The app.
        app: String,
        /// The version.
        version: String,
        /// Why, kept in the history.
        #[arg(long)]
        reason: Option<String>,
        /// `--wait`, `--wait-timeout`.
        #[command(flatten)]
        wait: Wait,
    },
    /// Go back to the previous revision's split, or to `--to N`'s.
    Rollback {
        /// The app.
        app: String,
        /// The revision whose split to restore.
        #[arg(long)]
        to: Option<u64>,
        /// Why, kept in the history.
        #[arg(long)]
        reason: Option<String>,
        /// `--wait`, `--wait-timeout`.
        #[command(flatten)]
        wait: Wait,
    },
    /// Every kept revision: weights, cause, who and why.
    History {
        /// The app.
        app: String,
    },
    /// Progressive rollouts run by Weir.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// The replicas sharing the state, and what each applied.
    Cluster,
    /// Re-read the config file (as SIGHUP does).
    Reload,
}

/// `weir ctl rollout …`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start one: `weir ctl rollout start web --canary v2 [--plan canary]`.
    Start {
        /// The app.
        app: String,
        /// The version to roll out.
        #[arg(long)]
        canary: String,
        /// The version to roll out from (default: the one with the most traffic).
        #[arg(long)]
        stable: Option<String>,
        /// A plan's name (the app's `rollout.plans`, or `canary`, `ramped`, `blue_green`), or
        /// its steps as JSON: `'[{"set_weight":20},{"analyze":"5m"},{"set_weight":100}]'`.
        #[arg(long)]
        plan: Option<String>,
        /// Then follow it as `status --watch` does.
        #[arg(long)]
        watch: bool,
    },
    /// Where it is: step, weights, the analysis so far.
    Status {
        /// The app.
        app: String,
        /// Print every change until it ends; exit 4 if it was rolled back or aborted.
        #[arg(long, short)]
        watch: bool,
    },
    /// Hold it at its step.
    Pause {
        /// The app.
        app: String,
    },
    /// Go on from a pause.
    Resume {
        /// The app.
        app: String,
    },
    /// Stop it and send all traffic back to stable.
    Abort {
        /// The app.
        app: String,
    },
    /// Skip the remaining steps: all traffic to the canary.
    Promote {
        /// The app.
        app: String,
    },
}

fn weight(s: &str) -> Result<(String, u64), String> {
    let (version, weight) = s.split_once('=').ok_or_else(|| format!("{s:?} is not VERSION=WEIGHT"))?;
    let weight = weight.trim().parse().map_err(|_| format!("{s:?}: the weight must be a whole number"))?;
    if version.trim().is_empty() {
        return Err(format!("{s:?}: no version"));
    }
    Ok((version.trim().to_owned(), weight))
}

/// Runs one `weir ctl` command.
pub async fn run(target: Target, command: Command) -> Result<ExitCode> {
    let api = Api::new(&target)?;
    let text = target.output == Output::Text;
    let change = |path: String, body: Value, wait: &Wait, if_match: Option<u64>| {
        let query =
            if wait.wait { format!("?wait=all&timeout={}ms", wait.wait_timeout.as_millis()) } else { String::new() };
        let method = if path.ends_with("/split") { Method::PUT } else { Method::POST };
        (method, format!("{path}{query}"), Some(body), if_match)
    };
    let app_path = |app: &str| format!("/apps/{}", encode(app));
    let (method, path, body, if_match) = match &command {
        Command::Apps => (Method::GET, "/apps".to_owned(), None, None),
        Command::Status { app } => (Method::GET, app_path(app), None, None),
        Command::History { app } => (Method::GET, format!("{}/history", app_path(app)), None, None),
        Command::Cluster => (Method::GET, "/cluster".to_owned(), None, None),
        Command::Reload => (Method::POST, "/reload".to_owned(), None, None),
        Command::Split { app, weights, reason, if_match, wait } => {
            let weights: serde_json::Map<String, Value> = weights.iter().map(|(v, w)| (v.clone(), json!(w))).collect();
            let mut body = json!({ "weights": weights });
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            change(format!("{}/split", app_path(app)), body, wait, *if_match)
        }
        Command::Promote { app, version, reason, wait } => {
            let mut body = json!({ "version": version });
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            change(format!("{}/promote", app_path(app)), body, wait, None)
        }
        Command::Rollback { app, to, reason, wait } => {
            let mut body = json!({});
            if let Some(n) = to {
                body["revision"] = json!(n);
            }
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            change(format!("{}/rollback", app_path(app)), body, wait, None)
        }
        Command::Rollout(r) => match r {
            RolloutCommand::Start { app, canary, stable, plan, .. } => {
                let mut body = json!({ "canary": canary });
                if let Some(s) = stable {
                    body["stable"] = json!(s);
                }
                if let Some(p) = plan {
                    body["plan"] = if p.trim_start().starts_with('[') {
                        serde_json::from_str(p).context("--plan: steps must be a JSON array")?
                    } else {
                        json!(p)
                    };
                }
                (Method::POST, format!("{}/rollouts", app_path(app)), Some(body), None)
            }
            RolloutCommand::Status { app, .. } => (Method::GET, format!("{}/rollout", app_path(app)), None, None),
            RolloutCommand::Pause { app } => rollout_action(app, "pause"),
            RolloutCommand::Resume { app } => rollout_action(app, "resume"),
            RolloutCommand::Abort { app } => rollout_action(app, "abort"),
            RolloutCommand::Promote { app } => rollout_action(app, "promote"),
        },
    };
    let (status, answer) = api.call(method, &path, body, if_match).await?;
    if !status.is_success() {
        if text {
            eprintln!("{}", refusal(status, &answer));
        } else {
            println!("{answer}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let watch = match &command {
        Command::Rollout(
            RolloutCommand::Start { app, watch: true, .. } | RolloutCommand::Status { app, watch: true },
        ) => Some(app.clone()),
        _ => None,
    };
    if let Some(app) = watch {
        return watch_rollout(&api, &app, answer, text).await;
    }
    if !text {
        println!("{answer}");
    } else {
        print!("{}", render(&command, &answer));
    }
    // 202: stored and in force where it was made, not confirmed by every replica in time.
    if status == StatusCode::ACCEPTED && answer.get("wait").is_some() {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

fn rollout_action(app: &str, action: &str) -> (Method, String, Option<Value>, Option<u64>) {
    (Method::POST, format!("/apps/{}/rollout/{action}", encode(app)), None, None)
}

/// An app name as one path segment.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Follows a rollout, a line per change, until it ends.
async fn watch_rollout(api: &Api, app: &str, mut last: Value, text: bool) -> Result<ExitCode> {
    let path = format!("/apps/{}/rollout", encode(app));
    let mut shown = String::new();
    loop {
        let line = if text { rollout_line(&last) } else { last.to_string() };
        // Time in step changes every poll; print when anything else did.
        let key = rollout_line(&last);
        if key != shown {
            println!("{line}");
            shown = key;
        }
        match last["phase"].as_str() {
            Some("succeeded") => return Ok(ExitCode::SUCCESS),
            Some("rolled_back" | "aborted") => return Ok(ExitCode::from(4)),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, answer) = api.call(Method::GET, &path, None, None).await?;
        if !status.is_success() {
            bail!("{}", refusal(status, &answer));
        }
        last = answer;
    }
}

/// The admin API over HTTP/1.1.
struct Api {
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
    timeout: Duration,
}

impl Api {
    fn new(target: &Target) -> Result<Api> {
        let base = target.admin.trim_end_matches('/');
        let base = if base.contains("://") { base.to_owned() } else { format!("http://{base}") };
        let uri: http::Uri = base.parse().with_context(|| format!("--admin {base:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--admin {base:?}: the admin API speaks plain HTTP (http://host:port)");
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            bail!("--admin {base:?}: give the address only (http://host:port), no path");
        }
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
        let token = target.token.clone().filter(|t| !t.trim().is_empty());
        Ok(Api { client, base, token, timeout: target.timeout })
    }

    /// One call; the status and the JSON answer (a non-JSON answer is an error).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> Result<(StatusCode, Value)> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method.clone()).uri(&url);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        if let Some(rev) = if_match {
            req = req.header(header::IF_MATCH, format!("\"{rev}\""));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(b.to_string()))
            }
            None => Full::default(),
        };
        let req = req.body(body).with_context(|| format!("{method} {url}"))?;
        let exchange = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .with_context(|| format!("{method} {url}: no answer within {:?}", self.timeout))?
            .with_context(|| format!("{method} {url}: is Weir's admin API there (--admin, WEIR_ADMIN)?"))?;
        let answer = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{method} {url} answered {status} with something other than JSON: {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok((status, answer))
    }
}

/// A refusal as one line and its details: `error: 409 rollout_under_way: …`.
fn refusal(status: StatusCode, answer: &Value) -> String {
    let e = &answer["error"];
    let mut out = format!(
        "error: {} {}: {}",
        status.as_u16(),
        e["code"].as_str().unwrap_or("?"),
        e["message"].as_str().unwrap_or("(no message)")
    );
    for d in e["details"].as_array().into_iter().flatten() {
        let _ = write!(out, "\n  {}: {}", d["field"].as_str().unwrap_or(""), d["message"].as_str().unwrap_or(""));
    }
    out
}

/// What a successful call's answer means, for people.
fn render(command: &Command, a: &Value) -> String {
    match command {
        Command::Apps => a["apps"].as_array().into_iter().flatten().map(app_line).collect(),
        Command::Status { .. } => status(a),
        Command::History { .. } => history(a),
        Command::Cluster => cluster(a),
        Command::Reload => format!("reloaded; new revisions: {}\n", a["new_revisions"]),
        Command::Rollout(RolloutCommand::Status { .. }) => rollout(a),
        Command::Rollout(_) => format!("{}\n", rollout_line(a)),
        Command::Split { .. } | Command::Promote { .. } | Command::Rollback { .. } => {
            let mut out = String::new();
            let changed = if a["changed"] == true { "" } else { " (unchanged)" };
            let _ = writeln!(
                out,
                "{}: revision {}{changed}: {}",
                str_of(&a["name"]),
                a["revision"],
                weights(&a["weights"])
            );
            if let Some(w) = a.get("wait") {
                if w["all_applied"] == true {
                    let _ =
                        writeln!(out, "applied by every replica ({}) in {} ms", list(&w["applied"]), w["waited_ms"]);
                } else {
                    let laggards: Vec<&str> =
                        w["laggards"].as_array().into_iter().flatten().filter_map(|l| l["name"].as_str()).collect();
                    let _ = writeln!(
                        out,
                        "not yet applied by {} after {} ms (stored, and in force where it was made){}",
                        if laggards.is_empty() { "every replica".to_owned() } else { laggards.join(", ") },
                        w["waited_ms"],
                        w["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default()
                    );
                }
            }
            out
        }
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn list(v: &Value) -> String {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
}

/// `v1 90 · v2 10`.
fn weights(w: &Value) -> String {
    let total: u64 = w.as_object().into_iter().flatten().filter_map(|(_, v)| v.as_u64()).sum();
    w.as_object()
        .into_iter()
        .flatten()
        .map(|(v, n)| {
            let n = n.as_u64().unwrap_or(0);
            let share = if total > 0 { n as f64 * 100.0 / total as f64 } else { 0.0 };
            format!("{v} {n} ({share:.1}%)")
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

fn app_line(a: &Value) -> String {
    format!("{:<20} revision {:<5} {}\n", str_of(&a["name"]), a["revision"].to_string(), weights(&a["weights"]))
}

fn status(a: &Value) -> String {
    let mut out = app_line(a);
    for v in a["versions"].as_array().into_iter().flatten() {
        let eps = v["endpoints"].as_array().map_or(0, Vec::len);
        let down = if v["available"] == false { "  NO HEALTHY ENDPOINT: its share goes elsewhere" } else { "" };
        let _ = writeln!(
            out,
            "  {:<12} weight {:<5} {}/{} healthy{down}",
            str_of(&v["name"]),
            v["weight"].to_string(),
            v["healthy_endpoints"],
            eps
        );
        for e in v["endpoints"].as_array().into_iter().flatten() {
            let state = if e["ejected"] == true {
                "ejected"
            } else if e["healthy"] == true {
                "healthy"
            } else if e["ready"] == false {
                "not ready"
            } else {
                "down"
            };
            let why = e["last_change"]["why"].as_str().map(|w| format!("  ({w})")).unwrap_or_default();
            let _ = writeln!(
                out,
                "    {:<24} {:<22} {:<9} in flight {}{why}",
                str_of(&e["name"]),
                str_of(&e["addr"]),
                state,
                e["in_flight"]
            );
        }
    }
    out
}

fn history(a: &Value) -> String {
    let mut out = String::from(
        "REVISION  WEIGHTS                                  CAUSE             BY                  AT / REASON\n",
    );
    for r in a["revisions"].as_array().into_iter().flatten() {
        let reason = str_of(&r["reason"]);
        let _ = writeln!(
            out,
            "{:<9} {:<40} {:<17} {:<19} {}{}",
            r["number"].to_string(),
            weights(&r["weights"]),
            cause(&r["cause"]),
            if str_of(&r["by"]).is_empty() { "-" } else { str_of(&r["by"]) },
            str_of(&r["at"]),
            if reason.is_empty() { String::new() } else { format!("  {reason}") }
        );
    }
    out
}

/// `promote v2`, `rollback to 3`, `rollout v2`, `split`.
fn cause(c: &Value) -> String {
    let kind = str_of(&c["kind"]);
    match kind {
        "promote" => format!("promote {}", str_of(&c["version"])),
        "rollback" => format!("rollback to {}", c["to"]),
        "rollout" => format!("rollout {}", str_of(&c["canary"])),
        _ => kind.to_owned(),
    }
}

/// A JSON value as text: strings without their quotes.
fn plain(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn cluster(a: &Value) -> String {
    let replicas = a["replicas"].as_array().cloned().unwrap_or_default();
    if replicas.is_empty() {
        return "no replicas report here (no [state.kubernetes] store: this Weir stands alone)\n".into();
    }
    let mut out = String::from("REPLICA                         LIVE   SEQUENCE  REVISIONS              LAST REPORT\n");
    for r in replicas {
        let revisions: Vec<String> =
            r["revisions"].as_object().into_iter().flatten().map(|(app, n)| format!("{app}={n}")).collect();
        let _ = writeln!(
            out,
            "{:<31} {:<6} {:<9} {:<22} {}{}",
            str_of(&r["name"]),
            if r["live"] == true { "yes" } else { "no" },
            r["sequence"].to_string(),
            revisions.join(","),
            str_of(&r["last_report"]),
            if r["this"] == true { "  (answered this call)" } else { "" }
        );
    }
    out
}

/// One line: phase, step, weight, the last analysis.
fn rollout_line(r: &Value) -> String {
    let mut out = format!(
        "{} → {}: {} at step {}/{}",
        str_of(&r["stable"]),
        str_of(&r["canary"]),
        str_of(&r["phase"]),
        r["step"],
        r["step_count"]
    );
    if let Some(step) = r["current_step"].as_str()
        && !matches!(r["phase"].as_str(), Some("succeeded" | "rolled_back" | "aborted"))
    {
        let _ = write!(out, " ({step})");
    }
    if let Some(m) = r["message"].as_str().filter(|m| !m.is_empty()) {
        let _ = write!(out, " — {m}");
    }
    out
}

fn rollout(r: &Value) -> String {
    let mut out = format!("{}\n", rollout_line(r));
    let steps: Vec<String> = r["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            s.as_object().and_then(|o| o.iter().next()).map_or(s.to_string(), |(k, v)| format!("{k} {}", plain(v)))
        })
        .collect();
    let _ = writeln!(out, "  plan:     {}", steps.join(" → "));
    let _ = writeln!(
        out,
        "  analyses: {} failed of {} allowed; looks {} of {} planned",
        r["failed_analyses"], r["failure_limit"], r["looks"]["done"], r["looks"]["planned"]
    );
    let a = &r["analysis"];
    if let Some(result) = a["result"].as_str() {
        let _ = write!(out, "  last look: {result}");
        if let Some(why) = a["why"].as_str() {
            let _ = write!(out, ": {why}");
        }
        let e = &a["evidence"];
        for side in ["stable", "canary"] {
            let f = &e[side];
            if f.is_object() {
                let latency = f["latency_ms"].as_f64().map(|l| format!(", {l:.1} ms")).unwrap_or_default();
                let _ = write!(
                    out,
                    "\n    {side:<7} {} requests, {} failed ({:.2} %){latency}",
                    f["requests"],
                    f["failures"],
                    f["failure_rate"].as_f64().unwrap_or(0.0) * 100.0
                );
            }
        }
        for failed in e["failed"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            let _ = write!(out, "\n    worse: {failed}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "  started:  {} by {}", str_of(&r["started_at"]), str_of(&r["started_by"]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_render() {
        assert_eq!(weight("v1=90"), Ok(("v1".into(), 90)));
        assert!(weight("v1").is_err());
        assert!(weight("v1=-1").is_err());
        assert!(weight("=5").is_err());
        assert_eq!(weights(&json!({ "v1": 3, "v2": 1 })), "v1 3 (75.0%) · v2 1 (25.0%)");
        assert_eq!(encode("my app/x"), "my%20app%2Fx");
    }
}
