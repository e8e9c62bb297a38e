//! Ordered writes: the only code that changes the maps, and the order it does so in.
//!
//! For one frontend ([`MapState::write_frontend`]), chosen so that the datapath never
//! sees a half-written Service: reverse-NAT entry, backends, slots `1..=N`, slot 0, stale
//! slots; on failure [`MapState::retreat`] falls back to the last visible state. A
//! removed frontend goes the other way ([`MapState::delete_frontend`]). At the end of a
//! sync, [`MapState::collect_backends`] deletes or re-flags the backends whose holders
//! changed, and [`MapState::remove_orphans`] deletes what adoption could not place.
//!
//! Every write is recorded in [`MapState`] as soon as it succeeded, so the record stays
//! exact whatever fails. This module must not decide *what* a frontend should hold (the
//! model does) nor which Services to look at (the sync does).

use std::collections::{BTreeMap, BTreeSet};

use skiff_ebpf_common::{
    BACKEND_FLAG_TERMINATING, Backend4, SERVICE_FLAG_AFFINITY, SERVICE_FLAG_DSR, SERVICE_FLAG_MAGLEV, Service4Value,
};

use super::error::{Error, Result};
use super::state::{MapState, Written, rev_nat_value, service_key};
use super::summary::SyncSummary;
use crate::proxy::maglev;
use crate::proxy::maps::{self, LbMaps};
use crate::proxy::model::{Frontend, FrontendKey};

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

impl MapState {
    /// Writes one frontend in the documented order; returns the number of map writes.
    pub(super) fn write_frontend(
        &mut self,
        maps: &mut impl LbMaps,
        desired: &Frontend,
        summary: &mut SyncSummary,
    ) -> Result<usize> {
        let mut writes = 0;
        let result = self.write_frontend_steps(maps, desired, &mut writes);
        // Counted on failure too: the writes before the failure did happen.
        summary.map_writes += writes;
        result.map(|()| writes)
    }

