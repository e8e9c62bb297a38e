//! Header layouts and parsing of IPv4 TCP/UDP packets at tc.
//!
//! Parsing only reads. [`load_at`] and [`store_at`] read and write raw bytes and keep
//! no checksum; rewriting that must keep checksums right goes through the helpers in
//! [`crate::lb`] and [`crate::reject`].

use aya_ebpf::programs::TcContext;
use skiff_ebpf_common::{PROTO_TCP, PROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const ETH_P_IP: u16 = 0x0800;

/// Offsets inside the IPv4 header.
pub const IP_TTL_OFF: usize = 8;
pub const IP_CHECK_OFF: usize = 10;
pub const IP_SADDR_OFF: usize = 12;
pub const IP_DADDR_OFF: usize = 16;
/// Offsets inside the TCP/UDP header.
pub const L4_SPORT_OFF: usize = 0;
pub const L4_DPORT_OFF: usize = 2;
pub const TCP_CHECK_OFF: usize = 16;
pub const UDP_CHECK_OFF: usize = 6;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack_seq: u32,
    /// Data offset (high nibble) and reserved bits.
    pub doff: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

/// What the load balancer needs to know of a packet. Addresses and ports are in
/// network byte order, as on the wire and in the maps.
#[derive(Clone, Copy)]
pub struct Packet {
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags; 0 for UDP.
    pub tcp_flags: u8,
    /// The IPv4 time to live as the packet arrived.
    pub ttl: u8,
}

impl Packet {
    /// Offset of the L4 checksum from the start of the frame.
    #[inline(always)]
    pub fn l4_check_off(&self) -> usize {
        self.l4_off + if self.proto == PROTO_TCP { TCP_CHECK_OFF } else { UDP_CHECK_OFF }
    }
}

/// Reads a `T` at `off` in the frame: in place where the frame is linear there (always
/// on a veth), else through the load helper. `None` if the frame is shorter.
#[inline(always)]
pub fn load_at<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let at = ctx.data() + off;
    if at + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: the check covers the value; the read is unaligned-safe.
        return Some(unsafe { core::ptr::read_unaligned(at as *const T) });
    }
    ctx.load(off).ok()
}

/// Writes `value` at `off` in the frame: in place where the frame is linear there
/// (always on a veth), else through the store helper. The programs write packet data
/// directly anyway (`nat`), so the kernel has made the header writable when they start,
/// and the helper would only add a call per packet. Callers derive nothing from packet
/// pointers taken before a helper that may move the data: this takes them afresh.
#[inline(always)]
pub fn store_at<T: Copy>(ctx: &TcContext, off: usize, value: &T) -> Result<(), crate::Drop> {
    let at = ctx.data() + off;
    if at + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: the check covers the value; tc programs may write packet data
        // directly, and the write is unaligned-safe.
        unsafe { core::ptr::write_unaligned(at as *mut T, *value) };
        return Ok(());
    }
    ctx.store(off, value, 0).map_err(|_| crate::Drop::REWRITE)
}

/// Parses an IPv4 TCP or UDP packet. `None` means "not ours to touch" (other
/// protocols, fragments after the first, truncated packets): the caller passes it on.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Option<Packet> {
    // The veth path delivers linear headers; pull once if a device did not.
    const WANT: usize = ETH_HLEN + IPV4_HLEN + 14;
    if ctx.data() + WANT > ctx.data_end() && ctx.len() as usize >= WANT {
        let _ = ctx.pull_data(WANT as u32);
    }
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN + IPV4_HLEN > end {
        return None;
    }
    // SAFETY: the bounds check above covers the Ethernet and fixed IPv4 header.
    let (eth, ip) = unsafe { (&*(data as *const EthHdr), &*((data + ETH_HLEN) as *const Ipv4Hdr)) };
    if eth.proto != ETH_P_IP.to_be() || ip.ver_ihl >> 4 != 4 {
        return None;
    }
    // Only the first fragment carries ports; later ones are not translated.
    if u16::from_be(ip.frag_off) & 0x1fff != 0 {
        return None;
    }
    let proto = ip.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return None;
    }
    let l4_off = ETH_HLEN + ihl;
    let (saddr, daddr, ttl) = (ip.saddr, ip.daddr, ip.ttl);
    let (sport, dport, tcp_flags) = if ihl == IPV4_HLEN {
        let l4 = data + ETH_HLEN + IPV4_HLEN;
        if proto == PROTO_TCP {
            if l4 + core::mem::size_of::<TcpHdr>() > end {
                return None;
            }
            // SAFETY: bounds checked just above.
            let tcp = unsafe { &*(l4 as *const TcpHdr) };
            (tcp.sport, tcp.dport, tcp.flags)
        } else {
            if l4 + core::mem::size_of::<UdpHdr>() > end {
                return None;
            }
            // SAFETY: bounds checked just above.
            let udp = unsafe { &*(l4 as *const UdpHdr) };
            (udp.sport, udp.dport, 0)
        }
    } else {
        // IP options: rare, so the slower helper loads are fine here.
        let ports: [u16; 2] = ctx.load(l4_off).ok()?;
        let flags: u8 = if proto == PROTO_TCP { ctx.load(l4_off + 13).ok()? } else { 0 };
        (ports[0], ports[1], flags)
    };
    Some(Packet { l4_off, proto, saddr, daddr, sport, dport, tcp_flags, ttl })
}
