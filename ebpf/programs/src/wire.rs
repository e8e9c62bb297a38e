//! Delivery out of the node's underlay interface: VXLAN-wrapped packets toward other
//! nodes (`overlay`), and replies of NodePort flows, which after reverse NAT come from
//! the node's own address (the stack drops a packet that enters it from a pod or the
//! tunnel with a local source address as a martian).
//!
//! The next hop comes from the kernel's FIB and neighbour table ([`fib`]): when the
//! neighbour is resolved the frame gets its MACs here and goes straight to the
//! interface; otherwise the kernel's neighbour output resolves it. Either way no route
//! is built for the packet: `bpf_redirect_neigh` without a next hop makes one (a
//! route output lookup, a route entry taken and released) per packet.
//!
//! This module must not translate addresses nor look anything up but its settings and
//! the FIB; of a NodePort reply it rewrites only the TTL (`hop`).

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use skiff_ebpf_common::stat;

use crate::{
    Drop,
    fib::{self, NextHop},
    hop,
    maps::{self, NodePort, count},
    packet::{self, ETH_HLEN, IP_DADDR_OFF},
};

/// Sends a NodePort flow's reply, whose source is already the node's address, out of
/// the underlay interface toward its destination, its TTL lowered as by the node's
/// forwarding ([`hop`]). One whose TTL runs out here is dropped: the node's stack would
/// take it for a martian (its source is the node's own address).
#[inline(always)]
pub fn to_wire(ctx: &TcContext) -> Result<i32, Drop> {
    let Some(np) = maps::nodeport() else { return Ok(TC_ACT_SHOT as i32) };
    if !hop::forward(ctx)? {
        return Ok(TC_ACT_SHOT as i32);
    }
    let daddr: u32 = ctx.load(ETH_HLEN + IP_DADDR_OFF).map_err(|_| Drop::REWRITE)?;
    out_of_underlay(ctx, &np, daddr)
}

/// Redirects the frame (its Ethernet header first, IPv4 from `np.node_addr` to `daddr`
/// after it) to the egress of the underlay interface, with the MACs of its next hop.
#[inline(always)]
pub fn out_of_underlay(ctx: &TcContext, np: &NodePort, daddr: u32) -> Result<i32, Drop> {
    let ifindex = np.underlay_ifindex;
    let action = match fib::next_hop(ctx.skb.skb.cast(), ifindex, np.node_addr, daddr, 0) {
        NextHop::Resolved { smac, dmac } => {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&dmac);
            macs[6..].copy_from_slice(&smac);
            packet::store_at(ctx, 0, &macs)?;
            // SAFETY: a plain helper call; flags 0 = the interface's egress.
            unsafe { bpf_redirect(ifindex, 0) }
        }
        NextHop::Unresolved { gateway } => {
            count(stat::WIRE_NEIGH_OUTPUT);
            let mut nh = bpf_redir_neigh {
                nh_family: u32::from(fib::AF_INET),
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: gateway },
            };
            let size = core::mem::size_of::<bpf_redir_neigh>() as i32;
            // SAFETY: a plain helper call; `nh` is a stack value of the size passed.
            unsafe { bpf_redirect_neigh(ifindex, &mut nh, size, 0) }
        }
        NextHop::Unknown => {
            count(stat::WIRE_NEIGH_OUTPUT);
            // SAFETY: a plain helper call; no next-hop parameters: the kernel routes it.
            unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) }
        }
    };
    Ok(action as i32)
}
