//! Volumes in scheduling, as kube-scheduler's VolumeBinding plugin: a pod's
//! PersistentVolumeClaims decide where it may run.
//!
//! - Pod-level (before any node is judged): a claim that does not exist or is being
//!   deleted, or an unbound claim of a class that binds Immediately, makes the pod
//!   unschedulable with a message naming the claim ([`pod_volumes`]).
//! - Per node ([`check_node`]): every bound claim's volume must be reachable from the
//!   node (its `nodeAffinity`: VolumeNodeAffinityConflict); every claim still waiting
//!   for its first consumer (WaitForFirstConsumer) needs an Available volume reachable
//!   from the node or a class that provisions (VolumeBindConflict), and a claim the
//!   scheduler already gave a node to (`volume.kubernetes.io/selected-node`) keeps it.
//!
//! [`schedule_with_volumes`] runs the usual pipeline on the nodes that pass and counts
//! the others under their first failing check, so the "0/N nodes are available"
//! summary stays upstream's. Choosing a node for a pod with waiting claims does not bind
//! it: the caller writes the node into the claims and binds the pod once they are bound
//! (then the bound volumes pin it to that node), so the node agent only ever sees pods
//! whose claims are bound.
//!
//! Pure code: no I/O, no logging.

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;

use super::cluster::{Cluster, name};
use super::filter::{self, Reason};
use super::{FitError, ScheduleError, ScheduleResult, pod_requests, schedule_in};
use crate::helpers::volumes::{
    NO_PROVISIONER, claim_class, claim_volume, find_best_match, is_delayed, reachable_from, selected_node,
};

/// The storage objects the scheduler reads (from its caches).
#[derive(Debug, Default, Clone, Copy)]
pub struct Storage<'a> {
    pub claims: &'a [&'a PersistentVolumeClaim],
    pub volumes: &'a [&'a PersistentVolume],
    pub classes: &'a [&'a StorageClass],
}

impl<'a> Storage<'a> {
    fn claim(&self, ns: &str, name: &str) -> Option<&'a PersistentVolumeClaim> {
        self.claims
            .iter()
            .copied()
            .find(|c| c.metadata.name.as_deref() == Some(name) && c.metadata.namespace.as_deref().unwrap_or("") == ns)
    }

    fn volume(&self, name: &str) -> Option<&'a PersistentVolume> {
        self.volumes.iter().copied().find(|v| v.metadata.name.as_deref() == Some(name))
    }

    fn class(&self, name: &str) -> Option<&'a StorageClass> {
        (!name.is_empty()).then(|| self.classes.iter().copied().find(|c| c.metadata.name.as_deref() == Some(name)))?
    }
}

/// A pod's claims as the scheduler sees them.
#[derive(Debug, Default, Clone)]
pub struct PodVolumes<'a> {
    /// The volumes of bound claims.
    pub bound: Vec<&'a PersistentVolume>,
    /// Claims waiting for their first consumer, with their class.
    pub waiting: Vec<(&'a PersistentVolumeClaim, Option<&'a StorageClass>)>,
}

impl PodVolumes<'_> {
    pub fn is_empty(&self) -> bool {
        self.bound.is_empty() && self.waiting.is_empty()
    }
}

/// The names of the claims a pod's volumes use.
pub fn claim_names(pod: &Pod) -> impl Iterator<Item = &str> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or(&[]);
    volumes.iter().filter_map(|v| v.persistent_volume_claim.as_ref()).map(|c| c.claim_name.as_str())
}

/// The pod's claims (see the module doc), or why no node can take it.
pub fn pod_volumes<'a>(pod: &Pod, storage: &Storage<'a>) -> Result<PodVolumes<'a>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = PodVolumes::default();
    let mut immediate = Vec::new();
    for name in claim_names(pod) {
        let claim = storage.claim(ns, name).ok_or_else(|| format!("persistentvolumeclaim \"{name}\" not found"))?;
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        if let Some(v) = claim_volume(claim) {
            let volume = storage.volume(v).ok_or_else(|| format!("persistentvolume \"{v}\" not found"))?;
            out.bound.push(volume);
            continue;
        }
        let class = storage.class(claim_class(claim));
        if is_delayed(class) {
            out.waiting.push((claim, class));
        } else {
            immediate.push(format!("\"{name}\""));
        }
    }
    if !immediate.is_empty() {
        return Err(format!("pod has unbound immediate PersistentVolumeClaims ({})", immediate.join(", ")));
    }
    Ok(out)
}

