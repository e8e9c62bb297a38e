//! Tests of the etcd store backend against real etcd processes (Debian's etcd 3.4 at
//! /usr/bin/etcd, or `$SKIFF_ETCD`; etcdctl next to it), never a mock: the shared
//! conformance suite on one member, restart without loss, key prefixes, the start-up
//! error, and skiff-control with kubectl on a three-member cluster that loses its leader.
//!
//! Every etcd and skiff-control process is owned by a guard that kills it on drop, so
//! none outlives a test, even one that panics. Everything listens on 127.0.0.1 only.
//! Without etcd installed the tests that need it fail, saying what to install.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff_control::store::{EtcdConfig, EtcdStore, Store};

mod support;

use support::etcd::Etcd;
use support::{Server, free_port};

/// Store logs in the test output (shown for failing tests, or with --nocapture), at
/// `$RUST_LOG` or debug for the store.
fn logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "skiff_control::store=debug".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

fn cfg(endpoints: Vec<String>, prefix: &str) -> EtcdConfig {
    logs();
    EtcdConfig { endpoints, prefix: prefix.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_conformance_suite() {
    let etcd = Etcd::start(1);
    let store = EtcdStore::connect(&cfg(etcd.urls(), "/skiff")).await.unwrap();
    skiff_control::store::conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_loses_nothing() {
    let mut etcd = Etcd::start(1);
    let (a, b) = {
        let store = EtcdStore::connect(&cfg(etcd.urls(), "/skiff")).await.unwrap();
        let a = store.create("/r/a", Bytes::from_static(b"1")).await.unwrap();
        store.update("/r/a", Bytes::from_static(b"2"), Some(a.mod_revision)).await.unwrap();
        let b = store.create("/r/b", Bytes::from_static(b"x")).await.unwrap();
        store.delete("/r/b", None).await.unwrap();
        let b2 = store.create("/r/b", Bytes::from_static(b"y")).await.unwrap();
        (store.get("/r/a").await.unwrap().unwrap(), (b, b2))
    };
    let rev = b.1.mod_revision;
    etcd.restart(0);
    let store = EtcdStore::connect(&cfg(etcd.urls(), "/skiff")).await.unwrap();
    assert_eq!(store.get("/r/a").await.unwrap().unwrap(), a, "value and revisions survive");
    assert_eq!(store.get("/r/b").await.unwrap().unwrap(), b.1);
    assert_eq!(store.revision().await.unwrap(), rev, "the revision survives");
    let page = store.list("/r/", None, 0).await.unwrap();
    assert_eq!(page.kvs.len(), 2);
    // Unlike the embedded store, etcd keeps history across restarts.
    let mut w = store.watch("/r/", b.0.mod_revision - 1).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(e.kv.mod_revision, b.0.mod_revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_prefixes_keep_clusters_apart() {
    let etcd = Etcd::start(1);
    let one = EtcdStore::connect(&cfg(etcd.urls(), "/one/")).await.unwrap();
    let two = EtcdStore::connect(&cfg(etcd.urls(), "/two")).await.unwrap();
    one.create("/k", Bytes::from_static(b"1")).await.unwrap();
    assert!(two.get("/k").await.unwrap().is_none(), "another prefix does not see the key");
    two.create("/k", Bytes::from_static(b"2")).await.unwrap();
    assert_eq!(one.list("/", None, 0).await.unwrap().kvs.len(), 1);
    let out = etcd.etcdctl(&etcd.urls(), &["get", "--prefix", "--keys-only", "/"]);
    let keys = String::from_utf8_lossy(&out.stdout);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys, ["/one/k", "/two/k"], "keys are stored under their prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_a_clear_error() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let err = EtcdStore::connect(&cfg(vec![url.clone()], "/skiff")).await.unwrap_err().to_string();
    assert!(err.contains(&url) && err.contains("check that etcd is running"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "gave up in bounded time");
    let err = EtcdStore::connect(&cfg(vec!["127.0.0.1:2379".into()], "/skiff")).await.unwrap_err().to_string();
    assert!(err.contains("http://host:port"), "{err}");
}

/// skiff-control on every member of `etcd`.
fn start_on(etcd: &Etcd) -> Server {
    Server::start_with(&["--etcd-servers", &etcd.urls().join(",")])
}

/// Restarts skiff-control; a fresh kubeconfig proves the new process is the one answering.
fn restart(s: &mut Server) {
    s.stop();
    let _ = std::fs::remove_file(s.kubeconfig());
    s.spawn();
}

/// Runs kubectl like `Server::ok`; returns stdout and how long it took.
fn timed(s: &Server, args: &[&str]) -> (String, Duration) {
    let started = Instant::now();
    let out = s.ok(args);
    (out, started.elapsed())
}

fn configmaps(s: &Server) -> Vec<String> {
    let out = s.ok(&["get", "configmaps", "-o", "name"]);
    let mut names: Vec<String> = out.lines().filter_map(|l| l.strip_prefix("configmap/")).map(String::from).collect();
    names.retain(|n| n.starts_with("cm-"));
    names.sort();
    names
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    let mut v: Vec<String> = range.map(|i| format!("cm-{i:03}")).collect();
    v.sort();
    v
}

#[test]
fn kubectl_keeps_working_when_the_etcd_leader_dies() {
    let mut etcd = Etcd::start(3);
    let mut s = start_on(&etcd);
    for i in 0..5 {
        s.ok(&["create", "configmap", &format!("cm-{i:03}"), &format!("--from-literal=n={i}")]);
    }
    assert_eq!(configmaps(&s), names(0..5));

    let leader = etcd.leader().expect("the cluster has a leader");
    etcd.kill(leader);
    eprintln!("killed etcd leader m{leader}");
    // Every request must succeed while the member is down: the server retries
    // Unavailable answers for a bounded time (a new election plus the balancer
    // skipping the dead member), so kubectl itself never retries.
    let mut slowest = Duration::ZERO;
    for i in 5..25 {
        let name = format!("cm-{i:03}");
        let (_, t1) = timed(&s, &["create", "configmap", &name, &format!("--from-literal=n={i}")]);
        let (out, t2) = timed(&s, &["get", "configmap", &name, "-o", "jsonpath={.data.n}"]);
        assert_eq!(out, i.to_string());
        let (_, t3) = timed(&s, &["get", "configmaps"]);
        slowest = slowest.max(t1).max(t2).max(t3);
    }
    let retried = s.log().matches("succeeded after retrying").count();
    eprintln!("slowest request with a member down: {slowest:?}; {retried} store requests needed retries");
    assert!(slowest < Duration::from_secs(15), "requests stayed within the retry window");
    assert_eq!(configmaps(&s), names(0..25));
    assert!(etcd.leader().is_some_and(|l| l != leader), "a new leader was elected");

    // A restart with one member still down: start-up and every object survive.
    restart(&mut s);
    assert_eq!(configmaps(&s), names(0..25), "nothing lost across a skiff-control restart");
    let out = s.ok(&["get", "configmap", "cm-017", "-o", "jsonpath={.data.n}"]);
    assert_eq!(out, "17");

    // The member rejoins and catches up.
    etcd.restart(leader);
    let only = etcd.etcdctl(&[etcd.url(leader)], &["get", "--prefix", "--keys-only", "/skiff/"]);
    let keys = String::from_utf8_lossy(&only.stdout);
    assert_eq!(keys.lines().filter(|l| l.contains("/configmaps/default/cm-")).count(), 25, "{keys}");
    s.ok(&["delete", "configmap", "cm-000"]);
    assert_eq!(configmaps(&s), names(1..25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_out_a_short_outage() {
    let mut etcd = Etcd::start(1);
    let store = EtcdStore::connect(&cfg(etcd.urls(), "/skiff")).await.unwrap();
    store.create("/o/a", Bytes::from_static(b"1")).await.unwrap();
    etcd.kill(0);
    // The only member is down for about a second: inside the store's retry window, so
    // the request waits and then succeeds instead of failing.
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        etcd.spawn(0);
        etcd.wait_healthy(&[0]);
        etcd
    });
    let started = Instant::now();
    let kv = store.create("/o/b", Bytes::from_static(b"2")).await.expect("the request outlasts a short outage");
    assert!(started.elapsed() >= Duration::from_millis(900), "it really waited: {:?}", started.elapsed());
    let _etcd = restart.join().unwrap();
    assert_eq!(store.get("/o/b").await.unwrap().unwrap(), kv, "written exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_member_restarts() {
    let mut etcd = Etcd::start(3);
    let store = EtcdStore::connect(&cfg(etcd.urls(), "/skiff")).await.unwrap();
    let start = store.revision().await.unwrap();
    let mut w = store.watch("/w/", start).await.unwrap();
    let mut written = Vec::new();
    // The watch stream lives on one member; restarting each in turn takes it down at
    // least once, and the watch must resume after the last event it delivered.
    for i in 0..3 {
        etcd.kill(i);
        written.push(store.create(&format!("/w/{i}"), Bytes::from_static(b"x")).await.unwrap().mod_revision);
        etcd.spawn(i);
        etcd.wait_healthy(&[0, 1, 2]);
        written.push(store.update(&format!("/w/{i}"), Bytes::from_static(b"y"), None).await.unwrap().mod_revision);
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let e = tokio::time::timeout(Duration::from_secs(15), w.next())
            .await
            .expect("events keep arriving across member restarts")
            .expect("the watch does not end")
            .expect("the watch does not fail");
        seen.push(e.kv.mod_revision);
    }
    assert_eq!(seen, written, "every change once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_by_another_client_is_compacted() {
    let etcd = Etcd::start(1);
    let store = EtcdStore::connect(&cfg(etcd.urls(), "/skiff")).await.unwrap();
    let a = store.create("/c/a", Bytes::from_static(b"1")).await.unwrap();
    store.update("/c/a", Bytes::from_static(b"2"), None).await.unwrap();
    let head = store.update("/c/a", Bytes::from_static(b"3"), None).await.unwrap().mod_revision;
    // etcdctl, not this store, compacts: only etcd knows, and the watch must still say so.
    let out = etcd.etcdctl(&etcd.urls(), &["compact", &head.to_string()]);
    assert!(out.status.success(), "etcdctl compact: {}", String::from_utf8_lossy(&out.stderr));
    match store.watch("/c/", a.mod_revision).await {
        Err(skiff_control::store::Error::Compacted { requested, .. }) => assert_eq!(requested, a.mod_revision),
        other => panic!("a watch into compacted history must fail with Compacted, got {other:?}"),
    }
    assert!(store.watch("/c/", head - 1).await.is_ok(), "etcd keeps the compaction revision itself");
}

#[test]
fn skiff_control_names_unreachable_etcd() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-control"))
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["--bind-address", "127.0.0.1", "--port", &free_port().to_string(), "--etcd-servers", &url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "skiff-control must not start without its store: {err}");
    assert!(err.contains(&url) && err.contains("check that etcd is running"), "{err}");
}
