//! Map keys and values shared by Skiff's BPF programs and user space.
//!
//! Every type here is the single definition of a map layout: the BPF programs
//! (`ebpf/programs`) and the node agent (`node-agent`) both use it, so the two sides can
//! never disagree. Rules, checked at compile time where possible:
//! - `#[repr(C)]`, explicit `_pad` fields, no `bool`/`Option`/enums, a size assertion;
//! - addresses and ports are stored exactly as they appear on the wire (network byte
//!   order); use [`addr_to_map`]/[`port_to_map`] and their inverses in user space;
//! - a layout change is a new pinned name (bump the `_V1` suffix) plus a migration.
//!
//! This crate must stay `no_std` and free of aya-ebpf; the `user` feature adds the
//! `aya::Pod` impls that user space needs.
#![no_std]

use core::mem::size_of;

/// IP protocol numbers, as in the IPv4 header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;

/// Pinned names of the load-balancer maps. The BPF statics carry the same names; the
/// suffix is the layout version.
pub mod pin {
    pub const SERVICES: &str = "SERVICES_V1";
    pub const BACKENDS: &str = "BACKENDS_V1";
    pub const REV_NAT: &str = "REV_NAT_V1";
    /// Conntrack; V2 added the client's and the translated source port (40-byte
    /// values). A restarted agent copies V1's entries over and removes it.
    pub const CT: &str = "CT4_V2";
    pub const CT_V1: &str = "CT4_V1";
    pub const AFFINITY: &str = "AFFINITY_V1";
    /// `stat::SLOTS` per-CPU counters (V1 had 8 slots; a restarted agent removes it).
    pub const STATS: &str = "LB_STATS_V2";
    pub const STATS_V1: &str = "LB_STATS_V1";
    pub const CONFIG: &str = "LB_CONFIG_V1";
    /// Local pods by IP (written by skiff-cni, read by the programs).
    pub const ENDPOINTS: &str = "ENDPOINTS_V1";
    /// Peer nodes by podCIDR (written by the agent's overlay role).
    pub const NODES: &str = "NODES_V1";
    /// The overlay's settings (one-entry array).
    pub const OVERLAY_CONFIG: &str = "OVERLAY_CONFIG_V1";
    /// Pinned programs for tc ingress and egress on a pod's host-side veth.
    pub const PROG_FROM_POD: &str = "from_pod_v1";
    pub const PROG_TO_POD: &str = "to_pod_v1";
    /// Pinned programs for tc ingress and egress on the node's VXLAN device.
    pub const PROG_FROM_OVERLAY: &str = "from_overlay_v1";
    pub const PROG_TO_OVERLAY: &str = "to_overlay_v1";
    /// Masquerade of pod traffic leaving through the underlay: its flows, and its
    /// settings (one-entry array).
    pub const SNAT: &str = "SNAT4_V1";
    pub const MASQ_CONFIG: &str = "MASQ_CONFIG_V1";
    /// NodePort's settings (one-entry array).
    pub const NODEPORT_CONFIG: &str = "NODEPORT_CONFIG_V1";
    /// The socket-level load balancer's reverse entries (backend → Service per socket).
    pub const SOCK_REV: &str = "SOCK_REV4_V1";
    /// The socket-level load balancer's session affinity (by network namespace).
    pub const SOCK_AFFINITY: &str = "SOCK_AFFINITY4_V1";
    /// LoadBalancer addresses this node announces (answers ARP for).
    pub const ANNOUNCED: &str = "ANNOUNCED4_V1";
    /// Pinned programs for tc egress and ingress on the node's underlay interface.
    pub const PROG_TO_UNDERLAY: &str = "to_underlay_v1";
    pub const PROG_FROM_UNDERLAY: &str = "from_underlay_v1";
    /// Directory (under the node's pin directory) of pinned tc links, one file per
    /// interface: `links/from_pod_<ifname>`.
    pub const LINKS_DIR: &str = "links";
}

/// Default capacities. User space may raise them at load time (benchmarks do); an
/// existing pinned map keeps the size it was created with.
pub mod capacity {
    pub const SERVICES: u32 = 131_072;
    pub const BACKENDS: u32 = 65_536;
    pub const REV_NAT: u32 = 65_536;
    pub const CT: u32 = 262_144;
    pub const AFFINITY: u32 = 65_536;
    pub const ENDPOINTS: u32 = 65_536;
    pub const NODES: u32 = 16_384;
    /// Two entries per masqueraded flow.
    pub const SNAT: u32 = 131_072;
    /// One entry per socket the socket-level load balancer translated.
    pub const SOCK_REV: u32 = 131_072;
    /// LoadBalancer addresses one node announces.
    pub const ANNOUNCED: u32 = 4_096;
}

