//! The endpoints map: local pods by IP (host veth index and both MACs), written by
//! skiff-cni when a pod is set up and read by the programs. This module only opens the
//! pinned map; the node agent creates it when it loads the datapath.

use std::{collections::BTreeMap, io, net::Ipv4Addr, path::PathBuf};

use aya::{
    maps::{HashMap, Map, MapData, MapError},
    sys::SyscallError,
};
use skiff_ebpf_common::{Endpoint4, addr_from_map, addr_to_map, pin};

use crate::pins::Pins;

/// What was being done to the map when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Open,
    Insert(Ipv4Addr),
    Read(Ipv4Addr),
    Remove(Ipv4Addr),
    List,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Open => f.write_str("opening"),
            Op::Insert(ip) => write!(f, "inserting {ip}"),
            Op::Read(ip) => write!(f, "reading {ip}"),
            Op::Remove(ip) => write!(f, "removing {ip}"),
            Op::List => f.write_str("listing"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("endpoints map {path}: {op}: {source}")]
pub struct Error {
    pub path: PathBuf,
    pub op: Op,
    #[source]
    pub source: MapError,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The pinned endpoints map of one node.
pub struct EndpointsMap {
    path: PathBuf,
    map: HashMap<MapData, u32, Endpoint4>,
}

impl std::fmt::Debug for EndpointsMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointsMap").field("path", &self.path).finish_non_exhaustive()
    }
}

impl EndpointsMap {
    pub fn open(pins: &Pins) -> Result<Self> {
        let path = pins.map(pin::ENDPOINTS);
        let opened = MapData::from_pin(&path).and_then(|data| HashMap::try_from(Map::HashMap(data)));
        match opened {
            Ok(map) => Ok(Self { path, map }),
            Err(source) => Err(Error { path, op: Op::Open, source }),
        }
    }

    fn err(&self, op: Op) -> impl FnOnce(MapError) -> Error + '_ {
        move |source| Error { path: self.path.clone(), op, source }
    }

    pub fn insert(&mut self, ip: Ipv4Addr, endpoint: Endpoint4) -> Result<()> {
        self.map.insert(addr_to_map(ip.octets()), endpoint, 0).map_err(self.err(Op::Insert(ip)))
    }

    pub fn get(&self, ip: Ipv4Addr) -> Result<Option<Endpoint4>> {
        match self.map.get(&addr_to_map(ip.octets()), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(self.err(Op::Read(ip))(e)),
        }
    }

    /// Every entry, by pod address.
    pub fn entries(&self) -> Result<BTreeMap<Ipv4Addr, Endpoint4>> {
        self.map
            .iter()
            .map(|entry| entry.map(|(k, v)| (Ipv4Addr::from(addr_from_map(k)), v)))
            .collect::<Result<_, _>>()
            .map_err(self.err(Op::List))
    }

    /// Removes the entry of `ip`; a missing entry is fine.
    pub fn remove(&mut self, ip: Ipv4Addr) -> Result<()> {
        match self.map.remove(&addr_to_map(ip.octets())) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(e) => Err(self.err(Op::Remove(ip))(e)),
        }
    }
}
