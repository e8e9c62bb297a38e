//! `POST pods/<name>/eviction` (policy/v1 Eviction, what `kubectl drain` sends): a
//! delete of the pod that first asks the PodDisruptionBudget selecting it. An allowed
//! eviction takes one disruption from the budget's status (`disruptionsAllowed`, and
//! the pod noted in `disruptedPods` until the disruption controller sees it go) before
//! the pod is deleted with the eviction's `deleteOptions`; a refused one is a 429.
//!
//! It must not compute budgets: `status.disruptionsAllowed` is the disruption
//! controller's, this only spends it.

use http::StatusCode;
use serde_json::{Value, json};
use skiff_api::selector::LabelSelector;

use super::super::api_server::ApiServer;
use super::super::decode;
use super::super::meta;
use super::super::object::{str_at, to_bytes, to_obj};
use super::super::request::{Ctx, Resp, json_response};
use super::super::resource_def::ResourceDef;
use super::super::resources::by_kind;
use super::super::status::{ApiError, ApiResult, Cause};
use crate::store;

/// Upstream's message for an eviction a budget refuses.
const VIOLATES: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// Whether a pod's eviction needs no budget: it is done (Succeeded/Failed), not yet
/// running (Pending), or already being deleted. Upstream lets these go at once.
fn ignores_budget(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_some()
        || matches!(str_at(pod, "/status/phase"), Some("Succeeded" | "Failed" | "Pending") | None)
}

/// The budget after evicting `pod` under it, or the refusal.
pub(crate) fn spend(pdb: &Value, pod: &str) -> ApiResult<Value> {
    let name = str_at(pdb, "/metadata/name").unwrap_or("");
    let refuse = |why: String| {
        let mut e = ApiError::too_many_requests(VIOLATES);
        e.details = Some(Box::new(("pods".into(), pod.into(), Some(String::new()))));
        e.causes.push(Cause { reason: "DisruptionBudget", field: String::new(), message: why });
        e
    };
    let observed = pdb.pointer("/status/observedGeneration").and_then(Value::as_i64).unwrap_or(0);
    let generation = pdb.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
    if observed < generation {
        return Err(refuse(format!("The disruption budget {name} is still being processed by the server.")));
    }
    let allowed = pdb.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0);
    if allowed <= 0 {
        let desired = pdb.pointer("/status/desiredHealthy").and_then(Value::as_i64).unwrap_or(0);
        let current = pdb.pointer("/status/currentHealthy").and_then(Value::as_i64).unwrap_or(0);
        return Err(refuse(format!(
            "The disruption budget {name} needs {desired} healthy pods and has {current} currently"
        )));
    }
    let mut out = pdb.clone();
    out["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if !out["status"]["disruptedPods"].is_object() {
        out["status"]["disruptedPods"] = json!({});
    }
    out["status"]["disruptedPods"][pod] = json!(meta::now());
    Ok(out)
}

impl ApiServer {
    pub(crate) async fn evict(&self, def: &ResourceDef, ns: &str, name: &str, ctx: &Ctx) -> ApiResult<Resp> {
        let eviction = decode::decode_body(&ctx.content_type, &ctx.body)?;
        if let Some(k) = eviction.get("kind").and_then(Value::as_str)
            && k != "Eviction"
        {
            return Err(ApiError::bad_request(format!("expected kind Eviction, got {k}")));
        }
        if let Some(n) = str_at(&eviction, "/metadata/name")
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "name in URL does not match name in Eviction object: {name} vs {n}"
            )));
        }
        let pod = to_obj(&self.get_kv(def, Some(ns), name).await?)?;
        if !ignores_budget(&pod) {
            self.spend_budget(ns, name, &pod).await?;
        }
        let options = eviction.get("deleteOptions").cloned().unwrap_or(json!({}));
        let delete_ctx = Ctx {
            query: ctx.query.clone(),
            accept: ctx.accept.clone(),
            content_type: "application/json".into(),
            body: to_bytes(&options),
            user: ctx.user.clone(),
            user_agent: ctx.user_agent.clone(),
        };
        self.delete(def, Some(ns), name, &delete_ctx).await?;
        tracing::info!(namespace = ns, pod = name, user = %ctx.user.name, "pod evicted");
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    /// Takes one disruption from the budget selecting `pod`, if one does
    /// (compare-and-swap on the budget, retried on races).
    async fn spend_budget(&self, ns: &str, name: &str, pod: &Value) -> ApiResult<()> {
        let pdb_def =
            by_kind("PodDisruptionBudget").ok_or_else(|| ApiError::internal("no PodDisruptionBudget kind"))?;
        for _ in 0..16 {
            let page = self.store.list(&pdb_def.ns_prefix(Some(ns)), None, 0).await?;
            let mut budgets = Vec::new();
            for kv in page.kvs {
                let pdb = to_obj(&kv)?;
                let selects = pdb
                    .pointer("/spec/selector")
                    .and_then(|s| LabelSelector::from_json(s).ok())
                    .is_some_and(|s| !s.is_empty() && s.matches_object(pod));
                if selects {
                    budgets.push((kv, pdb));
                }
            }
            let (kv, pdb) = match budgets.len() {
                0 => return Ok(()),
                1 => budgets.remove(0),
                _ => {
                    return Err(ApiError::internal(
                        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    ));
                }
            };
            let spent = spend(&pdb, name)?;
            match self.store.update(&kv.key, to_bytes(&spent), Some(kv.mod_revision)).await {
                Ok(_) => return Ok(()),
                Err(store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict("pods", "", name, "too many concurrent evictions; try again"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(allowed: i64) -> Value {
        json!({"metadata": {"name": "web", "generation": 1},
               "status": {"observedGeneration": 1, "disruptionsAllowed": allowed, "desiredHealthy": 2, "currentHealthy": 2}})
    }

    #[test]
    fn an_allowed_eviction_spends_one_disruption() {
        let out = spend(&pdb(1), "web-1").unwrap();
        assert_eq!(out["status"]["disruptionsAllowed"], 0);
        assert!(out["status"]["disruptedPods"]["web-1"].is_string());
    }

    #[test]
    fn a_spent_budget_refuses_with_429() {
        let e = spend(&pdb(0), "web-1").unwrap_err();
        assert_eq!(e.code, 429);
        assert_eq!(e.message, VIOLATES);
        assert_eq!(e.causes[0].reason, "DisruptionBudget");
        assert_eq!(e.causes[0].message, "The disruption budget web needs 2 healthy pods and has 2 currently");
        let mut stale = pdb(1);
        stale["metadata"]["generation"] = json!(2);
        assert_eq!(spend(&stale, "web-1").unwrap_err().code, 429);
    }
}
