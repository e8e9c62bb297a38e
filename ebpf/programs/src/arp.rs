//! ARP answers for the LoadBalancer addresses this node announces (the agent picks one
//! node per address and lists its addresses in `ANNOUNCED4_V1`), in the manner of
//! MetalLB's layer-2 mode: the network then sends that address's traffic to this node,
//! where `lb::from_wire` translates it. The node's stack never holds the address.
//!
//! This module must not touch IPv4 packets.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect,
    programs::TcContext,
};

use crate::{
    Drop,
    maps::{ANNOUNCED4_V1, nodeport},
    packet::ETH_HLEN,
};

const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP packet, as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
struct ArpPacket {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    eth_proto: u16,
    htype: u16,
    ptype: u16,
    hlen: u8,
    plen: u8,
    oper: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

/// Answers an ARP request for an announced address: the request becomes the reply, in
/// place, and goes back out of the interface it came in by. `None` for anything else.
#[inline(always)]
pub fn answer(ctx: &TcContext) -> Result<Option<i32>, Drop> {
    let data = ctx.data();
    if data + ETH_HLEN > ctx.data_end() {
        return Ok(None);
    }
    // SAFETY: bounds checked just above.
    let proto = unsafe { *((data + 12) as *const u16) };
    if proto != ETH_P_ARP.to_be() {
        return Ok(None);
    }
    let Ok(req) = ctx.load::<ArpPacket>(0) else { return Ok(None) };
    let ipv4_over_ethernet =
        req.htype == 1u16.to_be() && req.ptype == 0x0800u16.to_be() && req.hlen == 6 && req.plen == 4;
    if !ipv4_over_ethernet || req.oper != ARP_REQUEST.to_be() {
        return Ok(None);
    }
    // SAFETY: only tests for the key's presence.
    if unsafe { ANNOUNCED4_V1.get(&u32::from_ne_bytes(req.tpa)) }.is_none() {
        return Ok(None);
    }
    let Some(np) = nodeport() else { return Ok(Some(TC_ACT_SHOT as i32)) };
    let reply = ArpPacket {
        eth_dst: req.eth_src,
        eth_src: np.underlay_mac,
        oper: ARP_REPLY.to_be(),
        sha: np.underlay_mac,
        spa: req.tpa,
        tha: req.sha,
        tpa: req.spa,
        ..req
    };
    ctx.store(0, &reply, 0).map_err(|_| Drop::REWRITE)?;
    // SAFETY: a plain helper call; flags 0 = the interface's egress.
    unsafe { bpf_redirect(np.underlay_ifindex, 0) };
    Ok(Some(TC_ACT_REDIRECT as i32))
}
