//! Pods: the scheduler binds them (`pods/binding`), and a pod bound to a node is
//! deleted gracefully (the kubelet finishes the deletion).

use serde_json::Value;

use super::super::request::Subresource;
use super::super::status::Cause;
use super::super::validation;
use super::{Strategy, drop_status};

#[derive(Debug)]
pub struct Pod;

impl Strategy for Pod {
    fn create_subresource(&self) -> Option<Subresource> {
        Some(Subresource::Binding)
    }

    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn default(&self, obj: &mut Value) {
        validation::default_pod(obj);
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
