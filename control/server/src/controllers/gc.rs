//! The garbage collector: deletes objects whose owners (ownerReferences) are gone, and
//! finishes Foreground and Orphan deletions that the API server started by adding the
//! `foregroundDeletion` or `orphan` finalizer.
//!
//! It keeps an ownership graph (uid → object, owner uid → dependents) built from the
//! shared reflector caches, so its work is proportional to what changed:
//! - Background: when an owner disappears, each dependent is checked; if none of its
//!   owners exists any more (confirmed by a live GET, never from the cache alone, so a
//!   stale cache cannot delete a live object) it is deleted; dangling references of a
//!   dependent that still has a live owner are removed.
//! - Foreground: dependents of a terminating owner with `foregroundDeletion` are
//!   deleted; once none with `blockOwnerDeletion` remains, the finalizer is removed and
//!   the API server completes the owner's deletion.
//! - Orphan: dependents of a terminating owner with `orphan` lose their reference to it,
//!   then the finalizer is removed.
//!
//! Scope: objects of the kinds in `skiff_api::finalizers::GARBAGE_COLLECTED_KINDS` (those with an informer in
//! `Context`). Namespaces, ConfigMaps, Secrets, Endpoints, Events, Leases and RBAC
//! objects are not watched: they are never collected as dependents, and the API server
//! treats Foreground/Orphan deletes of them as Background (otherwise their finalizer
//! would never be removed). Owners of any served kind are recognised.
//!
//! It must not delete anything whose owner it has not confirmed absent, and it only
//! writes ownerReferences and its own two finalizers besides deleting.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{Metadata, Resource};
use serde_json::{Value, json};
use skiff_api::reflector::{Cache, Change};
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use tokio::sync::mpsc;

use super::Context;
use crate::apiserver::resources::{ResourceDef, by_kind};

use skiff_api::finalizers::{FOREGROUND_DELETION as FOREGROUND_FINALIZER, ORPHAN as ORPHAN_FINALIZER};

/// Dependents are looked at this long after they change, so that at start-up the owners'
/// snapshots (which arrive from other caches in no particular order) are in the graph
/// first and no needless live lookups are made.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request {what} failed: {source}")]
    Api {
        what: String,
        #[source]
        source: skiff_api::client::Error,
    },
    #[error("reading the answer to {what} failed: {reason}")]
    Body { what: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One object as the graph knows it.
#[derive(Debug, Clone)]
struct Node {
    kind: &'static str,
    namespace: Option<String>,
    name: String,
    resource_version: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

#[derive(Debug, Default)]
struct Graph {
    objects: HashMap<String, Node>,
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    fn unlink(&mut self, uid: &str) -> Option<Node> {
        let old = self.objects.remove(uid)?;
        for o in &old.owners {
            if let Some(set) = self.dependents.get_mut(&o.uid) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
        }
        Some(old)
    }

    fn link(&mut self, uid: &str, node: Node) {
        for o in &node.owners {
            self.dependents.entry(o.uid.clone()).or_default().insert(uid.to_string());
        }
        self.objects.insert(uid.to_string(), node);
    }

    fn is_finalizing(&self, uid: &str) -> bool {
        self.objects.get(uid).is_some_and(|n| n.deleting && n.finalizers.iter().any(|f| is_gc_finalizer(f)))
    }
}

fn is_gc_finalizer(f: &str) -> bool {
    f == FOREGROUND_FINALIZER || f == ORPHAN_FINALIZER
}

/// What the collector works on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    /// Check that this object still has an owner.
    Dependent(String),
    /// Finish the Foreground/Orphan deletion of this object.
    Owner(String),
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Dependent(u) => write!(f, "dependent/{u}"),
            Item::Owner(u) => write!(f, "owner/{u}"),
        }
    }
}

/// A type-erased cache change.
struct Seen {
    kind: &'static str,
    meta: ObjectMeta,
    deleted: bool,
}

fn forward<K>(cache: &Cache<K>, tx: mpsc::UnboundedSender<Seen>, tasks: &mut tokio::task::JoinSet<()>)
where
    K: Resource + Metadata<Ty = ObjectMeta> + Send + Sync + 'static,
{
    let mut rx = cache.subscribe();
    tasks.spawn(async move {
        while let Some(c) = rx.recv().await {
            let (obj, deleted) = match c {
                Change::Applied(o) => (o, false),
                Change::Deleted(o) => (o, true),
            };
            if tx.send(Seen { kind: K::KIND, meta: obj.metadata().clone(), deleted }).is_err() {
                return;
            }
        }
    });
}

