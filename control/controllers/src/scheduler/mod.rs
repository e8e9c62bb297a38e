//! The scheduling algorithm: given a pending pod, the nodes and what already runs on
//! them, pick a node or explain why none fits.
//!
//! This module is pure: it does no I/O, no logging, keeps no state and reads no clock.
//! Watching for unscheduled pods, binding through `pods/binding`, emitting events and
//! keeping [`NodeUsage`] current belong to the caller.
//!
//! The pipeline is kube-scheduler's, reduced to what Skiff needs:
//! 1. [`resources::pod_requests`]: the pod's effective requests (bad quantities make the
//!    pod unschedulable with a message naming the container).
//! 2. [`filter`]: per node, the first failing check among NodeUnschedulable,
//!    TaintToleration (node conditions count as taints), NodeAffinity and
//!    NodeResourcesFit, then PodTopologySpread ([`spread`]) and InterPodAffinity
//!    ([`affinity`]). The last two read counts per topology domain that
//!    [`PodState::new`] computes once per cycle from the [`Cluster`] snapshot.
//! 3. [`score`]: LeastRequested, BalancedAllocation, preferred NodeAffinity, the
//!    PreferNoSchedule penalty, preferred inter-pod affinity and ScheduleAnyway spread,
//!    summed with upstream's default weights.
//! 4. Ties are broken by a caller-supplied number (see [`tie_breaker_for`]) so that
//!    identical pods spread over identical nodes instead of all landing on the first.
//!
//! 5. [`volumes`] wraps the pipeline with kube-scheduler's VolumeBinding: a pod's
//!    PersistentVolumeClaims restrict it to nodes that reach their volumes.
//!
//! 6. [`preemption`]: when nothing fits, the node where evicting the fewest and least
//!    important lower-priority pods makes room (the caller evicts them).
//!
//! Not handled (yet): host ports, extended resources, default topology spread.

pub mod affinity;
pub mod cluster;
pub mod filter;
pub mod preemption;
pub use skiff_api::quantity;
pub mod resources;
pub mod run;
pub mod score;
pub mod spread;
#[cfg(test)]
mod testutil;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1::{Node, Pod};
use thiserror::Error;

use affinity::AffinityState;
pub use cluster::Cluster;
pub use filter::Reason;
pub use quantity::QuantityError;
pub use resources::{NodeUsage, PodRequests, RequestError, Resources, pod_requests, usage_by_node};
pub use score::NodeScore;
use spread::SpreadState;

/// The scheduler name pods get when they do not set one.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// The chosen node, with the scores that led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleResult {
    pub node_name: String,
    /// How many nodes passed the filters.
    pub feasible_nodes: usize,
    /// Scores of every feasible node, in the order of the `nodes` argument.
    pub scores: Vec<NodeScore>,
}

/// No node can take the pod. `Display` is kube-scheduler's message, e.g.
/// `0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu.`
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct FitError {
    pub num_nodes: usize,
    /// How many nodes failed for each reason. A node may count under several reasons
    /// (e.g. both Insufficient cpu and Insufficient memory).
    pub reasons: BTreeMap<Reason, usize>,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        // Upstream sorts the rendered "<count> <reason>" strings, so we do too.
        let mut parts: Vec<String> = self.reasons.iter().map(|(reason, count)| format!("{count} {reason}")).collect();
        parts.sort();
        write!(f, "0/{} nodes are available: {}.", self.num_nodes, parts.join(", "))
    }
}

