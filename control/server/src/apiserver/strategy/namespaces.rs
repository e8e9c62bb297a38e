//! Namespaces: the system ones may not be deleted, and deleting one only marks it
//! Terminating: the namespace controller removes its content and then clears the
//! `kubernetes` finalizer in `spec.finalizers` (the `finalize` subresource).

use serde_json::Value;

use super::super::validation;
use super::{Strategy, drop_status};

/// Namespaces that always exist; all but `kube-node-lease` may not be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

#[derive(Debug)]
pub struct Namespace;

impl Strategy for Namespace {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<super::Cause>> {
        // Only the `finalize` subresource changes spec.finalizers, and a terminating
        // namespace stays Terminating whatever a status write says.
        new["spec"]["finalizers"] = cur.pointer("/spec/finalizers").cloned().unwrap_or(serde_json::json!([]));
        if cur.pointer("/metadata/deletionTimestamp").is_some() {
            new["status"]["phase"] = serde_json::json!("Terminating");
        }
        Ok(())
    }

    fn default(&self, obj: &mut Value) {
        validation::default_namespace(obj);
    }

    fn name_is_label(&self) -> bool {
        true
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.phase"]
    }

    fn delete_returns_object(&self) -> bool {
        true
    }

    fn undeletable(&self, name: &str) -> bool {
        SYSTEM_NAMESPACES[..3].contains(&name)
    }

    fn finalized_by_spec(&self) -> bool {
        true
    }
}
