//! The router hop a node makes when its programs forward a packet past the kernel's IP
//! forwarding (into a local pod with `bpf_redirect_peer`, into the tunnel, out of the
//! underlay): the IPv4 TTL goes down by one, with the header checksum updated, exactly
//! as `ip_forward` would do. A pod → pod packet across two nodes therefore arrives
//! with its TTL two lower, as over flannel, and a loop between nodes ends.
//!
//! A packet whose TTL would run out here (1 or 0) is not forwarded by the programs:
//! [`forward`] says so and the caller leaves it to the node's stack, whose forwarding
//! drops it and answers the sender with ICMP time exceeded (so that traceroute shows
//! each node), something a tc program cannot do as well.
//!
//! This module only rewrites the TTL and the IPv4 header checksum of an Ethernet IPv4
//! frame; it decides nothing about where a packet goes.

use aya_ebpf::programs::{TcContext, XdpContext};
use skiff_ebpf_common::stat;

use crate::{
    Drop, csum,
    maps::count,
    packet::{ETH_HLEN, IP_TTL_OFF, IPV4_HLEN, load_at, store_at},
};

/// Where the TTL, protocol and header checksum sit in the frame: four bytes, rewritten
/// as one.
const TTL_PROTO_CHECK_OFF: usize = ETH_HLEN + IP_TTL_OFF;

/// The four bytes at [`TTL_PROTO_CHECK_OFF`] after the hop: `None` if the TTL would run
/// out (counted as `ttl_expired`).
#[inline(always)]
fn after_hop(bytes: [u8; 4]) -> Option<[u8; 4]> {
    let [ttl, proto, check_hi, check_lo] = bytes;
    if ttl <= 1 {
        count(stat::TTL_EXPIRED);
        return None;
    }
    // The TTL and the protocol form one 16-bit word of the header's checksum; both the
    // word and the checksum are taken as they sit in memory (RFC 1624).
    let from = u16::from_ne_bytes([ttl, proto]);
    let to = u16::from_ne_bytes([ttl - 1, proto]);
    let check = csum::replace2(u16::from_ne_bytes([check_hi, check_lo]), from, to).to_ne_bytes();
    Some([ttl - 1, proto, check[0], check[1]])
}

/// Lowers the TTL of the frame at tc by one. `false` if it would run out: the frame is
/// left unchanged for the node's stack to answer.
#[inline(always)]
pub fn forward(ctx: &TcContext) -> Result<bool, Drop> {
    let bytes: [u8; 4] = load_at(ctx, TTL_PROTO_CHECK_OFF).ok_or(Drop::REWRITE)?;
    let Some(after) = after_hop(bytes) else { return Ok(false) };
    store_at(ctx, TTL_PROTO_CHECK_OFF, &after)?;
    Ok(true)
}

/// [`forward`] at XDP, in place. The caller has checked that the TTL is above 1 before
/// its first write (`packet::Packet::ttl`), so running out here is an error.
#[inline(always)]
pub fn forward_at_xdp(ctx: &XdpContext) -> Result<(), Drop> {
    let data = ctx.data();
    if data + ETH_HLEN + IPV4_HLEN > ctx.data_end() {
        return Err(Drop::XDP);
    }
    let at = (data + TTL_PROTO_CHECK_OFF) as *mut [u8; 4];
    // SAFETY: the check covers the fixed IPv4 header, which holds these four bytes.
    let after = after_hop(unsafe { core::ptr::read_unaligned(at) }).ok_or(Drop::XDP)?;
    // SAFETY: as above; the write is unaligned-safe.
    unsafe { core::ptr::write_unaligned(at, after) };
    Ok(())
}
