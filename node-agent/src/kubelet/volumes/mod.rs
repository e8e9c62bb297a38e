//! A pod's volumes on the node, and the CRI mounts of its containers.
//!
//! - [`prepare_volumes`] makes every volume of the pod exist under
//!   `<pod_dir>/volumes/kubernetes.io~<kind>/<name>` (hostPath stays where it is): an
//!   emptyDir directory (a tmpfs for medium Memory), checked hostPaths, and the files of
//!   configMap, secret, downwardAPI and projected volumes (ServiceAccount tokens
//!   included), written atomically (`atomic`). It is idempotent: called at pod start,
//!   and again periodically so those files follow their sources.
//! - [`container_mounts`] turns a container's `volumeMounts` into CRI mounts.
//! - [`cleanup_volumes`] unmounts and removes what `prepare_volumes` made.
//!
//! With the pod's `securityContext.fsGroup`, emptyDir directories and the files of
//! configMap, secret, downwardAPI and projected volumes belong to that group (group
//! read, setgid directories), so a container running as another user in the group can
//! read them; hostPath volumes are never changed.
//!
//! A persistentVolumeClaim volume is the directory of the volume its claim is bound to
//! (`claim`: hostPath and local volumes, which is what the local-path provisioner
//! makes). Volume kinds that need a storage system (nfs, csi, ...) are refused with an
//! error naming the kind. This module must not touch the CRI or the
//! API server (other than through [`ObjectLookup`]).

pub mod atomic;
pub mod claim;
pub mod host;
pub mod payload;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1::{KeyValue, Mount, MountPropagation};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use skiff_api::quantity;

use super::env::{EnvContext, EnvError, expand};
use super::lookup::{LookupError, ObjectLookup};
use atomic::Payload;
use payload::{DEFAULT_MODE, mode_of, project};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?}: {kind} volumes are not supported by skiff-node")]
    Unsupported { volume: String, kind: String },
    #[error("volume {volume:?}: {kind} {name:?} not found")]
    NotFound { volume: String, kind: &'static str, name: String },
    #[error("volume {volume:?}: {kind} references non-existent key: {key}")]
    KeyMissing { volume: String, kind: &'static str, key: String },
    #[error("volume {volume:?}: {detail}")]
    HostPath { volume: String, detail: String },
    #[error("volume {volume:?}: emptyDir sizeLimit: {source}")]
    SizeLimit {
        volume: String,
        #[source]
        source: quantity::QuantityError,
    },
    #[error("{what}: unsupported fieldPath {path:?}")]
    Field { what: String, path: String },
    #[error("volume {volume:?}: writing {path}: {source}")]
    Write {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting a tmpfs on {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("unmounting {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {container:?}: volumeMount {volume:?} names no volume of the pod")]
    NoSuchVolume { container: String, volume: String },
    #[error("container {container:?}: volumeMount {volume:?}: subPath {sub_path:?} {why}")]
    SubPath { container: String, volume: String, sub_path: String, why: String },
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

pub type Result<T, E = VolumeError> = std::result::Result<T, E>;

/// What volume preparation needs besides the pod.
#[derive(Debug, Clone, Copy)]
pub struct VolumeContext<'a> {
    /// For downwardAPI items (fields, and limits that default to allocatable).
    pub env: &'a EnvContext,
    /// Secret and projected volumes on a tmpfs, so secrets never reach the disk
    /// (upstream's choice; needs root).
    pub secrets_on_tmpfs: bool,
}

/// One prepared volume: where it is on the host and whether containers may write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    pub host_path: PathBuf,
    /// configMap, secret, downwardAPI and projected volumes are always mounted
    /// read-only (the kubelet rewrites them).
    pub read_only: bool,
}

/// The pod's volumes by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreparedVolumes {
    pub volumes: BTreeMap<String, PreparedVolume>,
}

impl PreparedVolumes {
    pub fn get(&self, name: &str) -> Option<&PreparedVolume> {
        self.volumes.get(name)
    }
}

