//! The DaemonSet controller: one pod per eligible node, kept at the DaemonSet's current
//! template, with the status `kubectl rollout status ds/NAME` reads.
//!
//! A node is eligible when the pod template's nodeSelector and required node affinity
//! match it and every NoSchedule/NoExecute taint is tolerated; readiness of the node
//! does not matter, and daemon pods tolerate the standard node-condition taints
//! (`node.kubernetes.io/not-ready`, `unreachable`, `disk-pressure`, `memory-pressure`,
//! `pid-pressure`, `unschedulable`). A pod keeps running on a node that stops being
//! eligible only through a new NoSchedule taint (it is counted misscheduled); a node
//! that no longer matches the selector/affinity, or gets an untolerated NoExecute
//! taint, loses its pod.
//!
//! Simplifications against upstream, on purpose:
//! - Pods are created with `spec.nodeName` set, bypassing the scheduler (upstream
//!   uses a node-affinity term and lets the scheduler bind).
//! - The template revision is a hash of the template in the `controller-revision-hash`
//!   label; no ControllerRevision objects are written (the API server does not serve
//!   them), so `kubectl rollout history/undo ds` are not supported.
//! - RollingUpdate honours `maxUnavailable` only (`maxSurge` is treated as 0).
//! - Pods on nodes that no longer exist are deleted with grace period 0: no kubelet is
//!   left to confirm a graceful deletion.
//!
//! It must only write pods it controls and the DaemonSet's status; the pure planning
//! (`plan`, `node_fit`) is separate from the API calls so it can be unit tested.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{ObjectKey, Patch};

use super::Context;
use super::owned_pods::{self, PodExpectations};
use crate::events::EventType;
use crate::helpers::hash::fnv1a_64;
use crate::helpers::node_affinity;
use crate::helpers::taints::tolerated;

/// The label carrying the template hash on every daemon pod.
pub const REVISION_LABEL: &str = "controller-revision-hash";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} pod for DaemonSet {ds} failed: {source}")]
    Pod {
        action: &'static str,
        ds: ObjectKey,
        #[source]
        source: skiff_api::client::Error,
    },
    #[error("updating the status of DaemonSet {ds} failed: {source}")]
    Status {
        ds: ObjectKey,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a daemon pod belongs on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// A pod should be created here.
    pub should_run: bool,
    /// A pod already here may stay.
    pub should_continue: bool,
}

/// The tolerations every daemon pod gets on top of its template's, so node conditions
/// never evict or keep out a daemon (which often is what fixes the condition).
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    let mut std: Vec<(&str, &str)> = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        std.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for (key, effect) in std {
        let present = out.iter().any(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect));
        if !present {
            out.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    }
    out
}

/// Whether a daemon pod with `spec` belongs on `node` (see the module doc).
pub fn node_fit(node: &Node, spec: &PodSpec) -> Fit {
    if !node_affinity::required_matches(spec, node) {
        return Fit { should_run: false, should_continue: false };
    }
    let tolerations = daemon_tolerations(spec);
    let untolerated = |effect: &str| {
        node.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.effect == effect)
            .any(|taint| !tolerated(&tolerations, taint))
    };
    let no_execute = untolerated("NoExecute");
    let no_schedule = untolerated("NoSchedule");
    Fit { should_run: !no_execute && !no_schedule, should_continue: !no_execute }
}

/// A stable hash of the pod template (FNV-1a over its JSON, whose field order
/// k8s-openapi fixes), so restarts of skiff-control never look like a template change.
pub fn template_hash(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    let h = fnv1a_64(serde_json::to_vec(template).unwrap_or_default());
    format!("{:x}", h & 0xff_ffff_ffff)
}

/// One pod to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub name: String,
    pub uid: String,
    /// Grace period 0: the node is gone.
    pub force: bool,
}

/// What a sync must do, computed from the cached state alone.
#[derive(Debug, Default)]
pub struct Plan {
    /// Nodes that need a pod.
    pub create_on: Vec<String>,
    pub delete: Vec<Deletion>,
    pub status: DaemonSetStatus,
    /// Look again then (a pod becomes available after minReadySeconds).
    pub requeue_after: Option<Duration>,
}

