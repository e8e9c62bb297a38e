//! The reconciler's behaviour, through its public API only: map dumps against golden
//! files, write order from the fake maps' log, and what a sync reports.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_ebpf_common::{RevNat4, Service4Key, Service4Value, addr_to_map, port_to_map};

use super::{LbReconciler, SyncSummary};
use crate::proxy::maps::{FakeLbMaps, MapKind};
use crate::proxy::model::ObjectRef;
use crate::proxy::model::testutil::{Cond, service, slice, with_affinity};
use crate::proxy::source::{ManifestDirSource, ServiceSource};

/// Compares `actual` with `golden/<name>.txt`; `SKIFF_BLESS=1` rewrites the file.
fn assert_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/proxy/golden").join(format!("{name}.txt"));
    if std::env::var_os("SKIFF_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden file {}: {e}; create it with SKIFF_BLESS=1 cargo test -p skiff-node --lib proxy",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "map dump differs from golden file {}\n--- expected\n{expected}--- actual\n{actual}---\n\
             if the new dump is right: SKIFF_BLESS=1 cargo test -p skiff-node --lib proxy",
            path.display()
        );
    }
}

fn reconciler() -> LbReconciler<FakeLbMaps> {
    LbReconciler::new(FakeLbMaps::new())
}

fn web() -> Service {
    service("shop", "web", "10.96.0.10", &[("http", 80, "TCP")])
}

fn web_slice(endpoints: &[(&str, Cond)]) -> EndpointSlice {
    slice("shop", "web-abc", "web", &[("http", 8080, "TCP")], endpoints)
}

/// A reconciler that has programmed `web` with its three endpoints.
fn web_synced() -> LbReconciler<FakeLbMaps> {
    let mut r = reconciler();
    r.upsert_service(web());
    r.upsert_endpoint_slice(web_slice(&THREE));
    r.sync();
    r
}

fn log(r: &mut LbReconciler<FakeLbMaps>) -> Vec<String> {
    r.maps_mut().take_log().iter().map(ToString::to_string).collect()
}

const THREE: [(&str, Cond); 3] =
    [("10.244.1.2", Cond::Ready), ("10.244.1.3", Cond::Ready), ("10.244.2.4", Cond::Unset)];

#[test]
fn one_service_three_backends() {
    let mut r = reconciler();
    r.upsert_service(web());
    r.upsert_endpoint_slice(web_slice(&THREE));
    let s = r.sync();
    assert_eq!((s.services, s.frontends_written, s.errors, s.skipped), (1, 1, 0, 0));
    assert_golden("one_service", &r.maps().dump());
    // Nothing changed: a second sync plans nothing and writes nothing.
    assert_eq!(r.sync(), SyncSummary::default());
}

#[test]
fn endpoints_change_keeps_slots_of_remaining_backends() {
    let mut r = web_synced();
    // .2 goes away, .5 arrives: .5 takes .2's slot, .3 and .4 stay where they were.
    r.upsert_endpoint_slice(web_slice(&[
        ("10.244.1.3", Cond::Ready),
        ("10.244.2.4", Cond::Ready),
        ("10.244.2.5", Cond::Ready),
    ]));
    let s = r.sync();
    assert_eq!((s.frontends_written, s.backends_deleted), (1, 1));
    assert_golden("endpoints_change", &r.maps().dump());

    // Shrink to one backend: stale slots go, backends are released.
    r.upsert_endpoint_slice(web_slice(&[("10.244.2.5", Cond::Ready)]));
    r.sync();
    assert_golden("endpoints_shrink", &r.maps().dump());
}

#[test]
fn terminating_endpoint_keeps_its_backend_entry() {
    let mut r = web_synced();
    r.upsert_endpoint_slice(web_slice(&[
        ("10.244.1.2", Cond::Ready),
        ("10.244.1.3", Cond::Terminating),
        ("10.244.2.4", Cond::Ready),
        // Failing its readiness probe, not terminating: no new flows, and gone.
        ("10.244.2.9", Cond::NotReady),
    ]));
    r.sync();
    assert_golden("terminating", &r.maps().dump());

    // The pod is gone: now its backend entry goes too.
    r.upsert_endpoint_slice(web_slice(&[("10.244.1.2", Cond::Ready), ("10.244.2.4", Cond::Ready)]));
    let s = r.sync();
    assert_eq!(s.backends_deleted, 1);
    assert!(!r.maps().dump().contains("10.244.1.3"));

    // All endpoints gone: the frontend stays with count 0, so the datapath rejects.
    r.upsert_endpoint_slice(web_slice(&[]));
    r.sync();
    assert_golden("no_backends", &r.maps().dump());
}

