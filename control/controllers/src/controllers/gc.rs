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
//! Owners of kinds without an informer (custom resources, most often) are followed by a
//! watch of their own, started when a dependent first names such a kind, so that their
//! deletion is noticed too (and a list when it starts catches owners deleted before).
//!
//! Scope: objects of the kinds in `skiff_api::finalizers::GARBAGE_COLLECTED_KINDS`
//! (those with an informer in `Context`). Namespaces, ConfigMaps, Secrets, Endpoints,
//! Events, Leases and RBAC objects are not watched: they are never collected as
//! dependents, and the API server treats Foreground/Orphan deletes of them as
//! Background (otherwise their finalizer would never be removed). Owners of any served
//! kind are recognised: an owner's (apiVersion, kind) is resolved through the server's
//! discovery documents, and every request goes through `skiff_api::dynamic`, so the
//! collector knows no kind's URL itself.
//!
//! It must not delete anything whose owner it has not confirmed absent, and it only
//! writes ownerReferences and its own two finalizers besides deleting.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{Metadata, Resource};
use serde_json::{Value, json};
use skiff_api::Patch;
use skiff_api::WatchEvent;
use skiff_api::dynamic::{ApiResource, Discovery, DynamicApi};
use skiff_api::finalizers::{
    FOREGROUND_DELETION as FOREGROUND_FINALIZER, GARBAGE_COLLECTED_KINDS, ORPHAN as ORPHAN_FINALIZER,
};
use skiff_api::reflector::{Cache, Change};
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use tokio::sync::mpsc;

use super::Context;

/// Dependents are looked at this long after they change, so that at start-up the owners'
/// snapshots (which arrive from other caches in no particular order) are in the graph
/// first and no needless live lookups are made.
const SETTLE: Duration = Duration::from_secs(1);
/// How long an owner watch waits before starting again after it failed.
const OWNER_WATCH_RESTART: Duration = Duration::from_secs(2);
/// How long one owner WATCH request lasts before it is renewed from its last revision.
const OWNER_WATCH_SECONDS: u32 = 300;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{verb} of {kind} {name} failed: {source}")]
    Api {
        verb: &'static str,
        kind: String,
        name: String,
        #[source]
        source: skiff_api::client::Error,
    },
    #[error("discovering the resource of {kind} ({api_version}) failed: {source}")]
    Discovery {
        api_version: String,
        kind: String,
        #[source]
        source: skiff_api::client::Error,
    },
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