/// Key of the services map: one frontend (VIP, port, protocol) and a slot.
///
/// Slot 0 is the frontend itself (its value carries the backend count and flags);
/// slots `1..=count` carry backend ids. User space writes slots before slot 0's count,
/// so a reader never sees a count larger than the slots written.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service4Key {
    /// Virtual IP, network byte order.
    pub addr: u32,
    /// Service port, network byte order.
    pub dport: u16,
    /// 0 = the frontend, 1..=count = backends.
    pub backend_slot: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Reserved for traffic scopes (externalTrafficPolicy); 0 today.
    pub scope: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Service4Key>() == 12);

impl Service4Key {
    pub const fn new(addr: u32, dport: u16, proto: u8, backend_slot: u16) -> Self {
        Self { addr, dport, backend_slot, proto, scope: 0, _pad: [0; 2] }
    }
}

/// The frontend has sessionAffinity: ClientIP.
pub const SERVICE_FLAG_AFFINITY: u16 = 1 << 0;
/// The frontend's slots hold a Maglev lookup table (`count` is its size, a prime): a
/// new flow takes the slot its hash names instead of a random one.
pub const SERVICE_FLAG_MAGLEV: u16 = 1 << 1;
/// Direct server return for the frontend's flows to another node's backend (node ports
/// and external addresses only): the client's packets keep its address and go through
/// the tunnel with the frontend's port in the VXLAN header (the group policy field of
/// VXLAN-GBP) and its address as the outer source, and the backend's node answers the
/// client itself, from the frontend's address and port.
pub const SERVICE_FLAG_DSR: u16 = 1 << 2;

/// Value of the services map. In slot 0: `count`, `rev_nat_index`, `flags`,
/// `affinity_timeout_s`. In slots 1..N: `backend_id` (and the same `rev_nat_index`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service4Value {
    pub backend_id: u32,
    /// Index into the reverse-NAT map; 32 bits because a large cluster has more than
    /// 65,535 Service ports.
    pub rev_nat_index: u32,
    /// Number of backends that take new flows; 0 means "reject".
    pub count: u16,
    pub flags: u16,
    pub affinity_timeout_s: u32,
}
const _: () = assert!(size_of::<Service4Value>() == 16);

/// The backend is terminating: it keeps its established flows but gets no new ones,
/// not even through session affinity.
pub const BACKEND_FLAG_TERMINATING: u8 = 1 << 0;

/// Value of the backends map (key: backend id, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend4 {
    /// Pod IP, network byte order.
    pub addr: u32,
    /// Target port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}
const _: () = assert!(size_of::<Backend4>() == 8);

/// Value of the reverse-NAT map (key: `rev_nat_index`, `u32`): what replies must look
/// like they come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat4 {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<RevNat4>() == 8);

/// Conntrack direction: the client's packets toward the VIP (key as the client sent it).
pub const CT_DIR_FORWARD: u8 = 0;
/// Conntrack direction: the backend's replies (key as the backend sends it, after DNAT
/// and, for hairpin, SNAT).
pub const CT_DIR_REPLY: u8 = 1;

/// Conntrack key: a 5-tuple and a direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ct4Key {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Ct4Key>() == 16);

/// A FIN or RST was seen: the entry lives only `tcp_closing_timeout_s` more, and a new
/// SYN on the same tuple selects a backend afresh.
pub const CT_FLAG_CLOSING: u16 = 1 << 0;
/// The client is its own backend: its source was rewritten to the hairpin address.
pub const CT_FLAG_HAIRPIN: u16 = 1 << 1;
/// The client's source address was rewritten (to [`Ct4Entry::snat_addr`]), so replies
/// get the client's address back as destination; hairpin flows carry it too.
pub const CT_FLAG_SNAT: u16 = 1 << 2;
/// A flow that came in from the wire, to a node port or an external address
/// (externalIPs, LoadBalancer ingress): its replies leave by the node's underlay
/// interface, since after reverse NAT they come from the node's own address (or one the
/// node does not route), which the node's stack would drop as a martian if they
/// entered it from a pod or the tunnel.
pub const CT_FLAG_NODEPORT: u16 = 1 << 3;
/// A node-port flow sent to another node's backend by direct server return (see
/// [`SERVICE_FLAG_DSR`]): no source NAT, and each packet carries the node port in its
/// VXLAN header. Its replies never come back through this node.
pub const CT_FLAG_DSR: u16 = 1 << 4;
/// On a backend's node, a direct-server-return flow whose frontend is another node's
/// node port, [`Ct4Entry::snat_addr`]:[`Ct4Entry::snat_port`] (learnt from the tunnel
/// header): replies get it as their source and leave by the underlay interface straight
/// to the client. Entries with this flag have no reverse-NAT index.
pub const CT_FLAG_REMOTE_FRONTEND: u16 = 1 << 5;

