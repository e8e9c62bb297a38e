//! Packets at XDP, where the kernel has built no socket buffer yet: parsing, address
//! and port rewriting with direct packet access, the next hop from the FIB, and VXLAN
//! encapsulation for sending a packet straight back out ([`back_out`]).
//!
//! This is the NodePort fast path's toolbox (`crate::pipeline::xdp_underlay`). Its
//! rule: every check that can fail comes before the first write, so that a packet it
//! cannot finish goes on to the tc path untouched. It must not decide anything about
//! Services (that is `lb`'s) and never calls into `lb` or `overlay`.

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use skiff_ebpf_common::{PROTO_TCP, PROTO_UDP};

use crate::{
    Drop, csum,
    fib::{self, NextHop},
    packet::{ETH_HLEN, ETH_P_IP, EthHdr, IPV4_HLEN, Ipv4Hdr, Packet, TcpHdr, UdpHdr},
    vxlan,
};

/// VXLAN's outer headers: Ethernet, IPv4, UDP and the VXLAN header.
pub const ENCAP_LEN: usize = ETH_HLEN + vxlan::OUTER_LEN;

/// Parses an Ethernet IPv4 TCP or UDP frame without IP options (those, fragments and
/// anything else give `None`: the tc path handles them).
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Option<Packet> {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN + IPV4_HLEN + core::mem::size_of::<TcpHdr>() > end {
        // Shorter than TCP's header: a UDP datagram may still fit.
        if data + ETH_HLEN + IPV4_HLEN + core::mem::size_of::<UdpHdr>() > end {
            return None;
        }
    }
    // SAFETY: the check above covers Ethernet, IPv4 and at least a UDP header.
    let (eth, ip) = unsafe { (&*(data as *const EthHdr), &*((data + ETH_HLEN) as *const Ipv4Hdr)) };
    if eth.proto != ETH_P_IP.to_be() || ip.ver_ihl != 0x45 || u16::from_be(ip.frag_off) & 0x1fff != 0 {
        return None;
    }
    let l4 = data + ETH_HLEN + IPV4_HLEN;
    let (sport, dport, tcp_flags) = match ip.proto {
        PROTO_TCP => {
            if l4 + core::mem::size_of::<TcpHdr>() > end {
                return None;
            }
            // SAFETY: bounds checked just above.
            let tcp = unsafe { &*(l4 as *const TcpHdr) };
            (tcp.sport, tcp.dport, tcp.flags)
        }
        PROTO_UDP => {
            // SAFETY: the first check covers a UDP header.
            let udp = unsafe { &*(l4 as *const UdpHdr) };
            (udp.sport, udp.dport, 0)
        }
        _ => return None,
    };
    Some(Packet {
        l4_off: ETH_HLEN + IPV4_HLEN,
        proto: ip.proto,
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
        tcp_flags,
        ttl: ip.ttl,
    })
}

/// The next hop toward `daddr` from `saddr` for a packet of `len` bytes of IP: source
/// and destination MACs, if the FIB routes it out of `ifindex` itself, the neighbour is
/// resolved and it fits the route's MTU. `None` otherwise (the stack then resolves,
/// fragments or answers "too big"), and also while the interface does not forward.
#[inline(always)]
pub fn next_hop(ctx: &XdpContext, ifindex: u32, saddr: u32, daddr: u32, len: u16) -> Option<([u8; 6], [u8; 6])> {
    match fib::next_hop(ctx.ctx.cast(), ifindex, saddr, daddr, len) {
        NextHop::Resolved { smac, dmac } => Some((smac, dmac)),
        NextHop::Unresolved { .. } | NextHop::Unknown => None,
    }
}

