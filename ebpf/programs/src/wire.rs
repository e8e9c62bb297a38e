//! Delivery out of the node's underlay interface, for packets the node's stack must not
//! see: replies of NodePort flows, which after reverse NAT come from the node's own
//! address (the stack drops a packet that enters it from a pod or the tunnel with a
//! local source address as a martian).
//!
//! This module must not translate addresses nor look anything up but its settings.

use aya_ebpf::{bindings::TC_ACT_SHOT, helpers::bpf_redirect_neigh, programs::TcContext};

use crate::{Drop, maps};

/// Redirects the packet to the underlay interface's egress; the kernel's FIB and
/// neighbour tables give it its next hop and MAC addresses.
#[inline(always)]
pub fn to_wire(_ctx: &TcContext) -> Result<i32, Drop> {
    let Some(np) = maps::nodeport() else { return Ok(TC_ACT_SHOT as i32) };
    // SAFETY: a plain helper call; no next-hop parameters (a FIB lookup finds it).
    let action = unsafe { bpf_redirect_neigh(np.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
    Ok(action as i32)
}
