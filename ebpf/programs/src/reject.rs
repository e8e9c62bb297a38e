//! Answers for a Service without ready endpoints, as kube-proxy gives them: a TCP RST
//! for TCP, an ICMP port unreachable for UDP. The packet itself is turned into the
//! answer and sent back out of the interface it came in on, toward the client pod.
//!
//! Only plain IPv4 headers (no options) are answered; others are dropped, never let
//! through with the VIP still in them.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use skiff_ebpf_common::{PROTO_ICMP, PROTO_TCP};

use crate::{
    Drop, csum,
    packet::{ETH_HLEN, EthHdr, IPV4_HLEN, Ipv4Hdr, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr, UdpHdr},
};

const TTL: u8 = 64;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;

/// An ICMP error header followed by the offending packet's IP header and first 8 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpUnreach {
    kind: u8,
    code: u8,
    check: u16,
    unused: u32,
    orig_ip: Ipv4Hdr,
    orig_l4: UdpHdr,
}

/// Pseudo header and TCP header, summed together for the TCP checksum.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpWithPseudo {
    saddr: u32,
    daddr: u32,
    zero: u8,
    proto: u8,
    len: u16,
    tcp: TcpHdr,
}

#[inline(always)]
pub fn reject(ctx: &TcContext, pkt: &Packet) -> Result<i32, Drop> {
    if pkt.l4_off != ETH_HLEN + IPV4_HLEN {
        return Ok(TC_ACT_SHOT as i32);
    }
    if pkt.proto == PROTO_TCP { tcp_reset(ctx, pkt) } else { icmp_unreachable(ctx, pkt) }
}

#[inline(always)]
fn ipv4_header(tot_len: u16, proto: u8, saddr: u32, daddr: u32) -> Result<Ipv4Hdr, Drop> {
    let mut ip = Ipv4Hdr {
        ver_ihl: 0x45,
        tos: 0,
        tot_len: tot_len.to_be(),
        id: 0,
        frag_off: 0,
        ttl: TTL,
        proto,
        check: 0,
        saddr,
        daddr,
    };
    // SAFETY: `ip` is a 20-byte stack value.
    let sum = unsafe { csum::sum(&ip as *const Ipv4Hdr as *const u8, IPV4_HLEN as u32, 0) }.ok_or(Drop::REJECT)?;
    ip.check = csum::fold(sum);
    Ok(ip)
}

/// Swaps the Ethernet addresses and sends the frame back out of its ingress device.
#[inline(always)]
fn bounce(ctx: &TcContext) -> Result<i32, Drop> {
    let eth: EthHdr = ctx.load(0).map_err(|_| Drop::REJECT)?;
    let back = EthHdr { dst: eth.src, src: eth.dst, proto: eth.proto };
    ctx.store(0, &back, 0).map_err(|_| Drop::REJECT)?;
    // SAFETY: reading a field of the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain helper call; flags 0 = egress of that device, toward the pod.
    let _ = unsafe { bpf_redirect(ifindex, 0) };
    Ok(TC_ACT_REDIRECT as i32)
}

#[inline(always)]
fn tcp_reset(ctx: &TcContext, pkt: &Packet) -> Result<i32, Drop> {
    if pkt.tcp_flags & TCP_RST != 0 {
        return Ok(TC_ACT_SHOT as i32);
    }
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN).map_err(|_| Drop::REJECT)?;
    let tcp: TcpHdr = ctx.load(pkt.l4_off).map_err(|_| Drop::REJECT)?;
    let (seq, ack_seq, flags) = if pkt.tcp_flags & TCP_ACK != 0 {
        (tcp.ack_seq, 0, TCP_RST)
    } else {
        let payload = u16::from_be(ip.tot_len) as u32 - IPV4_HLEN as u32 - ((tcp.doff >> 4) as u32 * 4);
        let mut ack = u32::from_be(tcp.seq).wrapping_add(payload);
        if pkt.tcp_flags & TCP_SYN != 0 {
            ack = ack.wrapping_add(1);
        }
        if pkt.tcp_flags & TCP_FIN != 0 {
            ack = ack.wrapping_add(1);
        }
        (0, ack.to_be(), TCP_RST | TCP_ACK)
    };
    let tcp_len = core::mem::size_of::<TcpHdr>();
    let mut seg = TcpWithPseudo {
        saddr: ip.daddr,
        daddr: ip.saddr,
        zero: 0,
        proto: PROTO_TCP,
        len: (tcp_len as u16).to_be(),
        tcp: TcpHdr {
            sport: tcp.dport,
            dport: tcp.sport,
            seq,
            ack_seq,
            doff: 5 << 4,
            flags,
            window: 0,
            check: 0,
            urg_ptr: 0,
        },
    };
    // SAFETY: `seg` is a 32-byte stack value.
    let sum = unsafe {
        csum::sum(&seg as *const TcpWithPseudo as *const u8, core::mem::size_of::<TcpWithPseudo>() as u32, 0)
    }
    .ok_or(Drop::REJECT)?;
    seg.tcp.check = csum::fold(sum);
    let new_ip = ipv4_header((IPV4_HLEN + tcp_len) as u16, PROTO_TCP, ip.daddr, ip.saddr)?;

    let total = (ETH_HLEN + IPV4_HLEN + tcp_len) as u32;
    // SAFETY: helper on the context the kernel passed in.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, total, 0) } != 0 {
        return Err(Drop::REJECT);
    }
    ctx.store(ETH_HLEN, &new_ip, 0).map_err(|_| Drop::REJECT)?;
    ctx.store(ETH_HLEN + IPV4_HLEN, &seg.tcp, 0).map_err(|_| Drop::REJECT)?;
    bounce(ctx)
}

#[inline(always)]
fn icmp_unreachable(ctx: &TcContext, pkt: &Packet) -> Result<i32, Drop> {
    let orig_ip: Ipv4Hdr = ctx.load(ETH_HLEN).map_err(|_| Drop::REJECT)?;
    let orig_l4: UdpHdr = ctx.load(pkt.l4_off).map_err(|_| Drop::REJECT)?;
    let mut icmp =
        IcmpUnreach { kind: ICMP_DEST_UNREACH, code: ICMP_PORT_UNREACH, check: 0, unused: 0, orig_ip, orig_l4 };
    let icmp_len = core::mem::size_of::<IcmpUnreach>();
    // SAFETY: `icmp` is a 36-byte stack value.
    let sum = unsafe { csum::sum(&icmp as *const IcmpUnreach as *const u8, icmp_len as u32, 0) }.ok_or(Drop::REJECT)?;
    icmp.check = csum::fold(sum);
    let new_ip = ipv4_header((IPV4_HLEN + icmp_len) as u16, PROTO_ICMP, orig_ip.daddr, orig_ip.saddr)?;

    let total = (ETH_HLEN + IPV4_HLEN + icmp_len) as u32;
    // SAFETY: helper on the context the kernel passed in.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, total, 0) } != 0 {
        return Err(Drop::REJECT);
    }
    ctx.store(ETH_HLEN, &new_ip, 0).map_err(|_| Drop::REJECT)?;
    ctx.store(ETH_HLEN + IPV4_HLEN, &icmp, 0).map_err(|_| Drop::REJECT)?;
    bounce(ctx)
}
