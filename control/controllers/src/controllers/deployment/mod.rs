//! The Deployment controller: rolls a Deployment's pod template out through one
//! ReplicaSet per template revision, named `<deployment>-<pod-template-hash>`, by the
//! RollingUpdate (bounded by maxSurge / maxUnavailable) or Recreate strategy, keeps
//! `revisionHistoryLimit` old ReplicaSets for `kubectl rollout undo`, and reports the
//! status `kubectl rollout status` reads.
//!
//! The rollout arithmetic, the template hash and the conditions are pure functions
//! (tested below); `reconcile` only reads the caches, decides with them and writes.
//! Every ReplicaSet write is a conditional update from the cached object, so a stale
//! cache costs a conflict and a retry, never a double scale.
//!
//! It must not touch pods (the ReplicaSet controller owns them) nor delete ReplicaSets
//! other than surplus history of its own Deployments.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{ObjectKey, Patch};

use super::replicaset::{controller_ref, owner_ref, selector_of};
use super::{Context, ControllerFuture};
use crate::events::EventType;

mod rollout;
mod status;
mod template;

pub use rollout::{new_rs_replicas, old_rs_scale_down, resolve_fenceposts, scaled_value};
pub use status::{Progress, is_complete, made_progress, set_condition, update_progressing};
pub use template::{HASH_LABEL, equal_ignore_hash, pod_template_hash};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Deployment annotations that describe the rollout itself and are not copied to its
/// ReplicaSets (kubectl's rollback skips the same set when copying back).
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field} {value:?} of Deployment {key}: use an integer or a percentage like \"25%\"")]
    IntOrPercent { key: ObjectKey, field: &'static str, value: String },
    #[error("invalid selector of Deployment {key}: {source}")]
    Selector { key: ObjectKey, source: skiff_api::selector::Error },
    #[error("{what} for Deployment {key} failed: {source}")]
    Api { key: ObjectKey, what: &'static str, source: skiff_api::client::Error },
    #[error("ReplicaSet name {name} of Deployment {key} is taken by another template; retrying with a new hash")]
    HashCollision { key: ObjectKey, name: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Entry point registered in `CONTROLLERS`.
pub fn start(ctx: Arc<Context>) -> ControllerFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let mut d_rx = ctx.informers.deployments.subscribe();
    let mut rs_rx = ctx.informers.replica_sets.subscribe();
    let mut pod_rx = ctx.informers.pods.subscribe();
    let q = queue.clone();
    let feed = ctx.clone();
    let feeder = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(c) = d_rx.recv() => match c {
                    Change::Applied(d) | Change::Deleted(d) => q.add(ObjectKey::of(d.as_ref())),
                },
                Some(c) = rs_rx.recv() => {
                    let rs = match c { Change::Applied(r) | Change::Deleted(r) => r };
                    for k in deployments_of_rs(&feed, &rs) {
                        q.add(k);
                    }
                }
                Some(c) = pod_rx.recv() => {
                    // Only Recreate waits on pods: for the old ones to be gone.
                    if let Change::Deleted(pod) = c
                        && let Some(k) = deployment_of_pod(&feed, &pod)
                    {
                        q.add(k);
                    }
                }
                else => break,
            }
        }
    });
    let reconcile = move |key: ObjectKey| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    };
    run_workers("deployment", queue, 2, reconcile).await;
    feeder.abort();
}

fn deployments_of_rs(ctx: &Context, rs: &ReplicaSet) -> Vec<ObjectKey> {
    let ns = rs.metadata.namespace.as_deref();
    if let Some(r) = controller_ref(&rs.metadata) {
        return if r.kind == "Deployment" { vec![ObjectKey::new(ns, &r.name)] } else { Vec::new() };
    }
    let labels = rs.metadata.labels.clone().unwrap_or_default();
    ctx.informers
        .deployments
        .list_namespace(ns.unwrap_or_default())
        .iter()
        .filter(|d| {
            let sel = d.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default();
            selector_of(&sel).is_ok_and(|s| !s.is_empty() && s.matches(&labels))
        })
        .map(|d| ObjectKey::of(d.as_ref()))
        .collect()
}

