use k8s_openapi::api::core::v1::{Container, ContainerPort, ObjectReference, PodCondition, PodSpec, PodStatus};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::*;

fn slice(name: &str, eps: &[(&str, &str, bool, bool)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), ..Default::default() },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort { name: Some("http".into()), port: Some(8080), ..Default::default() }]),
        endpoints: eps
            .iter()
            .map(|(pod, ip, ready, terminating)| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    serving: Some(*ready || *terminating),
                    terminating: Some(*terminating),
                }),
                target_ref: Some(ObjectReference { name: Some(pod.to_string()), ..Default::default() }),
                ..Default::default()
            })
            .collect(),
    }
}

fn names(eps: &[Discovered]) -> Vec<(&str, bool)> {
    eps.iter().map(|e| (e.name.as_str(), e.ready)).collect()
}

#[test]
fn initial_list_is_reported_once_complete() {
    let mut s = Store::new(Some(PortRef::Name("http".into())));
    assert_eq!(s.apply::<EndpointSlice>(Event::Init), None);
    assert_eq!(s.apply(Event::InitApply(slice("a", &[("p1", "10.0.0.1", true, false)]))), None);
    assert_eq!(s.apply(Event::InitApply(slice("b", &[("p2", "10.0.0.2", false, false)]))), None);
    let list = s.apply::<EndpointSlice>(Event::InitDone).unwrap();
    assert_eq!(names(&list), [("p1", true), ("p2", false)]);
    assert_eq!(list[0].addr, "10.0.0.1:8080".parse().unwrap());
    assert!(s.synced());
}

#[test]
fn changes_after_sync_are_reported_and_no_ops_are_not() {
    let mut s = Store::new(None);
    s.apply::<EndpointSlice>(Event::Init);
    s.apply(Event::InitApply(slice("a", &[("p1", "10.0.0.1", true, false)])));
    s.apply::<EndpointSlice>(Event::InitDone);
    // p1 terminates: serving, not ready -> reported as not ready, terminating.
    let list = s.apply(Event::Apply(slice("a", &[("p1", "10.0.0.1", false, true)]))).unwrap();
    assert_eq!(names(&list), [("p1", false)]);
    assert!(list[0].terminating);
    assert_eq!(s.apply(Event::Apply(slice("a", &[("p1", "10.0.0.1", false, true)]))), None, "same list");
    let list = s.apply(Event::Delete(slice("a", &[]))).unwrap();
    assert!(list.is_empty());
}

#[test]
fn a_relist_drops_what_vanished_while_the_watch_was_down() {
    let mut s = Store::new(None);
    s.apply::<EndpointSlice>(Event::Init);
    s.apply(Event::InitApply(slice("a", &[("p1", "10.0.0.1", true, false)])));
    s.apply(Event::InitApply(slice("b", &[("p2", "10.0.0.2", true, false)])));
    s.apply::<EndpointSlice>(Event::InitDone);
    // The watch broke; slice b was deleted meanwhile; the re-list only has a and a new c.
    assert_eq!(s.apply::<EndpointSlice>(Event::Init), None);
    assert_eq!(s.apply(Event::InitApply(slice("a", &[("p1", "10.0.0.1", true, false)]))), None);
    assert_eq!(s.apply(Event::InitApply(slice("c", &[("p3", "10.0.0.3", true, false)]))), None);
    let list = s.apply::<EndpointSlice>(Event::InitDone).unwrap();
    assert_eq!(names(&list), [("p1", true), ("p3", true)]);
}

#[test]
fn a_pod_in_two_slices_counts_once_ready_wins() {
    let mut s = Store::new(None);
    s.apply::<EndpointSlice>(Event::Init);
    s.apply(Event::InitApply(slice("a", &[("p1", "10.0.0.1", false, false)])));
    s.apply(Event::InitApply(slice("b", &[("p1", "10.0.0.1", true, false)])));
    assert_eq!(names(&s.apply::<EndpointSlice>(Event::InitDone).unwrap()), [("p1", true)]);
}

#[test]
fn slices_without_the_port_or_of_fqdn_type_list_nothing() {
    let mut other_port = slice("a", &[("p1", "10.0.0.1", true, false)]);
    assert!(other_port.endpoints(Some(&PortRef::Name("grpc".into()))).is_empty());
    assert_eq!(other_port.endpoints(Some(&PortRef::Number(9000)))[0].addr.port(), 9000);
    other_port.address_type = "FQDN".into();
    assert!(other_port.endpoints(None).is_empty());
    let mut v6 = slice("a", &[("p1", "fd00::1", true, false)]);
    v6.address_type = "IPv6".into();
    assert_eq!(v6.endpoints(None)[0].addr, "[fd00::1]:8080".parse().unwrap());
}

fn pod(name: &str, ip: Option<&str>, ready: bool, deleting: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            deletion_timestamp: deleting.then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ports: Some(vec![
                    ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() },
                    ContainerPort { name: Some("probe".into()), container_port: 8086, ..Default::default() },
                ]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ip: ip.map(str::to_string),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

#[test]
fn pods_give_ip_named_port_and_readiness() {
    let http = Some(PortRef::Name("http".into()));
    let eps = pod("my-app-1", Some("10.1.0.5"), true, false).endpoints(http.as_ref());
    assert_eq!(
        eps,
        [Discovered {
            name: "my-app-1".into(),
            addr: "10.1.0.5:8080".parse().unwrap(),
            ready: true,
            terminating: false
        }]
    );
    assert!(!pod("p", Some("10.1.0.5"), false, false).endpoints(http.as_ref())[0].ready);
    let deleting = pod("p", Some("10.1.0.5"), true, true).endpoints(http.as_ref());
    assert!(!deleting[0].ready && deleting[0].terminating);
    assert!(pod("p", None, false, false).endpoints(http.as_ref()).is_empty(), "no IP yet");
    assert!(pod("p", Some("10.1.0.5"), true, false).endpoints(None).is_empty(), "two ports, none named");
}
