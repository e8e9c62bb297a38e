//! Service load balancing: frontend lookup, backend selection (conntrack, session
//! affinity, random), destination NAT toward the backend, and reverse NAT of replies.
//!
//! [`balance`] and [`reverse`] say where a packet goes next ([`Outcome`]); they do not
//! deliver it. Delivery (the overlay, the node's stack) is the pipelines' business
//! (`crate::pipeline`), so this module must not call into `overlay`.
//!
//! Map layout (see `skiff_ebpf_common`): slot 0 of a frontend carries the backend count
//! and flags; slots 1..=count carry backend ids; the backends map gives addresses.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    programs::TcContext,
};
use skiff_ebpf_common::{
    Affinity4Key, Affinity4Value, BACKEND_FLAG_TERMINATING, Backend4, CT_FLAG_HAIRPIN, Ct4Entry, Ct4Key, PROTO_UDP,
    SERVICE_FLAG_AFFINITY, Service4Key, Service4Value, stat,
};

use crate::{
    Drop, conntrack,
    maps::{AFFINITY_V1, BACKENDS_V1, CT4_V1, Config, REV_NAT_V1, SERVICES_V1, config, count},
    nat::{rewrite, rewrite_addr},
    packet::{IP_DADDR_OFF, IP_SADDR_OFF, L4_DPORT_OFF, L4_SPORT_OFF, Packet, TCP_FIN, TCP_RST},
    reject,
};

/// What load balancing decided for a packet.
#[derive(Clone, Copy)]
pub enum Outcome {
    /// Carry on toward this destination (the backend after DNAT, the client after
    /// reverse NAT, or the packet's own destination when no Service is involved).
    Forward(u32),
    /// Answered here (a reject for a Service without backends): return this action.
    Done(i32),
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
        // SAFETY: a plain helper call without arguments; the coarse clock costs a
        // fraction of bpf_ktime_get_ns and its few milliseconds are plenty for timeouts.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        // An established flow stays on its backend (see `Ct4Entry` for why UDP re-checks).
        if let Some(entry_ptr) = conntrack::lookup_forward(pkt, now, &cfg) {
            // SAFETY: pointer from a successful map lookup, used before returning.
            let entry = unsafe { &mut *entry_ptr };
            // SAFETY: copied out at once. The id must still name the same backend: an id
            // freed and given to another backend must not carry the flow to it.
            let same_backend = unsafe { BACKENDS_V1.get(entry.backend_id) }
                .is_some_and(|b| b.addr == entry.backend_addr && b.port == entry.backend_port);
            if pkt.proto != PROTO_UDP || same_backend {
                conntrack::touch(entry, pkt, now);
                let hairpin = entry.flags & CT_FLAG_HAIRPIN != 0;
                return dnat(ctx, pkt, entry.backend_addr, entry.backend_port, hairpin, &cfg);
            }
        }
        let frontend = Service4Key::new(pkt.daddr, pkt.dport, pkt.proto, 0);
        // SAFETY: the value is copied out at once; user space replaces slot 0 with one
        // map update, never in place.
        if let Some(svc) = unsafe { SERVICES_V1.get(&frontend) }.copied() {
            return new_flow(ctx, pkt, &frontend, &svc, now, &cfg);
        }
        if cfg.service_mask != 0 {
            return Ok(Outcome::Forward(pkt.daddr));
        }
    }
    if let Some(client) = reverse(ctx, pkt)? {
        return Ok(Outcome::Forward(client));
    }
    Ok(Outcome::Forward(pkt.daddr))
}

/// Whether `addr` is in the Service CIDR (`false` when none is configured).
#[inline(always)]
pub fn is_service_addr(addr: u32) -> bool {
    let cfg = config();
    cfg.service_mask != 0 && addr & cfg.service_mask == cfg.service_net
}

/// Reverse NAT if `pkt` is a backend's reply of a Service flow: the client only ever
/// sees the Service address. Returns the client's address, where the reply goes now;
/// `None` for any other packet (left untouched).
#[inline(always)]
pub fn reverse(ctx: &TcContext, pkt: &Packet) -> Result<Option<u32>, Drop> {
    let Some(entry) = CT4_V1.get_ptr_mut(conntrack::reply_key(pkt)) else {
        return Ok(None);
    };
    // SAFETY: pointer from a successful lookup, copied at once.
    let entry = unsafe { *entry };
    rev_nat(ctx, pkt, &entry)?;
    Ok(Some(entry.client_addr))
}

