//! The one writer of the load-balancer maps.
//!
//! [`LbReconciler`] is a change tracker plus a reconciler, in the shape of kube-proxy's
//! and Cilium's: the caller feeds it Service and EndpointSlice changes
//! ([`LbReconciler::apply`]), which only mark Services dirty; [`LbReconciler::sync`]
//! then plans the dirty Services (`model::plan_service`) and writes the frontends whose
//! desired state differs from what it wrote before. Work is proportional to what
//! changed: an untouched Service costs nothing, an unchanged frontend of a touched
//! Service costs one comparison, and within a frontend only differing entries are
//! written.
//!
//! Write order for one frontend, chosen so that the datapath never sees a half-written
//! Service (a reader may see the old or the new backend set, or a mix of backends that
//! all exist, never a slot pointing at nothing):
//! 1. the reverse-NAT entry (new frontends only; replies need it before the first flow);
//! 2. new backends, and backends that start taking new flows again (their terminating
//!    flag cleared);
//! 3. slots `1..=N`, keeping each remaining backend in the slot it had (for a Maglev
//!    frontend, `N` is the table size and slot `i + 1` holds table entry `i`: only the
//!    entries that change are written);
//! 4. slot 0 with the new count `N`, flags and affinity timeout;
//! 5. stale slots above `N`, highest first;
//! 6. at the end of the sync: backends nobody references any more are deleted, and
//!    backends that only keep established flows get their terminating flag.
//!
//! A removed frontend goes the other way: slot 0 first (the frontend disappears at once),
//! then its slots, then its reverse-NAT entry, then (step 6) its unreferenced backends.
//!
//! Backend ids and reverse-NAT indices are the links from conntrack and affinity entries
//! to the maps, so they are stable: a backend keeps its id as long as any frontend
//! references it, a frontend keeps its index for its lifetime, and
//! [`LbReconciler::adopt`] rebuilds both from the pinned maps after a restart, so that
//! established flows survive the agent. Freed ids are reused smallest first.
//!
//! When a map write fails (map full, anything else), the error is logged with the
//! Service's namespace/name, the frontend falls back to the last state the datapath
//! could see (a frontend that never became visible is removed entirely, so it holds no
//! map room), the recorded state stays exactly what is in the maps, and the Service is
//! retried on the next sync. Other Services are unaffected.
//!
//! This module must not read Kubernetes objects from anywhere itself (sources do that)
//! nor interpret them (the model does that).
//!
//! One module per job:
//! - `inputs`: the change tracker (Services and EndpointSlices in, dirty Services out);
//! - `ids`: backend ids and reverse-NAT indices, and the backend registry;
//! - `state`: the record of what the maps hold;
//! - `adopt`: that record rebuilt from the maps of an earlier run;
//! - `writes`: the ordered writes, the retreat after a failure, and deletions.
//!
//! This file holds the public face and the sync loop that ties them together.

mod adopt;
mod error;
mod ids;
mod inputs;
mod state;
mod summary;
mod writes;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use self::error::{Error, Result};
use self::inputs::Inputs;
use self::state::MapState;
pub use self::summary::{ServiceProblem, SyncSummary};
use super::maps::LbMaps;
use super::model::{FrontendKey, LocalNode, ObjectRef};
use super::source::SourceEvent;

/// The change tracker and single writer of the load-balancer maps. See the module docs.
#[derive(Debug)]
pub struct LbReconciler<M: LbMaps> {
    maps: M,
    /// The objects as last fed, and which Services changed.
    inputs: Inputs,
    /// What is in the maps, and the work left for the next sync.
    state: MapState,
    /// What the syncs since the last [`Self::take_problems`] could not program.
    problems: Vec<ServiceProblem>,
}

impl<M: LbMaps> LbReconciler<M> {
    /// A reconciler for maps that are known to be empty (freshly created). For maps that
    /// may hold entries (always the case for pinned maps), use [`Self::adopt`].
    pub fn new(maps: M) -> Self {
        Self { maps, inputs: Inputs::default(), state: MapState::default(), problems: Vec::new() }
    }

    /// Takes over maps written by an earlier run: every frontend keeps its reverse-NAT
    /// index and every backend its id, so conntrack and affinity entries stay valid.
    /// Nothing is written here. The first [`Self::sync`] keeps what the fed Services
    /// still want (writing nothing when nothing changed) and removes the rest, so feed
    /// the source's complete initial snapshot before that first sync.
    pub fn adopt(maps: M) -> Result<Self> {
        let state = MapState::adopt(&maps)?;
        Ok(Self { maps, inputs: Inputs::default(), state, problems: Vec::new() })
    }

    /// The node this agent runs on: its address carries the NodePort frontends, and
    /// `externalTrafficPolicy: Local` keeps its endpoints. Without one (the default),
    /// only cluster IPs are programmed.
    pub fn set_node(&mut self, node: Option<LocalNode>) {
        self.inputs.set_node(node);
    }

