//! Inter-pod affinity and anti-affinity, as kube-scheduler's InterPodAffinity plugin.
//!
//! Required terms filter, preferred (weighted) terms score. Everything is counted per
//! topology domain (a `(topologyKey, node label value)` pair) once per scheduling cycle
//! in [`AffinityState::new`], so the per-node filter and score are map lookups instead of
//! scans over the pods of the cluster:
//! - `affinity`: pods matching each required affinity term of the incoming pod;
//! - `anti`: pods matching each of its required anti-affinity terms;
//! - `existing_anti`: domains where a placed pod's required anti-affinity term matches
//!   the incoming pod (symmetry: that pod keeps the newcomer out of its domain);
//! - `scores`: the preferred terms of both sides, plus placed pods' required affinity
//!   terms that match the incoming pod with weight 1 (upstream's hardPodAffinityWeight).
//!
//! A term's namespaces are its `namespaces` plus those its `namespaceSelector` picks;
//! with neither, the namespace of the pod that owns the term. `matchLabelKeys` and
//! `mismatchLabelKeys` are merged into the selector with the owner's label values.
//!
//! Pure code: no I/O, no logging.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as MetaSelector;
use skiff_api::selector::{LabelSelector, Requirement};

use super::cluster::{Cluster, label};
use super::filter::Reason;
use crate::controllers::replicaset::selector_of;

/// Weight of a placed pod's required affinity term matching the incoming pod, in the
/// score (kube-scheduler's `hardPodAffinityWeight` default).
pub const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// A topology domain: a label key and a node's value for it.
type Pair = (String, String);

/// The labels of `pod`, empty when it has none.
pub fn pod_labels(pod: &Pod) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

/// A label selector where `null` selects nothing (as `metav1.LabelSelector` in pod
/// affinity and topology spread), `{}` everything. An invalid selector selects nothing;
/// the API server rejects those anyway.
pub fn selector_or_nothing(s: Option<&MetaSelector>) -> Option<LabelSelector> {
    selector_of(s?).ok()
}

/// `selector` narrowed to the owner's values of `match_keys` (`key in (value)`) and
/// away from its values of `mismatch_keys`; keys the owner lacks are ignored.
pub fn merge_label_keys(
    mut selector: LabelSelector,
    owner: &BTreeMap<String, String>,
    match_keys: &[String],
    mismatch_keys: &[String],
) -> LabelSelector {
    for k in match_keys {
        if let Some(v) = owner.get(k) {
            selector.requirements.push(Requirement::In(k.clone(), vec![v.clone()]));
        }
    }
    for k in mismatch_keys {
        if let Some(v) = owner.get(k) {
            selector.requirements.push(Requirement::NotIn(k.clone(), vec![v.clone()]));
        }
    }
    selector
}

/// One pod affinity term, resolved against the pod that declares it.
#[derive(Debug, Clone)]
pub struct Term {
    selector: Option<LabelSelector>,
    namespaces: Vec<String>,
    namespace_selector: Option<LabelSelector>,
    pub topology_key: String,
    pub weight: i64,
}

impl Term {
    fn new(t: &PodAffinityTerm, owner: &Pod, weight: i64) -> Self {
        let owner_labels = pod_labels(owner);
        let selector = selector_or_nothing(t.label_selector.as_ref()).map(|s| {
            merge_label_keys(
                s,
                owner_labels,
                t.match_label_keys.as_deref().unwrap_or(&[]),
                t.mismatch_label_keys.as_deref().unwrap_or(&[]),
            )
        });
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        let namespace_selector = t.namespace_selector.as_ref().and_then(|s| selector_of(s).ok());
        if namespaces.is_empty() && t.namespace_selector.is_none() {
            namespaces.push(owner.metadata.namespace.clone().unwrap_or_default());
        }
        Self { selector, namespaces, namespace_selector, topology_key: t.topology_key.clone(), weight }
    }

