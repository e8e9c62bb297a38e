//! Service load balancing: frontend lookup, backend selection (conntrack, session
//! affinity, random), destination NAT toward the backend, and reverse NAT of replies.
//! ClusterIP frontends are translated where a pod's packets leave it ([`balance`]),
//! NodePort and external frontends where the node receives from the wire
//! ([`from_wire`]).
//!
//! NodePort flows (kube-proxy's semantics, Cilium's way of doing them): a backend on
//! this node gets the client's packets with the client's address, so
//! `externalTrafficPolicy: Local` keeps it; a backend on another node gets them with
//! this node's podCIDR address as source (the flow's `snat_addr`), so that its replies
//! come back through the tunnel to this node to be translated back. Replies of NodePort
//! flows say so ([`Outcome::Wire`], [`Reply::nodeport`]): after reverse NAT they come
//! from the node's own address and must leave straight by the underlay interface.
//!
//! A node port or external address whose Service asks for direct server return
//! (`SERVICE_FLAG_DSR`) sends another node's backend the client's packets untranslated
//! but for the destination, with the frontend named in the tunnel header
//! ([`Outcome::Dsr`]); the backend's node learns it from there (`crate::dsr`) and
//! answers the client itself, from the frontend's address and port
//! ([`CT_FLAG_REMOTE_FRONTEND`] entries, reversed here like any other).
//!
//! [`balance`] and [`reverse`] say where a packet goes next ([`Outcome`]); they do not
//! deliver it. Delivery (the overlay, the node's stack) is the pipelines' business
//! (`crate::pipeline`), so this module must not call into `overlay`.
//!
//! Map layout (see `skiff_ebpf_common`): slot 0 of a frontend carries the backend count
//! and flags; slots 1..=count carry backend ids; the backends map gives addresses.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use skiff_ebpf_common::{
    Affinity4Key, Affinity4Value, BACKEND_FLAG_TERMINATING, Backend4, CT_DIR_FORWARD, CT_FLAG_CLOSING, CT_FLAG_DSR,
    CT_FLAG_HAIRPIN, CT_FLAG_NODEPORT, CT_FLAG_REMOTE_FRONTEND, CT_FLAG_SNAT, Ct4Entry, Ct4Key, PROTO_TCP, PROTO_UDP,
    RevNat4, SERVICE_FLAG_AFFINITY, SERVICE_FLAG_DSR, SERVICE_FLAG_MAGLEV, Service4Key, Service4Value, stat,
};

use crate::{
    Drop, conntrack,
    maps::{
        AFFINITY_V1, BACKENDS_V1, CT4_V2, Config, ENDPOINTS_V1, NODES_V1, NodePort, REV_NAT_V1, SERVICES_V1, config,
        count, nodeport as nodeport_settings,
    },
    nat::{rewrite, rewrite_addr},
    packet::{IP_DADDR_OFF, IP_SADDR_OFF, L4_DPORT_OFF, L4_SPORT_OFF, Packet, TCP_FIN, TCP_RST, TCP_SYN},
    reject,
    vxlan::DsrFrontend,
};

/// What load balancing decided for a packet.
#[derive(Clone, Copy)]
pub enum Outcome {
    /// Carry on toward this destination (the backend after DNAT, the client after
    /// reverse NAT, or the packet's own destination when no Service is involved).
    Forward(u32),
    /// Answered here (a reject for a Service without backends): return this action.
    Done(i32),
    /// A reply of a NodePort flow, translated back: it now comes from the node's own
    /// address and must leave by the underlay interface, not enter the node's stack.
    Wire,
    /// A reply translated back to come from this node's own address (a pod's flow to
    /// its node's node port), for that pod: the node's stack would drop it as a martian
    /// (one of its own addresses as source, arriving on a pod's interface), so it goes
    /// straight into the pod.
    IntoPod(u32),
    /// A node-port or external-address packet for another node's backend by direct
    /// server return: into the tunnel toward `backend`, the header naming `frontend`.
    Dsr { backend: u32, frontend: DsrFrontend },
}

