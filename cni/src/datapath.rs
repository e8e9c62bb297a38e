//! The plugin's side of the eBPF datapath: the pod's entry in the pinned endpoints map,
//! and the "from pod" and "to pod" programs attached at tc ingress and egress of its
//! host-side veth.
//!
//! skiff-node loads the programs and pins them with the maps under the node's bpffs
//! directory; this module only opens those pins (through `skiff_datapath`). It never
//! loads a program or creates a map: if they are missing, the node agent is not running
//! and ADD must fail.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use skiff_datapath::{
    Pins, Prog, attach,
    endpoints::{self, EndpointsMap},
};
use skiff_ebpf_common::{Endpoint4, pin};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Skiff datapath is not loaded in {dir}: is skiff-node running? ({missing} is missing)")]
    NotLoaded { dir: PathBuf, missing: PathBuf },
    #[error(transparent)]
    Endpoints(#[from] endpoints::Error),
    #[error(transparent)]
    Attach(#[from] attach::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The pinned datapath of one node.
#[derive(Debug)]
pub struct Datapath {
    pins: Pins,
}

impl Datapath {
    /// Checks that skiff-node has pinned what the plugin needs.
    pub fn open(dir: &Path) -> Result<Self> {
        let pins = Pins::new(dir);
        for path in [pins.prog(Prog::FromPod), pins.map(pin::ENDPOINTS)] {
            if !path.exists() {
                return Err(Error::NotLoaded { dir: dir.to_path_buf(), missing: path });
            }
        }
        Ok(Self { pins })
    }

    /// A handle for clean-up only: it tolerates a missing datapath.
    pub fn for_cleanup(dir: &Path) -> Self {
        Self { pins: Pins::new(dir) }
    }

    pub fn link_pin(&self, host_veth: &str) -> PathBuf {
        self.pins.link(Prog::FromPod, host_veth)
    }

    pub fn insert_endpoint(&self, ip: Ipv4Addr, endpoint: Endpoint4) -> Result<()> {
        Ok(EndpointsMap::open(&self.pins)?.insert(ip, endpoint)?)
    }

    pub fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<Endpoint4>> {
        Ok(EndpointsMap::open(&self.pins)?.get(ip)?)
    }

    /// Removes the pod's entry; a missing entry or a missing map is not an error.
    pub fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<()> {
        let mut map = match EndpointsMap::open(&self.pins) {
            Ok(map) => map,
            Err(_) if !self.pins.map(pin::ENDPOINTS).exists() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        Ok(map.remove(ip)?)
    }

    /// Attaches the pinned "from pod" program at tc ingress (TCX) of `host_veth` and
    /// "to pod" at its egress, in the calling thread's network namespace, and pins the
    /// links so they outlive this process. Stale pins of an earlier veth of the same
    /// name are replaced. "To pod" is skipped if an older agent pinned none.
    pub fn attach_pod_programs(&self, host_veth: &str) -> Result<()> {
        let to_pod = self.pins.prog(Prog::ToPod);
        if to_pod.exists() {
            let mut program = attach::open_pinned(&to_pod)?;
            attach::attach_replacing(&mut program, Prog::ToPod, host_veth, &self.pins.link(Prog::ToPod, host_veth))?;
        }
        let mut program = attach::open_pinned(&self.pins.prog(Prog::FromPod))?;
        Ok(attach::attach_replacing(&mut program, Prog::FromPod, host_veth, &self.link_pin(host_veth))?)
    }

    /// Removes the link pins, which detaches the programs (the veth's deletion would too).
    pub fn detach_pod_programs(&self, host_veth: &str) -> Result<()> {
        attach::detach(&self.pins.link(Prog::ToPod, host_veth))?;
        Ok(attach::detach(&self.link_pin(host_veth))?)
    }
}
