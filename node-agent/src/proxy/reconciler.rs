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
//! 3. slots `1..=N`, keeping each remaining backend in the slot it had;
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

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_ebpf_common::{
    BACKEND_FLAG_TERMINATING, Backend4, RevNat4, SERVICE_FLAG_AFFINITY, Service4Key, Service4Value, addr_from_map,
    addr_to_map, port_from_map, port_to_map,
};

use super::maps::{self, LbMaps};
use super::model::{BackendKey, Frontend, FrontendKey, ObjectRef, Protocol, ServicePlan, plan_service, slice_service};
use super::source::SourceEvent;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Map(#[from] maps::Error),
    #[error("all 65535 reverse-NAT indices are in use; no room for another frontend")]
    RevNatExhausted,
    #[error("no backend id left")]
    BackendIdsExhausted,
    #[error("{0} ready backends do not fit the 65535 slots of a frontend")]
    TooManyBackends(usize),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one [`LbReconciler::sync`] did, for a log line or metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Services planned (dirty or retried).
    pub services: usize,
    /// Frontends with at least one map write.
    pub frontends_written: usize,
    /// Frontends of planned Services that needed no write.
    pub frontends_unchanged: usize,
    pub frontends_deleted: usize,
    pub backends_deleted: usize,
    /// Inputs left out because they are invalid (logged as warnings).
    pub skipped: usize,
    /// Map writes that failed (logged as errors, retried on the next sync).
    pub errors: usize,
    /// Individual map operations (upserts and deletes).
    pub map_writes: usize,
}

impl SyncSummary {
    /// Whether the sync wrote anything or met a problem: worth a log line.
    pub fn changed(&self) -> bool {
        self.map_writes > 0 || self.errors > 0 || self.skipped > 0
    }
}

impl std::fmt::Display for SyncSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} services planned, {} frontends written, {} unchanged, {} deleted, {} backends deleted, \
             {} map writes, {} skipped, {} errors",
            self.services,
            self.frontends_written,
            self.frontends_unchanged,
            self.frontends_deleted,
            self.backends_deleted,
            self.map_writes,
            self.skipped,
            self.errors
        )
    }
}

/// Smallest-free allocator over an id range, as a set of free intervals, so allocation,
/// reservation and release are O(log n) even with tens of thousands of ids.
#[derive(Debug, Clone)]
struct IdAllocator {
    lo: u32,
    hi: u32,
    /// start → end (inclusive) of each free interval.
    free: BTreeMap<u32, u32>,
}

impl IdAllocator {
    fn new(lo: u32, hi: u32) -> Self {
        Self { lo, hi, free: BTreeMap::from([(lo, hi)]) }
    }

    fn alloc(&mut self) -> Option<u32> {
        let (start, end) = self.free.pop_first()?;
        if start < end {
            self.free.insert(start + 1, end);
        }
        Some(start)
    }

    /// Marks `id` used; false if it is outside the range or already used.
    fn reserve(&mut self, id: u32) -> bool {
        let Some((&start, &end)) = self.free.range(..=id).next_back() else { return false };
        if end < id {
            return false;
        }
        self.free.remove(&start);
        if start < id {
            self.free.insert(start, id - 1);
        }
        if id < end {
            self.free.insert(id + 1, end);
        }
        true
    }

    fn release(&mut self, id: u32) {
        if id < self.lo || id > self.hi {
            return;
        }
        let mut start = id;
        let mut end = id;
        if let Some((&s, &e)) = self.free.range(..=id).next_back() {
            if e >= id {
                return; // already free
            }
            if e + 1 == id {
                self.free.remove(&s);
                start = s;
            }
        }
        if id < u32::MAX
            && let Some(e) = self.free.remove(&(id + 1))
        {
            end = e;
        }
        self.free.insert(start, end);
    }
}

/// One backend as written (or about to be written) in the backends map.
#[derive(Debug, Clone)]
struct BackendEntry {
    /// `None` for an adopted entry whose protocol we do not balance; it is deleted once
    /// nothing references it.
    key: Option<BackendKey>,
    /// The value without flags.
    base: Backend4,
    /// Flags currently in the map; `None` if the entry is not in the map.
    written: Option<u8>,
    /// Frontends that reference this backend → whether it takes new flows there.
    holders: BTreeMap<FrontendKey, bool>,
}

impl BackendEntry {
    /// A backend that takes new flows nowhere is only kept for established flows.
    fn desired_flags(&self) -> u8 {
        if self.holders.values().any(|active| *active) { 0 } else { BACKEND_FLAG_TERMINATING }
    }
}

/// A frontend as written in the maps.
#[derive(Debug, Clone)]
struct Written {
    /// The Service that programs it; `None` for a frontend adopted from the maps and not
    /// yet claimed.
    owner: Option<ObjectRef>,
    port_name: String,
    rev_nat: u32,
    rev_nat_written: bool,
    /// Slot 0 as in the map; `None` when absent, i.e. the datapath does not see the
    /// frontend.
    slot0: Option<Service4Value>,
    /// Slots ≥ 1 present in the map.
    slots: BTreeMap<u16, Service4Value>,
    /// Backend ids this frontend keeps alive → whether it sends them new flows.
    held: BTreeMap<u32, bool>,
    /// The desired state last written completely; a frontend whose plan equals it is
    /// skipped without touching the maps.
    applied: Option<Frontend>,
}

/// The change tracker and single writer of the load-balancer maps. See the module docs.
#[derive(Debug)]
pub struct LbReconciler<M: LbMaps> {
    maps: M,

    // Inputs, as last fed.
    services: BTreeMap<ObjectRef, Service>,
    slices: BTreeMap<ObjectRef, EndpointSlice>,
    slice_owner: BTreeMap<ObjectRef, ObjectRef>,
    slices_of: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    /// Services whose inputs changed since the last sync.
    dirty: BTreeSet<ObjectRef>,
    /// Services with a failed write (or waiting for a frontend held by another Service).
    retry: BTreeSet<ObjectRef>,

    // What is in the maps.
    frontends: BTreeMap<FrontendKey, Written>,
    owned: BTreeMap<ObjectRef, BTreeSet<FrontendKey>>,
    backends: BTreeMap<u32, BackendEntry>,
    backend_ids: BTreeMap<BackendKey, u32>,
    backend_alloc: IdAllocator,
    /// Backends whose holders changed: deleted or re-flagged at the end of the sync.
    backends_dirty: BTreeSet<u32>,
    rev_nat_alloc: IdAllocator,
    /// Adopted frontends not claimed yet: removed at the end of the next sync.
    unclaimed: BTreeSet<FrontendKey>,
    /// Adopted entries that belong to no frontend we could rebuild: removed next sync.
    orphan_slots: BTreeSet<Service4Key>,
    orphan_rev_nat: BTreeSet<u32>,
    orphan_backends: BTreeSet<u32>,
    /// Frontends wanted by a Service while another Service holds them.
    waiting: BTreeMap<FrontendKey, BTreeSet<ObjectRef>>,
}

