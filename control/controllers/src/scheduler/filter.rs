//! Filters: may this pod run on this node at all? Each check mirrors a kube-scheduler
//! filter plugin and reports failures with that plugin's wording, because people paste
//! these messages into searches and compare them with upstream docs.
//!
//! Checks run in kube-scheduler's order (NodeUnschedulable, TaintToleration,
//! NodeAffinity, NodeResourcesFit) and a node's verdict is the first failing check, so
//! the "0/N nodes are available" summary counts each node once per failing check like
//! upstream does.
//!
//! Node conditions are turned into the taints Kubernetes' node lifecycle controller
//! would put on the node (`node.kubernetes.io/not-ready` etc., see
//! [`effective_taints`]) instead of being a separate check: that is how upstream
//! expresses "Ready" to the scheduler, and it lets pods that must run before a node is
//! Ready (CNI daemons tolerating everything) still be placed.
//!
//! Pure code: no I/O, no logging.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration};

use super::quantity;
use super::resources::{NodeUsage, PodRequests};

pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Why a node was filtered out. `Display` is kube-scheduler's wording.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// `spec.unschedulable` (cordoned) and not tolerated.
    Unschedulable,
    /// The first NoSchedule/NoExecute taint the pod does not tolerate.
    UntoleratedTaint {
        key: String,
        value: String,
    },
    /// `spec.nodeSelector` or required node affinity does not match.
    NodeAffinity,
    InsufficientCpu,
    InsufficientMemory,
    TooManyPods,
    /// The node's `status.allocatable.<resource>` cannot be parsed (Skiff's wording;
    /// upstream cannot hit this because the API server validates quantities).
    InvalidAllocatable {
        resource: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Reason::InsufficientCpu => f.write_str("Insufficient cpu"),
            Reason::InsufficientMemory => f.write_str("Insufficient memory"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::InvalidAllocatable { resource } => {
                write!(f, "node(s) had invalid status.allocatable.{resource}")
            }
        }
    }
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or(&[])
}

/// Does `toleration` tolerate `taint`? Kubernetes' rule: an empty toleration effect
/// matches every effect; operator Exists with an empty key matches every taint;
/// operator Equal (the default) needs the same key and value (absent value = "").
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        // Validation forbids Equal with an empty key, so we do not treat it as a wildcard.
        "Equal" | "" => {
            key == taint.key && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

fn condition_taint(key: &str) -> Taint {
    Taint { key: key.to_string(), effect: "NoSchedule".to_string(), ..Taint::default() }
}

/// The node's taints plus those implied by its conditions: Ready False or missing →
/// `not-ready`, Ready Unknown → `unreachable`, NetworkUnavailable True →
/// `network-unavailable` (all NoSchedule). A real node lifecycle controller would add
/// the same taints; when the node already carries one with that key it is not doubled.
pub fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints: Vec<Taint> = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
    let status_of = |type_: &str| conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.as_str());
    let mut implied = Vec::new();
    match status_of("Ready") {
        Some("True") => {}
        Some("Unknown") => implied.push(TAINT_UNREACHABLE),
        _ => implied.push(TAINT_NOT_READY),
    }
    if status_of("NetworkUnavailable") == Some("True") {
        implied.push(TAINT_NETWORK_UNAVAILABLE);
    }
    for key in implied {
        if !taints.iter().any(|t| t.key == key) {
            taints.push(condition_taint(key));
        }
    }
    taints
}

/// NodeUnschedulable: a cordoned node takes only pods tolerating
/// `node.kubernetes.io/unschedulable:NoSchedule`.
pub fn check_unschedulable(pod: &Pod, node: &Node) -> Result<(), Reason> {
    let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    if cordoned && !tolerated(tolerations(pod), &condition_taint(TAINT_UNSCHEDULABLE)) {
        return Err(Reason::Unschedulable);
    }
    Ok(())
}

