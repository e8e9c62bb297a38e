//! The rules of PersistentVolume binding that the PV binder, the local-path provisioner
//! and the scheduler's volume filter all apply (upstream's `pkg/controller/volume/
//! persistentvolume` and `component-helpers/storage/volume`): which volume suits a claim,
//! which class a claim asks for, when binding waits for a pod, and whether a volume
//! can be reached from a node.
//!
//! Pure code: no I/O, no API calls, no logging of decisions.

use k8s_openapi::api::core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use skiff_api::quantity;
use skiff_api::selector::LabelSelector;

use super::node_affinity;

/// On a claim and its volume once the binder has completed the binding.
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// On a claim or volume whose binding the binder (not a user) made.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// On a claim of a WaitForFirstConsumer class: the node the scheduler chose for its
/// first pod, where the volume must be reachable.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// On a claim the binder found no volume for: the provisioner that should make one.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The beta spelling of [`ANN_STORAGE_PROVISIONER`], still read by older provisioners.
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// On a provisioned volume: the provisioner that made it (and deletes it).
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The deprecated annotation that named a claim's or volume's class.
pub const ANN_BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// Skiff's built-in provisioner: a directory per volume on the pod's node.
pub const LOCAL_PATH_PROVISIONER: &str = "skiff.io/local-path";
/// The provisioner name of classes whose volumes are made by hand (local volumes).
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
/// The label the local-path provisioner pins volumes to their node with.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

fn annotation<'a>(meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The class a claim asks for: `spec.storageClassName`, else the beta annotation; ""
/// is "no class" (only volumes without a class suit it).
pub fn claim_class(pvc: &PersistentVolumeClaim) -> &str {
    if let Some(c) = annotation(&pvc.metadata, ANN_BETA_STORAGE_CLASS) {
        return c;
    }
    pvc.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("")
}

/// The class of a volume (as [`claim_class`]).
pub fn volume_class(pv: &PersistentVolume) -> &str {
    if let Some(c) = annotation(&pv.metadata, ANN_BETA_STORAGE_CLASS) {
        return c;
    }
    pv.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("")
}

/// Whether claims of `class` bind only once a pod using them is scheduled.
pub fn is_delayed(class: Option<&StorageClass>) -> bool {
    class.and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer")
}

/// The node the scheduler chose for the claim's first pod.
pub fn selected_node(pvc: &PersistentVolumeClaim) -> Option<&str> {
    annotation(&pvc.metadata, ANN_SELECTED_NODE).filter(|n| !n.is_empty())
}

/// The volume a claim is bound to (or being bound to).
pub fn claim_volume(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.spec.as_ref()?.volume_name.as_deref().filter(|n| !n.is_empty())
}

/// Whether the binder has finished binding the claim.
pub fn bind_completed(pvc: &PersistentVolumeClaim) -> bool {
    annotation(&pvc.metadata, ANN_BIND_COMPLETED).is_some()
}

/// The requested size in bytes (0 when missing or unreadable: validation requires it).
pub fn requested_bytes(pvc: &PersistentVolumeClaim) -> i64 {
    let q = pvc.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref());
    q.and_then(|r| r.get("storage")).and_then(|q| quantity::parse_value(&q.0).ok()).unwrap_or(0)
}

/// The volume's size in bytes (0 when missing or unreadable).
pub fn capacity_bytes(pv: &PersistentVolume) -> i64 {
    let q = pv.spec.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage"));
    q.and_then(|q| quantity::parse_value(&q.0).ok()).unwrap_or(0)
}

fn volume_mode(mode: Option<&str>) -> &str {
    mode.unwrap_or("Filesystem")
}

/// The `claimRef` a volume bound to `pvc` carries (with the claim's uid, so a later
/// claim of the same name is not mistaken for it).
pub fn claim_reference(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        resource_version: pvc.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// Whether the volume's `claimRef` names this claim (by namespace and name, and by uid
/// when the reference has one: a reference without uid is a pre-binding by a user or a
/// provisioner).
pub fn is_bound_to(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else { return false };
    r.name.as_deref() == pvc.metadata.name.as_deref()
        && r.namespace.as_deref().unwrap_or("") == pvc.metadata.namespace.as_deref().unwrap_or("")
        && r.uid.as_deref().is_none_or(|u| u.is_empty() || Some(u) == pvc.metadata.uid.as_deref())
}

/// Whether the volume's required node affinity admits `node` (no affinity: every node).
pub fn reachable_from(pv: &PersistentVolume, node: &Node) -> bool {
    let Some(required) = pv.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    required.node_selector_terms.iter().any(|t| node_affinity::term_matches(t, node))
}

/// Whether the volume is pinned to some nodes only.
pub fn has_node_affinity(pv: &PersistentVolume) -> bool {
    pv.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.as_ref()).is_some()
}

