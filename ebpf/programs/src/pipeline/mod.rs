//! One pipeline per attach point: the order in which a packet meets the leaf modules
//! (`packet`, `lb`, `overlay`), and nothing else. The binaries in `src/bin/` call these.
//!
//! - [`from_pod`]: tc ingress on a pod's host-side veth: load balancing, then delivery
//!   straight into a pod of this node, into the tunnel (wrapped here and sent out of
//!   the underlay), out of the underlay (NodePort replies) or on to the node's stack;
//! - [`from_overlay`]: tc ingress on the VXLAN device: reverse NAT of replies whose
//!   client lives here, then delivery to the local pod, out of the underlay (NodePort
//!   replies) or to the node's stack;
//! - [`to_overlay`]: tc egress on the VXLAN device: the tunnel key for packets the node's
//!   own stack routes there (and pods' packets `overlay::to_remote_node` could not wrap);
//! - [`to_underlay`]: tc egress on the underlay interface: masquerade of pod traffic
//!   leaving the cluster network;
//! - [`from_underlay`]: tc ingress on the underlay interface: ARP answers for announced
//!   LoadBalancer addresses, direct server return's frontends read from the tunnel
//!   header, NodePort and external frontends, the masquerade's reverse, then reverse
//!   NAT and delivery to the local pod;
//! - [`to_pod`]: tc egress on a pod's host-side veth: reverse NAT of replies from the
//!   node's own stack;
//! - [`xdp_underlay`]: XDP on the underlay interface: ARP answers for announced
//!   LoadBalancer addresses, NodePort and external frontends' fast path (translated,
//!   and sent back into the tunnel for another node's backend), the rest left to
//!   `from_underlay`.
//!
//! A pipeline must not hold packet logic of its own: what it needs beyond the order of
//! calls belongs in a leaf module.

mod from_overlay;
mod from_pod;
mod from_underlay;
mod to_overlay;
mod to_pod;
mod to_underlay;
mod xdp_underlay;

pub use from_overlay::from_overlay;
pub use from_pod::from_pod;
pub use from_underlay::from_underlay;
pub use to_overlay::to_overlay;
pub use to_pod::to_pod;
pub use to_underlay::to_underlay;
pub use xdp_underlay::xdp_underlay;
