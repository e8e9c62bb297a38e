//! The deletion policy: how a DELETE treats dependents (propagation), which finalizer
//! it adds for the garbage collector, and what a completed DELETE returns. Graceful
//! deletion per kind is the strategies' (`deletion_grace`).
//!
//! Pure decisions; the handler in `handlers::delete` applies them to the store.

use serde_json::{Value, json};
use skiff_api::finalizers;

use super::request::Ctx;
use super::resource_def::ResourceDef;
use super::status::{ApiError, ApiResult};

/// The message of a 409 caused by a concurrent write rather than by a client's
/// precondition; `delete` retries these.
pub(crate) const RACED: &str = "the object has been modified; please retry";

/// What a completed DELETE returns. As in Kubernetes, some kinds (pods, services,
/// namespaces: see their strategies) return the deleted object and every other kind a Success Status naming it: typed
/// clients (the Python client's `V1Status`, client-go's) decode the response by kind.
pub(crate) fn deleted_response(def: &ResourceDef, obj: Value) -> Value {
    if def.strategy.delete_returns_object() {
        return obj;
    }
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": obj["metadata"]["name"], "group": def.group, "kind": def.plural,
                    "uid": obj["metadata"]["uid"]},
    })
}

/// How a DELETE treats the object's dependents (DeleteOptions.propagationPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// Delete the owner now; the garbage collector removes dependents afterwards.
    Background,
    /// The owner stays (terminating) until dependents that block it are gone.
    Foreground,
    /// Dependents lose their ownerReference and stay.
    Orphan,
}

/// The policy from the query (`propagationPolicy`, legacy `orphanDependents`) or the
/// DeleteOptions body; Background when neither says, as for every kind kubectl deletes.
pub(crate) fn propagation_policy(ctx: &Ctx, opts: &Value) -> ApiResult<Propagation> {
    let named = ctx.q("propagationPolicy").or_else(|| opts.get("propagationPolicy").and_then(|p| p.as_str()));
    let orphan = match ctx.q("orphanDependents") {
        Some(v) => Some(v == "true"),
        None => opts.get("orphanDependents").and_then(|o| o.as_bool()),
    };
    match (named, orphan) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "orphanDependents and propagationPolicy may not both be set; use propagationPolicy",
        )),
        (Some("Background"), None) | (None, None | Some(false)) => Ok(Propagation::Background),
        (Some("Foreground"), None) => Ok(Propagation::Foreground),
        (Some("Orphan"), None) | (None, Some(true)) => Ok(Propagation::Orphan),
        (Some(other), None) => Err(ApiError::bad_request(format!(
            "unsupported propagationPolicy {other:?}: must be Background, Foreground or Orphan"
        ))),
    }
}

/// The finalizer a Foreground or Orphan delete must add before the object can go,
/// or `None` when nothing needs adding. Only kinds the garbage collector watches get
/// one (anything else would wait forever), and an object already being deleted keeps
/// the policy it was deleted with.
pub(crate) fn policy_finalizer(def: &ResourceDef, cur: &Value, policy: Propagation) -> Option<&'static str> {
    let f = match policy {
        Propagation::Background => return None,
        Propagation::Foreground => finalizers::FOREGROUND_DELETION,
        Propagation::Orphan => finalizers::ORPHAN,
    };
    if !finalizers::GARBAGE_COLLECTED_KINDS.contains(&def.kind) || cur.pointer("/metadata/deletionTimestamp").is_some()
    {
        return None;
    }
    let present = cur
        .pointer("/metadata/finalizers")
        .and_then(|f| f.as_array())
        .is_some_and(|fs| fs.iter().any(|x| x.as_str() == Some(f)));
    (!present).then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;

    use crate::apiserver::resources::by_kind;

    fn ctx(query: &[(&str, &str)]) -> Ctx {
        Ctx {
            query: query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            accept: String::new(),
            content_type: String::new(),
            body: Bytes::new(),
            user: crate::auth::UserInfo { name: "test".into(), groups: vec![] },
            user_agent: String::new(),
        }
    }

    #[test]
    fn propagation_policy_from_query_or_body() {
        let none = json!({});
        assert_eq!(propagation_policy(&ctx(&[]), &none).unwrap(), Propagation::Background);
        let fg = json!({"propagationPolicy": "Foreground"});
        assert_eq!(propagation_policy(&ctx(&[]), &fg).unwrap(), Propagation::Foreground);
        let q = ctx(&[("propagationPolicy", "Orphan")]);
        assert_eq!(propagation_policy(&q, &none).unwrap(), Propagation::Orphan);
        let legacy = json!({"orphanDependents": true});
        assert_eq!(propagation_policy(&ctx(&[]), &legacy).unwrap(), Propagation::Orphan);
        assert!(propagation_policy(&ctx(&[("propagationPolicy", "Sideways")]), &none).is_err());
        assert!(propagation_policy(&q, &legacy).is_err());
    }

    #[test]
    fn finalizers_only_for_collected_kinds_and_live_objects() {
        let rs = by_kind("ReplicaSet").unwrap();
        let live = json!({"metadata": {"name": "x"}});
        assert_eq!(policy_finalizer(rs, &live, Propagation::Foreground), Some("foregroundDeletion"));
        assert_eq!(policy_finalizer(rs, &live, Propagation::Orphan), Some("orphan"));
        assert_eq!(policy_finalizer(rs, &live, Propagation::Background), None);
        let has = json!({"metadata": {"name": "x", "finalizers": ["orphan"]}});
        assert_eq!(policy_finalizer(rs, &has, Propagation::Orphan), None);
        let terminating = json!({"metadata": {"name": "x", "deletionTimestamp": "2020-01-01T00:00:00Z"}});
        assert_eq!(policy_finalizer(rs, &terminating, Propagation::Foreground), None);
        // The collector does not watch ConfigMaps or Namespaces: their deletes stay Background.
        assert_eq!(policy_finalizer(by_kind("ConfigMap").unwrap(), &live, Propagation::Orphan), None);
        assert_eq!(policy_finalizer(by_kind("Namespace").unwrap(), &live, Propagation::Foreground), None);
    }
}
