//! Per-kind behaviour of the generic verbs, as upstream's REST strategies: what a
//! create or update prepares (server-owned fields, kept allocations), the defaults,
//! the kind-specific validation, the selectable fields, and how a delete treats the
//! kind. Each served kind names its strategy in the resource table; the handlers ask
//! it instead of comparing kind names.
//!
//! Strategies work on JSON values only: they must not touch the store, the clock or
//! anything random (a new object's uid is handed in), so the decoding path the fuzz
//! target runs can call them.

mod apps;
mod certificates;
mod checks;
mod config;
mod namespaces;
mod networking;
mod pods;
mod policy;
mod services;
mod storage;
mod workloads;

use serde_json::Value;

pub use apps::{ControllerRevision, CronJob, StatefulSet};
pub use certificates::{CertificateSigningRequest, default_conditions};
pub use config::{ConfigMap, Event, Node, Secret, ServiceAccount};
pub use namespaces::{Namespace, SYSTEM_NAMESPACES};
pub use networking::{Ingress, IngressClass, NetworkPolicy};
pub use pods::Pod;
pub use policy::{
    HorizontalPodAutoscaler, LimitRange, PodDisruptionBudget, PriorityClass, ResourceQuota, SYSTEM_PRIORITY_CLASSES,
};
pub use services::Service;
pub use storage::{PersistentVolume, PersistentVolumeClaim, StorageClass};
pub use workloads::{DaemonSet, Deployment, Job, ReplicaSet};

use super::request::Subresource;
use super::status::Cause;
use super::validation;
use crate::auth::UserInfo;

/// One kind's behaviour; every method has the plain default, so a kind with nothing
/// special uses `Generic`.
pub trait Strategy: Sync + std::fmt::Debug {
    /// The subresources created with POST on a named object (`pods/binding`,
    /// `pods/eviction`, `serviceaccounts/token`).
    fn create_subresources(&self) -> &'static [Subresource] {
        &[]
    }

    /// A new object, after the typed decode and before defaulting: drop what a client
    /// may not set and fill what derives from the new `uid`.
    fn prepare_for_create(&self, obj: &mut Value, uid: &str) {
        let _ = (obj, uid);
    }

    /// An update of `cur` to `new`, after the server restored identity fields: keep
    /// what the server allocated, refuse changes to what is immutable.
    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
        let _ = (cur, new);
        Ok(())
    }

    /// A new object, given who creates it: kinds that record their requester
    /// (CertificateSigningRequest's `spec.username`/`groups`) set it here.
    fn record_requester(&self, obj: &mut Value, user: &UserInfo) {
        let _ = (obj, user);
    }

    /// Has an `approval` subresource (writes change only `status.conditions`).
    fn has_approval(&self) -> bool {
        false
    }

    /// Fills defaults in place.
    fn default(&self, obj: &mut Value) {
        let _ = obj;
    }

    /// Whether names are DNS labels (no dots) rather than DNS subdomains.
    fn name_is_label(&self) -> bool {
        false
    }

    /// Kind-specific validation; adds to `causes`.
    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        let _ = (obj, causes);
    }

    /// Fields a field selector may name besides `metadata.name` and `metadata.namespace`.
    fn selectable_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether a create runs ServiceAccount admission (`admission`): default the
    /// account, check that it exists, mount its token.
    fn admits_service_account(&self) -> bool {
        false
    }

    /// Whether a create allocates a ClusterIP and node ports (under the allocation lock).
    fn allocates_cluster_ip(&self) -> bool {
        false
    }

    /// Whether a completed DELETE returns the deleted object (else a Success Status):
    /// typed clients decode the response by kind.
    fn delete_returns_object(&self) -> bool {
        false
    }

    /// The grace period a DELETE of `obj` waits before the object goes (`requested` is
    /// the client's); `None` deletes at once.
    fn deletion_grace(&self, obj: &Value, requested: Option<i64>) -> Option<i64> {
        let _ = (obj, requested);
        None
    }

    /// Whether the object named `name` may never be deleted.
    fn undeletable(&self, name: &str) -> bool {
        let _ = name;
        false
    }

    /// Whether a DELETE only marks the object Terminating and leaves removing it (and
    /// what it contains) to a controller that clears `spec.finalizers` through the
    /// `finalize` subresource: namespaces.
    fn finalized_by_spec(&self) -> bool {
        false
    }
}

/// A kind with no behaviour of its own.
#[derive(Debug)]
pub struct Generic;

impl Strategy for Generic {}

/// Validates an object of a kind with strategy `s`: the common metadata checks, then
/// the kind's own. Empty means valid.
pub fn validate(s: &dyn Strategy, namespaced: bool, obj: &Value) -> Vec<Cause> {
    let mut causes = validation::validate_meta(obj, namespaced, s.name_is_label());
    s.validate(obj, &mut causes);
    causes
}

/// Removes `status` from a new object of a kind whose status the controllers own.
fn drop_status(obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.remove("status");
    }
}