/// A reply translated back by [`reverse`].
#[derive(Clone, Copy)]
pub struct Reply {
    /// The client's address, the reply's destination now.
    pub client: u32,
    /// The flow came in through a node port (see [`Outcome::Wire`]).
    pub nodeport: bool,
    /// The reply's source now (the frontend's address), 0 if the Service is gone and
    /// nothing was translated.
    pub source: u32,
}

/// Load balancing for a packet that left a pod: a Service frontend gets DNAT to a
/// backend, a reply of a Service flow gets its source translated back to the Service;
/// anything else passes untouched.
///
/// Lookups, cheapest path first: a packet to the Service CIDR tries its conntrack
/// entry (established flows need nothing else), then the frontend (new flows); any
/// other packet can only be a reply, one lookup in the reply direction.
#[inline(always)]
pub fn balance(ctx: &TcContext, pkt: &Packet) -> Result<Outcome, Drop> {
    let cfg = config();
    if pkt.daddr & cfg.service_mask == cfg.service_net {
        if let Some(outcome) = translate(ctx, pkt, &cfg, None)? {
            return Ok(outcome);
        }
        if cfg.service_mask != 0 {
            return Ok(Outcome::Forward(pkt.daddr));
        }
    }
    match reverse(ctx, pkt)? {
        Some(Reply { nodeport: true, .. }) => Ok(Outcome::Wire),
        // A ClusterIP's reply (the common case) needs no look at the NodePort settings.
        Some(Reply { client, source, .. })
            if !is_service_addr(source) && nodeport_settings().is_some_and(|np| np.node_addr == source) =>
        {
            Ok(Outcome::IntoPod(client))
        }
        Some(Reply { client, .. }) => Ok(Outcome::Forward(client)),
        None => {
            if pkt.proto == PROTO_UDP {
                supersede_service_flow(pkt);
            }
            own_node_port(ctx, pkt, &cfg)
        }
    }
}

/// A pod's datagram straight to an address and port that an earlier Service flow from
/// the same pod address and port was translated to (its reply entry is keyed by this
/// datagram's tuple reversed). Both flows' replies would come from that backend to that
/// port, and the earlier flow's reverse NAT would rewrite the new one's to come from the
/// Service, which its socket drops. The port is the new flow's now: a UDP port belongs
/// to one socket, so the socket of the Service flow is gone (typically: a pod whose
/// sockets go through the socket-level load balancer reuses a port that a flow the tc
/// programs translated had before). Removes the earlier flow's entries, as the kernel's
/// conntrack would give the new flow its own. TCP needs no such check here: a new
/// connection's SYN-ACK tells it apart in [`reverse`].
#[inline(always)]
fn supersede_service_flow(pkt: &Packet) {
    let reply_key = conntrack::reply_key_of_reverse(pkt);
    let Some(entry) = CT4_V2.get_ptr(&reply_key) else { return };
    // SAFETY: pointer from a successful lookup, copied at once.
    let entry = unsafe { *entry };
    if let Some(frontend) = frontend_of_entry(&entry) {
        let client_port = client_port(&entry, pkt.sport);
        let _ = CT4_V2.remove(&forward_key_of(&entry, pkt.proto, client_port, &frontend));
    }
    let _ = CT4_V2.remove(&reply_key);
    count(stat::CT_SUPERSEDED);
}

/// A pod's packet to its own node's address within the node port range: a node port,
/// translated here as kube-proxy's rules would, since the node's stack has no listener
/// on it. Pods whose cgroup lies under the node's have their connections translated at
/// `connect()` already (`sock`); this is for the others. The pod's address is routable,
/// so the flow is translated like a ClusterIP's (no source NAT) and its replies are
/// reverse-translated by `reverse`. Anything else goes where it was sent.
#[inline(always)]
fn own_node_port(ctx: &TcContext, pkt: &Packet, cfg: &Config) -> Result<Outcome, Drop> {
    if let Some(np) = nodeport_settings() {
        let dport = u16::from_be(pkt.dport);
        if pkt.daddr == np.node_addr
            && (np.port_first..=np.port_last).contains(&dport)
            && let Some(outcome) = translate(ctx, pkt, cfg, None)?
        {
            return Ok(outcome);
        }
    }
    Ok(Outcome::Forward(pkt.daddr))
}