#[test]
fn terminating_flag_is_set_only_after_the_slots_let_go() {
    let mut r = web_synced();
    log(&mut r);
    r.upsert_endpoint_slice(web_slice(&[
        ("10.244.1.2", Cond::Terminating),
        ("10.244.1.3", Cond::Ready),
        ("10.244.2.4", Cond::Ready),
    ]));
    r.sync();
    assert_eq!(
        log(&mut r),
        [
            "upsert service 10.96.0.10:80/TCP slot 1 backend=3 rev_nat=1",
            "upsert service 10.96.0.10:80/TCP slot 0 count=2 rev_nat=1 flags=0 affinity=0s",
            "delete service 10.96.0.10:80/TCP slot 3",
            "upsert backend 1 10.244.1.2:8080/TCP flags=terminating",
        ]
    );
    // Ready again: the flag is cleared *before* the backend re-enters a slot.
    r.upsert_endpoint_slice(web_slice(&THREE));
    r.sync();
    assert_eq!(
        log(&mut r),
        [
            "upsert backend 1 10.244.1.2:8080/TCP flags=0",
            "upsert service 10.96.0.10:80/TCP slot 3 backend=1 rev_nat=1",
            "upsert service 10.96.0.10:80/TCP slot 0 count=3 rev_nat=1 flags=0 affinity=0s",
        ]
    );
}

#[test]
fn session_affinity() {
    let mut r = reconciler();
    r.upsert_service(with_affinity(web(), None));
    r.upsert_service(with_affinity(service("shop", "cart", "10.96.0.11", &[("", 80, "TCP")]), Some(600)));
    r.upsert_endpoint_slice(web_slice(&THREE[..1]));
    r.sync();
    assert_golden("affinity", &r.maps().dump());
}

#[test]
fn multi_port_service() {
    let mut r = reconciler();
    r.upsert_service(service(
        "kube-system",
        "dns",
        "10.96.0.10",
        &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")],
    ));
    r.upsert_endpoint_slice(slice(
        "kube-system",
        "dns-1",
        "dns",
        &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")],
        &[("10.244.1.7", Cond::Ready), ("10.244.2.7", Cond::Ready)],
    ));
    let s = r.sync();
    assert_eq!(s.frontends_written, 3);
    assert_golden("multi_port", &r.maps().dump());
}

#[test]
fn service_deleted_in_order_and_shared_backend_survives() {
    let mut r = reconciler();
    r.upsert_service(web());
    r.upsert_endpoint_slice(web_slice(&THREE[..2]));
    // A second Service selecting one of the same pods shares its backend entry.
    r.upsert_service(service("shop", "web-canary", "10.96.0.12", &[("http", 80, "TCP")]));
    r.upsert_endpoint_slice(slice("shop", "web-canary-x", "web-canary", &[("http", 8080, "TCP")], &THREE[1..2]));
    r.sync();
    log(&mut r);

    r.delete_service(&ObjectRef::new("shop", "web"));
    r.delete_endpoint_slice(&ObjectRef::new("shop", "web-abc"));
    let s = r.sync();
    assert_eq!((s.frontends_deleted, s.backends_deleted), (1, 1));
    assert_eq!(
        log(&mut r),
        [
            "delete service 10.96.0.10:80/TCP slot 0",
            "delete service 10.96.0.10:80/TCP slot 2",
            "delete service 10.96.0.10:80/TCP slot 1",
            "delete rev_nat 1",
            "delete backend 1",
        ]
    );
    assert_golden("service_deleted", &r.maps().dump());

    // The freed index and id are not reused at once: conntrack entries may still name
    // them.
    r.upsert_service(service("shop", "new", "10.96.0.13", &[("", 443, "TCP")]));
    r.upsert_endpoint_slice(slice("shop", "new-1", "new", &[("", 8443, "TCP")], &THREE[..1]));
    r.sync();
    let dump = r.maps().dump();
    assert!(dump.contains("rev_nat 3 10.96.0.13:443"), "{dump}");
    assert!(dump.contains("backend 3 10.244.1.2:8443/TCP"), "{dump}");
}

