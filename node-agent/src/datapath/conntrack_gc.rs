//! Conntrack garbage collection: removes the flows whose time is up, both directions.
//!
//! The programs only ever add and refresh entries; the map is an LRU, so a full map
//! evicts its least recently used entries instead of refusing new flows. Without
//! collection, flows that ended (closed TCP connections, idle UDP) would sit there until
//! a burst of new flows pushes them out, together with live flows that were merely idle
//! (a quiet keep-alive connection), which would then lose their backend. Collecting
//! what expired keeps the map holding live flows only, so that a burst can use it all.
//!
//! A forward entry expires by the timeouts the programs use (`LbConfig`, 0 = default);
//! its reply entry goes with it. A reply entry whose forward entry is gone (an LRU
//! eviction took only one of the pair) goes too. This module only deletes.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData};
use skiff_ebpf_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, CT_FLAG_CLOSING, CT_FLAG_HAIRPIN, CT_FLAG_REMOTE_FRONTEND, Ct4Entry, Ct4Key,
    DEFAULT_HAIRPIN_ADDR, DEFAULT_TCP_CLOSING_TIMEOUT_S, DEFAULT_TCP_TIMEOUT_S, DEFAULT_UDP_TIMEOUT_S, LbConfig,
    PROTO_TCP, RevNat4, pin,
};

use super::{Error, Result, open_pinned};

/// What one collection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub scanned: usize,
    pub removed: usize,
}

/// The clock the programs stamp entries with (`bpf_ktime_get_coarse_ns`: monotonic).
fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// One pass over the conntrack map under `pin_dir`.
pub fn collect(pin_dir: &Path) -> Result<Collected> {
    let map_err = |map, source| Error::Map { map, dir: pin_dir.to_path_buf(), source: Box::new(source) };
    let config: Array<MapData, LbConfig> =
        Array::try_from(Map::Array(open_pinned(pin_dir, pin::CONFIG)?)).map_err(|e| map_err(pin::CONFIG, e))?;
    let config = config.get(&0, 0).unwrap_or_default();
    let rev_nat: HashMap<MapData, u32, RevNat4> =
        HashMap::try_from(Map::HashMap(open_pinned(pin_dir, pin::REV_NAT)?)).map_err(|e| map_err(pin::REV_NAT, e))?;
    let mut ct: HashMap<MapData, Ct4Key, Ct4Entry> =
        HashMap::try_from(Map::LruHashMap(open_pinned(pin_dir, pin::CT)?)).map_err(|e| map_err(pin::CT, e))?;
    // Read everything first: deleting while iterating a hash map restarts the walk.
    let entries: Vec<(Ct4Key, Ct4Entry)> = ct.iter().flatten().collect();
    let forward_keys: std::collections::HashSet<_> =
        entries.iter().filter(|(k, _)| k.dir == CT_DIR_FORWARD).map(|(k, _)| tuple(k)).collect();
    let now = now_ns();
    let mut doomed: Vec<Ct4Key> = Vec::new();
    for (key, entry) in &entries {
        if key.dir == CT_DIR_FORWARD {
            if now.saturating_sub(entry.last_seen_ns) > timeout_ns(entry, key.proto, &config) {
                doomed.push(*key);
                doomed.push(reply_key(key, entry, &config));
            }
        } else if key.dir == CT_DIR_REPLY {
            let forward = frontend(entry, |index| rev_nat.get(&index, 0).ok()).map(|vip| forward_key(key, entry, &vip));
            if forward.is_none_or(|f| !forward_keys.contains(&tuple(&f))) {
                doomed.push(*key);
            }
        }
    }
    doomed.sort_unstable_by_key(tuple);
    doomed.dedup_by_key(|k| tuple(k));
    let removed = doomed.iter().filter(|k| ct.remove(k).is_ok()).count();
    Ok(Collected { scanned: entries.len(), removed })
}

/// A key as a tuple, for sets and sorting.
fn tuple(k: &Ct4Key) -> (u32, u32, u16, u16, u8, u8) {
    (k.saddr, k.daddr, k.sport, k.dport, k.proto, k.dir)
}

fn timeout_ns(entry: &Ct4Entry, proto: u8, config: &LbConfig) -> u64 {
    let or = |v: u32, default: u32| u64::from(if v == 0 { default } else { v }) * 1_000_000_000;
    if proto != PROTO_TCP {
        or(config.udp_timeout_s, DEFAULT_UDP_TIMEOUT_S)
    } else if entry.flags & CT_FLAG_CLOSING != 0 {
        or(config.tcp_closing_timeout_s, DEFAULT_TCP_CLOSING_TIMEOUT_S)
    } else {
        or(config.tcp_timeout_s, DEFAULT_TCP_TIMEOUT_S)
    }
}

/// The frontend a flow's replies come from: its Service's reverse-NAT entry (`rev_nat`
/// by index), or for a direct-server-return flow of another node's node port, the
/// address and port its entry carries (as the programs' `lb::frontend_of_entry`).
fn frontend(entry: &Ct4Entry, rev_nat: impl FnOnce(u32) -> Option<RevNat4>) -> Option<RevNat4> {
    if entry.flags & CT_FLAG_REMOTE_FRONTEND != 0 {
        Some(RevNat4 { addr: entry.snat_addr, port: entry.snat_port, _pad: 0 })
    } else {
        rev_nat(entry.rev_nat_index)
    }
}

/// The reply key of a forward entry, as the programs write it (a hairpin entry of an
/// older agent has no source address: the configured hairpin address). The client's
/// packets of a direct-server-return flow keep their source, whatever the entry's
/// source fields say of the frontend.
fn reply_key(key: &Ct4Key, entry: &Ct4Entry, config: &LbConfig) -> Ct4Key {
    let hairpin = if config.hairpin_addr != 0 { config.hairpin_addr } else { DEFAULT_HAIRPIN_ADDR };
    let translated = entry.flags & CT_FLAG_REMOTE_FRONTEND == 0;
    Ct4Key {
        saddr: entry.backend_addr,
        daddr: match entry.snat_addr {
            _ if !translated => key.saddr,
            0 if entry.flags & CT_FLAG_HAIRPIN != 0 => hairpin,
            0 => key.saddr,
            source => source,
        },
        sport: entry.backend_port,
        dport: if entry.snat_port != 0 && translated { entry.snat_port } else { key.sport },
        proto: key.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    }
}

/// The forward key of a reply entry: the client toward the frontend its Service's
/// reverse entry names.
fn forward_key(key: &Ct4Key, entry: &Ct4Entry, vip: &RevNat4) -> Ct4Key {
    Ct4Key {
        saddr: entry.client_addr,
        daddr: vip.addr,
        sport: if entry.client_port != 0 { entry.client_port } else { key.dport },
        dport: vip.port,
        proto: key.proto,
        dir: CT_DIR_FORWARD,
        _pad: [0; 2],
    }
}