/// Destination NAT to `addr:port`, and source NAT to `source:source_port` unless
/// `source` is 0, in place, checksums updated incrementally. The frame must be the one
/// [`parse`] read.
#[inline(always)]
pub fn rewrite(
    ctx: &XdpContext,
    pkt: &Packet,
    (addr, port): (u32, u16),
    (source, source_port): (u32, u16),
) -> Result<(), Drop> {
    let source_port = if source != 0 { source_port } else { pkt.sport };
    let data = ctx.data();
    let end = ctx.data_end();
    let l4 = data + ETH_HLEN + IPV4_HLEN;
    if l4 + core::mem::size_of::<UdpHdr>() > end {
        return Err(Drop::XDP);
    }
    // SAFETY: the check covers the IPv4 header; `parse` read it from this frame.
    let ip = unsafe { &mut *((data + ETH_HLEN) as *mut Ipv4Hdr) };
    let new_saddr = if source != 0 { source } else { pkt.saddr };
    ip.check = csum::replace4(csum::replace4(ip.check, ip.daddr, addr), ip.saddr, new_saddr);
    ip.daddr = addr;
    ip.saddr = new_saddr;
    let check = if pkt.proto == PROTO_TCP {
        if l4 + core::mem::size_of::<TcpHdr>() > end {
            return Err(Drop::XDP);
        }
        // SAFETY: bounds checked just above.
        let tcp = unsafe { &mut *(l4 as *mut TcpHdr) };
        tcp.dport = port;
        tcp.sport = source_port;
        &mut tcp.check
    } else {
        // SAFETY: the first check covers a UDP header.
        let udp = unsafe { &mut *(l4 as *mut UdpHdr) };
        udp.dport = port;
        udp.sport = source_port;
        if udp.check == 0 {
            // A UDP datagram without a checksum keeps none.
            return Ok(());
        }
        &mut udp.check
    };
    let mut sum = csum::replace4(*check, pkt.daddr, addr);
    sum = csum::replace4(sum, pkt.saddr, new_saddr);
    sum = csum::replace2(sum, pkt.dport, port);
    sum = csum::replace2(sum, pkt.sport, source_port);
    *check = if pkt.proto == PROTO_UDP && sum == 0 { 0xffff } else { sum };
    Ok(())
}

/// A frame's new front: the outer Ethernet header and [`vxlan::Outer`].
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Encap {
    eth: EthHdr,
    outer: vxlan::Outer,
}
const _: () = assert!(core::mem::size_of::<Encap>() == ENCAP_LEN);

/// Where [`encapsulate`] sends a frame: the tunnel's endpoints, the next hop's MACs and
/// the VNI.
#[derive(Clone, Copy)]
pub struct Tunnel {
    /// This node's address.
    pub local: u32,
    pub remote: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub vni: u32,
    /// The inner flow's hash, for the outer UDP source port.
    pub flow_hash: u32,
    /// The frontend a direct-server-return flow's header names (`vxlan::outer`).
    pub dsr: Option<vxlan::DsrFrontend>,
}

/// Wraps the whole frame (inner Ethernet header included) in VXLAN toward
/// `tunnel.remote`; the caller then sends it [`back_out`]. `frame_len` is the frame's length
/// before (what [`outer_len`] was computed from).
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, frame_len: usize, tunnel: &Tunnel) -> Result<(), Drop> {
    let ip_len = outer_len(frame_len);
    let outer =
        vxlan::outer(tunnel.local, tunnel.remote, tunnel.vni, tunnel.flow_hash, ip_len, tunnel.dsr).ok_or(Drop::XDP)?;
    let encap = Encap { eth: EthHdr { dst: tunnel.dmac, src: tunnel.smac, proto: ETH_P_IP.to_be() }, outer };
    // SAFETY: plain helper call on this program's context; a negative delta grows the
    // headroom side.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(ENCAP_LEN as i32)) } != 0 {
        return Err(Drop::XDP);
    }
    let data = ctx.data();
    if data + ENCAP_LEN > ctx.data_end() {
        return Err(Drop::XDP);
    }
    // SAFETY: the check covers ENCAP_LEN bytes; the write is unaligned-safe.
    unsafe { core::ptr::write_unaligned(data as *mut Encap, encap) };
    Ok(())
}

/// The outer IP length of a frame of `frame_len` bytes once encapsulated.
#[inline(always)]
pub fn outer_len(frame_len: usize) -> u16 {
    (frame_len + ENCAP_LEN - ETH_HLEN) as u16
}

/// Sends the frame back out of the interface it came in by, as XDP_REDIRECT to that
/// interface rather than XDP_TX: on a veth, XDP_TX frames wait in the peer's queue until
/// something else wakes it unless the peer runs an XDP program itself, while a
/// redirect's transmit wakes it (the peer needs NAPI, which GRO gives it). Returns the
/// action.
#[inline(always)]
pub fn back_out(ctx: &XdpContext) -> u32 {
    // SAFETY: a plain helper call; flags 0.
    unsafe { bpf_redirect(ctx.ingress_ifindex() as u32, 0) as u32 }
}
