//! The local-path provisioner, in the style of k3s: for a claim of a
//! `skiff.io/local-path` class that the binder handed to it
//! (`volume.kubernetes.io/storage-provisioner`) and whose first pod the scheduler has
//! placed (`volume.kubernetes.io/selected-node`), it creates a volume `pvc-<claim uid>`:
//! a hostPath directory on that node, pinned to it by node affinity
//! (`kubernetes.io/hostname`), as big as the claim asks, with the class's reclaim policy
//! and mount options, and pre-bound to the claim so the binder binds the two.
//!
//! The directory is `<dir>/pvc-<uid>`, where `<dir>` is what the node announces in its
//! `skiff.io/local-path-dir` annotation (skiff-node sets it from `--local-path-dir`),
//! else `<--local-path-dir of skiff-control>/<node>`; naming the node keeps nodes that
//! share a filesystem (the local test cluster) apart. The node agent makes the directory
//! when a pod first mounts it and removes it once the volume object is gone.
//!
//! It must not bind or delete anything (the binder does) nor write to nodes; it refuses,
//! with a ProvisioningFailed event, what one directory on one node cannot give: a class
//! that binds Immediately (no node is known), block volumes, ReadWriteMany/ReadOnlyMany
//! and claims with a selector.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_api::ObjectKey;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};

use super::super::Context;
use crate::events::EventType;
use crate::helpers::volumes::{
    ANN_PROVISIONED_BY, ANN_STORAGE_PROVISIONER, HOSTNAME_LABEL, LOCAL_PATH_PROVISIONER, bind_completed, claim_class,
    claim_reference, claim_volume, selected_node,
};

