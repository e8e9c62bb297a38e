//! tc egress on a pod's host-side veth: everything on its way into the pod.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};

use crate::{Drop, lb, overlay, packet};

/// Replies that come from the node's own stack still need their reverse NAT: a
/// Service whose backend is a hostNetwork pod (or the node itself) on this node answers
/// from the node's address, straight into the pod's veth, where nothing else sees it.
/// Packets from pods and from Service addresses were translated where they entered
/// (`from_pod`, `from_overlay`, `from_underlay`), so they pass without a lookup.
#[inline(always)]
pub fn to_pod(ctx: &TcContext) -> Result<i32, Drop> {
    let Some(pkt) = packet::parse(ctx) else {
        return Ok(TC_ACT_OK as i32);
    };
    if overlay::in_cluster(pkt.saddr) || lb::is_service_addr(pkt.saddr) {
        return Ok(TC_ACT_OK as i32);
    }
    lb::reverse(ctx, &pkt)?;
    Ok(TC_ACT_OK as i32)
}
