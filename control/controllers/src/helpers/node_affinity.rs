//! Which nodes a pod may run on by its `nodeSelector` and required node affinity, with
//! upstream's rules (`k8s.io/component-helpers/scheduling/corev1/nodeaffinity`), used by
//! the scheduler's NodeAffinity filter and score and by the DaemonSet controller.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

/// Does one label requirement hold for the node's label `value` (`None` = absent)? A
/// requirement upstream would reject (In/NotIn without values, Exists/DoesNotExist
/// with values, Gt/Lt without exactly one integer, an unknown operator) matches nothing.
pub fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    let contains = |v: &str| values.iter().any(|x| x == v);
    let compare = |ordering: std::cmp::Ordering| {
        let [operand] = values else { return false };
        match (value.and_then(|v| v.parse::<i64>().ok()), operand.parse::<i64>().ok()) {
            (Some(v), Some(o)) => v.cmp(&o) == ordering,
            _ => false,
        }
    };
    match req.operator.as_str() {
        "In" => !values.is_empty() && value.is_some_and(contains),
        "NotIn" => !values.is_empty() && !value.is_some_and(contains),
        "Exists" => values.is_empty() && value.is_some(),
        "DoesNotExist" => values.is_empty() && value.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        _ => false,
    }
}

/// Does one field requirement hold? The only node field is `metadata.name`; the
/// operators are In and NotIn with exactly one value.
fn field_matches(req: &NodeSelectorRequirement, node: &Node) -> bool {
    let value = (req.key == "metadata.name").then(|| node.metadata.name.as_deref().unwrap_or(""));
    let [want] = req.values.as_deref().unwrap_or(&[]) else { return false };
    match req.operator.as_str() {
        "In" => value == Some(want.as_str()),
        "NotIn" => value != Some(want.as_str()),
        _ => false,
    }
}

/// Does one node selector term match? Expressions (labels) and fields are ANDed; a term
/// with neither matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    expressions.iter().all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| field_matches(r, node))
}

/// Does the node carry every label of a `nodeSelector`?
pub fn node_selector_matches(selector: &BTreeMap<String, String>, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// May a pod with `spec` run on `node`: its `nodeSelector` matches and, if it has
/// required node affinity, one of its terms does (an empty term list matches no node).
pub fn required_matches(spec: &PodSpec, node: &Node) -> bool {
    let selector_ok = spec.node_selector.as_ref().is_none_or(|s| node_selector_matches(s, node));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    selector_ok && required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn node(name: &str, labels: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn spec(v: Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    fn with_terms(terms: Value) -> PodSpec {
        spec(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}))
    }

    #[test]
    fn node_selector() {
        let n = node("a", json!({"disk": "ssd", "zone": "z1"}));
        let fits = |sel: Value| required_matches(&spec(json!({"containers": [], "nodeSelector": sel})), &n);
        assert!(fits(json!({"disk": "ssd"})));
        assert!(fits(json!({"disk": "ssd", "zone": "z1"})));
        assert!(fits(json!({})));
        assert!(!fits(json!({"disk": "hdd"})));
        assert!(!fits(json!({"gpu": "yes"})));
    }

    #[test]
    fn operators() {
        let n = node("a", json!({"zone": "z1", "cores": "8"}));
        let expr = |key: &str, op: &str, values: Value| {
            required_matches(
                &with_terms(json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}])),
                &n,
            )
        };
        assert!(expr("zone", "In", json!(["z0", "z1"])));
        assert!(!expr("zone", "In", json!(["z2"])));
        assert!(!expr("missing", "In", json!(["z1"])));
        assert!(!expr("zone", "In", json!([])));
        assert!(expr("zone", "NotIn", json!(["z2"])));
        assert!(!expr("zone", "NotIn", json!(["z1"])));
        assert!(expr("missing", "NotIn", json!(["z1"])));
        assert!(!expr("missing", "NotIn", json!([])));
        assert!(expr("zone", "Exists", json!(null)));
        assert!(!expr("missing", "Exists", json!(null)));
        assert!(!expr("zone", "Exists", json!(["z1"])));
        assert!(expr("missing", "DoesNotExist", json!(null)));
        assert!(!expr("zone", "DoesNotExist", json!(null)));
        assert!(expr("cores", "Gt", json!(["4"])));
        assert!(!expr("cores", "Gt", json!(["8"])));
        assert!(expr("cores", "Lt", json!(["16"])));
        assert!(!expr("cores", "Lt", json!(["8"])));
        assert!(!expr("zone", "Gt", json!(["1"])));
        assert!(!expr("cores", "Gt", json!(["1", "2"])));
        assert!(!expr("cores", "Gt", json!([])));
        assert!(!expr("missing", "Lt", json!(["100"])));
        assert!(!expr("zone", "Matches", json!(["z1"])));
    }

    #[test]
    fn terms_ored_expressions_anded() {
        let n = node("a", json!({"zone": "z1", "disk": "ssd"}));
        let check = |terms: Value| required_matches(&with_terms(terms), &n);
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
    fn match_fields() {
        let n = node("node-1", json!({}));
        let check = |terms: Value| required_matches(&with_terms(terms), &n);
        let field =
            |op: &str, v: &str| json!([{"matchFields": [{"key": "metadata.name", "operator": op, "values": [v]}]}]);
        assert!(check(field("In", "node-1")));
        assert!(!check(field("In", "node-2")));
        assert!(check(field("NotIn", "node-2")));
        assert!(!check(field("NotIn", "node-1")));
        assert!(!check(field("Exists", "node-1")));
        assert!(!check(json!([{"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["node-1"]}]}])));
        assert!(!check(
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1", "x"]}]}])
        ));
        // Fields and expressions in one term are ANDed.
        assert!(!check(json!([{
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}],
            "matchExpressions": [{"key": "zone", "operator": "Exists"}],
        }])));
    }

    #[test]
    fn selector_and_affinity_both_apply() {
        let n = node("a", json!({"zone": "z1"}));
        let mut s = with_terms(json!([{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}]));
        assert!(required_matches(&s, &n));
        s.node_selector = Some([("zone".to_string(), "z2".to_string())].into());
        assert!(!required_matches(&s, &n));
    }
}