/// Conntrack value.
///
/// A forward entry carries the backend's address itself, not only its id: like
/// kube-proxy's conntrack, an established TCP flow keeps going to its backend even after
/// the backend left the Service. UDP flows re-check that the backend id still names the
/// same backend, the way kube-proxy clears UDP conntrack entries of removed endpoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ct4Entry {
    /// `bpf_ktime_get_ns` of the last packet that refreshed the entry.
    pub last_seen_ns: u64,
    /// The chosen backend.
    pub backend_id: u32,
    pub backend_addr: u32,
    pub rev_nat_index: u32,
    pub backend_port: u16,
    pub flags: u16,
    /// The client's own address (for reply entries of hairpin flows it differs from
    /// the reply's destination).
    pub client_addr: u32,
    /// With [`CT_FLAG_SNAT`]: the source address the client's packets are given (the
    /// hairpin address, or for NodePort flows to another node's backend the node's
    /// address in its podCIDR). With [`CT_FLAG_REMOTE_FRONTEND`]: the frontend node's
    /// address. 0 otherwise; a hairpin entry of an older agent has 0 too and means
    /// [`LbConfig::hairpin_addr`].
    pub snat_addr: u32,
    /// The client's own port (network byte order): replies of a flow whose source port
    /// was translated get it back.
    pub client_port: u16,
    /// With [`CT_FLAG_SNAT`]: the source port the client's packets are given (network
    /// byte order): the client's own unless another client's flow to the same backend
    /// already holds that port behind the same source address. With
    /// [`CT_FLAG_REMOTE_FRONTEND`]: the frontend's node port (network byte order).
    pub snat_port: u16,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Ct4Entry>() == 40);

/// Key of the socket-level load balancer's reverse map: a socket (its cookie) and the
/// backend it was sent to. The value ([`RevNat4`]) is the Service address and port the
/// application asked for, which `getpeername()` and `recvmsg()` give back to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRev4Key {
    pub cookie: u64,
    /// Backend address and port, network byte order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<SockRev4Key>() == 16);

/// Key of the socket-level load balancer's session-affinity map: the client's network
/// namespace (its cookie: at `connect()` a socket has no source address yet, and every
/// socket of a namespace has the same one) and the Service. The value is an
/// [`Affinity4Value`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockAffinity4Key {
    pub netns_cookie: u64,
    pub rev_nat_index: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SockAffinity4Key>() == 16);

/// Key of the session-affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Affinity4Key {
    pub client_addr: u32,
    pub rev_nat_index: u32,
}
const _: () = assert!(size_of::<Affinity4Key>() == 8);

/// Value of the session-affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Affinity4Value {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Affinity4Value>() == 16);

/// Runtime settings of the load balancer, slot 0 of a one-entry array map. Zero values
/// fall back to the defaults below, so an unset map still works.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbConfig {
    pub tcp_timeout_s: u32,
    pub tcp_closing_timeout_s: u32,
    pub udp_timeout_s: u32,
    /// Source address given to hairpin flows (a pod reaching itself through its own
    /// Service), network byte order. The pod must route it to its gateway.
    pub hairpin_addr: u32,
    /// The Service CIDR (network and mask, network byte order). Only packets to it are
    /// looked up as Service traffic, so pod-to-pod packets skip that lookup. A zero
    /// mask means every destination may be a Service.
    pub service_net: u32,
    pub service_mask: u32,
}
const _: () = assert!(size_of::<LbConfig>() == 24);

/// Value of the endpoints map (key: the pod's IPv4 address, network byte order, `u32`):
/// a pod on this node, as skiff-cni created it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint4 {
    /// Index of the pod's host-side veth in the node's network namespace.
    pub ifindex: u32,
    pub flags: u32,
    /// MAC address of the pod's `eth0`.
    pub pod_mac: [u8; 6],
    /// MAC address of the host-side veth (the pod's gateway).
    pub host_mac: [u8; 6],
}
const _: () = assert!(size_of::<Endpoint4>() == 20);

