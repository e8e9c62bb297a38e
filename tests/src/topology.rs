//! A one-node pod topology: a "node" namespace with one veth per pod namespace, routed
//! like a real node (each pod a /32 behind its host-side veth, the node as gateway).
//!
//! ```text
//!   pod ns "client"  eth0 10.244.1.10/32 ── skv0 ┐
//!   pod ns "b1"      eth0 10.244.1.11/32 ── skv1 ├─ node ns (gateway 10.244.1.1 on lo,
//!   ...                                          ┘          ip_forward=1, no default route)
//! ```
//! [`Underlay`] joins several such nodes (see [`NodeTopology::node_of_cluster`]) on a
//! bridge, for the overlay.
//!
//! The node namespace has no default route: a packet to an address nobody owns dies
//! there instead of leaving the machine.

use std::net::Ipv4Addr;

use crate::netns::Netns;

/// The gateway address of node 1's pods (`10.244.<node>.1` in general), on the node's lo.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

/// MTU of pod interfaces: what the CNI plugin gives pods on a 1500-byte underlay with
/// VXLAN's 50 bytes of overhead.
pub const POD_MTU: u32 = 1450;

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
    /// The node's number: its pods live in 10.244.<index>.0/24.
    pub index: u8,
    pub pods: Vec<Pod>,
    pub node: Netns,
}

impl NodeTopology {
    /// Builds the node namespace and one pod namespace per name, with addresses
    /// 10.244.1.10, .11, ... in order.
    pub fn new(tag: &str, pod_names: &[&str]) -> Self {
        Self::build(tag, &format!("sk{tag}-node"), 1, pod_names)
    }

    /// Node number `index` of a cluster: namespace `sk<tag>-n<index>`, pods in
    /// 10.244.<index>.0/24 named `sk<tag>-n<index>-<pod>`.
    pub fn node_of_cluster(tag: &str, index: u8, pod_names: &[&str]) -> Self {
        Self::build(&format!("{tag}-n{index}"), &format!("sk{tag}-n{index}"), index, pod_names)
    }

    fn build(tag: &str, node_ns: &str, index: u8, pod_names: &[&str]) -> Self {
        let node = Netns::new(node_ns);
        let gateway = Ipv4Addr::new(10, 244, index, 1);
        node.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 && \
             ip addr add {gateway}/32 dev lo"
        ));
        let mut topo = Self { tag: tag.to_owned(), index, pods: Vec::new(), node };
        for (i, name) in pod_names.iter().enumerate() {
            topo.add_pod(name, Ipv4Addr::new(10, 244, index, 10 + i as u8), &format!("skv{i}"));
        }
        topo
    }

    fn add_pod(&mut self, name: &str, ip: Ipv4Addr, host_if: &str) {
        let ns = Netns::new(&format!("sk{}-{name}", self.tag));
        let gateway = Ipv4Addr::new(10, 244, self.index, 1);
        self.node.sh(&format!(
            "ip link add {host_if} mtu {POD_MTU} type veth peer name eth0 mtu {POD_MTU} netns {pod} && \
             ip link set {host_if} up && \
             sysctl -qw net.ipv4.conf.{host_if}.rp_filter=0 && ip route add {ip}/32 dev {host_if}",
            pod = ns.name
        ));
        ns.sh(&format!(
            "ip addr add {ip}/32 dev eth0 && ip link set eth0 up && \
             ip route add {gateway} dev eth0 scope link && ip route add default via {gateway} dev eth0"
        ));
        self.pods.push(Pod { name: name.to_owned(), ns, ip, host_if: host_if.to_owned() });
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The node's underlay address once connected by [`Underlay::connect`].
    pub fn underlay_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 77, 10 + self.index)
    }

    /// Host-side interface names, for the agent's `--pod-interface` flags.
    pub fn host_interfaces(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.host_if.clone()).collect()
    }

    /// Writes each pod into the node's endpoints map under `pin_dir` (host veth index,
    /// both MACs), as skiff-cni does for the pods it sets up, so that the programs
    /// deliver packets for these pods straight into them (`bpf_redirect_peer`) as they
    /// do in a cluster; `--pod-interface` alone attaches the programs but knows no
    /// pod. Call it once the agent has loaded the datapath.
    #[cfg(feature = "datapath")]
    pub fn register_endpoints(&self, pin_dir: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context;
        let mut map = skiff_datapath::endpoints::EndpointsMap::open(&skiff_datapath::pins::Pins::new(pin_dir))?;
        for pod in &self.pods {
            let (ifindex, host_mac) = link(&self.node, &pod.host_if).with_context(|| format!("pod {}", pod.name))?;
            let (_, pod_mac) = link(&pod.ns, "eth0").with_context(|| format!("pod {}", pod.name))?;
            map.insert(pod.ip, skiff_ebpf_common::Endpoint4 { ifindex, flags: 0, pod_mac, host_mac })?;
        }
        Ok(())
    }
}

