//! What the maps hold, as the reconciler wrote (or adopted) it: the record that lets a
//! sync write only differences and fall back to what the datapath could see.
//!
//! The record is exact: every entry here is in the maps and the other way round, except
//! for entries listed as orphans or unclaimed, which the next sync removes.
//!
//! This module must not write the maps (the writer does, then records the result here).

use std::collections::{BTreeMap, BTreeSet};

use skiff_ebpf_common::{RevNat4, Service4Key, Service4Value, addr_to_map, port_to_map};

use super::ids::{Backends, IdAllocator};
use crate::proxy::model::{Frontend, FrontendKey, ObjectRef};

/// A frontend as written in the maps.
#[derive(Debug, Clone)]
pub(super) struct Written {
    /// The Service that programs it; `None` for a frontend adopted from the maps and not
    /// yet claimed.
    pub(super) owner: Option<ObjectRef>,
    pub(super) port_name: String,
    pub(super) rev_nat: u32,
    pub(super) rev_nat_written: bool,
    /// Slot 0 as in the map; `None` when absent, i.e. the datapath does not see the
    /// frontend.
    pub(super) slot0: Option<Service4Value>,
    /// Slots ≥ 1 present in the map.
    pub(super) slots: BTreeMap<u16, Service4Value>,
    /// Backend ids this frontend keeps alive → whether it sends them new flows.
    pub(super) held: BTreeMap<u32, bool>,
    /// The desired state last written completely; a frontend whose plan equals it is
    /// skipped without touching the maps.
    pub(super) applied: Option<Frontend>,
}

impl Written {
    /// A frontend with reverse-NAT index `rev_nat` and nothing in the maps yet.
    pub(super) fn new(rev_nat: u32) -> Self {
        Self {
            owner: None,
            port_name: String::new(),
            rev_nat,
            rev_nat_written: false,
            slot0: None,
            slots: BTreeMap::new(),
            held: BTreeMap::new(),
            applied: None,
        }
    }
}

/// The record of the maps, plus the work left over for the next sync.
#[derive(Debug)]
pub(super) struct MapState {
    pub(super) frontends: BTreeMap<FrontendKey, Written>,
    pub(super) owned: BTreeMap<ObjectRef, BTreeSet<FrontendKey>>,
    pub(super) backends: Backends,
    pub(super) rev_nat_ids: IdAllocator,
    /// Services with a failed write (or waiting for a frontend held by another Service).
    pub(super) retry: BTreeSet<ObjectRef>,
    /// Adopted frontends not claimed yet: removed at the end of the next sync.
    pub(super) unclaimed: BTreeSet<FrontendKey>,
    /// Adopted entries that belong to no frontend we could rebuild: removed next sync.
    pub(super) orphan_slots: BTreeSet<Service4Key>,
    pub(super) orphan_rev_nat: BTreeSet<u32>,
    pub(super) orphan_backends: BTreeSet<u32>,
    /// Frontends wanted by a Service while another Service holds them.
    pub(super) waiting: BTreeMap<FrontendKey, BTreeSet<ObjectRef>>,
    /// The Maglev table size of frontends with few backends (prime).
    pub(super) maglev_table_size: u16,
}

impl Default for MapState {
    fn default() -> Self {
        Self {
            frontends: BTreeMap::new(),
            owned: BTreeMap::new(),
            backends: Backends::default(),
            rev_nat_ids: IdAllocator::ids(),
            retry: BTreeSet::new(),
            unclaimed: BTreeSet::new(),
            orphan_slots: BTreeSet::new(),
            orphan_rev_nat: BTreeSet::new(),
            orphan_backends: BTreeSet::new(),
            waiting: BTreeMap::new(),
            maglev_table_size: crate::proxy::maglev::DEFAULT_TABLE_SIZE,
        }
    }
}

impl MapState {
    /// Whether the next sync has work apart from changed inputs.
    pub(super) fn has_pending(&self) -> bool {
        !self.retry.is_empty()
            || !self.unclaimed.is_empty()
            || !self.orphan_slots.is_empty()
            || !self.orphan_rev_nat.is_empty()
            || !self.orphan_backends.is_empty()
            || self.backends.has_dirty()
    }

    /// Replaces the set of backends `fk` keeps alive, keeping the holders in the registry
    /// in step.
    pub(super) fn set_holds(&mut self, fk: &FrontendKey, new: BTreeMap<u32, bool>) {
        let Some(w) = self.frontends.get_mut(fk) else { return };
        let old = std::mem::replace(&mut w.held, new.clone());
        for id in old.keys().filter(|id| !new.contains_key(id)) {
            self.backends.let_go(*id, fk);
        }
        for (id, active) in &new {
            if old.get(id) != Some(active) {
                self.backends.hold(*id, *fk, *active);
            }
        }
    }
}

/// Key of slot `slot` of frontend `fk` in the services map.
pub(super) fn service_key(fk: &FrontendKey, slot: u16) -> Service4Key {
    Service4Key::new(addr_to_map(fk.vip.octets()), port_to_map(fk.port), fk.proto.ip_proto(), slot)
}

/// What replies of flows through `fk` must look like they come from.
pub(super) fn rev_nat_value(fk: &FrontendKey) -> RevNat4 {
    RevNat4 { addr: addr_to_map(fk.vip.octets()), port: port_to_map(fk.port), _pad: 0 }
}
