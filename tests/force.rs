//! `X-Weir-Version` forces a version, a 0-weight one included, on both HTTP/1 paths; an
//! unknown or unavailable forced version is an error, never another version; an app can
//! switch it off.

mod common;

use bytes::Bytes;
use common::{Backend, Client, config, start, urls};
use http_body_util::Full;

async fn get(client: &Client, url: &str, forced: Option<&str>) -> common::Reply {
    let fields: Vec<_> = forced.map(|v| ("x-weir-version", v)).into_iter().collect();
    get_with(client, url, &fields).await
}

async fn get_with(client: &Client, url: &str, fields: &[(&str, &str)]) -> common::Reply {
    let mut req = http::Request::get(url);
    for (name, value) in fields {
        req = req.header(*name, *value);
    }
    client.send(req.body(Full::<Bytes>::default()).unwrap()).await.unwrap()
}

/// The config, with the listener's fast path on or off (the hyper path then serves all).
fn with_fast_path(text: String, fast: bool) -> String {
    text.replacen(
        "[listeners.main]\naddr = \"127.0.0.1:0\"\n",
        &format!("[listeners.main]\naddr = \"127.0.0.1:0\"\nfast_path = {fast}\n"),
        1,
    )
}

#[tokio::test]
async fn the_header_forces_a_version_on_both_paths() {
    let (v1, v2, v3) =
        (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await, Backend::spawn("v3-0", "v3").await);
    for fast in [true, false] {
        let text = config(&[("v1", &[&v1]), ("v2", &[&v2]), ("v3", &[&v3])], &[("v1", 100), ("v2", 0)], "");
        let text = with_fast_path(text, fast);
        let weir = start(&text).await;
        let (traffic, _) = urls(&weir);
        let client = Client::new();
        for _ in 0..10 {
            assert_eq!(get(&client, &traffic, None).await.version(), "v1", "fast_path = {fast}");
            assert_eq!(
                get(&client, &traffic, Some("v2")).await.version(),
                "v2",
                "a 0-weight version, fast_path = {fast}"
            );
            assert_eq!(get(&client, &traffic, Some(" v3 ")).await.version(), "v3", "fast_path = {fast}");
        }
        let r = get(&client, &traffic, Some("v9")).await;
        assert_eq!(r.status, 400, "unknown version, fast_path = {fast}: {}", r.body);
        weir.shutdown().await;
    }
}

#[tokio::test]
async fn a_forced_version_that_is_down_is_not_replaced_and_apps_can_switch_it_off() {
    let v1 = Backend::spawn("v1-0", "v1").await;
    let v2 = Backend::spawn("v2-0", "v2").await;
    let probe = "probe = { path = \"/ready\", interval = \"100ms\", timeout = \"100ms\", unhealthy_threshold = 1 }\n";
    let weir = start(&config(&[("v1", &[&v1]), ("v2", &[&v2])], &[("v1", 1), ("v2", 1)], probe)).await;
    let (traffic, _) = urls(&weir);
    let client = Client::new();
    v2.set_ready(false);
    let mut refused = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let r = get(&client, &traffic, Some("v2")).await;
        assert_ne!(r.version(), "v1", "a forced request must not fall back to another version");
        if r.status == 503 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the forced request to a down version was answered 503");
    weir.shutdown().await;

    let off = config(&[("v1", &[&v1]), ("v2", &[&v2])], &[("v1", 1), ("v2", 0)], "force_header = false\n");
    let weir = start(&off).await;
    let (traffic, _) = urls(&weir);
    for _ in 0..5 {
        assert_eq!(get(&client, &traffic, Some("v2")).await.version(), "v1", "ignored when switched off");
    }
    weir.shutdown().await;
}

