//! tc ingress on the node's VXLAN device: decapsulated packets from other nodes.

use aya_ebpf::programs::TcContext;

use crate::{Drop, lb, overlay, packet, wire};

/// Reverse NAT for replies of Service flows whose client lives here (the backend was
/// on the sending node), then delivery to the local pod, out of the underlay interface
/// for a NodePort flow's client, or else to the node's stack.
#[inline(always)]
pub fn from_overlay(ctx: &TcContext) -> Result<i32, Drop> {
    let Some(pkt) = packet::parse(ctx) else {
        return overlay::to_host(ctx);
    };
    let daddr = match lb::reverse(ctx, &pkt)? {
        Some(reply) if reply.nodeport => return wire::to_wire(ctx),
        Some(reply) => reply.client,
        None => pkt.daddr,
    };
    if let Some(action) = overlay::to_local_pod(ctx, daddr)? {
        return Ok(action);
    }
    overlay::to_host(ctx)
}