/// Load balancing for a packet the node received from the wire: one to a NodePort
/// frontend (this node's address, a node port) or an external frontend (an externalIP
/// or LoadBalancer ingress address routed to this node) gets DNAT to a backend, and
/// SNAT too if that backend lives on another node. `None` for any other packet
/// (untouched), and always while this is off; a packet to the node without a frontend
/// is the node's stack's business.
///
/// Cheapest test first: most packets here are for the node itself (VXLAN, the node's
/// own connections), and only those within the node port range are looked up.
#[inline(always)]
pub fn from_wire(ctx: &TcContext, pkt: &Packet) -> Result<Option<Outcome>, Drop> {
    let Some(np) = nodeport_settings() else { return Ok(None) };
    if !may_be_wire_frontend(pkt, &np) {
        return Ok(None);
    }
    translate(ctx, pkt, &config(), Some(&np))
}

/// Whether a packet from the wire may be for a NodePort or external frontend: one to
/// the node's own address only within the node port range.
#[inline(always)]
pub fn may_be_wire_frontend(pkt: &Packet, np: &NodePort) -> bool {
    let dport = u16::from_be(pkt.dport);
    pkt.daddr != np.node_addr || (np.port_first..=np.port_last).contains(&dport)
}

/// Translation toward a frontend: the flow's conntrack entry if it has one (an
/// established flow needs nothing else), else the frontend's backends (a new flow).
/// `None` if the packet's destination is no frontend.
#[inline(always)]
fn translate(ctx: &TcContext, pkt: &Packet, cfg: &Config, np: Option<&NodePort>) -> Result<Option<Outcome>, Drop> {
    // SAFETY: a plain helper call without arguments; the coarse clock costs a fraction
    // of bpf_ktime_get_ns and its few milliseconds are plenty for timeouts.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(target) = established(pkt, now, cfg) {
        return dnat(ctx, pkt, &target).map(Some);
    }
    match frontend_of(pkt) {
        Some((frontend, svc)) => new_flow(ctx, pkt, &frontend, &svc, now, cfg, np).map(Some),
        None => Ok(None),
    }
}

/// Where a flow's packets go: the backend, and the source address they are given (0 for
/// "the client's own") with the source port (the client's own unless it had to change).
#[derive(Clone, Copy)]
pub struct Target {
    pub addr: u32,
    pub port: u16,
    pub source: u32,
    pub source_port: u16,
    /// For direct server return, the frontend the tunnel header names to the backend's
    /// node; `None` otherwise.
    pub dsr: Option<DsrFrontend>,
}

/// The target of this packet's flow if it is established (an established flow stays on
/// its backend; see `Ct4Entry` for why UDP re-checks it), its entry refreshed.
#[inline(always)]
pub fn established(pkt: &Packet, now: u64, cfg: &Config) -> Option<Target> {
    let entry_ptr = conntrack::lookup_forward(pkt, now, cfg)?;
    // SAFETY: pointer from a successful map lookup, used before returning.
    let entry = unsafe { &mut *entry_ptr };
    // SAFETY: copied out at once. The id must still name the same backend: an id
    // freed and given to another backend must not carry the flow to it.
    let same_backend = unsafe { BACKENDS_V1.get(entry.backend_id) }
        .is_some_and(|b| b.addr == entry.backend_addr && b.port == entry.backend_port);
    if pkt.proto == PROTO_UDP && !same_backend {
        return None;
    }
    conntrack::touch(entry, pkt, now);
    let source_port = if entry.snat_port != 0 { entry.snat_port } else { pkt.sport };
    Some(Target {
        addr: entry.backend_addr,
        port: entry.backend_port,
        source: flow_source(entry, cfg),
        source_port,
        dsr: dsr_frontend(pkt, entry.flags),
    })
}

/// The frontend this packet is addressed to, with its slot 0.
#[inline(always)]
pub fn frontend_of(pkt: &Packet) -> Option<(Service4Key, Service4Value)> {
    let frontend = Service4Key::new(pkt.daddr, pkt.dport, pkt.proto, 0);
    // SAFETY: the value is copied out at once; user space replaces slot 0 with one map
    // update, never in place.
    let svc = unsafe { SERVICES_V1.get(&frontend) }.copied()?;
    Some((frontend, svc))
}

