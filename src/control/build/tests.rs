use super::*;

const CONFIG: &str = r#"
[listeners.main]
addr = "127.0.0.1:0"

[apps.web]
listener = "main"
[apps.web.split]
v1 = 90
v2 = 10
[apps.web.versions.v1]
endpoints = [{ addr = "127.0.0.1:1001" }, { addr = "127.0.0.1:1002", name = "web-v1-b" }]
[apps.web.versions.v2]
endpoints = [{ addr = "127.0.0.1:1003" }]

[apps.api]
listener = "main"
hosts = ["API.example.com"]
[apps.api.split]
stable = 1
[apps.api.versions.stable]
endpoints = [{ addr = "127.0.0.1:2001" }]
"#;

fn splits(config: &Config) -> BTreeMap<String, SplitState> {
    config
        .apps
        .iter()
        .map(|(n, a)| {
            let weights = a.split.iter().map(|(v, w)| (v.clone(), *w as u32)).collect();
            (n.clone(), SplitState { revision: 1, weights })
        })
        .collect()
}

#[test]
fn routes_by_host_with_default() {
    let config = Config::parse(CONFIG, "test").unwrap();
    let snap = build(&config, &splits(&config), &Default::default(), None, &Metrics::new(), 1);
    assert_eq!(&*snap.route(0, Some("api.example.com")).unwrap().name, "api");
    assert_eq!(&*snap.route(0, Some("API.Example.COM:8080")).unwrap().name, "api");
    assert_eq!(&*snap.route(0, Some("other")).unwrap().name, "web");
    assert_eq!(&*snap.route(0, None).unwrap().name, "web");
    assert!(snap.route(1, None).is_none());
}

#[test]
fn weights_align_with_versions() {
    let config = Config::parse(CONFIG, "test").unwrap();
    let snap = build(&config, &splits(&config), &Default::default(), None, &Metrics::new(), 1);
    let web = snap.app("web").unwrap();
    assert_eq!(web.weights().collect::<Vec<_>>(), [("v1", 90), ("v2", 10)]);
    assert_eq!(web.split.total(), 100);
    let names: Vec<_> = web.versions[0].pool.endpoints().iter().map(|e| e.name.to_string()).collect();
    assert_eq!(names, ["127.0.0.1:1001", "web-v1-b"]);
}

#[test]
fn rebuild_keeps_endpoint_state_and_upstream() {
    let config = Config::parse(CONFIG, "test").unwrap();
    let metrics = Metrics::new();
    let first = build(&config, &splits(&config), &Default::default(), None, &metrics, 1);
    let ep = &first.app("web").unwrap().versions[0].pool.endpoints()[0];
    ep.state.set_healthy(false);

    let mut next = splits(&config);
    next.get_mut("web").unwrap().weights.insert("v2".into(), 50);
    next.get_mut("web").unwrap().revision = 2;
    let second = build(&config, &next, &Default::default(), Some(&first), &metrics, 2);
    let web = second.app("web").unwrap();
    assert_eq!(web.revision, 2);
    assert_eq!(web.versions[1].weight, 50);
    let kept = &web.versions[0].pool.endpoints()[0];
    assert!(Arc::ptr_eq(&kept.state, &ep.state));
    assert!(!kept.state.is_healthy());
    assert!(ep.client.same_pool(&kept.client), "warm connections survive a split change");

    // A changed timeout gets a fresh upstream; a moved endpoint gets fresh state.
    let mut changed = config.clone();
    let web_cfg = changed.apps.get_mut("web").unwrap();
    web_cfg.timeouts.connect = std::time::Duration::from_millis(5);
    web_cfg.versions.get_mut("v1").unwrap().endpoints[0].addr = "127.0.0.1:1009".parse().unwrap();
    let third = build(&changed, &next, &Default::default(), Some(&second), &metrics, 3);
    let web3 = third.app("web").unwrap();
    let kept2 = &web3.versions[0].pool.endpoints()[1];
    assert!(!kept2.client.same_pool(&web.versions[0].pool.endpoints()[1].client), "new timeouts, new pool");
    assert!(web3.versions[0].pool.endpoints()[0].state.is_healthy());
}
