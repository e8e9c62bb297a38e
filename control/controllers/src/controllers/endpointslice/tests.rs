use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;

fn svc(target: IntOrString) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            uid: Some("svc-uid".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                target_port: Some(target),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i32) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("{name}-uid")),
            labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("n1".into()),
            containers: vec![Container {
                name: "c".into(),
                ports: Some(vec![ContainerPort {
                    name: Some(port_name.into()),
                    container_port: port,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(ip.into()).filter(|i: &String| !i.is_empty()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]).filter(|_| !ip.is_empty()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    })
}

fn no_zone(_: &str) -> Option<String> {
    None
}

fn conditions(ep: &Endpoint) -> (bool, bool, bool) {
    let c = ep.conditions.as_ref().unwrap();
    (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
}

/// Creates the planned slices as the server would (names, resourceVersions).
fn materialise(plan: &SlicePlan, existing: &mut Vec<EndpointSlice>) {
    existing.retain(|s| !plan.delete.contains(s.metadata.name.as_ref().unwrap()));
    for u in &plan.update {
        let i = existing.iter().position(|s| s.metadata.name == u.metadata.name).unwrap();
        existing[i] = u.clone();
    }
    for (i, c) in plan.create.iter().enumerate() {
        let mut c = c.clone();
        c.metadata.name = Some(format!("web-{}{i}", existing.len()));
        existing.push(c);
    }
}

#[test]
fn conditions_follow_readiness_and_termination() {
    let s = svc(IntOrString::Int(8080));
    let mut terminating = (*pod("c", "10.0.0.3", true, "http", 8080)).clone();
    terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    let mut other = (*pod("d", "10.0.0.4", true, "http", 8080)).clone();
    other.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
    let pods = vec![
        pod("a", "10.0.0.1", true, "http", 8080),
        pod("b", "10.0.0.2", false, "http", 8080),
        Arc::new(terminating),
        Arc::new(other),
        pod("e", "", true, "http", 8080),
    ];
    let d = desired_endpoints(&s, &pods, &no_zone);
    assert_eq!(d.len(), 1);
    let (key, eps) = d.iter().next().unwrap();
    assert_eq!(key.ports[0].port, 8080);
    assert_eq!(key.ports[0].name, "http");
    let got: Vec<_> = eps.iter().map(|e| (e.addresses[0].as_str(), conditions(e))).collect();
    assert_eq!(
        got,
        vec![("10.0.0.1", (true, true, false)), ("10.0.0.2", (false, false, false)), ("10.0.0.3", (false, true, true)),]
    );
    assert_eq!(eps[0].target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
    assert_eq!(eps[0].node_name.as_deref(), Some("n1"));

    // publishNotReadyAddresses: everyone is ready.
    let mut s2 = s.clone();
    s2.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    let d = desired_endpoints(&s2, &pods, &no_zone);
    assert!(d.values().next().unwrap().iter().all(|e| conditions(e).0));

    // Legacy Endpoints: ready / not ready, terminating left out.
    let subsets = desired_subsets(&s, &pods);
    assert_eq!(subsets.len(), 1);
    let ips = |a: &Option<Vec<EndpointAddress>>| a.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>();
    assert_eq!(ips(&subsets[0].addresses), vec!["10.0.0.1"]);
    assert_eq!(ips(&subsets[0].not_ready_addresses), vec!["10.0.0.2"]);
    assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 8080);
}

#[test]
fn named_ports_resolve_per_pod_into_separate_slices() {
    let s = svc(IntOrString::String("web".into()));
    let pods = vec![
        pod("a", "10.0.0.1", true, "web", 8080),
        pod("b", "10.0.0.2", true, "web", 9090),
        pod("c", "10.0.0.3", true, "other", 7070),
    ];
    let d = desired_endpoints(&s, &pods, &no_zone);
    let mut by_port: Vec<(Vec<i32>, Vec<String>)> = d
        .iter()
        .map(|(k, v)| (k.ports.iter().map(|p| p.port).collect(), v.iter().map(|e| e.addresses[0].clone()).collect()))
        .collect();
    by_port.sort();
    assert_eq!(
        by_port,
        vec![
            (vec![], vec!["10.0.0.3".to_string()]),
            (vec![8080], vec!["10.0.0.1".to_string()]),
            (vec![9090], vec!["10.0.0.2".to_string()]),
        ]
    );
    let plan = plan_slices(&s, d, &[]);
    assert_eq!(plan.create.len(), 3);
    assert_eq!(desired_subsets(&s, &pods).len(), 3);
}

#[test]
fn slices_are_capped_stable_and_written_only_on_change() {
    let s = svc(IntOrString::Int(8080));
    let pods: Vec<Arc<Pod>> =
        (0..250).map(|i| pod(&format!("p{i}"), &format!("10.1.{}.{}", i / 200, i % 200), true, "http", 8080)).collect();
    let mut existing = Vec::new();
    let plan = plan_slices(&s, desired_endpoints(&s, &pods, &no_zone), &[]);
    assert_eq!(plan.create.len(), 3);
    assert!(plan.create.iter().all(|c| c.endpoints.len() <= MAX_ENDPOINTS_PER_SLICE));
    let c = &plan.create[0];
    assert_eq!(c.metadata.generate_name.as_deref(), Some("web-"));
    let labels = c.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[SERVICE_NAME_LABEL], "web");
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
    assert_eq!(c.metadata.owner_references.as_ref().unwrap()[0].uid, "svc-uid");
    materialise(&plan, &mut existing);

    // Nothing changed: nothing to write.
    let refs: Vec<&EndpointSlice> = existing.iter().collect();
    assert!(plan_slices(&s, desired_endpoints(&s, &pods, &no_zone), &refs).is_empty());

    // One pod becomes not ready: exactly one slice is updated.
    let mut pods2 = pods.clone();
    pods2[7] = pod("p7", "10.1.0.7", false, "http", 8080);
    let plan = plan_slices(&s, desired_endpoints(&s, &pods2, &no_zone), &refs);
    assert_eq!((plan.create.len(), plan.update.len(), plan.delete.len()), (0, 1, 0));

    // A new pod fills the slice with room instead of opening a new one.
    let mut pods3 = pods.clone();
    pods3.push(pod("new", "10.9.9.9", true, "http", 8080));
    let plan = plan_slices(&s, desired_endpoints(&s, &pods3, &no_zone), &refs);
    assert_eq!((plan.create.len(), plan.update.len(), plan.delete.len()), (0, 1, 0));

    // All pods gone: one empty placeholder slice (no ports) replaces them, and
    // planning again against it changes nothing.
    let plan = plan_slices(&s, desired_endpoints(&s, &[], &no_zone), &refs);
    assert_eq!((plan.create.len(), plan.update.len(), plan.delete.len()), (0, 1, 2));
    assert!(plan.update[0].endpoints.is_empty());
    assert!(plan.update[0].ports.as_ref().unwrap().is_empty());
    let mut empty = existing.clone();
    materialise(&plan, &mut empty);
    let empty_refs: Vec<&EndpointSlice> = empty.iter().collect();
    assert!(plan_slices(&s, desired_endpoints(&s, &[], &no_zone), &empty_refs).is_empty());

    // The target port changes: the old slices are rewritten with the new port.
    let s2 = svc(IntOrString::Int(9000));
    let plan = plan_slices(&s2, desired_endpoints(&s2, &pods, &no_zone), &refs);
    assert_eq!((plan.create.len(), plan.update.len(), plan.delete.len()), (0, 3, 0));
    assert!(plan.update.iter().all(|u| u.ports.as_ref().unwrap()[0].port == Some(9000)));
}

#[test]
fn duplicated_endpoints_from_a_stale_view_are_dropped() {
    let s = svc(IntOrString::Int(8080));
    let pods = vec![pod("a", "10.0.0.1", true, "http", 8080)];
    let plan = plan_slices(&s, desired_endpoints(&s, &pods, &no_zone), &[]);
    let mut existing = Vec::new();
    materialise(&plan, &mut existing);
    materialise(&plan, &mut existing);
    assert_eq!(existing.len(), 2);
    let refs: Vec<&EndpointSlice> = existing.iter().collect();
    let plan = plan_slices(&s, desired_endpoints(&s, &pods, &no_zone), &refs);
    assert_eq!((plan.create.len(), plan.update.len(), plan.delete.len()), (0, 0, 1));
}

#[test]
fn services_without_selector_get_nothing() {
    let mut s = svc(IntOrString::Int(8080));
    s.spec.as_mut().unwrap().selector = None;
    let pods = vec![pod("a", "10.0.0.1", true, "http", 8080)];
    assert!(desired_endpoints(&s, &pods, &no_zone).is_empty());
    assert!(desired_subsets(&s, &pods).is_empty());
}