fn deployment_of_pod(ctx: &Context, pod: &Pod) -> Option<ObjectKey> {
    let r = controller_ref(&pod.metadata).filter(|r| r.kind == "ReplicaSet")?;
    let ns = pod.metadata.namespace.as_deref();
    let rs = ctx.informers.replica_sets.get_named(ns, &r.name)?;
    let d = controller_ref(&rs.metadata).filter(|r| r.kind == "Deployment")?;
    Some(ObjectKey::new(ns, &d.name))
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// The most pods a ReplicaSet may have right now: its desired count, or more while it
/// has not yet deleted the pods of a scale-down. Counting these (stricter than
/// Kubernetes, which sums only desired counts) keeps surplus pods of a shrinking
/// ReplicaSet from adding to the surge of the growing one.
fn pods_bound(rs: &ReplicaSet) -> i32 {
    spec_replicas(rs).max(rs.status.as_ref().map_or(0, |s| s.replicas))
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

// ---------------------------------------------------------------------------------
// Reconcile.

/// What one pass knows about a Deployment.
struct Pass<'a> {
    ctx: &'a Context,
    key: &'a ObjectKey,
    d: Deployment,
    replicas: i32,
    max_surge: i32,
    max_unavailable: i32,
    /// Owned ReplicaSets, oldest first, refreshed after each of our writes.
    rss: Vec<ReplicaSet>,
    conds: Vec<DeploymentCondition>,
    now: i64,
}

async fn reconcile(ctx: &Context, key: &ObjectKey) -> Result<Action> {
    let Some(d) = ctx.informers.deployments.get(key) else { return Ok(Action::Done) };
    let d = (*d).clone();
    let spec = d.spec.clone().unwrap_or_default();
    let selector = selector_of(&spec.selector).map_err(|source| Error::Selector { key: key.clone(), source })?;
    if selector.is_empty() {
        return Ok(Action::Done);
    }
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let (max_surge, max_unavailable) = if recreate {
        (0, 0)
    } else {
        let ru = spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
        resolve_fenceposts(ru.and_then(|r| r.max_surge.as_ref()), ru.and_then(|r| r.max_unavailable.as_ref()), replicas)
            .map_err(|(field, value)| Error::IntOrPercent { key: key.clone(), field, value })?
    };
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let deleting = d.metadata.deletion_timestamp.is_some();
    let mut rss = Vec::new();
    for rs in ctx.informers.replica_sets.list_namespace(key.ns().unwrap_or_default()) {
        let labels = rs.metadata.labels.clone().unwrap_or_default();
        match controller_ref(&rs.metadata) {
            Some(r) if r.uid == uid => rss.push((*rs).clone()),
            None if !deleting && rs.metadata.deletion_timestamp.is_none() && selector.matches(&labels) => {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(owner_ref(&d));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": rs.metadata.uid,
                    "resourceVersion": rs.metadata.resource_version}});
                let name = rs.metadata.name.as_deref().unwrap_or_default();
                match ctx.client.patch::<ReplicaSet>(key.ns(), name, None, &Patch::Merge(patch)).await {
                    Ok(adopted) => rss.push(adopted),
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(source) => return Err(Error::Api { key: key.clone(), what: "adopting a ReplicaSet", source }),
                }
            }
            _ => {}
        }
    }
    rss.sort_by_key(|rs| (rs.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()), rs.metadata.name.clone()));
    let conds = d.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let mut s =
        Pass { ctx, key, d, replicas, max_surge, max_unavailable, rss, conds, now: jiff::Timestamp::now().as_second() };

    if deleting {
        return s.write_status(None).await;
    }
    if spec.paused == Some(true) {
        let new = s.find_new();
        s.scale_single_active(new).await?;
        let msg = "Deployment is paused";
        set_condition(&mut s.conds, "Progressing", "Unknown", "DeploymentPaused", msg, s.now, false);
        return s.write_status(new).await;
    }
    if recreate { s.recreate().await } else { s.rolling().await }
}