fn service_key(fk: &FrontendKey, slot: u16) -> Service4Key {
    Service4Key::new(addr_to_map(fk.vip.octets()), port_to_map(fk.port), fk.proto.ip_proto(), slot)
}

fn rev_nat_value(fk: &FrontendKey) -> RevNat4 {
    RevNat4 { addr: addr_to_map(fk.vip.octets()), port: port_to_map(fk.port), _pad: 0 }
}

/// Slot contents for the new backend set: backends that stay keep their slot (fewer
/// writes, and a reader mid-update sees mostly the same mapping), newcomers fill the
/// holes, then the tail moves into holes that remain.
fn assign_slots(old: &BTreeMap<u16, Service4Value>, old_count: u16, desired: &[u32]) -> Vec<u32> {
    let wanted: BTreeSet<u32> = desired.iter().copied().collect();
    let mut used = BTreeSet::new();
    let mut placed: Vec<Option<u32>> = (1..=old_count)
        .map(|slot| old.get(&slot).map(|v| v.backend_id).filter(|id| wanted.contains(id) && used.insert(*id)))
        .collect();
    let mut newcomers = desired.iter().copied().filter(|id| !used.contains(id));
    for hole in placed.iter_mut().filter(|p| p.is_none()) {
        match newcomers.next() {
            Some(id) => *hole = Some(id),
            None => break,
        }
    }
    placed.extend(newcomers.map(Some));
    loop {
        while placed.last() == Some(&None) {
            placed.pop();
        }
        let Some(hole) = placed.iter().position(Option::is_none) else { break };
        placed[hole] = placed.pop().flatten();
    }
    placed.into_iter().flatten().collect()
}

impl<M: LbMaps> LbReconciler<M> {
    /// A reconciler for maps that are known to be empty (freshly created). For maps that
    /// may hold entries (always the case for pinned maps), use [`Self::adopt`].
    pub fn new(maps: M) -> Self {
        Self {
            maps,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slice_owner: BTreeMap::new(),
            slices_of: BTreeMap::new(),
            dirty: BTreeSet::new(),
            retry: BTreeSet::new(),
            frontends: BTreeMap::new(),
            owned: BTreeMap::new(),
            backends: BTreeMap::new(),
            backend_ids: BTreeMap::new(),
            backend_alloc: IdAllocator::new(1, u32::MAX),
            backends_dirty: BTreeSet::new(),
            rev_nat_alloc: IdAllocator::new(1, u32::MAX - 1),
            unclaimed: BTreeSet::new(),
            orphan_slots: BTreeSet::new(),
            orphan_rev_nat: BTreeSet::new(),
            orphan_backends: BTreeSet::new(),
            waiting: BTreeMap::new(),
        }
    }

    /// Takes over maps written by an earlier run: every frontend keeps its reverse-NAT
    /// index and every backend its id, so conntrack and affinity entries stay valid.
    /// Nothing is written here. The first [`Self::sync`] keeps what the fed Services
    /// still want (writing nothing when nothing changed) and removes the rest, so feed
    /// the source's complete initial snapshot before that first sync.
    pub fn adopt(maps: M) -> Result<Self> {
        let services = maps.dump_services()?;
        let backends = maps.dump_backends()?;
        let rev_nat: BTreeMap<u32, RevNat4> = maps.dump_rev_nat()?.into_iter().collect();
        let mut this = Self::new(maps);

        let mut backends = backends;
        backends.sort_by_key(|(id, _)| *id);
        for (id, value) in backends {
            if !this.backend_alloc.reserve(id) {
                // Id 0 is never allocated: an entry there is garbage from elsewhere.
                this.orphan_backends.insert(id);
                continue;
            }
            let key = Protocol::from_ip_proto(value.proto).map(|proto| BackendKey {
                addr: Ipv4Addr::from(addr_from_map(value.addr)),
                port: port_from_map(value.port),
                proto,
            });
            if let Some(key) = key {
                // With duplicates (never written by us), the smallest id serves new
                // references; the others live until nothing references them.
                this.backend_ids.entry(key).or_insert(id);
            }
            this.backends.insert(
                id,
                BackendEntry {
                    key,
                    base: Backend4 { flags: 0, ..value },
                    written: Some(value.flags),
                    holders: BTreeMap::new(),
                },
            );
            // Unreferenced after the first sync → deleted then.
            this.backends_dirty.insert(id);
        }

        for (key, value) in services {
            let proto = Protocol::from_ip_proto(key.proto);
            let (Some(proto), 0) = (proto, key.scope) else {
                this.orphan_slots.insert(key);
                continue;
            };
            let fk =
                FrontendKey { vip: Ipv4Addr::from(addr_from_map(key.addr)), port: port_from_map(key.dport), proto };
            let w = this.frontends.entry(fk).or_insert_with(|| Written {
                owner: None,
                port_name: String::new(),
                rev_nat: 0,
                rev_nat_written: false,
                slot0: None,
                slots: BTreeMap::new(),
                held: BTreeMap::new(),
                applied: None,
            });
            if key.backend_slot == 0 {
                w.slot0 = Some(value);
            } else {
                w.slots.insert(key.backend_slot, value);
            }
        }

        let keys: Vec<FrontendKey> = this.frontends.keys().copied().collect();
        for fk in keys {
            let w = this.frontends.get_mut(&fk).expect("key just listed");
            let recorded =
                w.slot0.map(|v| v.rev_nat_index).or_else(|| w.slots.values().next().map(|v| v.rev_nat_index));
            let index = match recorded {
                Some(i) if this.rev_nat_alloc.reserve(i) => i,
                other => {
                    // Missing, zero, or shared with another frontend: give this one a
                    // fresh index; the first sync rewrites its entries to match.
                    let fresh = this.rev_nat_alloc.alloc().ok_or(Error::RevNatExhausted)?;
                    tracing::warn!(frontend = %fk, recorded = ?other, new = fresh, "adopted frontend has an unusable reverse-NAT index; assigning a new one");
                    fresh
                }
            };
            w.rev_nat = index;
            w.rev_nat_written = rev_nat.get(&index) == Some(&rev_nat_value(&fk));
            let held: BTreeMap<u32, bool> = w
                .slots
                .values()
                .map(|v| v.backend_id)
                .filter(|id| this.backends.contains_key(id))
                .map(|id| (id, true))
                .collect();
            for id in held.keys() {
                this.backends.get_mut(id).expect("filtered above").holders.insert(fk, true);
            }
            w.held = held;
            this.unclaimed.insert(fk);
        }

        let in_use: BTreeSet<u32> = this.frontends.values().map(|w| w.rev_nat).collect();
        for index in rev_nat.keys() {
            if !in_use.contains(index) {
                this.rev_nat_alloc.reserve(u32::from(*index));
                this.orphan_rev_nat.insert(*index);
            }
        }
        tracing::info!(
            frontends = this.frontends.len(),
            backends = this.backends.len(),
            orphan_slots = this.orphan_slots.len(),
            orphan_rev_nat = this.orphan_rev_nat.len(),
            orphan_backends = this.orphan_backends.len(),
            "adopted load-balancer maps"
        );
        Ok(this)
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
        !self.dirty.is_empty()
            || !self.retry.is_empty()
            || !self.unclaimed.is_empty()
            || !self.orphan_slots.is_empty()
            || !self.orphan_rev_nat.is_empty()
            || !self.orphan_backends.is_empty()
            || !self.backends_dirty.is_empty()
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
        let Some(r) = ObjectRef::from_meta(&svc.metadata) else {
            tracing::warn!("ignoring Service without metadata.name");
            return;
        };
        // A resync that repeats the same object must cost nothing.
        if self.services.get(&r) == Some(&svc) {
            return;
        }
        self.services.insert(r.clone(), svc);
        self.dirty.insert(r);
    }