    /// The Maglev table size (a prime) for frontends with up to a hundredth as many
    /// backends; larger backend sets get the next prime of 100 × backends.
    pub fn set_maglev_table_size(&mut self, size: u16) {
        self.state.maglev_table_size = size;
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn into_maps(self) -> M {
        self.maps
    }

    /// Whether a sync has work: changed inputs, or failures to retry. A caller that syncs
    /// only on events should also sync periodically while this is true.
    pub fn has_pending(&self) -> bool {
        self.inputs.has_dirty() || self.state.has_pending()
    }

    /// The problems met by the syncs since the last call, one per Service and cause and
    /// sync (a Service retried on every sync repeats its problem each time).
    pub fn take_problems(&mut self) -> Vec<ServiceProblem> {
        std::mem::take(&mut self.problems)
    }

    fn problem(&mut self, service: &ObjectRef, message: String) {
        self.problems.push(ServiceProblem { service: service.clone(), message });
    }

    // -----------------------------------------------------------------------------------
    // Change tracking.

    pub fn apply(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::ServiceUpserted(svc) => self.upsert_service(*svc),
            SourceEvent::ServiceDeleted(r) => self.delete_service(&r),
            SourceEvent::EndpointSliceUpserted(slice) => self.upsert_endpoint_slice(*slice),
            SourceEvent::EndpointSliceDeleted(r) => self.delete_endpoint_slice(&r),
        }
    }

    pub fn upsert_service(&mut self, svc: Service) {
        self.inputs.upsert_service(svc);
    }

    pub fn delete_service(&mut self, r: &ObjectRef) {
        self.inputs.delete_service(r, self.state.owned.contains_key(r));
    }

    pub fn upsert_endpoint_slice(&mut self, slice: EndpointSlice) {
        self.inputs.upsert_endpoint_slice(slice);
    }

    pub fn delete_endpoint_slice(&mut self, r: &ObjectRef) {
        self.inputs.delete_endpoint_slice(r);
    }

    // -----------------------------------------------------------------------------------
    // Sync.

    /// Plans the Services that changed (or failed before) and writes the difference.
    /// Never fails as a whole: problems are logged with the Service's namespace/name and
    /// counted in the summary, and failed writes are retried by the next sync.
    pub fn sync(&mut self) -> SyncSummary {
        let mut summary = SyncSummary::default();
        let mut todo = self.inputs.take_dirty();
        todo.append(&mut std::mem::take(&mut self.state.retry));
        for svc in &todo {
            self.sync_service(svc, &mut summary);
        }

        for fk in std::mem::take(&mut self.state.unclaimed) {
            if self.state.frontends.get(&fk).is_some_and(|w| w.owner.is_none()) {
                match self.state.delete_frontend(&mut self.maps, &fk, &mut summary) {
                    Ok(()) => {
                        tracing::info!(frontend = %fk, "removed adopted frontend that no Service wants");
                        summary.frontends_deleted += 1;
                    }
                    Err(error) => {
                        tracing::error!(frontend = %fk, %error, "cannot remove stale frontend; will retry");
                        summary.errors += 1;
                        self.state.unclaimed.insert(fk);
                    }
                }
            }
        }
        self.state.remove_orphans(&mut self.maps, &mut summary);
        self.state.collect_backends(&mut self.maps, &mut summary);
        summary
    }

    fn sync_service(&mut self, svc: &ObjectRef, summary: &mut SyncSummary) {
        summary.services += 1;
        let plan = self.inputs.plan(svc);
        for problem in &plan.problems {
            tracing::warn!(
                service = %problem.service,
                port = problem.port.as_deref().unwrap_or(""),
                problem = %problem.kind,
                "skipping part of Service"
            );
            summary.skipped += 1;
            let message = match &problem.port {
                Some(port) => format!("port {port}: {}", problem.kind),
                None => problem.kind.to_string(),
            };
            self.problem(svc, message);
        }

        // Removals first: they free map room for what follows.
        let wanted: BTreeSet<FrontendKey> = plan.frontends.iter().map(|f| f.key).collect();
        let stale: Vec<FrontendKey> =
            self.state.owned.get(svc).into_iter().flatten().filter(|fk| !wanted.contains(fk)).copied().collect();
        for fk in stale {
            match self.state.delete_frontend(&mut self.maps, &fk, summary) {
                Ok(()) => {
                    tracing::debug!(service = %svc, frontend = %fk, "removed frontend");
                    summary.frontends_deleted += 1;
                }
                Err(error) => {
                    tracing::error!(service = %svc, frontend = %fk, %error, "cannot remove frontend; will retry");
                    summary.errors += 1;
                    self.state.retry.insert(svc.clone());
                }
            }
        }

        for frontend in &plan.frontends {
            let fk = frontend.key;
            if let Some(other) = self.state.frontends.get(&fk).and_then(|w| w.owner.as_ref())
                && other != svc
            {
                tracing::warn!(
                    service = %svc, port = %frontend.port_name, frontend = %fk, owner = %other,
                    "frontend already programmed for another Service; skipped until that one lets go"
                );
                summary.skipped += 1;
                self.problem(
                    svc,
                    format!("port {}: {fk} is already programmed for Service {other}", frontend.port_name),
                );
                self.state.waiting.entry(fk).or_default().insert(svc.clone());
                continue;
            }
            let old_held = self.state.frontends.get(&fk).map(|w| w.held.clone()).unwrap_or_default();
            match self.state.write_frontend(&mut self.maps, frontend, summary) {
                Ok(0) => summary.frontends_unchanged += 1,
                Ok(writes) => {
                    tracing::debug!(service = %svc, port = %frontend.port_name, frontend = %fk, writes, backends = frontend.backends.len(), "programmed frontend");
                    summary.frontends_written += 1;
                }
                Err(error) => {
                    tracing::error!(
                        service = %svc, port = %frontend.port_name, frontend = %fk, %error,
                        "cannot program Service frontend; keeping its previous state and retrying on the next sync"
                    );
                    summary.errors += 1;
                    self.problem(svc, format!("port {}: cannot program {fk}: {error}", frontend.port_name));
                    self.state.retreat(&mut self.maps, &fk, old_held, summary);
                    self.state.retry.insert(svc.clone());
                }
            }
        }
    }
}
