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

use std::fmt;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};

use super::quantity;
use super::resources::{NodeUsage, PodRequests};
use crate::helpers::node_affinity;
use crate::helpers::taints::tolerated;

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
    /// A bound volume of the pod cannot be reached from the node (its nodeAffinity).
    VolumeNodeAffinityConflict,
    /// A claim waiting for its first consumer has no volume or provisioner for the node.
    VolumeBindConflict,
    /// The node's `status.allocatable.<resource>` cannot be parsed (Skiff's wording;
    /// upstream cannot hit this because the API server validates quantities).
    InvalidAllocatable {
        resource: String,
    },
    /// Required pod affinity has no matching pod in the node's domain.
    PodAffinityRulesNotMatch,
    /// Required pod anti-affinity: a matching pod is in the node's domain.
    PodAntiAffinityRulesNotMatch,
    /// A pod in the node's domain has required anti-affinity against this pod.
    ExistingAntiAffinityRulesNotMatch,
    /// A DoNotSchedule topology spread constraint would exceed its maxSkew.
    TopologySpreadNotMatch,
    /// The node lacks a topology key of a DoNotSchedule constraint.
    TopologySpreadMissingLabel,
    /// Preemption: the node fails for a reason evicting pods cannot change.
    PreemptionNotHelpful,
    /// Preemption: even without every lower-priority pod the pod does not fit.
    NoPreemptionVictims,
}

impl Reason {
    /// Could evicting pods from the node remove this reason? (Upstream's Unschedulable
    /// as opposed to UnschedulableAndUnresolvable.)
    pub fn resolvable_by_preemption(&self) -> bool {
        matches!(
            self,
            Reason::InsufficientCpu
                | Reason::InsufficientMemory
                | Reason::TooManyPods
                | Reason::PodAntiAffinityRulesNotMatch
                | Reason::ExistingAntiAffinityRulesNotMatch
                | Reason::TopologySpreadNotMatch
        )
    }
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
            Reason::VolumeNodeAffinityConflict => f.write_str("node(s) had volume node affinity conflict"),
            Reason::VolumeBindConflict => f.write_str("node(s) didn't find available persistent volumes to bind"),
            Reason::InvalidAllocatable { resource } => {
                write!(f, "node(s) had invalid status.allocatable.{resource}")
            }
            Reason::PodAffinityRulesNotMatch => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinityRulesNotMatch => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinityRulesNotMatch => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
            Reason::TopologySpreadNotMatch => f.write_str("node(s) didn't match pod topology spread constraints"),
            Reason::TopologySpreadMissingLabel => {
                f.write_str("node(s) didn't match pod topology spread constraints (missing required label)")
            }
            Reason::PreemptionNotHelpful => f.write_str("Preemption is not helpful for scheduling"),
            Reason::NoPreemptionVictims => f.write_str("No preemption victims found for incoming pod"),
        }
    }
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or(&[])
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

/// NodeAffinity: `spec.nodeSelector` (all labels equal) and required node affinity
/// (terms ORed; an empty term list matches no node).
pub fn check_node_affinity(pod: &Pod, node: &Node) -> Result<(), Reason> {
    match pod.spec.as_ref() {
        Some(spec) if !node_affinity::required_matches(spec, node) => Err(Reason::NodeAffinity),
        _ => Ok(()),
    }
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
    fn required_affinity_filters() {
        // The matching rules are tested in `helpers::node_affinity`; this checks the
        // filter applies them.
        let n = labelled("a", json!({"zone": "z1"}));
        let zone = |op: &str| with_node_affinity(json!([{"matchExpressions": [{"key": "zone", "operator": op}]}]));
        assert_eq!(check_node_affinity(&zone("Exists"), &n), Ok(()));
        assert_eq!(check_node_affinity(&zone("DoesNotExist"), &n), Err(Reason::NodeAffinity));
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