/// The first packet of a flow toward a Service frontend.
#[inline(always)]
fn new_flow(
    ctx: &TcContext,
    pkt: &Packet,
    frontend: &Service4Key,
    svc: &Service4Value,
    now: u64,
    cfg: &Config,
) -> Result<Outcome, Drop> {
    if svc.count == 0 {
        count(stat::NO_BACKEND);
        return reject::reject(ctx, pkt).map(Outcome::Done);
    }
    let (backend_id, backend) = select_backend(pkt, frontend, svc, now)?;
    let hairpin = backend.addr == pkt.saddr;
    let flags = if hairpin { CT_FLAG_HAIRPIN } else { 0 };
    let fwd_entry = Ct4Entry {
        last_seen_ns: now,
        backend_id,
        backend_addr: backend.addr,
        rev_nat_index: svc.rev_nat_index,
        backend_port: backend.port,
        flags,
        client_addr: pkt.saddr,
        _pad: 0,
    };
    let reply = Ct4Key {
        saddr: backend.addr,
        daddr: if hairpin { cfg.hairpin_addr } else { pkt.saddr },
        sport: backend.port,
        dport: pkt.sport,
        proto: pkt.proto,
        dir: skiff_ebpf_common::CT_DIR_REPLY,
        _pad: [0; 2],
    };
    conntrack::create(&conntrack::forward_key(pkt), &fwd_entry, &reply, &fwd_entry).map_err(|_| Drop)?;
    count(stat::CT_NEW);
    dnat(ctx, pkt, backend.addr, backend.port, hairpin, cfg)
}

/// Picks the backend of a new flow: the client's affine backend if the Service has
/// ClientIP affinity and it is still usable, else a random slot.
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
    // SAFETY: a plain helper call without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % svc.count as u32 + 1;
    let slot_key = Service4Key { backend_slot: slot as u16, ..*frontend };
    // SAFETY: copied out at once.
    let backend_id = unsafe { SERVICES_V1.get(&slot_key) }.map(|s| s.backend_id).ok_or(Drop)?;
    // SAFETY: copied out at once.
    let backend = unsafe { BACKENDS_V1.get(backend_id) }.copied().ok_or(Drop)?;
    if affinity {
        let value = Affinity4Value { last_used_ns: now, backend_id, _pad: 0 };
        let _ = AFFINITY_V1.insert(&akey, &value, 0);
    }
    Ok((backend_id, backend))
}

/// Destination NAT to the backend; for hairpin flows the source becomes the hairpin
/// address too, or the pod would drop a packet that comes from its own address.
#[inline(always)]
fn dnat(ctx: &TcContext, pkt: &Packet, addr: u32, port: u16, hairpin: bool, cfg: &Config) -> Result<Outcome, Drop> {
    rewrite(ctx, pkt, IP_DADDR_OFF, (pkt.daddr, addr), L4_DPORT_OFF, (pkt.dport, port))?;
    if hairpin {
        rewrite_addr(ctx, pkt, IP_SADDR_OFF, pkt.saddr, cfg.hairpin_addr)?;
    }
    count(stat::TRANSLATED);
    Ok(Outcome::Forward(addr))
}

/// Reverse NAT of a backend's reply to the Service address of its flow.
#[inline(always)]
fn rev_nat(ctx: &TcContext, pkt: &Packet, entry: &Ct4Entry) -> Result<(), Drop> {
    // SAFETY: copied out at once.
    let Some(vip) = (unsafe { REV_NAT_V1.get(entry.rev_nat_index) }).copied() else {
        // The Service is gone: nothing to translate back to.
        return Ok(());
    };
    if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        // SAFETY: a plain helper call without arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let fwd = Ct4Key {
            saddr: entry.client_addr,
            daddr: vip.addr,
            sport: pkt.dport,
            dport: vip.port,
            proto: pkt.proto,
            dir: skiff_ebpf_common::CT_DIR_FORWARD,
            _pad: [0; 2],
        };
        conntrack::mark_closing(&fwd, now);
    }
    rewrite(ctx, pkt, IP_SADDR_OFF, (pkt.saddr, vip.addr), L4_SPORT_OFF, (pkt.sport, vip.port))?;
    if entry.flags & CT_FLAG_HAIRPIN != 0 {
        rewrite_addr(ctx, pkt, IP_DADDR_OFF, pkt.daddr, entry.client_addr)?;
    }
    count(stat::REV_TRANSLATED);
    Ok(())
}
