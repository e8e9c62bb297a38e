//! The behaviour every `Store` backend must show, as one suite that each backend's tests
//! call (`run_all(&store)`), so redb and etcd are held to the same contract.
//!
//! Every check uses its own key prefix, so the suite runs against one fresh store. It
//! must only use the `Store` trait: no backend internals.

use std::time::Duration;

use bytes::Bytes;

use super::{Error, EventType, Store};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Runs every check; panics with a message naming the failed property.
pub async fn run_all(store: &dyn Store) {
    create_get_update_delete(store).await;
    optimistic_concurrency(store).await;
    list_prefix_and_pages(store).await;
    watch_history_and_live(store).await;
    watch_compaction(store).await;
}

async fn create_get_update_delete(s: &dyn Store) {
    let before = s.revision().await.unwrap();
    let kv = s.create("/crud/a", b("one")).await.unwrap();
    assert!(kv.mod_revision > before, "create must advance the revision");
    assert_eq!(kv.create_revision, kv.mod_revision);
    assert_eq!(s.revision().await.unwrap(), kv.mod_revision, "revision = last change");
    let got = s.get("/crud/a").await.unwrap().expect("created key must be readable");
    assert_eq!(got, kv);
    assert_eq!(
        s.create("/crud/a", b("again")).await,
        Err(Error::AlreadyExists { key: "/crud/a".into() }),
        "create of an existing key must fail"
    );
    let up = s.update("/crud/a", b("two"), None).await.unwrap();
    assert!(up.mod_revision > kv.mod_revision);
    assert_eq!(up.create_revision, kv.create_revision, "update keeps create_revision");
    assert_eq!(s.get("/crud/a").await.unwrap().unwrap().value, b("two"));
    let del = s.delete("/crud/a", None).await.unwrap();
    assert_eq!(del.value, b("two"), "delete returns the deleted value");
    assert!(del.mod_revision > up.mod_revision, "delete advances the revision");
    assert_eq!(s.get("/crud/a").await.unwrap(), None);
    assert!(matches!(s.delete("/crud/a", None).await, Err(Error::NotFound { .. })));
    assert!(matches!(s.update("/crud/a", b("x"), None).await, Err(Error::NotFound { .. })));
    assert!(s.get("/crud/missing").await.unwrap().is_none());
}

async fn optimistic_concurrency(s: &dyn Store) {
    let kv = s.create("/occ/a", b("1")).await.unwrap();
    let up = s.update("/occ/a", b("2"), Some(kv.mod_revision)).await.unwrap();
    let stale = s.update("/occ/a", b("3"), Some(kv.mod_revision)).await;
    assert_eq!(
        stale,
        Err(Error::Conflict { key: "/occ/a".into(), expected: kv.mod_revision, actual: up.mod_revision }),
        "update with a stale revision must conflict"
    );
    assert_eq!(s.get("/occ/a").await.unwrap().unwrap().value, b("2"), "a conflict changes nothing");
    assert!(matches!(s.delete("/occ/a", Some(kv.mod_revision)).await, Err(Error::Conflict { .. })));
    s.delete("/occ/a", Some(up.mod_revision)).await.unwrap();
}

async fn list_prefix_and_pages(s: &dyn Store) {
    for k in ["c", "a", "b", "d"] {
        s.create(&format!("/list/x/{k}"), b(k)).await.unwrap();
    }
    // Neighbours that share a string prefix but not the directory must not leak in.
    s.create("/list/xy", b("no")).await.unwrap();
    s.create("/list/w", b("no")).await.unwrap();
    let all = s.list("/list/x/", None, 0).await.unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/list/x/a", "/list/x/b", "/list/x/c", "/list/x/d"], "list is key-ordered");
    assert!(!all.more);
    assert_eq!(all.revision, s.revision().await.unwrap());
    let p1 = s.list("/list/x/", None, 3).await.unwrap();
    assert_eq!(p1.kvs.len(), 3);
    assert!(p1.more, "a full page with keys left says more");
    let p2 = s.list("/list/x/", Some(&p1.kvs[2].key), 3).await.unwrap();
    assert_eq!(p2.kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["/list/x/d"]);
    assert!(!p2.more);
    let exact = s.list("/list/x/", None, 4).await.unwrap();
    assert!(!exact.more, "exactly limit keys means no more");
    assert!(s.list("/list/none/", None, 0).await.unwrap().kvs.is_empty());
}

async fn watch_history_and_live(s: &dyn Store) {
    let start = s.revision().await.unwrap();
    let a = s.create("/watch/p/a", b("1")).await.unwrap();
    s.create("/watch/other", b("x")).await.unwrap();
    let a2 = s.update("/watch/p/a", b("2"), None).await.unwrap();
    let mut w = s.watch("/watch/p/", start).await.unwrap();
    let e1 = w.next().await.unwrap().unwrap();
    assert_eq!((e1.kind, e1.kv.mod_revision), (EventType::Put, a.mod_revision), "history replays in order");
    assert!(e1.prev.is_none());
    let e2 = w.next().await.unwrap().unwrap();
    assert_eq!(e2.kv.value, b("2"));
    assert_eq!(e2.prev.as_ref().unwrap().value, b("1"), "an update carries the previous value");
    let d = s.delete("/watch/p/a", None).await.unwrap();
    let e3 = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(e3.kind, EventType::Delete, "live delete arrives");
    assert_eq!(e3.kv.mod_revision, d.mod_revision);
    assert_eq!(e3.prev.as_ref().unwrap().value, b("2"), "a delete carries the deleted value");
    // A watch from the latest revision sees only newer changes.
    let mut w2 = s.watch("/watch/p/", a2.mod_revision).await.unwrap();
    let e = w2.next().await.unwrap().unwrap();
    assert_eq!(e.kv.mod_revision, d.mod_revision);
    s.create("/watch/other2", b("x")).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), w2.next()).await.is_err(),
        "changes outside the prefix are not delivered"
    );
}

async fn watch_compaction(s: &dyn Store) {
    let kv = s.create("/compact/a", b("1")).await.unwrap();
    s.update("/compact/a", b("2"), None).await.unwrap();
    let rev = s.revision().await.unwrap();
    s.compact(rev).await.unwrap();
    match s.watch("/compact/", kv.mod_revision).await {
        Err(Error::Compacted { requested, .. }) => assert_eq!(requested, kv.mod_revision),
        other => panic!("watch from a compacted revision must fail with Compacted, got {other:?}"),
    }
    let mut w = s.watch("/compact/", rev).await.expect("watch from the compaction point works");
    s.update("/compact/a", b("3"), None).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(e.kv.value, b("3"));
}
