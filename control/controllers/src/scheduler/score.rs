//! Scoring: among the nodes that passed the filters, which one is best? Each rule gives
//! 0..=100 per node; the total is their weighted sum, with kube-scheduler's default
//! weights so placements look like what people expect from upstream.
//!
//! Integer arithmetic throughout (fractions in 1/10000) so that the same inputs always
//! give the same scores on every platform.
//!
//! Pure code: no I/O, no logging.

use k8s_openapi::api::core::v1::{Node, Pod};

use super::filter::{allocatable, effective_taints};
use super::resources::{NodeUsage, PodRequests, Resources};
use crate::helpers::node_affinity::term_matches;
use crate::helpers::taints::tolerated;

pub const MAX_NODE_SCORE: i64 = 100;
/// kube-scheduler's default plugin weights.
pub const WEIGHT_LEAST_REQUESTED: i64 = 1;
pub const WEIGHT_BALANCED_ALLOCATION: i64 = 1;
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
pub const WEIGHT_TAINT_TOLERATION: i64 = 3;
pub const WEIGHT_INTER_POD_AFFINITY: i64 = 2;
pub const WEIGHT_TOPOLOGY_SPREAD: i64 = 2;

/// One feasible node's scores, kept per rule so the caller can explain a placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeScore {
    pub node_name: String,
    pub least_requested: i64,
    pub balanced_allocation: i64,
    pub node_affinity: i64,
    pub taint_toleration: i64,
    /// InterPodAffinity (preferred terms of both sides; see `affinity`), 0 when no
    /// term applies.
    pub inter_pod_affinity: i64,
    /// PodTopologySpread (ScheduleAnyway constraints; see `spread`), 0 without any.
    pub topology_spread: i64,
    /// Weighted sum of the above.
    pub total: i64,
}

impl NodeScore {
    /// Sets the inter-pod scores (computed from per-cycle state, not per node) and
    /// adds them to the total.
    pub fn add_inter_pod(&mut self, inter_pod_affinity: i64, topology_spread: i64) {
        self.inter_pod_affinity = inter_pod_affinity;
        self.topology_spread = topology_spread;
        self.total += inter_pod_affinity * WEIGHT_INTER_POD_AFFINITY + topology_spread * WEIGHT_TOPOLOGY_SPREAD;
    }
}

/// `(allocatable - requested) / allocatable` scaled to 0..=100; a full, overfull or
/// empty (allocatable 0) resource scores 0.
fn free_share(requested: i64, allocatable: i64) -> i64 {
    if allocatable <= 0 || requested > allocatable {
        return 0;
    }
    ((i128::from(allocatable - requested) * 100) / i128::from(allocatable)) as i64
}

/// `requested / allocatable` in 1/10000, capped at 1 (10000); an empty resource is full.
fn used_fraction(requested: i64, allocatable: i64) -> i64 {
    if allocatable <= 0 {
        return 10_000;
    }
    let f = (i128::from(requested.max(0)) * 10_000) / i128::from(allocatable);
    f.min(10_000) as i64
}

/// LeastRequested: prefers emptier nodes. `requested` must already include the
/// incoming pod, with non-zero defaults. cpu and memory weigh equally.
pub fn least_requested(requested: Resources, alloc_milli_cpu: i64, alloc_memory: i64) -> i64 {
    (free_share(requested.milli_cpu, alloc_milli_cpu) + free_share(requested.memory, alloc_memory)) / 2
}

/// BalancedAllocation: prefers nodes where cpu and memory fill up evenly,
/// `1 - |cpu fraction - memory fraction|`, so that neither resource is stranded.
pub fn balanced_allocation(requested: Resources, alloc_milli_cpu: i64, alloc_memory: i64) -> i64 {
    let cpu = used_fraction(requested.milli_cpu, alloc_milli_cpu);
    let memory = used_fraction(requested.memory, alloc_memory);
    (10_000 - (cpu - memory).abs()) * MAX_NODE_SCORE / 10_000
}

/// Sum of the weights of the pod's preferred node affinity terms that match `node`
/// (before normalisation).
pub fn preferred_affinity_weight(pod: &Pod, node: &Node) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.preferred_during_scheduling_ignored_during_execution.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|t| t.weight > 0 && term_matches(&t.preference, node))
        .map(|t| i64::from(t.weight))
        .sum()
}

