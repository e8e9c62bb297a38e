//! tc ingress on a pod's host-side veth: traffic that leaves a pod.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};

use crate::{
    Drop,
    lb::{self, Outcome},
    overlay, packet, wire,
};

/// Load balancing first (a Service's backend may live on another node), then delivery:
/// straight into the destination pod if it lives on this node, into the tunnel if it
/// lives on another, out of the underlay interface for a NodePort flow's reply, else on
/// to the node's stack. Packets that are not IPv4 TCP/UDP pass untouched.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> Result<i32, Drop> {
    let Some(pkt) = packet::parse(ctx) else {
        return Ok(TC_ACT_OK as i32);
    };
    match lb::balance(ctx, &pkt)? {
        // A pod's packets never take a node port by direct server return (`lb::choose`).
        Outcome::Forward(daddr) | Outcome::Dsr { backend: daddr, .. } => {
            Ok(overlay::to_pod_addr(ctx, daddr)?.unwrap_or(TC_ACT_OK as i32))
        }
        Outcome::Done(action) => Ok(action),
        Outcome::Wire => wire::to_wire(ctx),
        Outcome::IntoPod(client) => Ok(overlay::to_local_pod(ctx, client)?.unwrap_or(TC_ACT_OK as i32)),
    }
}
