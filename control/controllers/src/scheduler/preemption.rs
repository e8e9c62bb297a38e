//! Preemption, as kube-scheduler's DefaultPreemption plugin: when a pod fits nowhere,
//! find the node where evicting pods of lower priority makes it fit, and which pods.
//!
//! Per node whose failure eviction can cure (resources, anti-affinity, spread skew;
//! see [`Reason::resolvable_by_preemption`]): remove every pod of lower priority; if the
//! pod still does not fit, the node is no candidate. Otherwise give pods back, most
//! important first (higher priority, then longer running), those whose eviction would
//! break a PodDisruptionBudget before the others, and keep each one that still leaves
//! room: what remains are the victims. Among candidates the node with the fewest
//! budget violations wins, then the lowest highest victim priority, the lowest sum of
//! priorities, the fewest victims, the most recently started important victims, the
//! name.
//!
//! A pod with `preemptionPolicy: Never` does not preempt, nor does one whose nominated
//! node still has a lower-priority pod terminating (its earlier preemption is under
//! way). Pure code: deleting the victims and nominating the node is the caller's.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use skiff_api::selector::LabelSelector;

use super::affinity::pod_labels;
use super::cluster::{Cluster, name};
use super::filter::Reason;
use super::resources::{PodRequests, pod_requests};
use super::{FitError, PodState, check_node};
use crate::controllers::replicaset::selector_of;

/// The priority of a pod (`spec.priority`, set by priority admission; 0 without).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// When the pod started (its creation when it has not), in seconds.
fn start_time(pod: &Pod) -> i64 {
    let started = pod.status.as_ref().and_then(|s| s.start_time.as_ref());
    started.or(pod.metadata.creation_timestamp.as_ref()).map_or(0, |t| t.0.as_second())
}

/// More important first: higher priority, then the one that started earlier.
fn importance(pod: &Pod) -> (Reverse<i32>, i64) {
    (Reverse(priority(pod)), start_time(pod))
}

/// What preemption needs of a PodDisruptionBudget.
#[derive(Debug, Clone)]
pub struct Budget {
    namespace: String,
    selector: Option<LabelSelector>,
    disruptions_allowed: i64,
    /// Pods already being disrupted under this budget (no further charge).
    disrupted: Vec<String>,
}

impl Budget {
    pub fn of(pdb: &PodDisruptionBudget) -> Self {
        let spec = pdb.spec.as_ref();
        let status = pdb.status.as_ref();
        Self {
            namespace: pdb.metadata.namespace.clone().unwrap_or_default(),
            // A budget without a selector, or with an empty one, covers no pod.
            selector: spec
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| selector_of(s).ok())
                .filter(|s| !s.is_empty()),
            disruptions_allowed: status.map_or(0, |s| i64::from(s.disruptions_allowed)),
            disrupted: status
                .and_then(|s| s.disrupted_pods.as_ref())
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }

    fn covers(&self, pod: &Pod) -> bool {
        pod.metadata.namespace.as_deref() == Some(self.namespace.as_str())
            && self.selector.as_ref().is_some_and(|s| s.matches(pod_labels(pod)))
            && !self.disrupted.iter().any(|d| Some(d.as_str()) == pod.metadata.name.as_deref())
    }
}

/// The chosen node and the pods to evict from it, most important first.
#[derive(Debug, Clone)]
pub struct Preemption<'a> {
    pub node_name: String,
    pub victims: Vec<&'a Pod>,
    /// How many victims' eviction breaks a PodDisruptionBudget.
    pub budget_violations: usize,
}

/// Why the pod may not preempt at all, in upstream's words; `None` when it may.
pub fn ineligible(pod: &Pod, cluster: &Cluster<'_>) -> Option<&'static str> {
    if pod.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Some("not eligible due to preemptionPolicy=Never.");
    }
    let nominated = pod.status.as_ref().and_then(|s| s.nominated_node_name.as_deref()).filter(|n| !n.is_empty());
    if let Some(node) = nominated {
        let own = priority(pod);
        if cluster.pods_on(node).iter().any(|p| p.metadata.deletion_timestamp.is_some() && priority(p) < own) {
            return Some("not eligible due to a terminating pod on the nominated node.");
        }
    }
    None
}