struct Gc {
    ctx: Arc<Context>,
    graph: Mutex<Graph>,
}

/// Entry point (see `CONTROLLERS`).
pub async fn run(ctx: Arc<Context>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    let i = &ctx.informers;
    forward(&i.pods, tx.clone(), &mut tasks);
    forward(&i.nodes, tx.clone(), &mut tasks);
    forward(&i.services, tx.clone(), &mut tasks);
    forward(&i.endpoint_slices, tx.clone(), &mut tasks);
    forward(&i.deployments, tx.clone(), &mut tasks);
    forward(&i.replica_sets, tx.clone(), &mut tasks);
    forward(&i.daemon_sets, tx.clone(), &mut tasks);
    forward(&i.jobs, tx.clone(), &mut tasks);
    forward(&i.service_accounts, tx, &mut tasks);
    let gc = Arc::new(Gc { ctx: ctx.clone(), graph: Mutex::new(Graph::default()) });
    let queue: WorkQueue<Item> = WorkQueue::new();
    let g = gc.clone();
    let workers = tokio::spawn(run_workers("garbage-collector", queue.clone(), 2, move |item| {
        let g = g.clone();
        async move { g.reconcile(item).await }
    }));
    while let Some(seen) = rx.recv().await {
        gc.observe(seen, &queue);
    }
    queue.shut_down();
    let _ = workers.await;
}

impl Gc {
    /// Updates the graph with one change and queues the work it causes.
    fn observe(&self, seen: Seen, queue: &WorkQueue<Item>) {
        let Some(uid) = seen.meta.uid.clone() else { return };
        let mut g = self.graph.lock().unwrap();
        let old = g.unlink(&uid);
        if seen.deleted {
            // Its dependents may be orphans now; owners waiting for it may finish.
            for d in g.dependents.get(&uid).into_iter().flatten() {
                queue.add(Item::Dependent(d.clone()));
            }
            for o in old.iter().flat_map(|n| &n.owners) {
                if g.is_finalizing(&o.uid) {
                    queue.add(Item::Owner(o.uid.clone()));
                }
            }
            return;
        }
        let node = Node {
            kind: seen.kind,
            namespace: seen.meta.namespace.clone(),
            name: seen.meta.name.clone().unwrap_or_default(),
            resource_version: seen.meta.resource_version.clone().unwrap_or_default(),
            owners: seen.meta.owner_references.clone().unwrap_or_default(),
            deleting: seen.meta.deletion_timestamp.is_some(),
            finalizers: seen.meta.finalizers.clone().unwrap_or_default(),
        };
        if node.owners.iter().any(|o| !g.objects.contains_key(&o.uid)) {
            queue.add_after(Item::Dependent(uid.clone()), SETTLE);
        }
        // An owner being finalized waits on its dependents' changes (deleted or released).
        for o in old.iter().flat_map(|n| &n.owners).chain(&node.owners) {
            if g.is_finalizing(&o.uid) {
                queue.add(Item::Owner(o.uid.clone()));
            }
        }
        let finalizing = node.deleting && node.finalizers.iter().any(|f| is_gc_finalizer(f));
        g.link(&uid, node);
        if finalizing {
            queue.add(Item::Owner(uid));
        }
    }

    async fn reconcile(&self, item: Item) -> Result<Action> {
        match item {
            Item::Dependent(uid) => self.check_dependent(&uid).await,
            Item::Owner(uid) => self.finish_owner(&uid).await,
        }
    }

    /// Deletes `uid` when none of its owners exists; drops references to absent owners
    /// when some still exist.
    async fn check_dependent(&self, uid: &str) -> Result<Action> {
        let Some(node) = self.graph.lock().unwrap().objects.get(uid).cloned() else { return Ok(Action::Done) };
        if node.deleting || node.owners.is_empty() {
            return Ok(Action::Done);
        }
        let mut absent = Vec::new();
        for o in &node.owners {
            if self.owner_absent(o, node.namespace.as_deref()).await? {
                absent.push(o.uid.clone());
            }
        }
        if absent.is_empty() {
            return Ok(Action::Done);
        }
        let Some(def) = by_kind(node.kind) else { return Ok(Action::Done) };
        if absent.len() == node.owners.len() {
            tracing::info!(kind = node.kind, namespace = node.namespace.as_deref().unwrap_or(""), name = %node.name,
                owners = ?absent, "deleting object whose owners are gone");
            self.delete(def, &node, uid, "Background").await?;
        } else {
            tracing::info!(kind = node.kind, namespace = node.namespace.as_deref().unwrap_or(""), name = %node.name,
                owners = ?absent, "removing references to absent owners");
            self.drop_refs(def, &node, &absent).await?;
        }
        Ok(Action::Done)
    }