    fn write_frontend_steps(&mut self, maps: &mut impl LbMaps, desired: &Frontend, writes: &mut usize) -> Result<()> {
        let fk = desired.key;
        if self.frontends.get(&fk).is_some_and(|w| w.applied.as_ref() == Some(desired)) {
            return Ok(());
        }

        // 1. Claim (or create) the frontend and its reverse-NAT entry.
        if !self.frontends.contains_key(&fk) {
            let index = self.rev_nat_ids.alloc().ok_or(Error::RevNatExhausted)?;
            self.frontends.insert(fk, Written::new(index));
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
            maps.upsert_rev_nat(rev_nat, &rev_nat_value(&fk))?;
            *writes += 1;
            w.rev_nat_written = true;
        }

        // 2. Backends. While the slots change, this frontend holds the union of old and
        // new backends, "active" if active in either, so none is deleted or flagged
        // terminating while a slot may still point at it.
        let mut want: BTreeMap<u32, bool> = BTreeMap::new();
        let mut active_ids = Vec::with_capacity(desired.backends.len());
        for key in &desired.backends {
            let id = self.backends.id_for(*key)?;
            want.insert(id, true);
            active_ids.push(id);
        }
        for key in &desired.terminating {
            let id = self.backends.id_for(*key)?;
            want.entry(id).or_insert(false);
        }
        // The slots' contents: the backends themselves, or for Maglev its lookup table
        // (built from the sorted backend addresses, so the same on every node).
        let desired_slots = if desired.maglev && !active_ids.is_empty() {
            let m = maglev::table_size(self.maglev_table_size, desired.backends.len());
            maglev::table(&desired.backends, m).into_iter().map(|i| active_ids[i]).collect()
        } else {
            Vec::new()
        };
        let count = if desired_slots.is_empty() { active_ids.len() } else { desired_slots.len() };
        let count = u16::try_from(count).map_err(|_| Error::TooManyBackends(active_ids.len()))?;
        let mut transition = self.frontends[&fk].held.clone();
        for (id, active) in &want {
            *transition.entry(*id).or_insert(false) |= *active;
        }
        self.set_holds(&fk, transition);
        for id in want.keys() {
            let entry = self.backends.get_mut(*id).expect("allocated above");
            let flags = entry.desired_flags();
            let needs_write = match entry.written {
                None => true,
                Some(written) => written & BACKEND_FLAG_TERMINATING != 0 && flags & BACKEND_FLAG_TERMINATING == 0,
            };
            if needs_write {
                let value = Backend4 { flags, ..entry.base };
                maps.upsert_backend(*id, &value)?;
                *writes += 1;
                entry.written = Some(flags);
            }
        }

        // 3. Slots 1..=N.
        let w = self.frontends.get_mut(&fk).expect("present");
        let old_count = w.slot0.map_or(0, |v| v.count);
        let slots =
            if desired_slots.is_empty() { assign_slots(&w.slots, old_count, &active_ids) } else { desired_slots };
        for (i, id) in slots.iter().enumerate() {
            let slot = u16::try_from(i + 1).expect("count fits u16");
            let value = Service4Value { backend_id: *id, rev_nat_index: rev_nat, ..Default::default() };
            if w.slots.get(&slot) != Some(&value) {
                maps.upsert_service(&service_key(&fk, slot), &value)?;
                *writes += 1;
                w.slots.insert(slot, value);
            }
        }

        // 4. Slot 0: the new count becomes visible only now.
        let (mut flags, affinity_timeout_s) = match desired.affinity_timeout_s {
            Some(t) => (SERVICE_FLAG_AFFINITY, t),
            None => (0, 0),
        };
        if desired.maglev {
            flags |= SERVICE_FLAG_MAGLEV;
        }
        if desired.dsr {
            flags |= SERVICE_FLAG_DSR;
        }
        let front = Service4Value { backend_id: 0, count, rev_nat_index: rev_nat, flags, affinity_timeout_s };
        if w.slot0 != Some(front) {
            maps.upsert_service(&service_key(&fk, 0), &front)?;
            *writes += 1;
            w.slot0 = Some(front);
        }

        // 5. Stale slots, highest first, so the recorded slots stay a prefix on failure.
        let stale: Vec<u16> = w.slots.range(count + 1..).map(|(s, _)| *s).rev().collect();
        for slot in stale {
            maps.delete_service(&service_key(&fk, slot))?;
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
    pub(super) fn retreat(
        &mut self,
        maps: &mut impl LbMaps,
        fk: &FrontendKey,
        old_held: BTreeMap<u32, bool>,
        summary: &mut SyncSummary,
    ) {
        let Some(w) = self.frontends.get_mut(fk) else { return };
        w.applied = None;
        let Some(front) = w.slot0 else {
            // Never visible: remove it completely (best effort; what cannot be removed
            // stays recorded and is retried with the Service).
            if let Err(error) = self.delete_frontend(maps, fk, summary) {
                tracing::debug!(frontend = %fk, %error, "cannot clean up partially written frontend yet");
            }
            return;
        };
        let extra: Vec<u16> = w.slots.range(front.count + 1..).map(|(s, _)| *s).rev().collect();
        for slot in extra {
            if maps.delete_service(&service_key(fk, slot)).is_err() {
                break;
            }
            summary.map_writes += 1;
            w.slots.remove(&slot);
        }
        let mut held = old_held;
        for v in w.slots.values() {
            held.insert(v.backend_id, true);
        }
        held.retain(|id, _| self.backends.contains(*id));
        self.set_holds(fk, held);
    }

    /// Removes a frontend: slot 0 first, so that it disappears at once, then its slots,
    /// then its reverse-NAT entry. Its backends are released for the end of the sync.
    pub(super) fn delete_frontend(
        &mut self,
        maps: &mut impl LbMaps,
        fk: &FrontendKey,
        summary: &mut SyncSummary,
    ) -> Result<()> {
        let Some(w) = self.frontends.get_mut(fk) else { return Ok(()) };
        w.applied = None;
        if w.slot0.is_some() {
            maps.delete_service(&service_key(fk, 0))?;
            summary.map_writes += 1;
            w.slot0 = None;
        }
        let slots: Vec<u16> = w.slots.keys().rev().copied().collect();
        for slot in slots {
            maps.delete_service(&service_key(fk, slot))?;
            summary.map_writes += 1;
            w.slots.remove(&slot);
        }
        if w.rev_nat_written {
            maps.delete_rev_nat(w.rev_nat)?;
            summary.map_writes += 1;
            w.rev_nat_written = false;
        }
        self.set_holds(fk, BTreeMap::new());
        let w = self.frontends.remove(fk).expect("present");
        self.rev_nat_ids.release(w.rev_nat);
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

    /// Deletes the adopted entries that belong to no frontend.
    pub(super) fn remove_orphans(&mut self, maps: &mut impl LbMaps, summary: &mut SyncSummary) {
        for key in std::mem::take(&mut self.orphan_slots) {
            match maps.delete_service(&key) {
                Ok(()) => summary.map_writes += 1,
                Err(error) => {
                    tracing::error!(%error, "cannot remove stale service entry; will retry");
                    summary.errors += 1;
                    self.orphan_slots.insert(key);
                }
            }
        }
        for index in std::mem::take(&mut self.orphan_rev_nat) {
            match maps.delete_rev_nat(index) {
                Ok(()) => {
                    summary.map_writes += 1;
                    self.rev_nat_ids.release(index);
                }
                Err(error) => {
                    tracing::error!(rev_nat = index, %error, "cannot remove stale reverse-NAT entry; will retry");
                    summary.errors += 1;
                    self.orphan_rev_nat.insert(index);
                }
            }
        }
        for id in std::mem::take(&mut self.orphan_backends) {
            match maps.delete_backend(id) {
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
    pub(super) fn collect_backends(&mut self, maps: &mut impl LbMaps, summary: &mut SyncSummary) {
        for id in self.backends.take_dirty() {
            let Some(entry) = self.backends.get_mut(id) else { continue };
            if entry.unheld() {
                if entry.written.is_some() {
                    if let Err(error) = maps.delete_backend(id) {
                        tracing::error!(backend_id = id, backend = %maps::display_backend(&entry.base), %error, "cannot delete backend; will retry");
                        summary.errors += 1;
                        self.backends.mark_dirty(id);
                        continue;
                    }
                    summary.map_writes += 1;
                    summary.backends_deleted += 1;
                }
                self.backends.forget(id);
                continue;
            }
            let flags = entry.desired_flags();
            if entry.written != Some(flags) {
                let value = Backend4 { flags, ..entry.base };
                match maps.upsert_backend(id, &value) {
                    Ok(()) => {
                        summary.map_writes += 1;
                        entry.written = Some(flags);
                    }
                    Err(error) => {
                        tracing::error!(backend_id = id, backend = %maps::display_backend(&value), %error, "cannot update backend; will retry");
                        summary.errors += 1;
                        self.backends.mark_dirty(id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