/// How many PreferNoSchedule taints of `node` the pod does not tolerate (before
/// normalisation).
pub fn untolerated_prefer_no_schedule(pod: &Pod, node: &Node) -> i64 {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or(&[]);
    effective_taints(node).iter().filter(|t| t.effect == "PreferNoSchedule" && !tolerated(tolerations, t)).count()
        as i64
}

/// Scales raw values so the largest becomes 100 (or, `reverse`, the smallest count
/// gets 100 and the largest 0). All zero → 0, or 100 when reversed: nobody is better.
fn normalise(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|&r| {
            let s = if max > 0 { r * MAX_NODE_SCORE / max } else { 0 };
            if reverse { MAX_NODE_SCORE - s } else { s }
        })
        .collect()
}

/// Scores every feasible node for `pod`. `nodes` pairs each node with what it already
/// carries; the pod's own requests are added here.
pub fn score_nodes(pod: &Pod, requests: &PodRequests, nodes: &[(&Node, &NodeUsage)]) -> Vec<NodeScore> {
    let affinity = normalise(&nodes.iter().map(|(n, _)| preferred_affinity_weight(pod, n)).collect::<Vec<_>>(), false);
    let taints =
        normalise(&nodes.iter().map(|(n, _)| untolerated_prefer_no_schedule(pod, n)).collect::<Vec<_>>(), true);
    nodes
        .iter()
        .zip(affinity)
        .zip(taints)
        .map(|(((node, usage), node_affinity), taint_toleration)| {
            // Filters already rejected nodes with unparsable allocatable.
            let (cpu, memory, _) = allocatable(node).unwrap_or_default();
            let used = usage.requested.non_zero;
            let requested = Resources {
                milli_cpu: used.milli_cpu.saturating_add(requests.non_zero.milli_cpu),
                memory: used.memory.saturating_add(requests.non_zero.memory),
            };
            let least_requested = least_requested(requested, cpu, memory);
            let balanced_allocation = balanced_allocation(requested, cpu, memory);
            NodeScore {
                node_name: node.metadata.name.clone().unwrap_or_default(),
                least_requested,
                balanced_allocation,
                node_affinity,
                taint_toleration,
                inter_pod_affinity: 0,
                topology_spread: 0,
                total: least_requested * WEIGHT_LEAST_REQUESTED
                    + balanced_allocation * WEIGHT_BALANCED_ALLOCATION
                    + node_affinity * WEIGHT_NODE_AFFINITY
                    + taint_toleration * WEIGHT_TAINT_TOLERATION,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::resources::pod_requests;
    use crate::scheduler::testutil::*;
    use serde_json::{Value, json};

    const GI: i64 = 1 << 30;

    fn res(milli_cpu: i64, memory: i64) -> Resources {
        Resources { milli_cpu, memory }
    }

    #[test]
    fn least_requested_prefers_free_nodes() {
        assert_eq!(least_requested(res(0, 0), 4000, 8 * GI), 100);
        assert_eq!(least_requested(res(2000, 4 * GI), 4000, 8 * GI), 50);
        // cpu 75% free, memory 25% free → average 50.
        assert_eq!(least_requested(res(1000, 6 * GI), 4000, 8 * GI), 50);
        assert_eq!(least_requested(res(4000, 8 * GI), 4000, 8 * GI), 0);
        // Overcommitted or empty resources score 0, never negative.
        assert_eq!(least_requested(res(5000, 0), 4000, 8 * GI), 50);
        assert_eq!(least_requested(res(0, 0), 0, 8 * GI), 50);
    }

    #[test]
    fn balanced_allocation_prefers_even_use() {
        assert_eq!(balanced_allocation(res(2000, 4 * GI), 4000, 8 * GI), 100);
        assert_eq!(balanced_allocation(res(0, 0), 4000, 8 * GI), 100);
        // cpu 75%, memory 25% → 1 - 0.5.
        assert_eq!(balanced_allocation(res(3000, 2 * GI), 4000, 8 * GI), 50);
        assert_eq!(balanced_allocation(res(4000, 0), 4000, 8 * GI), 0);
        // Fractions are capped at 1.
        assert_eq!(balanced_allocation(res(8000, 8 * GI), 4000, 8 * GI), 100);
    }

    #[test]
    fn defaults_apply_to_request_less_pods() {
        let n = node("a", "1", "2000Mi");
        let p = pod(json!({"containers": [ctr("c", json!(null))]}));
        let s = &score_nodes(&p, &pod_requests(&p).unwrap(), &[(&n, &NodeUsage::default())])[0];
        // 100m of 1000m and 200Mi of 2000Mi used → 90% free each.
        assert_eq!(s.least_requested, 90);
        assert_eq!(s.balanced_allocation, 100);
    }

    #[test]
    fn existing_pods_count_towards_scores() {
        let n = node("a", "4", "8Gi");
        let mut usage = NodeUsage::default();
        usage.add_pod(&pod_req("2", "1Gi"));
        let p = pod_req("0", "1Gi");
        let s = &score_nodes(&p, &pod_requests(&p).unwrap(), &[(&n, &usage)])[0];
        // cpu 50% used → 50 free; memory 25% used → 75 free.
        assert_eq!(s.least_requested, (50 + 75) / 2);
        assert_eq!(s.balanced_allocation, 75);
    }

    fn preferring(terms: Value) -> Pod {
        pod(json!({
            "containers": [ctr("c", json!(null))],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": terms}},
        }))
    }

    #[test]
    fn preferred_affinity_is_weighted_and_normalised() {
        let term = |w: i32, zone: &str| json!({"weight": w, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": [zone]}]}});
        let p = preferring(json!([term(10, "z1"), term(30, "z2"), term(0, "z3"), {"weight": 50, "preference": {}}]));
        let nodes = [
            labelled("a", json!({"zone": "z1"})),
            labelled("b", json!({"zone": "z2"})),
            labelled("c", json!({"zone": "z3"})),
        ];
        assert_eq!(preferred_affinity_weight(&p, &nodes[0]), 10);
        assert_eq!(preferred_affinity_weight(&p, &nodes[1]), 30);
        assert_eq!(preferred_affinity_weight(&p, &nodes[2]), 0);
        let usage = NodeUsage::default();
        let pairs: Vec<_> = nodes.iter().map(|n| (n, &usage)).collect();
        let scores = score_nodes(&p, &pod_requests(&p).unwrap(), &pairs);
        let affinity: Vec<_> = scores.iter().map(|s| s.node_affinity).collect();
        assert_eq!(affinity, [33, 100, 0]);
        // No preferences at all: everyone scores 0 rather than dividing by zero.
        let plain = pod_req("1", "1");
        let scores = score_nodes(&plain, &pod_requests(&plain).unwrap(), &pairs);
        assert!(scores.iter().all(|s| s.node_affinity == 0));
    }

    #[test]
    fn prefer_no_schedule_taints_are_penalised() {
        let soft = |key: &str| json!({"key": key, "effect": "PreferNoSchedule"});
        let nodes = [
            tainted("clean", json!([])),
            tainted("one", json!([soft("a")])),
            tainted("two", json!([soft("a"), soft("b")])),
        ];
        let usage = NodeUsage::default();
        let pairs: Vec<_> = nodes.iter().map(|n| (n, &usage)).collect();
        let p = pod_req("1", "1");
        let scores = score_nodes(&p, &pod_requests(&p).unwrap(), &pairs);
        let taint: Vec<_> = scores.iter().map(|s| s.taint_toleration).collect();
        assert_eq!(taint, [100, 50, 0]);

        // A toleration with the PreferNoSchedule effect, or no effect, removes the penalty.
        let p = pod(json!({
            "containers": [ctr("c", json!(null))],
            "tolerations": [{"key": "a", "operator": "Exists", "effect": "PreferNoSchedule"}, {"key": "b", "operator": "Exists"}],
        }));
        assert_eq!(untolerated_prefer_no_schedule(&p, &nodes[2]), 0);
        let scores = score_nodes(&p, &pod_requests(&p).unwrap(), &pairs);
        assert!(scores.iter().all(|s| s.taint_toleration == 100));
        // A NoSchedule toleration does not cover a PreferNoSchedule taint.
        let p = pod(json!({
            "containers": [ctr("c", json!(null))],
            "tolerations": [{"key": "a", "operator": "Exists", "effect": "NoSchedule"}],
        }));
        assert_eq!(untolerated_prefer_no_schedule(&p, &nodes[1]), 1);
    }

    #[test]
    fn total_is_weighted_sum() {
        let n = node("a", "4", "8Gi");
        let p = pod_req("0", "0");
        let s = &score_nodes(&p, &pod_requests(&p).unwrap(), &[(&n, &NodeUsage::default())])[0];
        assert_eq!(s.total, s.least_requested + s.balanced_allocation + 2 * s.node_affinity + 3 * s.taint_toleration);
        // Empty node, no preferences, no taints: 100 + 100 + 2 * 0 + 3 * 100.
        assert_eq!(s.total, 500);
    }
}