/// 200 users keyed by a header (fast path) or a cookie (hyper path): each keeps its version
/// at a given weight, and as the canary's weight rises over 5 admin changes nobody who
/// reached v2 goes back to v1.
#[tokio::test]
async fn sticky_users_only_move_into_the_canary() {
    let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
    for fast in [true, false] {
        let sticky = "sticky = { header = \"x-user\", cookie = \"uid\" }\n";
        let text = with_fast_path(config(&[("v1", &[&v1]), ("v2", &[&v2])], &[("v1", 95), ("v2", 5)], sticky), fast);
        let weir = start(&text).await;
        let (traffic, admin) = urls(&weir);
        let client = Client::new();
        let ask = |user: usize| {
            let (client, traffic) = (client.clone(), traffic.clone());
            async move {
                let req = if user.is_multiple_of(2) {
                    http::Request::get(&traffic).header("x-user", format!("user-{user}"))
                } else {
                    http::Request::get(&traffic).header("cookie", format!("theme=dark; uid=user-{user}"))
                };
                client.send(req.body(Full::<Bytes>::default()).unwrap()).await.unwrap().version().to_string()
            }
        };
        let mut was_v2 = [false; 200];
        for (step, canary) in [5u32, 20, 35, 50, 75, 90].into_iter().enumerate() {
            if step > 0 {
                let body = format!(r#"{{"weights":{{"v1":{},"v2":{canary}}}}}"#, 100 - canary);
                assert_eq!(client.call("PUT", &format!("{admin}/apps/web/split"), &body).await.status, 200);
            }
            let mut in_v2 = 0;
            for (user, was) in was_v2.iter_mut().enumerate() {
                let first = ask(user).await;
                assert_eq!(ask(user).await, first, "user {user} switched at weight {canary}, fast_path = {fast}");
                assert!(!*was || first == "v2", "user {user} went back from v2 at weight {canary}, fast_path = {fast}");
                *was = first == "v2";
                in_v2 += usize::from(*was);
            }
            let share = in_v2 as f64 / 200.0;
            assert!((share - f64::from(canary) / 100.0).abs() < 0.12, "{in_v2} of 200 users on v2 at {canary} %");
        }
        weir.shutdown().await;
    }
}

/// Header and cookie rules by exact value, pattern and always/never, with ingress-nginx's
/// precedence (X-Weir-Version, header, cookie, weight), on both HTTP/1 paths; then
/// `force_unavailable = "fallback"`.
#[tokio::test]
async fn rules_force_by_header_and_cookie_with_precedence() {
    let (v1, v2, v3) =
        (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await, Backend::spawn("v3-0", "v3").await);
    let rules = r#"force = [
  { cookie = "canary", version = "v2" },
  { header = "x-canary", version = "v2" },
  { header = "x-tester", version = "v3", pattern = '^(alice|bob)@example\.com$' },
  { cookie = "beta", version = "v3", value = "yes" },
]
"#;
    let versions: &[(&str, &[&Backend])] = &[("v1", &[&v1]), ("v2", &[&v2]), ("v3", &[&v3])];
    for fast in [true, false] {
        let weir = start(&with_fast_path(config(versions, &[("v1", 50), ("v2", 50), ("v3", 0)], rules), fast)).await;
        let (traffic, _) = urls(&weir);
        let client = Client::new();
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("x-canary", "always")], "v2"),
            (&[("x-canary", "never")], "v1"),
            (&[("x-tester", "alice@example.com")], "v3"),
            (&[("cookie", "theme=dark; canary=always")], "v2"),
            (&[("cookie", "canary=never")], "v1"),
            (&[("cookie", "beta=yes")], "v3"),
            // Header rules before cookie rules, whatever their order in the config.
            (&[("x-canary", "never"), ("cookie", "canary=always")], "v1"),
            (&[("cookie", "canary=never"), ("x-tester", "bob@example.com")], "v3"),
            // X-Weir-Version before every rule.
            (&[("x-weir-version", "v3"), ("x-canary", "always")], "v3"),
        ];
        for (fields, want) in cases {
            for _ in 0..6 {
                let r = get_with(&client, &traffic, fields).await;
                assert_eq!(r.version(), *want, "{fields:?}, fast_path = {fast}");
            }
        }
        // Values no rule decides on fall through to the weights: both v1 and v2, never v3.
        for fields in [&[("x-canary", "maybe")][..], &[("x-tester", "mallory@example.com")], &[("cookie", "beta=no")]] {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..10 {
                seen.insert(get_with(&client, &traffic, fields).await.version().to_string());
            }
            assert_eq!(seen, ["v1", "v2"].map(String::from).into(), "{fields:?}, fast_path = {fast}");
        }
        weir.shutdown().await;
    }
    // Fallback: an unknown or down forced version is routed by the weights instead.
    let text = format!("force_unavailable = \"fallback\"\n{rules}");
    let weir = start(&config(versions, &[("v1", 1), ("v2", 0)], &text)).await;
    let (traffic, _) = urls(&weir);
    let client = Client::new();
    let r = get(&client, &traffic, Some("v9")).await;
    assert_eq!((r.status.as_u16(), r.version()), (200, "v1"), "{}", r.body);
    weir.shutdown().await;
}

