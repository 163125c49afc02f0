//! `X-Weir-Version` forces a version, a 0-weight one included, on both HTTP/1 paths; an
//! unknown or unavailable forced version is an error, never another version; an app can
//! switch it off.

mod common;

use bytes::Bytes;
use common::{Backend, Client, config, start, urls};
use http_body_util::Full;

async fn get(client: &Client, url: &str, forced: Option<&str>) -> common::Reply {
    let mut req = http::Request::get(url);
    if let Some(v) = forced {
        req = req.header("x-weir-version", v);
    }
    client.send(req.body(Full::<Bytes>::default()).unwrap()).await.unwrap()
}

#[tokio::test]
async fn the_header_forces_a_version_on_both_paths() {
    let (v1, v2, v3) =
        (Backend::spawn("v1-0", "v1").await, Backend::spawn("v2-0", "v2").await, Backend::spawn("v3-0", "v3").await);
    for fast in [true, false] {
        let mut text = config(&[("v1", &[&v1]), ("v2", &[&v2]), ("v3", &[&v3])], &[("v1", 100), ("v2", 0)], "");
        text = text.replacen(
            "[listeners.main]\naddr = \"127.0.0.1:0\"\n",
            &format!("[listeners.main]\naddr = \"127.0.0.1:0\"\nfast_path = {fast}\n"),
            1,
        );
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
        let mut text = config(&[("v1", &[&v1]), ("v2", &[&v2])], &[("v1", 95), ("v2", 5)], sticky);
        text = text.replacen(
            "[listeners.main]\naddr = \"127.0.0.1:0\"\n",
            &format!("[listeners.main]\naddr = \"127.0.0.1:0\"\nfast_path = {fast}\n"),
            1,
        );
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
