//! The Kubernetes manifests parse into their k8s-openapi types and agree with each other and
//! with Weir: selectors match pod labels, RBAC grants exactly what the watcher reads, probes hit
//! the admin API, and the ConfigMap's weir.toml passes `weir check`.
#![cfg(feature = "kubernetes")]

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use serde::Deserialize;

#[derive(Default)]
struct Manifests {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    roles: Vec<Role>,
    bindings: Vec<RoleBinding>,
    accounts: Vec<ServiceAccount>,
    budgets: Vec<PodDisruptionBudget>,
    cluster_bindings: Vec<ClusterRoleBinding>,
}

fn load() -> Manifests {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/kubernetes");
    let mut m = Manifests::default();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            let kind = value["kind"].as_str().unwrap_or_else(|| panic!("{}: a document without kind", path.display()));
            let at = format!("{}: {kind}", path.display());
            match kind {
                "Deployment" => m.deployments.push(typed(value, &at)),
                "Service" => m.services.push(typed(value, &at)),
                "ConfigMap" => m.config_maps.push(typed(value, &at)),
                "Role" => m.roles.push(typed(value, &at)),
                "RoleBinding" => m.bindings.push(typed(value, &at)),
                "ServiceAccount" => m.accounts.push(typed(value, &at)),
                "PodDisruptionBudget" => m.budgets.push(typed(value, &at)),
                "ClusterRoleBinding" => m.cluster_bindings.push(typed(value, &at)),
                other => panic!("{}: unexpected kind {other}", path.display()),
            }
        }
    }
    assert!(files >= 2, "weir.yaml and demo-app.yaml");
    m
}

/// Deserializes into the k8s-openapi type: a mistyped field fails here (unknown ones are
/// ignored, as by the API server's non-strict decoding).
fn typed<T: serde::de::DeserializeOwned>(value: serde_yaml::Value, at: &str) -> T {
    serde_yaml::from_value(value).unwrap_or_else(|e| panic!("{at}: {e}"))
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn deployments_and_services_select_the_pods_they_mean() {
    let m = load();
    for d in &m.deployments {
        let spec = d.spec.as_ref().unwrap();
        let match_labels = spec.selector.match_labels.clone().unwrap_or_default();
        assert!(
            selects(&match_labels, &pod_labels(d)),
            "{:?}: selector does not match its pod template",
            d.metadata.name
        );
    }
    for s in &m.services {
        let selector = s.spec.as_ref().unwrap().selector.clone().unwrap_or_default();
        let matched: Vec<_> = m.deployments.iter().filter(|d| selects(&selector, &pod_labels(d))).collect();
        assert_eq!(matched.len(), 1, "Service {:?} should select exactly one Deployment's pods", s.metadata.name);
        // Named target ports exist on the selected pods.
        let containers = &matched[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers;
        for port in s.spec.as_ref().unwrap().ports.iter().flatten() {
            if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) = &port.target_port {
                assert!(
                    containers.iter().flat_map(|c| c.ports.iter().flatten()).any(|p| p.name.as_deref() == Some(name)),
                    "Service {:?} targets a port {name} its pods do not name",
                    s.metadata.name
                );
            }
        }
    }
}

#[test]
fn rbac_grants_exactly_what_the_watcher_reads() {
    let m = load();
    let weir = m.deployments.iter().find(|d| d.metadata.name.as_deref() == Some("weir")).unwrap();
    let account = weir.spec.as_ref().unwrap().template.spec.as_ref().unwrap().service_account_name.clone().unwrap();
    assert!(m.accounts.iter().any(|a| a.metadata.name.as_deref() == Some(account.as_str())));
    let binding = m
        .bindings
        .iter()
        .find(|b| b.subjects.iter().flatten().any(|s| s.kind == "ServiceAccount" && s.name == account))
        .expect("a RoleBinding for weir's ServiceAccount");
    let role = m.roles.iter().find(|r| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())).unwrap();
    let mut grants: Vec<(String, String, Vec<String>)> = Vec::new();
    for rule in role.rules.iter().flatten() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let mut verbs = rule.verbs.clone();
                verbs.sort();
                grants.push((group.clone(), resource.clone(), verbs));
            }
        }
    }
    grants.sort();
    let watch = vec!["get".to_string(), "list".into(), "watch".into()];
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        grants,
        [
            ("".to_string(), "configmaps".to_string(), strs(&["get", "list", "update", "watch"])),
            ("".to_string(), "pods".to_string(), watch.clone()),
            ("coordination.k8s.io".into(), "leases".into(), strs(&["create", "delete", "get", "list", "update"])),
            ("discovery.k8s.io".into(), "endpointslices".into(), watch)
        ],
        "read-only discovery, the state ConfigMap, the replicas' Leases"
    );
    // The ConfigMap grant names the state object only; Weir never creates or deletes it.
    let cm_rule =
        role.rules.iter().flatten().find(|r| r.resources.iter().flatten().any(|x| x == "configmaps")).unwrap();
    assert_eq!(cm_rule.resource_names.clone().unwrap_or_default(), ["weir-state".to_string()]);
    // No wildcard anywhere.
    for role in &m.roles {
        for rule in role.rules.iter().flatten() {
            let all = rule.verbs.iter().chain(rule.resources.iter().flatten()).chain(rule.api_groups.iter().flatten());
            assert!(all.clone().all(|x| x != "*"), "{:?} uses *", role.metadata.name);
        }
    }
    // Admin callers are reviewed with the API: weir may create TokenReviews and
    // SubjectAccessReviews, through the built-in auth-delegator role, and nothing more.
    let delegator = m
        .cluster_bindings
        .iter()
        .find(|b| b.subjects.iter().flatten().any(|s| s.kind == "ServiceAccount" && s.name == account))
        .expect("a ClusterRoleBinding for weir");
    assert_eq!(delegator.role_ref.name, "system:auth-delegator");
    assert_eq!(m.cluster_bindings.len(), 1, "no other cluster-wide grant");
}

