//! The StatefulSet controller: pods with stable identities `<set>-<ordinal>` (hostname =
//! pod name, subdomain = `serviceName`), each with its own PersistentVolumeClaims
//! `<template>-<set>-<ordinal>` from `volumeClaimTemplates`, created before the pod and
//! kept when the pod or the set goes (unless `persistentVolumeClaimRetentionPolicy`
//! says Delete). `OrderedReady` creates pods one at a time in ordinal order, each once
//! its predecessor is Running and Ready, and removes them from the highest ordinal
//! down; `Parallel` does both at once. Template changes are recorded as
//! ControllerRevisions (`kubectl rollout history|undo statefulset`) and rolled out by
//! RollingUpdate (highest ordinal first, one pod at a time, never below `partition`)
//! or left to the user (OnDelete). A deleted or failed pod comes back under its name.
//!
//! Like upstream, the controller relies on the fixed pod names (a second create of a
//! name fails) and on uid preconditions (a delete never hits a successor); the pod
//! expectations only save requests a stale cache would cause.
//!
//! Simplifications against upstream, on purpose:
//! - An existing pod whose identity labels or claims drifted is not repaired.
//! - `whenScaled: Delete` deletes the claims of ordinals above the range once their pod
//!   is gone, instead of making the pod their owner; `whenDeleted: Delete` owns claims
//!   by the set only when they are created, not when the policy changes later.
//! - `maxUnavailable` of the rolling update (alpha upstream) is ignored: one at a time.
//!
//! It must only write pods and claims it creates or adopts, its own
//! ControllerRevisions and the set's status; the planning (`plan`, `history`) is pure.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::json;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{ObjectKey, Patch};

use super::Context;
use super::owned_pods::{self, PodExpectations};
use super::replicaset::selector_of;
use crate::events::EventType;

pub mod history;
pub mod plan;
#[cfg(test)]
mod tests;

pub use plan::{POD_INDEX_LABEL, POD_NAME_LABEL, REVISION_LABEL};

const KIND: &str = "StatefulSet";
/// Revisions kept beyond the live ones when the set does not say.
const DEFAULT_HISTORY_LIMIT: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid selector of StatefulSet {key}: {source}")]
    Selector { key: ObjectKey, source: skiff_api::selector::Error },
    #[error("{what} for StatefulSet {key} failed: {source}")]
    Api {
        key: ObjectKey,
        what: &'static str,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Entry point (see `CONTROLLERS`).
pub async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let exp = Arc::new(PodExpectations::default());
    let (c, q, e) = (ctx.clone(), queue.clone(), exp.clone());
    let mut set_rx = ctx.informers.stateful_sets.subscribe();
    let mut pod_rx = ctx.informers.pods.subscribe();
    let revisions = owned_pods::queue_controllers_of(&ctx.informers.controller_revisions, KIND, queue.clone());
    let feeder = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(ch) = set_rx.recv() => match ch {
                    Change::Applied(s) => q.add(ObjectKey::of(s.as_ref())),
                    Change::Deleted(s) => {
                        e.forget(s.metadata.uid.as_deref().unwrap_or_default());
                        q.add(ObjectKey::of(s.as_ref()));
                    }
                },
                Some(ch) = pod_rx.recv() => {
                    let (Change::Applied(p) | Change::Deleted(p)) = ch;
                    for key in sets_of_pod(&c, &p) {
                        q.add(key);
                    }
                }
                else => return,
            }
        }
    });
    run_workers("statefulset", queue, 2, move |key| {
        let (ctx, exp) = (ctx.clone(), exp.clone());
        async move { reconcile(&ctx, &exp, key).await }
    })
    .await;
    feeder.abort();
    revisions.abort();
}

/// The sets a pod change concerns: its controller if that is a StatefulSet, else (an
/// orphan) the sets of its namespace that would adopt it.
fn sets_of_pod(ctx: &Context, pod: &Pod) -> Vec<ObjectKey> {
    let ns = pod.metadata.namespace.as_deref();
    if let Some(r) = pod.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true)) {
        return if r.kind == KIND { vec![ObjectKey::new(ns, &r.name)] } else { Vec::new() };
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    ctx.informers
        .stateful_sets
        .list_namespace(ns.unwrap_or_default())
        .iter()
        .filter(|s| plan::is_member(s.metadata.name.as_deref().unwrap_or_default(), pod))
        .filter(|s| {
            s.spec
                .as_ref()
                .is_some_and(|sp| selector_of(&sp.selector).is_ok_and(|m| !m.is_empty() && m.matches(&labels)))
        })
        .map(|s| ObjectKey::of(s.as_ref()))
        .collect()
}