/// May the pod's volumes be used on `node` (see the module doc)?
pub fn check_node(volumes: &PodVolumes<'_>, storage: &Storage<'_>, node: &Node) -> Result<(), Reason> {
    if volumes.bound.iter().any(|v| !reachable_from(v, node)) {
        return Err(Reason::VolumeNodeAffinityConflict);
    }
    let node_name = node.metadata.name.as_deref().unwrap_or("");
    for (claim, class) in &volumes.waiting {
        if let Some(selected) = selected_node(claim) {
            if selected != node_name {
                return Err(Reason::VolumeBindConflict);
            }
            continue;
        }
        let provisions = class.is_some_and(|c| c.provisioner != NO_PROVISIONER);
        if !provisions && find_best_match(claim, storage.volumes.iter().copied(), true, Some(node)).is_none() {
            return Err(Reason::VolumeBindConflict);
        }
    }
    Ok(())
}

/// [`schedule`] with the volume filter (see the module doc).
pub fn schedule_with_volumes(
    pod: &Pod,
    nodes: &[Node],
    cluster: &Cluster<'_>,
    tie_breaker: u64,
    volumes: &PodVolumes<'_>,
    storage: &Storage<'_>,
) -> Result<ScheduleResult, ScheduleError> {
    if volumes.is_empty() {
        return schedule_in(pod, nodes, cluster, tie_breaker);
    }
    let (fit, misfit): (Vec<&Node>, Vec<&Node>) = nodes.iter().partition(|n| check_node(volumes, storage, n).is_ok());
    let fit: Vec<Node> = fit.into_iter().cloned().collect();
    match schedule_in(pod, &fit, cluster, tie_breaker) {
        Err(ScheduleError::Unschedulable(mut fit_error)) => {
            let requests = pod_requests(pod)?;
            for node in misfit {
                // The first failing check counts, as for every other filter.
                let reasons = match filter::filter(pod, &requests, node, cluster.usage(name(node))) {
                    Err(earlier) => earlier,
                    Ok(()) => vec![check_node(volumes, storage, node).err().unwrap_or(Reason::VolumeBindConflict)],
                };
                for r in reasons {
                    *fit_error.reasons.entry(r).or_default() += 1;
                }
            }
            Err(FitError { num_nodes: nodes.len(), reasons: fit_error.reasons }.into())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::helpers::volumes::{ANN_SELECTED_NODE, HOSTNAME_LABEL};
    use serde_json::{Value, json};

    fn claim(name: &str, class: &str, volume: Option<&str>, annotations: Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "annotations": annotations},
            "spec": {"storageClassName": class, "volumeName": volume, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}}))
        .unwrap()
    }

    fn volume(name: &str, class: &str, on: Option<&str>) -> PersistentVolume {
        let affinity = on.map(|n| {
            json!({"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [n]}]}]}})
        });
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "local": {"path": "/mnt"}, "nodeAffinity": affinity}}))
        .unwrap()
    }

    fn class(name: &str, provisioner: &str, mode: &str) -> StorageClass {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "provisioner": provisioner, "volumeBindingMode": mode}),
        )
        .unwrap()
    }

    fn with_claims(names: &[&str]) -> Pod {
        let volumes: Vec<Value> =
            names.iter().map(|n| json!({"name": n, "persistentVolumeClaim": {"claimName": n}})).collect();
        pod(json!({"containers": [ctr("c", json!({"cpu": "100m"}))], "volumes": volumes}))
    }

    fn run(pod: &Pod, nodes: &[Node], storage: &Storage<'_>) -> Result<String, String> {
        let volumes = pod_volumes(pod, storage)?;
        schedule_with_volumes(pod, nodes, &Cluster::new(nodes, []), 0, &volumes, storage)
            .map(|r| r.node_name)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_bound_local_volume_pins_the_pod_to_its_node() {
        let (c, v) = (claim("data", "local", Some("pv1"), json!({})), volume("pv1", "local", Some("n2")));
        let storage = Storage { claims: &[&c], volumes: &[&v], classes: &[] };
        let nodes = [node("n1", "4", "8Gi"), node("n2", "4", "8Gi"), node("n3", "4", "8Gi")];
        for _ in 0..3 {
            assert_eq!(run(&with_claims(&["data"]), &nodes, &storage).unwrap(), "n2");
        }
        let elsewhere = [node("n1", "4", "8Gi"), tainted("n2", json!([{"key": "x", "effect": "NoSchedule"}]))];
        assert_eq!(
            run(&with_claims(&["data"]), &elsewhere, &storage).unwrap_err(),
            "0/2 nodes are available: 1 node(s) had untolerated taint {x: }, 1 node(s) had volume node affinity conflict."
        );
    }

    #[test]
    fn missing_deleted_and_immediate_unbound_claims_are_named() {
        let nodes = [node("n1", "4", "8Gi")];
        let immediate = class("fast", "example.com/fast", "Immediate");
        let unbound = claim("data", "fast", None, json!({}));
        let storage = Storage { claims: &[&unbound], volumes: &[], classes: &[&immediate] };
        assert_eq!(
            run(&with_claims(&["other"]), &nodes, &storage).unwrap_err(),
            "persistentvolumeclaim \"other\" not found"
        );
        assert_eq!(
            run(&with_claims(&["data"]), &nodes, &storage).unwrap_err(),
            "pod has unbound immediate PersistentVolumeClaims (\"data\")"
        );
        let mut deleting = claim("gone", "fast", Some("pv"), json!({}));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH));
        let storage = Storage { claims: &[&deleting], ..storage };
        assert_eq!(
            run(&with_claims(&["gone"]), &nodes, &storage).unwrap_err(),
            "persistentvolumeclaim \"gone\" is being deleted"
        );
    }

    #[test]
    fn waiting_claims_need_a_provisioner_or_a_volume_on_the_node() {
        let nodes = [node("n1", "4", "8Gi"), node("n2", "4", "8Gi")];
        let local_path = class("local-path", "skiff.io/local-path", "WaitForFirstConsumer");
        let manual = class("manual", NO_PROVISIONER, "WaitForFirstConsumer");
        let dynamic = claim("dyn", "local-path", None, json!({}));
        let fixed = claim("fixed", "manual", None, json!({}));
        let on_n2 = volume("pv-n2", "manual", Some("n2"));
        let storage = Storage { claims: &[&dynamic, &fixed], volumes: &[&on_n2], classes: &[&local_path, &manual] };
        let picks: std::collections::BTreeSet<String> = (0..8)
            .map(|tb| {
                let p = with_claims(&["dyn"]);
                let v = pod_volumes(&p, &storage).unwrap();
                schedule_with_volumes(&p, &nodes, &Cluster::new(&nodes, []), tb, &v, &storage).unwrap().node_name
            })
            .collect();
        assert_eq!(picks.len(), 2, "a provisioning class fits every node");
        assert_eq!(run(&with_claims(&["fixed"]), &nodes, &storage).unwrap(), "n2");
        let none = Storage { volumes: &[], ..storage };
        assert_eq!(
            run(&with_claims(&["fixed"]), &nodes, &none).unwrap_err(),
            "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind."
        );
        // A claim the scheduler already gave a node keeps it.
        let chosen = claim("dyn", "local-path", None, json!({ANN_SELECTED_NODE: "n1"}));
        let storage = Storage { claims: &[&chosen], ..storage };
        assert_eq!(run(&with_claims(&["dyn"]), &nodes, &storage).unwrap(), "n1");
    }
}
