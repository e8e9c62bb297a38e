//! The ReplicaSet controller: keeps `spec.replicas` live pods matching each ReplicaSet's
//! selector, created from its template, and reports how many exist, are ready and are
//! available in its status.
//!
//! The cache may lag behind our own writes, so every create and delete is recorded as
//! an *expectation* (by pod UID) and the ReplicaSet is not scaled again until the cache
//! has seen them all; that is what stops a stale cache from making it create twice.
//! Pods being deleted (deletionTimestamp set) or finished never count as replicas.
//!
//! It must not schedule, run or finalise pods (the scheduler and the kubelet do), nor
//! garbage-collect pods of deleted ReplicaSets (the garbage collector does); it only
//! writes pods it owns or adopts, and ReplicaSet status.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as MetaSelector, ObjectMeta, OwnerReference};
use serde_json::json;
use skiff_api::reflector::Change;
use skiff_api::selector::LabelSelector;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{ObjectKey, Patch};

use super::{Context, ControllerFuture};
use crate::events::EventType;
use crate::helpers::expectations::{Expect, Seen};

/// Pods created at most per reconcile; the rest come on the next pass.
const BURST: usize = 500;
/// Expectations not met within this long are dropped (a missed watch event must not
/// wedge a ReplicaSet forever).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid selector of {key}: {source}")]
    Selector { key: ObjectKey, source: skiff_api::selector::Error },
    #[error("{what} for ReplicaSet {key} failed: {source}")]
    Api { key: ObjectKey, what: &'static str, source: skiff_api::client::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Entry point registered in `CONTROLLERS`.
pub fn start(ctx: Arc<Context>) -> ControllerFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let expectations = Arc::new(Expectations::new(EXPECTATION_TIMEOUT));
    let mut rs_rx = ctx.informers.replica_sets.subscribe();
    let mut pod_rx = ctx.informers.pods.subscribe();
    let q = queue.clone();
    let feed_ctx = ctx.clone();
    let exp = expectations.clone();
    let feeder = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(c) = rs_rx.recv() => match c {
                    Change::Applied(rs) => q.add(ObjectKey::of(rs.as_ref())),
                    Change::Deleted(rs) => {
                        let key = ObjectKey::of(rs.as_ref());
                        exp.forget(&key);
                        q.add(key);
                    }
                },
                Some(c) = pod_rx.recv() => {
                    let (pod, deleted) = match c {
                        Change::Applied(p) => (p, false),
                        Change::Deleted(p) => (p, true),
                    };
                    for key in owners_to_sync(&feed_ctx, &pod) {
                        observe_pod(&exp, &key, &pod, deleted);
                        q.add(key);
                    }
                }
                else => break,
            }
        }
    });
    let reconcile = move |key: ObjectKey| {
        let ctx = ctx.clone();
        let exp = expectations.clone();
        async move { reconcile(&ctx, &exp, &key).await }
    };
    run_workers("replicaset", queue, 2, reconcile).await;
    feeder.abort();
}

/// The ReplicaSets a pod change concerns: its controller if that is a ReplicaSet, else
/// (an orphan) every ReplicaSet of its namespace whose selector matches, to adopt it.
fn owners_to_sync(ctx: &Context, pod: &Pod) -> Vec<ObjectKey> {
    let ns = pod.metadata.namespace.as_deref();
    if let Some(r) = controller_ref(&pod.metadata) {
        if r.kind == ReplicaSet::KIND {
            return vec![ObjectKey::new(ns, &r.name)];
        }
        return Vec::new();
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    ctx.informers
        .replica_sets
        .list_namespace(ns.unwrap_or_default())
        .iter()
        .filter(|rs| {
            selector_of(&rs.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default())
                .is_ok_and(|s| !s.is_empty() && s.matches(&labels))
        })
        .map(|rs| ObjectKey::of(rs.as_ref()))
        .collect()
}

/// Creates and deletes issued but not yet seen in the pod cache, per ReplicaSet, by pod uid.
type Expectations = crate::helpers::expectations::Expectations<ObjectKey>;

/// Tells the expectations of `key` what a pod event shows.
fn observe_pod(exp: &Expectations, key: &ObjectKey, pod: &Pod, deleted: bool) {
    let Some(uid) = pod.metadata.uid.as_deref() else { return };
    let seen = if deleted {
        Seen::Deleted
    } else if pod.metadata.deletion_timestamp.is_some() {
        Seen::Terminating
    } else {
        Seen::Present(None)
    };
    exp.observe(key, uid, seen);
}

/// The owner reference with `controller: true`, if any.
pub(crate) fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.as_ref()?.iter().find(|r| r.controller == Some(true))
}

