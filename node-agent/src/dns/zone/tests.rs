use std::str::FromStr;

use super::*;

fn service(ns: &str, name: &str, spec: serde_json::Value) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})).unwrap(),
    )
}

/// A slice of `svc` with `(address, hostname, ready)` endpoints and one named port.
fn slice(ns: &str, name: &str, svc: &str, endpoints: &[(&str, Option<&str>, bool)]) -> Arc<EndpointSlice> {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(addr, host, ready)| serde_json::json!({"addresses": [addr], "hostname": host, "conditions": {"ready": ready}}))
        .collect();
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap(),
    )
}

fn zone() -> Zone {
    Zone::new("cluster.local", 5).unwrap()
}

fn name(s: &str) -> LowerName {
    LowerName::from_str(s).unwrap()
}

/// The record data of a lookup, as text, sorted.
fn data(zone: &Zone, n: &str, t: RecordType) -> Vec<String> {
    match zone.lookup(&name(n), t) {
        Lookup::Records(records) => {
            let mut out: Vec<String> = records.iter().map(|r| r.data().to_string()).collect();
            out.sort();
            out
        }
        other => panic!("{n} {t}: {other:?}"),
    }
}

fn web() -> Arc<Service> {
    service(
        "shop",
        "web",
        serde_json::json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}),
    )
}

#[test]
fn a_cluster_ip_service_has_its_address_srv_and_ptr() {
    let mut z = zone();
    z.apply_service(web());
    assert_eq!(data(&z, "web.shop.svc.cluster.local.", RecordType::A), ["10.96.0.20"]);
    assert_eq!(data(&z, "WEB.Shop.svc.cluster.local.", RecordType::A), ["10.96.0.20"], "names are case-blind");
    assert_eq!(
        data(&z, "_http._tcp.web.shop.svc.cluster.local.", RecordType::SRV),
        ["0 100 80 web.shop.svc.cluster.local."]
    );
    assert_eq!(data(&z, "20.0.96.10.in-addr.arpa.", RecordType::PTR), ["web.shop.svc.cluster.local."]);
    assert_eq!(z.lookup(&name("web.shop.svc.cluster.local."), RecordType::AAAA), Lookup::NoData);
    assert_eq!(z.lookup(&name("shop.svc.cluster.local."), RecordType::A), Lookup::NoData);
    assert_eq!(z.lookup(&name("svc.cluster.local."), RecordType::A), Lookup::NoData);
    assert_eq!(z.lookup(&name("nope.shop.svc.cluster.local."), RecordType::A), Lookup::NxDomain);
    assert_eq!(z.lookup(&name("other.svc.cluster.local."), RecordType::A), Lookup::NxDomain);
    assert_eq!(z.lookup(&name("example.com."), RecordType::A), Lookup::NotOurs);
    assert_eq!(z.lookup(&name("9.9.9.9.in-addr.arpa."), RecordType::PTR), Lookup::NxDomain);
    assert!(matches!(z.lookup(&name("cluster.local."), RecordType::SOA), Lookup::Records(_)));
}

#[test]
fn a_change_rewrites_only_that_service_and_a_delete_removes_everything() {
    let mut z = zone();
    z.apply_service(web());
    z.apply_service(service("shop", "db", serde_json::json!({"clusterIP": "10.96.0.21"})));
    z.apply_service(service("shop", "web", serde_json::json!({"clusterIP": "10.96.0.30", "ports": [{"port": 80}]})));
    assert_eq!(data(&z, "web.shop.svc.cluster.local.", RecordType::A), ["10.96.0.30"]);
    assert_eq!(z.lookup(&name("20.0.96.10.in-addr.arpa."), RecordType::PTR), Lookup::NxDomain);
    assert_eq!(z.lookup(&name("_http._tcp.web.shop.svc.cluster.local."), RecordType::SRV), Lookup::NxDomain);
    assert_eq!(data(&z, "db.shop.svc.cluster.local.", RecordType::A), ["10.96.0.21"]);

    z.delete_service(&web());
    z.delete_service(&service("shop", "db", serde_json::json!({})));
    assert!(z.is_empty(), "{z:?}");
    assert_eq!(z.lookup(&name("shop.svc.cluster.local."), RecordType::A), Lookup::NxDomain, "no Service left there");
    assert!(z.services.is_empty());
}

