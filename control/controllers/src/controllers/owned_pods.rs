//! What the controllers that create pods themselves (DaemonSet, Job) share: finding the
//! pods an object controls, pod readiness, the controller ownerReference, and
//! expectations, the guard against acting twice on a cache that has not yet seen the
//! controller's own writes.
//!
//! It must not talk to the API server: callers do their own writes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{Metadata, Resource};
use skiff_api::reflector::Cache;

/// The controller reference (`controller: true`) that makes `obj` the owner of a pod.
pub fn controller_ref<K: Resource + Metadata<Ty = ObjectMeta>>(obj: &K) -> OwnerReference {
    let m = obj.metadata();
    OwnerReference {
        api_version: K::API_VERSION.to_string(),
        kind: K::KIND.to_string(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The uid of the pod's controller of kind `kind`, if any.
pub fn controller_uid<'a>(pod: &'a Pod, kind: &str) -> Option<&'a str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.uid.as_str())
}

/// Pods of `namespace` controlled by the object with `uid`.
pub fn controlled_by(pods: &Cache<Pod>, namespace: &str, kind: &str, uid: &str) -> Vec<Arc<Pod>> {
    pods.list_namespace(namespace).into_iter().filter(|p| controller_uid(p, kind) == Some(uid)).collect()
}

/// Since when (unix seconds) the pod has been Ready, or `None` if it is not.
pub fn ready_since(pod: &Pod) -> Option<i64> {
    let c = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(c.last_transition_time.as_ref().map(|t| t.0.as_second()).unwrap_or(0))
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Writes an owner made that its cache has not shown yet.
#[derive(Debug)]
struct Pending {
    /// Names of pods created.
    creates: HashSet<String>,
    /// Uids of pods deleted.
    deletes: HashSet<String>,
    since: Instant,
}

/// Per owner uid, the pod creations and deletions not yet seen in the pod cache. An
/// owner with pending writes is not acted on (its view is stale); pending writes that
/// the cache never shows (e.g. a create that failed after the server stored it) are
/// forgotten after `ttl`.
#[derive(Debug)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
    ttl: Duration,
}

impl Default for Expectations {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl Expectations {
    pub fn new(ttl: Duration) -> Self {
        Self { pending: Mutex::new(HashMap::new()), ttl }
    }

    fn entry<R>(&self, owner: &str, f: impl FnOnce(&mut Pending) -> R) -> R {
        let mut m = self.pending.lock().unwrap();
        let p = m.entry(owner.to_string()).or_insert_with(|| Pending {
            creates: HashSet::new(),
            deletes: HashSet::new(),
            since: Instant::now(),
        });
        f(p)
    }

    pub fn created(&self, owner: &str, pod_name: &str) {
        self.entry(owner, |p| p.creates.insert(pod_name.to_string()));
    }

    pub fn deleted(&self, owner: &str, pod_uid: &str) {
        self.entry(owner, |p| p.deletes.insert(pod_uid.to_string()));
    }

    /// Whether the cache reflects every write made for `owner` (in `namespace`).
    pub fn satisfied(&self, owner: &str, namespace: &str, pods: &Cache<Pod>) -> bool {
        let mut m = self.pending.lock().unwrap();
        let Some(p) = m.get_mut(owner) else { return true };
        p.creates.retain(|name| pods.get_named(Some(namespace), name).is_none());
        if !p.deletes.is_empty() {
            let live: HashSet<String> = pods
                .list_namespace(namespace)
                .iter()
                .filter(|pod| !is_terminating(pod))
                .filter_map(|pod| pod.metadata.uid.clone())
                .collect();
            p.deletes.retain(|uid| live.contains(uid));
        }
        let done = (p.creates.is_empty() && p.deletes.is_empty()) || p.since.elapsed() > self.ttl;
        if done {
            m.remove(owner);
        }
        done
    }

    pub fn forget(&self, owner: &str) {
        self.pending.lock().unwrap().remove(owner);
    }
}