/// A controller owner reference to `owner` (blocking its deletion until the dependent is gone).
pub(crate) use super::owned_pods::controller_ref as owner_ref;

/// The matcher of a `metav1.LabelSelector`.
pub(crate) fn selector_of(s: &MetaSelector) -> Result<LabelSelector, skiff_api::selector::Error> {
    LabelSelector::from_json(&serde_json::to_value(s).unwrap_or_default())
}

/// Since when the pod has been Ready, if it is (epoch when the time is missing).
pub(crate) fn ready_since(pod: &Pod) -> Option<i64> {
    let c = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map_or(0, |t| t.0.as_second()))
}

/// Ready for at least `min_ready_seconds` at `now` (unix seconds).
pub(crate) fn is_available(pod: &Pod, min_ready_seconds: i64, now: i64) -> bool {
    ready_since(pod).is_some_and(|t| min_ready_seconds <= 0 || t + min_ready_seconds <= now)
}

/// Neither terminating nor finished: counts as a replica.
pub(crate) fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    pod.metadata.deletion_timestamp.is_none() && phase != "Succeeded" && phase != "Failed"
}

/// The order in which surplus pods are deleted, cheapest loss first: unscheduled, then
/// pending, then unknown, then not ready, then ready; among equals the newest first
/// (a young pod has done the least work and warmed the fewest caches).
pub(crate) fn deletion_rank(pod: &Pod) -> impl Ord + use<> {
    let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0u8,
        Some("Unknown") => 1,
        _ => 2,
    };
    let ready = ready_since(pod).is_some();
    let created = pod.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
    let name = pod.metadata.name.clone().unwrap_or_default();
    (scheduled, phase, ready, Reverse(ready_since(pod).unwrap_or(0)), Reverse(created), name)
}

/// A pod for `owner` from its template.
pub(crate) fn pod_from_template(owner: &ReplicaSet, template: &PodTemplateSpec) -> Pod {
    let name = owner.metadata.name.clone().unwrap_or_default();
    // Names are at most 63 characters and the server appends 5 random ones.
    let prefix: String = name.chars().take(57).collect();
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            namespace: owner.metadata.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner_ref(owner)]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The status numbers of a ReplicaSet from its active pods.
pub(crate) fn compute_status(rs: &ReplicaSet, active: &[&Pod], now: i64) -> serde_json::Value {
    let spec = rs.spec.clone().unwrap_or_default();
    let template_labels =
        spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0) as i64;
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let l = p.metadata.labels.clone().unwrap_or_default();
            template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| ready_since(p).is_some()).count();
    let available = active.iter().filter(|p| is_available(p, min_ready, now)).count();
    json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.metadata.generation.unwrap_or(0),
    })
}

fn status_differs(rs: &ReplicaSet, want: &serde_json::Value) -> bool {
    let cur = rs.status.clone().unwrap_or_default();
    let n = |k: &str| want[k].as_i64().unwrap_or(0);
    i64::from(cur.replicas) != n("replicas")
        || i64::from(cur.fully_labeled_replicas.unwrap_or(0)) != n("fullyLabeledReplicas")
        || i64::from(cur.ready_replicas.unwrap_or(0)) != n("readyReplicas")
        || i64::from(cur.available_replicas.unwrap_or(0)) != n("availableReplicas")
        || cur.observed_generation.unwrap_or(0) != n("observedGeneration")
}