    /// Does `pod` fall under this term (namespace and labels)?
    pub fn matches(&self, pod: &Pod, cluster: &Cluster<'_>) -> bool {
        let Some(selector) = &self.selector else { return false };
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let in_namespace = self.namespaces.iter().any(|n| n == ns)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| s.is_empty() || cluster.namespace_labels(ns).is_some_and(|labels| s.matches(labels)));
        in_namespace && selector.matches(pod_labels(pod))
    }

    /// The domain of `node` for this term, if the node has the key.
    fn pair(&self, node: &Node) -> Option<Pair> {
        label(node, &self.topology_key).map(|v| (self.topology_key.clone(), v.to_string()))
    }
}

/// The four term lists of a pod's `spec.affinity`.
#[derive(Debug, Clone, Default)]
pub struct Terms {
    pub required_affinity: Vec<Term>,
    pub required_anti: Vec<Term>,
    pub preferred_affinity: Vec<Term>,
    pub preferred_anti: Vec<Term>,
}

impl Terms {
    pub fn of(pod: &Pod) -> Self {
        let Some(aff) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else { return Self::default() };
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
            terms.into_iter().flatten().map(|t| Term::new(t, pod, HARD_POD_AFFINITY_WEIGHT)).collect()
        };
        let preferred = |terms: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<Term> {
            terms
                .into_iter()
                .flatten()
                .filter(|w| w.weight != 0)
                .map(|w| Term::new(&w.pod_affinity_term, pod, i64::from(w.weight)))
                .collect()
        };
        let (pa, anti) = (aff.pod_affinity.as_ref(), aff.pod_anti_affinity.as_ref());
        Self {
            required_affinity: required(
                pa.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()),
            ),
            required_anti: required(anti.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())),
            preferred_affinity: preferred(
                pa.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()),
            ),
            preferred_anti: preferred(
                anti.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()),
            ),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti.is_empty()
    }
}

/// Does `pod` declare any inter-pod affinity or anti-affinity?
pub fn has_pod_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

/// The per-cycle counts for one incoming pod (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct AffinityState {
    terms: Terms,
    /// The incoming pod matches all of its own required affinity terms.
    matches_own_terms: bool,
    affinity: HashMap<Pair, i64>,
    anti: HashMap<Pair, i64>,
    existing_anti: HashMap<Pair, i64>,
    scores: HashMap<Pair, i64>,
}

impl AffinityState {
    /// Counts every placed pod of `cluster` against `pod`.
    pub fn new(pod: &Pod, cluster: &Cluster<'_>) -> Self {
        let terms = Terms::of(pod);
        let matches_own_terms = terms.required_affinity.iter().all(|t| t.matches(pod, cluster));
        let mut state = Self { terms, matches_own_terms, ..Self::default() };
        for (existing, node) in cluster.placed() {
            if let Some(node) = node {
                state.account(pod, existing, node, cluster, 1);
            }
        }
        state
    }

    /// Adds (`delta` 1) or removes (-1) the contribution of `existing` on `node`.
    /// Preemption uses this to see a node without its victims.
    pub fn account(&mut self, pod: &Pod, existing: &Pod, node: &Node, cluster: &Cluster<'_>, delta: i64) {
        fn bump(map: &mut HashMap<Pair, i64>, pair: Option<Pair>, by: i64) {
            if let Some(p) = pair {
                let c = map.entry(p).or_default();
                *c += by;
            }
        }
        for t in &self.terms.required_affinity {
            if t.matches(existing, cluster) {
                bump(&mut self.affinity, t.pair(node), delta);
            }
        }
        for t in &self.terms.required_anti {
            if t.matches(existing, cluster) {
                bump(&mut self.anti, t.pair(node), delta);
            }
        }
        for t in &self.terms.preferred_affinity {
            if t.matches(existing, cluster) {
                bump(&mut self.scores, t.pair(node), t.weight * delta);
            }
        }
        for t in &self.terms.preferred_anti {
            if t.matches(existing, cluster) {
                bump(&mut self.scores, t.pair(node), -t.weight * delta);
            }
        }
        if !has_pod_affinity(existing) {
            return;
        }
        // Symmetry: the placed pod's own terms about the incoming pod.
        let theirs = Terms::of(existing);
        for t in theirs.required_anti.iter().filter(|t| t.matches(pod, cluster)) {
            bump(&mut self.existing_anti, t.pair(node), delta);
        }
        for t in theirs.required_affinity.iter().chain(&theirs.preferred_affinity) {
            if t.matches(pod, cluster) {
                bump(&mut self.scores, t.pair(node), t.weight * delta);
            }
        }
        for t in theirs.preferred_anti.iter().filter(|t| t.matches(pod, cluster)) {
            bump(&mut self.scores, t.pair(node), -t.weight * delta);
        }
    }

