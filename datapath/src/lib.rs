//! skiff-datapath: the node's eBPF and kernel network datapath as the node agent
//! (skiff-node) and the CNI plugin (skiff-cni) share it, so that neither binary crate
//! depends on the other.
//!
//! - [`pins`]: the per-node bpffs directory and the versioned names pinned in it;
//! - [`attach`]: tc (TCX) attach with pinned links, and adoption of a pinned link;
//! - [`endpoints`]: the endpoints map (local pods by IP);
//! - [`netlink`]: veths, addresses, routes, neighbours and the VXLAN device over
//!   rtnetlink, and [`netlink::in_netns`] for work in a pod's namespace;
//! - [`cidr`]: the one typed CIDR ([`Ipv4Net`]) and what the maps and IPAM need of it;
//! - [`garp`]: gratuitous ARP for an address that moved to this node;
//! - [`cni`]: the CNI configuration list, the contract between agent and plugin, and
//!   the atomic installation of plugin binaries.
//!
//! This crate never loads BPF objects (skiff-node embeds and loads them) and never
//! writes Service state (the node agent's proxy reconciler owns it).

pub mod attach;
pub mod cidr;
pub mod cni;
pub mod endpoints;
pub mod garp;
pub mod netlink;
pub mod pins;

pub use cidr::Ipv4Net;
pub use pins::{Pins, Prog};