/// Value of the nodes map, an LPM trie keyed by podCIDR (`lpm_trie::Key<u32>`: prefix
/// length, then the network address in network byte order): the peer owning it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeInfo4 {
    /// The peer's underlay (VXLAN endpoint) address, network byte order.
    pub underlay_addr: u32,
    pub flags: u32,
}
const _: () = assert!(size_of::<NodeInfo4>() == 8);

/// The overlay's settings, slot 0 of a one-entry array map written by the agent. A zero
/// `vxlan_ifindex` means "no overlay": traffic for other nodes is left to the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OverlayConfig {
    /// The node's VXLAN device (external/collect_md mode).
    pub vxlan_ifindex: u32,
    /// VXLAN network identifier.
    pub vni: u32,
    /// This node's podCIDR (network and mask, network byte order).
    pub local_pod_net: u32,
    pub local_pod_mask: u32,
    /// The cluster CIDR (network and mask, network byte order).
    pub cluster_net: u32,
    pub cluster_mask: u32,
}
const _: () = assert!(size_of::<OverlayConfig>() == 24);

/// Value of the masquerade map, keyed by [`Ct4Key`]. A forward entry (the pod's tuple
/// toward the outside, [`CT_DIR_FORWARD`]) holds the node address and port the flow
/// leaves with; a reply entry (the outside's tuple back to the node, [`CT_DIR_REPLY`])
/// holds the pod's address and port. Network byte order, as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Snat4Entry {
    /// `bpf_ktime_get_coarse_ns` of the last packet that refreshed the entry (forward
    /// entries only; a reply entry lives as long as its forward entry).
    pub last_seen_ns: u64,
    pub addr: u32,
    pub port: u16,
    /// [`CT_FLAG_CLOSING`] once a FIN or RST was seen.
    pub flags: u16,
}
const _: () = assert!(size_of::<Snat4Entry>() == 16);

/// The masquerade's settings, slot 0 of a one-entry array map written by the agent's
/// overlay role. A zero `node_addr` means "no masquerade": pod traffic to addresses
/// outside the cluster CIDR leaves with the pod's own address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MasqConfig {
    /// The address masqueraded flows leave with: the node's underlay address.
    pub node_addr: u32,
    /// The cluster CIDR (network and mask): traffic from it to outside it is
    /// masqueraded.
    pub cluster_net: u32,
    pub cluster_mask: u32,
    /// The node ports masqueraded flows use, first and last (network byte order). They
    /// must lie outside the node's `ip_local_port_range`, so that they never collide
    /// with the node's own connections.
    pub port_first: u16,
    pub port_last: u16,
}
const _: () = assert!(size_of::<MasqConfig>() == 16);

/// NodePort's settings, slot 0 of a one-entry array map written by the agent's overlay
/// role; they also cover external addresses (externalIPs, LoadBalancer ingress). A
/// zero `underlay_ifindex` means "off": the programs leave such traffic to the node's
/// stack. The frontends themselves are entries of the services map, keyed by the
/// node's own address (node ports) or by the external address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodePortConfig {
    /// The node's underlay interface: replies of NodePort flows leave through it.
    pub underlay_ifindex: u32,
    /// The source address given to NodePort flows whose backend is on another node:
    /// the network address of this node's podCIDR, so that the backend's replies come
    /// back through the tunnel, and an address none of the node's own connections use
    /// (their replies must not match a NodePort flow's) (network byte order).
    pub snat_addr: u32,
    /// The node's underlay address (network byte order): packets to it are looked up
    /// as NodePort traffic only within the port range below; packets to any other
    /// address the node receives from the wire may be for an external address.
    pub node_addr: u32,
    /// The node port range, first and last (network byte order).
    pub port_first: u16,
    pub port_last: u16,
    /// The underlay interface's MAC address: ARP answers for announced addresses
    /// come from it.
    pub underlay_mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<NodePortConfig>() == 24);

/// Kubernetes' default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_FIRST: u16 = 30_000;
pub const DEFAULT_NODE_PORT_LAST: u16 = 32_767;

/// The default masquerade ports: above Linux's default `ip_local_port_range`
/// (32768-60999).
pub const DEFAULT_MASQ_PORT_FIRST: u16 = 61_000;
pub const DEFAULT_MASQ_PORT_LAST: u16 = 65_535;