fn scaled(v: Option<&IntOrString>, total: i32) -> i32 {
    match v {
        None => 1,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            // Rounded up, as upstream does for a DaemonSet's maxUnavailable.
            ((i64::from(total) * pct + 99) / 100) as i32
        }
    }
}

fn deletion(p: &Pod, force: bool) -> Deletion {
    Deletion {
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        force,
    }
}

/// The pure sync: which nodes need a pod, which pods must go (extras, pods on nodes that
/// no longer fit or exist, failed pods, and old-revision pods within the rolling update's
/// unavailability budget), and the resulting status.
pub fn plan(ds: &DaemonSet, nodes: &[Arc<Node>], pods: &[Arc<Pod>], hash: &str, now: i64) -> Plan {
    let spec = ds.spec.clone().unwrap_or_default();
    let template_spec = spec.template.spec.clone().unwrap_or_default();
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
    let mut by_node: BTreeMap<&str, Vec<&Arc<Pod>>> = BTreeMap::new();
    for p in pods {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let mut out = Plan::default();
    let mut st = DaemonSetStatus { observed_generation: ds.metadata.generation, ..Default::default() };
    let (mut available, mut updated) = (0, 0);
    // Old-revision pods on nodes that keep a pod: (pod, available).
    let mut old: Vec<(&Pod, bool)> = Vec::new();
    let mut soonest: Option<i64> = None;
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let fit = node_fit(node, &template_spec);
        let here = by_node.remove(name).unwrap_or_default();
        let mut live: Vec<&Arc<Pod>> = Vec::new();
        let mut terminating = false;
        for p in here {
            if owned_pods::is_terminating(p) {
                terminating = true;
            } else if owned_pods::phase(p) == "Failed" {
                // A failed daemon pod is replaced, as upstream does.
                out.delete.push(deletion(p, false));
                terminating = true;
            } else {
                live.push(p);
            }
        }
        live.sort_by_key(|p| (p.metadata.creation_timestamp.as_ref().map(|t| t.0), p.metadata.name.clone()));
        if !fit.should_run {
            if !live.is_empty() {
                if fit.should_continue {
                    st.number_misscheduled += 1;
                } else {
                    out.delete.extend(live.iter().map(|p| deletion(p, false)));
                }
            }
            continue;
        }
        st.desired_number_scheduled += 1;
        let Some(&keep) = live.first() else {
            if !terminating {
                out.create_on.push(name.to_string());
            }
            continue;
        };
        out.delete.extend(live[1..].iter().map(|p| deletion(p, false)));
        st.current_number_scheduled += 1;
        let is_available = match owned_pods::ready_since(keep) {
            Some(since) => {
                st.number_ready += 1;
                let at = since + min_ready;
                if at > now {
                    soonest = Some(soonest.map_or(at, |s: i64| s.min(at)));
                }
                at <= now
            }
            None => false,
        };
        if is_available {
            available += 1;
        }
        let pod_hash = keep.metadata.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)).map(String::as_str);
        if pod_hash == Some(hash) {
            updated += 1;
        } else {
            old.push((keep.as_ref(), is_available));
        }
    }
    // Pods on nodes that are gone.
    for p in by_node.into_values().flatten() {
        if !owned_pods::is_terminating(p) {
            out.delete.push(deletion(p, true));
        }
    }
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" && !old.is_empty() {
        let max_unavailable = scaled(
            strategy.rolling_update.as_ref().and_then(|r| r.max_unavailable.as_ref()),
            st.desired_number_scheduled,
        )
        .max(1);
        let mut budget = max_unavailable - (st.desired_number_scheduled - available);
        for (p, avail) in old {
            if !avail {
                // Already unavailable: replacing it costs nothing.
                out.delete.push(deletion(p, false));
            } else if budget > 0 {
                budget -= 1;
                out.delete.push(deletion(p, false));
            }
        }
    }
    st.number_available = Some(available);
    st.number_unavailable = Some(st.desired_number_scheduled - available);
    st.updated_number_scheduled = Some(updated);
    out.status = st;
    out.requeue_after = soonest.map(|at| Duration::from_secs((at - now).max(1) as u64));
    out
}

