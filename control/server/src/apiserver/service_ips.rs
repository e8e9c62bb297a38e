//! What stored Services hold (ClusterIPs, NodePorts), kept in memory from the store's
//! watch, so that allocating for a new Service costs the same with 10 or 10,000 of them
//! (it used to list and parse every Service on each create).
//!
//! The index is a fast path, never the authority:
//! - A create waits until the index has applied the revision of the last Service this
//!   server created (creates are serialised by `ApiServer::alloc_lock`), so an IP this
//!   server handed out is never offered twice.
//! - Anything the index cannot vouch for (not synced yet, behind for too long, or an
//!   allocation it refuses, which may be a Service deleted a moment ago that the watch
//!   has not shown yet) is answered from a full list of the store, as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::allocator::{Held, InUse};
use crate::store::{EventType, KeyValue, Store};

/// How long a create waits for the watch to catch up before it lists the store instead.
const CATCH_UP: Duration = Duration::from_secs(2);
/// The pause before a failed watch is listed and followed again.
const RESTART: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Index {
    /// What each stored Service (by store key) holds, to release it on change.
    by_key: HashMap<String, Held>,
    used: InUse,
    /// A full list has been applied (the index can answer).
    synced: bool,
}

impl Index {
    fn apply(&mut self, kv: &KeyValue, kind: EventType) {
        if let Some(old) = self.by_key.remove(&kv.key) {
            self.used.release(&old);
        }
        if kind == EventType::Put {
            match serde_json::from_slice::<Value>(&kv.value) {
                Ok(svc) => {
                    let held = Held::of(&svc);
                    self.used.hold(&held);
                    self.by_key.insert(kv.key.clone(), held);
                }
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "service IP index: a stored Service is not JSON"),
            }
        }
    }
}

pub struct ServiceIpIndex {
    index: Mutex<Index>,
    /// The store revision the index has applied up to.
    applied: watch::Sender<u64>,
    /// The revision of the last Service this server created.
    created: AtomicU64,
}

impl Default for ServiceIpIndex {
    fn default() -> Self {
        Self { index: Mutex::default(), applied: watch::Sender::new(0), created: AtomicU64::new(0) }
    }
}

impl ServiceIpIndex {
    /// Keeps the index in step with the Services under `prefix` until the process ends.
    pub fn spawn_sync(self: &Arc<Self>, store: Arc<dyn Store>, prefix: String) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.follow(store.as_ref(), &prefix).await {
                    tracing::warn!(error = %e, "service IP index: sync restarts");
                }
                tokio::time::sleep(RESTART).await;
            }
        });
    }

    /// Lists the Services into a fresh index, then applies their changes until the
    /// watch ends.
    async fn follow(&self, store: &dyn Store, prefix: &str) -> crate::store::Result<()> {
        let snapshot = store.list(prefix, None, 0).await?;
        let mut fresh = Index { synced: true, ..Index::default() };
        snapshot.kvs.iter().for_each(|kv| fresh.apply(kv, EventType::Put));
        *self.index.lock().unwrap() = fresh;
        self.applied.send_replace(snapshot.revision);
        tracing::info!(services = snapshot.kvs.len(), revision = snapshot.revision, "service IP index: listed");
        let mut events = store.watch(prefix, snapshot.revision).await?;
        while let Some(ev) = events.next().await.transpose()? {
            self.index.lock().unwrap().apply(&ev.kv, ev.kind);
            self.applied.send_replace(ev.kv.mod_revision);
        }
        Ok(())
    }

    /// Notes a Service this server stored at `revision`: the next allocation waits for it.
    pub fn created(&self, revision: u64) {
        self.created.fetch_max(revision, Ordering::Relaxed);
    }

    /// Runs `f` on what stored Services hold, once the index has seen every Service
    /// this server created; `None` if it cannot vouch for that (the caller lists).
    pub async fn with_current<R>(&self, f: impl FnOnce(&InUse) -> R) -> Option<R> {
        if !self.index.lock().unwrap().synced {
            return None;
        }
        let created = self.created.load(Ordering::Relaxed);
        let mut applied = self.applied.subscribe();
        match tokio::time::timeout(CATCH_UP, applied.wait_for(|r| *r >= created)).await {
            Ok(Ok(_)) => {}
            _ => {
                tracing::warn!(created, "service IP index: behind the store; allocating from a full list");
                return None;
            }
        }
        let index = self.index.lock().unwrap();
        index.synced.then(|| f(&index.used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn kv(key: &str, rev: u64, svc: Value) -> KeyValue {
        KeyValue { key: key.into(), value: Bytes::from(svc.to_string()), create_revision: rev, mod_revision: rev }
    }

    #[test]
    fn a_change_or_delete_releases_what_the_service_held() {
        let mut index = Index::default();
        let a =
            |ip: &str, np: u64| serde_json::json!({"spec": {"clusterIP": ip, "ports": [{"port": 80, "nodePort": np}]}});
        index.apply(&kv("/s/a", 1, a("10.96.0.5", 30001)), EventType::Put);
        assert!(index.used.ip_taken(&"10.96.0.5".parse().unwrap()));
        assert!(index.used.node_port_taken(30001));
        index.apply(&kv("/s/a", 2, a("10.96.0.5", 30002)), EventType::Put);
        assert!(!index.used.node_port_taken(30001));
        assert!(index.used.node_port_taken(30002));
        index.apply(&kv("/s/a", 3, Value::Null), EventType::Delete);
        assert!(!index.used.ip_taken(&"10.96.0.5".parse().unwrap()));
        assert!(!index.used.node_port_taken(30002));
        assert!(index.by_key.is_empty());
    }

    #[tokio::test]
    async fn an_index_that_never_synced_cannot_answer() {
        let index = ServiceIpIndex::default();
        assert!(index.with_current(|_| ()).await.is_none());
    }
}