/// The node annotation naming the directory its local-path volumes live in.
pub const NODE_DIR_ANNOTATION: &str = "skiff.io/local-path-dir";
/// The label on a provisioned volume naming its node.
pub const NODE_LABEL: &str = "skiff.io/local-path-node";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating volume {volume} for claim {claim}: {source}")]
    Create {
        volume: String,
        claim: ObjectKey,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The volume's name for a claim, as upstream's provisioners name them.
pub fn volume_name(pvc: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", pvc.metadata.uid.as_deref().unwrap_or_default())
}

/// The directory of the node's local-path volumes (see the module doc).
pub fn node_dir(node: &Node, fallback: &std::path::Path) -> PathBuf {
    let announced = node.metadata.annotations.as_ref().and_then(|a| a.get(NODE_DIR_ANNOTATION));
    match announced.filter(|d| d.starts_with('/')) {
        Some(d) => PathBuf::from(d),
        None => fallback.join(node.metadata.name.as_deref().unwrap_or_default()),
    }
}

/// Why this provisioner cannot serve the claim, if it cannot.
pub fn unsupported(pvc: &PersistentVolumeClaim) -> Option<String> {
    let spec = pvc.spec.as_ref()?;
    if spec.volume_mode.as_deref() == Some("Block") {
        return Some("local-path volumes are directories: volumeMode Block is not supported".into());
    }
    if let Some(m) =
        spec.access_modes.iter().flatten().find(|m| !matches!(m.as_str(), "ReadWriteOnce" | "ReadWriteOncePod"))
    {
        return Some(format!(
            "local-path volumes live on one node: access mode {m} is not supported (use ReadWriteOnce)"
        ));
    }
    if spec.selector.is_some() {
        return Some("claim.Spec.Selector is not supported by the local-path provisioner".into());
    }
    None
}

/// The volume for `pvc` on `node` (see the module doc).
pub fn local_path_volume(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &Node,
    fallback: &std::path::Path,
) -> PersistentVolume {
    let name = volume_name(pvc);
    let node_name = node.metadata.name.clone().unwrap_or_default();
    let spec = pvc.spec.clone().unwrap_or_default();
    let capacity: BTreeMap<_, _> = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned())
        .map(|q| ("storage".to_string(), q))
        .into_iter()
        .collect();
    let path = node_dir(node, fallback).join(&name);
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name),
            // So `kubectl get pv -l skiff.io/local-path-node=N` lists a node's volumes.
            labels: Some(BTreeMap::from([(NODE_LABEL.to_string(), node_name)])),
            annotations: Some(BTreeMap::from([(ANN_PROVISIONED_BY.to_string(), LOCAL_PATH_PROVISIONER.to_string())])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes,
            capacity: Some(capacity),
            claim_ref: Some(claim_reference(pvc)),
            host_path: Some(HostPathVolumeSource {
                path: path.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            mount_options: class.mount_options.clone(),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.into(),
                            operator: "In".into(),
                            values: Some(vec![node_label(node)]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            persistent_volume_reclaim_policy: Some(class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into())),
            storage_class_name: class.metadata.name.clone(),
            volume_mode: Some("Filesystem".into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// The node's hostname label (its name when it has none).
fn node_label(node: &Node) -> String {
    let label = node.metadata.labels.as_ref().and_then(|l| l.get(HOSTNAME_LABEL));
    label.cloned().unwrap_or_else(|| node.metadata.name.clone().unwrap_or_default())
}

/// Runs the provisioner until aborted.
pub async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let feeder = {
        let (ctx, queue) = (ctx.clone(), queue.clone());
        async move {
            let mut claims = ctx.informers.persistent_volume_claims.subscribe();
            while let Some(c) = claims.recv().await {
                if let Change::Applied(pvc) = c {
                    queue.add(ObjectKey::of(pvc.as_ref()));
                }
            }
        }
    };
    let told: Arc<Mutex<HashSet<String>>> = Arc::default();
    let workers = run_workers("local-path-provisioner", queue, 1, move |key: ObjectKey| {
        let (ctx, told) = (ctx.clone(), told.clone());
        async move { reconcile(&ctx, &told, &key).await }
    });
    tokio::join!(feeder, workers);
}

async fn reconcile(ctx: &Context, told: &Mutex<HashSet<String>>, key: &ObjectKey) -> Result<Action> {
    let Some(pvc) = ctx.informers.persistent_volume_claims.get(key) else { return Ok(Action::Done) };
    let ours = pvc.metadata.annotations.as_ref().and_then(|a| a.get(ANN_STORAGE_PROVISIONER)).map(String::as_str)
        == Some(LOCAL_PATH_PROVISIONER);
    if !ours || pvc.metadata.deletion_timestamp.is_some() || claim_volume(&pvc).is_some() || bind_completed(&pvc) {
        return Ok(Action::Done);
    }
    let name = volume_name(&pvc);
    if ctx.informers.persistent_volumes.get_named(None, &name).is_some() {
        return Ok(Action::Done);
    }
    let fail = |message: String| {
        let pvc = pvc.clone();
        async move {
            let uid = pvc.metadata.uid.clone().unwrap_or_default();
            if told.lock().unwrap().insert(format!("{uid}/{message}")) {
                tracing::warn!(claim = %key, %message, "cannot provision");
                ctx.events.record(pvc.as_ref(), EventType::Warning, "ProvisioningFailed", &message).await;
            }
        }
    };
    let class = ctx.informers.storage_classes.get_named(None, claim_class(&pvc));
    let Some(class) = class.filter(|c| c.provisioner == LOCAL_PATH_PROVISIONER) else {
        return Ok(Action::Done);
    };
    if let Some(why) = unsupported(&pvc) {
        fail(why).await;
        return Ok(Action::Done);
    }
    let Some(node_name) = selected_node(&pvc).map(str::to_string) else {
        fail(format!(
            "local-path volumes live on one node, which is not known before a pod is scheduled: give StorageClass {} volumeBindingMode WaitForFirstConsumer",
            class.metadata.name.as_deref().unwrap_or_default()
        ))
        .await;
        return Ok(Action::Done);
    };
    let Some(node) = ctx.informers.nodes.get_named(None, &node_name) else {
        fail(format!("the selected node {node_name} does not exist")).await;
        return Ok(Action::RequeueAfter(Duration::from_secs(10)));
    };
    let pv = local_path_volume(&pvc, &class, &node, &ctx.config.local_path_dir);
    let path = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()).map(|h| h.path.clone()).unwrap_or_default();
    match ctx.client.create(None, &pv).await {
        Ok(_) => {
            tracing::info!(claim = %key, volume = %name, node = %node_name, %path, "provisioned a local-path volume");
            let msg = format!("Successfully provisioned volume {name}");
            ctx.events.record(pvc.as_ref(), EventType::Normal, "ProvisioningSucceeded", &msg).await;
            Ok(Action::Done)
        }
        Err(e) if e.is_already_exists() => Ok(Action::Done),
        Err(source) => Err(Error::Create { volume: name, claim: key.clone(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pvc(extra: serde_json::Value) -> PersistentVolumeClaim {
        let mut v = json!({"metadata": {"name": "data", "namespace": "d", "uid": "u1"}, "spec": {
            "resources": {"requests": {"storage": "2Gi"}}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local-path"}});
        if let (Some(s), Some(e)) = (v["spec"].as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_volume_is_pinned_pre_bound_and_sized() {
        let class: StorageClass = serde_json::from_value(
            json!({"metadata": {"name": "local-path"}, "provisioner": LOCAL_PATH_PROVISIONER, "reclaimPolicy": "Retain"}),
        )
        .unwrap();
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {HOSTNAME_LABEL: "n1"}}})).unwrap();
        let pv = local_path_volume(&pvc(json!({})), &class, &node, std::path::Path::new("/var/lib/skiff/storage"));
        let v = serde_json::to_value(&pv).unwrap();
        assert_eq!(v["metadata"]["name"], "pvc-u1");
        assert_eq!(v["spec"]["hostPath"]["path"], "/var/lib/skiff/storage/n1/pvc-u1");
        assert_eq!(v["spec"]["capacity"]["storage"], "2Gi");
        assert_eq!(v["spec"]["claimRef"]["uid"], "u1");
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(v["spec"]["storageClassName"], "local-path");
        assert_eq!(
            v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0],
            json!({"key": HOSTNAME_LABEL, "operator": "In", "values": ["n1"]})
        );
        assert!(crate::helpers::volumes::reachable_from(&pv, &node));

        let announced: Node = serde_json::from_value(
            json!({"metadata": {"name": "n2", "annotations": {NODE_DIR_ANNOTATION: "/srv/n2-volumes"}}}),
        )
        .unwrap();
        assert_eq!(node_dir(&announced, std::path::Path::new("/x")), PathBuf::from("/srv/n2-volumes"));
    }

    #[test]
    fn what_one_directory_cannot_give_is_refused() {
        assert_eq!(unsupported(&pvc(json!({}))), None);
        assert!(unsupported(&pvc(json!({"volumeMode": "Block"}))).unwrap().contains("Block"));
        assert!(unsupported(&pvc(json!({"accessModes": ["ReadWriteMany"]}))).unwrap().contains("ReadWriteMany"));
        assert!(unsupported(&pvc(json!({"selector": {"matchLabels": {"a": "b"}}}))).is_some());
    }
}
