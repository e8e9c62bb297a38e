//! Every map of the load balancer. Names are the pinned names (`skiff_ebpf_common::pin`),
//! so a restarted agent and every program object share the same maps.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use skiff_ebpf_common::{
    Affinity4Key, Affinity4Value, Backend4, Ct4Entry, Ct4Key, LbConfig, RevNat4, Service4Key, Service4Value, capacity,
    stat,
};

#[map]
pub static SERVICES_V1: HashMap<Service4Key, Service4Value> = HashMap::pinned(capacity::SERVICES, 0);

#[map]
pub static BACKENDS_V1: HashMap<u32, Backend4> = HashMap::pinned(capacity::BACKENDS, 0);

#[map]
pub static REV_NAT_V1: HashMap<u32, RevNat4> = HashMap::pinned(capacity::REV_NAT, 0);

#[map]
pub static CT4_V2: LruHashMap<Ct4Key, Ct4Entry> = LruHashMap::pinned(capacity::CT, 0);

#[map]
pub static AFFINITY_V1: LruHashMap<Affinity4Key, Affinity4Value> = LruHashMap::pinned(capacity::AFFINITY, 0);

#[map]
pub static LB_STATS_V2: PerCpuArray<u64> = PerCpuArray::pinned(stat::SLOTS, 0);

#[map]
pub static LB_CONFIG_V1: Array<LbConfig> = Array::pinned(1, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = LB_STATS_V2.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and programs do not
        // preempt each other on one CPU.
        unsafe { *counter += 1 };
    }
}

/// The load balancer's settings, with defaults for fields left at zero.
#[derive(Clone, Copy)]
pub struct Config {
    pub tcp_timeout_ns: u64,
    pub tcp_closing_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    pub hairpin_addr: u32,
    pub service_net: u32,
    pub service_mask: u32,
}

#[inline(always)]
fn or_default(value: u32, default: u32) -> u64 {
    (if value == 0 { default } else { value }) as u64 * 1_000_000_000
}

#[inline(always)]
pub fn config() -> Config {
    let raw = LB_CONFIG_V1.get(0).copied().unwrap_or_default();
    Config {
        tcp_timeout_ns: or_default(raw.tcp_timeout_s, skiff_ebpf_common::DEFAULT_TCP_TIMEOUT_S),
        tcp_closing_timeout_ns: or_default(raw.tcp_closing_timeout_s, skiff_ebpf_common::DEFAULT_TCP_CLOSING_TIMEOUT_S),
        udp_timeout_ns: or_default(raw.udp_timeout_s, skiff_ebpf_common::DEFAULT_UDP_TIMEOUT_S),
        hairpin_addr: if raw.hairpin_addr == 0 { skiff_ebpf_common::DEFAULT_HAIRPIN_ADDR } else { raw.hairpin_addr },
        service_net: raw.service_net,
        service_mask: raw.service_mask,
    }
}

/// Local pods by IP, written by skiff-cni when it creates a pod's veth.
#[map]
pub static ENDPOINTS_V1: HashMap<u32, skiff_ebpf_common::Endpoint4> =
    HashMap::pinned(skiff_ebpf_common::capacity::ENDPOINTS, 0);

/// Peer nodes by podCIDR (key: prefix length + network address in network byte order,
/// aya's `lpm_trie::Key<u32>` on both sides), written by the agent's overlay role.
#[map]
pub static NODES_V1: aya_ebpf::maps::LpmTrie<u32, skiff_ebpf_common::NodeInfo4> =
    aya_ebpf::maps::LpmTrie::pinned(skiff_ebpf_common::capacity::NODES, 0);

#[map]
pub static OVERLAY_CONFIG_V1: Array<skiff_ebpf_common::OverlayConfig> = Array::pinned(1, 0);

/// Masqueraded flows, both directions (see `crate::masq`).
#[map]
pub static SNAT4_V1: LruHashMap<skiff_ebpf_common::Ct4Key, skiff_ebpf_common::Snat4Entry> =
    LruHashMap::pinned(skiff_ebpf_common::capacity::SNAT, 0);

#[map]
pub static MASQ_CONFIG_V1: Array<skiff_ebpf_common::MasqConfig> = Array::pinned(1, 0);

#[map]
pub static NODEPORT_CONFIG_V1: Array<skiff_ebpf_common::NodePortConfig> = Array::pinned(1, 0);

/// NodePort's settings, ports in host byte order; `None` while NodePort is off.
#[derive(Clone, Copy)]
pub struct NodePort {
    pub underlay_ifindex: u32,
    pub underlay_mac: [u8; 6],
    pub snat_addr: u32,
    pub node_addr: u32,
    pub port_first: u16,
    pub port_last: u16,
}

#[inline(always)]
pub fn nodeport() -> Option<NodePort> {
    let raw = NODEPORT_CONFIG_V1.get(0).copied()?;
    if raw.underlay_ifindex == 0 {
        return None;
    }
    Some(NodePort {
        underlay_ifindex: raw.underlay_ifindex,
        underlay_mac: raw.underlay_mac,
        snat_addr: raw.snat_addr,
        node_addr: raw.node_addr,
        port_first: u16::from_be(raw.port_first),
        port_last: u16::from_be(raw.port_last),
    })
}

/// The socket-level load balancer's reverse entries (see `crate::sock`).
#[map]
pub static SOCK_REV4_V1: LruHashMap<skiff_ebpf_common::SockRev4Key, RevNat4> =
    LruHashMap::pinned(skiff_ebpf_common::capacity::SOCK_REV, 0);

/// The socket-level load balancer's session affinity (see `crate::sock`).
#[map]
pub static SOCK_AFFINITY4_V1: LruHashMap<skiff_ebpf_common::SockAffinity4Key, Affinity4Value> =
    LruHashMap::pinned(capacity::AFFINITY, 0);

/// LoadBalancer addresses this node answers ARP for (see `crate::arp`); the value is
/// unused (0).
#[map]
pub static ANNOUNCED4_V1: HashMap<u32, u32> = HashMap::pinned(capacity::ANNOUNCED, 0);
