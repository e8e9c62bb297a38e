//! Pod topology spread constraints, as kube-scheduler's PodTopologySpread plugin:
//! `whenUnsatisfiable: DoNotSchedule` constraints filter, `ScheduleAnyway` ones score.
//!
//! Matching pods are counted per domain (node label value of the constraint's
//! `topologyKey`) once per scheduling cycle in [`SpreadState::new`]. A node takes part
//! in a constraint's domains only when it carries every topology key of the pod's
//! constraints of that kind and passes the inclusion policies (`nodeAffinityPolicy`
//! Honor by default: the pod's nodeSelector/required node affinity must match;
//! `nodeTaintsPolicy` Ignore by default). Pods being deleted do not count, and only
//! pods in the incoming pod's namespace do. `matchLabelKeys` narrow the selector to the
//! incoming pod's values.
//!
//! Upstream's cluster-level default constraints (applied to pods without any) are not
//! implemented: pods without constraints are only spread by resource scoring.
//!
//! Pure code: no I/O, no logging.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Node, Pod, TopologySpreadConstraint};
use skiff_api::selector::LabelSelector;

use super::affinity::{merge_label_keys, pod_labels, selector_or_nothing};
use super::cluster::{Cluster, label, name};
use super::filter::{Reason, check_node_affinity, check_taints};

/// One constraint, resolved against the incoming pod.
#[derive(Debug, Clone)]
struct Constraint {
    max_skew: i64,
    key: String,
    selector: Option<LabelSelector>,
    min_domains: usize,
    honor_node_affinity: bool,
    honor_taints: bool,
    /// Does the incoming pod itself match the selector?
    self_match: i64,
}

impl Constraint {
    fn new(c: &TopologySpreadConstraint, pod: &Pod) -> Self {
        let labels = pod_labels(pod);
        let selector = selector_or_nothing(c.label_selector.as_ref())
            .map(|s| merge_label_keys(s, labels, c.match_label_keys.as_deref().unwrap_or(&[]), &[]));
        let self_match = i64::from(selector.as_ref().is_some_and(|s| s.matches(labels)));
        Self {
            max_skew: i64::from(c.max_skew.max(1)),
            key: c.topology_key.clone(),
            selector,
            min_domains: c.min_domains.unwrap_or(1).max(1) as usize,
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            self_match,
        }
    }

    fn includes(&self, pod: &Pod, node: &Node) -> bool {
        (!self.honor_node_affinity || check_node_affinity(pod, node).is_ok())
            && (!self.honor_taints || check_taints(pod, node).is_ok())
    }

    fn counts(&self, pod: &Pod, existing: &Pod) -> bool {
        existing.metadata.deletion_timestamp.is_none()
            && existing.metadata.namespace == pod.metadata.namespace
            && self.selector.as_ref().is_some_and(|s| s.matches(pod_labels(existing)))
    }
}

/// Which constraints a state is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `DoNotSchedule`: the filter.
    Hard,
    /// `ScheduleAnyway`: the score.
    Soft,
}

/// Matching pods per domain for each constraint of one kind.
#[derive(Debug, Clone, Default)]
pub struct SpreadState {
    constraints: Vec<Constraint>,
    /// Per constraint: domain value → matching pods. Every eligible domain is present,
    /// with 0 when it has no matching pod.
    counts: Vec<HashMap<String, i64>>,
    /// Names of the nodes whose pods are counted (preemption must not count others).
    eligible: HashMap<String, Vec<bool>>,
}

