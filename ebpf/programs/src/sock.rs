//! Socket-level load balancing: a connection to a Service (its ClusterIP, or a node port
//! or external address of this node) is sent to a backend when the application calls
//! `connect()` (and an unconnected UDP datagram when it calls
//! `sendmsg()`), so none of its packets needs NAT or conntrack; `getpeername()` and
//! `recvmsg()` give the application back the Service address it asked for. Programs of
//! this module attach to a cgroup (the node's) and so act for its processes only: the
//! node's host namespace, hostNetwork pods, and pods whose cgroups live below it.
//!
//! A Service without ready backends fails the call at once with ECONNREFUSED, as the tc
//! path's TCP RST or ICMP port unreachable would. Session affinity is kept per network
//! namespace (its cookie), since a socket has no source address yet at `connect()`: every
//! connection from one namespace to the Service goes to one backend while the affinity
//! lasts.
//!
//! This module must not touch packets: it only rewrites the addresses of socket calls.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_coarse_ns, bpf_set_retval},
    programs::SockAddrContext,
};
use skiff_ebpf_common::{
    Affinity4Value, BACKEND_FLAG_TERMINATING, PROTO_TCP, PROTO_UDP, RevNat4, SERVICE_FLAG_AFFINITY, Service4Key,
    SockAffinity4Key, SockRev4Key, stat,
};

use crate::{
    lb,
    maps::{BACKENDS_V1, SERVICES_V1, SOCK_AFFINITY4_V1, SOCK_REV4_V1, count},
};

/// The verdict that lets the socket call go on.
const PROCEED: i32 = 1;
/// The verdict that fails it, with the error set by `bpf_set_retval` (EPERM without).
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// What [`translate`] found.
enum Translation {
    /// Sent to a backend, or not a Service address: the call goes on.
    Proceed,
    /// A Service without ready backends: the call fails with ECONNREFUSED.
    Refused,
}

/// `connect()`: TCP connections and connected UDP sockets.
#[inline(always)]
pub fn connect4(ctx: &SockAddrContext) -> i32 {
    verdict(translate(ctx))
}

/// `sendmsg()` on an unconnected UDP socket: each datagram with a Service destination.
#[inline(always)]
pub fn sendmsg4(ctx: &SockAddrContext) -> i32 {
    verdict(translate(ctx))
}

#[inline(always)]
fn verdict(translation: Translation) -> i32 {
    match translation {
        Translation::Proceed => PROCEED,
        Translation::Refused => {
            // SAFETY: a plain helper call; cgroup socket hooks may set the call's error.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            REFUSE
        }
    }
}

/// `recvmsg()` on a UDP socket: a datagram from a backend appears to come from the
/// Service the application sent to.
#[inline(always)]
pub fn recvmsg4(ctx: &SockAddrContext) -> i32 {
    reverse(ctx);
    PROCEED
}

/// `getpeername()`: a translated socket's peer is the Service it connected to.
#[inline(always)]
pub fn getpeername4(ctx: &SockAddrContext) -> i32 {
    reverse(ctx);
    PROCEED
}

/// Rewrites a Service destination to a backend and remembers the way back; a Service
/// without ready backends is refused. Anything else (and any failure) leaves the call
/// as the application made it.
#[inline(always)]
fn translate(ctx: &SockAddrContext) -> Translation {
    // SAFETY: the kernel passes a valid context for the program's whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Translation::Proceed;
    }
    // Any destination with a frontend: ClusterIPs, and this node's node ports and
    // external addresses, which the node's own traffic cannot reach through the wire
    // (kube-proxy short-circuits them for it too). One hash lookup per `connect()`.
    let addr = sa.user_ip4;
    // The port is stored in network byte order in the low 16 bits.
    let port = sa.user_port as u16;
    let frontend = Service4Key::new(addr, port, proto, 0);
    // SAFETY: copied out at once; user space replaces slot 0 with one map update.
    let Some(svc) = (unsafe { SERVICES_V1.get(&frontend) }).copied() else { return Translation::Proceed };
    if svc.count == 0 {
        count(stat::NO_BACKEND);
        return Translation::Refused;
    }
    to_backend(ctx, sa, &frontend, &svc);
    Translation::Proceed
}

/// Sends the call to a random backend of the frontend and remembers the way back;
/// `None` (the call left as it was) if that cannot be done.
#[inline(always)]
fn to_backend(
    ctx: &SockAddrContext,
    sa: &mut aya_ebpf::bindings::bpf_sock_addr,
    frontend: &Service4Key,
    svc: &skiff_ebpf_common::Service4Value,
) -> Option<()> {
    let (addr, port) = (frontend.addr, frontend.dport);
    let backend = if svc.flags & SERVICE_FLAG_AFFINITY != 0 {
        affine_backend(ctx, frontend, svc)?
    } else {
        lb::random_backend(frontend, svc).ok()?.1
    };
    // SAFETY: a helper call on the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRev4Key { cookie, addr: backend.addr, port: backend.port, _pad: 0 };
    // Without its way back the application would see the backend: then do nothing.
    SOCK_REV4_V1.insert(&key, &RevNat4 { addr, port, _pad: 0 }, 0).ok()?;
    sa.user_ip4 = backend.addr;
    sa.user_port = backend.port as u32;
    count(stat::SOCK_TRANSLATED);
    Some(())
}

/// The backend of this network namespace's affinity to the Service if it is fresh and
/// still takes new flows, else a random one, which becomes the affinity.
#[inline(always)]
fn affine_backend(
    ctx: &SockAddrContext,
    frontend: &Service4Key,
    svc: &skiff_ebpf_common::Service4Value,
) -> Option<skiff_ebpf_common::Backend4> {
    // SAFETY: helper calls on the context the kernel passed, and without arguments.
    let (netns_cookie, now) = unsafe { (bpf_get_netns_cookie(ctx.as_ptr()), bpf_ktime_get_coarse_ns()) };
    let key = SockAffinity4Key { netns_cookie, rev_nat_index: svc.rev_nat_index, _pad: 0 };
    // SAFETY: copied out at once.
    if let Some(prev) = unsafe { SOCK_AFFINITY4_V1.get(&key) }.copied() {
        let fresh = now.saturating_sub(prev.last_used_ns) <= svc.affinity_timeout_s as u64 * 1_000_000_000;
        // SAFETY: copied out at once.
        let backend = unsafe { BACKENDS_V1.get(prev.backend_id) }.copied();
        if let Some(backend) = backend.filter(|b| fresh && b.flags & BACKEND_FLAG_TERMINATING == 0) {
            let _ = SOCK_AFFINITY4_V1.insert(&key, &Affinity4Value { last_used_ns: now, ..prev }, 0);
            return Some(backend);
        }
    }
    let (backend_id, backend) = lb::random_backend(frontend, svc).ok()?;
    let _ = SOCK_AFFINITY4_V1.insert(&key, &Affinity4Value { last_used_ns: now, backend_id, _pad: 0 }, 0);
    Some(backend)
}

/// Gives a translated socket's backend address back as the Service's.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    // SAFETY: the kernel passes a valid context for the program's whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: a helper call on the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRev4Key { cookie, addr: sa.user_ip4, port: sa.user_port as u16, _pad: 0 };
    // SAFETY: copied out at once.
    if let Some(service) = unsafe { SOCK_REV4_V1.get(&key) }.copied() {
        sa.user_ip4 = service.addr;
        sa.user_port = service.port as u32;
    }
}
