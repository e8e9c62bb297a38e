//! Gratuitous ARP: tells the hosts of a network that an IPv4 address now lives behind
//! an interface's MAC address, so that they need not wait for their ARP caches to
//! expire. The node agent sends one when a LoadBalancer address it announces moves to
//! its node (the datapath answers ARP for it from then on).
//!
//! One raw `AF_PACKET` socket per call; nothing else. The only unsafe code of this
//! crate is here: the two syscalls take a `sockaddr_ll`, which no safe wrapper in the
//! dependency tree builds.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;

/// The gratuitous ARP request frame for `addr` at `mac`: broadcast, sender and target
/// address both `addr`.
pub fn frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, a request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// Sends a gratuitous ARP for `addr` at `mac` out of the interface with index `ifindex`
/// (in this process's network namespace).
#[expect(unsafe_code, reason = "socket(AF_PACKET) and sendto with a sockaddr_ll have no safe wrapper here")]
pub fn announce(ifindex: u32, mac: [u8; 6], addr: Ipv4Addr) -> io::Result<()> {
    // SAFETY: a plain syscall; the descriptor it returns is owned at once below.
    let fd =
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(ETH_P_ARP.to_be())) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is a valid value of this plain C struct.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let frame = frame(mac, addr);
    // SAFETY: `frame` and `to` are live locals of the lengths passed.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_broadcast_request_for_the_address_by_itself() {
        let f = frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(192, 168, 77, 193));
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[28..32], &[192, 168, 77, 193], "sender address");
        assert_eq!(&f[32..38], &[0; 6], "target MAC unknown");
        assert_eq!(&f[38..42], &[192, 168, 77, 193], "target address: the same");
    }
}