/// The source address a flow's packets are given, 0 for "the client's own".
#[inline(always)]
fn flow_source(entry: &Ct4Entry, cfg: &Config) -> u32 {
    if entry.flags & (CT_FLAG_SNAT | CT_FLAG_HAIRPIN) == 0 {
        0
    } else if entry.snat_addr != 0 {
        entry.snat_addr
    } else {
        // A hairpin entry written before `snat_addr` existed.
        cfg.hairpin_addr
    }
}

/// Whether `addr` is in the Service CIDR (`false` when none is configured).
#[inline(always)]
pub fn is_service_addr(addr: u32) -> bool {
    let cfg = config();
    cfg.service_mask != 0 && addr & cfg.service_mask == cfg.service_net
}

/// Reverse NAT if `pkt` is a backend's reply of a Service flow: the client only ever
/// sees the Service address (or the node port it connected to). Says where the reply
/// goes now; `None` for any other packet (left untouched).
#[inline(always)]
pub fn reverse(ctx: &TcContext, pkt: &Packet) -> Result<Option<Reply>, Drop> {
    let Some(entry) = CT4_V2.get_ptr_mut(conntrack::reply_key(pkt)) else {
        return Ok(None);
    };
    // SAFETY: pointer from a successful lookup, copied at once.
    let entry = unsafe { *entry };
    if pkt.proto == PROTO_TCP && pkt.tcp_flags & TCP_SYN != 0 && !service_flow_open(pkt, &entry) {
        // A SYN-ACK on the tuple of a Service flow that has ended: a new connection
        // straight to the backend from the port the client used for the Service
        // before (the kernel may reuse it: to the kernel the old flow went elsewhere).
        // Its packets are not the old flow's; its reply entry goes, so that none of
        // them is taken for the old flow's.
        let _ = CT4_V2.remove(&conntrack::reply_key(pkt));
        count(stat::CT_SUPERSEDED);
        return Ok(None);
    }
    let source = rev_nat(ctx, pkt, &entry)?;
    Ok(Some(Reply { client: entry.client_addr, nodeport: entry.flags & CT_FLAG_NODEPORT != 0, source }))
}

/// Whether the Service flow whose reply entry is `entry` is live and not closing: its
/// forward entry is there, not past its timeout, and has seen no FIN or RST.
#[inline(always)]
fn service_flow_open(reply: &Packet, entry: &Ct4Entry) -> bool {
    let Some(vip) = frontend_of_entry(entry) else { return false };
    let Some(forward) = CT4_V2.get_ptr(&forward_key_of(entry, reply.proto, client_port(entry, reply.dport), &vip))
    else {
        return false;
    };
    // SAFETY: pointer from a successful lookup, copied at once.
    let forward = unsafe { *forward };
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let cfg = config();
    forward.flags & CT_FLAG_CLOSING == 0
        && now.saturating_sub(forward.last_seen_ns) <= conntrack::timeout(forward.flags, reply.proto, &cfg)
}

/// The frontend a flow's replies must come from: its Service's reverse-NAT entry, or for
/// a direct-server-return flow of another node's node port, that node's address and
/// port. `None` if the Service is gone.
#[inline(always)]
fn frontend_of_entry(entry: &Ct4Entry) -> Option<RevNat4> {
    if entry.flags & CT_FLAG_REMOTE_FRONTEND != 0 {
        return Some(RevNat4 { addr: entry.snat_addr, port: entry.snat_port, _pad: 0 });
    }
    // SAFETY: copied out at once.
    unsafe { REV_NAT_V1.get(entry.rev_nat_index) }.copied()
}

/// The forward conntrack key of the Service flow whose reply entry is `entry`: the
/// client's tuple toward the frontend. `client_port` as [`client_port`] gives it.
#[inline(always)]
fn forward_key_of(entry: &Ct4Entry, proto: u8, client_port: u16, frontend: &RevNat4) -> Ct4Key {
    Ct4Key {
        saddr: entry.client_addr,
        daddr: frontend.addr,
        sport: client_port,
        dport: frontend.port,
        proto,
        dir: CT_DIR_FORWARD,
        _pad: [0; 2],
    }
}