/// The default VXLAN network identifier and UDP port, as flannel's.
pub const DEFAULT_VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;

/// skb mark bit: "from pod" already set this packet's tunnel key, so "to overlay" on the
/// VXLAN device's egress need not look the peer up again.
pub const MARK_TUNNEL_SET: u32 = 0x0000_5c00;

/// Defaults, as in Cilium and kube-proxy's conntrack settings.
pub const DEFAULT_TCP_TIMEOUT_S: u32 = 21_600;
pub const DEFAULT_TCP_CLOSING_TIMEOUT_S: u32 = 10;
pub const DEFAULT_UDP_TIMEOUT_S: u32 = 60;
/// 169.254.42.1 in network byte order: link-local, never a pod or node address.
pub const DEFAULT_HAIRPIN_ADDR: u32 = u32::from_ne_bytes([169, 254, 42, 1]);

/// Indices of the per-CPU counters map.
pub mod stat {
    /// Packets toward a Service that were DNATed to a backend.
    pub const TRANSLATED: u32 = 0;
    /// Replies whose source was translated back to the Service.
    pub const REV_TRANSLATED: u32 = 1;
    /// Packets to a Service without ready backends (answered by a reject).
    pub const NO_BACKEND: u32 = 2;
    /// Packets dropped because something failed; each is also counted by its reason
    /// (`DROP_CT_INSERT` .. `DROP_TUNNEL_KEY`, `DROP_XDP`, `SNAT_NO_PORT`).
    pub const ERRORS: u32 = 3;
    /// New conntrack entries (new flows).
    pub const CT_NEW: u32 = 4;
    /// New masqueraded flows (pod traffic leaving the cluster network).
    pub const SNAT_NEW: u32 = 5;
    /// Packets dropped because no masquerade port was free toward their destination.
    pub const SNAT_NO_PORT: u32 = 6;
    /// Connections (and unconnected UDP datagrams) to a Service sent straight to a
    /// backend by the socket-level load balancer.
    pub const SOCK_TRANSLATED: u32 = 7;
    /// NodePort and external-frontend packets translated at XDP on the underlay
    /// (toward a backend on this node, passed on to the node; or toward another node's,
    /// see `XDP_TUNNELED`).
    pub const XDP_TRANSLATED: u32 = 8;
    /// Of those, the packets encapsulated at XDP and sent straight back out of the
    /// underlay toward the backend's node (XDP_TX).
    pub const XDP_TUNNELED: u32 = 9;
    /// NodePort packets XDP left to the tc path: the next hop's MAC not yet known, a
    /// packet too big for the tunnel, a backend outside the cluster network.
    pub const XDP_TO_TC: u32 = 10;
    /// Packets dropped because their destination is in the cluster network but in no
    /// node's podCIDR (a node gone, or an address never handed out).
    pub const DROP_NO_PEER: u32 = 11;
    /// Packets dropped at XDP after their headers were rewritten (a helper failed).
    pub const DROP_XDP: u32 = 12;
    /// Packets dropped because a conntrack or masquerade entry could not be written.
    pub const DROP_CT_INSERT: u32 = 13;
    /// Packets dropped because a frontend's slot or a backend was missing (a Service
    /// changed under the packet).
    pub const DROP_STALE_SERVICE: u32 = 14;
    /// Packets dropped because a helper that rewrites or delivers them failed.
    pub const DROP_REWRITE: u32 = 15;
    /// Packets dropped because their reject could not be built.
    pub const DROP_REJECT: u32 = 16;
    /// Packets dropped because their tunnel key could not be set.
    pub const DROP_TUNNEL_KEY: u32 = 17;
    /// Pods' packets to other nodes' pods wrapped in VXLAN at tc and sent out of the
    /// underlay directly (the rest go through the node's VXLAN device).
    pub const ENCAPSULATED: u32 = 18;
    /// Packets sent out of the underlay (wrapped ones, NodePort replies) whose next hop
    /// the FIB gave without a resolved MAC, or not at all: the kernel's neighbour output
    /// took them (resolving the neighbour, or routing them itself). The others got
    /// their MACs from the FIB's answer and went to the interface directly.
    pub const WIRE_NEIGH_OUTPUT: u32 = 19;
    /// ARP requests for an announced LoadBalancer address answered by this node (at
    /// XDP or at tc).
    pub const ARP_ANSWERED: u32 = 20;
    /// Of those, the ones answered at XDP (`--nodeport-xdp`), before the kernel built a
    /// socket buffer; without XDP, tc answers them all.
    pub const XDP_ARP_ANSWERED: u32 = 21;
    /// Packets handed straight into a pod of this node at tc (`bpf_redirect_peer` into
    /// its namespace, past the node's routing, netfilter and the pod veth's backlog
    /// queue): from this node's pods, from the tunnel and from the wire.
    pub const POD_DELIVERED: u32 = 22;
    /// Packets whose TTL would have run out at this node's hop (a TTL of 1 or 0), left
    /// by the programs to the node's stack, which drops them and answers the sender with
    /// ICMP time exceeded as any router does. The programs forward every other packet
    /// with its TTL lowered by one per node, as the kernel's forwarding would.
    pub const TTL_EXPIRED: u32 = 23;
    /// Node-port packets sent to another node's backend by direct server return (the
    /// client's address kept, the node port in the VXLAN header), at XDP or at tc.
    pub const DSR_TUNNELED: u32 = 24;
    /// Packets from the tunnel that carried a direct-server-return frontend for a pod
    /// of this node: its flow's conntrack entries written or refreshed here.
    pub const DSR_LEARNT: u32 = 25;
    /// Replies of direct-server-return flows sent straight to their client from this
    /// node, with the other node's address and node port as their source.
    pub const DSR_REPLIED: u32 = 26;
    /// Service flows whose client's port a new flow straight to the same backend took
    /// over (a UDP datagram, or a TCP connection after the Service flow closed): the old
    /// flow's conntrack entries removed, so that its reverse NAT leaves the new flow's
    /// replies alone.
    pub const CT_SUPERSEDED: u32 = 27;
    /// Number of counters in use. `errors` counts every drop of the kinds `DROP_*`
    /// name (and `snat_no_port`), each also counted by its reason.
    pub const COUNT: u32 = 28;
    /// Slots of the counters map: room for counters to come without a new layout.
    pub const SLOTS: u32 = 32;