/// TaintToleration: every NoSchedule/NoExecute taint must be tolerated. PreferNoSchedule
/// only lowers the score (see `score`).
pub fn check_taints(pod: &Pod, node: &Node) -> Result<(), Reason> {
    let tolerations = tolerations(pod);
    let untolerated = effective_taints(node)
        .into_iter()
        .find(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !tolerated(tolerations, t));
    match untolerated {
        Some(t) => Err(Reason::UntoleratedTaint { key: t.key, value: t.value.unwrap_or_default() }),
        None => Ok(()),
    }
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    let contains = |v: &str| values.iter().any(|x| x == v);
    // Gt/Lt compare integers; anything unparsable (label or operand) does not match.
    let compare = |ordering: std::cmp::Ordering| {
        let [operand] = values else { return false };
        match (value.and_then(|v| v.parse::<i64>().ok()), operand.parse::<i64>().ok()) {
            (Some(v), Some(o)) => v.cmp(&o) == ordering,
            _ => false,
        }
    };
    match req.operator.as_str() {
        "In" => value.is_some_and(contains),
        "NotIn" => !value.is_some_and(contains),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        // Unknown operators are rejected by validation; never match rather than guess.
        _ => false,
    }
}

/// Does one node selector term match? Expressions (labels) and fields are ANDed. A term
/// with neither matches nothing, as in Kubernetes. The only field is `metadata.name`,
/// with operators In and NotIn.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    let labels_ok =
        expressions.iter().all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)));
    let fields_ok = fields.iter().all(|r| {
        r.key == "metadata.name"
            && matches!(r.operator.as_str(), "In" | "NotIn")
            && requirement_matches(r, Some(node_name(node)))
    });
    labels_ok && fields_ok
}

