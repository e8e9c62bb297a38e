//! Adoption: rebuilding the record of the maps from what an earlier run left in them.
//!
//! Every frontend keeps its reverse-NAT index and every backend its id, so conntrack and
//! affinity entries stay valid across a restart of the agent. Frontends come back
//! unclaimed and backends unheld: the first sync keeps what the fed Services still want
//! (writing nothing when nothing changed) and removes the rest. Entries that cannot be
//! rebuilt (id 0, a protocol we do not balance, a reverse-NAT entry no frontend uses)
//! are recorded as orphans for that sync to delete.
//!
//! This module must not write the maps: it only reads them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use skiff_ebpf_common::{RevNat4, addr_from_map, port_from_map};

use super::error::{Error, Result};
use super::state::{MapState, Written, rev_nat_value};
use crate::proxy::maps::LbMaps;
use crate::proxy::model::{FrontendKey, Protocol};

impl MapState {
    /// The record of what `maps` hold. Nothing is written.
    pub(super) fn adopt(maps: &impl LbMaps) -> Result<Self> {
        let services = maps.dump_services()?;
        let mut backends = maps.dump_backends()?;
        let rev_nat: BTreeMap<u32, RevNat4> = maps.dump_rev_nat()?.into_iter().collect();
        let mut this = Self::default();

        backends.sort_by_key(|(id, _)| *id);
        for (id, value) in backends {
            // Id 0 is never allocated: an entry there is garbage from elsewhere.
            if !this.backends.adopt(id, value) {
                this.orphan_backends.insert(id);
            }
        }

        for (key, value) in services {
            let proto = Protocol::from_ip_proto(key.proto);
            let (Some(proto), 0) = (proto, key.scope) else {
                this.orphan_slots.insert(key);
                continue;
            };
            let fk =
                FrontendKey { vip: Ipv4Addr::from(addr_from_map(key.addr)), port: port_from_map(key.dport), proto };
            let w = this.frontends.entry(fk).or_insert_with(|| Written::new(0));
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
                Some(i) if this.rev_nat_ids.reserve(i) => i,
                other => {
                    // Missing, zero, or shared with another frontend: give this one a
                    // fresh index; the first sync rewrites its entries to match.
                    let fresh = this.rev_nat_ids.alloc().ok_or(Error::RevNatExhausted)?;
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
                .filter(|id| this.backends.contains(*id))
                .map(|id| (id, true))
                .collect();
            this.set_holds(&fk, held);
            this.unclaimed.insert(fk);
        }

        let in_use: BTreeSet<u32> = this.frontends.values().map(|w| w.rev_nat).collect();
        for index in rev_nat.keys() {
            if !in_use.contains(index) {
                this.rev_nat_ids.reserve(*index);
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
}