    /// The InterPodAffinity filter for `node`.
    pub fn filter(&self, node: &Node) -> Result<(), Reason> {
        if !self.satisfies_affinity(node) {
            return Err(Reason::PodAffinityRulesNotMatch);
        }
        let blocked = |map: &HashMap<Pair, i64>, t: &Term| t.pair(node).is_some_and(|p| map.get(&p) > Some(&0));
        if self.terms.required_anti.iter().any(|t| blocked(&self.anti, t)) {
            return Err(Reason::PodAntiAffinityRulesNotMatch);
        }
        let existing = self.existing_anti.iter().any(|((k, v), c)| *c > 0 && label(node, k) == Some(v));
        if existing {
            return Err(Reason::ExistingAntiAffinityRulesNotMatch);
        }
        Ok(())
    }

    fn satisfies_affinity(&self, node: &Node) -> bool {
        let mut pods_exist = true;
        for t in &self.terms.required_affinity {
            // Every topology key must exist on the node.
            let Some(pair) = t.pair(node) else { return false };
            if self.affinity.get(&pair).copied().unwrap_or(0) <= 0 {
                pods_exist = false;
            }
        }
        // The first pod of a group with affinity to itself: nothing matches anywhere
        // yet, so it may go wherever the topology keys exist.
        pods_exist || (self.affinity.values().all(|c| *c <= 0) && self.matches_own_terms)
    }

    /// Is there anything to score? (Upstream skips the plugin otherwise.)
    pub fn scores_anything(&self) -> bool {
        self.scores.values().any(|s| *s != 0)
    }

    /// The raw (unnormalised) preference of `node`: the sum over its domains.
    pub fn raw_score(&self, node: &Node) -> i64 {
        self.scores.iter().filter(|((k, v), _)| label(node, k) == Some(v)).map(|(_, s)| *s).sum()
    }
}