const VOLUMES_DIR: &str = "volumes";

fn plugin_dir(pod_dir: &Path, plugin: &str, volume: &str) -> PathBuf {
    pod_dir.join(VOLUMES_DIR).join(format!("kubernetes.io~{plugin}")).join(volume)
}

/// The kind of a volume as its field is spelled (`persistentVolumeClaim`), for errors.
fn kind_name(v: &Volume) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m.keys().find(|k| *k != "name").cloned().unwrap_or_else(|| "empty".into()),
        _ => "unknown".into(),
    }
}

/// Makes every volume of `pod` exist under `pod_dir` (see the module doc). Every volume
/// is attempted; the first failure is returned (others are logged), so one missing
/// ConfigMap does not stop the other volumes from being refreshed.
pub async fn prepare_volumes<L: ObjectLookup>(
    pod: &Pod,
    pod_dir: &Path,
    ctx: &VolumeContext<'_>,
    lookup: &L,
) -> Result<PreparedVolumes> {
    let mut prepared = PreparedVolumes::default();
    let mut first_error = None;
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        match prepare_one(pod, pod_dir, v, ctx, lookup).await {
            Ok(p) => {
                prepared.volumes.insert(v.name.clone(), p);
            }
            Err(e) => {
                tracing::warn!(pod = ?pod.metadata.name, volume = %v.name, error = %e, "volume not ready");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(prepared),
    }
}

async fn prepare_one<L: ObjectLookup>(
    pod: &Pod,
    pod_dir: &Path,
    v: &Volume,
    ctx: &VolumeContext<'_>,
    lookup: &L,
) -> Result<PreparedVolume> {
    let name = v.name.as_str();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let writable = |host_path| PreparedVolume { host_path, read_only: false };
    let fs_group = fs_group(pod);
    if let Some(e) = &v.empty_dir {
        let dir = plugin_dir(pod_dir, "empty-dir", name);
        match e.medium.as_deref().unwrap_or("") {
            "" => host::ensure_dir(&dir, 0o777).map_err(|source| write_err(name, &dir, source))?,
            "Memory" => {
                let size = e
                    .size_limit
                    .as_ref()
                    .map(|q| quantity::parse_value(&q.0))
                    .transpose()
                    .map_err(|source| VolumeError::SizeLimit { volume: name.into(), source })?;
                host::ensure_tmpfs(&dir, size, 0o777)
                    .map_err(|source| VolumeError::Mount { path: dir.clone(), source })?;
            }
            other => {
                return Err(VolumeError::Unsupported { volume: name.into(), kind: format!("emptyDir medium {other}") });
            }
        }
        if let Some(gid) = fs_group {
            // Only the directory: what containers write into it gets the group from
            // the setgid bit, and a refresh must not walk their files.
            atomic::own_dir(&dir, gid).map_err(|source| write_err(name, &dir, source))?;
        }
        return Ok(writable(dir));
    }
    if let Some(h) = &v.host_path {
        let path = PathBuf::from(&h.path);
        host::check_host_path(&path, h.type_.as_deref().unwrap_or(""))
            .map_err(|detail| VolumeError::HostPath { volume: name.into(), detail })?;
        return Ok(writable(path));
    }
    if let Some(c) = &v.persistent_volume_claim {
        let dir = claim::claim_dir(lookup, ns, name, &c.claim_name).await?;
        return Ok(PreparedVolume { host_path: dir, read_only: c.read_only == Some(true) });
    }
    let (plugin, payload) = if let Some(c) = &v.config_map {
        let mut out = Payload::new();
        let source = payload::config_map_source(lookup, ns, &c.name).await?;
        let mode = mode_of(c.default_mode, DEFAULT_MODE);
        project(name, source, c.items.as_deref(), c.optional == Some(true), mode, &mut out)?;
        ("configmap", out)
    } else if let Some(s) = &v.secret {
        let mut out = Payload::new();
        let source = payload::secret_source(lookup, ns, s.secret_name.as_deref().unwrap_or("")).await?;
        let mode = mode_of(s.default_mode, DEFAULT_MODE);
        project(name, source, s.items.as_deref(), s.optional == Some(true), mode, &mut out)?;
        ("secret", out)
    } else if let Some(d) = &v.downward_api {
        let mut out = Payload::new();
        let mode = mode_of(d.default_mode, DEFAULT_MODE);
        payload::downward_api(pod, name, d.items.as_deref().unwrap_or(&[]), mode, ctx.env, &mut out)?;
        ("downward-api", out)
    } else if let Some(p) = &v.projected {
        ("projected", projected(pod, name, p, ctx, lookup).await?)
    } else {
        return Err(VolumeError::Unsupported { volume: name.into(), kind: kind_name(v) });
    };
    let dir = plugin_dir(pod_dir, plugin, name);
    if ctx.secrets_on_tmpfs && matches!(plugin, "secret" | "projected") {
        host::ensure_tmpfs(&dir, None, 0o755).map_err(|source| VolumeError::Mount { path: dir.clone(), source })?;
    }
    let changed = atomic::write_owned(&dir, &payload, fs_group).map_err(|source| write_err(name, &dir, source))?;
    if changed {
        tracing::debug!(pod = ?pod.metadata.name, volume = name, files = payload.len(), "volume contents updated");
    }
    Ok(PreparedVolume { host_path: dir, read_only: true })
}

/// The pod's `fsGroup`, as a gid (a negative or oversized one is ignored: the API
/// server's validation refuses them).
fn fs_group(pod: &Pod) -> Option<u32> {
    let group = pod.spec.as_ref()?.security_context.as_ref()?.fs_group?;
    u32::try_from(group).ok()
}

fn write_err(volume: &str, path: &Path, source: std::io::Error) -> VolumeError {
    VolumeError::Write { volume: volume.into(), path: path.to_path_buf(), source }
}

async fn projected<L: ObjectLookup>(
    pod: &Pod,
    volume: &str,
    p: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    ctx: &VolumeContext<'_>,
    lookup: &L,
) -> Result<Payload> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mode = mode_of(p.default_mode, DEFAULT_MODE);
    let mut out = Payload::new();
    for s in p.sources.iter().flatten() {
        if let Some(c) = &s.config_map {
            let source = payload::config_map_source(lookup, ns, &c.name).await?;
            project(volume, source, c.items.as_deref(), c.optional == Some(true), mode, &mut out)?;
        } else if let Some(c) = &s.secret {
            let source = payload::secret_source(lookup, ns, &c.name).await?;
            project(volume, source, c.items.as_deref(), c.optional == Some(true), mode, &mut out)?;
        } else if let Some(d) = &s.downward_api {
            payload::downward_api(pod, volume, d.items.as_deref().unwrap_or(&[]), mode, ctx.env, &mut out)?;
        } else if let Some(t) = &s.service_account_token {
            payload::service_account_token(lookup, pod, t, mode, &mut out).await?;
        } else {
            let kind = match serde_json::to_value(s) {
                Ok(serde_json::Value::Object(m)) => m.keys().next().cloned().unwrap_or_else(|| "empty".into()),
                _ => "unknown".into(),
            };
            return Err(VolumeError::Unsupported { volume: volume.into(), kind: format!("projected {kind}") });
        }
    }
    Ok(out)
}