    /// Whether the owner a reference names is gone: from the graph when it is there,
    /// otherwise by a live GET (an owner of a kind that is not served counts as present,
    /// since nothing can be confirmed about it).
    async fn owner_absent(&self, o: &OwnerReference, dependent_ns: Option<&str>) -> Result<bool> {
        if self.graph.lock().unwrap().objects.contains_key(&o.uid) {
            return Ok(false);
        }
        let group = o.api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let Some(def) = by_kind(&o.kind).filter(|d| d.group == group) else {
            tracing::debug!(kind = %o.kind, api_version = %o.api_version, "owner kind not served; keeping dependent");
            return Ok(false);
        };
        if def.namespaced && dependent_ns.is_none() {
            // A cluster-scoped object cannot be owned by a namespaced one; such a
            // reference cannot be resolved, so it never counts as absent.
            tracing::debug!(kind = %o.kind, name = %o.name, "namespaced owner of a cluster-scoped object ignored");
            return Ok(false);
        }
        let ns = if def.namespaced { dependent_ns } else { None };
        let path = object_path(def, ns, &o.name);
        match self.get_json(&path).await? {
            None => Ok(true),
            Some(v) => Ok(v.pointer("/metadata/uid").and_then(|u| u.as_str()) != Some(o.uid.as_str())),
        }
    }