/// Why a volume does not suit a claim, apart from being taken; `None` if it does.
/// Checks class, volume mode, access modes (the volume offers every mode asked), size
/// and the claim's label selector.
pub fn mismatch(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> Option<&'static str> {
    let (Some(vs), Some(cs)) = (pv.spec.as_ref(), pvc.spec.as_ref()) else { return Some("no spec") };
    if volume_class(pv) != claim_class(pvc) {
        return Some("storage class differs");
    }
    if volume_mode(vs.volume_mode.as_deref()) != volume_mode(cs.volume_mode.as_deref()) {
        return Some("volume mode differs");
    }
    let offered = vs.access_modes.as_deref().unwrap_or(&[]);
    if !cs.access_modes.iter().flatten().all(|m| offered.contains(m)) {
        return Some("access modes are not offered");
    }
    if capacity_bytes(pv) < requested_bytes(pvc) {
        return Some("too small");
    }
    if let Some(sel) = &cs.selector {
        let matches = serde_json::to_value(sel)
            .ok()
            .and_then(|v| LabelSelector::from_json(&v).ok())
            .is_some_and(|s| s.matches(&skiff_api::client::labels_of(&pv.metadata)));
        if !matches {
            return Some("labels do not match the claim's selector");
        }
    }
    None
}

/// Whether the volume is free for `pvc`: not being deleted, and either unclaimed or
/// pre-bound to this very claim.
fn free_for(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    if pv.metadata.deletion_timestamp.is_some() {
        return false;
    }
    match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
        None => !matches!(pv.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Released" | "Failed")),
        Some(_) => is_bound_to(pv, pvc),
    }
}

