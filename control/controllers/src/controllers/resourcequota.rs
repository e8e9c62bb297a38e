//! The resource quota controller: keeps each ResourceQuota's `status.hard` (its
//! `spec.hard`) and `status.used` (what the objects of its namespace cost, counted by
//! `usage`), which `kubectl get/describe quota` show and quota admission in the API
//! server charges new objects against.
//!
//! As upstream, it recounts a quota when its `spec.hard` differs from `status.hard` (a
//! new or edited quota), when a counted object goes or a pod finishes (the only changes
//! that give back), and every `RESYNC`. It does not recount on creates: admission has
//! charged those already, and a recount racing in-flight creates (charged, not yet
//! stored) would hand their slots out a second time. Objects are listed from the API,
//! not the caches, so a recount sees every create that admission has let through.
//!
//! It must not write anything but ResourceQuota status.

pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::Metadata;
use k8s_openapi::api::core::v1::{ResourceQuota, ResourceQuotaStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use skiff_api::dynamic::{ApiResource, Discovery, DynamicApi};
use skiff_api::reflector::{self, Cache, Change};
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{ListParams, ObjectKey};
use tokio::sync::mpsc;

use self::usage::GroupResource;
use super::Context;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing {resource} in namespace {namespace} to count quota {key} failed: {source}")]
    List {
        key: String,
        resource: String,
        namespace: String,
        #[source]
        source: skiff_api::client::Error,
    },
    #[error("updating the status of ResourceQuota {key} failed: {source}")]
    Status {
        key: String,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How often every quota is recounted regardless (upstream: 5 minutes). Shorter here:
/// deletes of kinds no cache watches (ConfigMaps, Secrets, custom resources) are only
/// seen this way.
const RESYNC: Duration = Duration::from_secs(30);

/// The versions of the groups quota counts most, so a recount needs no discovery; other
/// groups (custom resources) are found through discovery.
const KNOWN_VERSIONS: &[(&str, &str)] = &[
    ("", "v1"),
    ("apps", "v1"),
    ("batch", "v1"),
    ("networking.k8s.io", "v1"),
    ("policy", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
    ("autoscaling", "v2"),
    ("discovery.k8s.io", "v1"),
    ("coordination.k8s.io", "v1"),
    ("storage.k8s.io", "v1"),
];

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    let (quotas, reflect) = reflector::reflector::<ResourceQuota>(ctx.client.clone(), None, ListParams::default());
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let (freed_tx, mut freed) = mpsc::unbounded_channel::<String>();
    let i = ctx.informers.clone();
    let finished = |p: &k8s_openapi::api::core::v1::Pod| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|ph| ph == "Succeeded" || ph == "Failed")
    };
    let watchers = async move {
        tokio::join!(
            forward_frees(i.pods.clone(), freed_tx.clone(), finished),
            forward_frees(i.services.clone(), freed_tx.clone(), |_| false),
            forward_frees(i.persistent_volume_claims.clone(), freed_tx.clone(), |_| false),
            forward_frees(i.deployments.clone(), freed_tx.clone(), |_| false),
            forward_frees(i.replica_sets.clone(), freed_tx.clone(), |_| false),
            forward_frees(i.stateful_sets.clone(), freed_tx.clone(), |_| false),
            forward_frees(i.daemon_sets.clone(), freed_tx.clone(), |_| false),
            forward_frees(i.jobs.clone(), freed_tx.clone(), |_| false),
            forward_frees(i.cron_jobs.clone(), freed_tx.clone(), |_| false),
        );
    };
    let feeder = {
        let (queue, quotas) = (queue.clone(), quotas.clone());
        async move {
            quotas.wait_synced().await;
            let mut changes = quotas.subscribe();
            let mut resync = tokio::time::interval(RESYNC);
            let in_namespace = |ns: &str| {
                for q in quotas.list_namespace(ns) {
                    queue.add(ObjectKey::of(q.as_ref()));
                }
            };
            loop {
                tokio::select! {
                    _ = resync.tick() => for q in quotas.list() {
                        queue.add(ObjectKey::of(q.as_ref()));
                    },
                    Some(c) = changes.recv() => if let Change::Applied(q) = c && needs_count(&q) {
                        queue.add(ObjectKey::of(q.as_ref()));
                    },
                    Some(ns) = freed.recv() => in_namespace(&ns),
                    else => return,
                }
            }
        }
    };
    let discovery = Arc::new(Discovery::new(ctx.client.clone()));
    let versions: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let workers = run_workers("resourcequota", queue, 2, move |key: ObjectKey| {
        let (ctx, quotas, discovery, versions) = (ctx.clone(), quotas.clone(), discovery.clone(), versions.clone());
        async move { reconcile(&ctx, &quotas, &discovery, &versions, &key).await }
    });
    tokio::join!(reflect, watchers, feeder, workers);
}

/// Forwards the namespace of every deleted object, and of every object `frees` says gave
/// its resources back (a finished pod), to `tx`.
async fn forward_frees<K>(cache: Cache<K>, tx: mpsc::UnboundedSender<String>, frees: impl Fn(&K) -> bool)
where
    K: Metadata<Ty = ObjectMeta>,
{
    let mut changes = cache.subscribe();
    while let Some(c) = changes.recv().await {
        let (Change::Applied(o) | Change::Deleted(o)) = &c;
        let freed = matches!(c, Change::Deleted(_)) || frees(o);
        if let Some(ns) = o.metadata().namespace.clone().filter(|_| freed)
            && tx.send(ns).is_err()
        {
            return;
        }
    }
}

