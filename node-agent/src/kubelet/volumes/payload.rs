//! What the files of a configMap, secret, downwardAPI or projected volume contain:
//! each source turned into a [`Payload`] (path → bytes and mode), as upstream does it
//! (all keys when no `items`, else each item's key at its path; a missing optional
//! object gives no files; a missing key is an error unless the source is optional).
//!
//! It reads objects through [`ObjectLookup`] and must not write files: that is
//! `atomic`'s job.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccountTokenProjection};

use super::super::env::{EnvContext, field_value, resource_value};
use super::super::lookup::{ObjectLookup, TokenSpec};
use super::atomic::{FileProjection, Payload};
use super::{Result, VolumeError};

/// Upstream's default mode of every file in these volumes (secrets included).
pub const DEFAULT_MODE: u32 = 0o644;
/// The default lifetime of a projected token.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

pub fn mode_of(m: Option<i32>, default: u32) -> u32 {
    m.map(|m| (m as u32) & 0o7777).unwrap_or(default)
}

/// The keys and bytes of one ConfigMap or Secret; `data` is `None` when it does not exist.
pub struct Source {
    /// "configmap" or "secret", as upstream's messages say it.
    kind: &'static str,
    name: String,
    data: Option<BTreeMap<String, Vec<u8>>>,
}

pub async fn config_map_source<L: ObjectLookup>(lookup: &L, ns: &str, name: &str) -> Result<Source> {
    let data = lookup.config_map(ns, name).await?.map(|cm| {
        let mut d: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        d.extend(cm.binary_data.into_iter().flatten().map(|(k, v)| (k, v.0)));
        d.extend(cm.data.into_iter().flatten().map(|(k, v)| (k, v.into_bytes())));
        d
    });
    Ok(Source { kind: "configmap", name: name.into(), data })
}

pub async fn secret_source<L: ObjectLookup>(lookup: &L, ns: &str, name: &str) -> Result<Source> {
    let data = lookup.secret(ns, name).await?.map(|s| {
        let mut d: BTreeMap<String, Vec<u8>> = s.data.into_iter().flatten().map(|(k, v)| (k, v.0)).collect();
        // stringData is write-only in the API, but a stored object from a lax server may keep it.
        d.extend(s.string_data.into_iter().flatten().map(|(k, v)| (k, v.into_bytes())));
        d
    });
    Ok(Source { kind: "secret", name: name.into(), data })
}

/// Adds `source`'s keys (all, or `items`) to `out`.
pub fn project(
    volume: &str,
    source: Source,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: u32,
    out: &mut Payload,
) -> Result<()> {
    let Some(data) = source.data else {
        if optional {
            return Ok(());
        }
        return Err(VolumeError::NotFound { volume: volume.into(), kind: source.kind, name: source.name });
    };
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                out.insert(k, FileProjection { data: v, mode: default_mode });
            }
        }
        Some(items) => {
            for item in items {
                let Some(v) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(VolumeError::KeyMissing {
                        volume: volume.into(),
                        kind: source.kind,
                        key: item.key.clone(),
                    });
                };
                out.insert(
                    item.path.clone(),
                    FileProjection { data: v.clone(), mode: mode_of(item.mode, default_mode) },
                );
            }
        }
    }
    Ok(())
}

/// downwardAPI items: fieldRef (metadata.*, and what env allows) and resourceFieldRef
/// (which must name its container).
pub fn downward_api(
    pod: &Pod,
    volume: &str,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    ctx: &EnvContext,
    out: &mut Payload,
) -> Result<()> {
    for item in items {
        let what = format!("volume {volume:?} item {:?}", item.path);
        let value = if let Some(f) = &item.field_ref {
            field_value(pod, f, ctx).map_err(|path| VolumeError::Field { what: what.clone(), path })?
        } else if let Some(r) = &item.resource_field_ref {
            if r.container_name.as_deref().unwrap_or("").is_empty() {
                return Err(VolumeError::Field {
                    what,
                    path: format!("resourceFieldRef {} without containerName", r.resource),
                });
            }
            resource_value(pod, &Container::default(), r, &ctx.node_allocatable, &what)?
        } else {
            String::new()
        };
        out.insert(
            item.path.clone(),
            FileProjection { data: value.into_bytes(), mode: mode_of(item.mode, default_mode) },
        );
    }
    Ok(())
}

/// A projected ServiceAccount token, bound to the pod.
pub async fn service_account_token<L: ObjectLookup>(
    lookup: &L,
    pod: &Pod,
    source: &ServiceAccountTokenProjection,
    default_mode: u32,
    out: &mut Payload,
) -> Result<()> {
    let spec = pod.spec.as_ref();
    let service_account = spec
        .and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let req = TokenSpec {
        namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        service_account,
        pod_name: pod.metadata.name.clone().unwrap_or_default(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        audiences: source.audience.iter().filter(|a| !a.is_empty()).cloned().collect(),
        expiration_seconds: source.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
    };
    let token = lookup.service_account_token(&req).await?;
    out.insert(source.path.clone(), FileProjection { data: token.token.into_bytes(), mode: default_mode });
    Ok(())
}
