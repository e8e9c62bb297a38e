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
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{ObjectKey, Patch};

use super::replicaset::{controller_ref, owner_ref, selector_of};
use super::{Context, ControllerFuture};
use crate::events::EventType;
use crate::helpers::hash::fnv1a_32;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
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

// ---------------------------------------------------------------------------------
// Pure logic.

/// An int, or a percentage of `total` rounded up (`round_up`) or down.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    match v {
        IntOrString::Int(i) => Some(*i),
        IntOrString::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.trim().parse().ok()?;
            let x = pct * i64::from(total);
            let v = if round_up { (x + 99).div_euclid(100) } else { x.div_euclid(100) };
            i32::try_from(v).ok()
        }
    }
}

/// maxSurge (rounded up) and maxUnavailable (rounded down) for `replicas`; both zero
/// would deadlock a rollout, so maxUnavailable becomes 1 then, as in Kubernetes.
pub fn resolve_fenceposts(
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
    replicas: i32,
) -> Result<(i32, i32), (&'static str, String)> {
    let pct25 = IntOrString::String("25%".into());
    let s = surge.unwrap_or(&pct25);
    let u = unavailable.unwrap_or(&pct25);
    let show = |v: &IntOrString| match v {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    };
    let surge = scaled_value(s, replicas, true).ok_or_else(|| ("maxSurge", show(s)))?.max(0);
    let unavailable = scaled_value(u, replicas, false).ok_or_else(|| ("maxUnavailable", show(u)))?.max(0);
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

/// The replicas the new ReplicaSet may have during a rolling update: up to `replicas`,
/// without the total of all ReplicaSets' desired pods exceeding `replicas + max_surge`.
pub fn new_rs_replicas(replicas: i32, max_surge: i32, total_spec: i32, new_spec: i32) -> i32 {
    let max_total = replicas + max_surge;
    if total_spec >= max_total {
        return new_spec;
    }
    let room = max_total - total_spec;
    new_spec + room.min((replicas - new_spec).max(0))
}

/// New desired replicas of the old ReplicaSets (given oldest first as `(spec,
/// available)`) during a rolling update: first drop their unavailable pods, then
/// available ones, never taking availability below `replicas - max_unavailable`.
pub fn old_rs_scale_down(
    replicas: i32,
    max_unavailable: i32,
    new_spec: i32,
    new_available: i32,
    old: &[(i32, i32)],
) -> Vec<i32> {
    let mut out: Vec<i32> = old.iter().map(|&(s, _)| s).collect();
    let old_total: i32 = out.iter().sum();
    if old_total == 0 {
        return out;
    }
    let all = new_spec + old_total;
    let min_available = replicas - max_unavailable;
    let new_unavailable = (new_spec - new_available).max(0);
    let max_scaled_down = all - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return out;
    }
    // Unhealthy old pods first: removing them costs no availability.
    let mut cleaned = 0;
    for (i, &(_, avail)) in old.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = (out[i] - avail).max(0);
        let n = unhealthy.min(max_scaled_down - cleaned);
        out[i] -= n;
        cleaned += n;
    }
    let available: i32 = new_available + old.iter().zip(&out).map(|(&(_, a), &s)| a.min(s)).sum::<i32>();
    let budget = available - min_available;
    let mut scaled = 0;
    for s in out.iter_mut() {
        if scaled >= budget {
            break;
        }
        let n = (*s).min(budget - scaled);
        *s -= n;
        scaled += n;
    }
    out
}

