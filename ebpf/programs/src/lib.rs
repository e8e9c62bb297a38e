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
//! - [`stack`]: helper arguments built on the stack without `memset`;
//! - [`conntrack`]: flow entries that keep a connection on its backend;
//! - [`lb`]: Service lookup, backend selection, DNAT and reverse NAT;
//! - [`dsr`]: direct server return on the backend's node: the frontend a tunnelled
//!   node-port packet carries, read and cleared, and its flow's conntrack entries;
//! - [`masq`]: source NAT of pod traffic that leaves the cluster network, and its
//!   reverse;
//! - [`nat`]: address and port rewriting with checksums, for `lb` and `masq`;
//! - [`hop`]: the TTL a node's forwarding lowers, for `overlay`, `wire` and the XDP
//!   pipeline, which forward past the kernel's routing;
//! - [`reject`]: TCP RST and ICMP port-unreachable answers for Services without backends;
//! - [`overlay`]: the VXLAN overlay: encapsulation toward peers (or tunnel keys for the
//!   VXLAN device), delivery from the tunnel.
//! - [`vxlan`]: VXLAN's outer headers, for `overlay` and `xdp`;
//! - [`wire`]: delivery out of the underlay interface (VXLAN-wrapped packets of
//!   `overlay`, replies of NodePort flows) to the FIB's next hop;
//! - [`fib`]: the next hop out of the underlay interface from the kernel's FIB and
//!   neighbour table, for `wire` and `xdp`;
//! - [`xdp`]: parsing, rewriting, next hops and VXLAN encapsulation at XDP, for the
//!   NodePort fast path;
//! - [`arp`]: ARP answers for the LoadBalancer addresses this node announces, at XDP
//!   and at tc;
//! - [`sock`]: the socket-level load balancer (cgroup hooks of `connect()`,
//!   `sendmsg()`, `recvmsg()`, `getpeername()`), the `sock` binary's only module.
//!
//! Imports run one way: `pipeline` → `lb`, `masq`, `overlay`, `wire`, `arp`, `xdp`, `dsr` →
//! `conntrack`, `reject`, `nat`, `hop`, `vxlan`, `fib`, `csum`, `packet`, `maps`, `stack`
//! (`overlay` also → `wire`, its way out; `arp` → `xdp`, whose `back_out` sends its
//! answer at XDP; `fib` → `stack`); `sock` → `lb`, `maps`.
//!
//! Nothing here logs on the per-packet path; counters in `LB_STATS_V2` say what happened.
#![no_std]
#![expect(unsafe_code, reason = "BPF programs read packets and maps through raw pointers and helpers")]

pub mod arp;
pub mod conntrack;
pub mod csum;
pub mod dsr;
pub mod fib;
pub mod hop;
pub mod lb;
pub mod maps;
pub mod masq;
pub mod nat;
pub mod overlay;
pub mod packet;
pub mod pipeline;
pub mod reject;
pub mod sock;
pub mod stack;
pub mod vxlan;
pub mod wire;
pub mod xdp;

use skiff_ebpf_common::stat;

/// The error of a `try_*` function: the packet cannot be handled and is dropped,
/// counted in `stat::ERRORS` and in its reason's counter (the index it holds).
#[derive(Clone, Copy, Debug)]
pub struct Drop(pub u32);

impl Drop {
    /// A conntrack or masquerade entry could not be written.
    pub const CT_INSERT: Drop = Drop(stat::DROP_CT_INSERT);
    /// A frontend's slot or a backend was missing: a Service changed under the packet.
    pub const STALE_SERVICE: Drop = Drop(stat::DROP_STALE_SERVICE);
    /// A helper that rewrites or delivers the packet failed.
    pub const REWRITE: Drop = Drop(stat::DROP_REWRITE);
    /// A reject (TCP RST, ICMP unreachable) could not be built.
    pub const REJECT: Drop = Drop(stat::DROP_REJECT);
    /// The tunnel key could not be set.
    pub const TUNNEL_KEY: Drop = Drop(stat::DROP_TUNNEL_KEY);
    /// No masquerade port was free (counted as `snat_no_port`).
    pub const SNAT_NO_PORT: Drop = Drop(stat::SNAT_NO_PORT);
    /// At XDP, after the headers were rewritten.
    pub const XDP: Drop = Drop(stat::DROP_XDP);

    /// Counts the drop: `errors` and its reason.
    #[inline(always)]
    pub fn count(self) {
        maps::count(stat::ERRORS);
        maps::count(self.0);
    }
}

/// The return value of an entry point: the action, or a drop counted with its reason.
#[inline(always)]
pub fn verdict(result: Result<i32, Drop>) -> i32 {
    match result {
        Ok(action) => action,
        Err(drop) => {
            drop.count();
            aya_ebpf::bindings::TC_ACT_SHOT as i32
        }
    }
}

/// The license section the kernel reads; GPL-compatible so that every helper is allowed.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