/// Feeds one cache's changes to the collector and records its resource in `watched`.
fn forward<K>(
    cache: &Cache<K>,
    tx: mpsc::UnboundedSender<Seen>,
    watched: &mut HashMap<&'static str, ApiResource>,
    tasks: &mut tokio::task::JoinSet<()>,
) where
    K: Resource + Metadata<Ty = ObjectMeta> + Send + Sync + 'static,
    K::Scope: 'static,
{
    watched.insert(K::KIND, ApiResource::of::<K>());
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
    /// The resources of the watched kinds, by kind.
    watched: HashMap<&'static str, ApiResource>,
    /// Resolves owners of kinds that are not watched.
    discovery: Discovery,
    /// Owner kinds without an informer that an owner watch follows (`group/Kind`).
    owner_kinds: Mutex<HashSet<String>>,
    /// Where the owner watches report deleted owners.
    tx: mpsc::UnboundedSender<Seen>,
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Entry point (see `CONTROLLERS`).
pub async fn run(ctx: Arc<Context>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    let i = &ctx.informers;
    let mut w = HashMap::new();
    forward(&i.pods, tx.clone(), &mut w, &mut tasks);
    forward(&i.nodes, tx.clone(), &mut w, &mut tasks);
    forward(&i.services, tx.clone(), &mut w, &mut tasks);
    forward(&i.endpoint_slices, tx.clone(), &mut w, &mut tasks);
    forward(&i.deployments, tx.clone(), &mut w, &mut tasks);
    forward(&i.replica_sets, tx.clone(), &mut w, &mut tasks);
    forward(&i.daemon_sets, tx.clone(), &mut w, &mut tasks);
    forward(&i.jobs, tx.clone(), &mut w, &mut tasks);
    forward(&i.stateful_sets, tx.clone(), &mut w, &mut tasks);
    forward(&i.controller_revisions, tx.clone(), &mut w, &mut tasks);
    forward(&i.persistent_volume_claims, tx.clone(), &mut w, &mut tasks);
    forward(&i.cron_jobs, tx.clone(), &mut w, &mut tasks);
    forward(&i.service_accounts, tx.clone(), &mut w, &mut tasks);
    // The API server adds the cascading-deletion finalizers to exactly these kinds; one
    // it adds them to but nobody watches would never lose them.
    debug_assert!(
        GARBAGE_COLLECTED_KINDS.iter().all(|k| w.contains_key(k)) && w.len() == GARBAGE_COLLECTED_KINDS.len(),
        "the garbage collector must watch exactly skiff_api::finalizers::GARBAGE_COLLECTED_KINDS"
    );
    let discovery = Discovery::new(ctx.client.clone());
    let gc = Arc::new(Gc {
        ctx: ctx.clone(),
        graph: Mutex::new(Graph::default()),
        watched: w,
        discovery,
        owner_kinds: Mutex::default(),
        tx,
    });
    let queue: WorkQueue<Item> = WorkQueue::new();
    let g = gc.clone();
    let workers = tokio::spawn(run_workers("garbage-collector", queue.clone(), 2, move |item| {
        let g = g.clone();
        async move { g.reconcile(item).await }
    }));
    while let Some(seen) = rx.recv().await {
        let owners = if seen.deleted { Vec::new() } else { seen.meta.owner_references.clone().unwrap_or_default() };
        gc.observe(seen, &queue);
        gc.follow_owner_kinds(&owners, &queue);
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

    /// Starts an owner watch for each owner kind in `owners` that has no informer and
    /// no owner watch yet.
    fn follow_owner_kinds(self: &Arc<Self>, owners: &[OwnerReference], queue: &WorkQueue<Item>) {
        for o in owners {
            let group = group_of(&o.api_version);
            if self.watched.values().any(|r| r.group == group && r.kind == o.kind) {
                continue;
            }
            if !self.owner_kinds.lock().unwrap().insert(format!("{group}/{}", o.kind)) {
                continue;
            }
            let (gc, queue, o) = (self.clone(), queue.clone(), o.clone());
            tokio::spawn(async move { gc.follow_owners(o.api_version, o.kind, queue).await });
        }
    }

    /// Follows the owners of one kind until the kind is no longer served.
    async fn follow_owners(self: Arc<Self>, api_version: String, kind: String, queue: WorkQueue<Item>) {
        let key = format!("{}/{kind}", group_of(&api_version));
        // Once per owner kind: `Seen` names kinds statically, as the informers' are.
        let kind: &'static str = Box::leak(kind.into_boxed_str());
        loop {
            match self.watch_owners(&api_version, kind, &queue).await {
                Ok(()) => break,
                Err(e) => tracing::info!(kind, error = %e, "owner watch restarts"),
            }
            tokio::time::sleep(OWNER_WATCH_RESTART).await;
        }
        // A dependent naming the kind again starts a new watch.
        self.owner_kinds.lock().unwrap().remove(&key);
    }

    /// Lists the owners of `kind` (checking dependents whose owner of that kind is not
    /// among them), then reports each deleted one as it goes. `Ok` when the kind is not
    /// served (any more); an error to start again.
    async fn watch_owners(&self, api_version: &str, kind: &'static str, queue: &WorkQueue<Item>) -> Result<()> {
        let api_err =
            |verb: &'static str| move |source| Error::Api { verb, kind: kind.to_string(), name: String::new(), source };
        let resolved = self.discovery.resolve(api_version, kind).await.map_err(|source| Error::Discovery {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            source,
        })?;
        let Some(resource) = resolved else { return Ok(()) };
        let api = DynamicApi::new(self.ctx.client.clone(), resource.clone());
        let list = match api.list(None).await {
            Ok(l) => l,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(api_err("LIST")(e)),
        };
        let live: HashSet<&str> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.pointer("/metadata/uid").and_then(Value::as_str))
            .collect();
        {
            let g = self.graph.lock().unwrap();
            for (uid, node) in &g.objects {
                let orphaned = node.owners.iter().any(|o| {
                    o.kind == kind && group_of(&o.api_version) == resource.group && !live.contains(o.uid.as_str())
                });
                if orphaned {
                    queue.add(Item::Dependent(uid.clone()));
                }
            }
        }
        tracing::debug!(kind, owners = live.len(), "following owners of a kind without an informer");
        let mut rv = list.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("").to_string();
        loop {
            let mut events = match api.watch(None, &rv, OWNER_WATCH_SECONDS).await {
                Ok(w) => w,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(api_err("WATCH")(e)),
            };
            while let Some(ev) = events.next().await {
                let obj = match ev.map_err(api_err("WATCH"))? {
                    WatchEvent::Bookmark(r) => {
                        rv = r;
                        continue;
                    }
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                        rv = o.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or(&rv).to_string();
                        continue;
                    }
                    WatchEvent::Deleted(o) => o,
                };
                rv = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or(&rv).to_string();
                let meta: ObjectMeta = serde_json::from_value(obj["metadata"].clone()).unwrap_or_default();
                if self.tx.send(Seen { kind, meta, deleted: true }).is_err() {
                    return Ok(());
                }
            }
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
        let Some(def) = self.api(node.kind) else { return Ok(Action::Done) };
        if absent.len() == node.owners.len() {
            tracing::info!(kind = node.kind, namespace = node.namespace.as_deref().unwrap_or(""), name = %node.name,
                owners = ?absent, "deleting object whose owners are gone");
            self.delete(&def, &node, uid, "Background").await?;
        } else {
            tracing::info!(kind = node.kind, namespace = node.namespace.as_deref().unwrap_or(""), name = %node.name,
                owners = ?absent, "removing references to absent owners");
            self.drop_refs(&def, &node, &absent).await?;
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
        let resolved = self.discovery.resolve(&o.api_version, &o.kind).await.map_err(|source| Error::Discovery {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            source,
        })?;
        let Some(def) = resolved else {
            tracing::debug!(kind = %o.kind, api_version = %o.api_version, "owner kind not served; keeping dependent");
            return Ok(false);
        };
        if def.namespaced && dependent_ns.is_none() {
            // A cluster-scoped object cannot be owned by a namespaced one; such a
            // reference cannot be resolved, so it never counts as absent.
            tracing::debug!(kind = %o.kind, name = %o.name, "namespaced owner of a cluster-scoped object ignored");
            return Ok(false);
        }
        let api = DynamicApi::new(self.ctx.client.clone(), def);
        let found = api.get(dependent_ns, &o.name).await.map_err(|source| Error::Api {
            verb: "GET",
            kind: o.kind.clone(),
            name: o.name.clone(),
            source,
        })?;
        match found {
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
        let Some(def) = self.api(node.kind) else { return Ok(Action::Done) };
        if node.finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
            for (_, d) in &dependents {
                if let Some(ddef) = self.api(d.kind) {
                    self.drop_refs(&ddef, d, &[uid.to_string()]).await?;
                }
            }
            tracing::info!(kind = node.kind, name = %node.name, orphaned = dependents.len(), "dependents orphaned");
            self.remove_finalizer(&def, &node, ORPHAN_FINALIZER).await?;
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
                && let Some(ddef) = self.api(d.kind)
            {
                // A dependent that may own things itself is deleted in the foreground
                // too, so the whole tree is gone before the owner.
                let policy = if d.kind == "Pod" { "Background" } else { "Foreground" };
                self.delete(&ddef, d, duid, policy).await?;
            }
        }
        if blocking > 0 {
            tracing::debug!(kind = node.kind, name = %node.name, blocking, "foreground deletion waits for dependents");
            // The dependents' deletion events requeue this; the timer only covers
            // events lost with a restarted watch.
            return Ok(Action::RequeueAfter(Duration::from_secs(30)));
        }
        tracing::info!(kind = node.kind, name = %node.name, "dependents gone; finishing foreground deletion");
        self.remove_finalizer(&def, &node, FOREGROUND_FINALIZER).await?;
        Ok(Action::Done)
    }

    /// The dynamic API of a watched kind.
    fn api(&self, kind: &str) -> Option<DynamicApi> {
        self.watched.get(kind).map(|r| DynamicApi::new(self.ctx.client.clone(), r.clone()))
    }

    async fn delete(&self, api: &DynamicApi, node: &Node, uid: &str, policy: &str) -> Result<()> {
        let options = json!({"kind": "DeleteOptions", "apiVersion": "v1",
            "preconditions": {"uid": uid}, "propagationPolicy": policy});
        match api.delete(node.namespace.as_deref(), &node.name, &options).await {
            Ok(_) => Ok(()),
            // A different object under the same name now.
            Err(e) if e.code() == Some(409) => Ok(()),
            Err(source) => Err(Error::Api { verb: "DELETE", kind: node.kind.into(), name: node.name.clone(), source }),
        }
    }

    /// Removes the references to `owner_uids` from a dependent (conditional on the
    /// revision the graph saw; a conflict retries with a fresher graph).
    async fn drop_refs(&self, api: &DynamicApi, node: &Node, owner_uids: &[String]) -> Result<()> {
        let keep: Vec<&OwnerReference> = node.owners.iter().filter(|o| !owner_uids.contains(&o.uid)).collect();
        if keep.len() == node.owners.len() {
            return Ok(());
        }
        let refs = if keep.is_empty() { Value::Null } else { json!(keep) };
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": node.resource_version}});
        self.merge_patch(api, node, patch).await
    }

    async fn remove_finalizer(&self, api: &DynamicApi, node: &Node, finalizer: &str) -> Result<()> {
        let rest: Vec<&String> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": node.resource_version}});
        self.merge_patch(api, node, patch).await
    }

    /// A merge patch; a missing object is fine (it is gone, which is what we wanted).
    async fn merge_patch(&self, api: &DynamicApi, node: &Node, patch: Value) -> Result<()> {
        api.patch(node.namespace.as_deref(), &node.name, &Patch::Merge(patch))
            .await
            .map(|_| ())
            .map_err(|source| Error::Api { verb: "PATCH", kind: node.kind.into(), name: node.name.clone(), source })
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
}