#[test]
fn a_headless_service_answers_its_ready_endpoints_and_their_stable_names() {
    let mut z = zone();
    z.apply_service(service("db", "pg", serde_json::json!({"clusterIP": "None"})));
    z.apply_slice(slice(
        "db",
        "pg-1",
        "pg",
        &[("10.244.1.5", Some("pg-0"), true), ("10.244.2.6", Some("pg-1"), false), ("10.244.1.7", None, true)],
    ));
    assert_eq!(data(&z, "pg.db.svc.cluster.local.", RecordType::A), ["10.244.1.5", "10.244.1.7"]);
    assert_eq!(data(&z, "pg-0.pg.db.svc.cluster.local.", RecordType::A), ["10.244.1.5"]);
    assert_eq!(data(&z, "10-244-1-7.pg.db.svc.cluster.local.", RecordType::A), ["10.244.1.7"]);
    assert_eq!(z.lookup(&name("pg-1.pg.db.svc.cluster.local."), RecordType::A), Lookup::NxDomain, "not ready");
    assert_eq!(
        data(&z, "_http._tcp.pg.db.svc.cluster.local.", RecordType::SRV),
        ["0 50 8080 10-244-1-7.pg.db.svc.cluster.local.", "0 50 8080 pg-0.pg.db.svc.cluster.local."]
    );
    assert_eq!(data(&z, "5.1.244.10.in-addr.arpa.", RecordType::PTR), ["pg-0.pg.db.svc.cluster.local."]);

    // publishNotReadyAddresses: every endpoint.
    z.apply_service(service("db", "pg", serde_json::json!({"clusterIP": "None", "publishNotReadyAddresses": true})));
    assert_eq!(data(&z, "pg-1.pg.db.svc.cluster.local.", RecordType::A), ["10.244.2.6"]);
    // The slice goes: only the Service's own (empty) name is left.
    z.delete_slice(&slice("db", "pg-1", "pg", &[]));
    assert_eq!(z.lookup(&name("pg.db.svc.cluster.local."), RecordType::A), Lookup::NxDomain);
}

#[test]
fn slices_before_their_service_wait_for_it() {
    let mut z = zone();
    z.apply_slice(slice("db", "pg-1", "pg", &[("10.244.1.5", Some("pg-0"), true)]));
    assert_eq!(z.lookup(&name("pg.db.svc.cluster.local."), RecordType::A), Lookup::NxDomain);
    z.apply_service(service("db", "pg", serde_json::json!({"clusterIP": "None"})));
    assert_eq!(data(&z, "pg.db.svc.cluster.local.", RecordType::A), ["10.244.1.5"]);
}

#[test]
fn external_names_are_cnames_and_pods_have_dashed_names() {
    let mut z = zone();
    z.apply_service(service(
        "default",
        "ext",
        serde_json::json!({"type": "ExternalName", "externalName": "db.example.com"}),
    ));
    assert_eq!(data(&z, "ext.default.svc.cluster.local.", RecordType::A), ["db.example.com."]);
    assert_eq!(data(&z, "ext.default.svc.cluster.local.", RecordType::CNAME), ["db.example.com."]);
    assert_eq!(data(&z, "10-244-1-5.default.pod.cluster.local.", RecordType::A), ["10.244.1.5"]);
    assert_eq!(z.lookup(&name("10-244-1-5.default.pod.cluster.local."), RecordType::AAAA), Lookup::NoData);
    assert_eq!(z.lookup(&name("not-an-ip.default.pod.cluster.local."), RecordType::A), Lookup::NxDomain);
}