#[test]
fn bad_input_is_skipped_and_the_rest_programmed() {
    let mut r = reconciler();
    r.upsert_service(service("shop", "mixed", "10.96.0.20", &[("sctp", 9000, "SCTP"), ("http", 80, "TCP")]));
    r.upsert_endpoint_slice(slice(
        "shop",
        "mixed-1",
        "mixed",
        &[("sctp", 9000, "SCTP"), ("http", 8080, "TCP")],
        &[("10.244.1.2", Cond::Ready), ("10.244.1.256", Cond::Ready)],
    ));
    r.upsert_service(service("shop", "huge", "10.96.0.21", &[("", 70000, "TCP")]));
    r.upsert_service(service("shop", "v6", "fd00::1", &[("", 80, "TCP")]));
    r.upsert_service(service("shop", "headless", "None", &[("", 80, "TCP")]));
    r.upsert_service(web());
    r.upsert_endpoint_slice(web_slice(&THREE));
    let s = r.sync();
    // sctp port, bad address, port 70000, IPv6-only.
    assert_eq!((s.skipped, s.errors, s.frontends_written), (4, 0, 2));
    assert_golden("bad_input", &r.maps().dump());
    // Each problem is reported against its Service, for an Event on it.
    let problems: Vec<String> = r.take_problems().iter().map(|p| format!("{}: {}", p.service, p.message)).collect();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].starts_with("shop/huge: port 70000:"), "{problems:#?}");
    assert!(problems.iter().any(|p| p.starts_with("shop/v6: no IPv4 cluster IP")), "{problems:#?}");
    assert!(r.take_problems().is_empty(), "taken once");
}

#[test]
fn map_full_skips_one_service_and_retries_it() {
    // web needs 4 service entries, api 3 and dns 2: room for web and dns only.
    let mut r = LbReconciler::new(FakeLbMaps::new().with_capacity(MapKind::Services, 7));
    r.upsert_service(service("a", "api", "10.96.0.30", &[("", 80, "TCP")]));
    r.upsert_endpoint_slice(slice(
        "a",
        "api-1",
        "api",
        &[("", 8080, "TCP")],
        &[("10.244.3.1", Cond::Ready), ("10.244.3.2", Cond::Ready)],
    ));
    r.upsert_service(service("b", "dns", "10.96.0.31", &[("", 53, "UDP")]));
    r.upsert_endpoint_slice(slice("b", "dns-1", "dns", &[("", 53, "UDP")], &[("10.244.3.3", Cond::Ready)]));
    r.upsert_service(web());
    r.upsert_endpoint_slice(web_slice(&THREE));
    // Processing order is a/api, b/dns, shop/web: api fits (3), dns fits (5), web
    // does not (needs 4 more).
    let s = r.sync();
    assert_eq!((s.frontends_written, s.errors), (2, 1));
    assert!(r.has_pending());
    // web's partial entries were removed again: no slots, no backends, no rev_nat.
    assert_golden("map_full", &r.maps().dump());

    // Still full: the retry fails the same way and changes nothing.
    let before = r.maps().dump();
    let s = r.sync();
    assert_eq!((s.services, s.errors), (1, 1));
    assert_eq!(r.maps().dump(), before);
    // Both failed syncs report web, with the same message (a reporter dedups on it).
    let problems = r.take_problems();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert_eq!(problems[0], problems[1]);
    assert_eq!(problems[0].service.to_string(), "shop/web");
    assert!(problems[0].message.contains("is full"), "{problems:#?}");

    // Room again (an operator raised the capacity): the retry programs web.
    r.maps_mut().set_capacity(MapKind::Services, None);
    let s = r.sync();
    assert_eq!((s.services, s.frontends_written, s.errors), (1, 1, 0));
    assert!(!r.has_pending());
    assert_golden("map_full_retried", &r.maps().dump());
}

#[test]
fn map_full_while_growing_keeps_the_old_visible_state() {
    let mut r = LbReconciler::new(FakeLbMaps::new().with_capacity(MapKind::Services, 4));
    r.upsert_service(web());
    r.upsert_endpoint_slice(web_slice(&THREE[..2]));
    r.sync();
    let before = r.maps().dump();
    // Growing to 4 backends needs 5 entries: slot 3 fits, slot 4 does not.
    r.upsert_endpoint_slice(web_slice(&[
        ("10.244.1.2", Cond::Ready),
        ("10.244.1.3", Cond::Ready),
        ("10.244.2.4", Cond::Ready),
        ("10.244.2.5", Cond::Ready),
    ]));
    let s = r.sync();
    assert_eq!(s.errors, 1);
    // Slot 3 was removed again and the two new backends released.
    assert_eq!(r.maps().dump(), before);
}

#[test]
fn backends_map_full() {
    let mut r = LbReconciler::new(FakeLbMaps::new().with_capacity(MapKind::Backends, 3));
    r.upsert_service(web());
    r.upsert_endpoint_slice(web_slice(&THREE));
    r.upsert_service(service("z", "other", "10.96.0.40", &[("", 80, "TCP")]));
    r.upsert_endpoint_slice(slice("z", "other-1", "other", &[("", 80, "TCP")], &[("10.244.9.1", Cond::Ready)]));
    let s = r.sync();
    assert_eq!((s.frontends_written, s.errors), (1, 1));
    let dump = r.maps().dump();
    assert!(dump.contains("service 10.96.0.10:80/TCP slot 0 count=3"), "{dump}");
    assert!(!dump.contains("10.96.0.40"), "{dump}");
}

