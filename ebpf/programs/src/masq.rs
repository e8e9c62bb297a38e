//! Masquerade: pod traffic that leaves the cluster network through the node's underlay
//! interface gets the node's address and a port of its own as source ([`snat`]), and
//! the replies get the pod's back ([`unsnat`]), as flannel's `ipMasq` does with
//! iptables. Without it a pod could not reach anything outside the cluster CIDR whose
//! network has no route back to the pods: the API server behind the `kubernetes`
//! Service, a node's own address on another node, the world.
//!
//! Flows live in one LRU map, two entries each (see `Snat4Entry`): the forward entry
//! keeps a flow on its port, the reply entry leads replies back to the pod. A port is
//! free toward one destination (address, port, protocol) when no live flow holds it, so
//! the same port serves many destinations at once.
//!
//! This module must not load-balance or deliver: the pipelines compose it with `lb`
//! (a Service whose backend is outside the cluster network) and `overlay` (delivery).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    programs::TcContext,
};
use skiff_ebpf_common::{CT_DIR_FORWARD, CT_DIR_REPLY, CT_FLAG_CLOSING, Ct4Key, Snat4Entry, stat};

use crate::{
    Drop, conntrack,
    maps::{self, MASQ_CONFIG_V1, SNAT4_V1, count},
    nat::rewrite,
    packet::{IP_DADDR_OFF, IP_SADDR_OFF, L4_DPORT_OFF, L4_SPORT_OFF, Packet, TCP_FIN, TCP_RST},
};

/// How many ports a new flow tries before it is dropped. Tries start at a random port,
/// so a few suffice until the range toward one destination is nearly full.
const PORT_TRIES: u32 = 32;
/// Refresh `last_seen_ns` at most this often (as conntrack does).
const REFRESH_NS: u64 = 1_000_000_000;

/// The masquerade's settings, ports in host byte order for the arithmetic.
#[derive(Clone, Copy)]
struct Settings {
    node_addr: u32,
    cluster_net: u32,
    cluster_mask: u32,
    port_first: u16,
    port_count: u32,
}

#[inline(always)]
fn settings() -> Option<Settings> {
    let raw = MASQ_CONFIG_V1.get(0).copied()?;
    let (first, last) = (u16::from_be(raw.port_first), u16::from_be(raw.port_last));
    if raw.node_addr == 0 || last < first {
        return None;
    }
    Some(Settings {
        node_addr: raw.node_addr,
        cluster_net: raw.cluster_net,
        cluster_mask: raw.cluster_mask,
        port_first: first,
        port_count: (last - first) as u32 + 1,
    })
}

/// How long a flow lives after its last refresh: conntrack's timeouts.
#[inline(always)]
fn timeout(entry: &Snat4Entry, proto: u8) -> u64 {
    conntrack::timeout(entry.flags, proto, &maps::config())
}

