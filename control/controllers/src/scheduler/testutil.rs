//! Test fixtures: Pods and Nodes built from `serde_json::json!`, so tests read like the
//! YAML a person would write.

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

/// A container named `name` with the given `requests` map (`null` for none).
pub fn ctr(name: &str, requests: Value) -> Value {
    if requests.is_null() {
        json!({"name": name, "image": "busybox"})
    } else {
        json!({"name": name, "image": "busybox", "resources": {"requests": requests}})
    }
}

/// A pod named "p" (uid "uid-p") with the given spec.
pub fn pod(spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "uid-p"},
        "spec": spec,
    }))
    .unwrap()
}

/// A pod with one container requesting `cpu` and `memory`.
pub fn pod_req(cpu: &str, memory: &str) -> Pod {
    pod(json!({"containers": [ctr("c", json!({"cpu": cpu, "memory": memory}))]}))
}

/// A Ready node with the given allocatable cpu/memory, room for 110 pods, no labels.
pub fn node(name: &str, cpu: &str, memory: &str) -> Node {
    node_with(name, cpu, memory, json!({}), json!({}))
}

/// Like [`node`], with extra `metadata` fields (e.g. labels) and `spec`.
pub fn node_with(name: &str, cpu: &str, memory: &str, metadata: Value, spec: Value) -> Node {
    let mut meta = json!({"name": name, "labels": {"kubernetes.io/hostname": name}});
    if let (Some(m), Some(extra)) = (meta.as_object_mut(), metadata.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "metadata": meta,
        "spec": spec,
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .unwrap()
}

/// `node` with its `spec.taints` set.
pub fn tainted(name: &str, taints: Value) -> Node {
    node_with(name, "4", "8Gi", json!({}), json!({"taints": taints}))
}

/// `node` with `metadata.labels` set (hostname label kept out for clarity).
pub fn labelled(name: &str, labels: Value) -> Node {
    node_with(name, "4", "8Gi", json!({"labels": labels}), json!({}))
}

/// A pod named `name` (uid `uid-<name>`, namespace "default") with `labels`, bound to
/// `node` when given, with `extra` merged into a one-container spec (requests 100m).
pub fn named(name: &str, labels: Value, node: Option<&str>, extra: Value) -> Pod {
    let mut spec = json!({"containers": [ctr("c", json!({"cpu": "100m"}))]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels},
        "spec": spec,
    }))
    .unwrap()
}

/// Nodes named `names`, each labelled with its zone from `zones` (same index).
pub fn zoned(names: &[&str], zones: &[&str]) -> Vec<Node> {
    names
        .iter()
        .zip(zones)
        .map(|(n, z)| node_with(n, "4", "8Gi", json!({"labels": {"kubernetes.io/hostname": n, "zone": z}}), json!({})))
        .collect()
}
