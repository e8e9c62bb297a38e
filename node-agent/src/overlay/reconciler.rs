//! The one writer of the nodes map: desired peers (every node but this one) → map
//! entries podCIDR → underlay address. Only the entries that differ are written, so a
//! node joining or leaving touches one entry and no other flow notices.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
use skiff_datapath::{Ipv4Net, Pins};
use skiff_ebpf_common::{NodeInfo4, addr_to_map, pin};
use tracing::{info, warn};

use super::source::NodeNet;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nodes map under {dir}: {source}")]
    Map {
        dir: PathBuf,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The nodes map, as the reconciler needs it.
pub trait NodesMap {
    fn upsert(&mut self, cidr: Ipv4Net, info: NodeInfo4) -> Result<()>;
    fn delete(&mut self, cidr: Ipv4Net) -> Result<()>;
    fn dump(&self) -> Result<BTreeMap<Ipv4Net, NodeInfo4>>;
}

/// The pinned nodes map.
pub struct AyaNodesMap {
    dir: PathBuf,
    map: LpmTrie<MapData, u32, NodeInfo4>,
}

impl std::fmt::Debug for AyaNodesMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AyaNodesMap").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl AyaNodesMap {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let dir = pin_dir.to_path_buf();
        let err = |source| Error::Map { dir: dir.clone(), source: Box::new(source) };
        let data = MapData::from_pin(Pins::new(pin_dir).map(pin::NODES)).map_err(err)?;
        let map = LpmTrie::try_from(Map::LpmTrie(data)).map_err(err)?;
        Ok(Self { dir, map })
    }

    fn err(&self, source: aya::maps::MapError) -> Error {
        Error::Map { dir: self.dir.clone(), source: Box::new(source) }
    }
}

fn key(cidr: Ipv4Net) -> Key<u32> {
    Key::new(u32::from(cidr.prefix_len()), addr_to_map(cidr.network().octets()))
}

impl NodesMap for AyaNodesMap {
    fn upsert(&mut self, cidr: Ipv4Net, info: NodeInfo4) -> Result<()> {
        self.map.insert(&key(cidr), info, 0).map_err(|e| self.err(e))
    }

    fn delete(&mut self, cidr: Ipv4Net) -> Result<()> {
        match self.map.remove(&key(cidr)) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    fn dump(&self) -> Result<BTreeMap<Ipv4Net, NodeInfo4>> {
        let mut out = BTreeMap::new();
        for item in self.map.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let addr = std::net::Ipv4Addr::from(skiff_ebpf_common::addr_from_map(k.data()));
            let prefix_len = u8::try_from(k.prefix_len()).ok().filter(|l| *l <= 32);
            let cidr = prefix_len.and_then(|l| Ipv4Net::new(addr, l).ok());
            match cidr {
                Some(cidr) => {
                    out.insert(cidr, v);
                }
                // Only this reconciler writes the map; a bad key is kept out of the
                // desired-state comparison rather than failing the whole sync.
                None => warn!(prefix_len = k.prefix_len(), "nodes map entry with an impossible prefix length"),
            }
        }
        Ok(out)
    }
}

/// Keeps the nodes map equal to the peers of `local_node`.
#[derive(Debug)]
pub struct NodesReconciler<M> {
    local_node: String,
    map: M,
}

impl<M: NodesMap> NodesReconciler<M> {
    pub fn new(local_node: &str, map: M) -> Self {
        Self { local_node: local_node.to_owned(), map }
    }

    pub fn map(&self) -> &M {
        &self.map
    }

    /// Writes the differences between the map and `nodes`; returns how many entries
    /// were written or deleted. A failed entry is logged and retried on the next call.
    pub fn sync(&mut self, nodes: &[NodeNet]) -> Result<usize> {
        let desired: BTreeMap<Ipv4Net, NodeInfo4> = nodes
            .iter()
            .filter(|n| n.name != self.local_node)
            .map(|n| (n.pod_cidr.trunc(), NodeInfo4 { underlay_addr: addr_to_map(n.underlay_ip.octets()), flags: 0 }))
            .collect();
        let current = self.map.dump()?;
        let mut changes = 0;
        for (cidr, info) in &desired {
            if current.get(cidr) != Some(info) {
                match self.map.upsert(*cidr, *info) {
                    Ok(()) => {
                        changes += 1;
                        info!(pod_cidr = %cidr, underlay = ?skiff_ebpf_common::addr_from_map(info.underlay_addr), "peer node programmed");
                    }
                    Err(e) => warn!(pod_cidr = %cidr, error = %e, "cannot program peer node; will retry"),
                }
            }
        }
        for cidr in current.keys().filter(|c| !desired.contains_key(c)) {
            match self.map.delete(*cidr) {
                Ok(()) => {
                    changes += 1;
                    info!(pod_cidr = %cidr, "peer node removed");
                }
                Err(e) => warn!(pod_cidr = %cidr, error = %e, "cannot remove peer node; will retry"),
            }
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeNodes {
        entries: BTreeMap<Ipv4Net, NodeInfo4>,
        writes: usize,
    }

    impl NodesMap for FakeNodes {
        fn upsert(&mut self, cidr: Ipv4Net, info: NodeInfo4) -> Result<()> {
            self.writes += 1;
            self.entries.insert(cidr, info);
            Ok(())
        }
        fn delete(&mut self, cidr: Ipv4Net) -> Result<()> {
            self.writes += 1;
            self.entries.remove(&cidr);
            Ok(())
        }
        fn dump(&self) -> Result<BTreeMap<Ipv4Net, NodeInfo4>> {
            Ok(self.entries.clone())
        }
    }

    fn node(name: &str, cidr: &str, ip: [u8; 4]) -> NodeNet {
        NodeNet { name: name.into(), pod_cidr: cidr.parse().unwrap(), underlay_ip: ip.into() }
    }

    #[test]
    fn join_and_leave_touch_one_entry_each() {
        let mut r = NodesReconciler::new("a", FakeNodes::default());
        let mut nodes =
            vec![node("a", "10.244.1.0/24", [192, 168, 77, 11]), node("b", "10.244.2.0/24", [192, 168, 77, 12])];
        assert_eq!(r.sync(&nodes).unwrap(), 1, "the local node is not a peer");
        nodes.push(node("c", "10.244.3.0/24", [192, 168, 77, 13]));
        assert_eq!(r.sync(&nodes).unwrap(), 1, "a joining node writes one entry");
        assert_eq!(r.sync(&nodes).unwrap(), 0, "nothing changed, nothing written");
        nodes.retain(|n| n.name != "b");
        assert_eq!(r.sync(&nodes).unwrap(), 1, "a leaving node deletes one entry");
        let left: Vec<String> = r.map().entries.keys().map(|c| c.to_string()).collect();
        assert_eq!(left, ["10.244.3.0/24"]);
        assert_eq!(r.map().writes, 3);
    }
}