#[test]
fn three_replicas_share_the_state_and_a_ci_role_steers_them() {
    let m = load();
    let weir = m.deployments.iter().find(|d| d.metadata.name.as_deref() == Some("weir")).unwrap();
    let spec = weir.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let rolling = spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref()).expect("a rolling update");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)), "never below the replicas during a rollout");
    // The PodDisruptionBudget covers exactly Weir's pods and lets one go at a time.
    let pdb = m.budgets.iter().find(|b| b.metadata.name.as_deref() == Some("weir")).expect("a PodDisruptionBudget");
    let pdb_spec = pdb.spec.as_ref().unwrap();
    let selector = pdb_spec.selector.as_ref().and_then(|s| s.match_labels.clone()).unwrap_or_default();
    assert!(selects(&selector, &pod_labels(weir)));
    assert_eq!(pdb_spec.max_unavailable, Some(IntOrString::Int(1)));
    // Identity and namespace from the downward API.
    let container = &spec.template.spec.as_ref().unwrap().containers[0];
    for (name, field) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        let env = container.env.iter().flatten().find(|e| e.name == name).unwrap_or_else(|| panic!("env {name}"));
        let from = env.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
        assert_eq!(from, Some(field), "{name}");
    }
    // The state ConfigMap the config names ships with the manifest, empty; admin auth is on.
    let cm = m.config_maps.iter().find(|c| c.metadata.name.as_deref() == Some("weir-config")).unwrap();
    let config = weir::Config::parse(&cm.data.as_ref().unwrap()["weir.toml"], "weir-config").unwrap();
    let state = config.state.kubernetes.as_ref().expect("[state.kubernetes]");
    let shipped = m.config_maps.iter().find(|c| c.metadata.name.as_deref() == Some(state.name.as_str()));
    assert!(shipped.expect("the state ConfigMap").data.is_none(), "shipped empty");
    assert!(config.admin.kubernetes_auth.is_some() && !config.admin.allow_unauthenticated);
    // The CI Role: only Weir's virtual resources: its app's split by name (read and change),
    // and a read of /cluster (what each replica applied).
    let ci = m.roles.iter().find(|r| r.metadata.name.as_deref() == Some("weir-deployer")).expect("the CI Role");
    let mut resources = Vec::new();
    for rule in ci.rules.iter().flatten() {
        assert_eq!(rule.api_groups.clone().unwrap_or_default(), ["weir.dev".to_string()]);
        let resource = rule.resources.clone().unwrap_or_default().concat();
        match resource.as_str() {
            "splits" => {
                let names = rule.resource_names.clone().unwrap_or_default();
                assert!(!names.is_empty() && names.iter().all(|n| config.apps.contains_key(n)), "names an app");
            }
            "clusters" => assert_eq!(rule.verbs, ["get"], "reads /cluster only"),
            other => panic!("the CI Role grants {other}"),
        }
        resources.push(resource);
    }
    resources.sort();
    assert_eq!(resources, ["clusters", "splits"]);
    assert!(m.bindings.iter().any(|b| b.role_ref.name == "weir-deployer"));
}

