//! The VXLAN overlay in the style of flannel, programmed by eBPF: one VXLAN device per
//! node in external (collect_md) mode, and a nodes map from podCIDR to the peer's
//! underlay address. No FDB, neighbour or per-peer route entries exist.
//!
//! The overlay's moves, for the pipelines (`crate::pipeline`) to compose:
//! - [`to_pod_addr`]: a packet for a pod's address by the shortest way: straight into
//!   a pod of this node ([`to_local_pod`]), else into the tunnel ([`to_remote_node`]):
//!   wrapped in VXLAN here and sent out of the underlay interface, past the VXLAN
//!   device and the node's routing (or, where that cannot be done, given its tunnel key
//!   and redirected to the VXLAN device); the receiving node's VXLAN device takes it
//!   apart either way;
//! - [`set_tunnel_key`] with [`config`] and the tunnel mark ([`take_tunnel_mark`]): the
//!   key for packets the node's own stack routes into the VXLAN device;
//! - [`to_local_pod`], [`to_host`]: delivery into a pod of this node, or to its stack.
//!
//! This module must not translate addresses (that is `lb`'s job) nor call into `lb`.

use aya_ebpf::{
    bindings::{
        BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_tunnel_key,
    },
    helpers::{bpf_check_mtu, bpf_get_hash_recalc, bpf_redirect, bpf_redirect_peer, bpf_skb_set_tunnel_key},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use skiff_ebpf_common::{MARK_TUNNEL_SET, OverlayConfig, PROTO_UDP, VXLAN_PORT, stat};

use crate::{
    Drop, hop,
    maps::{self, ENDPOINTS_V1, NODES_V1, OVERLAY_CONFIG_V1, count},
    packet::{self, ETH_HLEN, ETH_P_IP, EthHdr, Packet},
    stack,
    vxlan::{self, DsrFrontend},
    wire,
};

const PACKET_HOST: u32 = 0;

#[inline(always)]
fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context the kernel passed in.
    unsafe { (*ctx.skb.skb).mark }
}

/// The overlay's settings; `None` while the overlay is not set up on this node.
#[inline(always)]
pub fn config() -> Option<OverlayConfig> {
    let cfg = OVERLAY_CONFIG_V1.get(0).copied()?;
    if cfg.vxlan_ifindex == 0 { None } else { Some(cfg) }
}

/// Whether `addr` is in the cluster CIDR (a pod's address); `false` while the overlay
/// is not set up.
#[inline(always)]
pub fn in_cluster(addr: u32) -> bool {
    config().is_some_and(|cfg| addr & cfg.cluster_mask == cfg.cluster_net)
}

/// Whether `pkt` (as received from the wire) is a VXLAN packet for this node's own
/// tunnel endpoint: UDP to the VXLAN port at the node's underlay address. Such a packet
/// is the VXLAN device's to take apart; nothing else on the underlay's ingress path
/// concerns it (no frontend, masquerade reply or pod is at that address and port).
/// `false` while NodePort's settings (the node's address) are not written.
#[inline(always)]
pub fn is_own_tunnel_packet(pkt: &Packet) -> bool {
    pkt.proto == PROTO_UDP
        && pkt.dport == VXLAN_PORT.to_be()
        && maps::nodeport().is_some_and(|np| np.node_addr == pkt.daddr)
}

/// Sets the tunnel key toward the node that owns `daddr`'s podCIDR. `false` if no peer
/// owns it.
#[inline(always)]
pub fn set_tunnel_key(ctx: &TcContext, daddr: u32, cfg: &OverlayConfig) -> Result<bool, Drop> {
    let Some(peer) = NODES_V1.get(Key::new(32, daddr)).copied() else {
        return Ok(false);
    };
    set_tunnel_key_to(ctx, peer.underlay_addr, cfg)?;
    Ok(true)
}

/// Sets the tunnel key toward the node at underlay address `remote`.
#[inline(always)]
fn set_tunnel_key_to(ctx: &TcContext, remote: u32, cfg: &OverlayConfig) -> Result<(), Drop> {
    let mut slot = core::mem::MaybeUninit::<bpf_tunnel_key>::uninit();
    let key = stack::zeroed(&mut slot);
    key.tunnel_id = cfg.vni;
    // The helper takes the remote address in host byte order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(remote);
    key.tunnel_ttl = vxlan::TUNNEL_TTL;
    // SAFETY: `key` is a stack value of the size passed; flags 0 = IPv4.
    let r = unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, key, core::mem::size_of::<bpf_tunnel_key>() as u32, 0) };
    if r != 0 {
        return Err(Drop::TUNNEL_KEY);
    }
    Ok(())
}

