//! `skiff-echo hops`: a UDP traceroute toward a `skiff-echo` server, so that a test (or a
//! person, with `kubectl exec`) sees each router a packet crosses: datagrams with a TTL
//! of 1, 2, ... until the server answers. A router where the TTL runs out answers with
//! ICMP time exceeded, which the kernel queues on the socket's error queue
//! (`IP_RECVERR`) with the router's address.
//!
//! One line per TTL: `hop TTL ADDR time-exceeded`, `hop TTL ADDR unreachable`,
//! `hop TTL * no answer`, or `hop TTL ADDR answer NAME` (the last), then
//! `hops=N` (the TTL the server's answer needed) or an error if none came.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// What came back for one datagram.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// The server's answer (its name).
    Answer(String),
    /// An ICMP error from `router`: time exceeded (type 11) or another kind.
    Icmp {
        router: Ipv4Addr,
        icmp_type: u8,
    },
    Nothing,
}

pub fn hops(target: SocketAddr, max_ttl: u32, timeout: Duration) -> Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("bind")?;
    sock.connect(target).with_context(|| format!("connect {target}"))?;
    sock.set_read_timeout(Some(timeout))?;
    recv_errors(&sock)?;
    for ttl in 1..=max_ttl {
        sock.set_ttl(ttl)?;
        sock.send(b"hops").with_context(|| format!("send with TTL {ttl}"))?;
        match receive(&sock)? {
            Reply::Answer(name) => {
                println!("hop {ttl} {} answer {name}", target.ip());
                println!("hops={ttl}");
                return Ok(());
            }
            Reply::Icmp { router, icmp_type } => {
                let kind = if icmp_type == ICMP_TIME_EXCEEDED { "time-exceeded" } else { "unreachable" };
                println!("hop {ttl} {router} {kind}");
            }
            Reply::Nothing => println!("hop {ttl} * no answer"),
        }
    }
    bail!("no answer from {target} within {max_ttl} hops")
}

const ICMP_TIME_EXCEEDED: u8 = 11;

/// The server's answer, or the ICMP error the datagram caused, or nothing before the
/// socket's read timeout.
fn receive(sock: &UdpSocket) -> Result<Reply> {
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => Ok(Reply::Answer(String::from_utf8_lossy(&buf[..n]).into_owned())),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            Ok(Reply::Nothing)
        }
        // With IP_RECVERR an ICMP error ends the read with its errno, and waits on the
        // error queue.
        Err(_) => Ok(error_queue(sock)?.unwrap_or(Reply::Nothing)),
    }
}

#[expect(unsafe_code, reason = "setsockopt(IP_RECVERR) has no safe wrapper in std")]
fn recv_errors(sock: &UdpSocket) -> Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option of the size passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVERR,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt IP_RECVERR");
    }
    Ok(())
}

/// The oldest ICMP error on the socket's error queue: its type and the router that sent
/// it (`SO_EE_OFFENDER`). `None` if the queue held no ICMP error.
#[expect(unsafe_code, reason = "recvmsg(MSG_ERRQUEUE) and its control messages have no safe wrapper in std")]
fn error_queue(sock: &UdpSocket) -> Result<Option<Reply>> {
    let mut data = [0u8; 512];
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 64];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // SAFETY: msghdr is plain data; zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every buffer msg points to lives until the call returns, with its size.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::WouldBlock { Ok(None) } else { Err(e).context("recvmsg") };
    }
    // SAFETY: the CMSG_* walk stays inside the control buffer the kernel filled
    // (msg_controllen was updated by recvmsg).
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header from CMSG_FIRSTHDR/CMSG_NXTHDR lies inside the buffer.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::IPPROTO_IP && header.cmsg_type == libc::IP_RECVERR {
            // SAFETY: an IP_RECVERR message holds a sock_extended_err, then the
            // offender's sockaddr_in (SO_EE_OFFENDER); both are read unaligned.
            let (err, offender) = unsafe {
                let at = libc::CMSG_DATA(cmsg);
                let err = std::ptr::read_unaligned(at.cast::<libc::sock_extended_err>());
                let offender = std::ptr::read_unaligned(
                    at.add(std::mem::size_of::<libc::sock_extended_err>()).cast::<libc::sockaddr_in>(),
                );
                (err, offender)
            };
            if err.ee_origin == libc::SO_EE_ORIGIN_ICMP {
                let router = Ipv4Addr::from(u32::from_be(offender.sin_addr.s_addr));
                return Ok(Some(Reply::Icmp { router, icmp_type: err.ee_type }));
            }
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(None)
}