/// Sorts object keys so the JSON is the same whatever order a map iterated in.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for k in keys {
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for x in a {
                canonical(x, out);
                out.push(',');
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A stable, label-safe hash of a pod template (FNV-1a over its canonical JSON and the
/// collision count), spelled without vowels so it never forms words.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: i32) -> String {
    let mut text = String::new();
    canonical(&template_without_hash(template), &mut text);
    let collisions = if collision_count > 0 { collision_count.to_le_bytes().to_vec() } else { vec![] };
    let mut h = fnv1a_32(text.bytes().chain(collisions));
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut s = Vec::new();
    loop {
        s.push(ALPHABET[(h % ALPHABET.len() as u32) as usize]);
        h /= ALPHABET.len() as u32;
        if h == 0 {
            break;
        }
    }
    String::from_utf8(s).unwrap_or_default()
}

/// Drops nulls, empty objects and empty lists: clients that decode into typed structs
/// and encode again (kubectl's `rollout undo` does) add `resources: {}` and the like,
/// which must not make the same template look new.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for x in m.values_mut() {
                normalize(x);
            }
            m.retain(|_, x| !is_empty_value(x));
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The template as normalized JSON without the `pod-template-hash` label: what the hash
/// and the comparison of templates look at.
fn template_without_hash(t: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    if let Some(labels) = v.pointer_mut("/metadata/labels").and_then(|l| l.as_object_mut()) {
        labels.remove(HASH_LABEL);
    }
    normalize(&mut v);
    v
}

/// Same template apart from the hash label (how a ReplicaSet is matched to a revision).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    template_without_hash(a) == template_without_hash(b)
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

/// Sets a condition: a changed status moves lastTransitionTime; `touch` refreshes
/// lastUpdateTime even when nothing else changed (progress was made).
pub fn set_condition(
    conds: &mut Vec<DeploymentCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: i64,
    touch: bool,
) {
    let t = Time(jiff::Timestamp::from_second(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH));
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status == status && c.reason.as_deref() == Some(reason) && !touch {
            return;
        }
        if c.status != status {
            c.last_transition_time = Some(t.clone());
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_update_time = Some(t);
        return;
    }
    conds.push(DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(t.clone()),
        last_update_time: Some(t),
    });
}

/// The rollout is done: every desired pod is updated and available and nothing old is left.
pub fn is_complete(replicas: i32, generation: i64, s: &DeploymentStatus) -> bool {
    s.updated_replicas.unwrap_or(0) == replicas
        && s.replicas.unwrap_or(0) == replicas
        && s.available_replicas.unwrap_or(0) == replicas
        && s.observed_generation.unwrap_or(0) >= generation
}

/// Progress since the last status: more updated, ready or available pods, or fewer old ones.
pub fn made_progress(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let n = |x: Option<i32>| x.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
        || new_old < old_old
}

/// What decides the Progressing condition.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// progressDeadlineSeconds (None: no deadline).
    pub deadline: Option<i32>,
    pub paused: bool,
    pub complete: bool,
    /// The status moved forward since the last one (`made_progress`).
    pub progressed: bool,
}