/// The objects of the restart test: `web` with a terminating endpoint, `cart` with
/// affinity. Fed before and after the restart alike.
fn feed_web_and_cart(r: &mut LbReconciler<FakeLbMaps>) {
    r.upsert_service(web());
    r.upsert_endpoint_slice(web_slice(&[
        ("10.244.1.2", Cond::Ready),
        ("10.244.1.3", Cond::Terminating),
        ("10.244.2.4", Cond::Ready),
    ]));
    r.upsert_service(with_affinity(service("shop", "cart", "10.96.0.11", &[("", 80, "TCP")]), Some(60)));
    r.upsert_endpoint_slice(slice("shop", "cart-1", "cart", &[("", 80, "TCP")], &THREE[..1]));
}

#[test]
fn adopt_after_restart_keeps_ids_and_writes_nothing() {
    let mut r = reconciler();
    // Create and delete a first Service so ids and indices do not start at 1.
    r.upsert_service(service("x", "gone", "10.96.0.50", &[("", 80, "TCP")]));
    r.upsert_endpoint_slice(slice("x", "gone-1", "gone", &[("", 80, "TCP")], &[("10.244.5.5", Cond::Ready)]));
    r.sync();
    feed_web_and_cart(&mut r);
    r.sync();
    r.delete_service(&ObjectRef::new("x", "gone"));
    r.sync();
    let before = r.maps().dump();
    assert_golden("adopt_before_restart", &before);

    // Restart: a new reconciler over the same maps, fed the same objects.
    let mut maps = r.into_maps();
    maps.take_log();
    let mut r = LbReconciler::adopt(maps).unwrap();
    feed_web_and_cart(&mut r);
    let s = r.sync();
    assert_eq!(log(&mut r), Vec::<String>::new(), "an unchanged restart must not write");
    assert_eq!((s.frontends_unchanged, s.errors), (2, 0));
    assert_eq!(r.maps().dump(), before);

    // New backends after the restart get ids that do not collide with adopted ones.
    r.upsert_endpoint_slice(web_slice(&[
        ("10.244.1.2", Cond::Ready),
        ("10.244.2.4", Cond::Ready),
        ("10.244.7.7", Cond::Ready),
    ]));
    r.sync();
    assert_golden("adopt_after_change", &r.maps().dump());
}

#[test]
fn adopt_removes_what_no_service_wants() {
    let mut r = reconciler();
    r.upsert_service(web());
    r.upsert_endpoint_slice(web_slice(&THREE));
    r.upsert_service(service("old", "stale", "10.96.0.60", &[("", 80, "TCP")]));
    r.upsert_endpoint_slice(slice("old", "stale-1", "stale", &[("", 80, "TCP")], &[("10.244.6.6", Cond::Ready)]));
    r.sync();
    let mut maps = r.into_maps();
    // Leftovers of a crashed run: an orphan rev_nat entry and an SCTP slot.
    maps.rev_nat.insert(77, RevNat4::default());
    maps.services
        .insert(Service4Key::new(addr_to_map([10, 96, 0, 99]), port_to_map(9), 132, 0), Service4Value::default());
    maps.take_log();

    // After the restart only web still exists.
    let mut r = LbReconciler::adopt(maps).unwrap();
    r.upsert_service(web());
    r.upsert_endpoint_slice(web_slice(&THREE));
    let s = r.sync();
    assert_eq!((s.frontends_deleted, s.backends_deleted, s.errors), (1, 1, 0));
    assert_golden("adopt_removes_stale", &r.maps().dump());
    assert!(!r.has_pending());
}