impl Pass<'_> {
    fn api(&self, what: &'static str) -> impl FnOnce(skiff_api::client::Error) -> Error + '_ {
        move |source| Error::Api { key: self.key.clone(), what, source }
    }

    fn name(&self) -> &str {
        &self.key.name
    }

    /// The index of the ReplicaSet running the current template (the oldest such).
    fn find_new(&self) -> Option<usize> {
        let t = &self.d.spec.as_ref()?.template;
        self.rss.iter().position(|rs| {
            rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|rt| equal_ignore_hash(rt, t))
        })
    }

    fn olds(&self, new: Option<usize>) -> Vec<usize> {
        (0..self.rss.len()).filter(|&i| Some(i) != new).collect()
    }

    fn max_old_revision(&self, new: Option<usize>) -> i64 {
        self.olds(new).into_iter().map(|i| revision_of(&self.rss[i])).max().unwrap_or(0)
    }

    /// The annotations a ReplicaSet of this Deployment carries, besides the revision.
    fn rs_annotations(&self, base: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
        let mut a = base.cloned().unwrap_or_default();
        for (k, v) in self.d.metadata.annotations.iter().flatten() {
            if !NOT_COPIED.contains(&k.as_str()) {
                a.insert(k.clone(), v.clone());
            }
        }
        a.insert(DESIRED_REPLICAS.into(), self.replicas.to_string());
        a.insert(MAX_REPLICAS.into(), (self.replicas + self.max_surge).to_string());
        a
    }

    /// Finds the ReplicaSet of the current template (bumping its revision when an old
    /// one is reused, e.g. by `rollout undo`) or creates it with `initial` replicas.
    async fn get_or_create_new(&mut self, initial: impl Fn(&Self) -> i32) -> Result<usize> {
        let new_revision = self.max_old_revision(self.find_new()) + 1;
        if let Some(i) = self.find_new() {
            let rs = &self.rss[i];
            let mut ann = self.rs_annotations(rs.metadata.annotations.as_ref());
            let reused = revision_of(rs) < new_revision;
            if reused {
                ann.insert(REVISION.into(), new_revision.to_string());
            }
            if rs.metadata.annotations.as_ref() != Some(&ann) {
                let mut upd = rs.clone();
                upd.metadata.annotations = Some(ann);
                let rs_name = upd.metadata.name.clone().unwrap_or_default();
                self.rss[i] = self
                    .ctx
                    .client
                    .replace(self.key.ns(), &rs_name, &upd)
                    .await
                    .map_err(self.api("updating the new ReplicaSet's annotations"))?;
                if reused {
                    let msg = format!("Found new replica set \"{rs_name}\"");
                    set_condition(&mut self.conds, "Progressing", "True", "FoundNewReplicaSet", &msg, self.now, true);
                }
            }
            self.set_deployment_revision(revision_of(&self.rss[i])).await?;
            return Ok(i);
        }
        let spec = self.d.spec.clone().unwrap_or_default();
        let collisions = self.d.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
        let hash = pod_template_hash(&spec.template, collisions);
        let rs_name = format!("{}-{hash}", self.name());
        let mut template = spec.template.clone();
        let tm = template.metadata.get_or_insert_with(Default::default);
        tm.labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector.match_labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
        let mut ann = self.rs_annotations(None);
        ann.insert(REVISION.into(), new_revision.to_string());
        let replicas = initial(self);
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(rs_name.clone()),
                namespace: self.key.namespace.clone(),
                labels: tm.labels.clone(),
                annotations: Some(ann),
                owner_references: Some(vec![owner_ref(&self.d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let created = match self.ctx.client.create(self.key.ns(), &rs).await {
            Ok(c) => c,
            Err(e) if e.is_already_exists() => {
                // Ours but not yet in the cache, or another template's: tell them apart.
                let existing: ReplicaSet = self
                    .ctx
                    .client
                    .get(self.key.ns(), &rs_name)
                    .await
                    .map_err(self.api("reading an existing ReplicaSet"))?;
                let ours =
                    controller_ref(&existing.metadata).is_some_and(|r| Some(&r.uid) == self.d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &spec.template));
                if ours && same {
                    self.rss.push(existing);
                    return Ok(self.rss.len() - 1);
                }
                let patch = json!({"status": {"collisionCount": collisions + 1}});
                self.ctx
                    .client
                    .patch::<Deployment>(self.key.ns(), self.name(), Some("status"), &Patch::Merge(patch))
                    .await
                    .map_err(self.api("raising collisionCount"))?;
                return Err(Error::HashCollision { key: self.key.clone(), name: rs_name });
            }
            Err(e) => return Err(self.api("creating a ReplicaSet")(e)),
        };
        tracing::info!(deployment = %self.key, replicaset = %rs_name, replicas, revision = new_revision, "created ReplicaSet");
        if replicas > 0 {
            let msg = format!("Scaled up replica set {rs_name} from 0 to {replicas}");
            self.ctx.events.record(&self.d, EventType::Normal, "ScalingReplicaSet", &msg).await;
        }
        let msg = format!("Created new replica set \"{rs_name}\"");
        set_condition(&mut self.conds, "Progressing", "True", "NewReplicaSetCreated", &msg, self.now, true);
        self.rss.push(created);
        self.set_deployment_revision(new_revision).await?;
        Ok(self.rss.len() - 1)
    }

    /// Mirrors the current revision on the Deployment, as `kubectl describe` shows it.
    async fn set_deployment_revision(&mut self, revision: i64) -> Result<()> {
        let cur = self.d.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).cloned();
        if cur.as_deref() == Some(revision.to_string().as_str()) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
        match self.ctx.client.patch::<Deployment>(self.key.ns(), self.name(), None, &Patch::Merge(patch)).await {
            Ok(d) => {
                self.d.metadata = d.metadata;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(self.api("annotating the revision")(e)),
        }
    }

    /// Sets one ReplicaSet's desired replicas (conditional on the cached version) and
    /// records the ScalingReplicaSet event.
    async fn scale(&mut self, i: usize, to: i32) -> Result<bool> {
        let from = spec_replicas(&self.rss[i]);
        let ann = self.rs_annotations(self.rss[i].metadata.annotations.as_ref());
        if from == to && self.rss[i].metadata.annotations.as_ref() == Some(&ann) {
            return Ok(false);
        }
        let mut upd = self.rss[i].clone();
        upd.spec.get_or_insert_with(Default::default).replicas = Some(to);
        upd.metadata.annotations = Some(ann);
        let rs_name = upd.metadata.name.clone().unwrap_or_default();
        self.rss[i] =
            self.ctx.client.replace(self.key.ns(), &rs_name, &upd).await.map_err(self.api("scaling a ReplicaSet"))?;
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            tracing::info!(deployment = %self.key, replicaset = %rs_name, from, to, "scaled ReplicaSet");
            let msg = format!("Scaled {dir} replica set {rs_name} from {from} to {to}");
            self.ctx.events.record(&self.d, EventType::Normal, "ScalingReplicaSet", &msg).await;
        }
        Ok(from != to)
    }

    /// Paused: only follow `spec.replicas` when one ReplicaSet is active (or none is, then
    /// the newest); several active ones keep their sizes until the rollout resumes.
    async fn scale_single_active(&mut self, new: Option<usize>) -> Result<()> {
        let active: Vec<usize> = (0..self.rss.len()).filter(|&i| spec_replicas(&self.rss[i]) > 0).collect();
        let target = match active.as_slice() {
            [one] => Some(*one),
            [] => new.or(self.rss.len().checked_sub(1)),
            _ => None,
        };
        if let Some(i) = target {
            self.scale(i, self.replicas).await?;
        }
        Ok(())
    }

    /// RollingUpdate: grow the new ReplicaSet within maxSurge, shrink old ones within
    /// maxUnavailable, one step per pass (the ReplicaSet events bring the next pass).
    async fn rolling(&mut self) -> Result<Action> {
        let new = self
            .get_or_create_new(|s| new_rs_replicas(s.replicas, s.max_surge, s.rss.iter().map(pods_bound).sum(), 0))
            .await?;
        let total: i32 = self.rss.iter().map(pods_bound).sum();
        let new_spec = spec_replicas(&self.rss[new]);
        let target = if new_spec > self.replicas {
            self.replicas
        } else {
            new_rs_replicas(self.replicas, self.max_surge, total, new_spec)
        };
        if target != new_spec {
            self.scale(new, target).await?;
            return self.write_status(Some(new)).await;
        }
        let olds = self.olds(Some(new));
        let shape: Vec<(i32, i32)> =
            olds.iter().map(|&i| (spec_replicas(&self.rss[i]), available(&self.rss[i]))).collect();
        let targets =
            old_rs_scale_down(self.replicas, self.max_unavailable, new_spec, available(&self.rss[new]), &shape);
        let mut scaled = false;
        for (&i, &to) in olds.iter().zip(&targets) {
            if to != spec_replicas(&self.rss[i]) {
                scaled |= self.scale(i, to).await?;
            }
        }
        if !scaled {
            self.scale(new, new_spec).await?; // refresh desired/max annotations after a resize
        }
        self.write_status(Some(new)).await
    }

    /// Recreate: every old pod gone before the new ReplicaSet gets any.
    async fn recreate(&mut self) -> Result<Action> {
        let new = self.find_new();
        let mut scaled = false;
        for i in self.olds(new) {
            if spec_replicas(&self.rss[i]) > 0 {
                scaled |= self.scale(i, 0).await?;
            }
        }
        if scaled {
            return self.write_status(new).await;
        }
        let old_uids: Vec<String> =
            self.olds(new).into_iter().filter_map(|i| self.rss[i].metadata.uid.clone()).collect();
        let old_pods_left = self.ctx.informers.pods.list_namespace(self.key.ns().unwrap_or_default()).iter().any(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
            controller_ref(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid))
                && phase != "Succeeded"
                && phase != "Failed"
        });
        if old_pods_left {
            return self.write_status(new).await;
        }
        let new = self.get_or_create_new(|s| s.replicas).await?;
        self.scale(new, self.replicas).await?;
        self.write_status(Some(new)).await
    }

    /// Deletes the oldest zero-sized ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&mut self, new: Option<usize>) -> Result<()> {
        let limit = self.d.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
        let mut idle: Vec<&ReplicaSet> = self
            .olds(new)
            .into_iter()
            .map(|i| &self.rss[i])
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && rs.status.as_ref().map_or(0, |s| s.replicas) == 0
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        if idle.len() <= limit {
            return Ok(());
        }
        idle.sort_by_key(|rs| revision_of(rs));
        let doomed: Vec<(String, Option<String>)> = idle[..idle.len() - limit]
            .iter()
            .map(|rs| (rs.metadata.name.clone().unwrap_or_default(), rs.metadata.uid.clone()))
            .collect();
        for (name, uid) in doomed {
            let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}});
            match self.ctx.client.delete::<ReplicaSet>(self.key.ns(), &name, Some(&opts)).await {
                Ok(_) => {
                    tracing::info!(deployment = %self.key, replicaset = %name, "deleted old ReplicaSet beyond revisionHistoryLimit")
                }
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(self.api("deleting an old ReplicaSet")(e)),
            }
        }
        Ok(())
    }

    /// Computes and writes status and conditions; cleans up history once complete.
    async fn write_status(&mut self, new: Option<usize>) -> Result<Action> {
        let st = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
        let sum = |f: &dyn Fn(&ReplicaSet) -> i32| self.rss.iter().map(f).sum::<i32>();
        let available_total = sum(&|rs| st(rs).available_replicas.unwrap_or(0));
        let old = self.d.status.clone().unwrap_or_default();
        let mut status = DeploymentStatus {
            observed_generation: Some(self.d.metadata.generation.unwrap_or(0)),
            replicas: Some(sum(&|rs| st(rs).replicas)),
            updated_replicas: Some(new.map_or(0, |i| st(&self.rss[i]).replicas)),
            ready_replicas: Some(sum(&|rs| st(rs).ready_replicas.unwrap_or(0))),
            available_replicas: Some(available_total),
            // Counted against the desired size, as Kubernetes does.
            unavailable_replicas: Some((self.replicas - available_total).max(0)),
            collision_count: old.collision_count,
            ..Default::default()
        };
        let mut conds = std::mem::take(&mut self.conds);
        if available_total >= self.replicas - self.max_unavailable {
            set_condition(
                &mut conds,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                self.now,
                false,
            );
        } else {
            set_condition(
                &mut conds,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                self.now,
                false,
            );
        }
        let paused = self.d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let deadline =
            self.d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).filter(|&s| s > 0 && s != i32::MAX);
        let generation = self.d.metadata.generation.unwrap_or(0);
        let complete = is_complete(self.replicas, generation, &status);
        let new_name = new.and_then(|i| self.rss[i].metadata.name.clone());
        let progress = Progress { deadline, paused, complete, progressed: made_progress(&old, &status) };
        let requeue = update_progressing(&mut conds, &progress, new_name.as_deref(), self.now);
        let exceeded = |c: &DeploymentCondition| c.reason.as_deref() == Some("ProgressDeadlineExceeded");
        if conds.iter().any(exceeded) && !old.conditions.iter().flatten().any(exceeded) {
            tracing::warn!(deployment = %self.key, replicaset = new_name.as_deref(), "rollout exceeded its progress deadline");
        }
        status.conditions = Some(conds);
        if complete {
            self.cleanup(new).await?;
        }
        if status != old {
            let patch = json!({"status": serde_json::to_value(&status).unwrap_or_default()});
            match self
                .ctx
                .client
                .patch::<Deployment>(self.key.ns(), self.name(), Some("status"), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(self.api("updating status")(e)),
            }
        }
        Ok(match requeue {
            Some(s) => Action::RequeueAfter(Duration::from_secs(s.max(1) as u64)),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
