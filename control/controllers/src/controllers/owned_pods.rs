//! What the controllers that create pods themselves (DaemonSet, Job) share: finding the
//! pods an object controls, pod readiness, the controller ownerReference, and
//! expectations, the guard against acting twice on a cache that has not yet seen the
//! controller's own writes.
//!
//! Besides `adopt` and `release`, the ownerReference patches of the claim rule, it must
//! not talk to the API server: callers do their own writes.

use std::cell::OnceCell;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{Metadata, Resource};
use serde_json::json;
use skiff_api::reflector::{Cache, Change};
use skiff_api::workqueue::WorkQueue;
use skiff_api::{Client, ObjectKey, Patch};
use tokio::task::JoinHandle;

use crate::helpers::expectations::{Expect, Expectations, Seen};

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

/// Makes `owner` the controller of an orphan pod. The UID and resourceVersion in the
/// patch make it fail if the pod was replaced or changed (e.g. adopted by someone else)
/// since the cache saw it.
pub async fn adopt<K: Resource + Metadata<Ty = ObjectMeta>>(
    client: &Client,
    owner: &K,
    pod: &Pod,
) -> skiff_api::client::Result<Pod> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(controller_ref(owner));
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "uid": pod.metadata.uid,
        "resourceVersion": pod.metadata.resource_version,
    }});
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let p = client.patch::<Pod>(pod.metadata.namespace.as_deref(), name, None, &Patch::Merge(patch)).await?;
    tracing::info!(pod = name, kind = K::KIND, owner = owner.metadata().name.as_deref(), "adopted pod");
    Ok(p)
}

/// Drops the reference to owner `uid` from a pod that no longer matches its selector; a
/// pod gone or changed since is left to the next event.
pub async fn release(client: &Client, pod: &Pod, uid: &str) -> skiff_api::client::Result<()> {
    let refs: Vec<&OwnerReference> = pod.metadata.owner_references.iter().flatten().filter(|r| r.uid != uid).collect();
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "uid": pod.metadata.uid,
        "resourceVersion": pod.metadata.resource_version,
    }});
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match client.patch::<Pod>(pod.metadata.namespace.as_deref(), name, None, &Patch::Merge(patch)).await {
        Ok(_) => {
            tracing::info!(pod = name, "released pod that no longer matches the selector");
            Ok(())
        }
        Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The key of the object's controller if it is of kind `kind` (whom a change of a
/// dependent concerns).
pub fn controller_key(meta: &ObjectMeta, kind: &str) -> Option<ObjectKey> {
    let o = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true) && o.kind == kind)?;
    Some(ObjectKey::new(meta.namespace.as_deref(), &o.name))
}

/// Spawns a task that queues the controller (of kind `kind`) of every dependent that
/// changes in `dependents`; it ends with the cache.
pub fn queue_controllers_of<D>(dependents: &Cache<D>, kind: &'static str, queue: WorkQueue<ObjectKey>) -> JoinHandle<()>
where
    D: Metadata<Ty = ObjectMeta> + Send + Sync + 'static,
{
    let mut rx = dependents.subscribe();
    tokio::spawn(async move {
        while let Some(Change::Applied(d) | Change::Deleted(d)) = rx.recv().await {
            if let Some(key) = controller_key(d.metadata(), kind) {
                queue.add(key);
            }
        }
    })
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

/// Per owner uid, the pod creations (by pod name) and deletions (by pod uid) not yet
/// seen in the pod cache; an owner with pending writes is not acted on (its view is
/// stale). The rule itself is `helpers::expectations`; this adapts it to the pod cache.
#[derive(Debug)]
pub struct PodExpectations(Expectations<String>);

impl Default for PodExpectations {
    fn default() -> Self {
        Self(Expectations::new(Duration::from_secs(30)))
    }
}

impl PodExpectations {
    pub fn created(&self, owner: &str, pod_name: &str) {
        self.0.expect(&owner.to_string(), pod_name, Expect::Present { min_rv: 0 });
    }

    pub fn deleted(&self, owner: &str, pod_uid: &str) {
        self.0.expect(&owner.to_string(), pod_uid, Expect::Gone);
    }

    /// Whether the cache reflects every write made for `owner` (in `namespace`).
    pub fn satisfied(&self, owner: &str, namespace: &str, pods: &Cache<Pod>) -> bool {
        // Uids of the pods not being deleted, computed once and only if a delete is pending.
        let live: OnceCell<HashSet<String>> = OnceCell::new();
        self.0.satisfied_in(&owner.to_string(), |id, expect| {
            Some(match expect {
                Expect::Present { .. } => match pods.get_named(Some(namespace), id) {
                    Some(_) => Seen::Present(None),
                    None => Seen::Absent,
                },
                Expect::Gone => {
                    let live = live.get_or_init(|| {
                        pods.list_namespace(namespace)
                            .iter()
                            .filter(|pod| !is_terminating(pod))
                            .filter_map(|pod| pod.metadata.uid.clone())
                            .collect()
                    });
                    if live.contains(id) { Seen::Present(None) } else { Seen::Absent }
                }
            })
        })
    }

    pub fn forget(&self, owner: &str) {
        self.0.forget(&owner.to_string());
    }
}
