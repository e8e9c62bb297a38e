//! Server-side apply (`PATCH` with `application/apply-patch+yaml`): the applied
//! configuration is merged into the live object by the field-ownership rules of
//! `managed` inside the shared update pipeline (`write`), or, when there is no object
//! yet, becomes a new one through `create`.
//!
//! An apply to the `scale` subresource applies the Scale's replicas to the object
//! (`subresources::scale_as_config`); its fields are recorded with `subresource: scale`.
//!
//! It must not merge or track fields itself; that is `managed`'s.

use serde_json::Value;

use super::super::api_server::ApiServer;
use super::super::decode;
use super::super::managed;
use super::super::meta;
use super::super::object::{Named, str_at};
use super::super::request::{Ctx, Resp, Subresource};
use super::super::status::{ApiError, ApiResult, Cause};
use super::subresources::scale_as_config;
use super::write::{Ownership, tracked_subresource, walk_of};

/// The client-side apply's record of what it applied, as a JSON pointer.
const LAST_APPLIED: &str = "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration";

impl ApiServer {
    pub(super) async fn apply(&self, target: Named<'_>, ctx: &Ctx, mut config: Value) -> ApiResult<Resp> {
        let Named { def, ns, name, sub } = target;
        let Some(manager) = ctx.q("fieldManager") else {
            return Err(ApiError::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                vec![Cause {
                    reason: "FieldValueRequired",
                    field: "fieldManager".into(),
                    message: "Required value: is required for apply patch".into(),
                }],
            ));
        };
        if !matches!(sub, None | Some(Subresource::Status | Subresource::Scale)) {
            return Err(ApiError::unsupported_media_type("application/apply-patch+yaml"));
        }
        let force = ctx.q("force") == Some("true");
        let scale = sub == Some(Subresource::Scale);
        if !scale {
            decode::check_type(def, &mut config)?;
        }
        if config.pointer("/metadata/managedFields").is_some_and(|f| !f.is_null()) {
            return Err(ApiError::bad_request("metadata.managedFields must be nil in an applied configuration"));
        }
        match str_at(&config, "/metadata/name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => config["metadata"]["name"] = Value::from(name),
        }
        if scale {
            // Applied to the object as its replicas, recorded with `subresource: scale`.
            config = scale_as_config(def, &config)?;
        }
        let pinned = str_at(&config, "/metadata/resourceVersion").is_some();
        let walk = walk_of(def);
        let api_version = def.api_version();
        let now = meta::now();
        let w = managed::Write {
            manager,
            api_version: &api_version,
            subresource: tracked_subresource(sub),
            has_status: def.status,
            now: &now,
        };
        let mutate = |cur: &Value| -> ApiResult<Value> {
            let mut live = cur.clone();
            if let Some(m) = live["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
            let entries = match managed::decode(cur) {
                Some(e) if !e.is_empty() => e,
                // An object nobody's writes were recorded for (stored by the server
                // itself, or before fields were tracked): as upstream, its fields are
                // "before-first-apply"'s, so an apply changing them conflicts.
                _ => managed::record_create(
                    &live,
                    &walk,
                    &managed::Write {
                        manager: "before-first-apply",
                        subresource: if scale { None } else { w.subresource },
                        ..w
                    },
                ),
            };
            let last_applied = live.pointer(LAST_APPLIED).and_then(Value::as_str).map(String::from);
            // kubectl's own server-side apply of an object it applied client-side may
            // change what its last-applied configuration set, as upstream allows.
            let upgrade = (manager == "kubectl" && sub.is_none())
                .then_some(last_applied.as_deref())
                .flatten()
                .and_then(|l| serde_json::from_str::<Value>(l).ok())
                .map(|l| w.tracked(managed::field_set(&l, &walk)));
            let how = match (&upgrade, force) {
                (_, true) => managed::Force::Yes,
                (Some(allowed), false) => managed::Force::Within(allowed),
                (None, false) => managed::Force::No,
            };
            let mut out = managed::apply(&live, entries, &config, &walk, &w, how)?;
            if manager == "kubectl" && sub.is_none() && last_applied.is_some() {
                // Keeps a later client-side apply working from what was applied now.
                let mut applied = config.clone();
                if let Some(a) = applied["metadata"].get_mut("annotations").and_then(Value::as_object_mut) {
                    a.remove("kubectl.kubernetes.io/last-applied-configuration");
                }
                let text = format!("{}\n", serde_json::to_string(&applied).unwrap_or_default());
                out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = Value::from(text);
            }
            // As for other patches, only a resourceVersion the configuration names is a
            // precondition; otherwise a race with another writer is retried.
            if !pinned && let Some(m) = out["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            Ok(out)
        };
        for _ in 0..3 {
            match self.write_update(target, ctx, &mutate, Ownership::Applied).await {
                Err(e) if e.code == 404 && e.details.is_some() && sub.is_none() && !pinned => {
                    let mut live =
                        serde_json::json!({"apiVersion": api_version, "kind": def.kind, "metadata": {"name": name}});
                    if def.namespaced
                        && let Some(ns) = ns
                    {
                        live["metadata"]["namespace"] = Value::from(ns);
                    }
                    let how = if force { managed::Force::Yes } else { managed::Force::No };
                    let new = managed::apply(&live, Vec::new(), &config, &walk, &w, how)?;
                    match self.create_from(def, ns, ctx, Some(new)).await {
                        // Created by someone else meanwhile: apply to theirs.
                        Err(e) if e.code == 409 && e.reason == "AlreadyExists" => continue,
                        other => return other,
                    }
                }
                other => return Self::finish_write(def, sub, other?),
            }
        }
        Err(ApiError::conflict(def.plural, def.group, name, "too many concurrent writers; try again"))
    }
}
