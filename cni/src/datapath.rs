//! The plugin's side of the eBPF datapath: the pod's entry in the pinned endpoints map
//! and the "from pod" program attached at tc ingress of its host-side veth.
//!
//! skiff-node loads the programs and pins them with the maps under the node's bpffs
//! directory; this module only opens those pins. It never loads a program or creates a
//! map: if they are missing, the node agent is not running and ADD must fail.

use std::{
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData, MapError},
    programs::{SchedClassifier, TcAttachType, links::FdLink},
    sys::SyscallError,
};
use skiff_ebpf_common::{Endpoint4, addr_to_map, pin};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Skiff datapath is not loaded in {dir}: is skiff-node running? ({missing} is missing)")]
    NotLoaded { dir: PathBuf, missing: PathBuf },
    #[error("endpoints map {path}: {reason}")]
    Map { path: PathBuf, reason: String },
    #[error("attaching {program} to {interface}: {reason}")]
    Attach { program: PathBuf, interface: String, reason: String },
    #[error("link pin {path}: {source}")]
    LinkPin { path: PathBuf, source: io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The pinned datapath of one node.
#[derive(Debug)]
pub struct Datapath {
    dir: PathBuf,
}

impl Datapath {
    /// Checks that skiff-node has pinned what the plugin needs.
    pub fn open(dir: &Path) -> Result<Self> {
        for name in [pin::PROG_FROM_POD, pin::ENDPOINTS] {
            let path = dir.join(name);
            if !path.exists() {
                return Err(Error::NotLoaded { dir: dir.to_path_buf(), missing: path });
            }
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// A handle for clean-up only: it tolerates a missing datapath.
    pub fn for_cleanup(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    pub fn link_pin(&self, host_veth: &str) -> PathBuf {
        self.dir.join(pin::LINKS_DIR).join(format!("from_pod_{host_veth}"))
    }

    fn endpoints(&self) -> Result<HashMap<MapData, u32, Endpoint4>> {
        let path = self.dir.join(pin::ENDPOINTS);
        let map_err = |reason: String| Error::Map { path: path.clone(), reason };
        let data = MapData::from_pin(&path).map_err(|e| map_err(e.to_string()))?;
        HashMap::try_from(Map::HashMap(data)).map_err(|e| map_err(e.to_string()))
    }

    pub fn insert_endpoint(&self, ip: Ipv4Addr, endpoint: Endpoint4) -> Result<()> {
        let mut map = self.endpoints()?;
        map.insert(addr_to_map(ip.octets()), endpoint, 0)
            .map_err(|e| Error::Map { path: self.dir.join(pin::ENDPOINTS), reason: format!("inserting {ip}: {e}") })
    }

    pub fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<Endpoint4>> {
        match self.endpoints()?.get(&addr_to_map(ip.octets()), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(Error::Map { path: self.dir.join(pin::ENDPOINTS), reason: format!("reading {ip}: {e}") }),
        }
    }

    /// Removes the pod's entry; a missing entry or a missing map is not an error.
    pub fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<()> {
        let mut map = match self.endpoints() {
            Ok(map) => map,
            Err(_) if !self.dir.join(pin::ENDPOINTS).exists() => return Ok(()),
            Err(e) => return Err(e),
        };
        match map.remove(&addr_to_map(ip.octets())) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(e) => Err(Error::Map { path: self.dir.join(pin::ENDPOINTS), reason: format!("removing {ip}: {e}") }),
        }
    }

    /// Attaches the pinned "from pod" program at tc ingress (TCX) of `host_veth`, in
    /// the calling thread's network namespace, and pins the link so it outlives this
    /// process. A stale pin of an earlier veth of the same name is replaced.
    pub fn attach_from_pod(&self, host_veth: &str) -> Result<()> {
        let prog_path = self.dir.join(pin::PROG_FROM_POD);
        let attach_err =
            |reason: String| Error::Attach { program: prog_path.clone(), interface: host_veth.to_owned(), reason };
        let link_pin = self.link_pin(host_veth);
        let pin_err = |source| Error::LinkPin { path: link_pin.clone(), source };
        std::fs::create_dir_all(self.dir.join(pin::LINKS_DIR)).map_err(pin_err)?;
        remove_if_exists(&link_pin).map_err(pin_err)?;
        let mut program = SchedClassifier::from_pin(&prog_path).map_err(|e| attach_err(e.to_string()))?;
        let id = program.attach(host_veth, TcAttachType::Ingress).map_err(|e| attach_err(e.to_string()))?;
        let link = program.take_link(id).map_err(|e| attach_err(e.to_string()))?;
        let fd_link = FdLink::try_from(link).map_err(|e| attach_err(e.to_string()))?;
        fd_link
            .pin(&link_pin)
            .map(drop)
            .map_err(|e| Error::LinkPin { path: link_pin.clone(), source: io::Error::other(e.to_string()) })
    }

    /// Removes the link pin, which detaches the program (the veth's deletion would too).
    pub fn detach_from_pod(&self, host_veth: &str) -> Result<()> {
        let link_pin = self.link_pin(host_veth);
        remove_if_exists(&link_pin).map_err(|source| Error::LinkPin { path: link_pin, source })
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
