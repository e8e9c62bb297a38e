//! What one scheduling cycle sees of the cluster: every node by name, the pods already
//! placed on each node, what they request, and the labels of namespaces (for affinity
//! terms with a `namespaceSelector`).
//!
//! Built once per cycle from the caller's caches, then only read by the filters and
//! scores; preemption works on copies of single entries. Pure data: no I/O.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod};

use super::resources::{NodeUsage, is_terminal};

/// A snapshot of nodes and placed pods for one scheduling decision.
#[derive(Debug, Clone, Default)]
pub struct Cluster<'a> {
    /// Every node, sorted by name so that iteration is deterministic.
    nodes: Vec<&'a Node>,
    by_name: HashMap<&'a str, &'a Node>,
    pods: HashMap<&'a str, Vec<&'a Pod>>,
    usage: HashMap<String, NodeUsage>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
}

fn node_name_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

impl<'a> Cluster<'a> {
    /// `nodes` are all nodes; `pods` any pods (unbound and terminal ones are skipped:
    /// they hold nothing on a node). The pod being scheduled must not be among them.
    pub fn new(nodes: &'a [Node], pods: impl IntoIterator<Item = &'a Pod>) -> Self {
        let mut c = Self::with_nodes(nodes);
        for pod in pods {
            let Some(node) = node_name_of(pod) else { continue };
            if is_terminal(pod) {
                continue;
            }
            c.pods.entry(node).or_default().push(pod);
            c.usage.entry(node.to_string()).or_default().add_pod(pod);
        }
        c
    }

    /// Nodes with the given usage and no pod objects (for callers that only track
    /// resources; inter-pod rules then see no pods).
    pub fn from_usage(nodes: &'a [Node], usage: HashMap<String, NodeUsage>) -> Self {
        Self { usage, ..Self::with_nodes(nodes) }
    }

    fn with_nodes(nodes: &'a [Node]) -> Self {
        let mut list: Vec<&Node> = nodes.iter().collect();
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let by_name = list.iter().map(|n| (n.metadata.name.as_deref().unwrap_or(""), *n)).collect();
        Self { nodes: list, by_name, ..Self::default() }
    }

    /// Labels of each namespace, for `namespaceSelector`s. Without them a selector only
    /// matches when it is empty.
    pub fn with_namespace_labels(mut self, labels: HashMap<String, BTreeMap<String, String>>) -> Self {
        self.namespaces = labels;
        self
    }

    /// Reserves `pod`'s requests on `node` without placing it: a preemptor nominated
    /// there keeps pods of lower priority from taking the room its victims free.
    pub fn reserve(&mut self, pod: &Pod, node: &str) {
        self.usage.entry(node.to_string()).or_default().add_pod(pod);
    }

    pub fn nodes(&self) -> &[&'a Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&'a Node> {
        self.by_name.get(name).copied()
    }

    /// Non-terminal pods bound to `node`.
    pub fn pods_on(&self, node: &str) -> &[&'a Pod] {
        self.pods.get(node).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every placed pod with its node (which may be unknown).
    pub fn placed(&self) -> impl Iterator<Item = (&'a Pod, Option<&'a Node>)> + '_ {
        self.pods.iter().flat_map(move |(n, pods)| pods.iter().map(move |p| (*p, self.node(n))))
    }

    pub fn usage(&self, node: &str) -> &NodeUsage {
        static EMPTY: std::sync::LazyLock<NodeUsage> = std::sync::LazyLock::new(NodeUsage::default);
        self.usage.get(node).unwrap_or(&EMPTY)
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(ns)
    }
}

/// The name of a node ("" when missing).
pub fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

/// The value of label `key` on `node`.
pub fn label<'n>(node: &'n Node, key: &str) -> Option<&'n str> {
    node.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{ScheduleError, schedule_in};
    use super::*;
    use serde_json::json;

    #[test]
    fn reserved_room_is_not_given_away_and_unbound_or_finished_pods_hold_none() {
        let nodes = [node("n1", "2", "8Gi")];
        let mut done = named("done", json!({}), Some("n1"), json!({}));
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        let pending = named("pending", json!({}), None, json!({}));
        let mut cluster = Cluster::new(&nodes, [&done, &pending]);
        assert!(cluster.pods_on("n1").is_empty());
        assert!(schedule_in(&pod_req("2", "1Gi"), &nodes, &cluster, 0).is_ok());
        cluster.reserve(&pod_req("1", "1Gi"), "n1");
        let err = schedule_in(&pod_req("2", "1Gi"), &nodes, &cluster, 0).unwrap_err();
        assert!(matches!(err, ScheduleError::Unschedulable(_)), "{err}");
    }
}