    pub const NAMES: [&str; COUNT as usize] = [
        "translated",
        "rev_translated",
        "no_backend",
        "errors",
        "ct_new",
        "snat_new",
        "snat_no_port",
        "sock_translated",
        "xdp_translated",
        "xdp_tunneled",
        "xdp_to_tc",
        "drop_no_peer",
        "drop_xdp",
        "drop_ct_insert",
        "drop_stale_service",
        "drop_rewrite",
        "drop_reject",
        "drop_tunnel_key",
        "tunnel_encapsulated",
        "wire_neigh_output",
        "arp_answered",
        "xdp_arp_answered",
        "pod_delivered",
        "ttl_expired",
        "dsr_tunneled",
        "dsr_learnt",
        "dsr_replied",
        "ct_superseded",
    ];
}

/// An IPv4 address as the maps store it.
pub const fn addr_to_map(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The octets of an address read from a map.
pub const fn addr_from_map(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}

/// A port as the maps store it.
pub const fn port_to_map(port: u16) -> u16 {
    port.to_be()
}

/// A port read from a map.
pub const fn port_from_map(port: u16) -> u16 {
    u16::from_be(port)
}

#[cfg(feature = "user")]
mod user {
    #![expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait for plain map types")]
    use super::*;

    // SAFETY: each type is #[repr(C)], has no implicit padding (sizes asserted above)
    // and every bit pattern is a valid value.
    unsafe impl aya::Pod for Service4Key {}
    unsafe impl aya::Pod for Service4Value {}
    unsafe impl aya::Pod for Backend4 {}
    unsafe impl aya::Pod for RevNat4 {}
    unsafe impl aya::Pod for Ct4Key {}
    unsafe impl aya::Pod for Ct4Entry {}
    unsafe impl aya::Pod for Affinity4Key {}
    unsafe impl aya::Pod for SockAffinity4Key {}
    unsafe impl aya::Pod for Affinity4Value {}
    unsafe impl aya::Pod for LbConfig {}
    unsafe impl aya::Pod for Endpoint4 {}
    unsafe impl aya::Pod for NodeInfo4 {}
    unsafe impl aya::Pod for OverlayConfig {}
    unsafe impl aya::Pod for Snat4Entry {}
    unsafe impl aya::Pod for MasqConfig {}
    unsafe impl aya::Pod for NodePortConfig {}
    unsafe impl aya::Pod for SockRev4Key {}
}
