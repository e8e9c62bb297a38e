//! A reflector: keeps a local cache of one resource in sync with the API server by
//! LIST then WATCH, and tells subscribers what changed. Controllers read the cache and
//! never poll the server.
//!
//! The watcher is an explicit state machine:
//! - `Listing`: list every page; replace the cache, emitting `Applied` for new or changed
//!   objects and `Deleted` for ones that vanished while we were not watching; → `Watching`
//!   from the list's resourceVersion.
//! - `Watching(rv)`: watch from `rv`; each event updates the cache and `rv`; bookmarks
//!   advance `rv`. A stream that ends (server timeout) → `Watching(rv)` again. A 410 Gone
//!   (history compacted) → `Listing`. Any other error → back off, then `Watching(rv)`;
//!   repeated failures → `Listing`.
//!
//! The cache is the writer's alone (this task); readers get `Arc`s of immutable objects.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ListableResource, Metadata};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::client::{Client, ListParams, ObjectKey, WatchEvent};

/// What changed in the cache.
#[derive(Debug)]
pub enum Change<K> {
    /// Created or updated (also sent for every object to a new subscriber).
    Applied(Arc<K>),
    Deleted(Arc<K>),
}

struct Inner<K> {
    objects: RwLock<BTreeMap<ObjectKey, Arc<K>>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change<K>>>>,
    synced: tokio::sync::watch::Sender<bool>,
}

/// The read side of a reflector's cache. Cheap to clone.
pub struct Cache<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<K> std::fmt::Debug for Cache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("len", &self.inner.objects.read().unwrap().len()).finish()
    }
}

impl<K: Metadata<Ty = ObjectMeta>> Cache<K> {
    fn new() -> Self {
        let (synced, _) = tokio::sync::watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                objects: RwLock::new(BTreeMap::new()),
                subscribers: Mutex::new(Vec::new()),
                synced,
            }),
        }
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.inner.objects.read().unwrap().get(key).cloned()
    }

    pub fn get_named(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        self.get(&ObjectKey::new(namespace, name))
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.inner.objects.read().unwrap().values().cloned().collect()
    }

    /// Cached objects of one namespace.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.inner
            .objects
            .read()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.namespace.as_deref() == Some(namespace))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.objects.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A stream of changes, starting with `Applied` for everything cached now.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Change<K>> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Snapshot and register under the subscriber lock, which writers also take, so
        // the subscriber sees every change exactly after the snapshot.
        let mut subs = self.inner.subscribers.lock().unwrap();
        for obj in self.inner.objects.read().unwrap().values() {
            let _ = tx.send(Change::Applied(obj.clone()));
        }
        subs.push(tx);
        rx
    }

    /// Waits until the first LIST has filled the cache.
    pub async fn wait_synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    fn notify(&self, subs: &mut Vec<mpsc::UnboundedSender<Change<K>>>, change: impl Fn() -> Change<K>) {
        subs.retain(|s| s.send(change()).is_ok());
    }

    fn apply(&self, obj: K) {
        let obj = Arc::new(obj);
        let key = ObjectKey::of(obj.as_ref());
        let mut subs = self.inner.subscribers.lock().unwrap();
        self.inner.objects.write().unwrap().insert(key, obj.clone());
        self.notify(&mut subs, || Change::Applied(obj.clone()));
    }

    fn delete(&self, obj: K) {
        let key = ObjectKey::of(&obj);
        let mut subs = self.inner.subscribers.lock().unwrap();
        let removed = self.inner.objects.write().unwrap().remove(&key);
        let obj = removed.unwrap_or_else(|| Arc::new(obj));
        self.notify(&mut subs, || Change::Deleted(obj.clone()));
    }

    fn replace(&self, items: Vec<K>) {
        let mut subs = self.inner.subscribers.lock().unwrap();
        let mut fresh: BTreeMap<ObjectKey, Arc<K>> =
            items.into_iter().map(|o| (ObjectKey::of(&o), Arc::new(o))).collect();
        let mut objects = self.inner.objects.write().unwrap();
        let old = std::mem::take(&mut *objects);
        for (k, o) in &old {
            if !fresh.contains_key(k) {
                self.notify(&mut subs, || Change::Deleted(o.clone()));
            }
        }
        for (k, o) in fresh.iter_mut() {
            let unchanged = old.get(k).is_some_and(|prev| {
                prev.metadata().resource_version == o.metadata().resource_version
                    && prev.metadata().uid == o.metadata().uid
            });
            if unchanged {
                *o = old[k].clone();
            } else {
                self.notify(&mut subs, || Change::Applied(o.clone()));
            }
        }
        *objects = fresh;
        drop(objects);
        drop(subs);
        self.inner.synced.send_replace(true);
    }
}

/// How long one WATCH request lasts before the server ends it and we re-watch.
const WATCH_TIMEOUT_S: u32 = 290;

/// Creates the cache and the task that fills it; spawn the future (it runs until dropped).
pub fn reflector<K>(
    client: Client,
    namespace: Option<String>,
    params: ListParams,
) -> (Cache<K>, impl std::future::Future<Output = ()> + Send + 'static)
where
    K: ListableResource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    let cache = Cache::new();
    let writer = cache.clone();
    (cache, run(client, namespace, params, writer))
}

enum State {
    Listing,
    Watching(String),
}

async fn run<K>(client: Client, namespace: Option<String>, params: ListParams, cache: Cache<K>)
where
    K: ListableResource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    let ns = namespace.as_deref();
    let mut state = State::Listing;
    let mut failures: u32 = 0;
    loop {
        if failures > 0 {
            let delay = Duration::from_millis(200u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(10));
            tokio::time::sleep(delay).await;
        }
        state = match state {
            State::Listing => match client.list_all::<K>(ns, &params).await {
                Ok((items, rv)) => {
                    failures = 0;
                    cache.replace(items);
                    State::Watching(rv)
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(kind = K::KIND, error = %e, "list failed; retrying");
                    State::Listing
                }
            },
            State::Watching(rv) => match client.watch::<K>(ns, &params, &rv, WATCH_TIMEOUT_S).await {
                Ok(mut stream) => {
                    failures = 0;
                    let mut rv = rv;
                    let mut next = None;
                    while let Some(ev) = stream.next().await {
                        match ev {
                            Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                                rv = o.metadata().resource_version.clone().unwrap_or(rv);
                                cache.apply(o);
                            }
                            Ok(WatchEvent::Deleted(o)) => {
                                rv = o.metadata().resource_version.clone().unwrap_or(rv);
                                cache.delete(o);
                            }
                            Ok(WatchEvent::Bookmark(b)) if !b.is_empty() => rv = b,
                            Ok(WatchEvent::Bookmark(_)) => {}
                            Err(e) if e.is_gone() => {
                                tracing::debug!(kind = K::KIND, "watch history compacted; listing again");
                                next = Some(State::Listing);
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(kind = K::KIND, error = %e, "watch failed; watching again");
                                failures = 1;
                                break;
                            }
                        }
                    }
                    next.unwrap_or(State::Watching(rv))
                }
                Err(e) if e.is_gone() => State::Listing,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(kind = K::KIND, error = %e, "watch request failed; retrying");
                    if failures > 5 { State::Listing } else { State::Watching(rv) }
                }
            },
        };
    }
}