/// The pod for `node` from the template: the revision label, the controller reference,
/// the node set directly and the daemon tolerations.
fn new_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let spec = ds.spec.clone().unwrap_or_default();
    let tmeta = spec.template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.clone().unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), hash.into());
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    pod_spec.tolerations = Some(daemon_tolerations(&pod_spec));
    pod_spec.node_name = Some(node.to_string());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.metadata.name.as_deref().unwrap_or("ds"))),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations.clone(),
            owner_references: Some(vec![owned_pods::controller_ref(ds)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// Entry point (see `CONTROLLERS`).
pub async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let exp = Arc::new(PodExpectations::default());
    let mut tasks = tokio::task::JoinSet::new();
    let (c, q) = (ctx.clone(), queue.clone());
    let mut ds_rx = ctx.informers.daemon_sets.subscribe();
    let mut pod_rx = ctx.informers.pods.subscribe();
    let mut node_rx = ctx.informers.nodes.subscribe();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                Some(ch) = ds_rx.recv() => match ch {
                    Change::Applied(ds) | Change::Deleted(ds) => q.add(ObjectKey::of(ds.as_ref())),
                },
                Some(ch) = pod_rx.recv() => {
                    let (Change::Applied(p) | Change::Deleted(p)) = ch;
                    if let Some(o) = p.metadata.owner_references.iter().flatten()
                        .find(|o| o.controller == Some(true) && o.kind == "DaemonSet")
                    {
                        q.add(ObjectKey::new(p.metadata.namespace.as_deref(), &o.name));
                    }
                }
                Some(_) = node_rx.recv() => {
                    // Any node change may change eligibility for every DaemonSet.
                    for ds in c.informers.daemon_sets.list() {
                        q.add(ObjectKey::of(ds.as_ref()));
                    }
                }
                else => return,
            }
        }
    });
    run_workers("daemonset", queue, 2, move |key| {
        let (ctx, exp) = (ctx.clone(), exp.clone());
        async move { reconcile(&ctx, &exp, key).await }
    })
    .await;
}