impl SpreadState {
    pub fn new(pod: &Pod, cluster: &Cluster<'_>, kind: Kind) -> Self {
        let want = match kind {
            Kind::Hard => "DoNotSchedule",
            Kind::Soft => "ScheduleAnyway",
        };
        let constraints: Vec<Constraint> = pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_deref())
            .unwrap_or(&[])
            .iter()
            .filter(|c| c.when_unsatisfiable == want)
            .map(|c| Constraint::new(c, pod))
            .collect();
        let mut state = Self { counts: vec![HashMap::new(); constraints.len()], constraints, ..Self::default() };
        if state.constraints.is_empty() {
            return state;
        }
        for node in cluster.nodes() {
            if !state.has_all_keys(node) {
                continue;
            }
            let included: Vec<bool> = state.constraints.iter().map(|c| c.includes(pod, node)).collect();
            for (i, c) in state.constraints.iter().enumerate() {
                if !included[i] {
                    continue;
                }
                let value = label(node, &c.key).unwrap_or_default().to_string();
                let n = cluster.pods_on(name(node)).iter().filter(|e| c.counts(pod, e)).count() as i64;
                *state.counts[i].entry(value).or_default() += n;
            }
            state.eligible.insert(name(node).to_string(), included);
        }
        state
    }

    pub fn is_empty(&self) -> bool {
        self.constraints.is_empty()
    }

    fn has_all_keys(&self, node: &Node) -> bool {
        self.constraints.iter().all(|c| label(node, &c.key).is_some())
    }

    /// Adds (1) or removes (-1) `existing` on `node` from the counts.
    pub fn account(&mut self, pod: &Pod, existing: &Pod, node: &Node, delta: i64) {
        let Some(included) = self.eligible.get(name(node)) else { return };
        for (i, c) in self.constraints.iter().enumerate() {
            if included[i] && c.counts(pod, existing) {
                let value = label(node, &c.key).unwrap_or_default().to_string();
                *self.counts[i].entry(value).or_default() += delta;
            }
        }
    }

    /// The PodTopologySpread filter for `node` (hard constraints).
    pub fn filter(&self, node: &Node) -> Result<(), Reason> {
        if self.constraints.is_empty() {
            return Ok(());
        }
        if !self.has_all_keys(node) {
            return Err(Reason::TopologySpreadMissingLabel);
        }
        for (c, counts) in self.constraints.iter().zip(&self.counts) {
            let value = label(node, &c.key).unwrap_or_default();
            let min = if counts.len() < c.min_domains { 0 } else { counts.values().copied().min().unwrap_or(0) };
            let matching = counts.get(value).copied().unwrap_or(0);
            if matching + c.self_match - min > c.max_skew {
                return Err(Reason::TopologySpreadNotMatch);
            }
        }
        Ok(())
    }

    /// Scores for the feasible `nodes` (soft constraints), 0..=100, fewer matching pods
    /// in a node's domains scoring higher. Empty when there is nothing to score.
    pub fn scores(&self, nodes: &[&Node]) -> Vec<i64> {
        if self.constraints.is_empty() {
            return Vec::new();
        }
        // Each constraint weighs ln(domains among the feasible nodes + 2), so that
        // constraints over many domains (hostname) count more than over few (zone);
        // kept in thousandths so the arithmetic stays integral.
        let weights: Vec<i64> = self
            .constraints
            .iter()
            .map(|c| {
                let mut domains: Vec<&str> = nodes.iter().filter_map(|n| label(n, &c.key)).collect();
                domains.sort_unstable();
                domains.dedup();
                (((domains.len() + 2) as f64).ln() * 1000.0).round() as i64
            })
            .collect();
        let raw: Vec<Option<i64>> = nodes
            .iter()
            .map(|node| {
                if !self.has_all_keys(node) {
                    return None;
                }
                let mut score = 0;
                for ((c, counts), w) in self.constraints.iter().zip(&self.counts).zip(&weights) {
                    let value = label(node, &c.key).unwrap_or_default();
                    score += counts.get(value).copied().unwrap_or(0) * w + (c.max_skew - 1) * 1000;
                }
                Some(score)
            })
            .collect();
        let min = raw.iter().flatten().copied().min().unwrap_or(0);
        let max = raw.iter().flatten().copied().max().unwrap_or(0);
        raw.iter()
            .map(|r| match r {
                None => 0,
                Some(_) if max == 0 => 100,
                Some(s) => 100 * (max + min - s) / max,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{Value, json};

    use super::super::testutil::*;
    use super::super::{Cluster, schedule_in};
    use super::*;

    fn spread(key: &str, max_skew: i32, when: &str, extra: Value) -> Value {
        let mut c = json!({"maxSkew": max_skew, "topologyKey": key, "whenUnsatisfiable": when,
            "labelSelector": {"matchLabels": {"app": "web"}}});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"topologySpreadConstraints": [c]})
    }

    fn web(name: &str, node: Option<&str>, spec: Value) -> Pod {
        named(name, json!({"app": "web"}), node, spec)
    }

    fn feasible(p: &Pod, nodes: &[Node], placed: &[Pod]) -> Result<Vec<String>, String> {
        let cluster = Cluster::new(nodes, placed);
        let r = schedule_in(p, nodes, &cluster, 0).map_err(|e| e.to_string())?;
        Ok(r.scores.into_iter().map(|s| s.node_name).collect())
    }

    #[test]
    fn do_not_schedule_keeps_the_skew() {
        let nodes = zoned(&["a1", "a2", "b1"], &["a", "a", "b"]);
        let hard = spread("zone", 1, "DoNotSchedule", json!({}));
        let placed = [web("w1", Some("a1"), json!({}))];
        assert_eq!(feasible(&web("w2", None, hard.clone()), &nodes, &placed).unwrap(), ["b1"]);
        let placed = [web("w1", Some("a1"), json!({})), web("w2", Some("b1"), json!({}))];
        assert_eq!(feasible(&web("w3", None, hard.clone()), &nodes, &placed).unwrap(), ["a1", "a2", "b1"]);
        // Pods that do not match the selector, or live in another namespace, or are being
        // deleted, do not count.
        let mut other_ns = web("o", Some("a2"), json!({}));
        other_ns.metadata.namespace = Some("other".into());
        let mut leaving = web("l", Some("a2"), json!({}));
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH));
        let placed = [named("x", json!({"app": "db"}), Some("b1"), json!({})), other_ns, leaving];
        assert_eq!(feasible(&web("w", None, hard.clone()), &nodes, &placed).unwrap(), ["a1", "a2", "b1"]);
        // A node without the key is no candidate, whatever the counts.
        let mut with_bare = nodes.clone();
        with_bare.push(node("bare", "4", "8Gi"));
        let placed = [web("w1", Some("b1"), json!({}))];
        let cluster = Cluster::new(&with_bare, &placed);
        let err = schedule_in(&web("w", None, hard), &with_bare[2..], &cluster, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: 1 node(s) didn't match pod topology spread constraints, \
             1 node(s) didn't match pod topology spread constraints (missing required label)."
        );
    }

    #[test]
    fn min_domains_counts_missing_domains_as_empty() {
        let nodes = zoned(&["a1", "b1"], &["a", "b"]);
        let placed = [web("w1", Some("a1"), json!({})), web("w2", Some("b1"), json!({}))];
        let three = spread("zone", 1, "DoNotSchedule", json!({"minDomains": 3}));
        let err = feasible(&web("w3", None, three), &nodes, &placed).unwrap_err();
        assert_eq!(err, "0/2 nodes are available: 2 node(s) didn't match pod topology spread constraints.");
        let two = spread("zone", 1, "DoNotSchedule", json!({"minDomains": 2}));
        assert_eq!(feasible(&web("w3", None, two), &nodes, &placed).unwrap().len(), 2);
    }

    #[test]
    fn node_affinity_policy_decides_which_domains_count() {
        // b1 is excluded by the pod's nodeSelector: under Honor its empty zone does not
        // count, so a1 stays feasible; under Ignore it does, and a1 (skew 2) is not.
        let nodes = vec![
            node_with("a1", "4", "8Gi", json!({"labels": {"zone": "a", "pool": "x"}}), json!({})),
            node_with("b1", "4", "8Gi", json!({"labels": {"zone": "b"}}), json!({})),
        ];
        let placed = [web("w1", Some("a1"), json!({}))];
        let pod_with = |policy: &str| {
            let mut spec = spread("zone", 1, "DoNotSchedule", json!({"nodeAffinityPolicy": policy}));
            spec["nodeSelector"] = json!({"pool": "x"});
            web("w2", None, spec)
        };
        assert_eq!(feasible(&pod_with("Honor"), &nodes, &placed).unwrap(), ["a1"]);
        assert!(feasible(&pod_with("Ignore"), &nodes, &placed).is_err());
    }

    #[test]
    fn schedule_anyway_prefers_emptier_domains_without_filtering() {
        let nodes = zoned(&["a1", "b1"], &["a", "b"]);
        let soft = spread("zone", 1, "ScheduleAnyway", json!({}));
        let placed = [web("w1", Some("a1"), json!({})), web("w2", Some("a1"), json!({}))];
        let cluster = Cluster::new(&nodes, &placed);
        let r = schedule_in(&web("w3", None, soft), &nodes, &cluster, 0).unwrap();
        let by_node: HashMap<&str, i64> = r.scores.iter().map(|s| (s.node_name.as_str(), s.topology_spread)).collect();
        assert_eq!(by_node["b1"], 100);
        assert!(by_node["a1"] < 100, "{by_node:?}");
        assert_eq!(r.feasible_nodes, 2);
        assert_eq!(r.node_name, "b1");
    }

    #[test]
    fn match_label_keys_count_only_the_same_revision() {
        let nodes = zoned(&["a1", "b1"], &["a", "b"]);
        let hard = spread("zone", 1, "DoNotSchedule", json!({"matchLabelKeys": ["rev"]}));
        let old = named("old", json!({"app": "web", "rev": "1"}), Some("a1"), json!({}));
        let new = named("new", json!({"app": "web", "rev": "2"}), None, hard.clone());
        let placed = [old.clone(), named("old2", json!({"app": "web", "rev": "1"}), Some("a1"), json!({}))];
        assert_eq!(feasible(&new, &nodes, &placed).unwrap().len(), 2);
        let same = named("same", json!({"app": "web", "rev": "1"}), None, hard);
        assert_eq!(feasible(&same, &nodes, &placed).unwrap(), ["b1"]);
    }
}
