//! Direct server return on the backend's node: a packet that another node sent here by
//! DSR (`lb::Outcome::Dsr`) names the frontend the client connected to
//! (`vxlan::DsrFrontend`): its port in the VXLAN header, its address as the outer
//! source (the other node's own for a node port, the external address for an
//! `externalIPs` or LoadBalancer frontend). [`learn`] reads them at the underlay's tc
//! ingress, clears the port before the node's VXLAN device (which does not parse
//! VXLAN-GBP and would drop the packet) sees it, and writes the flow's conntrack
//! entries with `CT_FLAG_REMOTE_FRONTEND`. The pod's replies then get the frontend as their source
//! from `lb::reverse` and leave by the underlay straight to the client.
//!
//! This module reads the tunnel header and writes conntrack; it delivers nothing and
//! must not call into `lb` or `overlay`.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_RECOMPUTE_CSUM},
    helpers::bpf_ktime_get_coarse_ns,
    programs::TcContext,
};
use skiff_ebpf_common::{CT_FLAG_NODEPORT, CT_FLAG_REMOTE_FRONTEND, Ct4Entry, PROTO_TCP, PROTO_UDP, stat};

use crate::{
    Drop, conntrack,
    maps::{ENDPOINTS_V1, config, count},
    packet::{self, ETH_HLEN, IPV4_HLEN, Ipv4Hdr, Packet, UDP_CHECK_OFF, UdpHdr},
    vxlan,
};

/// For a VXLAN packet to this node (`outer`, the packet as parsed before decapsulation;
/// the caller has checked it is one, `overlay::is_own_tunnel_packet`) that carries a
/// direct-server-return frontend: clears it from the header and records the flow for
/// the pod it is for. Any other packet is left as it is.
#[inline(always)]
pub fn learn(ctx: &TcContext, outer: &Packet) -> Result<(), Drop> {
    let vxlan_off = outer.l4_off + core::mem::size_of::<UdpHdr>();
    // Every tunnel packet pays this read.
    let Some(flags) = packet::load_at::<[u8; 4]>(ctx, vxlan_off + vxlan::FLAGS_OFF) else { return Ok(()) };
    let Some(frontend_port) = vxlan::dsr_port(flags) else { return Ok(()) };
    clear(ctx, outer, vxlan_off, flags)?;
    let Some(inner) = inner_packet(ctx, vxlan_off + vxlan::VXLAN_HLEN + ETH_HLEN) else { return Ok(()) };
    // SAFETY: only tests for the key's presence.
    if unsafe { ENDPOINTS_V1.get(inner.daddr) }.is_none() {
        // Not for a pod of this node: nothing here would see its replies.
        return Ok(());
    }
    record(&inner, outer.saddr, frontend_port)?;
    count(stat::DSR_LEARNT);
    Ok(())
}

/// Makes the VXLAN header at `vxlan_off`, whose first 4 bytes are `flags`, an ordinary
/// one: first, whatever follows, since the VXLAN device must take the packet. The
/// senders write no outer UDP checksum; one that is there is updated, which leaves the
/// packet's sum unchanged; without one, a receive checksum over the whole packet
/// (`CHECKSUM_COMPLETE`) is updated instead.
#[inline(always)]
fn clear(ctx: &TcContext, outer: &Packet, vxlan_off: usize, flags: [u8; 4]) -> Result<(), Drop> {
    let check_off = outer.l4_off + UDP_CHECK_OFF;
    let check: u16 = ctx.load(check_off).map_err(|_| Drop::REWRITE)?;
    let (from, to) = (u32::from_ne_bytes(flags), u32::from_ne_bytes(vxlan::PLAIN_FLAGS));
    let store_flags = if check != 0 {
        ctx.l4_csum_replace(check_off, u64::from(from), u64::from(to), 4 | u64::from(BPF_F_MARK_MANGLED_0))
            .map_err(|_| Drop::REWRITE)?;
        0
    } else {
        u64::from(BPF_F_RECOMPUTE_CSUM)
    };
    ctx.store(vxlan_off + vxlan::FLAGS_OFF, &vxlan::PLAIN_FLAGS, store_flags).map_err(|_| Drop::REWRITE)
}

/// The inner IPv4 TCP or UDP packet whose IP header starts at `ip_off`; `None` for
/// anything else (IP options, later fragments), which then has no DSR entries.
#[inline(always)]
fn inner_packet(ctx: &TcContext, ip_off: usize) -> Option<Packet> {
    let ip: Ipv4Hdr = ctx.load(ip_off).ok()?;
    if ip.ver_ihl != 0x45 || u16::from_be(ip.frag_off) & 0x1fff != 0 {
        return None;
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return None;
    }
    let l4_off = ip_off + IPV4_HLEN;
    let ports: [u16; 2] = ctx.load(l4_off).ok()?;
    let tcp_flags: u8 = if ip.proto == PROTO_TCP { ctx.load(l4_off + 13).ok()? } else { 0 };
    Some(Packet {
        l4_off,
        proto: ip.proto,
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: ports[0],
        dport: ports[1],
        tcp_flags,
        ttl: ip.ttl,
    })
}

/// Writes (or refreshes) the entries of the flow `inner` belongs to, whose frontend is
/// `frontend_addr`:`frontend_port`. The forward entry is keyed as the client sent its
/// packets to the frontend, so that replies find it as for any other Service flow;
/// the reply entry as the backend answers.
#[inline(always)]
fn record(inner: &Packet, frontend_addr: u32, frontend_port: u16) -> Result<(), Drop> {
    // The client's packet as the frontend received it, before its destination NAT.
    let as_sent = Packet { daddr: frontend_addr, dport: frontend_port, ..*inner };
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let cfg = config();
    if let Some(entry) = conntrack::lookup_forward(&as_sent, now, &cfg) {
        // SAFETY: pointer from a successful map lookup, used before returning.
        let entry = unsafe { &mut *entry };
        if entry.backend_addr == inner.daddr && entry.backend_port == inner.dport {
            conntrack::touch(entry, &as_sent, now);
            return Ok(());
        }
    }
    let entry = Ct4Entry {
        last_seen_ns: now,
        backend_id: 0,
        backend_addr: inner.daddr,
        rev_nat_index: 0,
        backend_port: inner.dport,
        flags: CT_FLAG_NODEPORT | CT_FLAG_REMOTE_FRONTEND,
        client_addr: inner.saddr,
        snat_addr: frontend_addr,
        client_port: inner.sport,
        snat_port: frontend_port,
        _pad: 0,
    };
    conntrack::create(&conntrack::forward_key(&as_sent), &entry, &conntrack::reply_key_of_reverse(inner), &entry)
        .map_err(|_| Drop::CT_INSERT)?;
    count(stat::CT_NEW);
    Ok(())
}