/// One pass over a ReplicaSet: claim pods, create or delete the difference (when the
/// cache has caught up with our last writes), then write status.
async fn reconcile(ctx: &Context, exp: &Expectations, key: &ObjectKey) -> Result<Action> {
    let Some(rs) = ctx.informers.replica_sets.get(key) else {
        exp.forget(key);
        return Ok(Action::Done);
    };
    let api = |what: &'static str| move |source| Error::Api { key: key.clone(), what, source };
    let spec = rs.spec.clone().unwrap_or_default();
    let selector = selector_of(&spec.selector).map_err(|source| Error::Selector { key: key.clone(), source })?;
    if selector.is_empty() {
        // Validation forbids this; never let an empty selector claim every pod.
        return Ok(Action::Done);
    }
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let ns = key.ns();
    let deleting = rs.metadata.deletion_timestamp.is_some();

    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for pod in ctx.informers.pods.list_namespace(ns.unwrap_or_default()) {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let matches = selector.matches(&labels);
        match controller_ref(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    owned.push(pod);
                } else if !deleting {
                    super::owned_pods::release(&ctx.client, &pod, &uid).await.map_err(api("releasing a pod"))?;
                }
            }
            Some(_) => {}
            None if matches && !deleting && pod.metadata.deletion_timestamp.is_none() => {
                match super::owned_pods::adopt(&ctx.client, rs.as_ref(), &pod).await {
                    Ok(p) => owned.push(Arc::new(p)),
                    Err(e) if e.is_not_found() || e.is_conflict() => {
                        // Gone or changed since the cache saw it: the next event requeues us.
                        tracing::debug!(replicaset = %key, error = %e, "could not adopt pod");
                    }
                    Err(e) => return Err(api("adopting a pod")(e)),
                }
            }
            None => {}
        }
    }
    let active: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).filter(|p| is_active(p)).collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;

    if !deleting && exp.satisfied(key) {
        if active.len() < want {
            create_pods(ctx, exp, &rs, key, want - active.len()).await?;
        } else if active.len() > want {
            let mut victims = active.clone();
            victims.sort_by_key(|p| deletion_rank(p));
            delete_pods(ctx, exp, &rs, key, &victims[..active.len() - want]).await?;
        }
    }

    let now = jiff::Timestamp::now().as_second();
    let status = compute_status(&rs, &active, now);
    if status_differs(&rs, &status) {
        let name = key.name.as_str();
        match ctx.client.patch::<ReplicaSet>(ns, name, Some("status"), &Patch::Merge(json!({"status": status}))).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(Action::Done),
            Err(e) => return Err(api("updating status")(e)),
        }
    }
    // Pods ready but not yet for minReadySeconds become available without any event.
    let min_ready = spec.min_ready_seconds.unwrap_or(0) as i64;
    let next = active
        .iter()
        .filter_map(|p| ready_since(p))
        .map(|t| t + min_ready - now)
        .filter(|&d| min_ready > 0 && d >= 0)
        .min();
    Ok(match next {
        Some(d) => Action::RequeueAfter(Duration::from_secs(d as u64 + 1)),
        None if !exp.satisfied(key) => Action::RequeueAfter(Duration::from_secs(5)),
        None => Action::Done,
    })
}