/// One pass: claim pods, settle the revisions, create/delete per the plan (when the
/// cache has caught up with our last writes), write status, trim history and claims.
async fn reconcile(ctx: &Context, exp: &PodExpectations, key: ObjectKey) -> Result<Action> {
    let Some(set) = ctx.informers.stateful_sets.get(&key) else { return Ok(Action::Done) };
    let api = |what: &'static str| {
        let key = key.clone();
        move |source| Error::Api { key, what, source }
    };
    let spec = set.spec.clone().unwrap_or_default();
    let selector = selector_of(&spec.selector).map_err(|source| Error::Selector { key: key.clone(), source })?;
    if selector.is_empty() {
        // Validation forbids this; never let an empty selector claim every pod.
        return Ok(Action::Done);
    }
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let ns = key.ns().unwrap_or("default");
    let set_name = key.name.as_str();
    let deleting = set.metadata.deletion_timestamp.is_some();

    let mut pods: Vec<Arc<Pod>> = Vec::new();
    for pod in ctx.informers.pods.list_namespace(ns) {
        let matches = selector.matches(&pod.metadata.labels.clone().unwrap_or_default());
        let controller = pod.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true));
        match controller {
            Some(r) if r.uid == uid => {
                if matches {
                    pods.push(pod);
                } else if !deleting {
                    owned_pods::release(&ctx.client, &pod, &uid).await.map_err(api("releasing a pod"))?;
                }
            }
            None if matches && !deleting && plan::is_member(set_name, &pod) && !owned_pods::is_terminating(&pod) => {
                match owned_pods::adopt(&ctx.client, set.as_ref(), &pod).await {
                    Ok(p) => pods.push(Arc::new(p)),
                    Err(e) if e.is_not_found() || e.is_conflict() => {
                        tracing::debug!(statefulset = %key, error = %e, "could not adopt pod");
                    }
                    Err(e) => return Err(api("adopting a pod")(e)),
                }
            }
            _ => {}
        }
    }

    let mut revs: Vec<ControllerRevision> = Vec::new();
    for r in ctx.informers.controller_revisions.list_namespace(ns) {
        let controller = r.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
        match controller {
            Some(o) if o.uid == uid => revs.push(r.as_ref().clone()),
            // Left by a set deleted with --cascade=orphan: adopted with its pods, so that
            // re-creating the set does not roll them.
            None if !deleting && history::adoptable(&set, &r, |l| selector.matches(l)) => {
                match adopt_revision(ctx, &set, &r).await {
                    Ok(adopted) => revs.push(adopted),
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => return Err(api("adopting a revision")(e)),
                }
            }
            _ => {}
        }
    }
    history::sort(&mut revs);
    let Some(update) = settle_update_revision(ctx, &set, &key, &mut revs).await? else {
        return Ok(Action::RequeueAfter(Duration::from_secs(1)));
    };
    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|c| revs.iter().any(|r| r.metadata.name.as_deref() == Some(c.as_str())))
        .unwrap_or_else(|| update.clone());
    let current_template = revs
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(current.as_str()))
        .and_then(history::template_of)
        .unwrap_or_else(|| spec.template.clone());

    let now = jiff::Timestamp::now().as_second();
    let revisions = plan::Revisions { current: &current, update: &update };
    let plan = plan::plan(&set, &pods, revisions, now);
    if !deleting && exp.satisfied(&uid, ns, &ctx.informers.pods) {
        for &(ord, from) in &plan.create {
            let (template, rev) = match from {
                plan::From::Current => (&current_template, current.as_str()),
                plan::From::Update => (&spec.template, update.as_str()),
            };
            if !create_claims(ctx, &set, &key, ord).await? {
                continue;
            }
            let pod = plan::new_pod(&set, template, ord, rev);
            let name = pod.metadata.name.clone().unwrap_or_default();
            match ctx.client.create(Some(ns), &pod).await {
                Ok(_) => {
                    exp.created(&uid, &name);
                    tracing::info!(statefulset = %key, pod = %name, revision = rev, "created pod");
                    let msg = format!("create Pod {name} in StatefulSet {set_name} successful");
                    ctx.events.record(set.as_ref(), EventType::Normal, "SuccessfulCreate", &msg).await;
                }
                // A stale cache: the pod is there (or still terminating).
                Err(e) if e.is_already_exists() => {}
                Err(e) => {
                    let msg = format!("create Pod {name} in StatefulSet {set_name} failed error: {e}");
                    ctx.events.record(set.as_ref(), EventType::Warning, "FailedCreate", &msg).await;
                    return Err(api("creating a pod")(e));
                }
            }
        }
        for d in &plan.delete {
            let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": d.uid}});
            match ctx.client.delete::<Pod>(Some(ns), &d.name, Some(&opts)).await {
                Ok(true) => {
                    exp.deleted(&uid, &d.uid);
                    tracing::info!(statefulset = %key, pod = %d.name, reason = d.reason, "deleted pod");
                    let msg = format!("delete Pod {} in StatefulSet {set_name} successful", d.name);
                    ctx.events.record(set.as_ref(), EventType::Normal, "SuccessfulDelete", &msg).await;
                }
                Ok(false) => {}
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(api("deleting a pod")(e)),
            }
        }
    }

    if status_differs(set.status.as_ref(), &plan.status) {
        let patch = Patch::Merge(json!({"status": plan.status}));
        match ctx.client.patch::<StatefulSet>(Some(ns), set_name, Some("status"), &patch).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(Action::Done),
            Err(e) => return Err(api("updating status")(e)),
        }
    }
    if !deleting {
        trim_history(ctx, &set, &key, &revs, &pods, [current.as_str(), update.as_str()]).await?;
        delete_scaled_away_claims(ctx, &set, &key, &pods).await?;
    }
    Ok(match plan.requeue_after {
        Some(d) => Action::RequeueAfter(d),
        None if !exp.satisfied(&uid, ns, &ctx.informers.pods) => Action::RequeueAfter(Duration::from_secs(5)),
        None => Action::Done,
    })
}

