//! Semantic checks on a parsed config. Pure: config in, problems out.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Config, Problem};

/// Largest weight accepted for one version (Gateway API's limit).
pub const MAX_WEIGHT: i64 = 1_000_000;

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem { field: field.into(), location: None, message: message.into() }
}

/// Checks a name used for apps, versions and listeners: it appears in URLs, metric labels and
/// Kubernetes labels, so it is held to the DNS-label-like set `[A-Za-z0-9._-]`, 1..=63 long.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("name {name:?} must be 1 to 63 characters long"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(format!("name {name:?} may only hold letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// Checks a split against the versions it may name. Returns `(version, message)` pairs; an
/// empty version means the problem is with the split as a whole. Shared by the config loader
/// and the admin API so both enforce exactly the same rules.
pub fn validate_weights<'a>(
    weights: &BTreeMap<String, i64>,
    known: impl Iterator<Item = &'a String> + Clone,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (version, &w) in weights {
        if !known.clone().any(|k| k == version) {
            let names: Vec<&str> = known.clone().map(String::as_str).collect();
            out.push((version.clone(), format!("unknown version {version:?}; this app has {}", names.join(", "))));
        } else if w < 0 {
            out.push((version.clone(), format!("weight of {version} is {w}; weights must be >= 0")));
        } else if w > MAX_WEIGHT {
            out.push((version.clone(), format!("weight of {version} is {w}; the maximum is {MAX_WEIGHT}")));
        }
    }
    if out.is_empty() && weights.values().all(|&w| w == 0) {
        out.push((String::new(), "all weights are zero; at least one version needs traffic".into()));
    }
    out
}