/// The first packet of a flow toward a Service frontend; `np` for a node port's.
#[inline(always)]
fn new_flow(
    ctx: &TcContext,
    pkt: &Packet,
    frontend: &Service4Key,
    svc: &Service4Value,
    now: u64,
    cfg: &Config,
    np: Option<&NodePort>,
) -> Result<Outcome, Drop> {
    if svc.count == 0 {
        count(stat::NO_BACKEND);
        return reject::reject(ctx, pkt).map(Outcome::Done);
    }
    let flow = choose(pkt, frontend, svc, now, cfg, np)?;
    let target = record(pkt, &flow, now)?;
    dnat(ctx, pkt, &target)
}

/// A new flow's backend, decided but not yet recorded.
#[derive(Clone, Copy)]
pub struct NewFlow {
    pub target: Target,
    backend_id: u32,
    rev_nat_index: u32,
    flags: u16,
}

/// Decides a new flow's backend and source (`svc.count` > 0): hairpin flows get the
/// hairpin address, node-port flows toward another node's backend `np.snat_addr`.
/// Writes nothing but session affinity.
#[inline(always)]
pub fn choose(
    pkt: &Packet,
    frontend: &Service4Key,
    svc: &Service4Value,
    now: u64,
    cfg: &Config,
    np: Option<&NodePort>,
) -> Result<NewFlow, Drop> {
    let (backend_id, backend) = select_backend(pkt, frontend, svc, now)?;
    let (mut flags, source) = if backend.addr == pkt.saddr {
        (CT_FLAG_HAIRPIN | CT_FLAG_SNAT, cfg.hairpin_addr)
    } else {
        match np {
            // SAFETY: only tests for the key's presence.
            Some(np) if unsafe { ENDPOINTS_V1.get(backend.addr) }.is_none() => {
                if direct_server_return(svc, backend.addr) { (CT_FLAG_DSR, 0) } else { (CT_FLAG_SNAT, np.snat_addr) }
            }
            _ => (0, 0),
        }
    };
    if np.is_some() {
        flags |= CT_FLAG_NODEPORT;
    }
    Ok(NewFlow {
        target: Target {
            addr: backend.addr,
            port: backend.port,
            source,
            source_port: pkt.sport,
            dsr: dsr_frontend(pkt, flags),
        },
        backend_id,
        rev_nat_index: svc.rev_nat_index,
        flags,
    })
}

/// Whether a flow from the wire to `backend`, a pod of another node, goes by direct
/// server return: its frontend asks for it (user space sets the flag on node ports and
/// external addresses only), and the backend lies in a node's podCIDR, where the
/// tunnel reaches it.
#[inline(always)]
fn direct_server_return(svc: &Service4Value, backend: u32) -> bool {
    svc.flags & SERVICE_FLAG_DSR != 0 && NODES_V1.get(Key::new(32, backend)).is_some()
}

/// The frontend a packet of a flow with `flags` was sent to, for the tunnel header, if
/// the flow goes by direct server return: the packet's destination before translation.
#[inline(always)]
fn dsr_frontend(pkt: &Packet, flags: u16) -> Option<DsrFrontend> {
    (flags & CT_FLAG_DSR != 0).then_some(DsrFrontend { addr: pkt.daddr, port: pkt.dport })
}

/// Source ports tried for a translated source before giving up: the client's own, then
/// this many more from the flow's hash.
const SNAT_PORT_TRIES: u32 = 8;
const SNAT_PORT_FIRST: u32 = 1024;
const SNAT_PORT_SPAN: u32 = 64512;