/// Makes `set` the controller of an orphan revision (failing if it changed since).
async fn adopt_revision(
    ctx: &Context,
    set: &StatefulSet,
    rev: &ControllerRevision,
) -> skiff_api::client::Result<ControllerRevision> {
    let mut refs = rev.metadata.owner_references.clone().unwrap_or_default();
    refs.push(owned_pods::controller_ref(set));
    let patch = Patch::Merge(json!({"metadata": {
        "ownerReferences": refs,
        "uid": rev.metadata.uid,
        "resourceVersion": rev.metadata.resource_version,
    }}));
    let name = rev.metadata.name.as_deref().unwrap_or_default();
    let adopted = ctx.client.patch::<ControllerRevision>(rev.metadata.namespace.as_deref(), name, None, &patch).await?;
    tracing::info!(statefulset = set.metadata.name.as_deref(), revision = name, "adopted revision");
    Ok(adopted)
}

/// Makes sure a revision of the set's template exists and is the newest, returning its
/// name (`None`: a hash collision was recorded in the status; try again).
async fn settle_update_revision(
    ctx: &Context,
    set: &StatefulSet,
    key: &ObjectKey,
    revs: &mut Vec<ControllerRevision>,
) -> Result<Option<String>> {
    let api = |what: &'static str| move |source| Error::Api { key: key.clone(), what, source };
    let ns = key.ns();
    match history::update_revision(set, revs) {
        history::Update::Latest(name) => Ok(Some(name)),
        history::Update::Renumber { name, number } => {
            // A rollback (or a template put back by hand): the old revision becomes the newest.
            let patch = Patch::Merge(json!({"revision": number}));
            ctx.client
                .patch::<ControllerRevision>(ns, &name, None, &patch)
                .await
                .map_err(api("renumbering a revision"))?;
            if let Some(r) = revs.iter_mut().find(|r| r.metadata.name.as_deref() == Some(name.as_str())) {
                r.revision = number;
            }
            history::sort(revs);
            Ok(Some(name))
        }
        history::Update::Create(rev) => {
            let name = rev.metadata.name.clone().unwrap_or_default();
            match ctx.client.create(ns, rev.as_ref()).await {
                Ok(created) => {
                    tracing::info!(statefulset = %key, revision = %name, number = created.revision, "created revision");
                    revs.push(created);
                    Ok(Some(name))
                }
                Err(e) if e.is_already_exists() => {
                    let existing: ControllerRevision =
                        ctx.client.get(ns, &name).await.map_err(api("reading a revision"))?;
                    let ours =
                        existing.metadata.owner_references.iter().flatten().any(|o| {
                            o.controller == Some(true) && o.uid == set.metadata.uid.clone().unwrap_or_default()
                        });
                    if ours && history::restores(&existing, &set.spec.clone().unwrap_or_default().template) {
                        // Our own write, not yet in the cache.
                        revs.push(existing);
                        history::sort(revs);
                        return Ok(Some(name));
                    }
                    let count = set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0) + 1;
                    tracing::warn!(statefulset = %key, revision = %name, collision_count = count, "revision name collision");
                    let patch = Patch::Merge(json!({"status": {"collisionCount": count}}));
                    ctx.client
                        .patch::<StatefulSet>(ns, &key.name, Some("status"), &patch)
                        .await
                        .map_err(api("recording a collision"))?;
                    Ok(None)
                }
                Err(e) => Err(api("creating a revision")(e)),
            }
        }
    }
}