/// The index and MAC address of interface `name` in `ns`, from `ip -o link show`
/// (`5: skv0@if2: <...> ... link/ether aa:bb:cc:dd:ee:ff brd ...`).
#[cfg(feature = "datapath")]
fn link(ns: &Netns, name: &str) -> anyhow::Result<(u32, [u8; 6])> {
    use anyhow::Context;
    let line = ns.sh(&format!("ip -o link show dev {name}"));
    let index = line.split(':').next().unwrap_or_default().trim().parse().with_context(|| format!("`{line}`"))?;
    let mac = line.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).with_context(|| format!("`{line}`"))?;
    let bytes: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
    let mac: [u8; 6] = bytes.try_into().map_err(|_| anyhow::anyhow!("{name}: a MAC of 6 bytes in `{line}`"))?;
    Ok((index, mac))
}

/// Makes `br0` in `ns`: the bridge that stands for the physical network between hosts.
/// A wire runs no firewall, but where the kernel has br_netfilter (built in on these
/// machines, and on in every new namespace) each frame a bridge forwards goes through
/// the namespace's IP netfilter hooks: a few percent of the sending CPU in the overlay
/// bench, in every mode alike. So it is turned off here, where the kernel has it.
pub fn add_wire_bridge(ns: &Netns) {
    ns.sh("ip link add br0 type bridge && ip link set br0 up && \
         for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ ! -e \"$f\" ] || echo 0 > \"$f\"; done");
}

/// The underlay network between nodes: a bridge in a namespace of its own, each node
/// attached by a veth whose node end is `eth0` with 192.168.77.<10 + node>/24, MTU 1500.
/// No other address exists on it, and no namespace here has a default route.
#[derive(Debug)]
pub struct Underlay {
    pub ns: Netns,
}

impl Underlay {
    pub fn new(tag: &str) -> Self {
        let ns = Netns::new(&format!("sk{tag}-ul"));
        add_wire_bridge(&ns);
        Self { ns }
    }

    pub fn connect(&self, node: &NodeTopology) {
        let port = format!("ul{}", node.index);
        self.ns.sh(&format!(
            "ip link add {port} type veth peer name eth0 netns {node_ns} && ip link set {port} master br0 up",
            node_ns = node.node.name
        ));
        node.node.sh(&format!("ip addr add {}/24 dev eth0 && ip link set eth0 up", node.underlay_ip()));
    }

    /// A host on the underlay that is not a node (an API server, a machine outside the
    /// cluster): namespace `sk<tag>-<name>` with `ip`/24 on its `eth0`, and no route to
    /// the pods, so that pods only reach it when their traffic is masqueraded.
    pub fn attach_host(&self, tag: &str, name: &str, ip: Ipv4Addr) -> Netns {
        let ns = Netns::new(&format!("sk{tag}-{name}"));
        let port = format!("ul{name}");
        self.ns.sh(&format!(
            "ip link add {port} type veth peer name eth0 netns {host_ns} && ip link set {port} master br0 up",
            host_ns = ns.name
        ));
        ns.sh(&format!("ip addr add {ip}/24 dev eth0 && ip link set eth0 up"));
        ns
    }

    /// Cuts a node off the underlay (its link down) or reconnects it.
    pub fn set_link(&self, node: &NodeTopology, up: bool) {
        self.ns.sh(&format!("ip link set ul{} {}", node.index, if up { "up" } else { "down" }));
    }
}
