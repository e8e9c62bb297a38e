//! The overlay role: pods on different nodes reach each other over VXLAN, flannel
//! style, with eBPF doing the forwarding.
//!
//! - [`source`]: where the set of nodes comes from (a nodes file today; the Node watch
//!   of the control plane later), behind [`source::NodeSource`];
//! - [`device`]: the node's one VXLAN device in external mode, its cluster-CIDR route
//!   and the sysctls forwarding needs, behind [`device::LinkOps`];
//! - [`reconciler`]: the one writer of the nodes map (peer podCIDR → underlay address).
//!
//! This role never writes Service state and never adds per-peer FDB, neighbour or route
//! entries: a node joining or leaving is one map entry.

pub mod device;
pub mod reconciler;
pub mod role;
pub mod source;