#[inline(always)]
fn closing(pkt: &Packet) -> bool {
    pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// Source NAT for a packet leaving through the underlay: a pod's packet toward an
/// address outside the cluster network leaves with the node's address and the flow's
/// port. Any other packet (the node's own, VXLAN's) is left untouched.
#[inline(always)]
pub fn snat(ctx: &TcContext, pkt: &Packet) -> Result<(), Drop> {
    let Some(cfg) = settings() else { return Ok(()) };
    let from_pod = pkt.saddr & cfg.cluster_mask == cfg.cluster_net;
    let to_pod = pkt.daddr & cfg.cluster_mask == cfg.cluster_net;
    if !from_pod || to_pod {
        return Ok(());
    }
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // The flow's key has conntrack's layout (a separate map, so no clash with it).
    let fwd = conntrack::forward_key(pkt);
    let port = match SNAT4_V1.get_ptr_mut(&fwd) {
        // SAFETY: pointer from a successful lookup, used before returning; a torn
        // `last_seen_ns`/`flags` from a concurrent update is harmless.
        Some(entry)
            if now.saturating_sub(unsafe { (*entry).last_seen_ns }) <= timeout(unsafe { &*entry }, pkt.proto) =>
        {
            // SAFETY: as above.
            let entry = unsafe { &mut *entry };
            if closing(pkt) && entry.flags & CT_FLAG_CLOSING == 0 {
                entry.flags |= CT_FLAG_CLOSING;
                entry.last_seen_ns = now;
            } else if now.saturating_sub(entry.last_seen_ns) > REFRESH_NS {
                entry.last_seen_ns = now;
            }
            entry.port
        }
        _ => new_flow(pkt, &fwd, &cfg, now)?,
    };
    rewrite(ctx, pkt, IP_SADDR_OFF, (pkt.saddr, cfg.node_addr), L4_SPORT_OFF, (pkt.sport, port))
}

/// Claims a free port toward the packet's destination and records the flow. The reply
/// entry is claimed first (`BPF_NOEXIST` makes that atomic against other CPUs), so two
/// flows can never share a port toward one destination.
#[inline(always)]
fn new_flow(pkt: &Packet, fwd: &Ct4Key, cfg: &Settings, now: u64) -> Result<u16, Drop> {
    // SAFETY: a plain helper call without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % cfg.port_count;
    let back = Snat4Entry { last_seen_ns: now, addr: pkt.saddr, port: pkt.sport, flags: 0 };
    for i in 0..PORT_TRIES {
        let port = (cfg.port_first as u32 + (start + i) % cfg.port_count) as u16;
        let port = port.to_be();
        let reply = Ct4Key {
            saddr: pkt.daddr,
            daddr: cfg.node_addr,
            sport: pkt.dport,
            dport: port,
            proto: pkt.proto,
            dir: CT_DIR_REPLY,
            _pad: [0; 2],
        };
        let claimed = SNAT4_V1.insert(&reply, &back, BPF_NOEXIST as u64).is_ok()
            || (stale(&reply, port, now) && SNAT4_V1.insert(&reply, &back, 0).is_ok());
        if claimed {
            let entry = Snat4Entry { last_seen_ns: now, addr: cfg.node_addr, port, flags: 0 };
            SNAT4_V1.insert(fwd, &entry, 0).map_err(|_| Drop::CT_INSERT)?;
            count(stat::SNAT_NEW);
            return Ok(port);
        }
    }
    Err(Drop::SNAT_NO_PORT)
}

/// Whether the flow holding `port` under this reply key is over: its forward entry is
/// gone (evicted), has moved to another port, or has timed out.
#[inline(always)]
fn stale(reply: &Ct4Key, port: u16, now: u64) -> bool {
    // SAFETY: copied out at once.
    let Some(back) = (unsafe { SNAT4_V1.get(reply) }).copied() else { return true };
    let owner = Ct4Key {
        saddr: back.addr,
        daddr: reply.saddr,
        sport: back.port,
        dport: reply.sport,
        proto: reply.proto,
        dir: CT_DIR_FORWARD,
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    match unsafe { SNAT4_V1.get(&owner) }.copied() {
        None => true,
        Some(flow) => flow.port != port || now.saturating_sub(flow.last_seen_ns) > timeout(&flow, reply.proto),
    }
}

/// Reverse of [`snat`] for a packet arriving from the underlay: a reply of a
/// masqueraded flow gets the pod's address and port as destination. Returns the packet
/// as it is now, for the next steps (`lb::reverse`, delivery); `None` for any other
/// packet (left untouched).
#[inline(always)]
pub fn unsnat(ctx: &TcContext, pkt: &Packet) -> Result<Option<Packet>, Drop> {
    let Some(cfg) = settings() else { return Ok(None) };
    let dport = u16::from_be(pkt.dport);
    // Cheapest tests first: most packets here are for the node itself.
    if pkt.daddr != cfg.node_addr || dport < cfg.port_first || (dport - cfg.port_first) as u32 >= cfg.port_count {
        return Ok(None);
    }
    let reply = conntrack::reply_key(pkt);
    // SAFETY: copied out at once.
    let Some(back) = (unsafe { SNAT4_V1.get(&reply) }).copied() else { return Ok(None) };
    if closing(pkt) {
        let fwd = Ct4Key {
            saddr: back.addr,
            daddr: pkt.saddr,
            sport: back.port,
            dport: pkt.sport,
            proto: pkt.proto,
            dir: CT_DIR_FORWARD,
            _pad: [0; 2],
        };
        if let Some(flow) = SNAT4_V1.get_ptr_mut(&fwd) {
            // SAFETY: pointer from a successful lookup, used at once.
            let flow = unsafe { &mut *flow };
            if flow.flags & CT_FLAG_CLOSING == 0 {
                flow.flags |= CT_FLAG_CLOSING;
                // SAFETY: a plain helper call without arguments.
                flow.last_seen_ns = unsafe { bpf_ktime_get_coarse_ns() };
            }
        }
    }
    rewrite(ctx, pkt, IP_DADDR_OFF, (pkt.daddr, back.addr), L4_DPORT_OFF, (pkt.dport, back.port))?;
    Ok(Some(Packet { daddr: back.addr, dport: back.port, ..*pkt }))
}