/// The tunnel toward the node whose pods `daddr` belongs to: that node's underlay
/// address and the VNI. `None` for addresses outside the cluster network, this node's
/// own pods, podCIDRs no node owns, and while the overlay is not set up.
#[inline(always)]
pub fn tunnel_to(daddr: u32) -> Option<(u32, u32)> {
    let cfg = config()?;
    if daddr & cfg.cluster_mask != cfg.cluster_net || daddr & cfg.local_pod_mask == cfg.local_pod_net {
        return None;
    }
    let peer = NODES_V1.get(Key::new(32, daddr))?;
    Some((peer.underlay_addr, cfg.vni))
}

/// Whether `addr` is a pod of this node.
#[inline(always)]
pub fn is_local_pod(addr: u32) -> bool {
    // SAFETY: only tests for the key's presence.
    unsafe { ENDPOINTS_V1.get(addr) }.is_some()
}

/// Delivers a packet for a pod's address by the shortest way: straight into the pod if
/// it lives on this node ([`to_local_pod`]: past the node's routing, netfilter and the
/// pod veth's backlog queue, as for packets from the tunnel), into the tunnel if it
/// lives on another ([`to_remote_node`]). `None` for an address outside the cluster
/// CIDR, and for a local one without an endpoint (a pod skiff-cni did not set up): the
/// node's stack routes it.
#[inline(always)]
pub fn to_pod_addr(ctx: &TcContext, daddr: u32) -> Result<Option<i32>, Drop> {
    to_pod_addr_dsr(ctx, daddr, None)
}

/// [`to_pod_addr`] for a packet sent by direct server return: into the tunnel with a
/// header that names `dsr`, the frontend its client sent it to, where the programs wrap
/// it themselves. Where the VXLAN device must (a packet too big for the
/// tunnel), it goes without: the device answers the client "fragmentation needed"
/// and the flow's entries on the backend's node stay the ones its earlier packets wrote.
#[inline(always)]
pub fn to_pod_addr_dsr(ctx: &TcContext, daddr: u32, dsr: Option<DsrFrontend>) -> Result<Option<i32>, Drop> {
    match config() {
        Some(cfg) if daddr & cfg.cluster_mask != cfg.cluster_net => Ok(None),
        Some(cfg) if daddr & cfg.local_pod_mask != cfg.local_pod_net => to_remote_node(ctx, &cfg, daddr, dsr).map(Some),
        // No overlay (a single node): its pods are in the endpoints map all the same.
        _ => to_local_pod(ctx, daddr),
    }
}

/// Sends a pod's packet for a pod of another node (`daddr`: in the cluster CIDR, outside
/// this node's podCIDR) into the tunnel, its TTL lowered as by the node's forwarding
/// ([`hop`]): wrapped here ([`encapsulate`]), or else through the VXLAN device, marked
/// so that the device's egress knows its key is set. A packet whose TTL runs out here
/// goes on to the node's stack, which drops it and answers the sender.
#[inline(always)]
fn to_remote_node(ctx: &TcContext, cfg: &OverlayConfig, daddr: u32, dsr: Option<DsrFrontend>) -> Result<i32, Drop> {
    let Some(peer) = NODES_V1.get(Key::new(32, daddr)).copied() else {
        // A podCIDR no node owns (any more): drop rather than leak it elsewhere.
        count(stat::DROP_NO_PEER);
        return Ok(TC_ACT_SHOT as i32);
    };
    if !hop::forward(ctx)? {
        // Its TTL runs out here: the node's stack drops it and answers the sender.
        return Ok(TC_ACT_OK as i32);
    }
    if let Some(action) = encapsulate(ctx, cfg, peer.underlay_addr, dsr)? {
        return Ok(action);
    }
    set_tunnel_key_to(ctx, peer.underlay_addr, cfg)?;
    ctx.set_mark(mark(ctx) | MARK_TUNNEL_SET);
    // SAFETY: a plain helper call; flags 0 = egress of the VXLAN device.
    unsafe { bpf_redirect(cfg.vxlan_ifindex, 0) };
    Ok(TC_ACT_REDIRECT as i32)
}

/// What [`encapsulate`] inserts after the frame's Ethernet header: the outer IPv4, UDP
/// and VXLAN headers, then the frame's own Ethernet header as the inner one.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Inserted {
    outer: vxlan::Outer,
    inner_eth: EthHdr,
}
const INSERTED_LEN: usize = vxlan::OUTER_LEN + ETH_HLEN;
const _: () = assert!(core::mem::size_of::<Inserted>() == INSERTED_LEN);

