//! How full each pinned map of the node's datapath is: entries counted by walking the
//! keys (one syscall per key, at scrape time only) against the map's `max_entries`.

use std::path::Path;

use aya::Pod;
use aya::maps::{HashMap, LpmTrie, Map, MapData};
use skiff_ebpf_common::{
    Affinity4Key, Affinity4Value, Backend4, Ct4Entry, Ct4Key, Endpoint4, NodeInfo4, RevNat4, Service4Key,
    Service4Value, pin,
};

/// One map's fill level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u32,
}

/// The fill of every map of the datapath pinned under `dir` that exists there.
pub(super) fn map_fill(dir: &Path) -> Vec<MapFill> {
    [
        hash::<Service4Key, Service4Value>(dir, pin::SERVICES),
        hash::<u32, Backend4>(dir, pin::BACKENDS),
        hash::<u32, RevNat4>(dir, pin::REV_NAT),
        hash::<Ct4Key, Ct4Entry>(dir, pin::CT),
        hash::<Affinity4Key, Affinity4Value>(dir, pin::AFFINITY),
        hash::<u32, Endpoint4>(dir, pin::ENDPOINTS),
        trie::<u32, NodeInfo4>(dir, pin::NODES),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn open(dir: &Path, name: &'static str) -> Option<(Map, u32)> {
    let data = MapData::from_pin(dir.join(name)).ok()?;
    let capacity = data.info().ok()?.max_entries();
    Some((Map::from_map_data(data).ok()?, capacity))
}

fn hash<K: Pod, V: Pod>(dir: &Path, name: &'static str) -> Option<MapFill> {
    let (map, capacity) = open(dir, name)?;
    let map = HashMap::<MapData, K, V>::try_from(map).ok()?;
    let entries = map.keys().take(capacity as usize).filter(Result::is_ok).count() as u64;
    Some(MapFill { map: name, entries, capacity })
}

fn trie<K: Pod, V: Pod>(dir: &Path, name: &'static str) -> Option<MapFill> {
    let (map, capacity) = open(dir, name)?;
    let map = LpmTrie::<MapData, K, V>::try_from(map).ok()?;
    let entries = map.keys().take(capacity as usize).filter(Result::is_ok).count() as u64;
    Some(MapFill { map: name, entries, capacity })
}
