//! The update pipeline that every write to an existing object shares.

use serde_json::{Value, json};

use super::super::api_server::ApiServer;
use super::super::crd;
use super::super::decode;
use super::super::managed::{self, Walk};
use super::super::meta;
use super::super::object::{Named, has_finalizers, invalid, rv_of, spec_part, str_at, to_bytes, to_obj};
use super::super::request::{Ctx, Subresource};
use super::super::resource_def::ResourceDef;
use super::super::status::{ApiError, ApiResult};
use crate::store;

/// Who owns the fields a write changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ownership {
    /// Recorded after defaulting as an Update by the request's field manager.
    Record,
    /// Server-side apply: `mutate` has already set `metadata.managedFields`.
    Applied,
}

/// How fields of `def`'s objects merge: by the custom resource's schema, or the
/// built-in kind's OpenAPI schema.
pub(super) fn walk_of(def: &ResourceDef) -> Walk<'static> {
    match crd::of(def) {
        Some(s) => Walk::custom(&s.schema),
        None => Walk::builtin(def),
    }
}

/// The subresource a write's fields are recorded under: status (which tracks only
/// `.status`) and scale (whose writes change only the replicas).
pub(super) fn tracked_subresource(sub: Option<Subresource>) -> Option<&'static str> {
    match sub {
        Some(Subresource::Status) => Some("status"),
        Some(Subresource::Scale) => Some("scale"),
        _ => None,
    }
}

/// Whether a kind finalized through `spec.finalizers` (namespaces) still has some.
pub(super) fn spec_finalizers_left(def: &ResourceDef, obj: &Value) -> bool {
    def.strategy.finalized_by_spec()
        && obj.pointer("/spec/finalizers").and_then(|f| f.as_array()).is_some_and(|f| !f.is_empty())
}

