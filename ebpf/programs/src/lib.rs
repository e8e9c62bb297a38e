//! Skiff's BPF programs: the shared logic behind each attach point.
//!
//! Each binary under `src/bin/` is one attach point and only a thin entry point into
//! its [`pipeline`], which composes the modules below in that attach point's order.
//! `lb` and `overlay` never call each other, so an attach point (XDP NodePort) is a new
//! pipeline over the same parts:
//! - [`pipeline`]: `from_pod`, `to_pod`, `from_overlay`, `to_overlay`, `to_underlay`,
//!   `from_underlay`, `xdp_underlay`;
//! - [`maps`]: every map, with pinned names from `skiff_ebpf_common::pin`;
//! - [`packet`]: header layouts and parsing of IPv4 TCP/UDP;
//! - [`csum`]: checksum arithmetic for headers built from scratch;
//! - [`conntrack`]: flow entries that keep a connection on its backend;
//! - [`lb`]: Service lookup, backend selection, DNAT and reverse NAT;
//! - [`masq`]: source NAT of pod traffic that leaves the cluster network, and its
//!   reverse;
//! - [`nat`]: address and port rewriting with checksums, for `lb` and `masq`;
//! - [`reject`]: TCP RST and ICMP port-unreachable answers for Services without backends;
//! - [`overlay`]: the VXLAN overlay: tunnel keys toward peers, delivery from the tunnel.
//! - [`wire`]: delivery out of the underlay interface (replies of NodePort flows);
//! - [`xdp`]: parsing, rewriting, next hops and VXLAN encapsulation at XDP, for the
//!   NodePort fast path;
//! - [`arp`]: ARP answers for the LoadBalancer addresses this node announces;
//! - [`sock`]: the socket-level load balancer (cgroup hooks of `connect()`,
//!   `sendmsg()`, `recvmsg()`, `getpeername()`), the `sock` binary's only module.
//!
//! Imports run one way: `pipeline` → `lb`, `masq`, `overlay`, `wire`, `arp`, `xdp` → `conntrack`,
//! `reject`, `nat`, `csum`, `packet`, `maps`; `sock` → `lb`, `maps`.
//!
//! Nothing here logs on the per-packet path; counters in `LB_STATS_V2` say what happened.
#![no_std]
#![expect(unsafe_code, reason = "BPF programs read packets and maps through raw pointers and helpers")]

pub mod arp;
pub mod conntrack;
pub mod csum;
pub mod lb;
pub mod maps;
pub mod masq;
pub mod nat;
pub mod overlay;
pub mod packet;
pub mod pipeline;
pub mod reject;
pub mod sock;
pub mod wire;
pub mod xdp;

/// The error of a `try_*` function: the packet cannot be handled and is dropped
/// (counted in `stat::ERRORS`).
#[derive(Clone, Copy, Debug)]
pub struct Drop;

/// The return value of an entry point: the action, or a drop counted as an error.
#[inline(always)]
pub fn verdict(result: Result<i32, Drop>) -> i32 {
    match result {
        Ok(action) => action,
        Err(Drop) => {
            maps::count(skiff_ebpf_common::stat::ERRORS);
            aya_ebpf::bindings::TC_ACT_SHOT as i32
        }
    }
}

/// The license section the kernel reads; GPL-compatible so that every helper is allowed.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
