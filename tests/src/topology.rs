//! A one-node pod topology: a "node" namespace with one veth per pod namespace, routed
//! like a real node (each pod a /32 behind its host-side veth, the node as gateway).
//!
//! ```text
//!   pod ns "client"  eth0 10.244.1.10/32 ── skv0 ┐
//!   pod ns "b1"      eth0 10.244.1.11/32 ── skv1 ├─ node ns (gateway 10.244.1.1 on lo,
//!   ...                                          ┘          ip_forward=1, no default route)
//! ```
//! The node namespace has no default route: a packet to an address nobody owns dies
//! there instead of leaving the machine.

use std::net::Ipv4Addr;

use crate::netns::Netns;

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

/// One pod: its namespace, address, and the host-side interface in the node namespace.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub host_if: String,
}

/// The node namespace and its pods; everything is removed on drop.
#[derive(Debug)]
pub struct NodeTopology {
    pub tag: String,
    pub pods: Vec<Pod>,
    pub node: Netns,
}

impl NodeTopology {
    /// Builds the node namespace and one pod namespace per name, with addresses
    /// 10.244.1.10, .11, ... in order.
    pub fn new(tag: &str, pod_names: &[&str]) -> Self {
        let node = Netns::new(&format!("sk{tag}-node"));
        node.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 && \
             ip addr add {GATEWAY}/32 dev lo"
        ));
        let mut topo = Self { tag: tag.to_owned(), pods: Vec::new(), node };
        for (i, name) in pod_names.iter().enumerate() {
            topo.add_pod(name, Ipv4Addr::new(10, 244, 1, 10 + i as u8), &format!("skv{i}"));
        }
        topo
    }

    fn add_pod(&mut self, name: &str, ip: Ipv4Addr, host_if: &str) {
        let ns = Netns::new(&format!("sk{}-{name}", self.tag));
        self.node.sh(&format!(
            "ip link add {host_if} type veth peer name eth0 netns {pod} && ip link set {host_if} up && \
             sysctl -qw net.ipv4.conf.{host_if}.rp_filter=0 && ip route add {ip}/32 dev {host_if}",
            pod = ns.name
        ));
        ns.sh(&format!(
            "ip addr add {ip}/32 dev eth0 && ip link set eth0 up && \
             ip route add {GATEWAY} dev eth0 scope link && ip route add default via {GATEWAY} dev eth0"
        ));
        self.pods.push(Pod { name: name.to_owned(), ns, ip, host_if: host_if.to_owned() });
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Host-side interface names, for the agent's `--pod-interface` flags.
    pub fn host_interfaces(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.host_if.clone()).collect()
    }
}
