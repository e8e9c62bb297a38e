//! The pure part of a StatefulSet sync: which ordinal each pod holds, which pods to
//! create and delete next (ordered or parallel, scale-down from the top, the rolling
//! update from the highest ordinal down to the partition), the status, and the pods and
//! claims to create. No I/O.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::super::owned_pods;

/// The label naming the pod within its set (`<set>-<ordinal>`), for per-pod Services.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label carrying the ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The label naming the ControllerRevision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// `(parent, ordinal)` of a pod named `<parent>-<ordinal>`.
pub fn parent_and_ordinal(name: &str) -> Option<(&str, i32)> {
    let (parent, ord) = name.rsplit_once('-')?;
    if ord.is_empty() || !ord.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parent, ord.parse().ok()?))
}

/// Whether a pod's name makes it a member of the set named `set`.
pub fn is_member(set: &str, pod: &Pod) -> bool {
    pod.metadata.name.as_deref().and_then(parent_and_ordinal).is_some_and(|(p, _)| p == set)
}

pub fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

/// The claim of volume template `template` for the pod with `ordinal`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

pub fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(REVISION_LABEL).map(String::as_str)
}

/// Phase Running with the Ready condition.
pub fn running_and_ready(pod: &Pod) -> bool {
    owned_pods::phase(pod) == "Running" && owned_pods::is_ready(pod)
}

/// Running and Ready for at least `min_ready` seconds at `now`.
fn running_and_available(pod: &Pod, min_ready: i64, now: i64) -> bool {
    owned_pods::phase(pod) == "Running" && owned_pods::ready_since(pod).is_some_and(|t| t + min_ready <= now)
}

fn healthy(pod: &Pod) -> bool {
    running_and_ready(pod) && !owned_pods::is_terminating(pod)
}

fn finished(pod: &Pod) -> bool {
    matches!(owned_pods::phase(pod), "Failed" | "Succeeded")
}

/// Which template a new pod is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The current revision (below the partition of a rolling update in progress).
    Current,
    Update,
}

/// A pod to delete, by name and uid (the precondition that spares a same-named successor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub name: String,
    pub uid: String,
    /// Why, for the event and the log.
    pub reason: &'static str,
}

/// What one sync should do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Ordinals to create a pod for, and from which revision.
    pub create: Vec<(i32, From)>,
    pub delete: Vec<Deletion>,
    pub status: StatefulSetStatus,
    /// Look again then (a pod becomes available after minReadySeconds).
    pub requeue_after: Option<Duration>,
}

/// The revisions a plan is made against.
#[derive(Debug, Clone, Copy)]
pub struct Revisions<'a> {
    pub current: &'a str,
    pub update: &'a str,
}

fn deletion(p: &Pod, reason: &'static str) -> Deletion {
    Deletion {
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        reason,
    }
}

/// The first ordinal (`spec.ordinals.start`) and the replica count.
pub fn ordinal_range(set: &StatefulSet) -> (i32, i32) {
    let spec = set.spec.as_ref();
    let start = spec.and_then(|s| s.ordinals.as_ref()).and_then(|o| o.start).unwrap_or(0).max(0);
    (start, spec.and_then(|s| s.replicas).unwrap_or(1).max(0))
}

/// Whether a new pod with `ordinal` is made from the current revision: a rolling update
/// keeps the ordinals below its partition at the current revision (upstream's rule,
/// including that without `rollingUpdate` the first currentReplicas stay current).
pub fn from_for(set: &StatefulSet, ordinal: i32) -> From {
    let spec = set.spec.clone().unwrap_or_default();
    let strategy = spec.update_strategy.unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") != "RollingUpdate" {
        return From::Update;
    }
    let (start, _) = ordinal_range(set);
    let below = match strategy.rolling_update.as_ref() {
        Some(r) => ordinal < start + r.partition.unwrap_or(0),
        None => ordinal < start + set.status.as_ref().and_then(|s| s.current_replicas).unwrap_or(0),
    };
    if below { From::Current } else { From::Update }
}

