//! Kubernetes discovery end to end: Weir's kube-rs watchers against the stand-in API server,
//! backends on 127.0.0.x standing in for pod IPs, traffic from 32 clients.
#![cfg(feature = "kubernetes")]

mod common;
#[path = "common/fake_kube.rs"]
mod fake_kube;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{Backend, Client, Load, drained, urls, wait_for_app};
use fake_kube::FakeKube;
use k8s_openapi::api::core::v1::{Container, ContainerPort, ObjectReference, Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Pod backends on 127.0.0.2, .3, … all on one port, like pod IPs behind one targetPort.
struct Pods {
    port: u16,
    next_ip: u8,
}

impl Pods {
    async fn new() -> (Pods, Backend) {
        // The first backend picks a port free on 127.0.0.2; the others reuse it on other IPs.
        for _ in 0..20 {
            let first = Backend::spawn_at("127.0.0.2:0".parse().unwrap(), "pod-2", "v1").await;
            let port = first.addr.port();
            if std::net::TcpListener::bind(("127.0.0.9", port)).is_ok() {
                return (Pods { port, next_ip: 3 }, first);
            }
        }
        panic!("no shared port found");
    }

    async fn spawn(&mut self, name: &str, version: &str) -> Backend {
        let ip: IpAddr = format!("127.0.0.{}", self.next_ip).parse().unwrap();
        self.next_ip += 1;
        Backend::spawn_at(SocketAddr::new(ip, self.port), name, version).await
    }
}

/// (pod name, backend, ready, terminating)
fn slice(name: &str, service: &str, port: u16, eps: &[(&str, &Backend, bool, bool)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some([("kubernetes.io/service-name".to_string(), service.to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort { name: Some("http".into()), port: Some(port.into()), ..Default::default() }]),
        endpoints: eps
            .iter()
            .map(|(pod, backend, ready, terminating)| Endpoint {
                addresses: vec![backend.addr.ip().to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    serving: Some(*ready || *terminating),
                    terminating: Some(*terminating),
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(pod.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    }
}

fn config(api: &str, v1: &str, v2: &str, weights: (u32, u32)) -> String {
    format!(
        r#"
[admin]
addr = "127.0.0.1:0"
[listeners.main]
addr = "127.0.0.1:0"
[kubernetes]
api_url = "{api}"
[apps.web]
listener = "main"
split = {{ v1 = {}, v2 = {} }}
versions.v1.discovery = {v1}
versions.v2.discovery = {v2}
"#,
        weights.0, weights.1
    )
}

async fn start_ready(text: &str) -> weir::Running {
    let weir = common::start(text).await;
    let admin = format!("http://{}", weir.admin);
    let client = Client::new();
    for _ in 0..400 {
        if client.get(&format!("{admin}/ready")).await.status == 200 {
            return weir;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("weir never became ready");
}

fn has(view: &serde_json::Value, name: &str, ready: bool) -> bool {
    view["versions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["endpoints"].as_array().unwrap())
        .any(|e| e["name"] == name && e["ready"] == ready)
}

fn absent(view: &serde_json::Value, name: &str) -> bool {
    !view["versions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["endpoints"].as_array().unwrap())
        .any(|e| e["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_endpointslices_through_a_rolling_update_with_no_failed_request() {
    let fake = FakeKube::start(Duration::from_secs(30)).await;
    let (mut pods, a) = Pods::new().await;
    let b = pods.spawn("web-v1-b", "v1").await;
    let c = pods.spawn("web-v2-a", "v2").await;
    let port = pods.port;
    fake.apply(&slice("web-v1-x1", "web-v1", port, &[("web-v1-a", &a, true, false), ("web-v1-b", &b, true, false)]));
    fake.apply(&slice("web-v2-x1", "web-v2", port, &[("web-v2-a", &c, true, false)]));
    let text = config(
        &fake.url(),
        r#"{ service = "web-v1", port = "http" }"#,
        r#"{ service = "web-v2", port = "http" }"#,
        (90, 10),
    );
    let weir = start_ready(&text).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    let view = client.get(&format!("{admin}/apps/web")).await.json();
    assert!(has(&view, "web-v1-a", true) && has(&view, "web-v1-b", true) && has(&view, "web-v2-a", true), "{view:#}");
    assert_eq!(view["versions"][0]["source"]["status"]["synced"], true);

    let load = Load::start(&url, 32, 100_000);
    load.run_for_requests(&[&a, &b, &c], 1_000).await;
    // maxSurge 1, maxUnavailable 0: each old pod goes ready -> terminating -> gone while its
    // replacement goes not-ready -> ready.
    let mut current: Vec<(String, Backend)> = vec![("web-v1-a".into(), a), ("web-v1-b".into(), b)];
    for step in 0..2 {
        let new_name = format!("web-v1-new-{step}");
        let new = pods.spawn(&new_name, "v1").await;
        let publish = |eps: &[(&str, &Backend, bool, bool)]| fake.apply(&slice("web-v1-x1", "web-v1", port, eps));
        let mut eps: Vec<(&str, &Backend, bool, bool)> =
            current.iter().map(|(n, b)| (n.as_str(), b, true, false)).collect();
        eps.push((&new_name, &new, false, false));
        publish(&eps);
        wait_for_app(&client, &admin, "web", "new pod listed, not ready", |v| has(v, &new_name, false)).await;
        eps.last_mut().unwrap().2 = true;
        publish(&eps);
        wait_for_app(&client, &admin, "web", "new pod ready", |v| has(v, &new_name, true)).await;
        eps[0].2 = false;
        eps[0].3 = true;
        publish(&eps);
        let old_name = current[0].0.clone();
        wait_for_app(&client, &admin, "web", "old pod terminating", |v| has(v, &old_name, false)).await;
        drained(&current[0].1).await;
        eps.remove(0);
        publish(&eps);
        wait_for_app(&client, &admin, "web", "old pod gone", |v| absent(v, &old_name)).await;
        let (_, old) = current.remove(0);
        old.crash().await;
        current.push((new_name, new));
        load.run_for_requests(&[&current[0].1, &current[1].1], 500).await;
    }
    let report = load.stop().await;
    println!(
        "rolling update of v1 through EndpointSlices under 32 clients: {} ok, {} failed",
        report.ok, report.failed
    );
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let view = client.get(&format!("{admin}/apps/web")).await.json();
    assert!(has(&view, "web-v1-new-0", true) && has(&view, "web-v1-new-1", true), "{view:#}");
    weir.shutdown().await;
}

fn pod(name: &str, labels: &[(&str, &str)], backend: &Backend, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ports: Some(vec![
                    ContainerPort {
                        name: Some("http".into()),
                        container_port: backend.addr.port().into(),
                        ..Default::default()
                    },
                    ContainerPort { name: Some("probe".into()), container_port: 8086, ..Default::default() },
                ]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(backend.addr.ip().to_string()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_pods_by_label_selector_and_named_port() {
    let fake = FakeKube::start(Duration::from_secs(30)).await;
    let (mut pods, p1) = Pods::new().await;
    let (p2, p3, stable) =
        (pods.spawn("p2", "v1").await, pods.spawn("p3", "v2").await, pods.spawn("stable", "v1").await);
    let v2 = [("app", "web"), ("version", "v2.0.0")];
    fake.apply(&pod("p1", &v2, &p1, true));
    fake.apply(&pod("p2", &[("app", "web"), ("version", "v1.0.0")], &p2, true));
    fake.apply(&pod("p3", &v2, &p3, false));
    fake.apply(&pod("stable", &[("app", "web"), ("version", "v1.0.0"), ("track", "stable")], &stable, true));
    let text = config(
        &fake.url(),
        r#"{ namespace = "shop", selector = "app=web,track=stable", port = "http" }"#,
        r#"{ namespace = "shop", selector = "app=web,version in (v2.0.0),!track", port = "http" }"#,
        (0, 1),
    );
    let weir = start_ready(&text).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    let view = client.get(&format!("{admin}/apps/web")).await.json();
    assert!(has(&view, "p1", true) && has(&view, "p3", false) && absent(&view, "p2"), "{view:#}");
    for _ in 0..20 {
        assert_eq!(client.get(&url).await.body, "Host: pod-2, Version: v1\n", "only ready p1 (on 127.0.0.2)");
    }
    fake.apply(&pod("p3", &v2, &p3, true));
    wait_for_app(&client, &admin, "web", "p3 ready", |v| has(v, "p3", true)).await;
    // p1 is relabelled out of the selector: the watch says DELETED; p3 takes everything.
    fake.apply(&pod("p1", &[("app", "web"), ("version", "v3.0.0")], &p1, true));
    wait_for_app(&client, &admin, "web", "p1 gone", |v| absent(v, "p1")).await;
    for _ in 0..20 {
        assert_eq!(client.get(&url).await.body, "Host: p3, Version: v2\n");
    }
    // A pod being deleted (deletionTimestamp set, still listed) stops taking new requests.
    fake.delete::<Pod>("shop", "p3");
    wait_for_app(&client, &admin, "web", "p3 deleted", |v| absent(v, "p3")).await;
    assert!(
        fake.requests().iter().any(|r| r.contains("labelSelector=app%3Dweb%2Cversion+in+%28v2.0.0%29%2C%21track")
            || r.contains("labelSelector=app%3Dweb%2Cversion%20in%20%28v2.0.0%29%2C%21track")),
        "{:?}",
        fake.requests()
    );
    weir.shutdown().await;
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_watch_timeouts_410s_errors_and_malformed_lines() {
    // Watches end cleanly every 300 ms, as a real server's do at timeoutSeconds.
    let fake = FakeKube::start(Duration::from_millis(300)).await;
    let (mut pods, a) = Pods::new().await;
    let b = pods.spawn("b", "v1").await;
    let port = pods.port;
    let mut listed: Vec<(String, Backend)> = vec![("a".into(), a), ("b".into(), b)];
    let publish = |fake: &FakeKube, listed: &[(String, Backend)]| {
        let eps: Vec<(&str, &Backend, bool, bool)> = listed.iter().map(|(n, b)| (n.as_str(), b, true, false)).collect();
        fake.apply(&slice("web-x1", "web", port, &eps));
    };
    publish(&fake, &listed);
    let text = config(&fake.url(), r#"{ service = "web" }"#, r#"{ service = "web" }"#, (1, 0));
    let weir = start_ready(&text).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    let load = Load::start(&url, 32, 100_000);

    // Each fault, then a change that must still arrive.
    let faults: [(&str, &dyn Fn()); 5] = [
        ("clean watch timeouts", &|| {}),
        ("in-stream 410 after compaction", &|| {
            fake.compact();
            fake.drop_watches();
        }),
        ("HTTP-level 410 on watch start (kube#1042)", &|| {
            fake.fail_next(410, 8, true);
            fake.drop_watches();
        }),
        ("malformed line", &|| fake.send_malformed_line()),
        ("500 and 403 from the API", &|| {
            fake.fail_next(500, 2, false);
            fake.fail_next(403, 1, false);
            fake.drop_watches();
        }),
    ];
    for (i, (what, fault)) in faults.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(400)).await;
        fault();
        let name = format!("pod-{i}");
        listed.push((name.clone(), pods.spawn(&name, "v1").await));
        publish(&fake, &listed);
        wait_for_app(&client, &admin, "web", what, |v| has(v, &name, true)).await;
    }
    let report = load.stop().await;
    let text = client.get(&format!("{admin}/metrics")).await.body;
    let restarts = metric(&text, "weir_discovery_restarts_total{");
    let errors = metric(&text, "weir_discovery_errors_total{");
    println!(
        "discovery faults survived: {} ok, {} failed requests; {errors} API errors, {restarts} watcher rebuilds",
        report.ok, report.failed
    );
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(restarts >= 1, "the HTTP 410 should have rebuilt a watcher");
    let watches = fake.requests().iter().filter(|r| r.contains("watch=true")).count();
    assert!(watches >= 10, "watches were re-established after each clean end: {watches}");
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_while_the_api_is_down_and_catches_up_after() {
    let fake = FakeKube::start(Duration::from_secs(30)).await;
    let (mut pods, a) = Pods::new().await;
    let b = pods.spawn("b", "v1").await;
    let port = pods.port;
    fake.apply(&slice("web-x1", "web", port, &[("a", &a, true, false), ("b", &b, true, false)]));
    // A second slice of the same Service, deleted while the API is away.
    let extra = pods.spawn("extra", "v1").await;
    fake.apply(&slice("web-x2", "web", port, &[("extra", &extra, true, false)]));
    let weir = start_ready(&config(&fake.url(), r#"{ service = "web" }"#, r#"{ service = "web" }"#, (1, 0))).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    let load = Load::start(&url, 32, 100_000);

    fake.down();
    load.run_for_requests(&[&a, &b, &extra], 3_000).await;
    let view = client.get(&format!("{admin}/apps/web")).await.json();
    assert!(has(&view, "a", true) && has(&view, "extra", true), "last known endpoints kept: {view:#}");
    // Meanwhile the cluster moved on, and history was compacted.
    let c = pods.spawn("c", "v1").await;
    fake.apply(&slice("web-x1", "web", port, &[("a", &a, true, false), ("c", &c, true, false)]));
    fake.delete::<EndpointSlice>("default", "web-x2");
    fake.compact();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = client.get(&format!("{admin}/apps/web")).await.json()["versions"][0]["source"]["status"].clone();
    assert!(status["errors"].as_u64().unwrap() >= 1, "{status}");

    fake.up().await;
    wait_for_app(&client, &admin, "web", "caught up after the outage", |v| {
        has(v, "c", true) && absent(v, "b") && absent(v, "extra")
    })
    .await;
    let report = load.stop().await;
    println!("API down and back: {} ok, {} failed requests", report.ok, report.failed);
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_every_pool_has_synced_and_early_requests_wait() {
    let fake = FakeKube::start(Duration::from_secs(30)).await;
    let (_pods, a) = Pods::new().await;
    fake.apply(&slice("web-x1", "web", a.addr.port(), &[("a", &a, true, false)]));
    fake.fail_next(500, 3, false);
    let weir = common::start(&config(&fake.url(), r#"{ service = "web" }"#, r#"{ service = "web" }"#, (1, 0))).await;
    let (url, admin) = urls(&weir);
    let client = Client::new();
    assert_eq!(client.get(&format!("{admin}/ready")).await.status, 503);
    // A request sent now waits in the listen backlog and is served once synced: not failed.
    let early = tokio::spawn({
        let url = url.clone();
        async move { Client::new().get(&url).await }
    });
    let r = early.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(client.get(&format!("{admin}/ready")).await.status, 200);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_probes_traffic_waits_for_the_first_probe_of_discovered_endpoints() {
    let fake = FakeKube::start(Duration::from_secs(30)).await;
    let (_pods, a) = Pods::new().await;
    // The first probe takes 200 ms: long enough that traffic let in at discovery sync would
    // find the endpoint still unchecked.
    a.set_ready_delay(Duration::from_millis(200));
    fake.apply(&slice("web-x1", "web", a.addr.port(), &[("a", &a, true, false)]));
    let text = config(&fake.url(), r#"{ service = "web" }"#, r#"{ service = "web" }"#, (1, 0)).replace(
        "listener = \"main\"",
        // A generous timeout: start-up waits for first probes at most this long, and a probe
        // slower than that on an oversubscribed machine would rightly leave the endpoint
        // down. A passing probe still answers in ~200 ms, so the test is no slower.
        "listener = \"main\"\nprobe = { path = \"/ready\", interval = \"1s\", timeout = \"20s\" }",
    );
    let weir = common::start(&text).await;
    let (url, _) = urls(&weir);
    // Sent at once: they wait in the backlog until discovery has listed and the discovered
    // endpoint has passed its first probe; none may meet an unchecked, "unhealthy" pool.
    let early: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Client::new().get(&url).await })
        })
        .collect();
    for r in early {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    weir.shutdown().await;
}