#[test]
fn write_order_for_an_update() {
    let mut r = web_synced();
    assert_eq!(
        log(&mut r),
        [
            "upsert rev_nat 1 10.96.0.10:80",
            "upsert backend 1 10.244.1.2:8080/TCP flags=0",
            "upsert backend 2 10.244.1.3:8080/TCP flags=0",
            "upsert backend 3 10.244.2.4:8080/TCP flags=0",
            "upsert service 10.96.0.10:80/TCP slot 1 backend=1 rev_nat=1",
            "upsert service 10.96.0.10:80/TCP slot 2 backend=2 rev_nat=1",
            "upsert service 10.96.0.10:80/TCP slot 3 backend=3 rev_nat=1",
            "upsert service 10.96.0.10:80/TCP slot 0 count=3 rev_nat=1 flags=0 affinity=0s",
        ]
    );
    // Replace two backends by one new: backends, slots, count, stale slots, release.
    r.upsert_endpoint_slice(web_slice(&[("10.244.1.3", Cond::Ready), ("10.244.9.9", Cond::Ready)]));
    r.sync();
    assert_eq!(
        log(&mut r),
        [
            "upsert backend 4 10.244.9.9:8080/TCP flags=0",
            "upsert service 10.96.0.10:80/TCP slot 1 backend=4 rev_nat=1",
            "upsert service 10.96.0.10:80/TCP slot 0 count=2 rev_nat=1 flags=0 affinity=0s",
            "delete service 10.96.0.10:80/TCP slot 3",
            "delete backend 1",
            "delete backend 3",
        ]
    );
}

#[test]
fn work_is_proportional_to_the_change() {
    let mut r = reconciler();
    for i in 0..100u8 {
        let name = format!("svc{i:03}");
        r.upsert_service(service("load", &name, &format!("10.96.1.{i}"), &[("", 80, "TCP")]));
        r.upsert_endpoint_slice(slice(
            "load",
            &format!("{name}-1"),
            &name,
            &[("", 8080, "TCP")],
            &[(&format!("10.244.10.{i}"), Cond::Ready), (&format!("10.244.11.{i}"), Cond::Ready)],
        ));
    }
    let s = r.sync();
    assert_eq!(s.frontends_written, 100);
    log(&mut r);

    // Re-feeding identical objects (a resync) marks nothing dirty.
    r.upsert_service(service("load", "svc042", "10.96.1.42", &[("", 80, "TCP")]));
    assert!(!r.has_pending());

    // One endpoint of one Service changes.
    r.upsert_endpoint_slice(slice(
        "load",
        "svc042-1",
        "svc042",
        &[("", 8080, "TCP")],
        &[("10.244.10.42", Cond::Ready), ("10.244.12.42", Cond::Ready)],
    ));
    let s = r.sync();
    assert_eq!((s.services, s.frontends_written, s.frontends_unchanged), (1, 1, 0));
    let writes = log(&mut r);
    assert_eq!(
        writes,
        [
            "upsert backend 201 10.244.12.42:8080/TCP flags=0",
            "upsert service 10.96.1.42:80/TCP slot 2 backend=201 rev_nat=43",
            "delete backend 86",
        ]
    );
    assert_eq!(s.map_writes, writes.len());
}

#[test]
fn conflicting_frontend_waits_for_the_owner() {
    let mut r = reconciler();
    r.upsert_service(service("a", "first", "10.96.0.70", &[("", 80, "TCP")]));
    r.upsert_service(service("b", "second", "10.96.0.70", &[("", 80, "TCP")]));
    let s = r.sync();
    assert_eq!((s.frontends_written, s.skipped), (1, 1));
    r.delete_service(&ObjectRef::new("a", "first"));
    r.sync();
    // The deletion woke "second", which takes the frontend over on the next sync.
    assert!(r.has_pending());
    let s = r.sync();
    assert_eq!(s.frontends_written, 1);
    // A new owner, a new reverse-NAT index (the first one's is not reused at once).
    let dump = r.maps().dump();
    assert!(dump.contains("service 10.96.0.70:80/TCP slot 0 count=0 rev_nat=2"), "{dump}");
}

#[test]
fn slice_relabelled_to_another_service() {
    let mut r = reconciler();
    r.upsert_service(web());
    r.upsert_service(service("shop", "web2", "10.96.0.80", &[("http", 80, "TCP")]));
    r.upsert_endpoint_slice(web_slice(&THREE[..1]));
    r.sync();
    r.upsert_endpoint_slice(slice("shop", "web-abc", "web2", &[("http", 8080, "TCP")], &THREE[..1]));
    let s = r.sync();
    assert_eq!(s.services, 2);
    let dump = r.maps().dump();
    assert!(dump.contains("service 10.96.0.10:80/TCP slot 0 count=0"), "{dump}");
    assert!(dump.contains("service 10.96.0.80:80/TCP slot 0 count=1"), "{dump}");
}

#[test]
fn demo_manifests_through_the_dir_source() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/proxy/testdata/demo");
    let mut source = ManifestDirSource::new(dir);
    let mut r = reconciler();
    for event in source.poll().unwrap() {
        r.apply(event);
    }
    let s = r.sync();
    assert_eq!(s.errors, 0);
    assert_golden("demo", &r.maps().dump());
}