/// Updates the Progressing condition: NewReplicaSetAvailable once complete,
/// ReplicaSetUpdated (refreshing lastUpdateTime) on progress, ProgressDeadlineExceeded
/// when the last progress is older than the deadline. Returns the seconds after which
/// the deadline must be checked again, if it is running.
pub fn update_progressing(
    conds: &mut Vec<DeploymentCondition>,
    p: &Progress,
    new_rs: Option<&str>,
    now: i64,
) -> Option<i64> {
    let (Some(deadline), false, Some(new_rs)) = (p.deadline, p.paused, new_rs) else { return None };
    let deadline = i64::from(deadline);
    if p.complete {
        let msg = format!("ReplicaSet \"{new_rs}\" has successfully progressed.");
        set_condition(conds, "Progressing", "True", "NewReplicaSetAvailable", &msg, now, false);
        return None;
    }
    if p.progressed {
        let msg = format!("ReplicaSet \"{new_rs}\" is progressing.");
        set_condition(conds, "Progressing", "True", "ReplicaSetUpdated", &msg, now, true);
        return Some(deadline + 1);
    }
    let c = conds.iter().find(|c| c.type_ == "Progressing")?;
    if c.status != "True" || c.reason.as_deref() == Some("NewReplicaSetAvailable") {
        return None;
    }
    let left = c.last_update_time.as_ref().map_or(now, |t| t.0.as_second()) + deadline - now;
    if left >= 0 {
        return Some(left + 1);
    }
    let msg = format!("ReplicaSet \"{new_rs}\" has timed out progressing.");
    set_condition(conds, "Progressing", "False", "ProgressDeadlineExceeded", &msg, now, false);
    None
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
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        assert_eq!(resolve_fenceposts(None, None, 3), Ok((1, 0)));
        // 25% of 3: surge ceil(0.75) = 1, unavailable floor(0.75) = 0.
        assert_eq!(resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 3), Ok((1, 0)));
        assert_eq!(resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 10), Ok((3, 2)));
        assert_eq!(resolve_fenceposts(Some(&IntOrString::Int(2)), Some(&pct("50%")), 5), Ok((2, 2)));
        // Both zero would never make progress: one may be unavailable.
        assert_eq!(resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&pct("0%")), 5), Ok((0, 1)));
        assert_eq!(resolve_fenceposts(Some(&pct("x")), None, 5), Err(("maxSurge", "x".to_string())));
        assert_eq!(resolve_fenceposts(None, Some(&pct("7")), 5), Err(("maxUnavailable", "7".to_string())));
    }

    #[test]
    fn new_replica_set_grows_within_surge() {
        // 3 replicas, surge 1: old RS has 3 → new may get 1.
        assert_eq!(new_rs_replicas(3, 1, 3, 0), 1);
        // Already at max total: no growth.
        assert_eq!(new_rs_replicas(3, 1, 4, 1), 1);
        // Old shrank to 1: new can go to 3 but no further.
        assert_eq!(new_rs_replicas(3, 1, 2, 1), 3);
        assert_eq!(new_rs_replicas(3, 5, 0, 0), 3);
    }

    #[test]
    fn old_replica_sets_shrink_within_unavailable() {
        // 3 replicas, maxUnavailable 0, new has 1 spec and 1 available, old 3/3: drop 1.
        assert_eq!(old_rs_scale_down(3, 0, 1, 1, &[(3, 3)]), vec![2]);
        // New pod not yet available: nothing may go.
        assert_eq!(old_rs_scale_down(3, 0, 1, 0, &[(3, 3)]), vec![3]);
        // Unhealthy old pods go first and cost no availability; no further one may go.
        assert_eq!(old_rs_scale_down(3, 0, 1, 1, &[(3, 2)]), vec![2]);
        // While the new pod is unavailable, nothing may go, not even unhealthy pods
        // (the surge budget is spent), as in Kubernetes.
        assert_eq!(old_rs_scale_down(3, 0, 1, 0, &[(3, 2)]), vec![3]);
        // maxUnavailable 1: one available old pod may go even before the new one is up.
        assert_eq!(old_rs_scale_down(4, 1, 1, 0, &[(4, 4)]), vec![3]);
        // Oldest first across several old ReplicaSets.
        assert_eq!(old_rs_scale_down(4, 0, 4, 4, &[(1, 1), (2, 2)]), vec![0, 0]);
        assert_eq!(old_rs_scale_down(3, 0, 3, 3, &[(0, 0)]), vec![0]);
    }

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container { name: "web".into(), image: Some(image.into()), ..Default::default() }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn template_hash_is_stable_label_safe_and_ignores_its_own_label() {
        let a = template("nginx:1.27");
        let h = pod_template_hash(&a, 0);
        assert_eq!(h, pod_template_hash(&a.clone(), 0));
        assert!(!h.is_empty() && h.len() <= 7 && h.chars().all(|c| c.is_ascii_alphanumeric()), "{h}");
        assert!(!h.chars().any(|c| "aeiou".contains(c)));
        assert_ne!(h, pod_template_hash(&template("nginx:1.28"), 0));
        assert_ne!(h, pod_template_hash(&a, 1), "a collision count gives a new name");
        let mut labeled = a.clone();
        labeled.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert(HASH_LABEL.into(), h.clone());
        assert_eq!(pod_template_hash(&labeled, 0), h);
        assert!(equal_ignore_hash(&labeled, &a));
        assert!(!equal_ignore_hash(&labeled, &template("nginx:1.28")));
        // Re-encoded by a typed client: empty fields do not make a new revision.
        let mut reencoded = a.clone();
        reencoded.spec.as_mut().unwrap().containers[0].resources = Some(Default::default());
        reencoded.spec.as_mut().unwrap().volumes = Some(vec![]);
        assert!(equal_ignore_hash(&reencoded, &a));
        assert_eq!(pod_template_hash(&reencoded, 0), h);
    }

    #[test]
    fn conditions_keep_transition_time_unless_status_changes() {
        let mut c = Vec::new();
        set_condition(&mut c, "Progressing", "True", "ReplicaSetUpdated", "m", 100, true);
        set_condition(&mut c, "Progressing", "True", "ReplicaSetUpdated", "m", 200, true);
        assert_eq!(c[0].last_transition_time.as_ref().unwrap().0.as_second(), 100);
        assert_eq!(c[0].last_update_time.as_ref().unwrap().0.as_second(), 200);
        set_condition(&mut c, "Progressing", "True", "ReplicaSetUpdated", "m", 300, false);
        assert_eq!(c[0].last_update_time.as_ref().unwrap().0.as_second(), 200, "no progress, no touch");
        set_condition(&mut c, "Progressing", "False", "ProgressDeadlineExceeded", "late", 900, false);
        assert_eq!(c[0].last_transition_time.as_ref().unwrap().0.as_second(), 900);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn progress_deadline() {
        let p = Progress { deadline: Some(60), paused: false, complete: false, progressed: true };
        let mut c = Vec::new();
        assert_eq!(update_progressing(&mut c, &p, Some("web-1"), 1000), Some(61));
        assert_eq!(c[0].reason.as_deref(), Some("ReplicaSetUpdated"));
        let stuck = Progress { progressed: false, ..p };
        assert_eq!(update_progressing(&mut c, &stuck, Some("web-1"), 1030), Some(31), "30 s left");
        assert_eq!(update_progressing(&mut c, &stuck, Some("web-1"), 1061), None);
        assert_eq!((c[0].status.as_str(), c[0].reason.as_deref()), ("False", Some("ProgressDeadlineExceeded")));
        assert_eq!(c[0].message.as_deref(), Some("ReplicaSet \"web-1\" has timed out progressing."));
        // Progress after the deadline makes it True again; completion settles it.
        update_progressing(&mut c, &p, Some("web-1"), 1100);
        assert_eq!(c[0].status, "True");
        let done = Progress { complete: true, ..stuck };
        assert_eq!(update_progressing(&mut c, &done, Some("web-1"), 1200), None);
        assert_eq!(c[0].reason.as_deref(), Some("NewReplicaSetAvailable"));
        // A complete rollout never times out, and a paused one is not judged.
        assert_eq!(update_progressing(&mut c, &stuck, Some("web-1"), 9999), None);
        assert_eq!(c[0].reason.as_deref(), Some("NewReplicaSetAvailable"));
        assert_eq!(update_progressing(&mut c, &Progress { paused: true, ..p }, Some("web-1"), 9999), None);
    }

    #[test]
    fn completeness_and_progress() {
        let s = |replicas, updated, ready, available, generation| DeploymentStatus {
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            observed_generation: Some(generation),
            ..Default::default()
        };
        assert!(is_complete(3, 2, &s(3, 3, 3, 3, 2)));
        assert!(!is_complete(3, 2, &s(4, 3, 3, 3, 2)), "an old pod is left");
        assert!(!is_complete(3, 3, &s(3, 3, 3, 3, 2)), "not yet observed");
        assert!(made_progress(&s(3, 0, 3, 3, 1), &s(4, 1, 3, 3, 2)));
        assert!(made_progress(&s(4, 1, 4, 4, 2), &s(3, 1, 3, 3, 2)), "an old pod went away");
        assert!(!made_progress(&s(4, 1, 4, 4, 2), &s(4, 1, 4, 4, 2)));
    }
}