/// The volume the binder should bind `pvc` to, among `pvs`: one pre-bound to the claim
/// if it suits, else the smallest suitable free one (ties by name, so every replica
/// picks the same). With `node` (a WaitForFirstConsumer claim whose pod was placed),
/// only volumes reachable from that node count; without it, a delayed claim takes
/// pre-bound volumes only, since any other choice could pin its pod to the wrong node.
pub fn find_best_match<'a>(
    pvc: &PersistentVolumeClaim,
    pvs: impl IntoIterator<Item = &'a PersistentVolume>,
    delayed: bool,
    node: Option<&Node>,
) -> Option<&'a PersistentVolume> {
    let mut best: Option<&PersistentVolume> = None;
    for pv in pvs {
        if !free_for(pv, pvc) || mismatch(pv, pvc).is_some() {
            continue;
        }
        if let Some(n) = node
            && !reachable_from(pv, n)
        {
            continue;
        }
        if is_bound_to(pv, pvc) {
            return Some(pv);
        }
        if delayed && node.is_none() {
            continue;
        }
        let key = |v: &PersistentVolume| (capacity_bytes(v), v.metadata.name.clone());
        if best.is_none_or(|b| key(pv) < key(b)) {
            best = Some(pv);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pv(name: &str, size: &str, extra: Value) -> PersistentVolume {
        let mut v = json!({"metadata": {"name": name}, "spec": {
            "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
            "hostPath": {"path": "/tmp"}}});
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn pvc(size: &str, extra: Value) -> PersistentVolumeClaim {
        let mut v = json!({"metadata": {"name": "data", "namespace": "d", "uid": "u1"}, "spec": {
            "resources": {"requests": {"storage": size}}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual"}});
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {HOSTNAME_LABEL: name}}})).unwrap()
    }

    fn names(found: Option<&PersistentVolume>) -> Option<&str> {
        found.and_then(|p| p.metadata.name.as_deref())
    }

    #[test]
    fn the_smallest_volume_that_fits_wins() {
        let pvs = [pv("big", "10Gi", json!({})), pv("small", "1Gi", json!({})), pv("fit", "2Gi", json!({}))];
        assert_eq!(names(find_best_match(&pvc("1500Mi", json!({})), &pvs, false, None)), Some("fit"));
        assert_eq!(names(find_best_match(&pvc("1Gi", json!({})), &pvs, false, None)), Some("small"));
        assert_eq!(names(find_best_match(&pvc("11Gi", json!({})), &pvs, false, None)), None);
        // Equal sizes: the lower name, whatever the order.
        let twins = [pv("b", "1Gi", json!({})), pv("a", "1Gi", json!({}))];
        assert_eq!(names(find_best_match(&pvc("1Gi", json!({})), &twins, false, None)), Some("a"));
    }

    #[test]
    fn class_modes_and_selector_must_match() {
        let claim = pvc("1Gi", json!({"spec": {"accessModes": ["ReadWriteMany"]}}));
        let rwo = pv("rwo", "1Gi", json!({}));
        let rwx = pv("rwx", "5Gi", json!({"spec": {"accessModes": ["ReadWriteOnce", "ReadWriteMany"]}}));
        assert_eq!(mismatch(&rwo, &claim), Some("access modes are not offered"));
        assert_eq!(names(find_best_match(&claim, [&rwo, &rwx], false, None)), Some("rwx"));

        let other_class = pv("fast", "1Gi", json!({"spec": {"storageClassName": "fast"}}));
        assert_eq!(mismatch(&other_class, &pvc("1Gi", json!({}))), Some("storage class differs"));
        let no_class = pv("none", "1Gi", json!({"spec": {"storageClassName": null}}));
        assert_eq!(mismatch(&no_class, &pvc("1Gi", json!({"spec": {"storageClassName": ""}}))), None);

        let block = pv("block", "1Gi", json!({"spec": {"volumeMode": "Block"}}));
        assert_eq!(mismatch(&block, &pvc("1Gi", json!({}))), Some("volume mode differs"));

        let selective = pvc("1Gi", json!({"spec": {"selector": {"matchLabels": {"tier": "gold"}}}}));
        let gold = pv("gold", "8Gi", json!({"metadata": {"labels": {"tier": "gold"}}}));
        let plain = pv("plain", "1Gi", json!({}));
        assert_eq!(names(find_best_match(&selective, [&plain, &gold], false, None)), Some("gold"));
        let expr = pvc(
            "1Gi",
            json!({"spec": {"selector": {"matchExpressions": [
            {"key": "tier", "operator": "NotIn", "values": ["gold"]}]}}}),
        );
        assert_eq!(names(find_best_match(&expr, [&gold, &plain], false, None)), Some("plain"));
    }

    #[test]
    fn taken_released_and_deleted_volumes_are_skipped_but_prebound_ones_win() {
        let claim = pvc("1Gi", json!({}));
        let taken = pv("taken", "1Gi", json!({"spec": {"claimRef": {"namespace": "d", "name": "other", "uid": "u2"}}}));
        let released = pv("released", "1Gi", json!({"status": {"phase": "Released"}}));
        let mut deleting = pv("deleting", "1Gi", json!({}));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(names(find_best_match(&claim, [&taken, &released, &deleting], false, None)), None);
        // Pre-bound by name only, bigger than a free one: still chosen.
        let prebound = pv("mine", "5Gi", json!({"spec": {"claimRef": {"namespace": "d", "name": "data"}}}));
        let free = pv("free", "1Gi", json!({}));
        assert_eq!(names(find_best_match(&claim, [&free, &prebound], false, None)), Some("mine"));
        // A reference to an earlier claim of the same name (another uid) is not ours.
        let stale = pv("stale", "1Gi", json!({"spec": {"claimRef": {"namespace": "d", "name": "data", "uid": "old"}}}));
        assert!(!is_bound_to(&stale, &claim));
        assert_eq!(names(find_best_match(&claim, [&stale], false, None)), None);
    }

    #[test]
    fn delayed_claims_bind_to_volumes_of_the_selected_node() {
        let pinned = |name: &str, node: &str| {
            pv(
                name,
                "1Gi",
                json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}]}]}}}}),
            )
        };
        let (on1, on2) = (pinned("on-n1", "n1"), pinned("on-n2", "n2"));
        let claim = pvc("1Gi", json!({}));
        assert_eq!(names(find_best_match(&claim, [&on1, &on2], true, None)), None, "no node chosen yet");
        assert_eq!(names(find_best_match(&claim, [&on1, &on2], true, Some(&node("n2")))), Some("on-n2"));
        assert_eq!(names(find_best_match(&claim, [&on1, &on2], false, None)), Some("on-n1"));
        assert!(reachable_from(&on1, &node("n1")) && !reachable_from(&on1, &node("n2")));
        assert!(reachable_from(&pv("anywhere", "1Gi", json!({})), &node("n2")));
    }

    #[test]
    fn classes_and_annotations() {
        let beta = pvc("1Gi", json!({"metadata": {"annotations": {ANN_BETA_STORAGE_CLASS: "old"}}}));
        assert_eq!(claim_class(&beta), "old");
        let wffc: StorageClass = serde_json::from_value(
            json!({"metadata": {"name": "l"}, "provisioner": "p", "volumeBindingMode": "WaitForFirstConsumer"}),
        )
        .unwrap();
        assert!(is_delayed(Some(&wffc)) && !is_delayed(None));
        let selected = pvc("1Gi", json!({"metadata": {"annotations": {ANN_SELECTED_NODE: "n1"}}}));
        assert_eq!(selected_node(&selected), Some("n1"));
        assert_eq!(requested_bytes(&pvc("1Ki", json!({}))), 1024);
    }
}