#[test]
fn bad_rules_are_refused_with_their_field() {
    let base = "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\n[apps.web]\nlistener = \"main\"\nsplit = { v1 = 1 }\nversions.v1.endpoints = [{ name = \"a\", addr = \"127.0.0.1:1\" }]\n";
    for (rule, field) in [
        (r#"{ header = "x-a", cookie = "b", version = "v1" }"#, "apps.web.force[0]"),
        (r#"{ version = "v1" }"#, "apps.web.force[0]"),
        (r#"{ header = "x a", version = "v1" }"#, "apps.web.force[0].header"),
        (r#"{ cookie = "a;b", version = "v1" }"#, "apps.web.force[0].cookie"),
        (r#"{ header = "x-a", version = "v7" }"#, "apps.web.force[0].version"),
        (r#"{ header = "x-a", version = "v1", pattern = "(" }"#, "apps.web.force[0].pattern"),
        (r#"{ header = "x-a", version = "v1", pattern = "a", value = "b" }"#, "apps.web.force[0]"),
    ] {
        let text = format!("{base}force = [{rule}]\n");
        let err = weir::Config::parse(&text, "test").expect_err(rule).to_string();
        assert!(err.contains(field), "{rule}: {err}");
    }
}

/// `set_cookie`: a client with no key gets one in the cookie (on either listener path: the
/// fast path hands that first request to the general one), and keeps its version with it;
/// a client that has the cookie gets no new one.
#[tokio::test]
async fn clients_without_a_key_get_a_sticky_cookie() {
    let (v1, v2) = (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await);
    for fast in [true, false] {
        let sticky = "sticky = { cookie = \"uid\", set_cookie = true }\n";
        let text = with_fast_path(config(&[("v1", &[&v1]), ("v2", &[&v2])], &[("v1", 50), ("v2", 50)], sticky), fast);
        let weir = start(&text).await;
        let (traffic, _) = urls(&weir);
        let client = Client::new();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let first = get_with(&client, &traffic, &[]).await;
            let set = first.headers.get("set-cookie").expect("a cookie for a client without one").to_str().unwrap();
            assert!(set.starts_with("uid=") && set.contains("HttpOnly") && set.contains("Path=/"), "{set}");
            let pair = set.split(';').next().unwrap().to_owned();
            for _ in 0..5 {
                let again = get_with(&client, &traffic, &[("cookie", &pair)]).await;
                assert_eq!(again.version(), first.version(), "{pair}, fast_path = {fast}");
                assert!(again.headers.get("set-cookie").is_none(), "a client with the cookie gets no new one");
            }
            seen.insert(first.version().to_owned());
        }
        assert_eq!(seen.len(), 2, "20 new clients spread over both versions: {seen:?}");
        weir.shutdown().await;
    }
    let bad = "[admin]\naddr = \"127.0.0.1:0\"\n[listeners.main]\naddr = \"127.0.0.1:0\"\n[apps.web]\nlistener = \"main\"\n\
               split = { v1 = 1 }\nsticky = { header = \"x-user\", set_cookie = true }\n\
               versions.v1.endpoints = [{ name = \"a\", addr = \"127.0.0.1:1\" }]\n";
    let err = weir::Config::parse(bad, "test").expect_err("set_cookie without a cookie").to_string();
    assert!(err.contains("apps.web.sticky.set_cookie"), "{err}");
}