fn node_selector_matches(selector: &BTreeMap<String, String>, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// NodeAffinity: `spec.nodeSelector` (all labels equal) and required node affinity
/// (terms ORed; an empty term list matches no node).
pub fn check_node_affinity(pod: &Pod, node: &Node) -> Result<(), Reason> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    if let Some(selector) = spec.node_selector.as_ref()
        && !node_selector_matches(selector, node)
    {
        return Err(Reason::NodeAffinity);
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    if let Some(required) = required
        && !required.node_selector_terms.iter().any(|t| term_matches(t, node))
    {
        return Err(Reason::NodeAffinity);
    }
    Ok(())
}

/// Allocatable cpu (milli), memory (bytes) and pod count of a node. A missing entry is
/// 0, which makes the node unable to take pods: a node that reports nothing has not
/// finished registering.
pub fn allocatable(node: &Node) -> Result<(i64, i64, i64), Reason> {
    let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let get = |name: &str, parse: fn(&str) -> quantity::Result<i64>| match alloc.and_then(|a| a.get(name)) {
        None => Ok(0),
        Some(q) => parse(&q.0).map_err(|_| Reason::InvalidAllocatable { resource: name.to_string() }),
    };
    Ok((get("cpu", quantity::parse_milli)?, get("memory", quantity::parse_value)?, get("pods", quantity::parse_value)?))
}

/// NodeResourcesFit: the pod's requests plus what is already on the node must fit in
/// allocatable. As upstream, a resource the pod does not request is not checked (an
/// overcommitted node still takes request-less pods), and every shortfall is reported.
pub fn check_resources(requests: &PodRequests, node: &Node, usage: &NodeUsage) -> Result<(), Vec<Reason>> {
    let (cpu, memory, pods) = allocatable(node).map_err(|r| vec![r])?;
    let want = requests.requested;
    let used = usage.requested.requested;
    let mut reasons = Vec::new();
    if usage.pod_count + 1 > pods {
        reasons.push(Reason::TooManyPods);
    }
    if want.milli_cpu > 0 && want.milli_cpu > cpu.saturating_sub(used.milli_cpu) {
        reasons.push(Reason::InsufficientCpu);
    }
    if want.memory > 0 && want.memory > memory.saturating_sub(used.memory) {
        reasons.push(Reason::InsufficientMemory);
    }
    if reasons.is_empty() { Ok(()) } else { Err(reasons) }
}

/// Runs every check in order and returns the first failure's reasons.
pub fn filter(pod: &Pod, requests: &PodRequests, node: &Node, usage: &NodeUsage) -> Result<(), Vec<Reason>> {
    check_unschedulable(pod, node).map_err(|r| vec![r])?;
    check_taints(pod, node).map_err(|r| vec![r])?;
    check_node_affinity(pod, node).map_err(|r| vec![r])?;
    check_resources(requests, node, usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::resources::pod_requests;
    use crate::scheduler::testutil::*;
    use serde_json::{Value, json};

    fn with_tolerations(tolerations: Value) -> Pod {
        pod(json!({"containers": [ctr("c", json!(null))], "tolerations": tolerations}))
    }

    fn toleration(v: Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    fn taint(v: Value) -> Taint {
        serde_json::from_value(v).unwrap()
    }

    fn with_node_affinity(terms: Value) -> Pod {
        pod(json!({
            "containers": [ctr("c", json!(null))],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": terms,
            }}},
        }))
    }

    fn set_conditions(node: &mut Node, conditions: Value) {
        node.status.as_mut().unwrap().conditions = Some(serde_json::from_value(conditions).unwrap());
    }

    #[test]
    fn ready_node_has_no_implied_taints() {
        assert!(effective_taints(&node("a", "1", "1Gi")).is_empty());
        assert_eq!(check_taints(&pod_req("1", "1"), &node("a", "1", "1Gi")), Ok(()));
    }

    #[test]
    fn not_ready_unknown_and_missing_ready_are_taints() {
        let p = pod_req("1", "1");
        let mut n = node("a", "1", "1Gi");
        for (conditions, key) in [
            (json!([{"type": "Ready", "status": "False"}]), TAINT_NOT_READY),
            (json!([]), TAINT_NOT_READY),
            (json!([{"type": "Ready", "status": "Unknown"}]), TAINT_UNREACHABLE),
            (
                json!([{"type": "Ready", "status": "True"}, {"type": "NetworkUnavailable", "status": "True"}]),
                TAINT_NETWORK_UNAVAILABLE,
            ),
        ] {
            set_conditions(&mut n, conditions);
            assert_eq!(
                check_taints(&p, &n),
                Err(Reason::UntoleratedTaint { key: key.to_string(), value: String::new() })
            );
        }
        set_conditions(
            &mut n,
            json!([{"type": "Ready", "status": "True"}, {"type": "NetworkUnavailable", "status": "False"}]),
        );
        assert_eq!(check_taints(&p, &n), Ok(()));
    }

    #[test]
    fn not_ready_is_tolerable_and_not_doubled() {
        let mut n = tainted("a", json!([{"key": TAINT_NOT_READY, "effect": "NoExecute"}]));
        set_conditions(&mut n, json!([{"type": "Ready", "status": "False"}]));
        assert_eq!(effective_taints(&n).len(), 1);
        let cni = with_tolerations(json!([{"operator": "Exists"}]));
        assert_eq!(check_taints(&cni, &n), Ok(()));
    }

    #[test]
    fn cordoned_node_filters_unless_tolerated() {
        let n = node_with("a", "1", "1Gi", json!({}), json!({"unschedulable": true}));
        assert_eq!(check_unschedulable(&pod_req("1", "1"), &n), Err(Reason::Unschedulable));
        let ds = with_tolerations(json!([{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"}]));
        assert_eq!(check_unschedulable(&ds, &n), Ok(()));
        let wrong_effect =
            with_tolerations(json!([{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoExecute"}]));
        assert_eq!(check_unschedulable(&wrong_effect, &n), Err(Reason::Unschedulable));
        assert_eq!(check_unschedulable(&pod_req("1", "1"), &node("b", "1", "1Gi")), Ok(()));
    }

    #[test]
    fn toleration_rules() {
        let t = taint(json!({"key": "k", "value": "v", "effect": "NoSchedule"}));
        let no_value = taint(json!({"key": "k", "effect": "NoSchedule"}));
        let cases = [
            (json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}), &t, true),
            (json!({"key": "k", "value": "v"}), &t, true),
            (json!({"key": "k", "value": "other"}), &t, false),
            (json!({"key": "k"}), &t, false),
            (json!({"key": "k"}), &no_value, true),
            (json!({"key": "k", "operator": "Exists"}), &t, true),
            (json!({"key": "other", "operator": "Exists"}), &t, false),
            (json!({"operator": "Exists"}), &t, true),
            (json!({"operator": "Exists", "effect": "NoExecute"}), &t, false),
            (json!({"key": "k", "operator": "Exists", "effect": ""}), &t, true),
            (json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"}), &t, true),
            (json!({"key": "k", "operator": "Exists", "effect": "PreferNoSchedule"}), &t, false),
            (json!({"value": "v"}), &t, false),
            (json!({"key": "k", "operator": "Bogus"}), &t, false),
        ];
        for (tol, taint, want) in cases {
            assert_eq!(tolerates(&toleration(tol.clone()), taint), want, "{tol}");
        }
    }

    #[test]
    fn taint_effects() {
        let p = pod_req("1", "1");
        let n = tainted("a", json!([{"key": "soft", "effect": "PreferNoSchedule"}]));
        assert_eq!(check_taints(&p, &n), Ok(()));
        let n = tainted("a", json!([{"key": "evict", "value": "x", "effect": "NoExecute"}]));
        assert_eq!(check_taints(&p, &n), Err(Reason::UntoleratedTaint { key: "evict".into(), value: "x".into() }));
        // The first untolerated taint is reported.
        let n = tainted(
            "a",
            json!([
                {"key": "ok", "effect": "NoSchedule"},
                {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                {"key": "later", "effect": "NoSchedule"},
            ]),
        );
        let p = with_tolerations(json!([{"key": "ok", "operator": "Exists"}]));
        let err = check_taints(&p, &n).unwrap_err();
        assert_eq!(err.to_string(), "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }");
    }

    #[test]
    fn node_selector() {
        let n = labelled("a", json!({"disk": "ssd", "zone": "z1"}));
        let want = |sel: Value| {
            let p = pod(json!({"containers": [ctr("c", json!(null))], "nodeSelector": sel}));
            check_node_affinity(&p, &n)
        };
        assert_eq!(want(json!({"disk": "ssd"})), Ok(()));
        assert_eq!(want(json!({"disk": "ssd", "zone": "z1"})), Ok(()));
        assert_eq!(want(json!({})), Ok(()));
        assert_eq!(want(json!({"disk": "hdd"})), Err(Reason::NodeAffinity));
        assert_eq!(want(json!({"gpu": "yes"})), Err(Reason::NodeAffinity));
        assert_eq!(Reason::NodeAffinity.to_string(), "node(s) didn't match Pod's node affinity/selector");
    }

    #[test]
    fn required_affinity_operators() {
        let n = labelled("a", json!({"zone": "z1", "cores": "8"}));
        let expr = |key: &str, op: &str, values: Value| {
            let p = with_node_affinity(json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]));
            check_node_affinity(&p, &n).is_ok()
        };
        assert!(expr("zone", "In", json!(["z0", "z1"])));
        assert!(!expr("zone", "In", json!(["z2"])));
        assert!(!expr("missing", "In", json!(["z1"])));
        assert!(expr("zone", "NotIn", json!(["z2"])));
        assert!(!expr("zone", "NotIn", json!(["z1"])));
        assert!(expr("missing", "NotIn", json!(["z1"])));
        assert!(expr("zone", "Exists", json!(null)));
        assert!(!expr("missing", "Exists", json!(null)));
        assert!(expr("missing", "DoesNotExist", json!(null)));
        assert!(!expr("zone", "DoesNotExist", json!(null)));
        assert!(expr("cores", "Gt", json!(["4"])));
        assert!(!expr("cores", "Gt", json!(["8"])));
        assert!(expr("cores", "Lt", json!(["16"])));
        assert!(!expr("cores", "Lt", json!(["8"])));
        assert!(!expr("zone", "Gt", json!(["1"])));
        assert!(!expr("cores", "Gt", json!(["1", "2"])));
        assert!(!expr("missing", "Lt", json!(["100"])));
        assert!(!expr("zone", "Matches", json!(["z1"])));
    }

    #[test]
    fn required_affinity_terms_ored_expressions_anded() {
        let n = labelled("a", json!({"zone": "z1", "disk": "ssd"}));
        let check = |terms: Value| check_node_affinity(&with_node_affinity(terms), &n).is_ok();
        let zone = |z: &str| json!({"key": "zone", "operator": "In", "values": [z]});
        let disk = |d: &str| json!({"key": "disk", "operator": "In", "values": [d]});
        assert!(check(json!([{"matchExpressions": [zone("z1"), disk("ssd")]}])));
        assert!(!check(json!([{"matchExpressions": [zone("z1"), disk("hdd")]}])));
        assert!(check(json!([{"matchExpressions": [zone("z9")]}, {"matchExpressions": [disk("ssd")]}])));
        assert!(!check(json!([{"matchExpressions": [zone("z9")]}, {"matchExpressions": [disk("hdd")]}])));
        // Empty terms match nothing.
        assert!(!check(json!([])));
        assert!(!check(json!([{}])));
        assert!(!check(json!([{"matchExpressions": []}])));
    }

    #[test]
    fn required_affinity_match_fields() {
        let n = labelled("node-1", json!({}));
        let check = |terms: Value| check_node_affinity(&with_node_affinity(terms), &n).is_ok();
        let field =
            |op: &str, v: &str| json!([{"matchFields": [{"key": "metadata.name", "operator": op, "values": [v]}]}]);
        assert!(check(field("In", "node-1")));
        assert!(!check(field("In", "node-2")));
        assert!(check(field("NotIn", "node-2")));
        assert!(!check(field("NotIn", "node-1")));
        assert!(!check(field("Exists", "node-1")));
        assert!(!check(json!([{"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["node-1"]}]}])));
        // Fields and expressions in one term are ANDed.
        assert!(!check(json!([{
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}],
            "matchExpressions": [{"key": "zone", "operator": "Exists"}],
        }])));
    }

    #[test]
    fn node_selector_and_affinity_both_apply() {
        let n = labelled("a", json!({"zone": "z1"}));
        let mut p = with_node_affinity(json!([{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}]));
        assert_eq!(check_node_affinity(&p, &n), Ok(()));
        p.spec.as_mut().unwrap().node_selector = Some([("zone".to_string(), "z2".to_string())].into());
        assert_eq!(check_node_affinity(&p, &n), Err(Reason::NodeAffinity));
    }

    #[test]
    fn resource_fit_counts_assigned_pods() {
        let n = node("a", "2", "4Gi");
        let mut usage = NodeUsage::default();
        let fits = |p: &Pod, usage: &NodeUsage| check_resources(&pod_requests(p).unwrap(), &n, usage);
        assert_eq!(fits(&pod_req("2", "4Gi"), &usage), Ok(()));
        assert_eq!(fits(&pod_req("2100m", "1Gi"), &usage), Err(vec![Reason::InsufficientCpu]));
        assert_eq!(fits(&pod_req("1", "5Gi"), &usage), Err(vec![Reason::InsufficientMemory]));
        usage.add_pod(&pod_req("1500m", "3Gi"));
        assert_eq!(fits(&pod_req("500m", "1Gi"), &usage), Ok(()));
        assert_eq!(
            fits(&pod_req("600m", "1100Mi"), &usage),
            Err(vec![Reason::InsufficientCpu, Reason::InsufficientMemory])
        );
    }

    #[test]
    fn resource_fit_ignores_unrequested_resources_but_not_pod_count() {
        let mut n = node("a", "1", "1Gi");
        let mut usage = NodeUsage::default();
        usage.add_pod(&pod_req("3", "3Gi"));
        let none = pod(json!({"containers": [ctr("c", json!(null))]}));
        assert_eq!(check_resources(&pod_requests(&none).unwrap(), &n, &usage), Ok(()));
        n.status
            .as_mut()
            .unwrap()
            .allocatable
            .as_mut()
            .unwrap()
            .insert("pods".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()));
        assert_eq!(check_resources(&pod_requests(&none).unwrap(), &n, &usage), Err(vec![Reason::TooManyPods]));
        assert_eq!(Reason::TooManyPods.to_string(), "Too many pods");
        assert_eq!(Reason::InsufficientCpu.to_string(), "Insufficient cpu");
        assert_eq!(Reason::InsufficientMemory.to_string(), "Insufficient memory");
    }

    #[test]
    fn resource_fit_with_missing_or_bad_allocatable() {
        let mut n = node("a", "1", "1Gi");
        n.status.as_mut().unwrap().allocatable = None;
        let req = pod_requests(&pod_req("1m", "1")).unwrap();
        assert_eq!(
            check_resources(&req, &n, &NodeUsage::default()),
            Err(vec![Reason::TooManyPods, Reason::InsufficientCpu, Reason::InsufficientMemory])
        );
        let n = node("a", "lots", "1Gi");
        assert_eq!(
            check_resources(&req, &n, &NodeUsage::default()),
            Err(vec![Reason::InvalidAllocatable { resource: "cpu".into() }])
        );
    }

    #[test]
    fn filter_reports_first_failing_check_only() {
        let n = node_with(
            "a",
            "1",
            "1Gi",
            json!({}),
            json!({"unschedulable": true, "taints": [{"key": "x", "effect": "NoSchedule"}]}),
        );
        let p = pod_req("8", "1Gi");
        let req = pod_requests(&p).unwrap();
        assert_eq!(filter(&p, &req, &n, &NodeUsage::default()), Err(vec![Reason::Unschedulable]));
        let n = tainted("a", json!([{"key": "x", "effect": "NoSchedule"}]));
        assert_eq!(
            filter(&p, &req, &n, &NodeUsage::default()),
            Err(vec![Reason::UntoleratedTaint { key: "x".into(), value: String::new() }])
        );
        assert_eq!(filter(&p, &req, &node("a", "1", "1Gi"), &NodeUsage::default()), Err(vec![Reason::InsufficientCpu]));
    }
}