/// Records a new flow in conntrack, both directions, and says where its packets go.
/// A flow whose source is translated keeps the client's port unless another client's
/// flow holds it toward the same backend from the same source address (their replies
/// would be one flow): then another port, from the flow's hash.
#[inline(always)]
pub fn record(pkt: &Packet, flow: &NewFlow, now: u64) -> Result<Target, Drop> {
    let Target { addr, port, source, .. } = flow.target;
    let reply_to = if source != 0 { source } else { pkt.saddr };
    let reply_key = |dport| Ct4Key {
        saddr: addr,
        daddr: reply_to,
        sport: port,
        dport,
        proto: pkt.proto,
        dir: skiff_ebpf_common::CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let mut source_port = pkt.sport;
    if source != 0 {
        let hash = flow_hash(pkt);
        let mut free = false;
        for i in 0..=SNAT_PORT_TRIES {
            if i > 0 {
                source_port = ((SNAT_PORT_FIRST + hash.wrapping_add(i * 7919) % SNAT_PORT_SPAN) as u16).to_be();
            }
            // SAFETY: copied out at once.
            match unsafe { CT4_V2.get(&reply_key(source_port)) } {
                None => free = true,
                Some(e) => free = e.client_addr == pkt.saddr && e.client_port == pkt.sport,
            }
            if free {
                break;
            }
        }
        if !free {
            return Err(Drop::SNAT_NO_PORT);
        }
    }
    let fwd_entry = Ct4Entry {
        last_seen_ns: now,
        backend_id: flow.backend_id,
        backend_addr: addr,
        rev_nat_index: flow.rev_nat_index,
        backend_port: port,
        flags: flow.flags,
        client_addr: pkt.saddr,
        snat_addr: source,
        client_port: pkt.sport,
        snat_port: source_port,
        _pad: 0,
    };
    let fwd = conntrack::forward_key(pkt);
    conntrack::create(&fwd, &fwd_entry, &reply_key(source_port), &fwd_entry).map_err(|_| Drop::CT_INSERT)?;
    count(stat::CT_NEW);
    Ok(Target { source_port, ..flow.target })
}

/// Picks the backend of a new flow: the client's affine backend if the Service has
/// ClientIP affinity and it is still usable, else the slot the flow's hash names in a
/// Maglev table, else a random slot.
#[inline(always)]
fn select_backend(
    pkt: &Packet,
    frontend: &Service4Key,
    svc: &Service4Value,
    now: u64,
) -> Result<(u32, Backend4), Drop> {
    let affinity = svc.flags & SERVICE_FLAG_AFFINITY != 0;
    let akey = Affinity4Key { client_addr: pkt.saddr, rev_nat_index: svc.rev_nat_index };
    if affinity {
        // SAFETY: copied out at once.
        if let Some(prev) = unsafe { AFFINITY_V1.get(&akey) }.copied() {
            let fresh = now.saturating_sub(prev.last_used_ns) <= svc.affinity_timeout_s as u64 * 1_000_000_000;
            if fresh {
                // SAFETY: copied out at once.
                if let Some(backend) = unsafe { BACKENDS_V1.get(prev.backend_id) }.copied() {
                    if backend.flags & BACKEND_FLAG_TERMINATING == 0 {
                        let value = Affinity4Value { last_used_ns: now, backend_id: prev.backend_id, _pad: 0 };
                        let _ = AFFINITY_V1.insert(&akey, &value, 0);
                        return Ok((prev.backend_id, backend));
                    }
                }
            }
        }
    }
    let (backend_id, backend) = if svc.flags & SERVICE_FLAG_MAGLEV != 0 {
        slot_backend(frontend, flow_hash(pkt) % svc.count as u32 + 1)?
    } else {
        random_backend(frontend, svc)?
    };
    if affinity {
        let value = Affinity4Value { last_used_ns: now, backend_id, _pad: 0 };
        let _ = AFFINITY_V1.insert(&akey, &value, 0);
    }
    Ok((backend_id, backend))
}

/// A backend of the frontend taking new flows, chosen at random (`svc.count` > 0).
#[inline(always)]
pub fn random_backend(frontend: &Service4Key, svc: &Service4Value) -> Result<(u32, Backend4), Drop> {
    // SAFETY: a plain helper call without arguments.
    slot_backend(frontend, unsafe { bpf_get_prandom_u32() } % svc.count as u32 + 1)
}

/// A flow's hash for Maglev: of the client's address and port and the frontend's port
/// and protocol, not of the address it reached, so that the flow hashes alike on every
/// node (a node port's address differs from node to node). murmur3's finaliser mixes.
#[inline(always)]
pub fn flow_hash(pkt: &Packet) -> u32 {
    let mut h = pkt.saddr ^ ((pkt.sport as u32) << 16 | pkt.dport as u32).rotate_left(5) ^ pkt.proto as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The backend in slot `slot` (1-based) of the frontend.
#[inline(always)]
fn slot_backend(frontend: &Service4Key, slot: u32) -> Result<(u32, Backend4), Drop> {
    let slot_key = Service4Key { backend_slot: slot as u16, ..*frontend };
    // SAFETY: copied out at once.
    let backend_id = unsafe { SERVICES_V1.get(&slot_key) }.map(|s| s.backend_id).ok_or(Drop::STALE_SERVICE)?;
    // SAFETY: copied out at once.
    let backend = unsafe { BACKENDS_V1.get(backend_id) }.copied().ok_or(Drop::STALE_SERVICE)?;
    Ok((backend_id, backend))
}

/// Destination NAT to the backend, and source NAT to `target.source` unless it is 0:
/// hairpin flows get the hairpin address (or the pod would drop a packet that comes
/// from its own address), NodePort flows to another node's backend this node's podCIDR
/// address, with the source port the flow's entry chose.
#[inline(always)]
fn dnat(ctx: &TcContext, pkt: &Packet, target: &Target) -> Result<Outcome, Drop> {
    rewrite(ctx, pkt, IP_DADDR_OFF, (pkt.daddr, target.addr), L4_DPORT_OFF, (pkt.dport, target.port))?;
    if target.source != 0 {
        if target.source_port == pkt.sport {
            rewrite_addr(ctx, pkt, IP_SADDR_OFF, pkt.saddr, target.source)?;
        } else {
            let ports = (pkt.sport, target.source_port);
            rewrite(ctx, pkt, IP_SADDR_OFF, (pkt.saddr, target.source), L4_SPORT_OFF, ports)?;
        }
    }
    count(stat::TRANSLATED);
    if let Some(frontend) = target.dsr {
        return Ok(Outcome::Dsr { backend: target.addr, frontend });
    }
    Ok(Outcome::Forward(target.addr))
}

/// Reverse NAT of a backend's reply to the Service address of its flow; that address
/// (0 if the Service is gone and nothing was translated).
#[inline(always)]
fn rev_nat(ctx: &TcContext, pkt: &Packet, entry: &Ct4Entry) -> Result<u32, Drop> {
    let Some(vip) = frontend_of_entry(entry) else {
        // The Service is gone: nothing to translate back to.
        return Ok(0);
    };
    if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        // SAFETY: a plain helper call without arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        conntrack::mark_closing(&forward_key_of(entry, pkt.proto, client_port(entry, pkt.dport), &vip), now);
    }
    rewrite(ctx, pkt, IP_SADDR_OFF, (pkt.saddr, vip.addr), L4_SPORT_OFF, (pkt.sport, vip.port))?;
    if entry.flags & (CT_FLAG_HAIRPIN | CT_FLAG_SNAT) != 0 {
        let port = client_port(entry, pkt.dport);
        if port == pkt.dport {
            rewrite_addr(ctx, pkt, IP_DADDR_OFF, pkt.daddr, entry.client_addr)?;
        } else {
            rewrite(ctx, pkt, IP_DADDR_OFF, (pkt.daddr, entry.client_addr), L4_DPORT_OFF, (pkt.dport, port))?;
        }
    }
    count(stat::REV_TRANSLATED);
    if entry.flags & CT_FLAG_REMOTE_FRONTEND != 0 {
        count(stat::DSR_REPLIED);
    }
    Ok(vip.addr)
}

/// The client's own port of the flow whose reply entry is `entry`. Entries of an older
/// layout, which never translated ports, say 0: then it is `untranslated`, the port the
/// packet at hand has on the client's side (a reply's destination port).
#[inline(always)]
fn client_port(entry: &Ct4Entry, untranslated: u16) -> u16 {
    if entry.client_port != 0 { entry.client_port } else { untranslated }
}
