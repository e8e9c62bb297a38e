//! Pod garbage collection for pods whose node is gone: a pod bound to a Node that no
//! longer exists has no kubelet to run it or to confirm its deletion, so it would stay
//! (or stay Terminating, after a node-lifecycle eviction) forever. Such pods are deleted
//! with grace period 0, as upstream's pod GC does for orphaned pods.
//!
//! It must not touch pods on existing nodes, unbound pods, or act before the node cache
//! has synced (an empty cache would make every pod look orphaned). A node that was just
//! deleted is given `ORPHAN_GRACE` in case it is being re-registered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use skiff_api::ObjectKey;
use skiff_api::reflector::Change;

use super::Context;
use crate::events::EventType;

/// How often the pods are checked against the nodes.
const SWEEP: Duration = Duration::from_secs(5);
/// How long a pod's node must have been missing before the pod is deleted.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// The bound node of a pod, if any.
fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

/// Pods bound to nodes for which `node_exists` says no.
pub fn orphaned(pods: &[Arc<Pod>], node_exists: impl Fn(&str) -> bool) -> Vec<&Pod> {
    pods.iter().map(|p| p.as_ref()).filter(|p| node_of(p).is_some_and(|n| !node_exists(n))).collect()
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    let mut nodes = ctx.informers.nodes.subscribe();
    let mut tick = tokio::time::interval(SWEEP);
    // When each missing node was first seen missing.
    let mut missing_since: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(change) = nodes.recv() => {
                // Sweep soon after a node goes away rather than at the next tick.
                if !matches!(change, Change::Deleted(_)) {
                    continue;
                }
                tokio::time::sleep(ORPHAN_GRACE).await;
            }
            else => return,
        }
        if !ctx.informers.nodes.is_synced() || !ctx.informers.pods.is_synced() {
            continue;
        }
        let pods = ctx.informers.pods.list();
        let nodes = &ctx.informers.nodes;
        let orphans = orphaned(&pods, |n| nodes.get_named(None, n).is_some());
        let now = Instant::now();
        missing_since.retain(|n, _| nodes.get_named(None, n).is_none());
        for pod in orphans {
            let node = node_of(pod).unwrap_or_default().to_string();
            let since = *missing_since.entry(node.clone()).or_insert(now);
            if now.duration_since(since) < ORPHAN_GRACE {
                continue;
            }
            let key = ObjectKey::of(pod);
            let opts = serde_json::json!({
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": pod.metadata.uid},
            });
            match ctx.client.delete::<Pod>(key.ns(), &key.name, Some(&opts)).await {
                Ok(true) => {
                    tracing::info!(pod = %key, node = %node, "deleted pod of a node that no longer exists");
                    ctx.events
                        .record(pod, EventType::Normal, "PodGC", &format!("Node {node} is gone; deleting its pod"))
                        .await;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(pod = %key, error = %e, "deleting an orphaned pod failed; will retry"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "d"},
                "spec": {"containers": [], "nodeName": node}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn only_pods_of_missing_nodes_are_orphaned() {
        let pods = vec![pod("a", Some("n1")), pod("b", Some("gone")), pod("c", None), pod("d", Some(""))];
        let orphans = orphaned(&pods, |n| n == "n1");
        let names: Vec<_> = orphans.iter().map(|p| p.metadata.name.as_deref().unwrap()).collect();
        assert_eq!(names, ["b"]);
    }
}
