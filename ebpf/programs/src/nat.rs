//! Address and port rewriting with the checksums kept right: the one place where the
//! datapath's translations (`lb`'s DNAT and reverse NAT, `masq`'s source NAT) touch
//! packet bytes. It decides nothing.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use skiff_ebpf_common::PROTO_UDP;

use crate::{
    Drop, csum,
    packet::{ETH_HLEN, IP_CHECK_OFF, IPV4_HLEN, Ipv4Hdr, Packet},
};

/// Flags for `l4_csum_replace`: a UDP checksum of 0 means "none" and must stay so.
#[inline(always)]
fn l4_flags(pkt: &Packet) -> u64 {
    if pkt.proto == PROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 }
}

/// Rewrites one address (at `ip_off` in the IP header) and one port (at `port_off` in
/// the L4 header). The L4 checksum goes through the kernel's helper, which knows
/// whether the skb carries a full checksum or only a pseudo-header sum to be completed
/// by offload; the IP checksum and the stores are done directly on the packet, which
/// costs a fraction of the helper calls on this hot path.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    ip_off: usize,
    (from_addr, to_addr): (u32, u32),
    port_off: usize,
    (from_port, to_port): (u16, u16),
) -> Result<(), Drop> {
    let check_off = pkt.l4_check_off();
    if from_addr != to_addr {
        ctx.l4_csum_replace(check_off, from_addr as u64, to_addr as u64, BPF_F_PSEUDO_HDR as u64 | 4 | l4_flags(pkt))
            .map_err(|_| Drop::REWRITE)?;
    }
    if from_port != to_port {
        ctx.l4_csum_replace(check_off, from_port as u64, to_port as u64, 2 | l4_flags(pkt))
            .map_err(|_| Drop::REWRITE)?;
    }
    // The helpers above may have moved the packet: derive the pointers afresh.
    let data = ctx.data();
    if pkt.l4_off == ETH_HLEN + IPV4_HLEN && data + ETH_HLEN + IPV4_HLEN + 4 <= ctx.data_end() {
        // SAFETY: bounds checked just above; tc programs may write packet data directly.
        unsafe {
            let ip = (data + ETH_HLEN) as *mut Ipv4Hdr;
            if from_addr != to_addr {
                (*ip).check = csum::replace4((*ip).check, from_addr, to_addr);
                *((data + ETH_HLEN + ip_off) as *mut u32) = to_addr;
            }
            *((data + pkt.l4_off + port_off) as *mut u16) = to_port;
        }
        return Ok(());
    }
    // IP options: the slower, general helpers.
    if from_addr != to_addr {
        ctx.l3_csum_replace(ETH_HLEN + IP_CHECK_OFF, from_addr as u64, to_addr as u64, 4).map_err(|_| Drop::REWRITE)?;
        ctx.store(ETH_HLEN + ip_off, &to_addr, 0).map_err(|_| Drop::REWRITE)?;
    }
    ctx.store(pkt.l4_off + port_off, &to_port, 0).map_err(|_| Drop::REWRITE)
}

/// Rewrites only an address, for the hairpin source/destination.
#[inline(always)]
pub fn rewrite_addr(ctx: &TcContext, pkt: &Packet, ip_off: usize, from: u32, to: u32) -> Result<(), Drop> {
    if from == to {
        return Ok(());
    }
    ctx.l4_csum_replace(pkt.l4_check_off(), from as u64, to as u64, BPF_F_PSEUDO_HDR as u64 | 4 | l4_flags(pkt))
        .map_err(|_| Drop::REWRITE)?;
    ctx.l3_csum_replace(ETH_HLEN + IP_CHECK_OFF, from as u64, to as u64, 4).map_err(|_| Drop::REWRITE)?;
    ctx.store(ETH_HLEN + ip_off, &to, 0).map_err(|_| Drop::REWRITE)
}
