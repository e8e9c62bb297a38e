//! tc egress on the node's underlay interface: everything the node sends to the wire.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};

use crate::{Drop, masq, packet};

/// Pods' packets toward addresses outside the cluster network leave with the node's
/// address; the rest (the node's own traffic, VXLAN) passes untouched.
#[inline(always)]
pub fn to_underlay(ctx: &TcContext) -> Result<i32, Drop> {
    if let Some(pkt) = packet::parse(ctx) {
        masq::snat(ctx, &pkt)?;
    }
    Ok(TC_ACT_OK as i32)
}