    /// Orphan: release every dependent, then drop the finalizer. Foreground: delete
    /// the dependents and drop the finalizer once none blocks.
    async fn finish_owner(&self, uid: &str) -> Result<Action> {
        let (node, dependents) = {
            let g = self.graph.lock().unwrap();
            let Some(node) = g.objects.get(uid).cloned() else { return Ok(Action::Done) };
            let deps: Vec<(String, Node)> = g
                .dependents
                .get(uid)
                .into_iter()
                .flatten()
                .filter_map(|d| g.objects.get(d).map(|n| (d.clone(), n.clone())))
                .collect();
            (node, deps)
        };
        if !node.deleting {
            return Ok(Action::Done);
        }
        let Some(def) = by_kind(node.kind) else { return Ok(Action::Done) };
        if node.finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
            for (_, d) in &dependents {
                if let Some(ddef) = by_kind(d.kind) {
                    self.drop_refs(ddef, d, &[uid.to_string()]).await?;
                }
            }
            tracing::info!(kind = node.kind, name = %node.name, orphaned = dependents.len(), "dependents orphaned");
            self.remove_finalizer(def, &node, ORPHAN_FINALIZER).await?;
            return Ok(Action::Done);
        }
        if !node.finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
            return Ok(Action::Done);
        }
        let mut blocking = 0;
        for (duid, d) in &dependents {
            let blocks = d.owners.iter().any(|o| o.uid == uid && o.block_owner_deletion == Some(true));
            if blocks {
                blocking += 1;
            }
            if !d.deleting
                && let Some(ddef) = by_kind(d.kind)
            {
                // A dependent that may own things itself is deleted in the foreground
                // too, so the whole tree is gone before the owner.
                let policy = if d.kind == "Pod" { "Background" } else { "Foreground" };
                self.delete(ddef, d, duid, policy).await?;
            }
        }
        if blocking > 0 {
            tracing::debug!(kind = node.kind, name = %node.name, blocking, "foreground deletion waits for dependents");
            // The dependents' deletion events requeue this; the timer only covers
            // events lost with a restarted watch.
            return Ok(Action::RequeueAfter(Duration::from_secs(30)));
        }
        tracing::info!(kind = node.kind, name = %node.name, "dependents gone; finishing foreground deletion");
        self.remove_finalizer(def, &node, FOREGROUND_FINALIZER).await?;
        Ok(Action::Done)
    }

    async fn delete(&self, def: &ResourceDef, node: &Node, uid: &str, policy: &str) -> Result<()> {
        let path = object_path(def, node.namespace.as_deref(), &node.name);
        let body = json!({"kind": "DeleteOptions", "apiVersion": "v1",
            "preconditions": {"uid": uid}, "propagationPolicy": policy});
        match self.ctx.client.send_raw(Method::DELETE, &path, Some("application/json"), json_bytes(&body)).await {
            Ok(r) => {
                let _ = r.into_body().collect().await;
                Ok(())
            }
            // Gone already, or a different object under the same name now.
            Err(e) if e.is_not_found() || e.code() == Some(409) => Ok(()),
            Err(source) => Err(Error::Api { what: format!("DELETE {path}"), source }),
        }
    }

    /// Removes the references to `owner_uids` from a dependent (conditional on the
    /// revision the graph saw; a conflict retries with a fresher graph).
    async fn drop_refs(&self, def: &ResourceDef, node: &Node, owner_uids: &[String]) -> Result<()> {
        let keep: Vec<&OwnerReference> = node.owners.iter().filter(|o| !owner_uids.contains(&o.uid)).collect();
        if keep.len() == node.owners.len() {
            return Ok(());
        }
        let refs = if keep.is_empty() { Value::Null } else { json!(keep) };
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": node.resource_version}});
        self.merge_patch(def, node, &patch).await
    }

    async fn remove_finalizer(&self, def: &ResourceDef, node: &Node, finalizer: &str) -> Result<()> {
        let rest: Vec<&String> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": node.resource_version}});
        self.merge_patch(def, node, &patch).await
    }

    async fn merge_patch(&self, def: &ResourceDef, node: &Node, patch: &Value) -> Result<()> {
        let path = object_path(def, node.namespace.as_deref(), &node.name);
        match self
            .ctx
            .client
            .send_raw(Method::PATCH, &path, Some("application/merge-patch+json"), json_bytes(patch))
            .await
        {
            Ok(r) => {
                let _ = r.into_body().collect().await;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::Api { what: format!("PATCH {path}"), source }),
        }
    }

    async fn get_json(&self, path: &str) -> Result<Option<Value>> {
        match self.ctx.client.send_raw(Method::GET, path, None, Bytes::new()).await {
            Ok(r) => {
                let body = r
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| Error::Body { what: format!("GET {path}"), reason: e.to_string() })?
                    .to_bytes();
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| Error::Body { what: format!("GET {path}"), reason: e.to_string() })
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(source) => Err(Error::Api { what: format!("GET {path}"), source }),
        }
    }
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// The REST path of one object of a served kind.
fn object_path(def: &ResourceDef, ns: Option<&str>, name: &str) -> String {
    let base = if def.group.is_empty() {
        format!("/api/{}", def.version)
    } else {
        format!("/apis/{}/{}", def.group, def.version)
    };
    match ns.filter(|_| def.namespaced) {
        Some(ns) => format!("{base}/namespaces/{ns}/{}/{name}", def.plural),
        None => format!("{base}/{}/{name}", def.plural),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(owners: &[&str]) -> Node {
        Node {
            kind: "Pod",
            namespace: Some("default".into()),
            name: "p".into(),
            resource_version: "1".into(),
            owners: owners.iter().map(|u| OwnerReference { uid: u.to_string(), ..Default::default() }).collect(),
            deleting: false,
            finalizers: vec![],
        }
    }

    #[test]
    fn graph_tracks_dependents_across_updates() {
        let mut g = Graph::default();
        g.link("p1", node(&["rs1"]));
        g.link("p2", node(&["rs1", "rs2"]));
        assert_eq!(g.dependents["rs1"].len(), 2);
        // p2 released from rs1 (orphaned)
        g.unlink("p2");
        g.link("p2", node(&["rs2"]));
        assert_eq!(g.dependents["rs1"].iter().collect::<Vec<_>>(), ["p1"]);
        g.unlink("p1");
        assert!(!g.dependents.contains_key("rs1"));
    }

    #[test]
    fn paths_of_served_kinds() {
        assert_eq!(object_path(by_kind("Pod").unwrap(), Some("a"), "x"), "/api/v1/namespaces/a/pods/x");
        assert_eq!(
            object_path(by_kind("ReplicaSet").unwrap(), Some("a"), "x"),
            "/apis/apps/v1/namespaces/a/replicasets/x"
        );
        assert_eq!(object_path(by_kind("Node").unwrap(), Some("a"), "n"), "/api/v1/nodes/n");
    }
}
