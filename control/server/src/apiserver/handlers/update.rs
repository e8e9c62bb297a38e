//! PUT and PATCH of an object or its `status`/`scale` subresource: each turns the
//! request into a `mutate` for the shared update pipeline (`write`).

use serde_json::Value;

use super::super::api_server::ApiServer;
use super::super::crd;
use super::super::decode;
use super::super::object::Named;
use super::super::request::{Ctx, Resp, Subresource, ok};
use super::super::resource_def::ResourceDef;
use super::super::status::{ApiError, ApiResult};
use super::subresources::{apply_scale, scale_of};
use super::write::Ownership;

impl ApiServer {
    /// What a write returns: the object, or its Scale for the scale subresource.
    pub(super) fn finish_write(def: &ResourceDef, sub: Option<Subresource>, obj: Value) -> ApiResult<Resp> {
        if sub == Some(Subresource::Scale) { ok(&scale_of(def, &obj)) } else { ok(&obj) }
    }

    pub(crate) async fn update(&self, target: Named<'_>, ctx: &Ctx) -> ApiResult<Resp> {
        let Named { def, sub, .. } = target;
        let body = decode::decode_body(&ctx.content_type, &ctx.body)?;
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let mutate = |cur: &Value| -> ApiResult<Value> {
            if sub == Some(Subresource::Scale) { apply_scale(def, cur, &body) } else { Ok(body.clone()) }
        };
        let obj = self.write_update(target, ctx, &mutate, Ownership::Record).await?;
        Self::finish_write(def, sub, obj)
    }

    pub(crate) async fn patch(&self, target: Named<'_>, ctx: &Ctx) -> ApiResult<Resp> {
        let Named { def, name, sub, .. } = target;
        let (kind, p) = decode::decode_patch(&ctx.content_type, &ctx.body)?;
        if kind == decode::PatchKind::Apply {
            return self.apply(target, ctx, p).await;
        }
        if ctx.q("force").is_some() {
            return Err(ApiError::bad_request("force may only be set on apply requests"));
        }
        if kind == decode::PatchKind::StrategicMerge && crd::is_custom(def) {
            // As upstream: custom resources have no patch strategies to merge by.
            return Err(ApiError::unsupported_media_type("application/strategic-merge-patch+json"));
        }
        let apply = |target: &Value| decode::apply_patch(kind, &p, target, def, name);
        let mutate = |cur: &Value| -> ApiResult<Value> {
            if sub == Some(Subresource::Scale) {
                let patched = apply(&scale_of(def, cur))?;
                // The Scale carries the object's resourceVersion; an unchanged one is no precondition.
                apply_scale(def, cur, &patched)
            } else {
                let mut patched = apply(cur)?;
                // The resourceVersion the patch was applied to is no precondition: only one
                // the patch itself sets is. Otherwise a patch racing a controller's write
                // would fail with 409 instead of being applied to the newer object.
                if patched.pointer("/metadata/resourceVersion") == cur.pointer("/metadata/resourceVersion")
                    && let Some(m) = patched.get_mut("metadata").and_then(|m| m.as_object_mut())
                {
                    m.remove("resourceVersion");
                }
                Ok(patched)
            }
        };
        let obj = self.write_update(target, ctx, &mutate, Ownership::Record).await?;
        Self::finish_write(def, sub, obj)
    }
}
