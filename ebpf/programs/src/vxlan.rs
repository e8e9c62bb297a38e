//! VXLAN's outer headers (IPv4, UDP, VXLAN), built alike by the two places that
//! encapsulate without the kernel's VXLAN device: the NodePort fast path at XDP
//! (`xdp::encapsulate`) and pod traffic to other nodes at tc (`overlay::to_remote_node`).
//!
//! This module only builds headers; it looks nothing up and must not call into `lb`
//! or `overlay`.

use skiff_ebpf_common::{PROTO_UDP, VXLAN_PORT};

use crate::{
    csum,
    packet::{IPV4_HLEN, Ipv4Hdr, UdpHdr},
};

/// The outer TTL, for headers built here and for the VXLAN device's tunnel keys.
pub const TUNNEL_TTL: u8 = 64;
/// Outer UDP source ports come from this range, hashed from the inner flow (as the
/// kernel's VXLAN does) so that the receiver's RSS spreads flows over queues.
const SPORT_FIRST: u32 = 32768;
const SPORT_SPAN: u32 = 28232;
/// An ordinary VXLAN header's first 4 bytes: the I flag (the VNI is valid), nothing
/// else. What a direct-server-return header becomes once read (`dsr`): one a VXLAN
/// device without GBP accepts.
pub const PLAIN_FLAGS: [u8; 4] = [0x08, 0, 0, 0];
/// The G flag of VXLAN-GBP (the group policy extension): the header's last 16 bits
/// before the VNI carry a policy ID. Skiff puts a direct-server-return flow's frontend
/// port there (see `SERVICE_FLAG_DSR`, [`DsrFrontend`]); the receiving node reads and
/// clears it before its VXLAN device, which does not parse GBP, sees the packet (`dsr`).
const FLAG_GBP: u8 = 0x80;
/// Offset of the VXLAN header's first byte (its flags) after the outer UDP header.
pub const FLAGS_OFF: usize = 0;
/// The VXLAN header's length.
pub const VXLAN_HLEN: usize = 8;

/// The VXLAN header's first 4 bytes (flags, and the frontend port of a
/// direct-server-return flow; network byte order) as they sit on the wire.
#[inline(always)]
fn flags_word(dsr: Option<DsrFrontend>) -> u32 {
    match dsr {
        None => u32::from_ne_bytes(PLAIN_FLAGS),
        Some(frontend) => {
            let port = frontend.port.to_ne_bytes();
            u32::from_ne_bytes([PLAIN_FLAGS[0] | FLAG_GBP, 0, port[0], port[1]])
        }
    }
}

/// The frontend port of a direct-server-return flow that a VXLAN header's first 4
/// bytes (as on the wire) carry, in network byte order; `None` for an ordinary header.
#[inline(always)]
pub fn dsr_port(flags_word: [u8; 4]) -> Option<u16> {
    let port = u16::from_ne_bytes([flags_word[2], flags_word[3]]);
    (flags_word[0] & FLAG_GBP != 0 && port != 0).then_some(port)
}

/// The frontend a direct-server-return flow's client sent to, as the tunnel header
/// names it to the backend's node (`dsr`): the outer source address and the group
/// policy ID. For a node port that is the sending node's own address; for an external
/// address (`externalIPs`, a LoadBalancer's) that address itself, so that the header
/// alone tells the backend's node what to answer the client from. Network byte order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DsrFrontend {
    pub addr: u32,
    pub port: u16,
}

/// IPv4, UDP and VXLAN headers, as they sit on the wire.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct Outer {
    pub ip: Ipv4Hdr,
    pub udp: UdpHdr,
    pub vxlan_flags: u32,
    pub vxlan_vni: u32,
}
/// The length of [`Outer`].
pub const OUTER_LEN: usize = IPV4_HLEN + 8 + 8;
const _: () = assert!(core::mem::size_of::<Outer>() == OUTER_LEN);

/// The outer headers from this node (`node_addr`) to `remote` (network byte order) for
/// an outer IP packet of `ip_len` bytes, with the outer IP checksum and no UDP checksum
/// (RFC 7348 allows 0 over IPv4). A direct-server-return flow's headers name its
/// frontend instead ([`DsrFrontend`]): its address as the source, its port as the group
/// policy ID. `None` if the checksum helper fails.
#[inline(always)]
pub fn outer(
    node_addr: u32,
    remote: u32,
    vni: u32,
    flow_hash: u32,
    ip_len: u16,
    dsr: Option<DsrFrontend>,
) -> Option<Outer> {
    let mut ip = Ipv4Hdr {
        ver_ihl: 0x45,
        tos: 0,
        tot_len: ip_len.to_be(),
        id: 0,
        frag_off: 0,
        ttl: TUNNEL_TTL,
        proto: PROTO_UDP,
        check: 0,
        saddr: dsr.map_or(node_addr, |frontend| frontend.addr),
        daddr: remote,
    };
    // SAFETY: `ip` is a 20-byte stack value.
    let sum = unsafe { csum::sum((&raw const ip).cast(), IPV4_HLEN as u32, 0) }?;
    ip.check = csum::fold(sum);
    let sport = (SPORT_FIRST + flow_hash % SPORT_SPAN) as u16;
    Some(Outer {
        ip,
        udp: UdpHdr {
            sport: sport.to_be(),
            dport: VXLAN_PORT.to_be(),
            len: (ip_len - IPV4_HLEN as u16).to_be(),
            check: 0,
        },
        vxlan_flags: flags_word(dsr),
        vxlan_vni: (vni << 8).to_be(),
    })
}
