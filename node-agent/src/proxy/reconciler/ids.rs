//! Id allocation: backend ids and reverse-NAT indices.
//!
//! Both are the links from conntrack and affinity entries to the maps, so they are
//! stable: a backend keeps its id as long as any frontend holds it, a frontend keeps its
//! index for its lifetime, and adoption reserves the ids an earlier run wrote. Both are
//! 32-bit and start at 1: 0 means "none".
//!
//! A freed id is not handed out again soon: allocation goes round the id space (the next
//! free id after the last one allocated or adopted). Conntrack entries outlive their
//! backend (UDP ones for a minute), and the datapath tells a removed backend by its id
//! being gone from the backends map; an id reused at once for another backend would send
//! such a flow to the old, dead address its entry carries (seen as lost UDP requests
//! while a Deployment scaled).
//!
//! [`Backends`] is the registry behind the backend ids: one entry per backend address,
//! shared by every frontend that holds it, with the holders and the flags in the map.
//!
//! This module must not write the maps; it records what the writer did.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use skiff_ebpf_common::{BACKEND_FLAG_TERMINATING, Backend4, addr_from_map, addr_to_map, port_from_map, port_to_map};

use super::error::{Error, Result};
use crate::proxy::model::{BackendKey, FrontendKey, Protocol};

/// Next-fit allocator over an id range (see the module doc for why not smallest-free),
/// as a set of free intervals, so allocation, reservation and release are O(log n) even
/// with tens of thousands of ids.
#[derive(Debug, Clone)]
pub(super) struct IdAllocator {
    lo: u32,
    hi: u32,
    /// start → end (inclusive) of each free interval.
    free: BTreeMap<u32, u32>,
    /// Where the search for the next id starts: after the last id allocated or reserved.
    next: u32,
}

impl IdAllocator {
    fn new(lo: u32, hi: u32) -> Self {
        Self { lo, hi, free: BTreeMap::from([(lo, hi)]), next: lo }
    }

    /// Every usable backend id or reverse-NAT index: `1..=u32::MAX`.
    pub(super) fn ids() -> Self {
        Self::new(1, u32::MAX)
    }

    /// The first free id at or after `next`, wrapping round to the range's start.
    pub(super) fn alloc(&mut self) -> Option<u32> {
        let id = match self.free.range(..=self.next).next_back() {
            Some((_, &end)) if end >= self.next => self.next,
            _ => match self.free.range(self.next..).next() {
                Some((&start, _)) => start,
                None => *self.free.first_key_value()?.0,
            },
        };
        self.take(id);
        self.next = self.after(id);
        Some(id)
    }

    /// Marks `id` used; false if it is outside the range or already used. After an
    /// adoption, allocation carries on above the highest id adopted: those below it may
    /// have been freed by the earlier run only moments ago.
    pub(super) fn reserve(&mut self, id: u32) -> bool {
        let taken = self.take(id);
        if taken && id >= self.next {
            self.next = self.after(id);
        }
        taken
    }

    fn after(&self, id: u32) -> u32 {
        if id >= self.hi { self.lo } else { id + 1 }
    }