/// The CRI mounts of `container`'s `volumeMounts`. A subPath (or a subPathExpr,
/// expanded with the container's environment `env`, as [`container_env`] made it) is
/// resolved on the host (created as a directory when missing, as upstream does) and
/// must stay inside its volume even through symlinks.
///
/// [`container_env`]: super::env::container_env
pub fn container_mounts(
    _pod: &Pod,
    container: &Container,
    prepared: &PreparedVolumes,
    env: &[KeyValue],
) -> Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let vol = prepared
            .get(&vm.name)
            .ok_or_else(|| VolumeError::NoSuchVolume { container: container.name.clone(), volume: vm.name.clone() })?;
        let sub_err = |sub_path: &str, why: &str| VolumeError::SubPath {
            container: container.name.clone(),
            volume: vm.name.clone(),
            sub_path: sub_path.into(),
            why: why.into(),
        };
        let sub_path = match (vm.sub_path.as_deref(), vm.sub_path_expr.as_deref()) {
            (Some(sub), _) if !sub.is_empty() => Some(sub.to_string()),
            (_, Some(expr)) if !expr.is_empty() => Some(expand_sub_path(expr, env).map_err(|why| sub_err(expr, &why))?),
            _ => None,
        };
        let host_path = match sub_path {
            None => vol.host_path.clone(),
            Some(sub) => resolve_sub_path(&vol.host_path, &sub).map_err(|why| sub_err(&sub, &why))?,
        };
        let propagation = match vm.mount_propagation.as_deref() {
            Some("HostToContainer") => MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") => MountPropagation::PropagationBidirectional,
            _ => MountPropagation::PropagationPrivate,
        };
        mounts.push(Mount {
            container_path: vm.mount_path.clone(),
            host_path: host_path.to_string_lossy().into_owned(),
            readonly: vm.read_only == Some(true) || vol.read_only,
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// A subPathExpr with `$(VAR)` replaced from the container's environment; a variable
/// that is unset or empty is an error, as upstream has it.
fn expand_sub_path(expr: &str, env: &[KeyValue]) -> Result<String, String> {
    let vars: HashMap<&str, &str> = env.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())).collect();
    let missing = RefCell::new(BTreeSet::new());
    let expanded = expand(expr, |name| match vars.get(name).copied().filter(|v| !v.is_empty()) {
        Some(v) => Some(v),
        None => {
            missing.borrow_mut().insert(name.to_string());
            Some("")
        }
    });
    let missing = missing.into_inner();
    if missing.is_empty() {
        Ok(expanded)
    } else {
        Err(format!("(subPathExpr) has no value for {}", missing.into_iter().collect::<Vec<_>>().join(", ")))
    }
}