/// Why [`schedule`] did not pick a node.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    /// `spec.nodeName` is set: the pod is bound already and not ours to place.
    #[error("pod is already assigned to node {0:?}")]
    AlreadyAssigned(String),
    /// The pod's own requests are unreadable; no node can be judged.
    #[error("pod has invalid resource requests: {0}; fix the pod spec")]
    InvalidRequests(#[from] RequestError),
    /// Every node was filtered out.
    #[error(transparent)]
    Unschedulable(#[from] FitError),
}

pub type Result<T, E = ScheduleError> = std::result::Result<T, E>;

/// Should the default scheduler act on this pod at all? False when it is already
/// bound, names another scheduler, still has scheduling gates, is terminal, or is
/// being deleted. Callers use this to pick pods from a watch; [`schedule`] itself only
/// refuses bound pods.
pub fn responsible_for(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let unbound = spec.node_name.as_deref().unwrap_or("").is_empty();
    let ours = matches!(spec.scheduler_name.as_deref(), None | Some("") | Some(DEFAULT_SCHEDULER_NAME));
    let ungated = spec.scheduling_gates.as_deref().unwrap_or(&[]).is_empty();
    let alive = pod.metadata.deletion_timestamp.is_none() && !resources::is_terminal(pod);
    unbound && ours && ungated && alive
}

/// A stable tie-breaker derived from the pod's uid (FNV-1a, so it is the same on every
/// run and platform, unlike `DefaultHasher`). Different pods get different values, which
/// spreads identical pods over equally good nodes. Falls back to namespace/name.
pub fn tie_breaker_for(pod: &Pod) -> u64 {
    let key = match pod.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.to_string(),
        _ => format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        ),
    };
    crate::helpers::hash::fnv1a_64(key.bytes())
}

/// [`schedule_in`] for callers that only track resources: no placed pods are known,
/// so inter-pod rules see an empty cluster.
pub fn schedule(
    pod: &Pod,
    nodes: &[Node],
    usage: &HashMap<String, NodeUsage>,
    tie_breaker: u64,
) -> Result<ScheduleResult> {
    schedule_in(pod, nodes, &Cluster::from_usage(nodes, usage.clone()), tie_breaker)
}

/// The inter-pod state of one scheduling cycle for one pod: topology spread (hard
/// and soft constraints) and inter-pod affinity counts per domain.
#[derive(Debug, Clone)]
pub struct PodState {
    pub affinity: AffinityState,
    pub hard_spread: SpreadState,
    pub soft_spread: SpreadState,
}

impl PodState {
    pub fn new(pod: &Pod, cluster: &Cluster<'_>) -> Self {
        Self {
            affinity: AffinityState::new(pod, cluster),
            hard_spread: SpreadState::new(pod, cluster, spread::Kind::Hard),
            soft_spread: SpreadState::new(pod, cluster, spread::Kind::Soft),
        }
    }

    /// Adds (1) or removes (-1) `existing` on `node` (see [`AffinityState::account`]).
    pub fn account(&mut self, pod: &Pod, existing: &Pod, node: &Node, cluster: &Cluster<'_>, delta: i64) {
        self.affinity.account(pod, existing, node, cluster, delta);
        self.hard_spread.account(pod, existing, node, delta);
    }

    /// PodTopologySpread, then InterPodAffinity, as upstream orders its filters.
    pub fn filter(&self, node: &Node) -> std::result::Result<(), Reason> {
        self.hard_spread.filter(node)?;
        self.affinity.filter(node)
    }
}

/// Every filter for one node: the node-local ones ([`filter::filter`]), then the
/// inter-pod ones. The first failing check's reasons.
pub fn check_node(
    pod: &Pod,
    requests: &PodRequests,
    node: &Node,
    usage: &NodeUsage,
    state: &PodState,
) -> std::result::Result<(), Vec<Reason>> {
    filter::filter(pod, requests, node, usage)?;
    state.filter(node).map_err(|r| vec![r])
}

