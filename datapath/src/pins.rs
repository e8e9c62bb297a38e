//! The layout of a node's bpffs directory: where each map, program and link is pinned.
//!
//! Every node (and every test) has a directory of its own, by default
//! `/sys/fs/bpf/skiff/<node name>`; inside it the maps and programs carry versioned
//! names (`..._V1`, `..._v1`, from `skiff_ebpf_common::pin`): a layout change is a new
//! name plus a migration. Links live in `links/`, one file per program and interface.
//! This module only computes paths; it never creates or opens anything.

use std::path::{Path, PathBuf};

use aya::programs::TcAttachType;
use skiff_ebpf_common::pin;

/// Where the per-node directories live on a node (bpffs is mounted at /sys/fs/bpf).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/skiff";

/// One BPF program of the datapath and its attach point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prog {
    /// tc ingress on each pod's host-side veth: load balancing, then the overlay.
    FromPod,
    /// tc egress on each pod's host-side veth: reverse NAT of replies from the node's
    /// own stack (hostNetwork backends).
    ToPod,
    /// tc ingress on the VXLAN device: reverse NAT and delivery to local pods.
    FromOverlay,
    /// tc egress on the VXLAN device: tunnel keys for traffic the node's stack sends.
    ToOverlay,
    /// tc egress on the underlay interface: masquerade of pod traffic leaving the
    /// cluster network.
    ToUnderlay,
    /// tc ingress on the underlay interface: replies of masqueraded flows.
    FromUnderlay,
}

impl Prog {
    pub const ALL: [Prog; 6] =
        [Prog::FromPod, Prog::ToPod, Prog::FromOverlay, Prog::ToOverlay, Prog::ToUnderlay, Prog::FromUnderlay];

    /// The function name in the object (also the prefix of its link pins).
    pub fn name(self) -> &'static str {
        match self {
            Prog::FromPod => "from_pod",
            Prog::ToPod => "to_pod",
            Prog::FromOverlay => "from_overlay",
            Prog::ToOverlay => "to_overlay",
            Prog::ToUnderlay => "to_underlay",
            Prog::FromUnderlay => "from_underlay",
        }
    }

    /// The program's pinned name (versioned).
    pub fn pin_name(self) -> &'static str {
        match self {
            Prog::FromPod => pin::PROG_FROM_POD,
            Prog::ToPod => pin::PROG_TO_POD,
            Prog::FromOverlay => pin::PROG_FROM_OVERLAY,
            Prog::ToOverlay => pin::PROG_TO_OVERLAY,
            Prog::ToUnderlay => pin::PROG_TO_UNDERLAY,
            Prog::FromUnderlay => pin::PROG_FROM_UNDERLAY,
        }
    }

    pub fn attach_type(self) -> TcAttachType {
        match self {
            Prog::ToPod | Prog::ToOverlay | Prog::ToUnderlay => TcAttachType::Egress,
            Prog::FromPod | Prog::FromOverlay | Prog::FromUnderlay => TcAttachType::Ingress,
        }
    }
}

/// The pin directory of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default directory of node `node_name`: `/sys/fs/bpf/skiff/<node_name>`.
    pub fn for_node(node_name: &str) -> Self {
        Self::new(Path::new(BPFFS_ROOT).join(node_name))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A pinned map, by its versioned name (`skiff_ebpf_common::pin::ENDPOINTS`, ...).
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A pinned program.
    pub fn prog(&self, prog: Prog) -> PathBuf {
        self.dir.join(prog.pin_name())
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join(pin::LINKS_DIR)
    }

    /// The pinned link of `prog` on `interface`: `links/<program>_<interface>`.
    pub fn link(&self, prog: Prog, interface: &str) -> PathBuf {
        self.links_dir().join(format!("{}_{interface}", prog.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let pins = Pins::for_node("n1");
        assert_eq!(pins.dir(), Path::new("/sys/fs/bpf/skiff/n1"));
        assert_eq!(pins.prog(Prog::FromPod), Path::new("/sys/fs/bpf/skiff/n1/from_pod_v1"));
        assert_eq!(pins.map(pin::ENDPOINTS), Path::new("/sys/fs/bpf/skiff/n1/ENDPOINTS_V1"));
        assert_eq!(pins.link(Prog::FromPod, "sk01"), Path::new("/sys/fs/bpf/skiff/n1/links/from_pod_sk01"));
        assert_eq!(Prog::ToOverlay.attach_type(), TcAttachType::Egress);
    }
}