pub(super) fn validate(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    if config.admin.history_limit < 2 {
        out.push(problem("admin.history_limit", "must be at least 2 to allow a rollback"));
    }
    let authenticated = config.admin.tokens_file.is_some() || config.admin.kubernetes_auth.is_some();
    if config.admin.tokens_file.is_some() && config.admin.kubernetes_auth.is_some() {
        out.push(problem("admin.kubernetes_auth", "set either admin.tokens_file or admin.kubernetes_auth, not both"));
    }
    if !config.admin.addr.ip().is_loopback() && !authenticated && !config.admin.allow_unauthenticated {
        out.push(problem(
            "admin.addr",
            format!(
                "{} is reachable from other hosts and the admin API would have no authentication: set \
                 admin.tokens_file or admin.kubernetes_auth, or admin.allow_unauthenticated = true if it is meant to be open",
                config.admin.addr
            ),
        ));
    }
    if config.state.dir.is_some() && config.state.kubernetes.is_some() {
        out.push(problem("state", "set either state.dir or state.kubernetes, not both"));
    }
    if let Some(k) = &config.state.kubernetes {
        // It is also the value of the replicas' Lease label (`weir.dev/state`): 63 at most.
        if k.name.is_empty() || k.name.len() > 63 {
            out.push(problem("state.kubernetes.name", "must be a ConfigMap name of 1 to 63 characters"));
        }
        if k.lease_duration < std::time::Duration::from_secs(1) {
            out.push(problem("state.kubernetes.lease_duration", "must be at least 1s"));
        }
        if k.api_timeout.is_zero() {
            out.push(problem("state.kubernetes.api_timeout", "must be above zero"));
        }
    }
    if config.listeners.is_empty() {
        out.push(problem("listeners", "at least one listener is required"));
    }
    if config.apps.is_empty() {
        out.push(problem("apps", "at least one app is required"));
    }
    let mut bound: HashMap<std::net::SocketAddr, String> = HashMap::new();
    bound.insert(config.admin.addr, "admin.addr".into());
    for (name, l) in &config.listeners {
        let field = format!("listeners.{name}");
        if let Err(m) = validate_name(name) {
            out.push(problem(&field, m));
        }
        if let Some(other) = bound.insert(l.addr, format!("{field}.addr"))
            && l.addr.port() != 0
        {
            out.push(problem(format!("{field}.addr"), format!("{} is also used by {other}", l.addr)));
        }
        if l.max_connections == 0 {
            out.push(problem(format!("{field}.max_connections"), "must be at least 1"));
        }
        for (what, d) in [
            ("header_read_timeout", l.header_read_timeout),
            ("body_read_timeout", l.body_read_timeout),
            ("send_timeout", l.send_timeout),
            ("keepalive_timeout", l.keepalive_timeout),
        ] {
            if d.is_zero() {
                out.push(problem(format!("{field}.{what}"), "must be longer than 0s"));
            }
        }
        if let Some(tls) = &l.tls {
            validate_tls(&format!("{field}.tls"), tls, &mut out);
        }
    }
    // (listener, host) -> app, to catch two apps claiming the same host on one listener.
    let mut hosts: HashMap<(&str, String), &str> = HashMap::new();
    let mut defaults: HashMap<&str, &str> = HashMap::new();
    for (app_name, app) in &config.apps {
        let field = format!("apps.{app_name}");
        if let Err(m) = validate_name(app_name) {
            out.push(problem(&field, m));
        }
        if !config.listeners.contains_key(&app.listener) {
            out.push(problem(
                format!("{field}.listener"),
                format!("no listener named {:?} in [listeners]", app.listener),
            ));
        }
        if app.hosts.is_empty()
            && let Some(other) = defaults.insert(&app.listener, app_name)
        {
            out.push(problem(
                format!("{field}.hosts"),
                format!(
                    "apps {other} and {app_name} are both the default app of listener {}; \
                         give one of them hosts",
                    app.listener
                ),
            ));
        }
        for (i, host) in app.hosts.iter().enumerate() {
            let h = host.to_ascii_lowercase();
            if h.is_empty() || h.contains([':', '/', ' ']) {
                out.push(problem(
                    format!("{field}.hosts[{i}]"),
                    format!("{host:?} is not a bare host name (no port, scheme or path)"),
                ));
            } else if let Some(other) = hosts.insert((&app.listener, h), app_name) {
                out.push(problem(
                    format!("{field}.hosts[{i}]"),
                    format!("host {host:?} is already served by app {other} on this listener"),
                ));
            }
        }
        validate_versions(app_name, app, &mut out);
        for (version, message) in validate_weights(&app.split, app.versions.keys()) {
            let f = if version.is_empty() { format!("{field}.split") } else { format!("{field}.split.{version}") };
            out.push(problem(f, message));
        }
        if let Some(p) = &app.probe {
            validate_probe(&format!("{field}.probe"), p, &mut out);
        }
        for (version, v) in &app.versions {
            if let Some(p) = &v.probe {
                validate_probe(&format!("{field}.versions.{version}.probe"), p, &mut out);
            }
        }
        let o = &app.outlier;
        if o.failure_percent > 100 {
            out.push(problem(format!("{field}.outlier.failure_percent"), "must be 0 to 100"));
        }
        if o.max_ejected_percent > 100 {
            out.push(problem(format!("{field}.outlier.max_ejected_percent"), "must be 0 to 100"));
        }
        for (key, d) in [("window", o.window), ("base_ejection", o.base_ejection), ("max_ejection", o.max_ejection)] {
            if d.is_zero() {
                out.push(problem(format!("{field}.outlier.{key}"), "must be greater than zero"));
            }
        }
        let t = &app.timeouts;
        for (key, d) in [("connect", t.connect), ("request", t.request), ("idle", t.idle)] {
            if d.is_zero() {
                out.push(problem(format!("{field}.timeouts.{key}"), "must be greater than zero"));
            }
        }
    }
    out
}

fn validate_probe(field: &str, p: &super::ProbeConfig, out: &mut Vec<Problem>) {
    if !p.path.starts_with('/') || p.path.contains(char::is_whitespace) {
        out.push(problem(format!("{field}.path"), format!("{:?} is not an absolute path like \"/ready\"", p.path)));
    }
    if p.port == Some(0) {
        out.push(problem(format!("{field}.port"), "port 0 cannot be probed"));
    }
    for (key, d) in [("interval", p.interval), ("timeout", p.timeout)] {
        if d.is_zero() {
            out.push(problem(format!("{field}.{key}"), "must be greater than zero"));
        }
    }
    for (key, n) in [("healthy_threshold", p.healthy_threshold), ("unhealthy_threshold", p.unhealthy_threshold)] {
        if n == 0 {
            out.push(problem(format!("{field}.{key}"), "must be at least 1"));
        }
    }
    let [lo, hi] = p.expected_status;
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        out.push(problem(format!("{field}.expected_status"), format!("[{lo}, {hi}] is not a range of HTTP statuses")));
    }
}

fn validate_discovery(field: &str, d: &super::DiscoveryConfig, out: &mut Vec<Problem>) {
    match (&d.service, &d.selector) {
        (None, None) | (Some(_), Some(_)) => {
            out.push(problem(field, "give exactly one of service (EndpointSlices) and selector (Pods)"))
        }
        (Some(s), None) if s.is_empty() => out.push(problem(format!("{field}.service"), "must not be empty")),
        (None, Some(s)) if s.trim().is_empty() => out.push(problem(format!("{field}.selector"), "must not be empty")),
        _ => {}
    }
    if d.namespace.is_empty() {
        out.push(problem(format!("{field}.namespace"), "must not be empty"));
    }
    if d.port == Some(super::PortRef::Number(0)) {
        out.push(problem(format!("{field}.port"), "port 0 is not reachable"));
    }
}