/// `bpf_skb_adjust_room` flags for [`Inserted`]: the kernel records the new headers as
/// an IPv4/UDP tunnel carrying Ethernet, so that a GSO packet is still segmented as
/// one, and each segment keeps the pod's MSS: the pod's MTU already leaves room for the
/// outer headers. The L2 length is the inner Ethernet header alone: the kernel puts the
/// inner frame's start that far before the inner IP header, and counts everything
/// between the outer UDP header and it (the VXLAN header) as tunnel header; with the
/// VXLAN header counted as inner L2, segmentation reads it as the inner Ethernet
/// header and drops the packet.
const ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | (ETH_HLEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT;

/// Wraps the frame in VXLAN toward the node at underlay address `remote` and sends it
/// out of the underlay interface ([`wire::out_of_underlay`]). This skips, for every
/// packet, what the VXLAN device's transmit costs: a route lookup, the UDP tunnel's
/// transmit, and the node's IP output path. A GSO packet stays
/// one (the underlay device segments it, or a veth passes it whole). `None` where the
/// device must do it: while NodePort's settings (the underlay interface and the node's
/// address) are not written, and for a packet that would not fit the underlay's MTU
/// once wrapped, for which the device's path answers with "fragmentation needed".
#[inline(always)]
fn encapsulate(
    ctx: &TcContext,
    cfg: &OverlayConfig,
    remote: u32,
    dsr: Option<DsrFrontend>,
) -> Result<Option<i32>, Drop> {
    let Some(np) = maps::nodeport() else { return Ok(None) };
    let mut mtu_len = 0u32;
    // SAFETY: a plain helper call; `mtu_len` is a stack value (0: check the packet's own
    // length, grown by the outer headers; a GSO packet's segments are the pod's MTU).
    let fits = unsafe { bpf_check_mtu(ctx.skb.skb.cast(), np.underlay_ifindex, &mut mtu_len, INSERTED_LEN as i32, 0) };
    let ip_len = ctx.len() as usize - ETH_HLEN + INSERTED_LEN;
    if fits != 0 || ip_len > u16::MAX as usize {
        return Ok(None);
    }
    let inner_eth: EthHdr = ctx.load(0).map_err(|_| Drop::REWRITE)?;
    // SAFETY: a plain helper call on this program's context.
    let flow_hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let Some(outer) = vxlan::outer(np.node_addr, remote, cfg.vni, flow_hash, ip_len as u16, dsr) else {
        return Ok(None);
    };
    // Fails before it changes anything: the device's path then takes the packet as is.
    if ctx.adjust_room(INSERTED_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS).is_err() {
        return Ok(None);
    }
    // The room just made sits in the linear header.
    packet::store_at(ctx, ETH_HLEN, &Inserted { outer, inner_eth })?;
    count(stat::ENCAPSULATED);
    if dsr.is_some() {
        count(stat::DSR_TUNNELED);
    }
    wire::out_of_underlay(ctx, &np, remote).map(Some)
}

/// Whether [`to_remote_node`] already set this packet's key; clears the mark so that it
/// does not leak into the underlay.
#[inline(always)]
pub fn take_tunnel_mark(ctx: &TcContext) -> bool {
    let mark = mark(ctx);
    if mark & MARK_TUNNEL_SET == 0 {
        return false;
    }
    ctx.set_mark(mark & !MARK_TUNNEL_SET);
    true
}

/// Delivers a packet for a pod of this node straight into it, from a tc ingress hook
/// (a pod veth's, the VXLAN device's, the underlay's): `bpf_redirect_peer` hands it to
/// the pod's `eth0` ingress in the pod's namespace, without a pass through the host
/// veth's transmit and the backlog queue, its TTL lowered as by the node's forwarding
/// ([`hop`]). `None` if `daddr` is no local pod, or if the packet's TTL runs out here:
/// the node's stack then routes it, or drops it and answers the sender.
#[inline(always)]
pub fn to_local_pod(ctx: &TcContext, daddr: u32) -> Result<Option<i32>, Drop> {
    // SAFETY: copied out at once.
    let Some(ep) = unsafe { ENDPOINTS_V1.get(daddr) }.copied() else {
        return Ok(None);
    };
    if !hop::forward(ctx)? {
        return Ok(None);
    }
    let eth = EthHdr { dst: ep.pod_mac, src: ep.host_mac, proto: ETH_P_IP.to_be() };
    ctx.store(0, &eth, 0).map_err(|_| Drop::REWRITE)?;
    // The peer's stack takes the packet type as it is: one from the tunnel carried the
    // sender's VXLAN device as destination MAC, so it was not for us.
    ctx.change_type(PACKET_HOST).map_err(|_| Drop::REWRITE)?;
    count(stat::POD_DELIVERED);
    // SAFETY: a plain helper call; flags must be 0.
    Ok(Some(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32))
}

/// Hands a decapsulated packet to the node's stack. Its inner destination MAC is the
/// sender's VXLAN device's (there is no ARP on the overlay), so mark it as ours.
#[inline(always)]
pub fn to_host(ctx: &TcContext) -> Result<i32, Drop> {
    ctx.change_type(PACKET_HOST).map_err(|_| Drop::REWRITE)?;
    Ok(TC_ACT_OK as i32)
}
