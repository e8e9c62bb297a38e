//! A node's Service maps read from outside the agent: the pinned maps opened by path, as
//! any other process could, and looked up by key (a few syscalls per Service), so the
//! bench can poll them every millisecond without asking the agent anything.
//!
//! Reading only, apart from [`NodeMaps::clear`], which empties the maps of a stopped
//! agent so that its next start programs every Service (the resync measurement).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use skiff_ebpf_common::{
    Backend4, PROTO_TCP, RevNat4, Service4Key, Service4Value, addr_from_map, addr_to_map, pin, port_to_map,
};

type PinnedHash<K, V> = HashMap<MapData, K, V>;

/// The three load-balancer maps of one node.
pub struct NodeMaps {
    pub node: String,
    services: PinnedHash<Service4Key, Service4Value>,
    backends: PinnedHash<u32, Backend4>,
    rev_nat: PinnedHash<u32, RevNat4>,
}

fn open<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &str) -> Result<PinnedHash<K, V>> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening the pinned map {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("{} is not a map", path.display()))?;
    HashMap::try_from(map).with_context(|| format!("{} has another layout than this bench expects", path.display()))
}

impl NodeMaps {
    /// The maps pinned under `pin_dir` (the node's `ClusterNode::pins`).
    pub fn open(node: &str, pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            node: node.to_owned(),
            services: open(pin_dir, pin::SERVICES)?,
            backends: open(pin_dir, pin::BACKENDS)?,
            rev_nat: open(pin_dir, pin::REV_NAT)?,
        })
    }

    /// The backend addresses of the TCP frontend `vip:port` as the datapath sees it now;
    /// `None` when there is no such frontend.
    pub fn backends_of(&self, vip: Ipv4Addr, port: u16) -> Option<BTreeSet<Ipv4Addr>> {
        let key = |slot| Service4Key::new(addr_to_map(vip.octets()), port_to_map(port), PROTO_TCP, slot);
        let frontend = self.services.get(&key(0), 0).ok()?;
        let mut out = BTreeSet::new();
        for slot in 1..=frontend.count {
            // A slot or backend missing mid-write shows as a smaller set, never a wrong one.
            let Ok(entry) = self.services.get(&key(slot), 0) else { continue };
            if let Ok(backend) = self.backends.get(&entry.backend_id, 0) {
                out.insert(Ipv4Addr::from(addr_from_map(backend.addr)));
            }
        }
        Some(out)
    }

    /// How many frontends (slot 0 entries) have a VIP for which `wanted` holds. Walks the
    /// whole services map: tens of milliseconds with 10,000 Services.
    pub fn count_frontends(&self, wanted: impl Fn(Ipv4Addr) -> bool) -> usize {
        self.services
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.backend_slot == 0 && wanted(Ipv4Addr::from(addr_from_map(k.addr))))
            .count()
    }

    /// Empties the three maps; returns how many entries went. Only while the node's
    /// agent is stopped: it would otherwise rewrite them as they go.
    pub fn clear(&mut self) -> Result<usize> {
        let services: Vec<Service4Key> = self.services.keys().filter_map(Result::ok).collect();
        let backends: Vec<u32> = self.backends.keys().filter_map(Result::ok).collect();
        let rev_nat: Vec<u32> = self.rev_nat.keys().filter_map(Result::ok).collect();
        let total = services.len() + backends.len() + rev_nat.len();
        for key in &services {
            self.services.remove(key).with_context(|| format!("emptying the services map of {}", self.node))?;
        }
        for id in &backends {
            self.backends.remove(id).with_context(|| format!("emptying the backends map of {}", self.node))?;
        }
        for index in &rev_nat {
            self.rev_nat.remove(index).with_context(|| format!("emptying the reverse-NAT map of {}", self.node))?;
        }
        Ok(total)
    }
}