/// InterPodAffinity's normalisation: the lowest raw score becomes 0 and the highest 100;
/// all equal → 0.
pub fn normalise(raw: &[i64]) -> Vec<i64> {
    let (min, max) = (raw.iter().copied().min().unwrap_or(0), raw.iter().copied().max().unwrap_or(0));
    raw.iter()
        .map(|&r| if max > min { (i128::from(r - min) * 100 / i128::from(max - min)) as i64 } else { 0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{Value, json};

    use super::super::testutil::*;
    use super::super::{Cluster, schedule_in};
    use super::*;

    const HOST: &str = "kubernetes.io/hostname";

    fn term(key: &str, labels: Value) -> Value {
        json!({"topologyKey": key, "labelSelector": {"matchLabels": labels}})
    }

    fn required(kind: &str, terms: Value) -> Value {
        json!({"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": terms}}})
    }

    fn place(p: &Pod, nodes: &[Node], placed: &[Pod]) -> Result<String, String> {
        let cluster = Cluster::new(nodes, placed);
        schedule_in(p, nodes, &cluster, 0).map(|r| r.node_name).map_err(|e| e.to_string())
    }

    #[test]
    fn required_anti_affinity_keeps_replicas_apart() {
        let nodes = zoned(&["n1", "n2", "n3"], &["a", "a", "b"]);
        let anti = required("podAntiAffinity", json!([term(HOST, json!({"app": "web"}))]));
        let web = |name: &str, node: Option<&str>| named(name, json!({"app": "web"}), node, anti.clone());
        let placed = [web("w1", Some("n1")), web("w2", Some("n3"))];
        assert_eq!(place(&web("w3", None), &nodes, &placed).unwrap(), "n2");
        let placed = [web("w1", Some("n1")), web("w2", Some("n2")), web("w3", Some("n3"))];
        assert_eq!(
            place(&web("w4", None), &nodes, &placed).unwrap_err(),
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
        );
        // Over zones: one per zone, so the third has nowhere to go.
        let zone_anti = required("podAntiAffinity", json!([term("zone", json!({"app": "web"}))]));
        let p = named("z", json!({"app": "web"}), None, zone_anti);
        assert_eq!(place(&p, &nodes, &[web("w1", Some("n1"))]).unwrap(), "n3");
    }

    #[test]
    fn required_affinity_co_locates_in_the_domain() {
        let nodes = zoned(&["n1", "n2", "n3"], &["a", "b", "b"]);
        let db = named("db", json!({"app": "db"}), Some("n2"), json!({}));
        let near = |key: &str| {
            named("p", json!({"app": "api"}), None, required("podAffinity", json!([term(key, json!({"app": "db"}))])))
        };
        assert_eq!(place(&near(HOST), &nodes, std::slice::from_ref(&db)).unwrap(), "n2");
        for tb in 0..4 {
            let cluster = Cluster::new(&nodes, [&db]);
            let r = schedule_in(&near("zone"), &nodes, &cluster, tb).unwrap();
            assert!(r.node_name == "n2" || r.node_name == "n3", "{r:?}");
        }
        // Nobody to be near (and the pod does not match its own term): unschedulable.
        assert_eq!(
            place(&near(HOST), &nodes, &[]).unwrap_err(),
            "0/3 nodes are available: 3 node(s) didn't match pod affinity rules."
        );
    }

    #[test]
    fn first_pod_of_a_self_affine_group_schedules() {
        let nodes = zoned(&["n1", "n2"], &["a", "b"]);
        let group = required("podAffinity", json!([term("zone", json!({"app": "cache"}))]));
        let first = named("c1", json!({"app": "cache"}), None, group.clone());
        assert!(place(&first, &nodes, &[]).is_ok());
        // The second follows the first.
        let placed = [named("c1", json!({"app": "cache"}), Some("n2"), group.clone())];
        for tb in 0..3 {
            let cluster = Cluster::new(&nodes, &placed);
            let second = named("c2", json!({"app": "cache"}), None, group.clone());
            assert_eq!(schedule_in(&second, &nodes, &cluster, tb).unwrap().node_name, "n2");
        }
        // Nodes without the topology key are never picked.
        let bare = [node("plain", "4", "8Gi")];
        assert_eq!(
            place(&first, &bare, &[]).unwrap_err(),
            "0/1 nodes are available: 1 node(s) didn't match pod affinity rules."
        );
    }

    #[test]
    fn an_existing_pods_anti_affinity_is_symmetric() {
        let nodes = zoned(&["n1", "n2"], &["a", "a"]);
        let loner = named(
            "loner",
            json!({"app": "loner"}),
            Some("n1"),
            required("podAntiAffinity", json!([term(HOST, json!({"app": "web"}))])),
        );
        let web = named("web", json!({"app": "web"}), None, json!({}));
        assert_eq!(place(&web, &nodes, std::slice::from_ref(&loner)).unwrap(), "n2");
        let err = place(&web, &nodes[..1], std::slice::from_ref(&loner)).unwrap_err();
        assert_eq!(err, "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules.");
        // Pods it does not select are not kept away.
        let other = named("other", json!({"app": "other"}), None, json!({}));
        assert_eq!(place(&other, &nodes[..1], &[loner]).unwrap(), "n1");
    }

    #[test]
    fn namespaces_default_to_the_pods_own() {
        let nodes = zoned(&["n1", "n2"], &["a", "a"]);
        let mut elsewhere = named("db", json!({"app": "db"}), Some("n1"), json!({}));
        elsewhere.metadata.namespace = Some("other".into());
        let anti = |extra: Value| {
            let mut t = term(HOST, json!({"app": "db"}));
            t.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            named("p", json!({}), None, required("podAntiAffinity", json!([t])))
        };
        // Default namespace only: the db in "other" does not count, both nodes fit.
        let cluster = Cluster::new(&nodes, [&elsewhere]);
        let r = schedule_in(&anti(json!({})), &nodes, &cluster, 0).unwrap();
        assert_eq!(r.feasible_nodes, 2);
        assert_eq!(
            place(&anti(json!({"namespaces": ["other"]})), &nodes, std::slice::from_ref(&elsewhere)).unwrap(),
            "n2"
        );
        assert_eq!(
            place(&anti(json!({"namespaceSelector": {}})), &nodes, std::slice::from_ref(&elsewhere)).unwrap(),
            "n2"
        );
        // A namespaceSelector reads the namespace's labels.
        let by_label = anti(json!({"namespaceSelector": {"matchLabels": {"team": "data"}}}));
        let labels = HashMap::from([("other".to_string(), BTreeMap::from([("team".to_string(), "data".to_string())]))]);
        let cluster = Cluster::new(&nodes, [&elsewhere]).with_namespace_labels(labels);
        assert_eq!(schedule_in(&by_label, &nodes, &cluster, 0).unwrap().node_name, "n2");
        let cluster = Cluster::new(&nodes, [&elsewhere]);
        assert_eq!(schedule_in(&by_label, &nodes, &cluster, 0).unwrap().feasible_nodes, 2);
    }

    #[test]
    fn match_label_keys_narrow_to_the_pods_own_values() {
        let nodes = zoned(&["n1", "n2"], &["a", "a"]);
        let mut t = term(HOST, json!({"app": "web"}));
        t["matchLabelKeys"] = json!(["rev"]);
        let anti = required("podAntiAffinity", json!([t]));
        let old = named("old", json!({"app": "web", "rev": "1"}), Some("n1"), anti.clone());
        let new = named("new", json!({"app": "web", "rev": "2"}), None, anti.clone());
        let cluster = Cluster::new(&nodes, [&old]);
        // A new revision ignores the old one's pods: both nodes are fine.
        assert_eq!(schedule_in(&new, &nodes, &cluster, 0).unwrap().feasible_nodes, 2);
        let same = named("same", json!({"app": "web", "rev": "1"}), None, anti);
        assert_eq!(place(&same, &nodes, &[old]).unwrap(), "n2");
    }

    #[test]
    fn preferred_terms_score() {
        let nodes = zoned(&["n1", "n2", "n3"], &["a", "b", "c"]);
        let cache = named("cache", json!({"app": "cache"}), Some("n3"), json!({}));
        let noisy = named("noisy", json!({"app": "noisy"}), Some("n1"), json!({}));
        let p = named(
            "p",
            json!({}),
            None,
            json!({"affinity": {
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "podAffinityTerm": term("zone", json!({"app": "cache"}))}]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": term(HOST, json!({"app": "noisy"}))}]},
            }}),
        );
        let cluster = Cluster::new(&nodes, [&cache, &noisy]);
        let r = schedule_in(&p, &nodes, &cluster, 0).unwrap();
        let by_node: HashMap<&str, i64> =
            r.scores.iter().map(|s| (s.node_name.as_str(), s.inter_pod_affinity)).collect();
        assert_eq!(by_node, HashMap::from([("n1", 0), ("n2", 66), ("n3", 100)]));
        assert_eq!(r.node_name, "n3");
        // Symmetric: a placed pod preferring this one's company pulls it over.
        let fan = named(
            "fan",
            json!({}),
            Some("n2"),
            json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term(HOST, json!({"app": "star"}))}]}}}),
        );
        let star = named("star", json!({"app": "star"}), None, json!({}));
        let cluster = Cluster::new(&nodes, [&fan]);
        assert_eq!(schedule_in(&star, &nodes, &cluster, 0).unwrap().node_name, "n2");
    }

    #[test]
    fn a_null_selector_selects_nothing() {
        let nodes = zoned(&["n1"], &["a"]);
        let anti = required("podAntiAffinity", json!([{"topologyKey": HOST}]));
        let p = named("p", json!({"app": "x"}), None, anti.clone());
        assert_eq!(place(&p, &nodes, &[named("q", json!({"app": "x"}), Some("n1"), anti)]).unwrap(), "n1");
    }
}