async fn reconcile(ctx: &Context, exp: &PodExpectations, key: ObjectKey) -> Result<Action> {
    let Some(ds) = ctx.informers.daemon_sets.get(&key) else { return Ok(Action::Done) };
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let ns = key.ns().unwrap_or("default");
    if ds.metadata.deletion_timestamp.is_some() {
        exp.forget(&uid);
        return Ok(Action::Done);
    }
    let spec = ds.spec.clone().unwrap_or_default();
    let hash = template_hash(&spec.template);
    let nodes = ctx.informers.nodes.list();
    let pods = owned_pods::controlled_by(&ctx.informers.pods, ns, "DaemonSet", &uid);
    let now = jiff::Timestamp::now().as_second();
    let plan = plan(&ds, &nodes, &pods, &hash, now);
    if exp.satisfied(&uid, ns, &ctx.informers.pods) {
        for node in &plan.create_on {
            let created = ctx
                .client
                .create(Some(ns), &new_pod(&ds, node, &hash))
                .await
                .map_err(|source| Error::Pod { action: "creating", ds: key.clone(), source })?;
            let name = created.metadata.name.clone().unwrap_or_default();
            exp.created(&uid, &name);
            tracing::info!(daemonset = %key, node = %node, pod = %name, "created daemon pod");
            ctx.events
                .record(ds.as_ref(), EventType::Normal, "SuccessfulCreate", &format!("Created pod: {name}"))
                .await;
        }
        for d in &plan.delete {
            let mut opts = json!({"preconditions": {"uid": d.uid}});
            if d.force {
                opts["gracePeriodSeconds"] = json!(0);
            }
            ctx.client.delete::<Pod>(Some(ns), &d.name, Some(&opts)).await.map_err(|source| Error::Pod {
                action: "deleting",
                ds: key.clone(),
                source,
            })?;
            exp.deleted(&uid, &d.uid);
            tracing::info!(daemonset = %key, pod = %d.name, force = d.force, "deleted daemon pod");
            ctx.events
                .record(ds.as_ref(), EventType::Normal, "SuccessfulDelete", &format!("Deleted pod: {}", d.name))
                .await;
        }
    }
    if ds.status.as_ref() != Some(&plan.status) {
        let patch = Patch::Merge(json!({"status": plan.status}));
        ctx.client
            .patch::<DaemonSet>(Some(ns), &key.name, Some("status"), &patch)
            .await
            .map_err(|source| Error::Status { ds: key.clone(), source })?;
    }
    Ok(plan.requeue_after.map_or(Action::Done, Action::RequeueAfter))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DaemonSetSpec;
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, NodeSpec, PodCondition,
        PodStatus, PodTemplateSpec, Taint,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, e)| Taint { key: k.to_string(), effect: e.to_string(), ..Default::default() })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn tol(key: &str, op: &str, value: Option<&str>, effect: Option<&str>) -> Toleration {
        Toleration {
            key: Some(key.into()).filter(|k: &String| !k.is_empty()),
            operator: Some(op.into()),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn eligibility_by_taints_selector_and_affinity() {
        let spec = PodSpec::default();
        let plain = node("a", &[], &[]);
        assert_eq!(node_fit(&plain, &spec), Fit { should_run: true, should_continue: true });
        // Standard condition taints are tolerated automatically.
        let not_ready = node("b", &[], &[("node.kubernetes.io/not-ready", "NoExecute")]);
        assert!(node_fit(&not_ready, &spec).should_run);
        let cordoned = node("c", &[], &[("node.kubernetes.io/unschedulable", "NoSchedule")]);
        assert!(node_fit(&cordoned, &spec).should_run);
        // A custom NoSchedule taint keeps new pods out but lets running ones stay.
        let dedicated = node("d", &[], &[("dedicated", "NoSchedule")]);
        assert_eq!(node_fit(&dedicated, &spec), Fit { should_run: false, should_continue: true });
        let evicting = node("e", &[], &[("dedicated", "NoExecute")]);
        assert_eq!(node_fit(&evicting, &spec), Fit { should_run: false, should_continue: false });
        let prefer = node("f", &[], &[("soft", "PreferNoSchedule")]);
        assert!(node_fit(&prefer, &spec).should_run);
        let tolerant =
            PodSpec { tolerations: Some(vec![tol("dedicated", "Exists", None, None)]), ..Default::default() };
        assert!(node_fit(&dedicated, &tolerant).should_run);

        let with_selector =
            PodSpec { node_selector: Some([("disk".to_string(), "ssd".to_string())].into()), ..Default::default() };
        assert!(!node_fit(&plain, &with_selector).should_run);
        assert!(node_fit(&node("g", &[("disk", "ssd")], &[]), &with_selector).should_run);

        let affinity = |op: &str, key: &str, values: &[&str], field: bool| {
            let req = NodeSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            };
            let term = if field {
                NodeSelectorTerm { match_fields: Some(vec![req]), ..Default::default() }
            } else {
                NodeSelectorTerm { match_expressions: Some(vec![req]), ..Default::default() }
            };
            PodSpec {
                affinity: Some(Affinity {
                    node_affinity: Some(NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                            node_selector_terms: vec![term],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }
        };
        let zone = node("h", &[("zone", "z1"), ("cpus", "8")], &[]);
        assert!(node_fit(&zone, &affinity("In", "zone", &["z1", "z2"], false)).should_run);
        assert!(!node_fit(&zone, &affinity("NotIn", "zone", &["z1"], false)).should_run);
        assert!(node_fit(&zone, &affinity("Gt", "cpus", &["4"], false)).should_run);
        assert!(!node_fit(&zone, &affinity("Lt", "cpus", &["4"], false)).should_run);
        assert!(node_fit(&zone, &affinity("DoesNotExist", "gpu", &[], false)).should_run);
        assert!(node_fit(&zone, &affinity("In", "metadata.name", &["h"], true)).should_run);
        assert!(!node_fit(&zone, &affinity("In", "metadata.name", &["x"], true)).should_run);
    }

    fn ds(max_unavailable: i32) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                namespace: Some("default".into()),
                uid: Some("ds-uid".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                template: PodTemplateSpec::default(),
                update_strategy: Some(k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDaemonSet {
                        max_unavailable: Some(IntOrString::Int(max_unavailable)),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, node: &str, hash: &str, ready: bool) -> Arc<Pod> {
        let conditions = ready.then(|| {
            vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            }]
        });
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("{name}-uid")),
                labels: Some([(REVISION_LABEL.to_string(), hash.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: Some(node.into()), ..Default::default() }),
            status: Some(PodStatus { phase: Some("Running".into()), conditions, ..Default::default() }),
        })
    }

    #[test]
    fn plan_creates_deletes_and_counts() {
        let nodes = vec![node("a", &[], &[]), node("b", &[], &[]), node("c", &[], &[("dedicated", "NoExecute")])];
        let pods = vec![
            pod("p-a", "a", "h1", true),
            pod("p-a2", "a", "h1", false),
            pod("p-c", "c", "h1", true),
            pod("p-gone", "x", "h1", true),
        ];
        let p = plan(&ds(1), &nodes, &pods, "h1", 1000);
        assert_eq!(p.create_on, ["b"]);
        let deleted: Vec<_> = p.delete.iter().map(|d| (d.name.as_str(), d.force)).collect();
        assert_eq!(deleted, [("p-a2", false), ("p-c", false), ("p-gone", true)]);
        let st = &p.status;
        assert_eq!(st.desired_number_scheduled, 2);
        assert_eq!(st.current_number_scheduled, 1);
        assert_eq!(st.number_ready, 1);
        assert_eq!(st.number_available, Some(1));
        assert_eq!(st.updated_number_scheduled, Some(1));
        assert_eq!(st.observed_generation, Some(2));
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let nodes = vec![node("a", &[], &[]), node("b", &[], &[]), node("c", &[], &[])];
        let pods = vec![pod("p-a", "a", "old", true), pod("p-b", "b", "old", true), pod("p-c", "c", "old", false)];
        // c is unavailable already: it is replaced, and with maxUnavailable 2 one more.
        let p = plan(&ds(2), &nodes, &pods, "new", 1000);
        let deleted: Vec<_> = p.delete.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(deleted, ["p-a", "p-c"]);
        let p = plan(&ds(1), &nodes, &pods, "new", 1000);
        let deleted: Vec<_> = p.delete.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(deleted, ["p-c"]);
        assert_eq!(p.status.updated_number_scheduled, Some(0));
    }

    #[test]
    fn on_delete_leaves_old_pods_alone() {
        let nodes = vec![node("a", &[], &[]), node("b", &[], &[])];
        let pods = vec![pod("p-a", "a", "old", true), pod("p-b", "b", "old", false)];
        let mut d = ds(1);
        d.spec.as_mut().unwrap().update_strategy = Some(k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            ..Default::default()
        });
        let p = plan(&d, &nodes, &pods, "new", 1000);
        assert!(p.delete.is_empty() && p.create_on.is_empty());
        assert_eq!(p.status.updated_number_scheduled, Some(0));
        assert_eq!(p.status.number_unavailable, Some(1));
    }

    #[test]
    fn noschedule_taint_keeps_running_pod_as_misscheduled() {
        let nodes = vec![node("a", &[], &[("dedicated", "NoSchedule")])];
        let p = plan(&ds(1), &nodes, &[pod("p-a", "a", "h", true)], "h", 1000);
        assert!(p.delete.is_empty());
        assert_eq!((p.status.desired_number_scheduled, p.status.number_misscheduled), (0, 1));
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut d = ds(1);
        d.spec.as_mut().unwrap().min_ready_seconds = Some(30);
        let nodes = vec![node("a", &[], &[])];
        // Ready since the epoch: available at 30.
        let p = plan(&d, &nodes, &[pod("p-a", "a", "h", true)], "h", 10);
        assert_eq!((p.status.number_ready, p.status.number_available), (1, Some(0)));
        assert_eq!(p.requeue_after, Some(Duration::from_secs(20)));
        let p = plan(&d, &nodes, &[pod("p-a", "a", "h", true)], "h", 30);
        assert_eq!(p.status.number_available, Some(1));
    }

    #[test]
    fn percentages_round_up() {
        assert_eq!(scaled(Some(&IntOrString::String("10%".into())), 3), 1);
        assert_eq!(scaled(Some(&IntOrString::String("50%".into())), 3), 2);
        assert_eq!(scaled(None, 3), 1);
    }
}