/// Finds where and whom to preempt for `pod` among `nodes` (the candidates, as for
/// [`super::schedule_in`]). The error is the message kube-scheduler appends after
/// `preemption: `.
pub fn find<'a>(
    pod: &Pod,
    nodes: &[Node],
    cluster: &Cluster<'a>,
    budgets: &[Budget],
) -> Result<Preemption<'a>, String> {
    if let Some(why) = ineligible(pod, cluster) {
        return Err(why.to_string());
    }
    let requests = pod_requests(pod).map_err(|e| e.to_string())?;
    let state = PodState::new(pod, cluster);
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by(|a, b| name(a).cmp(name(b)));
    let mut candidates = Vec::new();
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    for node in sorted {
        let failed = match check_node(pod, &requests, node, cluster.usage(name(node)), &state) {
            Ok(()) => Vec::new(),
            Err(failed) => failed,
        };
        if !failed.iter().all(Reason::resolvable_by_preemption) {
            *reasons.entry(Reason::PreemptionNotHelpful).or_default() += 1;
            continue;
        }
        match victims_on(pod, &requests, node, cluster, &state, budgets) {
            Some(c) => candidates.push(c),
            None => *reasons.entry(Reason::NoPreemptionVictims).or_default() += 1,
        }
    }
    candidates
        .into_iter()
        .min_by_key(|c| {
            let top = c.victims.first().map_or(i32::MIN, |v| priority(v));
            let sum: i64 = c.victims.iter().map(|v| i64::from(priority(v))).sum();
            let earliest_top =
                c.victims.iter().filter(|v| priority(v) == top).map(|v| start_time(v)).min().unwrap_or(i64::MAX);
            (c.budget_violations, top, sum, c.victims.len(), Reverse(earliest_top), c.node_name.clone())
        })
        .ok_or_else(|| FitError { num_nodes: nodes.len(), reasons }.to_string())
}

