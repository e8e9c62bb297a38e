//! Namespaces: the system ones may not be deleted, and deleting one removes what is
//! in it (synchronously: there is no namespace controller yet).

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

    fn deletes_contents(&self) -> bool {
        true
    }
}