/// Creates the claims of `ordinal` that do not exist yet; `false` when one is still
/// being deleted (the pod must wait for a fresh claim rather than bind the dying one).
async fn create_claims(ctx: &Context, set: &StatefulSet, key: &ObjectKey, ordinal: i32) -> Result<bool> {
    for claim in plan::new_claims(set, ordinal) {
        let name = claim.metadata.name.clone().unwrap_or_default();
        if let Some(c) = ctx.informers.persistent_volume_claims.get_named(key.ns(), &name) {
            if c.metadata.deletion_timestamp.is_some() {
                tracing::info!(statefulset = %key, claim = %name, "waiting for a claim being deleted");
                return Ok(false);
            }
            continue;
        }
        match ctx.client.create(key.ns(), &claim).await {
            Ok(_) => {
                tracing::info!(statefulset = %key, claim = %name, "created claim");
                let msg = format!(
                    "create Claim {name} Pod {} in StatefulSet {} success",
                    plan::pod_name(&key.name, ordinal),
                    key.name
                );
                ctx.events.record(set, EventType::Normal, "SuccessfulCreate", &msg).await;
            }
            Err(e) if e.is_already_exists() => {}
            Err(source) => {
                let msg = format!("create Claim {name} for StatefulSet {} failed error: {source}", key.name);
                ctx.events.record(set, EventType::Warning, "FailedCreate", &msg).await;
                return Err(Error::Api { key: key.clone(), what: "creating a claim", source });
            }
        }
    }
    Ok(true)
}

/// Whether the status written differs from the one wanted in anything we set.
fn status_differs(cur: Option<&StatefulSetStatus>, want: &StatefulSetStatus) -> bool {
    let cur = cur.cloned().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    cur.replicas != want.replicas
        || n(cur.ready_replicas) != n(want.ready_replicas)
        || n(cur.available_replicas) != n(want.available_replicas)
        || n(cur.current_replicas) != n(want.current_replicas)
        || n(cur.updated_replicas) != n(want.updated_replicas)
        || cur.current_revision != want.current_revision
        || cur.update_revision != want.update_revision
        || cur.observed_generation != want.observed_generation
}

/// Deletes the oldest revisions beyond `revisionHistoryLimit` that no pod uses.
async fn trim_history(
    ctx: &Context,
    set: &StatefulSet,
    key: &ObjectKey,
    revs: &[ControllerRevision],
    pods: &[Arc<Pod>],
    keep: [&str; 2],
) -> Result<()> {
    let limit = set.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(DEFAULT_HISTORY_LIMIT).max(0);
    let mut live: Vec<&str> = pods.iter().filter_map(|p| plan::revision_of(p)).collect();
    live.extend(keep);
    for name in history::surplus(revs, &live, limit as usize) {
        match ctx.client.delete::<ControllerRevision>(key.ns(), name, None).await {
            Ok(_) => tracing::info!(statefulset = %key, revision = name, "deleted old revision"),
            Err(source) => return Err(Error::Api { key: key.clone(), what: "deleting a revision", source }),
        }
    }
    Ok(())
}

/// `whenScaled: Delete`: claims of ordinals scaled away go once their pod has.
async fn delete_scaled_away_claims(ctx: &Context, set: &StatefulSet, key: &ObjectKey, pods: &[Arc<Pod>]) -> Result<()> {
    if !plan::retention_deletes(set, true) {
        return Ok(());
    }
    let claims: Vec<String> = ctx
        .informers
        .persistent_volume_claims
        .list_namespace(key.ns().unwrap_or("default"))
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    for name in plan::scaled_away_claims(set, pods, &claims) {
        match ctx.client.delete::<PersistentVolumeClaim>(key.ns(), &name, None).await {
            Ok(_) => {
                tracing::info!(statefulset = %key, claim = %name, "deleted claim of a scaled-away pod");
                let msg = format!("delete Claim {name} in StatefulSet {} successful", key.name);
                ctx.events.record(set, EventType::Normal, "SuccessfulDelete", &msg).await;
            }
            Err(source) => return Err(Error::Api { key: key.clone(), what: "deleting a claim", source }),
        }
    }
    Ok(())
}
