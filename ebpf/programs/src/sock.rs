//! Socket-level load balancing: a connection to a Service is sent to a backend when the
//! application calls `connect()` (and an unconnected UDP datagram when it calls
//! `sendmsg()`), so none of its packets needs NAT or conntrack; `getpeername()` and
//! `recvmsg()` give the application back the Service address it asked for. Programs of
//! this module attach to a cgroup (the node's) and so act for its processes only: the
//! node's host namespace, hostNetwork pods, and pods whose cgroups live below it.
//!
//! What it leaves to the tc path (`lb`, for pods): Services without ready backends
//! (which the tc path refuses with a TCP RST or ICMP) and Services with session
//! affinity (which is kept per client address, not known at `connect()` time).
//!
//! This module must not touch packets: it only rewrites the addresses of socket calls.

use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use skiff_ebpf_common::{PROTO_TCP, PROTO_UDP, RevNat4, SERVICE_FLAG_AFFINITY, Service4Key, SockRev4Key, stat};

use crate::{
    lb,
    maps::{SERVICES_V1, SOCK_REV4_V1, count},
};

/// The verdict that lets the socket call go on (0 would fail it with EPERM).
const PROCEED: i32 = 1;

/// `connect()`: TCP connections and connected UDP sockets.
#[inline(always)]
pub fn connect4(ctx: &SockAddrContext) -> i32 {
    translate(ctx);
    PROCEED
}

/// `sendmsg()` on an unconnected UDP socket: each datagram with a Service destination.
#[inline(always)]
pub fn sendmsg4(ctx: &SockAddrContext) -> i32 {
    translate(ctx);
    PROCEED
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

/// Rewrites a Service destination to a backend and remembers the way back. Anything
/// else (and any failure) leaves the call as the application made it.
#[inline(always)]
fn translate(ctx: &SockAddrContext) -> Option<()> {
    // SAFETY: the kernel passes a valid context for the program's whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let addr = sa.user_ip4;
    if !lb::is_service_addr(addr) {
        return None;
    }
    // The port is stored in network byte order in the low 16 bits.
    let port = sa.user_port as u16;
    let frontend = Service4Key::new(addr, port, proto, 0);
    // SAFETY: copied out at once; user space replaces slot 0 with one map update.
    let svc = unsafe { SERVICES_V1.get(&frontend) }.copied()?;
    if svc.count == 0 || svc.flags & SERVICE_FLAG_AFFINITY != 0 {
        return None;
    }
    let (_, backend) = lb::random_backend(&frontend, &svc).ok()?;
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
