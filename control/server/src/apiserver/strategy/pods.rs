//! Pods: the scheduler binds them (`pods/binding`), a pod bound to a node is deleted
//! gracefully (the kubelet finishes the deletion), and a new pod goes through
//! ServiceAccount admission (`admission`: its account and token volume).

use serde_json::Value;

use super::super::request::Subresource;
use super::super::status::Cause;
use super::super::validation;
use super::{Strategy, drop_status};

#[derive(Debug)]
pub struct Pod;

impl Strategy for Pod {
    fn create_subresources(&self) -> &'static [Subresource] {
        &[Subresource::Binding, Subresource::Eviction]
    }

    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn default(&self, obj: &mut Value) {
        validation::default_pod(obj);
        alias_service_account(obj);
    }

    fn admits_service_account(&self) -> bool {
        true
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        validation::validate_pod(obj, causes);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ]
    }

    fn delete_returns_object(&self) -> bool {
        true
    }

    /// Only a pod bound to a node waits: nobody else would run its containers down.
    fn deletion_grace(&self, obj: &Value, requested: Option<i64>) -> Option<i64> {
        obj.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())?;
        let g = requested
            .or_else(|| obj.pointer("/spec/terminationGracePeriodSeconds").and_then(|g| g.as_i64()))
            .unwrap_or(30);
        (g > 0).then_some(g)
    }
}

/// `spec.serviceAccount` is the deprecated name of `spec.serviceAccountName`: it fills
/// the new field when only it is given, and otherwise always reads the same, as the v1
/// conversion of upstream does.
fn alias_service_account(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let named = |k: &str| spec.get(k).and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_string);
    if let Some(name) = named("serviceAccountName").or_else(|| named("serviceAccount")) {
        spec.insert("serviceAccountName".into(), Value::String(name.clone()));
        spec.insert("serviceAccount".into(), Value::String(name));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_deprecated_account_field_follows_the_new_one() {
        let mut old = json!({"spec": {"serviceAccount": "bot", "containers": []}});
        Pod.default(&mut old);
        assert_eq!(
            (&old["spec"]["serviceAccountName"], &old["spec"]["serviceAccount"]),
            (&json!("bot"), &json!("bot"))
        );
        let mut both = json!({"spec": {"serviceAccountName": "new", "serviceAccount": "old", "containers": []}});
        Pod.default(&mut both);
        assert_eq!(both["spec"]["serviceAccount"], "new");
        let mut none = json!({"spec": {"containers": []}});
        Pod.default(&mut none);
        assert!(none["spec"].get("serviceAccount").is_none(), "admission, not defaulting, picks `default`");
    }
}
