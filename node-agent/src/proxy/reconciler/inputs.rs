//! The change tracker: the Services and EndpointSlices as last fed, and which Services
//! changed since the last sync.
//!
//! Feeding an object only records it and marks its Service dirty; a resync that repeats
//! an identical object marks nothing. An EndpointSlice belongs to the Service its
//! `kubernetes.io/service-name` label names; relabelling it dirties both Services.
//!
//! This module must not plan or write anything: it hands the sync a Service's objects
//! ([`Inputs::plan`]) and the set of dirty Services ([`Inputs::take_dirty`]).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::proxy::model::{LocalNode, ObjectRef, ServicePlan, plan_service, slice_service};

#[derive(Debug, Default)]
pub(super) struct Inputs {
    services: BTreeMap<ObjectRef, Service>,
    slices: BTreeMap<ObjectRef, EndpointSlice>,
    slice_owner: BTreeMap<ObjectRef, ObjectRef>,
    slices_of: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    /// Services whose inputs changed since the last sync.
    dirty: BTreeSet<ObjectRef>,
    /// The node the plans are for (NodePort frontends); `None`: cluster IPs only.
    node: Option<LocalNode>,
}

impl Inputs {
    /// Plans for `node` from now on; every Service is planned afresh.
    pub(super) fn set_node(&mut self, node: Option<LocalNode>) {
        if self.node != node {
            self.node = node;
            self.dirty.extend(self.services.keys().cloned());
        }
    }

    pub(super) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The Services that changed since the last call.
    pub(super) fn take_dirty(&mut self) -> BTreeSet<ObjectRef> {
        std::mem::take(&mut self.dirty)
    }

    /// The desired frontends of `svc` from its current objects; an empty plan for a
    /// Service that no longer exists.
    pub(super) fn plan(&self, svc: &ObjectRef) -> ServicePlan {
        match self.services.get(svc) {
            Some(service) => {
                let slices = self.slices_of.get(svc).into_iter().flatten().filter_map(|r| self.slices.get(r));
                plan_service(service, slices, self.node.as_ref())
            }
            None => ServicePlan::default(),
        }
    }

    pub(super) fn upsert_service(&mut self, svc: Service) {
        let Some(r) = changed(&self.services, &svc.metadata, &svc, "Service") else { return };
        self.services.insert(r.clone(), svc);
        self.dirty.insert(r);
    }

    /// Forgets the Service; `programmed` says whether the maps still hold frontends of
    /// it, which the next sync must then remove even if the Service was never fed.
    pub(super) fn delete_service(&mut self, r: &ObjectRef, programmed: bool) {
        if self.services.remove(r).is_some() || programmed {
            self.dirty.insert(r.clone());
        }
    }

    pub(super) fn upsert_endpoint_slice(&mut self, slice: EndpointSlice) {
        let Some(r) = changed(&self.slices, &slice.metadata, &slice, "EndpointSlice") else { return };
        let new_owner = slice_service(&slice);
        if new_owner.is_none() {
            tracing::debug!(slice = %r, "EndpointSlice has no kubernetes.io/service-name label; ignored");
        }
        self.unlink_slice(&r);
        if let Some(owner) = new_owner {
            self.slices_of.entry(owner.clone()).or_default().insert(r.clone());
            self.slice_owner.insert(r.clone(), owner.clone());
            self.dirty.insert(owner);
        }
        self.slices.insert(r, slice);
    }

    pub(super) fn delete_endpoint_slice(&mut self, r: &ObjectRef) {
        self.unlink_slice(r);
        self.slices.remove(r);
    }

    fn unlink_slice(&mut self, r: &ObjectRef) {
        if let Some(old) = self.slice_owner.remove(r) {
            if let Some(set) = self.slices_of.get_mut(&old) {
                set.remove(r);
                if set.is_empty() {
                    self.slices_of.remove(&old);
                }
            }
            self.dirty.insert(old);
        }
    }
}

/// The object's reference if it is new or differs from what `known` holds; `None` when
/// there is nothing to do: an object without a name, or a resync that repeats the same
/// object (which must cost nothing).
fn changed<T: PartialEq>(
    known: &BTreeMap<ObjectRef, T>,
    meta: &ObjectMeta,
    object: &T,
    kind: &'static str,
) -> Option<ObjectRef> {
    let Some(r) = ObjectRef::from_meta(meta) else {
        tracing::warn!(kind, "ignoring object without metadata.name");
        return None;
    };
    (known.get(&r) != Some(object)).then_some(r)
}