#[test]
fn weir_probes_use_the_admin_api_and_its_config_passes_check() {
    let m = load();
    let weir = m.deployments.iter().find(|d| d.metadata.name.as_deref() == Some("weir")).unwrap();
    let container = &weir.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let path =
        |p: &Option<k8s_openapi::api::core::v1::Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
    assert_eq!(path(&container.liveness_probe).as_deref(), Some("/live"));
    assert_eq!(path(&container.readiness_probe).as_deref(), Some("/ready"));

    let cm = m.config_maps.iter().find(|c| c.metadata.name.as_deref() == Some("weir-config")).unwrap();
    let text = &cm.data.as_ref().unwrap()["weir.toml"];
    let config = weir::Config::parse(text, "ConfigMap weir-config").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.admin.addr.port(), 9901);

    // Termination: the preStop hook starts Weir's drain through the admin API and waits
    // for it; the drain delay and the grace period fit in the pod's termination grace.
    let pre_stop = container.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).expect("a preStop hook");
    let command = pre_stop.exec.as_ref().and_then(|e| e.command.clone()).expect("an exec preStop");
    assert_eq!(command[..2], ["/usr/local/bin/weir".to_string(), "shutdown".to_string()]);
    assert!(command.windows(2).any(|w| w[0] == "--admin" && w[1].ends_with(":9901")), "{command:?}");
    assert!(command.iter().any(|a| a == "--wait"), "{command:?}");
    let termination = weir.spec.as_ref().unwrap().template.spec.as_ref().unwrap().termination_grace_period_seconds;
    let budget = std::time::Duration::from_secs(termination.expect("terminationGracePeriodSeconds") as u64);
    let needed = config.runtime.drain_delay + config.runtime.shutdown_grace;
    assert!(needed + std::time::Duration::from_secs(2) <= budget, "drain {needed:?} does not fit in {budget:?}");
    assert!(!config.runtime.drain_delay.is_zero(), "a drain delay lets endpoint removal propagate");
    let admin_port = container.ports.iter().flatten().find(|p| p.name.as_deref() == Some("admin")).unwrap();
    assert_eq!(admin_port.container_port, 9901);
    // Every Service the config discovers exists, and its port name is one the Service names.
    for app in config.apps.values() {
        for v in app.versions.values() {
            let d = v.discovery.as_ref().expect("in-cluster versions are discovered");
            let service = d.service.as_deref().unwrap();
            let s = m
                .services
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(service))
                .unwrap_or_else(|| panic!("no Service {service}"));
            if let Some(weir::config::PortRef::Name(name)) = &d.port {
                assert!(s.spec.as_ref().unwrap().ports.iter().flatten().any(|p| p.name.as_deref() == Some(name)));
            }
        }
    }
}