/// Creates `n` pods in batches of 1, 2, 4, ...: a template the server rejects fails
/// after one request instead of `n`.
async fn create_pods(ctx: &Context, exp: &Expectations, rs: &ReplicaSet, key: &ObjectKey, n: usize) -> Result<()> {
    let Some(template) = rs.spec.as_ref().and_then(|s| s.template.clone()) else { return Ok(()) };
    let pod = pod_from_template(rs, &template);
    let mut left = n.min(BURST);
    let mut batch = 1;
    while left > 0 {
        let size = batch.min(left);
        let results = futures_join(ctx, key, &pod, size).await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(created) => {
                    let name = created.metadata.name.clone().unwrap_or_default();
                    let uid = created.metadata.uid.clone().unwrap_or_default();
                    exp.expect_unless(key, &uid, Expect::Present { min_rv: 0 }, || {
                        ctx.informers
                            .pods
                            .get_named(key.ns(), &name)
                            .is_some_and(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
                    });
                    tracing::info!(replicaset = %key, pod = %name, "created pod");
                    ctx.events.record(rs, EventType::Normal, "SuccessfulCreate", &format!("Created pod: {name}")).await;
                }
                Err(e) => {
                    ctx.events.record(rs, EventType::Warning, "FailedCreate", &format!("Error creating: {e}")).await;
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(source) = first_err {
            return Err(Error::Api { key: key.clone(), what: "creating pods", source });
        }
        left -= size;
        batch *= 2;
    }
    Ok(())
}

/// Issues `size` creates of `pod` concurrently.
async fn futures_join(ctx: &Context, key: &ObjectKey, pod: &Pod, size: usize) -> Vec<skiff_api::client::Result<Pod>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..size {
        let client = ctx.client.clone();
        let ns = key.namespace.clone();
        let pod = pod.clone();
        set.spawn(async move { client.create(ns.as_deref(), &pod).await });
    }
    let mut out = Vec::with_capacity(size);
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out
}

async fn delete_pods(
    ctx: &Context,
    exp: &Expectations,
    rs: &ReplicaSet,
    key: &ObjectKey,
    victims: &[&Pod],
) -> Result<()> {
    for pod in victims {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        exp.expect(key, &uid, Expect::Gone);
        // The UID precondition keeps us from deleting a same-named successor.
        let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}});
        match ctx.client.delete::<Pod>(key.ns(), &name, Some(&opts)).await {
            Ok(true) => {
                tracing::info!(replicaset = %key, pod = %name, "deleted pod");
                ctx.events.record(rs, EventType::Normal, "SuccessfulDelete", &format!("Deleted pod: {name}")).await;
            }
            Ok(false) => exp.cancel(key, &uid),
            Err(e) if e.is_conflict() => exp.cancel(key, &uid),
            Err(source) => {
                exp.cancel(key, &uid);
                return Err(Error::Api { key: key.clone(), what: "deleting a pod", source });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready_at: Option<i64>, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: node.map(String::from), ..Default::default() }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(Timestamp::from_second(t).unwrap())),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn surplus_pods_are_ranked_cheapest_loss_first() {
        let mut pods = [
            pod("ready-old", Some("n"), "Running", Some(100), 10),
            pod("ready-new", Some("n"), "Running", Some(200), 20),
            pod("running-not-ready", Some("n"), "Running", None, 5),
            pod("pending", Some("n"), "Pending", None, 1),
            pod("unscheduled", None, "Pending", None, 0),
        ];
        pods.sort_by_key(deletion_rank);
        let names: Vec<_> = pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["unscheduled", "pending", "running-not-ready", "ready-new", "ready-old"]);
    }

    #[test]
    fn availability_honours_min_ready_seconds() {
        let p = pod("p", Some("n"), "Running", Some(1000), 0);
        assert!(is_available(&p, 0, 1000));
        assert!(!is_available(&p, 10, 1005));
        assert!(is_available(&p, 10, 1010));
        assert!(!is_available(&pod("q", Some("n"), "Running", None, 0), 0, 1000));
    }

    #[test]
    fn terminating_and_finished_pods_are_not_replicas() {
        let mut p = pod("p", Some("n"), "Running", Some(1), 0);
        assert!(is_active(&p));
        p.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(5).unwrap()));
        assert!(!is_active(&p));
        assert!(!is_active(&pod("done", Some("n"), "Succeeded", None, 0)));
    }

    #[test]
    fn status_counts_ready_available_and_fully_labeled() {
        let rs = ReplicaSet {
            metadata: ObjectMeta { generation: Some(3), ..Default::default() },
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                min_ready_seconds: Some(10),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "web".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                ..Default::default()
            }),
            status: None,
        };
        let mut a = pod("a", Some("n"), "Running", Some(0), 0);
        a.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let b = pod("b", Some("n"), "Running", Some(95), 0);
        let c = pod("c", None, "Pending", None, 0);
        let s = compute_status(&rs, &[&a, &b, &c], 100);
        assert_eq!(
            s,
            json!({"replicas": 3, "fullyLabeledReplicas": 1, "readyReplicas": 2, "availableReplicas": 1, "observedGeneration": 3})
        );
    }

    #[test]
    fn pod_events_meet_expectations() {
        let e = Expectations::new(EXPECTATION_TIMEOUT);
        let k = ObjectKey::new(Some("ns"), "rs");
        let mut p = pod("p", None, "Pending", None, 0);
        p.metadata.uid = Some("u1".into());
        e.expect(&k, "u1", Expect::Present { min_rv: 0 });
        observe_pod(&e, &k, &p, false);
        assert!(e.satisfied(&k));
        e.expect(&k, "u1", Expect::Gone);
        observe_pod(&e, &k, &p, false);
        assert!(!e.satisfied(&k), "still running: the delete is not yet seen");
        p.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(5).unwrap()));
        observe_pod(&e, &k, &p, false);
        assert!(e.satisfied(&k));
    }
}
