//! The next hop of a packet the node sends out of its underlay interface, from the
//! kernel's FIB and neighbour table (`bpf_fib_lookup`), for XDP and tc alike.
//!
//! It only looks up; what to do with the answer (write the MACs and redirect, or let
//! the kernel's neighbour output resolve it) is its callers' (`xdp`, `wire`).

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup as FibLookup,
    },
    helpers::bpf_fib_lookup,
};
use skiff_ebpf_common::PROTO_UDP;

use crate::stack;

/// The address family of IPv4 in the helpers' parameters.
pub const AF_INET: u8 = 2;

/// Where a packet toward an address goes next.
#[derive(Clone, Copy)]
pub enum NextHop {
    /// Out of the asked interface, to a neighbour whose MAC the kernel knows: the
    /// frame's source and destination MACs.
    Resolved { smac: [u8; 6], dmac: [u8; 6] },
    /// Out of the asked interface, via `gateway` (the destination itself when it is on
    /// the link), whose MAC the kernel has not resolved yet (network byte order).
    Unresolved { gateway: u32 },
    /// Anything else: no route, a route out of another interface, forwarding off on the
    /// interface, a packet too big for the route (with `tot_len` given).
    Unknown,
}

/// The next hop toward `daddr` from `saddr`, the packet leaving the node itself (an
/// output lookup) through `ifindex`. `tot_len` is the packet's IP length to check
/// against the route's MTU, or 0 to let the helper check the packet itself (tc only:
/// a GSO packet passes as its segments would). `ctx` is the program's context (an
/// `xdp_md` or a `__sk_buff`).
#[inline(always)]
pub fn next_hop(ctx: *mut c_void, ifindex: u32, saddr: u32, daddr: u32, tot_len: u16) -> NextHop {
    let mut slot = MaybeUninit::<FibLookup>::uninit();
    let params = stack::zeroed(&mut slot);
    params.family = AF_INET;
    params.l4_protocol = PROTO_UDP;
    params.ifindex = ifindex;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    // The helper wants forwarding on for the interface even for an output lookup, as a
    // node that routes pods has it.
    // SAFETY: `params` is a stack value of the size passed; `ctx` is the caller's
    // program context.
    let r = unsafe { bpf_fib_lookup(ctx, params, core::mem::size_of::<FibLookup>() as i32, BPF_FIB_LOOKUP_OUTPUT) };
    if params.ifindex != ifindex {
        return NextHop::Unknown;
    }
    match r as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => NextHop::Resolved { smac: params.smac, dmac: params.dmac },
        // SAFETY: on NO_NEIGH the helper has written the next hop's address here.
        BPF_FIB_LKUP_RET_NO_NEIGH => NextHop::Unresolved { gateway: unsafe { params.__bindgen_anon_4.ipv4_dst } },
        _ => NextHop::Unknown,
    }
}