impl ApiServer {
    /// The update pipeline shared by PUT and PATCH (and their subresources): read the
    /// current object, let `mutate` produce the desired one, enforce immutable fields and
    /// preconditions, decode, default, validate, then compare-and-swap on the revision.
    /// Races with other writers retry unless the client pinned a resourceVersion.
    pub(super) async fn write_update(
        &self,
        target: Named<'_>,
        ctx: &Ctx,
        mutate: &(dyn Fn(&Value) -> ApiResult<Value> + Send + Sync),
        ownership: Ownership,
    ) -> ApiResult<Value> {
        let Named { def, ns, name, sub } = target;
        let api_version = def.api_version();
        for _attempt in 0..16 {
            let kv = self.get_kv(def, ns, name).await?;
            let cur = to_obj(&kv)?;
            let mut desired = mutate(&cur)?;
            let scale = sub == Some(Subresource::Scale);
            if !scale {
                decode::check_type(def, &mut desired)?;
            }
            let client_rv = rv_of(&desired)?;
            if let Some(rv) = client_rv
                && rv != kv.mod_revision
            {
                return Err(ApiError::conflict(
                    def.plural,
                    def.group,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            if let Some(n) = str_at(&desired, "/metadata/name")
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            if def.namespaced
                && let Some(n) = str_at(&desired, "/metadata/namespace")
                && Some(n) != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let applied_fields = match ownership {
                Ownership::Applied => desired.pointer("/metadata/managedFields").cloned(),
                Ownership::Record => None,
            };
            let finalizers = desired.pointer("/spec/finalizers").cloned().unwrap_or(json!([]));
            let mut new = match sub {
                // pods/binding sets spec.nodeName and the PodScheduled condition together.
                Some(Subresource::Binding) => desired,
                Some(Subresource::Approval) => {
                    let mut n = cur.clone();
                    n["status"]["conditions"] = desired.pointer("/status/conditions").cloned().unwrap_or(Value::Null);
                    super::super::strategy::default_conditions(&mut n, &super::super::meta::now());
                    n
                }
                Some(Subresource::Finalize) => cur.clone(),
                Some(Subresource::Status) => {
                    let mut n = cur.clone();
                    n["status"] = desired.get("status").cloned().unwrap_or(Value::Null);
                    n
                }
                _ => {
                    let mut n = desired;
                    if def.status && !scale {
                        match cur.get("status") {
                            Some(s) => n["status"] = s.clone(),
                            None => {
                                n.as_object_mut().map(|m| m.remove("status"));
                            }
                        }
                    }
                    n
                }
            };
            // Identity and system fields are the server's, whatever the client sent.
            for k in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "name",
                "namespace",
            ] {
                match cur["metadata"].get(k) {
                    Some(v) => new["metadata"][k] = v.clone(),
                    None => {
                        new["metadata"].as_object_mut().map(|m| m.remove(k));
                    }
                }
            }
            let sent_fields = new["metadata"].as_object_mut().and_then(|m| m.remove("managedFields"));
            if let Some(f) = applied_fields {
                new["metadata"]["managedFields"] = f;
            }
            def.strategy.prepare_for_update(&cur, &mut new).map_err(|c| invalid(def, &cur, c))?;
            if sub == Some(Subresource::Finalize) {
                new["spec"]["finalizers"] = finalizers;
            }
            let mut new = decode::decode_update(def, new, ctx.strict())?;
            if ownership == Ownership::Record {
                let now = meta::now();
                let w = managed::Write {
                    manager: ctx.field_manager(),
                    api_version: &api_version,
                    subresource: tracked_subresource(sub),
                    has_status: def.status,
                    now: &now,
                };
                let entries = match sent_fields {
                    Some(f) if sub.is_none() && managed::is_reset(&f) => Vec::new(),
                    sent => {
                        // Entries the client changed replace the stored ones (that is how
                        // kubectl migrates client-side apply); absent, empty or invalid
                        // ones do not, so clients unaware of them cannot drop them.
                        let sent = sent
                            .filter(|f| sub.is_none() && f.as_array().is_some_and(|l| !l.is_empty()))
                            .and_then(|f| managed::decode(&serde_json::json!({"metadata": {"managedFields": f}})));
                        let base = sent.or_else(|| managed::decode(&cur)).unwrap_or_default();
                        managed::record_update(base, &cur, &new, &walk_of(def), &w)
                    }
                };
                managed::encode(&mut new, entries);
            }
            if def.has_spec() && spec_part(&new) != spec_part(&cur) {
                let g = cur.pointer("/metadata/generation").and_then(|g| g.as_i64()).unwrap_or(0);
                new["metadata"]["generation"] = json!(g + 1);
            }
            let terminating = new.pointer("/metadata/deletionTimestamp").is_some();
            let finalizers_left = has_finalizers(&new) || spec_finalizers_left(def, &new);
            let grace_left =
                new.pointer("/metadata/deletionGracePeriodSeconds").and_then(|g| g.as_i64()).unwrap_or(0) > 0;
            if terminating && !finalizers_left && !grace_left && !ctx.dry_run() {
                // The last finalizer is gone: the deletion that was asked for completes now.
                match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok(d) => {
                        tracing::debug!(
                            kind = def.kind,
                            namespace = ns.unwrap_or(""),
                            name,
                            rv = d.mod_revision,
                            "deleted after finalizers"
                        );
                        return Ok(new);
                    }
                    Err(store::Error::Conflict { .. }) if client_rv.is_none() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            // Quota admission of what an update adds: only Services and claims grow on
            // update (upstream's evaluators). A charge whose write then conflicts is
            // charged again on the retry; the quota controller's recount returns it.
            if sub.is_none()
                && matches!(def.kind, "Service" | "PersistentVolumeClaim")
                && let Some(ns) = ns.filter(|_| def.namespaced)
            {
                self.admit_quota(def, ns, &new, Some(&cur), ctx.dry_run()).await?;
            }
            let bytes = to_bytes(&new);
            if bytes == to_bytes(&cur) || ctx.dry_run() {
                // Unchanged objects are not rewritten, so watchers see no empty MODIFIED.
                new["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                return Ok(new);
            }
            match self.store.update(&kv.key, bytes, Some(kv.mod_revision)).await {
                Ok(kv) => {
                    tracing::debug!(kind = def.kind, namespace = ns.unwrap_or(""), name, subresource = sub.map_or("", Subresource::as_str), rv = kv.mod_revision, user = %ctx.user.name, "updated");
                    return to_obj(&kv);
                }
                Err(store::Error::Conflict { .. }) if client_rv.is_none() => continue,
                Err(store::Error::Conflict { .. }) => {
                    return Err(ApiError::conflict(
                        def.plural,
                        def.group,
                        name,
                        "the object has been modified; please apply your changes to the latest version and try again",
                    ));
                }
                Err(store::Error::NotFound { .. }) => return Err(ApiError::not_found(def.plural, def.group, name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(def.plural, def.group, name, "too many concurrent writers; try again"))
    }
}
