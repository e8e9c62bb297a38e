//! DELETE and DELETE collection, applying the deletion policy (`deletion`):
//! preconditions, the propagation finalizer, graceful deletion and finalizers.

use serde_json::{Value, json};

use super::super::api_server::ApiServer;
use super::super::deletion::{RACED, deleted_response, policy_finalizer, propagation_policy};
use super::super::meta;
use super::super::object::{has_finalizers, str_at, to_bytes, to_obj};
use super::super::request::{Ctx, Resp, ok};
use super::super::resource_def::ResourceDef;
use super::super::selectors::Selectors;
use super::super::status::{ApiError, ApiResult};
use super::write::spec_finalizers_left;
use crate::store::{self, KeyValue};
use skiff_api::finalizers;

impl ApiServer {
    /// Adds `finalizer` to the stored object (compare-and-swap on its revision) so the
    /// deletion that follows waits for the garbage collector.
    async fn add_finalizer(
        &self,
        def: &ResourceDef,
        kv: &KeyValue,
        cur: &Value,
        finalizer: &str,
    ) -> ApiResult<(KeyValue, Value)> {
        let mut o = cur.clone();
        let list = o["metadata"].as_object_mut().map(|m| m.entry("finalizers").or_insert(json!([])));
        if let Some(Value::Array(fs)) = list {
            fs.push(json!(finalizer));
        }
        let name = str_at(cur, "/metadata/name").unwrap_or("");
        match self.store.update(&kv.key, to_bytes(&o), Some(kv.mod_revision)).await {
            Ok(kv) => {
                let obj = to_obj(&kv)?;
                Ok((kv, obj))
            }
            Err(store::Error::Conflict { .. }) => Err(ApiError::conflict(def.plural, def.group, name, RACED)),
            Err(e) => Err(e.into()),
        }
    }

    /// Finalizers and graceful deletion: instead of removing the object, stamp
    /// `deletionTimestamp` and let the finalizer owners (or the kubelet, for pods bound to
    /// a node: the strategy's `deletion_grace`) finish. `None` means delete now.
    async fn begin_graceful_delete(
        &self,
        def: &ResourceDef,
        kv: &KeyValue,
        cur: &Value,
        grace: Option<i64>,
    ) -> ApiResult<Option<Value>> {
        let has_finalizers = has_finalizers(cur);
        let pod_grace = def.strategy.deletion_grace(cur, grace);
        if cur.pointer("/metadata/deletionTimestamp").is_some() {
            // Already terminating: the kubelet's final DELETE (grace 0) removes the object
            // once no finalizers remain; any other DELETE changes nothing.
            return Ok(if grace == Some(0) && !has_finalizers { None } else { Some(cur.clone()) });
        }
        if !has_finalizers && pod_grace.is_none() {
            return Ok(None);
        }
        let mut o = cur.clone();
        let g = pod_grace.unwrap_or(0);
        o["metadata"]["deletionTimestamp"] = json!(meta::format_time(meta::unix_now() + g));
        o["metadata"]["deletionGracePeriodSeconds"] = json!(g);
        let name = str_at(cur, "/metadata/name").unwrap_or("");
        match self.store.update(&kv.key, to_bytes(&o), Some(kv.mod_revision)).await {
            Ok(kv) => {
                tracing::debug!(kind = def.kind, name, grace = g, finalizers = has_finalizers, "deletion started");
                Ok(Some(to_obj(&kv)?))
            }
            Err(store::Error::Conflict { .. }) => Err(ApiError::conflict(def.plural, def.group, name, RACED)),
            Err(e) => Err(e.into()),
        }
    }