/// A listener's TLS section; the certificate files are loaded, so a bad or mismatched key
/// is refused here (at start, by `weir check`, and by a reload, which then changes nothing).
fn validate_tls(field: &str, tls: &super::TlsConfig, out: &mut Vec<Problem>) {
    if tls.certificates.is_empty() {
        out.push(problem(format!("{field}.certificates"), "at least one certificate is required"));
    }
    for (i, c) in tls.certificates.iter().enumerate() {
        if let Err(e) = crate::data::tls::Certificates::check(std::slice::from_ref(c)) {
            out.push(problem(format!("{field}.certificates[{i}]"), e.to_string()));
        }
    }
    if tls.alpn.is_empty() {
        out.push(problem(format!("{field}.alpn"), "offer at least one of \"h2\" and \"http/1.1\""));
    }
    for (i, p) in tls.alpn.iter().enumerate() {
        if !["h2", "http/1.1"].contains(&p.as_str()) || tls.alpn[..i].contains(p) {
            out.push(problem(format!("{field}.alpn"), format!("{p:?}: only \"h2\" and \"http/1.1\", each once")));
        }
    }
    if tls.handshake_timeout.is_zero() {
        out.push(problem(format!("{field}.handshake_timeout"), "must be longer than 0s"));
    }
}

/// A cookie name: an RFC 6265 token.
fn is_cookie_name(c: &str) -> bool {
    !c.is_empty() && c.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

fn validate_versions(app_name: &str, app: &super::AppConfig, out: &mut Vec<Problem>) {
    if let Some(sticky) = &app.sticky {
        if let Some(h) = &sticky.header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            out.push(problem(format!("apps.{app_name}.sticky.header"), format!("{h:?} is not a header name")));
        }
        if sticky.set_cookie && sticky.cookie.is_none() {
            out.push(problem(format!("apps.{app_name}.sticky.set_cookie"), "needs sticky.cookie: the cookie to set"));
        }
        if let Some(c) = &sticky.cookie
            && !is_cookie_name(c)
        {
            out.push(problem(format!("apps.{app_name}.sticky.cookie"), format!("{c:?} is not a cookie name")));
        }
    }
    let r = &app.rollout;
    for (name, steps) in &r.plans {
        if let Err(e) = crate::control::rollout::check_plan(steps) {
            out.push(problem(format!("apps.{app_name}.rollout.plans.{name}"), e));
        }
    }
    if !r.plans.contains_key(&r.default_plan) && crate::control::rollout::preset(&r.default_plan).is_none() {
        out.push(problem(
            format!("apps.{app_name}.rollout.default_plan"),
            format!("{:?} is neither one of plans nor a preset (canary, ramped, blue_green)", r.default_plan),
        ));
    }
    if r.failure_limit == 0 {
        out.push(problem(format!("apps.{app_name}.rollout.failure_limit"), "must be at least 1"));
    }
    let c = &r.criteria;
    if !(c.false_alarm > 0.0 && c.false_alarm < 1.0) {
        out.push(problem(format!("apps.{app_name}.rollout.criteria.false_alarm"), "must be between 0 and 1"));
    }
    if !(c.quantile > 0.0 && c.quantile < 1.0) {
        out.push(problem(format!("apps.{app_name}.rollout.criteria.quantile"), "must be between 0 and 1"));
    }
    if c.latency_factor.is_nan() || c.latency_factor < 1.0 || !(0.0..1.0).contains(&c.failure_margin) {
        out.push(problem(
            format!("apps.{app_name}.rollout.criteria"),
            "latency_factor must be at least 1 and failure_margin between 0 and 1",
        ));
    }
    if c.min_success.is_some_and(|m| !(0.0..=1.0).contains(&m)) {
        out.push(problem(format!("apps.{app_name}.rollout.criteria.min_success"), "must be between 0 and 1"));
    }
    if let Some(m) = &app.mirror {
        let field = format!("apps.{app_name}.mirror");
        if !app.versions.contains_key(&m.version) {
            out.push(problem(format!("{field}.version"), format!("{:?} is not a version of this app", m.version)));
        }
        if !(0.0..=100.0).contains(&m.percent) {
            out.push(problem(format!("{field}.percent"), "must be 0 to 100"));
        }
        if m.queue == 0 {
            out.push(problem(format!("{field}.queue"), "must be at least 1"));
        }
        if m.max_body > 1 << 20 {
            out.push(problem(format!("{field}.max_body"), "at most 1 MiB"));
        }
    }
    if let Err(e) = crate::data::upstream::Transport::of(&app.upstream) {
        out.push(problem(format!("apps.{app_name}.upstream.tls"), e));
    }
    for (i, rule) in app.force.iter().enumerate() {
        let field = format!("apps.{app_name}.force[{i}]");
        match (&rule.header, &rule.cookie) {
            (Some(h), None) => {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    out.push(problem(format!("{field}.header"), format!("{h:?} is not a header name")));
                }
            }
            (None, Some(c)) => {
                if !is_cookie_name(c) {
                    out.push(problem(format!("{field}.cookie"), format!("{c:?} is not a cookie name")));
                }
            }
            _ => out.push(problem(&field, "needs exactly one of `header` and `cookie`")),
        }
        if !app.versions.contains_key(&rule.version) {
            out.push(problem(format!("{field}.version"), format!("{:?} is not a version of this app", rule.version)));
        }
        match (&rule.value, &rule.pattern) {
            (Some(_), Some(_)) => out.push(problem(&field, "`value` and `pattern` exclude each other")),
            (_, Some(p)) => {
                if let Err(e) = crate::data::snapshot::compile_pattern(p) {
                    out.push(problem(format!("{field}.pattern"), format!("not a valid regular expression: {e}")));
                }
            }
            _ => {}
        }
    }
    let field = format!("apps.{app_name}.versions");
    if app.versions.is_empty() {
        out.push(problem(&field, "at least one version is required"));
    }
    let mut addrs: HashMap<std::net::SocketAddr, String> = HashMap::new();
    for (version, v) in &app.versions {
        let vfield = format!("{field}.{version}");
        if let Err(m) = validate_name(version) {
            out.push(problem(&vfield, m));
        }
        match (&v.discovery, v.endpoints.is_empty()) {
            (None, true) => {
                out.push(problem(format!("{vfield}.endpoints"), "at least one endpoint is required (or use discovery)"))
            }
            (Some(_), false) => {
                out.push(problem(format!("{vfield}.discovery"), "use either endpoints or discovery, not both"))
            }
            (Some(d), true) => validate_discovery(&format!("{vfield}.discovery"), d, out),
            (None, false) => {}
        }
        let mut names = HashSet::new();
        for (i, ep) in v.endpoints.iter().enumerate() {
            let efield = format!("{vfield}.endpoints[{i}]");
            if ep.addr.port() == 0 {
                out.push(problem(format!("{efield}.addr"), "port 0 is not a reachable endpoint"));
            }
            if let Some(other) = addrs.insert(ep.addr, efield.clone()) {
                out.push(problem(format!("{efield}.addr"), format!("{} is also listed at {other}", ep.addr)));
                continue; // its default name repeats too; one report is enough
            }
            let name = ep.display_name();
            if name.is_empty() || name.len() > 253 {
                out.push(problem(format!("{efield}.name"), "must be 1 to 253 characters long"));
            } else if !names.insert(name.clone()) {
                out.push(problem(format!("{efield}.name"), format!("endpoint name {name:?} is used twice")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn weights_rules() {
        let known = ["v1".to_string(), "v2".to_string()];
        assert!(validate_weights(&weights(&[("v1", 90), ("v2", 10)]), known.iter()).is_empty());
        assert!(validate_weights(&weights(&[("v2", 1)]), known.iter()).is_empty());
        let e = validate_weights(&weights(&[("v1", 0), ("v2", 0)]), known.iter());
        assert!(e[0].1.contains("all weights are zero"), "{e:?}");
        let e = validate_weights(&weights(&[("v1", -1), ("v2", 10)]), known.iter());
        assert_eq!(e[0].0, "v1");
        let e = validate_weights(&weights(&[("v3", 1)]), known.iter());
        assert!(e[0].1.contains("unknown version \"v3\"; this app has v1, v2"), "{e:?}");
        let e = validate_weights(&weights(&[("v1", MAX_WEIGHT + 1)]), known.iter());
        assert!(e[0].1.contains("maximum"));
        assert!(!validate_weights(&weights(&[]), known.iter()).is_empty());
    }

    #[test]
    fn names() {
        assert!(validate_name("canary-2.0_x").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(64)).is_err());
    }
}