    pub fn delete_service(&mut self, r: &ObjectRef) {
        if self.services.remove(r).is_some() || self.owned.contains_key(r) {
            self.dirty.insert(r.clone());
        }
    }

    pub fn upsert_endpoint_slice(&mut self, slice: EndpointSlice) {
        let Some(r) = ObjectRef::from_meta(&slice.metadata) else {
            tracing::warn!("ignoring EndpointSlice without metadata.name");
            return;
        };
        if self.slices.get(&r) == Some(&slice) {
            return;
        }
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

    pub fn delete_endpoint_slice(&mut self, r: &ObjectRef) {
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

    // -----------------------------------------------------------------------------------
    // Sync.

    /// Plans the Services that changed (or failed before) and writes the difference.
    /// Never fails as a whole: problems are logged with the Service's namespace/name and
    /// counted in the summary, and failed writes are retried by the next sync.
    pub fn sync(&mut self) -> SyncSummary {
        let mut summary = SyncSummary::default();
        let mut todo = std::mem::take(&mut self.dirty);
        todo.append(&mut std::mem::take(&mut self.retry));
        for svc in &todo {
            self.sync_service(svc, &mut summary);
        }

        for fk in std::mem::take(&mut self.unclaimed) {
            if self.frontends.get(&fk).is_some_and(|w| w.owner.is_none()) {
                match self.delete_frontend(&fk, &mut summary) {
                    Ok(()) => {
                        tracing::info!(frontend = %fk, "removed adopted frontend that no Service wants");
                        summary.frontends_deleted += 1;
                    }
                    Err(error) => {
                        tracing::error!(frontend = %fk, %error, "cannot remove stale frontend; will retry");
                        summary.errors += 1;
                        self.unclaimed.insert(fk);
                    }
                }
            }
        }
        self.remove_orphans(&mut summary);
        self.collect_backends(&mut summary);
        summary
    }

    fn sync_service(&mut self, svc: &ObjectRef, summary: &mut SyncSummary) {
        summary.services += 1;
        let plan = match self.services.get(svc) {
            Some(service) => {
                let slices = self.slices_of.get(svc).into_iter().flatten().filter_map(|r| self.slices.get(r));
                plan_service(service, slices)
            }
            None => ServicePlan::default(),
        };
        for problem in &plan.problems {
            tracing::warn!(
                service = %problem.service,
                port = problem.port.as_deref().unwrap_or(""),
                problem = %problem.kind,
                "skipping part of Service"
            );
            summary.skipped += 1;
        }

        // Removals first: they free map room for what follows.
        let wanted: BTreeSet<FrontendKey> = plan.frontends.iter().map(|f| f.key).collect();
        let stale: Vec<FrontendKey> =
            self.owned.get(svc).into_iter().flatten().filter(|fk| !wanted.contains(fk)).copied().collect();
        for fk in stale {
            match self.delete_frontend(&fk, summary) {
                Ok(()) => {
                    tracing::debug!(service = %svc, frontend = %fk, "removed frontend");
                    summary.frontends_deleted += 1;
                }
                Err(error) => {
                    tracing::error!(service = %svc, frontend = %fk, %error, "cannot remove frontend; will retry");
                    summary.errors += 1;
                    self.retry.insert(svc.clone());
                }
            }
        }

        for frontend in &plan.frontends {
            let fk = frontend.key;
            if let Some(other) = self.frontends.get(&fk).and_then(|w| w.owner.as_ref())
                && other != svc
            {
                tracing::warn!(
                    service = %svc, port = %frontend.port_name, frontend = %fk, owner = %other,
                    "frontend already programmed for another Service; skipped until that one lets go"
                );
                summary.skipped += 1;
                self.waiting.entry(fk).or_default().insert(svc.clone());
                continue;
            }
            let old_held = self.frontends.get(&fk).map(|w| w.held.clone()).unwrap_or_default();
            match self.write_frontend(frontend, summary) {
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
                    self.retreat(&fk, old_held, summary);
                    self.retry.insert(svc.clone());
                }
            }
        }
    }

    /// Backend id for `key`, creating the registry entry (not yet written) if needed.
    fn backend_id(&mut self, key: BackendKey) -> Result<u32> {
        if let Some(id) = self.backend_ids.get(&key) {
            return Ok(*id);
        }
        let id = self.backend_alloc.alloc().ok_or(Error::BackendIdsExhausted)?;
        let base = Backend4 {
            addr: addr_to_map(key.addr.octets()),
            port: port_to_map(key.port),
            proto: key.proto.ip_proto(),
            flags: 0,
        };
        self.backends.insert(id, BackendEntry { key: Some(key), base, written: None, holders: BTreeMap::new() });
        self.backend_ids.insert(key, id);
        // If nothing ends up holding it, the end of the sync drops it again.
        self.backends_dirty.insert(id);
        Ok(id)
    }

    /// Replaces the set of backends `fk` keeps alive, keeping the holders in the registry
    /// in step.
    fn set_holds(&mut self, fk: &FrontendKey, new: BTreeMap<u32, bool>) {
        let Some(w) = self.frontends.get_mut(fk) else { return };
        let old = std::mem::replace(&mut w.held, new.clone());
        for id in old.keys().filter(|id| !new.contains_key(id)) {
            if let Some(entry) = self.backends.get_mut(id) {
                entry.holders.remove(fk);
            }
            self.backends_dirty.insert(*id);
        }
        for (id, active) in &new {
            if old.get(id) != Some(active) {
                if let Some(entry) = self.backends.get_mut(id) {
                    entry.holders.insert(*fk, *active);
                }
                self.backends_dirty.insert(*id);
            }
        }
    }

    /// Writes one frontend in the documented order; returns the number of map writes.
    fn write_frontend(&mut self, desired: &Frontend, summary: &mut SyncSummary) -> Result<usize> {
        let mut writes = 0;
        let result = self.write_frontend_steps(desired, &mut writes);
        // Counted on failure too: the writes before the failure did happen.
        summary.map_writes += writes;
        result.map(|()| writes)
    }

    fn write_frontend_steps(&mut self, desired: &Frontend, writes: &mut usize) -> Result<()> {
        let fk = desired.key;
        if self.frontends.get(&fk).is_some_and(|w| w.applied.as_ref() == Some(desired)) {
            return Ok(());
        }

        // 1. Claim (or create) the frontend and its reverse-NAT entry.
        if !self.frontends.contains_key(&fk) {
            let index = self.rev_nat_alloc.alloc().ok_or(Error::RevNatExhausted)?;
            self.frontends.insert(
                fk,
                Written {
                    owner: None,
                    port_name: String::new(),
                    rev_nat: index,
                    rev_nat_written: false,
                    slot0: None,
                    slots: BTreeMap::new(),
                    held: BTreeMap::new(),
                    applied: None,
                },
            );
        }
        let w = self.frontends.get_mut(&fk).expect("inserted above");
        w.applied = None;
        w.port_name.clone_from(&desired.port_name);
        if w.owner.is_none() {
            w.owner = Some(desired.service.clone());
            self.owned.entry(desired.service.clone()).or_default().insert(fk);
            self.unclaimed.remove(&fk);
        }
        let rev_nat = w.rev_nat;
        if !w.rev_nat_written {
            self.maps.upsert_rev_nat(rev_nat, &rev_nat_value(&fk))?;
            *writes += 1;
            self.frontends.get_mut(&fk).expect("present").rev_nat_written = true;
        }

        // 2. Backends. While the slots change, this frontend holds the union of old and
        // new backends, "active" if active in either, so none is deleted or flagged
        // terminating while a slot may still point at it.
        let mut want: BTreeMap<u32, bool> = BTreeMap::new();
        let mut active_ids = Vec::with_capacity(desired.backends.len());
        for key in &desired.backends {
            let id = self.backend_id(*key)?;
            want.insert(id, true);
            active_ids.push(id);
        }
        for key in &desired.terminating {
            let id = self.backend_id(*key)?;
            want.entry(id).or_insert(false);
        }
        let count = u16::try_from(active_ids.len()).map_err(|_| Error::TooManyBackends(active_ids.len()))?;
        let mut transition = self.frontends[&fk].held.clone();
        for (id, active) in &want {
            *transition.entry(*id).or_insert(false) |= *active;
        }
        self.set_holds(&fk, transition);
        for id in want.keys() {
            let entry = self.backends.get_mut(id).expect("allocated above");
            let flags = entry.desired_flags();
            let needs_write = match entry.written {
                None => true,
                Some(written) => written & BACKEND_FLAG_TERMINATING != 0 && flags & BACKEND_FLAG_TERMINATING == 0,
            };
            if needs_write {
                let value = Backend4 { flags, ..entry.base };
                self.maps.upsert_backend(*id, &value)?;
                *writes += 1;
                entry.written = Some(flags);
            }
        }

        // 3. Slots 1..=N.
        let w = self.frontends.get_mut(&fk).expect("present");
        let old_count = w.slot0.map_or(0, |v| v.count);
        let slots = assign_slots(&w.slots, old_count, &active_ids);
        for (i, id) in slots.iter().enumerate() {
            let slot = u16::try_from(i + 1).expect("count fits u16");
            let value = Service4Value { backend_id: *id, rev_nat_index: rev_nat, ..Default::default() };
            if w.slots.get(&slot) != Some(&value) {
                self.maps.upsert_service(&service_key(&fk, slot), &value)?;
                *writes += 1;
                w.slots.insert(slot, value);
            }
        }

        // 4. Slot 0: the new count becomes visible only now.
        let (flags, affinity_timeout_s) = match desired.affinity_timeout_s {
            Some(t) => (SERVICE_FLAG_AFFINITY, t),
            None => (0, 0),
        };
        let front = Service4Value { backend_id: 0, count, rev_nat_index: rev_nat, flags, affinity_timeout_s };
        if w.slot0 != Some(front) {
            self.maps.upsert_service(&service_key(&fk, 0), &front)?;
            *writes += 1;
            w.slot0 = Some(front);
        }

        // 5. Stale slots, highest first, so the recorded slots stay a prefix on failure.
        let stale: Vec<u16> = w.slots.range(count + 1..).map(|(s, _)| *s).rev().collect();
        for slot in stale {
            self.maps.delete_service(&service_key(&fk, slot))?;
            *writes += 1;
            w.slots.remove(&slot);
        }

        // 6. Now only the new backends are referenced; the end of the sync deletes or
        // re-flags the others.
        self.set_holds(&fk, want);
        self.frontends.get_mut(&fk).expect("present").applied = Some(desired.clone());
        Ok(())
    }

    /// After a failed write: fall back to what the datapath could see before, so the
    /// failure holds no map room that other frontends could use.
    fn retreat(&mut self, fk: &FrontendKey, old_held: BTreeMap<u32, bool>, summary: &mut SyncSummary) {
        let Some(w) = self.frontends.get_mut(fk) else { return };
        w.applied = None;
        let Some(front) = w.slot0 else {
            // Never visible: remove it completely (best effort; what cannot be removed
            // stays recorded and is retried with the Service).
            if let Err(error) = self.delete_frontend(fk, summary) {
                tracing::debug!(frontend = %fk, %error, "cannot clean up partially written frontend yet");
            }
            return;
        };
        let extra: Vec<u16> = w.slots.range(front.count + 1..).map(|(s, _)| *s).rev().collect();
        for slot in extra {
            if self.maps.delete_service(&service_key(fk, slot)).is_err() {
                break;
            }
            summary.map_writes += 1;
            w.slots.remove(&slot);
        }
        let mut held = old_held;
        for v in w.slots.values() {
            held.insert(v.backend_id, true);
        }
        held.retain(|id, _| self.backends.contains_key(id));
        self.set_holds(fk, held);
    }

    /// Removes a frontend: slot 0 first, so that it disappears at once, then its slots,
    /// then its reverse-NAT entry. Its backends are released for the end of the sync.
    fn delete_frontend(&mut self, fk: &FrontendKey, summary: &mut SyncSummary) -> Result<()> {
        let Some(w) = self.frontends.get_mut(fk) else { return Ok(()) };
        w.applied = None;
        if w.slot0.is_some() {
            self.maps.delete_service(&service_key(fk, 0))?;
            summary.map_writes += 1;
            w.slot0 = None;
        }
        let slots: Vec<u16> = w.slots.keys().rev().copied().collect();
        for slot in slots {
            self.maps.delete_service(&service_key(fk, slot))?;
            summary.map_writes += 1;
            w.slots.remove(&slot);
        }
        if w.rev_nat_written {
            self.maps.delete_rev_nat(w.rev_nat)?;
            summary.map_writes += 1;
            w.rev_nat_written = false;
        }
        self.set_holds(fk, BTreeMap::new());
        let w = self.frontends.remove(fk).expect("present");
        self.rev_nat_alloc.release(u32::from(w.rev_nat));
        self.unclaimed.remove(fk);
        if let Some(owner) = &w.owner
            && let Some(set) = self.owned.get_mut(owner)
        {
            set.remove(fk);
            if set.is_empty() {
                self.owned.remove(owner);
            }
        }
        // Services that wanted this frontend while it was taken can have it now.
        if let Some(waiters) = self.waiting.remove(fk) {
            self.retry.extend(waiters);
        }
        Ok(())
    }

    fn remove_orphans(&mut self, summary: &mut SyncSummary) {
        for key in std::mem::take(&mut self.orphan_slots) {
            match self.maps.delete_service(&key) {
                Ok(()) => summary.map_writes += 1,
                Err(error) => {
                    tracing::error!(%error, "cannot remove stale service entry; will retry");
                    summary.errors += 1;
                    self.orphan_slots.insert(key);
                }
            }
        }
        for index in std::mem::take(&mut self.orphan_rev_nat) {
            match self.maps.delete_rev_nat(index) {
                Ok(()) => {
                    summary.map_writes += 1;
                    self.rev_nat_alloc.release(u32::from(index));
                }
                Err(error) => {
                    tracing::error!(rev_nat = index, %error, "cannot remove stale reverse-NAT entry; will retry");
                    summary.errors += 1;
                    self.orphan_rev_nat.insert(index);
                }
            }
        }
        for id in std::mem::take(&mut self.orphan_backends) {
            match self.maps.delete_backend(id) {
                Ok(()) => summary.map_writes += 1,
                Err(error) => {
                    tracing::error!(backend_id = id, %error, "cannot remove backend with invalid id; will retry");
                    summary.errors += 1;
                    self.orphan_backends.insert(id);
                }
            }
        }
    }

    /// Step 6: delete backends nobody references, and set each remaining backend's
    /// terminating flag from its holders. Runs after all slots of this sync are written.
    fn collect_backends(&mut self, summary: &mut SyncSummary) {
        for id in std::mem::take(&mut self.backends_dirty) {
            let Some(entry) = self.backends.get_mut(&id) else { continue };
            if entry.holders.is_empty() {
                if entry.written.is_some() {
                    if let Err(error) = self.maps.delete_backend(id) {
                        tracing::error!(backend_id = id, backend = %maps::display_backend(&entry.base), %error, "cannot delete backend; will retry");
                        summary.errors += 1;
                        self.backends_dirty.insert(id);
                        continue;
                    }
                    summary.map_writes += 1;
                    summary.backends_deleted += 1;
                }
                let entry = self.backends.remove(&id).expect("present");
                if let Some(key) = entry.key
                    && self.backend_ids.get(&key) == Some(&id)
                {
                    self.backend_ids.remove(&key);
                }
                self.backend_alloc.release(id);
                continue;
            }
            let flags = entry.desired_flags();
            if entry.written != Some(flags) {
                let value = Backend4 { flags, ..entry.base };
                match self.maps.upsert_backend(id, &value) {
                    Ok(()) => {
                        summary.map_writes += 1;
                        entry.written = Some(flags);
                    }
                    Err(error) => {
                        tracing::error!(backend_id = id, backend = %maps::display_backend(&value), %error, "cannot update backend; will retry");
                        summary.errors += 1;
                        self.backends_dirty.insert(id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::proxy::maps::{FakeLbMaps, MapKind};
    use crate::proxy::model::testutil::{Cond, service, slice, with_affinity};
    use crate::proxy::source::{ManifestDirSource, ServiceSource};

    /// Compares `actual` with `golden/<name>.txt`; `SKIFF_BLESS=1` rewrites the file.
    fn assert_golden(name: &str, actual: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/proxy/golden").join(format!("{name}.txt"));
        if std::env::var_os("SKIFF_BLESS").is_some_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read golden file {}: {e}; create it with SKIFF_BLESS=1 cargo test -p skiff-node --lib proxy",
                path.display()
            )
        });
        if expected != actual {
            panic!(
                "map dump differs from golden file {}\n--- expected\n{expected}--- actual\n{actual}---\n\
                 if the new dump is right: SKIFF_BLESS=1 cargo test -p skiff-node --lib proxy",
                path.display()
            );
        }
    }

    fn reconciler() -> LbReconciler<FakeLbMaps> {
        LbReconciler::new(FakeLbMaps::new())
    }

    fn web() -> Service {
        service("shop", "web", "10.96.0.10", &[("http", 80, "TCP")])
    }

    fn web_slice(endpoints: &[(&str, Cond)]) -> EndpointSlice {
        slice("shop", "web-abc", "web", &[("http", 8080, "TCP")], endpoints)
    }

    fn log(r: &mut LbReconciler<FakeLbMaps>) -> Vec<String> {
        r.maps_mut().take_log().iter().map(ToString::to_string).collect()
    }

    const THREE: [(&str, Cond); 3] =
        [("10.244.1.2", Cond::Ready), ("10.244.1.3", Cond::Ready), ("10.244.2.4", Cond::Unset)];

    #[test]
    fn one_service_three_backends() {
        let mut r = reconciler();
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE));
        let s = r.sync();
        assert_eq!((s.services, s.frontends_written, s.errors, s.skipped), (1, 1, 0, 0));
        assert_golden("one_service", &r.maps().dump());
        // Nothing changed: a second sync plans nothing and writes nothing.
        assert_eq!(r.sync(), SyncSummary::default());
    }

    #[test]
    fn endpoints_change_keeps_slots_of_remaining_backends() {
        let mut r = reconciler();
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE));
        r.sync();
        // .2 goes away, .5 arrives: .5 takes .2's slot, .3 and .4 stay where they were.
        r.upsert_endpoint_slice(web_slice(&[
            ("10.244.1.3", Cond::Ready),
            ("10.244.2.4", Cond::Ready),
            ("10.244.2.5", Cond::Ready),
        ]));
        let s = r.sync();
        assert_eq!((s.frontends_written, s.backends_deleted), (1, 1));
        assert_golden("endpoints_change", &r.maps().dump());

        // Shrink to one backend: stale slots go, backends are released.
        r.upsert_endpoint_slice(web_slice(&[("10.244.2.5", Cond::Ready)]));
        r.sync();
        assert_golden("endpoints_shrink", &r.maps().dump());
    }