/// The sync, as upstream's StatefulSet control does it:
/// 1. every ordinal in range without a pod gets one; a failed or succeeded pod is
///    deleted first (its successor comes when it is gone). OrderedReady stops at the
///    first pod it creates, and at the first pod that is not Running and available,
///    so pod n+1 is only created once pod n is Ready;
/// 2. pods beyond the range go, highest ordinal first (OrderedReady: one at a time,
///    and only when every pod in range is healthy);
/// 3. RollingUpdate deletes one pod of an old revision at a time, from the highest
///    ordinal down to the partition, each only once the pods above are healthy (the
///    deleted pod is recreated from the update revision by step 1 of a later sync).
pub fn plan(set: &StatefulSet, pods: &[Arc<Pod>], revs: Revisions<'_>, now: i64) -> Plan {
    let spec = set.spec.clone().unwrap_or_default();
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let (start, replicas) = ordinal_range(set);
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
    let mut slots: Vec<Option<&Pod>> = vec![None; replicas as usize];
    let mut condemned: BTreeMap<i32, &Pod> = BTreeMap::new();
    for p in pods {
        let Some((parent, ord)) = p.metadata.name.as_deref().and_then(parent_and_ordinal) else { continue };
        if parent != set_name {
            continue;
        }
        if (start..start + replicas).contains(&ord) {
            slots[(ord - start) as usize] = Some(p);
        } else {
            condemned.insert(ord, p);
        }
    }
    let mut out = Plan { status: status(set, pods, revs, now), ..Default::default() };
    if min_ready > 0 {
        out.requeue_after = soonest_available(pods, min_ready, now).map(|s| Duration::from_secs(s as u64));
    }
    if set.metadata.deletion_timestamp.is_some() {
        return out;
    }
    let first_unhealthy = slots.iter().flatten().chain(condemned.values()).find(|p| !healthy(p)).copied();

    for (i, slot) in slots.iter().enumerate() {
        let ord = start + i as i32;
        let Some(p) = slot else {
            out.create.push((ord, from_for(set, ord)));
            if monotonic {
                return out;
            }
            continue;
        };
        if owned_pods::is_terminating(p) {
            if monotonic {
                return out;
            }
            continue;
        }
        if finished(p) {
            out.delete.push(deletion(p, "failed"));
            if monotonic {
                return out;
            }
            continue;
        }
        if monotonic && !running_and_available(p, min_ready, now) {
            return out;
        }
    }

    for p in condemned.values().rev() {
        if owned_pods::is_terminating(p) {
            if monotonic {
                return out;
            }
            continue;
        }
        if monotonic && !running_and_ready(p) && first_unhealthy.is_some_and(|u| !std::ptr::eq(u, *p)) {
            return out;
        }
        out.delete.push(deletion(p, "scale down"));
        if monotonic {
            return out;
        }
    }
    // Parallel waits for its creates and deletes before rolling.
    if !out.create.is_empty() || !out.delete.is_empty() {
        return out;
    }

    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") != "RollingUpdate" {
        return out;
    }
    let partition = strategy.rolling_update.as_ref().and_then(|r| r.partition).unwrap_or(0).max(0) as usize;
    for slot in slots.iter().skip(partition).rev() {
        let Some(p) = slot else { return out };
        if revision_of(p) != Some(revs.update) && !owned_pods::is_terminating(p) {
            out.delete.push(deletion(p, "update"));
            return out;
        }
        if !running_and_available(p, min_ready, now) || owned_pods::is_terminating(p) {
            return out;
        }
    }
    out
}

/// Seconds until the next ready pod becomes available (minReadySeconds).
fn soonest_available(pods: &[Arc<Pod>], min_ready: i64, now: i64) -> Option<i64> {
    pods.iter().filter_map(|p| owned_pods::ready_since(p)).map(|t| t + min_ready - now).filter(|&d| d > 0).min()
}