    /// Deleting a namespace marks it Terminating (`deletionTimestamp`, `status.phase`)
    /// and leaves it to the namespace controller, which removes its content and then
    /// clears `spec.finalizers` (`finalize`), which deletes it. `None` when nothing holds
    /// it (no finalizers of either kind): delete now. A namespace created without
    /// `spec.finalizers` gets `kubernetes`, so its content is never orphaned.
    async fn begin_namespace_termination(
        &self,
        def: &ResourceDef,
        kv: &KeyValue,
        cur: &Value,
    ) -> ApiResult<Option<Value>> {
        let name = str_at(cur, "/metadata/name").unwrap_or("");
        if cur.pointer("/metadata/deletionTimestamp").is_some() {
            if spec_finalizers_left(def, cur) {
                return Err(ApiError::conflict(
                    def.plural,
                    def.group,
                    name,
                    "The system is ensuring all content is removed from this namespace.  Upon completion, \
                     this namespace will automatically be purged by the system.",
                ));
            }
            return Ok(if has_finalizers(cur) { Some(cur.clone()) } else { None });
        }
        let mut o = cur.clone();
        if o.pointer("/spec/finalizers").is_none_or(|f| f.is_null()) {
            o["spec"]["finalizers"] = json!([finalizers::KUBERNETES]);
        }
        if !spec_finalizers_left(def, &o) && !has_finalizers(&o) {
            return Ok(None);
        }
        o["metadata"]["deletionTimestamp"] = json!(meta::now());
        o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        o["status"]["phase"] = json!("Terminating");
        match self.store.update(&kv.key, to_bytes(&o), Some(kv.mod_revision)).await {
            Ok(kv) => {
                tracing::debug!(kind = def.kind, name, "namespace terminating");
                Ok(Some(to_obj(&kv)?))
            }
            Err(store::Error::Conflict { .. }) => Err(ApiError::conflict(def.plural, def.group, name, RACED)),
            Err(e) => Err(e.into()),
        }
    }

    /// DELETE. A concurrent write by someone else (a controller updating status, say) is
    /// no reason to fail a delete that named no precondition: like the real API server's
    /// update loop, it is tried again on the newer object. A stated precondition that
    /// fails is still a 409.
    pub(crate) async fn delete(&self, def: &ResourceDef, ns: Option<&str>, name: &str, ctx: &Ctx) -> ApiResult<Resp> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.delete_attempt(def, ns, name, ctx).await {
                Err(e) if attempts < 16 && e.code == 409 && e.message.ends_with(RACED) => continue,
                r => return r,
            }
        }
    }

    async fn delete_attempt(&self, def: &ResourceDef, ns: Option<&str>, name: &str, ctx: &Ctx) -> ApiResult<Resp> {
        let opts: Value = if ctx.body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&ctx.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
        };
        if def.strategy.undeletable(name) {
            return Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: this {} may not be deleted",
                def.plural, def.singular
            )));
        }
        let kv = self.get_kv(def, ns, name).await?;
        let cur = to_obj(&kv)?;
        if let Some(uid) = str_at(&opts, "/preconditions/uid")
            && Some(uid) != str_at(&cur, "/metadata/uid")
        {
            return Err(ApiError::conflict(
                def.plural,
                def.group,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    str_at(&cur, "/metadata/uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = str_at(&opts, "/preconditions/resourceVersion")
            && rv != kv.mod_revision.to_string()
        {
            return Err(ApiError::conflict(
                def.plural,
                def.group,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    kv.mod_revision
                ),
            ));
        }
        if ctx.dry_run() {
            return ok(&cur);
        }
        let grace: Option<i64> = match ctx.q("gracePeriodSeconds") {
            Some(g) => Some(g.parse().map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?),
            None => opts.get("gracePeriodSeconds").and_then(|g| g.as_i64()),
        };
        if def.strategy.finalized_by_spec()
            && let Some(obj) = self.begin_namespace_termination(def, &kv, &cur).await?
        {
            return ok(&obj);
        }
        let policy = propagation_policy(ctx, &opts)?;
        let (kv, cur) = match policy_finalizer(def, &cur, policy) {
            Some(f) => self.add_finalizer(def, &kv, &cur, f).await?,
            None => (kv, cur),
        };
        if let Some(obj) = self.begin_graceful_delete(def, &kv, &cur, grace).await? {
            return ok(&obj);
        }
        match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
            Ok(d) => {
                tracing::debug!(kind = def.kind, namespace = ns.unwrap_or(""), name, rv = d.mod_revision, user = %ctx.user.name, "deleted");
                ok(&deleted_response(def, cur))
            }
            Err(store::Error::Conflict { .. }) => Err(ApiError::conflict(def.plural, def.group, name, RACED)),
            Err(store::Error::NotFound { .. }) => Err(ApiError::not_found(def.plural, def.group, name)),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn delete_collection(&self, def: &ResourceDef, ns: Option<&str>, ctx: &Ctx) -> ApiResult<Resp> {
        let sel = Selectors::from_ctx(def, ctx)?;
        let page = self.store.list(&def.ns_prefix(ns), None, 0).await?;
        let mut items = Vec::new();
        for kv in &page.kvs {
            let obj = to_obj(kv)?;
            if !sel.matches(def, &obj) {
                continue;
            }
            if !ctx.dry_run() {
                match self.store.delete(&kv.key, None).await {
                    Ok(_) | Err(store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            items.push(obj);
        }
        ok(&json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(),
                   "metadata": {"resourceVersion": page.revision.to_string()}, "items": items}))
    }
}