    #[test]
    fn terminating_endpoint_keeps_its_backend_entry() {
        let mut r = reconciler();
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE));
        r.sync();
        r.upsert_endpoint_slice(web_slice(&[
            ("10.244.1.2", Cond::Ready),
            ("10.244.1.3", Cond::Terminating),
            ("10.244.2.4", Cond::Ready),
            // Failing its readiness probe, not terminating: no new flows, and gone.
            ("10.244.2.9", Cond::NotReady),
        ]));
        r.sync();
        assert_golden("terminating", &r.maps().dump());

        // The pod is gone: now its backend entry goes too.
        r.upsert_endpoint_slice(web_slice(&[("10.244.1.2", Cond::Ready), ("10.244.2.4", Cond::Ready)]));
        let s = r.sync();
        assert_eq!(s.backends_deleted, 1);
        assert!(!r.maps().dump().contains("10.244.1.3"));

        // All endpoints gone: the frontend stays with count 0, so the datapath rejects.
        r.upsert_endpoint_slice(web_slice(&[]));
        r.sync();
        assert_golden("no_backends", &r.maps().dump());
    }

    #[test]
    fn terminating_flag_is_set_only_after_the_slots_let_go() {
        let mut r = reconciler();
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE));
        r.sync();
        log(&mut r);
        r.upsert_endpoint_slice(web_slice(&[
            ("10.244.1.2", Cond::Terminating),
            ("10.244.1.3", Cond::Ready),
            ("10.244.2.4", Cond::Ready),
        ]));
        r.sync();
        assert_eq!(
            log(&mut r),
            [
                "upsert service 10.96.0.10:80/TCP slot 1 backend=3 rev_nat=1",
                "upsert service 10.96.0.10:80/TCP slot 0 count=2 rev_nat=1 flags=0 affinity=0s",
                "delete service 10.96.0.10:80/TCP slot 3",
                "upsert backend 1 10.244.1.2:8080/TCP flags=terminating",
            ]
        );
        // Ready again: the flag is cleared *before* the backend re-enters a slot.
        r.upsert_endpoint_slice(web_slice(&THREE));
        r.sync();
        assert_eq!(
            log(&mut r),
            [
                "upsert backend 1 10.244.1.2:8080/TCP flags=0",
                "upsert service 10.96.0.10:80/TCP slot 3 backend=1 rev_nat=1",
                "upsert service 10.96.0.10:80/TCP slot 0 count=3 rev_nat=1 flags=0 affinity=0s",
            ]
        );
    }

    #[test]
    fn session_affinity() {
        let mut r = reconciler();
        r.upsert_service(with_affinity(web(), None));
        r.upsert_service(with_affinity(service("shop", "cart", "10.96.0.11", &[("", 80, "TCP")]), Some(600)));
        r.upsert_endpoint_slice(web_slice(&THREE[..1]));
        r.sync();
        assert_golden("affinity", &r.maps().dump());
    }

    #[test]
    fn multi_port_service() {
        let mut r = reconciler();
        r.upsert_service(service(
            "kube-system",
            "dns",
            "10.96.0.10",
            &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")],
        ));
        r.upsert_endpoint_slice(slice(
            "kube-system",
            "dns-1",
            "dns",
            &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")],
            &[("10.244.1.7", Cond::Ready), ("10.244.2.7", Cond::Ready)],
        ));
        let s = r.sync();
        assert_eq!(s.frontends_written, 3);
        assert_golden("multi_port", &r.maps().dump());
    }

    #[test]
    fn service_deleted_in_order_and_shared_backend_survives() {
        let mut r = reconciler();
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE[..2]));
        // A second Service selecting one of the same pods shares its backend entry.
        r.upsert_service(service("shop", "web-canary", "10.96.0.12", &[("http", 80, "TCP")]));
        r.upsert_endpoint_slice(slice("shop", "web-canary-x", "web-canary", &[("http", 8080, "TCP")], &THREE[1..2]));
        r.sync();
        log(&mut r);

        r.delete_service(&ObjectRef::new("shop", "web"));
        r.delete_endpoint_slice(&ObjectRef::new("shop", "web-abc"));
        let s = r.sync();
        assert_eq!((s.frontends_deleted, s.backends_deleted), (1, 1));
        assert_eq!(
            log(&mut r),
            [
                "delete service 10.96.0.10:80/TCP slot 0",
                "delete service 10.96.0.10:80/TCP slot 2",
                "delete service 10.96.0.10:80/TCP slot 1",
                "delete rev_nat 1",
                "delete backend 1",
            ]
        );
        assert_golden("service_deleted", &r.maps().dump());

        // The freed index and id are reused, smallest first.
        r.upsert_service(service("shop", "new", "10.96.0.13", &[("", 443, "TCP")]));
        r.upsert_endpoint_slice(slice("shop", "new-1", "new", &[("", 8443, "TCP")], &THREE[..1]));
        r.sync();
        let dump = r.maps().dump();
        assert!(dump.contains("rev_nat 1 10.96.0.13:443"), "{dump}");
        assert!(dump.contains("backend 1 10.244.1.2:8443/TCP"), "{dump}");
    }

    #[test]
    fn bad_input_is_skipped_and_the_rest_programmed() {
        let mut r = reconciler();
        r.upsert_service(service("shop", "mixed", "10.96.0.20", &[("sctp", 9000, "SCTP"), ("http", 80, "TCP")]));
        r.upsert_endpoint_slice(slice(
            "shop",
            "mixed-1",
            "mixed",
            &[("sctp", 9000, "SCTP"), ("http", 8080, "TCP")],
            &[("10.244.1.2", Cond::Ready), ("10.244.1.256", Cond::Ready)],
        ));
        r.upsert_service(service("shop", "huge", "10.96.0.21", &[("", 70000, "TCP")]));
        r.upsert_service(service("shop", "v6", "fd00::1", &[("", 80, "TCP")]));
        r.upsert_service(service("shop", "headless", "None", &[("", 80, "TCP")]));
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE));
        let s = r.sync();
        // sctp port, bad address, port 70000, IPv6-only.
        assert_eq!((s.skipped, s.errors, s.frontends_written), (4, 0, 2));
        assert_golden("bad_input", &r.maps().dump());
    }

    #[test]
    fn map_full_skips_one_service_and_retries_it() {
        // web needs 4 service entries, api 3 and dns 2: room for web and dns only.
        let mut r = LbReconciler::new(FakeLbMaps::new().with_capacity(MapKind::Services, 7));
        r.upsert_service(service("a", "api", "10.96.0.30", &[("", 80, "TCP")]));
        r.upsert_endpoint_slice(slice(
            "a",
            "api-1",
            "api",
            &[("", 8080, "TCP")],
            &[("10.244.3.1", Cond::Ready), ("10.244.3.2", Cond::Ready)],
        ));
        r.upsert_service(service("b", "dns", "10.96.0.31", &[("", 53, "UDP")]));
        r.upsert_endpoint_slice(slice("b", "dns-1", "dns", &[("", 53, "UDP")], &[("10.244.3.3", Cond::Ready)]));
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE));
        // Processing order is a/api, b/dns, shop/web: api fits (3), dns fits (5), web
        // does not (needs 4 more).
        let s = r.sync();
        assert_eq!((s.frontends_written, s.errors), (2, 1));
        assert!(r.has_pending());
        // web's partial entries were removed again: no slots, no backends, no rev_nat.
        assert_golden("map_full", &r.maps().dump());

        // Still full: the retry fails the same way and changes nothing.
        let before = r.maps().dump();
        let s = r.sync();
        assert_eq!((s.services, s.errors), (1, 1));
        assert_eq!(r.maps().dump(), before);

        // Room again (an operator raised the capacity): the retry programs web.
        r.maps_mut().set_capacity(MapKind::Services, None);
        let s = r.sync();
        assert_eq!((s.services, s.frontends_written, s.errors), (1, 1, 0));
        assert!(!r.has_pending());
        assert_golden("map_full_retried", &r.maps().dump());
    }

    #[test]
    fn map_full_while_growing_keeps_the_old_visible_state() {
        let mut r = LbReconciler::new(FakeLbMaps::new().with_capacity(MapKind::Services, 4));
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE[..2]));
        r.sync();
        let before = r.maps().dump();
        // Growing to 4 backends needs 5 entries: slot 3 fits, slot 4 does not.
        r.upsert_endpoint_slice(web_slice(&[
            ("10.244.1.2", Cond::Ready),
            ("10.244.1.3", Cond::Ready),
            ("10.244.2.4", Cond::Ready),
            ("10.244.2.5", Cond::Ready),
        ]));
        let s = r.sync();
        assert_eq!(s.errors, 1);
        // Slot 3 was removed again and the two new backends released.
        assert_eq!(r.maps().dump(), before);
    }

    #[test]
    fn backends_map_full() {
        let mut r = LbReconciler::new(FakeLbMaps::new().with_capacity(MapKind::Backends, 3));
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE));
        r.upsert_service(service("z", "other", "10.96.0.40", &[("", 80, "TCP")]));
        r.upsert_endpoint_slice(slice("z", "other-1", "other", &[("", 80, "TCP")], &[("10.244.9.1", Cond::Ready)]));
        let s = r.sync();
        assert_eq!((s.frontends_written, s.errors), (1, 1));
        let dump = r.maps().dump();
        assert!(dump.contains("service 10.96.0.10:80/TCP slot 0 count=3"), "{dump}");
        assert!(!dump.contains("10.96.0.40"), "{dump}");
    }

    #[test]
    fn adopt_after_restart_keeps_ids_and_writes_nothing() {
        let mut r = reconciler();
        // Create and delete a first Service so ids and indices do not start at 1.
        r.upsert_service(service("x", "gone", "10.96.0.50", &[("", 80, "TCP")]));
        r.upsert_endpoint_slice(slice("x", "gone-1", "gone", &[("", 80, "TCP")], &[("10.244.5.5", Cond::Ready)]));
        r.sync();
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&[
            ("10.244.1.2", Cond::Ready),
            ("10.244.1.3", Cond::Terminating),
            ("10.244.2.4", Cond::Ready),
        ]));
        r.upsert_service(with_affinity(service("shop", "cart", "10.96.0.11", &[("", 80, "TCP")]), Some(60)));
        r.upsert_endpoint_slice(slice("shop", "cart-1", "cart", &[("", 80, "TCP")], &THREE[..1]));
        r.sync();
        r.delete_service(&ObjectRef::new("x", "gone"));
        r.sync();
        let before = r.maps().dump();
        assert_golden("adopt_before_restart", &before);

        // Restart: a new reconciler over the same maps, fed the same objects.
        let mut maps = r.into_maps();
        maps.take_log();
        let mut r = LbReconciler::adopt(maps).unwrap();
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&[
            ("10.244.1.2", Cond::Ready),
            ("10.244.1.3", Cond::Terminating),
            ("10.244.2.4", Cond::Ready),
        ]));
        r.upsert_service(with_affinity(service("shop", "cart", "10.96.0.11", &[("", 80, "TCP")]), Some(60)));
        r.upsert_endpoint_slice(slice("shop", "cart-1", "cart", &[("", 80, "TCP")], &THREE[..1]));
        let s = r.sync();
        assert_eq!(log(&mut r), Vec::<String>::new(), "an unchanged restart must not write");
        assert_eq!((s.frontends_unchanged, s.errors), (2, 0));
        assert_eq!(r.maps().dump(), before);

        // New backends after the restart get ids that do not collide with adopted ones.
        r.upsert_endpoint_slice(web_slice(&[
            ("10.244.1.2", Cond::Ready),
            ("10.244.2.4", Cond::Ready),
            ("10.244.7.7", Cond::Ready),
        ]));
        r.sync();
        assert_golden("adopt_after_change", &r.maps().dump());
    }

    #[test]
    fn adopt_removes_what_no_service_wants() {
        let mut r = reconciler();
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE));
        r.upsert_service(service("old", "stale", "10.96.0.60", &[("", 80, "TCP")]));
        r.upsert_endpoint_slice(slice("old", "stale-1", "stale", &[("", 80, "TCP")], &[("10.244.6.6", Cond::Ready)]));
        r.sync();
        let mut maps = r.into_maps();
        // Leftovers of a crashed run: an orphan rev_nat entry and an SCTP slot.
        maps.rev_nat.insert(77, RevNat4::default());
        maps.services
            .insert(Service4Key::new(addr_to_map([10, 96, 0, 99]), port_to_map(9), 132, 0), Service4Value::default());
        maps.take_log();

        // After the restart only web still exists.
        let mut r = LbReconciler::adopt(maps).unwrap();
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE));
        let s = r.sync();
        assert_eq!((s.frontends_deleted, s.backends_deleted, s.errors), (1, 1, 0));
        assert_golden("adopt_removes_stale", &r.maps().dump());
        assert!(!r.has_pending());
    }

    #[test]
    fn write_order_for_an_update() {
        let mut r = reconciler();
        r.upsert_service(web());
        r.upsert_endpoint_slice(web_slice(&THREE));
        r.sync();
        assert_eq!(
            log(&mut r),
            [
                "upsert rev_nat 1 10.96.0.10:80",
                "upsert backend 1 10.244.1.2:8080/TCP flags=0",
                "upsert backend 2 10.244.1.3:8080/TCP flags=0",
                "upsert backend 3 10.244.2.4:8080/TCP flags=0",
                "upsert service 10.96.0.10:80/TCP slot 1 backend=1 rev_nat=1",
                "upsert service 10.96.0.10:80/TCP slot 2 backend=2 rev_nat=1",
                "upsert service 10.96.0.10:80/TCP slot 3 backend=3 rev_nat=1",
                "upsert service 10.96.0.10:80/TCP slot 0 count=3 rev_nat=1 flags=0 affinity=0s",
            ]
        );
        // Replace two backends by one new: backends, slots, count, stale slots, release.
        r.upsert_endpoint_slice(web_slice(&[("10.244.1.3", Cond::Ready), ("10.244.9.9", Cond::Ready)]));
        r.sync();
        assert_eq!(
            log(&mut r),
            [
                "upsert backend 4 10.244.9.9:8080/TCP flags=0",
                "upsert service 10.96.0.10:80/TCP slot 1 backend=4 rev_nat=1",
                "upsert service 10.96.0.10:80/TCP slot 0 count=2 rev_nat=1 flags=0 affinity=0s",
                "delete service 10.96.0.10:80/TCP slot 3",
                "delete backend 1",
                "delete backend 3",
            ]
        );
    }

    #[test]
    fn work_is_proportional_to_the_change() {
        let mut r = reconciler();
        for i in 0..100u8 {
            let name = format!("svc{i:03}");
            r.upsert_service(service("load", &name, &format!("10.96.1.{i}"), &[("", 80, "TCP")]));
            r.upsert_endpoint_slice(slice(
                "load",
                &format!("{name}-1"),
                &name,
                &[("", 8080, "TCP")],
                &[(&format!("10.244.10.{i}"), Cond::Ready), (&format!("10.244.11.{i}"), Cond::Ready)],
            ));
        }
        let s = r.sync();
        assert_eq!(s.frontends_written, 100);
        log(&mut r);

        // Re-feeding identical objects (a resync) marks nothing dirty.
        r.upsert_service(service("load", "svc042", "10.96.1.42", &[("", 80, "TCP")]));
        assert!(!r.has_pending());

        // One endpoint of one Service changes.
        r.upsert_endpoint_slice(slice(
            "load",
            "svc042-1",
            "svc042",
            &[("", 8080, "TCP")],
            &[("10.244.10.42", Cond::Ready), ("10.244.12.42", Cond::Ready)],
        ));
        let s = r.sync();
        assert_eq!((s.services, s.frontends_written, s.frontends_unchanged), (1, 1, 0));
        let writes = log(&mut r);
        assert_eq!(
            writes,
            [
                "upsert backend 201 10.244.12.42:8080/TCP flags=0",
                "upsert service 10.96.1.42:80/TCP slot 2 backend=201 rev_nat=43",
                "delete backend 86",
            ]
        );
        assert_eq!(s.map_writes, writes.len());
    }

    #[test]
    fn conflicting_frontend_waits_for_the_owner() {
        let mut r = reconciler();
        r.upsert_service(service("a", "first", "10.96.0.70", &[("", 80, "TCP")]));
        r.upsert_service(service("b", "second", "10.96.0.70", &[("", 80, "TCP")]));
        let s = r.sync();
        assert_eq!((s.frontends_written, s.skipped), (1, 1));
        r.delete_service(&ObjectRef::new("a", "first"));
        r.sync();
        // The deletion woke "second", which takes the frontend over on the next sync.
        assert!(r.has_pending());
        let s = r.sync();
        assert_eq!(s.frontends_written, 1);
        assert!(r.maps().dump().contains("service 10.96.0.70:80/TCP slot 0 count=0 rev_nat=1"));
    }

    #[test]
    fn slice_relabelled_to_another_service() {
        let mut r = reconciler();
        r.upsert_service(web());
        r.upsert_service(service("shop", "web2", "10.96.0.80", &[("http", 80, "TCP")]));
        r.upsert_endpoint_slice(web_slice(&THREE[..1]));
        r.sync();
        r.upsert_endpoint_slice(slice("shop", "web-abc", "web2", &[("http", 8080, "TCP")], &THREE[..1]));
        let s = r.sync();
        assert_eq!(s.services, 2);
        let dump = r.maps().dump();
        assert!(dump.contains("service 10.96.0.10:80/TCP slot 0 count=0"), "{dump}");
        assert!(dump.contains("service 10.96.0.80:80/TCP slot 0 count=1"), "{dump}");
    }

    #[test]
    fn id_allocator_reuses_smallest_and_merges() {
        let mut a = IdAllocator::new(1, 10);
        assert_eq!((a.alloc(), a.alloc(), a.alloc()), (Some(1), Some(2), Some(3)));
        assert!(a.reserve(7));
        assert!(!a.reserve(7));
        a.release(2);
        a.release(1);
        assert_eq!(a.alloc(), Some(1));
        a.release(3);
        assert_eq!(a.free, BTreeMap::from([(2, 6), (8, 10)]));
        let mut full = IdAllocator::new(1, 1);
        assert_eq!((full.alloc(), full.alloc()), (Some(1), None));
    }

    #[test]
    fn assign_slots_minimises_moves() {
        let v = |id| Service4Value { backend_id: id, ..Default::default() };
        let old: BTreeMap<u16, Service4Value> = [(1, v(10)), (2, v(20)), (3, v(30)), (4, v(40))].into();
        // 20 leaves, 50 arrives: 50 takes slot 2.
        assert_eq!(assign_slots(&old, 4, &[10, 30, 40, 50]), [10, 50, 30, 40]);
        // 10 and 30 leave: the tail (40) moves into slot 1.
        assert_eq!(assign_slots(&old, 4, &[20, 40]), [40, 20]);
        // Slots beyond the old count are not trusted.
        assert_eq!(assign_slots(&old, 2, &[30, 10]), [10, 30]);
    }

    #[test]
    fn demo_manifests_through_the_dir_source() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/proxy/testdata/demo");
        let mut source = ManifestDirSource::new(dir);
        let mut r = reconciler();
        for event in source.poll().unwrap() {
            r.apply(event);
        }
        let s = r.sync();
        assert_eq!(s.errors, 0);
        assert_golden("demo", &r.maps().dump());
    }
}