/// Whether a quota's status does not reflect its spec: new, or its limits edited.
fn needs_count(q: &ResourceQuota) -> bool {
    let spec = q.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
    let status = q.status.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
    let used = q.status.as_ref().and_then(|s| s.used.clone()).unwrap_or_default();
    let same = |a: &BTreeMap<String, Quantity>, b: &BTreeMap<String, Quantity>| {
        a.len() == b.len()
            && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| usage::Amount::parse(&v.0) == usage::Amount::parse(&w.0)))
    };
    !same(&spec, &status) || spec.keys().any(|k| !used.contains_key(k))
}

async fn reconcile(
    ctx: &Context,
    quotas: &Cache<ResourceQuota>,
    discovery: &Discovery,
    versions: &Mutex<HashMap<String, String>>,
    key: &ObjectKey,
) -> Result<Action> {
    let Some(quota) = quotas.get_named(key.ns(), &key.name) else { return Ok(Action::Done) };
    let ns = key.ns().unwrap_or("").to_string();
    let quota_json = serde_json::to_value(quota.as_ref()).unwrap_or(Value::Null);
    let hard = usage::spec_hard(&quota_json);
    let mut objects = BTreeMap::new();
    for resource in usage::counted_resources(&hard) {
        let Some(api) = resolve(discovery, versions, &resource).await else {
            // Not served (a custom resource not yet defined): nothing of it exists.
            continue;
        };
        let list = match DynamicApi::new(ctx.client.clone(), api).list(Some(&ns)).await {
            Ok(list) => list,
            // A name such as `count/widgets.apps` that no server serves counts nothing.
            Err(e) if e.is_not_found() => Value::Null,
            Err(source) => {
                let resource = format!("{}.{}", resource.1, resource.0);
                return Err(Error::List { key: key.to_string(), resource, namespace: ns.clone(), source });
            }
        };
        let items = list.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        objects.insert(resource, items);
    }
    let used = usage::used(&quota_json, &objects, jiff::Timestamp::now());
    let to_quantities = |l: &usage::ResourceList| -> BTreeMap<String, Quantity> {
        l.iter().map(|(k, a)| (k.clone(), Quantity(a.to_string()))).collect()
    };
    let status = ResourceQuotaStatus { hard: Some(to_quantities(&hard)), used: Some(to_quantities(&used)) };
    if quota.status.as_ref() == Some(&status) {
        return Ok(Action::Done);
    }
    tracing::debug!(quota = %key, used = %usage::pretty(&used), "recounted quota");
    let updated = ResourceQuota { status: Some(status), ..(*quota).clone() };
    match ctx.client.replace_status(key.ns(), &key.name, &updated).await {
        Ok(_) => Ok(Action::Done),
        // Admission charged a create meanwhile (or the spec changed): count again from
        // the newer quota, so the charge is not overwritten by an older count.
        Err(e) if e.is_conflict() => Ok(Action::RequeueAfter(Duration::from_millis(100))),
        Err(e) if e.is_not_found() => Ok(Action::Done),
        Err(source) => Err(Error::Status { key: key.to_string(), source }),
    }
}

/// The served resource of (group, plural) in its preferred version; `None` when the
/// server does not serve it.
async fn resolve(
    discovery: &Discovery,
    versions: &Mutex<HashMap<String, String>>,
    resource: &GroupResource,
) -> Option<ApiResource> {
    let (group, plural) = resource;
    let known = KNOWN_VERSIONS.iter().find(|(g, _)| g == group).map(|(_, v)| v.to_string());
    let cached = versions.lock().unwrap().get(group).cloned();
    let version = match known.or(cached) {
        Some(v) => v,
        None => {
            let served = discovery.namespaced_deletable().await.ok()?;
            let found = served.into_iter().find(|r| &r.group == group && &r.plural == plural)?;
            versions.lock().unwrap().insert(group.clone(), found.version.clone());
            return Some(found);
        }
    };
    Some(ApiResource { group: group.clone(), version, kind: String::new(), plural: plural.clone(), namespaced: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(spec: Value, status: Value) -> ResourceQuota {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "q", "namespace": "n"},
            "spec": {"hard": spec}, "status": status}))
        .unwrap()
    }

    #[test]
    fn a_quota_is_counted_when_new_or_edited_not_when_charged() {
        let hard = serde_json::json!({"pods": "2", "memory": "1Gi"});
        assert!(needs_count(&quota(hard.clone(), serde_json::json!({}))));
        assert!(needs_count(&quota(hard.clone(), serde_json::json!({"hard": {"pods": "3", "memory": "1Gi"}}))));
        // Equal amounts written differently are equal.
        let counted =
            serde_json::json!({"hard": {"pods": "2", "memory": "1024Mi"}, "used": {"pods": "1", "memory": "0"}});
        assert!(!needs_count(&quota(hard, counted)));
    }
}