/// The status of the set from its pods (upstream counts every created pod as a
/// replica, terminating ones too; current/updated count live pods by revision label),
/// with the rolling update completed once every pod is updated and ready.
pub fn status(set: &StatefulSet, pods: &[Arc<Pod>], revs: Revisions<'_>, now: i64) -> StatefulSetStatus {
    let spec = set.spec.clone().unwrap_or_default();
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
    let prev = set.status.clone().unwrap_or_default();
    let mut st = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        current_revision: Some(revs.current.to_string()),
        update_revision: Some(revs.update.to_string()),
        collision_count: prev.collision_count,
        ready_replicas: Some(0),
        available_replicas: Some(0),
        current_replicas: Some(0),
        updated_replicas: Some(0),
        ..Default::default()
    };
    let (mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0);
    for p in pods.iter().filter(|p| is_member(set_name, p)) {
        st.replicas += 1;
        if running_and_ready(p) {
            ready += 1;
            if running_and_available(p, min_ready, now) {
                available += 1;
            }
        }
        if !owned_pods::is_terminating(p) {
            let rev = revision_of(p);
            if rev == Some(revs.current) {
                current += 1;
            }
            if rev == Some(revs.update) {
                updated += 1;
            }
        }
    }
    let rolling = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate");
    if rolling == "RollingUpdate" && updated == st.replicas && ready == st.replicas {
        current = updated;
        st.current_revision = st.update_revision.clone();
    }
    st.ready_replicas = Some(ready);
    st.available_replicas = Some(available);
    st.current_replicas = Some(current);
    st.updated_replicas = Some(updated);
    st
}

/// The pod with `ordinal` made from `template` (of revision `revision`): its stable
/// name, the identity labels, hostname and subdomain, and a volume per claim template
/// pointing at the ordinal's claim (replacing a template volume of the same name).
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let name = pod_name(&set_name, ordinal);
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.clone().unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.into());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = set.spec.as_ref().and_then(|s| s.service_name.clone()).filter(|s| !s.is_empty());
    let mut volumes = spec.volumes.take().unwrap_or_default();
    for claim in claim_templates(set) {
        let tname = claim.metadata.name.clone().unwrap_or_default();
        let v = Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&tname, &set_name, ordinal),
                read_only: None,
            }),
            ..Default::default()
        };
        match volumes.iter_mut().find(|x| x.name == tname) {
            Some(x) => *x = v,
            None => volumes.push(v),
        }
    }
    spec.volumes = Some(volumes).filter(|v| !v.is_empty());
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![owned_pods::controller_ref(set)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

pub fn claim_templates(set: &StatefulSet) -> Vec<PersistentVolumeClaim> {
    set.spec.as_ref().and_then(|s| s.volume_claim_templates.clone()).unwrap_or_default()
}

/// Whether `persistentVolumeClaimRetentionPolicy.<field>` is Delete (the default is Retain).
pub fn retention_deletes(set: &StatefulSet, when_scaled: bool) -> bool {
    let p = set.spec.as_ref().and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let v = p.and_then(|p| if when_scaled { p.when_scaled.as_deref() } else { p.when_deleted.as_deref() });
    v == Some("Delete")
}

/// The claims of the pod with `ordinal`: each template under its per-ordinal name,
/// labelled with the set's matchLabels (so `kubectl get pvc -l` finds them), owned by
/// the set only when `whenDeleted: Delete` asks the garbage collector to remove them
/// with it.
pub fn new_claims(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let match_labels = set.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).unwrap_or_default();
    let owner: Option<OwnerReference> =
        retention_deletes(set, false).then(|| OwnerReference { controller: None, ..owned_pods::controller_ref(set) });
    claim_templates(set)
        .into_iter()
        .map(|t| {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(match_labels.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&tname, &set_name, ordinal)),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// Claims of ordinals above the range that `whenScaled: Delete` removes once their
/// pod is gone (names of claims in `claims` with no pod of that ordinal in `pods`).
pub fn scaled_away_claims(set: &StatefulSet, pods: &[Arc<Pod>], claims: &[String]) -> Vec<String> {
    if !retention_deletes(set, true) {
        return Vec::new();
    }
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let (start, replicas) = ordinal_range(set);
    let live: Vec<i32> = pods
        .iter()
        .filter_map(|p| p.metadata.name.as_deref().and_then(parent_and_ordinal))
        .filter(|(p, _)| *p == set_name)
        .map(|(_, o)| o)
        .collect();
    let templates: Vec<String> = claim_templates(set).iter().filter_map(|t| t.metadata.name.clone()).collect();
    claims
        .iter()
        .filter(|c| {
            templates.iter().any(|t| {
                c.strip_prefix(&format!("{t}-"))
                    .and_then(parent_and_ordinal)
                    .is_some_and(|(p, o)| p == set_name && o >= start + replicas && !live.contains(&o))
            })
        })
        .cloned()
        .collect()
}