    /// Removes `id` from the free intervals; false if it was not free.
    fn take(&mut self, id: u32) -> bool {
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

    pub(super) fn release(&mut self, id: u32) {
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
pub(super) struct BackendEntry {
    /// `None` for an adopted entry whose protocol we do not balance; it is deleted once
    /// nothing references it.
    key: Option<BackendKey>,
    /// The value without flags.
    pub(super) base: Backend4,
    /// Flags currently in the map; `None` if the entry is not in the map.
    pub(super) written: Option<u8>,
    /// Frontends that reference this backend → whether it takes new flows there.
    holders: BTreeMap<FrontendKey, bool>,
}

impl BackendEntry {
    /// A backend that takes new flows nowhere is only kept for established flows.
    pub(super) fn desired_flags(&self) -> u8 {
        if self.holders.values().any(|active| *active) { 0 } else { BACKEND_FLAG_TERMINATING }
    }

    /// Held by no frontend: due for deletion.
    pub(super) fn unheld(&self) -> bool {
        self.holders.is_empty()
    }
}

/// The backend registry: entries by id, ids by address, and which entries the end of
/// the sync must look at again.
#[derive(Debug)]
pub(super) struct Backends {
    entries: BTreeMap<u32, BackendEntry>,
    ids: BTreeMap<BackendKey, u32>,
    alloc: IdAllocator,
    /// Backends whose holders changed: deleted or re-flagged at the end of the sync.
    dirty: BTreeSet<u32>,
}

impl Default for Backends {
    fn default() -> Self {
        Self { entries: BTreeMap::new(), ids: BTreeMap::new(), alloc: IdAllocator::ids(), dirty: BTreeSet::new() }
    }
}

impl Backends {
    /// Takes over an entry an earlier run wrote, with no holder yet (so the first sync
    /// deletes it unless a frontend claims it). False if `id` is not a usable id.
    pub(super) fn adopt(&mut self, id: u32, value: Backend4) -> bool {
        if !self.alloc.reserve(id) {
            return false;
        }
        let key = Protocol::from_ip_proto(value.proto).map(|proto| BackendKey {
            addr: Ipv4Addr::from(addr_from_map(value.addr)),
            port: port_from_map(value.port),
            proto,
        });
        if let Some(key) = key {
            // With duplicates (never written by us), the smallest id serves new
            // references; the others live until nothing references them.
            self.ids.entry(key).or_insert(id);
        }
        self.entries.insert(
            id,
            BackendEntry {
                key,
                base: Backend4 { flags: 0, ..value },
                written: Some(value.flags),
                holders: BTreeMap::new(),
            },
        );
        self.dirty.insert(id);
        true
    }

    /// Backend id for `key`, creating the registry entry (not yet written) if needed.
    pub(super) fn id_for(&mut self, key: BackendKey) -> Result<u32> {
        if let Some(id) = self.ids.get(&key) {
            return Ok(*id);
        }
        let id = self.alloc.alloc().ok_or(Error::BackendIdsExhausted)?;
        let base = Backend4 {
            addr: addr_to_map(key.addr.octets()),
            port: port_to_map(key.port),
            proto: key.proto.ip_proto(),
            flags: 0,
        };
        self.entries.insert(id, BackendEntry { key: Some(key), base, written: None, holders: BTreeMap::new() });
        self.ids.insert(key, id);
        // If nothing ends up holding it, the end of the sync drops it again.
        self.dirty.insert(id);
        Ok(id)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn contains(&self, id: u32) -> bool {
        self.entries.contains_key(&id)
    }

    pub(super) fn get_mut(&mut self, id: u32) -> Option<&mut BackendEntry> {
        self.entries.get_mut(&id)
    }

    /// Records that `fk` holds backend `id` (`active`: sending it new flows).
    pub(super) fn hold(&mut self, id: u32, fk: FrontendKey, active: bool) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.holders.insert(fk, active);
        }
        self.dirty.insert(id);
    }

    /// Records that `fk` no longer holds backend `id`.
    pub(super) fn let_go(&mut self, id: u32, fk: &FrontendKey) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.holders.remove(fk);
        }
        self.dirty.insert(id);
    }

    pub(super) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    pub(super) fn take_dirty(&mut self) -> BTreeSet<u32> {
        std::mem::take(&mut self.dirty)
    }

    pub(super) fn mark_dirty(&mut self, id: u32) {
        self.dirty.insert(id);
    }

    /// Drops the entry (gone from the map, or never written) and frees its id.
    pub(super) fn forget(&mut self, id: u32) {
        let Some(entry) = self.entries.remove(&id) else { return };
        if let Some(key) = entry.key
            && self.ids.get(&key) == Some(&id)
        {
            self.ids.remove(&key);
        }
        self.alloc.release(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_allocator_goes_round_and_merges() {
        let mut a = IdAllocator::new(1, 10);
        assert_eq!((a.alloc(), a.alloc(), a.alloc()), (Some(1), Some(2), Some(3)));
        a.release(2);
        a.release(1);
        // A freed id waits until allocation has gone round the range.
        assert_eq!(a.alloc(), Some(4));
        // Adoption reserves an id; allocation carries on after it.
        assert!(a.reserve(7));
        assert!(!a.reserve(7));
        assert_eq!(a.alloc(), Some(8));
        a.release(3);
        assert_eq!(a.free, BTreeMap::from([(1, 3), (5, 6), (9, 10)]));
        assert_eq!((a.alloc(), a.alloc(), a.alloc()), (Some(9), Some(10), Some(1)));
        let mut full = IdAllocator::new(1, 1);
        assert_eq!((full.alloc(), full.alloc()), (Some(1), None));
    }
}