fn resolve_sub_path(root: &Path, sub: &str) -> Result<PathBuf, String> {
    let p = Path::new(sub);
    if p.is_absolute() {
        return Err("must be a relative path".into());
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("must not contain '..'".into());
    }
    let joined = root.join(p);
    if std::fs::symlink_metadata(&joined).is_err() {
        // With the volume's own permissions, so a container user who may write the
        // volume may write the subPath too.
        let meta = std::fs::metadata(root).map_err(|e| format!("cannot read its volume {}: {e}", root.display()))?;
        let perms = std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777);
        std::fs::create_dir_all(&joined)
            .and_then(|()| std::fs::set_permissions(&joined, perms))
            .map_err(|e| format!("cannot be created: {e}"))?;
    }
    let real_root = root.canonicalize().map_err(|e| format!("cannot resolve its volume: {e}"))?;
    let real = joined.canonicalize().map_err(|e| format!("cannot be resolved: {e}"))?;
    if !real.starts_with(&real_root) {
        return Err(format!("leads outside its volume (to {})", real.display()));
    }
    Ok(real)
}

/// Unmounts every mount under `pod_dir`'s volumes (tmpfs ones of emptyDir and
/// secrets), then removes the volumes directory. hostPath volumes are not touched.
pub fn cleanup_volumes(pod_dir: &Path) -> Result<()> {
    let dir = pod_dir.join(VOLUMES_DIR);
    if !dir.exists() {
        return Ok(());
    }
    host::unmount_all_under(&dir).map_err(|(path, source)| VolumeError::Unmount { path, source })?;
    std::fs::remove_dir_all(&dir).map_err(|source| VolumeError::Remove { path: dir.clone(), source })
}

#[cfg(test)]
mod tests;
