//! The VXLAN overlay in the style of flannel, programmed by eBPF: one VXLAN device per
//! node in external (collect_md) mode, and a nodes map from podCIDR to the peer's
//! underlay address. No FDB, neighbour or per-peer route entries exist.
//!
//! - [`to_remote_node`]: called by "from pod" after load balancing; a packet for another
//!   node's pod gets its tunnel key and is redirected to the VXLAN device.
//! - [`to_overlay`]: tc egress on the VXLAN device; gives the tunnel key to packets the
//!   node's own stack routes there (the cluster CIDR route), e.g. replies to pods from
//!   node addresses.
//! - [`from_overlay`]: tc ingress on the VXLAN device; reverse NAT for replies of
//!   Service flows whose client lives here, then delivery to the local pod.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_skb_set_tunnel_key},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use skiff_ebpf_common::{MARK_TUNNEL_SET, OverlayConfig};

use crate::{
    Drop, conntrack,
    maps::{CT4_V1, ENDPOINTS_V1, NODES_V1, OVERLAY_CONFIG_V1},
    packet::{ETH_HLEN, EthHdr},
};

const PACKET_HOST: u32 = 0;
const TUNNEL_TTL: u8 = 64;

#[inline(always)]
fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context the kernel passed in.
    unsafe { (*ctx.skb.skb).mark }
}

#[inline(always)]
fn overlay_config() -> Option<OverlayConfig> {
    let cfg = OVERLAY_CONFIG_V1.get(0).copied()?;
    if cfg.vxlan_ifindex == 0 { None } else { Some(cfg) }
}

/// Sets the tunnel key toward the node that owns `daddr`'s podCIDR. `false` if no peer
/// owns it.
#[inline(always)]
fn set_tunnel_key(ctx: &TcContext, daddr: u32, cfg: &OverlayConfig) -> Result<bool, Drop> {
    let Some(peer) = NODES_V1.get(Key::new(32, daddr)).copied() else {
        return Ok(false);
    };
    // SAFETY: an all-zero bpf_tunnel_key is a valid value of this plain C struct.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = cfg.vni;
    // The helper takes the remote address in host byte order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(peer.underlay_addr);
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: `key` is a stack value of the size passed; flags 0 = IPv4.
    let r = unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, core::mem::size_of::<bpf_tunnel_key>() as u32, 0) };
    if r != 0 {
        return Err(Drop);
    }
    Ok(true)
}

/// After load balancing in "from pod": sends a packet for another node's pod into the
/// tunnel. `None` means "not for another node; carry on as before".
#[inline(always)]
pub fn to_remote_node(ctx: &TcContext, daddr: u32) -> Result<Option<i32>, Drop> {
    let Some(cfg) = overlay_config() else { return Ok(None) };
    let in_cluster = daddr & cfg.cluster_mask == cfg.cluster_net;
    let local = daddr & cfg.local_pod_mask == cfg.local_pod_net;
    if !in_cluster || local {
        return Ok(None);
    }
    if !set_tunnel_key(ctx, daddr, &cfg)? {
        // A podCIDR no node owns (any more): drop rather than leak it elsewhere.
        return Ok(Some(TC_ACT_SHOT as i32));
    }
    ctx.set_mark(mark(ctx) | MARK_TUNNEL_SET);
    // SAFETY: a plain helper call; flags 0 = egress of the VXLAN device.
    unsafe { bpf_redirect(cfg.vxlan_ifindex, 0) };
    Ok(Some(TC_ACT_REDIRECT as i32))
}

/// tc egress on the VXLAN device.
#[inline(always)]
pub fn to_overlay(ctx: &TcContext) -> Result<i32, Drop> {
    let mark = mark(ctx);
    if mark & MARK_TUNNEL_SET != 0 {
        ctx.set_mark(mark & !MARK_TUNNEL_SET);
        return Ok(TC_ACT_OK as i32);
    }
    let Some(cfg) = overlay_config() else { return Ok(TC_ACT_SHOT as i32) };
    let ip: crate::packet::Ipv4Hdr = match ctx.load(ETH_HLEN) {
        Ok(ip) => ip,
        Err(_) => return Ok(TC_ACT_SHOT as i32),
    };
    // Without a key the VXLAN device cannot send; without a peer there is nowhere to go.
    if ip.ver_ihl >> 4 != 4 || !set_tunnel_key(ctx, ip.daddr, &cfg)? {
        return Ok(TC_ACT_SHOT as i32);
    }
    Ok(TC_ACT_OK as i32)
}

/// tc ingress on the VXLAN device: decapsulated packets from other nodes.
#[inline(always)]
pub fn from_overlay(ctx: &TcContext) -> Result<i32, Drop> {
    let Some(pkt) = crate::packet::parse(ctx) else {
        return to_host(ctx);
    };
    let mut daddr = pkt.daddr;
    if let Some(entry) = CT4_V1.get_ptr_mut(conntrack::reply_key(&pkt)) {
        // SAFETY: pointer from a successful lookup, copied at once.
        let entry = unsafe { *entry };
        crate::lb::rev_nat(ctx, &pkt, &entry)?;
        daddr = entry.client_addr;
    }
    // SAFETY: copied out at once.
    if let Some(ep) = unsafe { ENDPOINTS_V1.get(daddr) }.copied() {
        // Straight to the pod: its host-side veth's egress leads into the pod.
        let eth = EthHdr { dst: ep.pod_mac, src: ep.host_mac, proto: crate::packet::ETH_P_IP.to_be() };
        ctx.store(0, &eth, 0).map_err(|_| Drop)?;
        // SAFETY: a plain helper call.
        unsafe { bpf_redirect(ep.ifindex, 0) };
        return Ok(TC_ACT_REDIRECT as i32);
    }
    to_host(ctx)
}

/// Hands a decapsulated packet to the node's stack. Its inner destination MAC is the
/// sender's VXLAN device's (there is no ARP on the overlay), so mark it as ours.
#[inline(always)]
fn to_host(ctx: &TcContext) -> Result<i32, Drop> {
    ctx.change_type(PACKET_HOST).map_err(|_| Drop)?;
    Ok(TC_ACT_OK as i32)
}
