//! tc egress on the node's VXLAN device: every packet needs its tunnel key.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};

use crate::{
    Drop, overlay,
    packet::{ETH_HLEN, Ipv4Hdr},
};

/// Packets that `from_pod` sent into the tunnel carry their key already (and a mark
/// that says so); those the node's own stack routes here (the cluster CIDR route, e.g.
/// replies to pods from node addresses) get it now.
#[inline(always)]
pub fn to_overlay(ctx: &TcContext) -> Result<i32, Drop> {
    if overlay::take_tunnel_mark(ctx) {
        return Ok(TC_ACT_OK as i32);
    }
    let Some(cfg) = overlay::config() else { return Ok(TC_ACT_SHOT as i32) };
    let ip: Ipv4Hdr = match ctx.load(ETH_HLEN) {
        Ok(ip) => ip,
        Err(_) => return Ok(TC_ACT_SHOT as i32),
    };
    // Without a key the VXLAN device cannot send; without a peer there is nowhere to go.
    if ip.ver_ihl >> 4 != 4 || !overlay::set_tunnel_key(ctx, ip.daddr, &cfg)? {
        return Ok(TC_ACT_SHOT as i32);
    }
    Ok(TC_ACT_OK as i32)
}
