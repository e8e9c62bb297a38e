//! ARP answers for the LoadBalancer addresses this node announces (the agent picks one
//! node per address and lists its addresses in `ANNOUNCED4_V1`), in the manner of
//! MetalLB's layer-2 mode: the network then sends that address's traffic to this node,
//! where `lb::from_wire` translates it. The node's stack never holds the address.
//!
//! The answer is made at XDP ([`answer_at_xdp`]) where the fast path is attached
//! (`--nodeport-xdp`), before the kernel builds a socket buffer for the request, and at
//! tc ([`answer`]) otherwise: both build it with [`reply_to`].
//!
//! This module must not touch IPv4 packets.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action::XDP_DROP},
    helpers::bpf_redirect,
    programs::{TcContext, XdpContext},
};
use skiff_ebpf_common::stat;

use crate::{
    Drop,
    maps::{ANNOUNCED4_V1, count, nodeport},
    packet::ETH_HLEN,
    xdp,
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

/// What to do with an ARP request frame.
enum Answer {
    /// Send this reply back out of the underlay interface (this index), by which the
    /// request came in.
    Reply(ArpPacket, u32),
    /// A request for an announced address while NodePort's settings (the interface's
    /// MAC) are not written yet: nobody else may answer it either.
    Drop,
}

/// The reply to `req` if it is an Ethernet/IPv4 ARP request for an address this node
/// announces: the request turned around, with the underlay interface's MAC as the
/// answer. `None` for any other frame.
#[inline(always)]
fn reply_to(req: &ArpPacket) -> Option<Answer> {
    let ipv4_over_ethernet =
        req.htype == 1u16.to_be() && req.ptype == 0x0800u16.to_be() && req.hlen == 6 && req.plen == 4;
    if req.eth_proto != ETH_P_ARP.to_be() || !ipv4_over_ethernet || req.oper != ARP_REQUEST.to_be() {
        return None;
    }
    // SAFETY: only tests for the key's presence.
    unsafe { ANNOUNCED4_V1.get(&u32::from_ne_bytes(req.tpa)) }?;
    let Some(np) = nodeport() else { return Some(Answer::Drop) };
    let reply = ArpPacket {
        eth_dst: req.eth_src,
        eth_src: np.underlay_mac,
        oper: ARP_REPLY.to_be(),
        sha: np.underlay_mac,
        spa: req.tpa,
        tha: req.sha,
        tpa: req.spa,
        ..*req
    };
    Some(Answer::Reply(reply, np.underlay_ifindex))
}

/// Answers an ARP request for an announced address at tc: the request becomes the
/// reply, in place, and goes back out of the interface it came in by. `None` for
/// anything else.
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
    let (reply, ifindex) = match reply_to(&req) {
        None => return Ok(None),
        Some(Answer::Drop) => return Ok(Some(TC_ACT_SHOT as i32)),
        Some(Answer::Reply(reply, ifindex)) => (reply, ifindex),
    };
    ctx.store(0, &reply, 0).map_err(|_| Drop::REWRITE)?;
    count(stat::ARP_ANSWERED);
    // SAFETY: a plain helper call; flags 0 = the interface's egress.
    unsafe { bpf_redirect(ifindex, 0) };
    Ok(Some(TC_ACT_REDIRECT as i32))
}

/// Answers an ARP request for an announced address at XDP, in place, sent back out of
/// the interface it came in by. `None` for any other frame (IPv4 ones cost one read of
/// the EtherType).
#[inline(always)]
pub fn answer_at_xdp(ctx: &XdpContext) -> Option<u32> {
    let data = ctx.data();
    if data + core::mem::size_of::<ArpPacket>() > ctx.data_end() {
        return None;
    }
    // SAFETY: within the frame (checked above). The EtherType first: the NodePort
    // fast path's frames pay for this one read only.
    let proto = unsafe { core::ptr::read_unaligned((data + 12) as *const u16) };
    if proto != ETH_P_ARP.to_be() {
        return None;
    }
    let frame = data as *mut ArpPacket;
    // SAFETY: the whole ARP packet is within the frame (checked above).
    let req = unsafe { core::ptr::read_unaligned(frame) };
    match reply_to(&req)? {
        Answer::Drop => Some(XDP_DROP),
        Answer::Reply(reply, _) => {
            // SAFETY: as for the read above.
            unsafe { core::ptr::write_unaligned(frame, reply) };
            count(stat::ARP_ANSWERED);
            count(stat::XDP_ARP_ANSWERED);
            Some(xdp::back_out(ctx))
        }
    }
}