/// The fewest, least important lower-priority pods to evict from `node` so that `pod`
/// fits (see the module docs); `None` if evicting all of them is not enough.
fn victims_on<'a>(
    pod: &Pod,
    requests: &PodRequests,
    node: &Node,
    cluster: &Cluster<'a>,
    state: &PodState,
    budgets: &[Budget],
) -> Option<Preemption<'a>> {
    let own = priority(pod);
    let mut lower: Vec<&'a Pod> = cluster.pods_on(name(node)).iter().copied().filter(|p| priority(p) < own).collect();
    let mut usage = cluster.usage(name(node)).clone();
    let mut state = state.clone();
    for v in &lower {
        usage.remove_pod(v);
        state.account(pod, v, node, cluster, -1);
    }
    check_node(pod, requests, node, &usage, &state).ok()?;
    lower.sort_by_key(|p| importance(p));

    // Charge budgets in importance order, as upstream does.
    let mut allowed: Vec<i64> = budgets.iter().map(|b| b.disruptions_allowed).collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for p in lower {
        let mut breaks = false;
        for (b, left) in budgets.iter().zip(allowed.iter_mut()) {
            if b.covers(p) {
                *left -= 1;
                breaks |= *left < 0;
            }
        }
        if breaks { violating.push(p) } else { fine.push(p) }
    }

    let mut victims = Vec::new();
    let mut budget_violations = 0;
    for (p, breaks) in violating.into_iter().map(|p| (p, true)).chain(fine.into_iter().map(|p| (p, false))) {
        usage.add_pod(p);
        state.account(pod, p, node, cluster, 1);
        if check_node(pod, requests, node, &usage, &state).is_err() {
            usage.remove_pod(p);
            state.account(pod, p, node, cluster, -1);
            victims.push(p);
            budget_violations += usize::from(breaks);
        }
    }
    victims.sort_by_key(|p| importance(p));
    Some(Preemption { node_name: name(node).to_string(), victims, budget_violations })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::testutil::*;
    use super::*;

    fn with_priority(name: &str, node: Option<&str>, cpu: &str, prio: i32, extra: Value) -> Pod {
        let mut spec = json!({"priority": prio, "containers": [ctr("c", json!({"cpu": cpu}))]});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        named(name, json!({"app": name}), node, spec)
    }

    fn victims(p: &Preemption<'_>) -> Vec<String> {
        p.victims.iter().map(|v| v.metadata.name.clone().unwrap()).collect()
    }

    #[test]
    fn evicts_the_lowest_priority() {
        let nodes = [node("n1", "2", "8Gi"), node("n2", "2", "8Gi")];
        let placed =
            [with_priority("mid", Some("n1"), "2", 10, json!({})), with_priority("low", Some("n2"), "2", 5, json!({}))];
        let cluster = Cluster::new(&nodes, &placed);
        let p = with_priority("vip", None, "1", 100, json!({}));
        let chosen = find(&p, &nodes, &cluster, &[]).unwrap();
        assert_eq!((chosen.node_name.as_str(), victims(&chosen)), ("n2", vec!["low".to_string()]));
    }

    #[test]
    fn evicts_as_few_as_needed() {
        let nodes = [node("n1", "4", "8Gi")];
        let placed: Vec<Pod> = (0..4).map(|i| with_priority(&format!("p{i}"), Some("n1"), "1", 1, json!({}))).collect();
        let cluster = Cluster::new(&nodes, &placed);
        let chosen = find(&with_priority("vip", None, "2", 100, json!({})), &nodes, &cluster, &[]).unwrap();
        assert_eq!(chosen.victims.len(), 2);
        // A node where one victim suffices beats one where two are needed.
        let nodes = [node("n1", "2", "8Gi"), node("n2", "2", "8Gi")];
        let placed = [
            with_priority("a", Some("n1"), "1", 1, json!({})),
            with_priority("b", Some("n1"), "1", 1, json!({})),
            with_priority("c", Some("n2"), "2", 1, json!({})),
        ];
        let cluster = Cluster::new(&nodes, &placed);
        let chosen = find(&with_priority("vip", None, "2", 100, json!({})), &nodes, &cluster, &[]).unwrap();
        assert_eq!((chosen.node_name.as_str(), victims(&chosen)), ("n2", vec!["c".to_string()]));
    }

    #[test]
    fn equal_or_higher_priority_pods_are_never_victims() {
        let nodes = [node("n1", "2", "8Gi"), tainted("t", json!([{"key": "x", "effect": "NoSchedule"}]))];
        let placed = [with_priority("peer", Some("n1"), "2", 100, json!({}))];
        let cluster = Cluster::new(&nodes, &placed);
        let err = find(&with_priority("vip", None, "5", 100, json!({})), &nodes, &cluster, &[]).unwrap_err();
        assert_eq!(
            err,
            "0/2 nodes are available: 1 No preemption victims found for incoming pod, \
             1 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn preemption_policy_never_and_pending_preemption() {
        let nodes = [node("n1", "2", "8Gi")];
        let mut placed = vec![with_priority("low", Some("n1"), "2", 1, json!({}))];
        let cluster = Cluster::new(&nodes, &placed);
        let never = with_priority("vip", None, "1", 100, json!({"preemptionPolicy": "Never"}));
        assert_eq!(find(&never, &nodes, &cluster, &[]).unwrap_err(), "not eligible due to preemptionPolicy=Never.");

        let mut nominated = with_priority("vip", None, "1", 100, json!({}));
        nominated.status = Some(serde_json::from_value(json!({"nominatedNodeName": "n1"})).unwrap());
        placed[0].metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH));
        let cluster = Cluster::new(&nodes, &placed);
        assert_eq!(
            find(&nominated, &nodes, &cluster, &[]).unwrap_err(),
            "not eligible due to a terminating pod on the nominated node."
        );
    }

    #[test]
    fn budgets_are_a_preference() {
        let nodes = [node("n1", "2", "8Gi"), node("n2", "2", "8Gi")];
        let placed = [
            with_priority("guarded", Some("n1"), "2", 1, json!({})),
            with_priority("free", Some("n2"), "2", 5, json!({})),
        ];
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "g", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "guarded"}}},
            "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1},
        }))
        .unwrap();
        let cluster = Cluster::new(&nodes, &placed);
        let p = with_priority("vip", None, "2", 100, json!({}));
        // Without the budget the lower priority goes; with it, the unguarded pod.
        assert_eq!(find(&p, &nodes, &cluster, &[]).unwrap().node_name, "n1");
        let chosen = find(&p, &nodes, &cluster, &[Budget::of(&pdb)]).unwrap();
        assert_eq!((chosen.node_name.as_str(), chosen.budget_violations), ("n2", 0));
        // When only guarded pods can go, the budget gives way.
        let chosen = find(&p, &nodes[..1], &cluster, &[Budget::of(&pdb)]).unwrap();
        assert_eq!((victims(&chosen), chosen.budget_violations), (vec!["guarded".to_string()], 1));
    }

    #[test]
    fn anti_affinity_can_be_cured_by_eviction() {
        let nodes = [node("n1", "4", "8Gi")];
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "low"}}}]}}});
        let placed = [with_priority("low", Some("n1"), "100m", 1, json!({}))];
        let cluster = Cluster::new(&nodes, &placed);
        let chosen = find(&with_priority("vip", None, "1", 100, anti), &nodes, &cluster, &[]).unwrap();
        assert_eq!(victims(&chosen), ["low"]);
    }
}
