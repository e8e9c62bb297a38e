//! persistentVolumeClaim volumes, and the node's side of the local-path provisioner.
//!
//! - [`claim_dir`]: a claim → the volume it is bound to → a directory on this node: a
//!   `hostPath` volume's path (checked, or created, by its type; a volume of the
//!   local-path provisioner is created world-writable, as k3s does, since the container
//!   may run as any user) or a `local` volume's path, which must exist. A claim that is
//!   not bound yet is an error the pod worker retries (the scheduler binds pods only once
//!   their claims are bound, so this is brief).
//! - [`sweep`]: removes the directories under the node's local-path directory whose
//!   volume no longer exists (the binder deletes the volume of a deleted claim when its
//!   reclaim policy is Delete). Only entries named as the provisioner names volumes
//!   (`pvc-…`) are considered, and only a definite "not found" from the API server
//!   removes one: an error or a refusal keeps it.
//!
//! Block volumes and every other volume source are refused with an error naming them.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PersistentVolume;

use super::{VolumeError, host, write_err};
use crate::kubelet::lookup::ObjectLookup;

/// The annotation the provisioner marks its volumes with, and its name.
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const LOCAL_PATH_PROVISIONER: &str = "skiff.io/local-path";
/// The prefix of the provisioner's volume names (`pvc-<claim uid>`).
const VOLUME_PREFIX: &str = "pvc-";

fn is_local_path(pv: &PersistentVolume) -> bool {
    pv.metadata.annotations.as_ref().and_then(|a| a.get(PROVISIONED_BY)).map(String::as_str)
        == Some(LOCAL_PATH_PROVISIONER)
}

/// The directory of claim `claim` (in `ns`) on this node, for the pod volume `volume`.
pub async fn claim_dir<L: ObjectLookup>(lookup: &L, ns: &str, volume: &str, claim: &str) -> super::Result<PathBuf> {
    let not_found = |kind, name: &str| VolumeError::NotFound { volume: volume.into(), kind, name: name.into() };
    let pvc =
        lookup.persistent_volume_claim(ns, claim).await?.ok_or_else(|| not_found("persistentvolumeclaim", claim))?;
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let pv_name = pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|n| !n.is_empty());
    let Some(pv_name) = pv_name.filter(|_| bound) else {
        return Err(VolumeError::HostPath {
            volume: volume.into(),
            detail: format!("PersistentVolumeClaim {ns}/{claim} is not bound to a PersistentVolume yet"),
        });
    };
    let pv = lookup.persistent_volume(pv_name).await?.ok_or_else(|| not_found("persistentvolume", pv_name))?;
    let spec = pv.spec.as_ref();
    if spec.and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
        return Err(VolumeError::Unsupported { volume: volume.into(), kind: "block PersistentVolume".into() });
    }
    let detail = |detail: String| VolumeError::HostPath { volume: volume.into(), detail };
    if let Some(h) = spec.and_then(|s| s.host_path.as_ref()) {
        let path = PathBuf::from(&h.path);
        if is_local_path(&pv) {
            host::ensure_dir(&path, 0o777).map_err(|source| write_err(volume, &path, source))?;
        }
        host::check_host_path(&path, h.type_.as_deref().unwrap_or("")).map_err(detail)?;
        return Ok(path);
    }
    if let Some(l) = spec.and_then(|s| s.local.as_ref()) {
        let path = PathBuf::from(&l.path);
        host::check_host_path(&path, "Directory")
            .map_err(|e| detail(format!("local PersistentVolume {pv_name}: {e}")))?;
        return Ok(path);
    }
    let kind = serde_json::to_value(spec)
        .ok()
        .and_then(|v| {
            let known = ["accessModes", "capacity", "claimRef", "mountOptions", "nodeAffinity"];
            let m = v.as_object()?.keys().find(|k| {
                !known.contains(&k.as_str())
                    && !matches!(
                        k.as_str(),
                        "persistentVolumeReclaimPolicy"
                            | "storageClassName"
                            | "volumeMode"
                            | "volumeAttributesClassName"
                    )
            })?;
            Some(m.clone())
        })
        .unwrap_or_else(|| "unknown".into());
    Err(VolumeError::Unsupported { volume: volume.into(), kind: format!("PersistentVolume {pv_name} of type {kind}") })
}

/// Removes the directories under `dir` whose volume is gone (see the module doc) and
/// returns them.
pub async fn sweep<L: ObjectLookup>(dir: &Path, lookup: &L) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(VOLUME_PREFIX) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match lookup.persistent_volume(&name).await {
            Ok(None) => {}
            Ok(Some(_)) => continue,
            Err(e) => {
                tracing::debug!(volume = %name, error = %e, "cannot tell whether a local-path volume still exists; keeping it");
                continue;
            }
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(volume = %name, path = %path.display(), "removed the directory of a deleted local-path volume");
                removed.push(path);
            }
            Err(e) => {
                tracing::warn!(volume = %name, path = %path.display(), error = %e, "removing the directory of a deleted volume failed")
            }
        }
    }
    removed
}
