//! Conntrack for Service flows: a forward entry keyed by the client's tuple toward the
//! VIP, and a reply entry keyed by the backend's tuple back to the client.
//!
//! The forward entry pins a flow to its backend even when the Service's backend set
//! changes; its age decides when a flow counts as new. Reply entries are never expired
//! here: they are rewritten whenever their forward entry is, and the LRU map evicts
//! the rest.

use skiff_ebpf_common::{CT_DIR_FORWARD, CT_DIR_REPLY, CT_FLAG_CLOSING, Ct4Entry, Ct4Key, PROTO_TCP};

use crate::{
    maps::{CT4_V2, Config},
    packet::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Refresh `last_seen_ns` at most this often: a map write per packet would cost more
/// than the second of precision it buys.
const REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn forward_key(pkt: &Packet) -> Ct4Key {
    Ct4Key {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        dir: CT_DIR_FORWARD,
        _pad: [0; 2],
    }
}

#[inline(always)]
pub fn reply_key(pkt: &Packet) -> Ct4Key {
    Ct4Key { dir: CT_DIR_REPLY, ..forward_key(pkt) }
}

/// The reply key a packet would have going the other way: that of a flow whose replies
/// come from this packet's destination to its source.
#[inline(always)]
pub fn reply_key_of_reverse(pkt: &Packet) -> Ct4Key {
    Ct4Key {
        saddr: pkt.daddr,
        daddr: pkt.saddr,
        sport: pkt.dport,
        dport: pkt.sport,
        proto: pkt.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    }
}

/// How long a flow lives after its last refresh, by protocol and flags (also the
/// masquerade's timeouts).
#[inline(always)]
pub fn timeout(flags: u16, proto: u8, cfg: &Config) -> u64 {
    if proto != PROTO_TCP {
        cfg.udp_timeout_ns
    } else if flags & CT_FLAG_CLOSING != 0 {
        cfg.tcp_closing_timeout_ns
    } else {
        cfg.tcp_timeout_ns
    }
}

/// The live forward entry of this packet's flow, or `None` if the packet starts a new
/// flow: no entry, an expired one, or a fresh SYN on a tuple whose connection closed.
#[inline(always)]
pub fn lookup_forward(pkt: &Packet, now: u64, cfg: &Config) -> Option<*mut Ct4Entry> {
    let entry_ptr = CT4_V2.get_ptr_mut(forward_key(pkt))?;
    // SAFETY: the pointer comes from a successful map lookup and is used before the
    // program returns; concurrent updates can only tear `last_seen_ns`/`flags`, which
    // are advisory.
    let entry = unsafe { &mut *entry_ptr };
    if now.saturating_sub(entry.last_seen_ns) > timeout(entry.flags, pkt.proto, cfg) {
        return None;
    }
    let new_syn = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if new_syn && entry.flags & CT_FLAG_CLOSING != 0 {
        return None;
    }
    Some(entry_ptr)
}

/// Notes a packet of a live flow: refreshes the age, and starts the closing timeout
/// at the first FIN or RST.
#[inline(always)]
pub fn touch(entry: &mut Ct4Entry, pkt: &Packet, now: u64) {
    let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    if closing && entry.flags & CT_FLAG_CLOSING == 0 {
        entry.flags |= CT_FLAG_CLOSING;
        entry.last_seen_ns = now;
    } else if now.saturating_sub(entry.last_seen_ns) > REFRESH_NS {
        entry.last_seen_ns = now;
    }
}

/// Marks the forward entry with this key closing (a FIN or RST came from the backend).
#[inline(always)]
pub fn mark_closing(key: &Ct4Key, now: u64) {
    if let Some(entry) = CT4_V2.get_ptr_mut(key) {
        // SAFETY: as in `lookup_forward`.
        let entry = unsafe { &mut *entry };
        if entry.flags & CT_FLAG_CLOSING == 0 {
            entry.flags |= CT_FLAG_CLOSING;
            entry.last_seen_ns = now;
        }
    }
}

/// Records a new flow in both directions. The reply entry goes first so that a reply
/// can never find a forward entry without its reverse.
#[inline(always)]
pub fn create(fwd: &Ct4Key, fwd_entry: &Ct4Entry, reply: &Ct4Key, reply_entry: &Ct4Entry) -> Result<(), ()> {
    CT4_V2.insert(reply, reply_entry, 0).map_err(|_| ())?;
    CT4_V2.insert(fwd, fwd_entry, 0).map_err(|_| ())
}