/// Picks a node for `pod`.
///
/// - `nodes`: the candidate nodes, in any order.
/// - `cluster`: every node and what is already placed on it (the pod being scheduled
///   must not be in it); inter-pod rules count pods on all of its nodes, not only on
///   the candidates.
/// - `tie_breaker`: among nodes with the same best total, the one at
///   `tie_breaker % ties` in name order wins. Pass [`tie_breaker_for`] of the pod, or a
///   counter you increment per decision.
///
/// The result depends only on the arguments (not on `nodes` order).
pub fn schedule_in(pod: &Pod, nodes: &[Node], cluster: &Cluster<'_>, tie_breaker: u64) -> Result<ScheduleResult> {
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
        && !node.is_empty()
    {
        return Err(ScheduleError::AlreadyAssigned(node.to_string()));
    }
    let requests = pod_requests(pod)?;
    let state = PodState::new(pod, cluster);

    let mut feasible: Vec<(&Node, &NodeUsage)> = Vec::new();
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    for node in nodes {
        let node_usage = cluster.usage(cluster::name(node));
        match check_node(pod, &requests, node, node_usage, &state) {
            Ok(()) => feasible.push((node, node_usage)),
            Err(failed) => {
                for reason in failed {
                    *reasons.entry(reason).or_default() += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        return Err(FitError { num_nodes: nodes.len(), reasons }.into());
    }

    let mut scores = score::score_nodes(pod, &requests, &feasible);
    let feasible_nodes: Vec<&Node> = feasible.iter().map(|(n, _)| *n).collect();
    let affinity = if state.affinity.scores_anything() {
        affinity::normalise(&feasible_nodes.iter().map(|n| state.affinity.raw_score(n)).collect::<Vec<_>>())
    } else {
        Vec::new()
    };
    let spread = state.soft_spread.scores(&feasible_nodes);
    for (i, s) in scores.iter_mut().enumerate() {
        s.add_inter_pod(affinity.get(i).copied().unwrap_or(0), spread.get(i).copied().unwrap_or(0));
    }
    let best = scores.iter().map(|s| s.total).max().unwrap_or(0);
    let mut ties: Vec<&str> = scores.iter().filter(|s| s.total == best).map(|s| s.node_name.as_str()).collect();
    ties.sort_unstable();
    // `ties` is non-empty because `scores` has one entry per feasible node.
    let pick = (tie_breaker % ties.len() as u64) as usize;
    Ok(ScheduleResult { node_name: ties[pick].to_string(), feasible_nodes: feasible.len(), scores })
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use serde_json::json;

    fn control_plane(name: &str) -> Node {
        tainted(name, json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]))
    }

    #[test]
    fn fit_error_message_matches_kubernetes() {
        let nodes = [control_plane("cp"), node("w1", "1", "8Gi"), node("w2", "1", "8Gi")];
        let err = schedule(&pod_req("2", "1Gi"), &nodes, &HashMap::new(), 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu."
        );
    }

    #[test]
    fn fit_error_counts_every_shortfall_and_sorts_rendered_strings() {
        let nodes = [
            node("a", "1", "1Gi"),
            node("b", "1", "8Gi"),
            node_with("c", "8", "8Gi", json!({}), json!({"unschedulable": true})),
        ];
        let err = schedule(&pod_req("2", "2Gi"), &nodes, &HashMap::new(), 0).unwrap_err();
        let ScheduleError::Unschedulable(fit) = &err else { panic!("expected FitError, got {err:?}") };
        assert_eq!(fit.reasons[&Reason::InsufficientCpu], 2);
        assert_eq!(fit.reasons[&Reason::InsufficientMemory], 1);
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 Insufficient memory, 1 node(s) were unschedulable, 2 Insufficient cpu."
        );
    }

    #[test]
    fn no_nodes_at_all() {
        let err = schedule(&pod_req("1", "1"), &[], &HashMap::new(), 0).unwrap_err();
        assert_eq!(err.to_string(), "no nodes available to schedule pods");
    }

    #[test]
    fn bound_pods_are_not_ours() {
        let p = pod(json!({"nodeName": "w1", "containers": [ctr("c", json!(null))]}));
        assert_eq!(
            schedule(&p, &[node("w1", "1", "1Gi")], &HashMap::new(), 0),
            Err(ScheduleError::AlreadyAssigned("w1".into()))
        );
        assert!(!responsible_for(&p));
    }

    #[test]
    fn responsible_for_only_pending_default_pods() {
        let base = pod(json!({"containers": [ctr("c", json!(null))]}));
        assert!(responsible_for(&base));
        let mut other = base.clone();
        other.spec.as_mut().unwrap().scheduler_name = Some("my-scheduler".into());
        assert!(!responsible_for(&other));
        let mut named = base.clone();
        named.spec.as_mut().unwrap().scheduler_name = Some(DEFAULT_SCHEDULER_NAME.into());
        assert!(responsible_for(&named));
        let mut gated = base.clone();
        gated.spec.as_mut().unwrap().scheduling_gates =
            Some(vec![serde_json::from_value(json!({"name": "wait"})).unwrap()]);
        assert!(!responsible_for(&gated));
        let mut done = base.clone();
        done.status = Some(serde_json::from_value(json!({"phase": "Failed"})).unwrap());
        assert!(!responsible_for(&done));
    }

    #[test]
    fn invalid_requests_make_the_pod_unschedulable_with_a_reason() {
        let p = pod(json!({"containers": [ctr("web", json!({"memory": "12 GB"}))]}));
        let err = schedule(&p, &[node("w1", "1", "1Gi")], &HashMap::new(), 0).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ScheduleError::InvalidRequests(_)));
        assert!(
            msg.contains("container \"web\"") && msg.contains("requests.memory") && msg.contains("\"12 GB\""),
            "{msg}"
        );
    }

    #[test]
    fn picks_the_emptier_node() {
        let nodes = [node("busy", "4", "8Gi"), node("idle", "4", "8Gi")];
        let mut on_busy = pod_req("2", "4Gi");
        on_busy.spec.as_mut().unwrap().node_name = Some("busy".into());
        let usage = usage_by_node([&on_busy]);
        for tb in 0..4 {
            let r = schedule(&pod_req("1", "1Gi"), &nodes, &usage, tb).unwrap();
            assert_eq!(r.node_name, "idle");
            assert_eq!(r.feasible_nodes, 2);
        }
    }

    #[test]
    fn already_assigned_pods_can_exhaust_a_node() {
        let nodes = [node("w1", "2", "8Gi")];
        let mut running = pod_req("1500m", "1Gi");
        running.spec.as_mut().unwrap().node_name = Some("w1".into());
        let usage = usage_by_node([&running]);
        let err = schedule(&pod_req("1", "1Gi"), &nodes, &usage, 0).unwrap_err();
        assert_eq!(err.to_string(), "0/1 nodes are available: 1 Insufficient cpu.");
        // Once that pod has finished, its resources are free again.
        running.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        let usage = usage_by_node([&running]);
        assert_eq!(schedule(&pod_req("1", "1Gi"), &nodes, &usage, 0).unwrap().node_name, "w1");
    }

    #[test]
    fn preferred_affinity_outweighs_emptiness() {
        let nodes = [labelled("fast", json!({"disk": "ssd"})), node_with("empty", "64", "256Gi", json!({}), json!({}))];
        let p = pod(json!({
            "containers": [ctr("c", json!({"cpu": "1", "memory": "1Gi"}))],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
            ]}},
        }));
        assert_eq!(schedule(&p, &nodes, &HashMap::new(), 0).unwrap().node_name, "fast");
    }

    #[test]
    fn prefer_no_schedule_steers_but_does_not_block() {
        let soft = json!([{"key": "spot", "effect": "PreferNoSchedule"}]);
        let nodes = [tainted("spot", soft.clone()), tainted("regular", json!([]))];
        assert_eq!(schedule(&pod_req("1", "1Gi"), &nodes, &HashMap::new(), 0).unwrap().node_name, "regular");
        let only_spot = [tainted("spot", soft)];
        assert_eq!(schedule(&pod_req("1", "1Gi"), &only_spot, &HashMap::new(), 0).unwrap().node_name, "spot");
    }

    #[test]
    fn ties_spread_by_tie_breaker_independent_of_node_order() {
        let nodes = [node("c", "4", "8Gi"), node("a", "4", "8Gi"), node("b", "4", "8Gi")];
        let mut reversed = nodes.clone();
        reversed.reverse();
        let p = pod_req("1", "1Gi");
        let picks: Vec<String> =
            (0..3).map(|tb| schedule(&p, &nodes, &HashMap::new(), tb).unwrap().node_name).collect();
        assert_eq!(picks, ["a", "b", "c"]);
        for tb in 0..6 {
            assert_eq!(
                schedule(&p, &nodes, &HashMap::new(), tb).unwrap().node_name,
                schedule(&p, &reversed, &HashMap::new(), tb).unwrap().node_name
            );
        }
    }

    #[test]
    fn tie_breaker_is_stable_and_varies_by_pod() {
        let a = pod_req("1", "1");
        let mut b = a.clone();
        b.metadata.uid = Some("another-uid".into());
        assert_eq!(tie_breaker_for(&a), tie_breaker_for(&a.clone()));
        assert_ne!(tie_breaker_for(&a), tie_breaker_for(&b));
        // FNV-1a of "uid-p", pinned so a change in the hash is noticed (it would
        // reshuffle placements after an upgrade).
        assert_eq!(tie_breaker_for(&a), 0x8a6b_4f25_215e_fd50);
    }
}
