//! The datapaths `bench overlay` compares, each set up and torn down as a whole in the
//! bench's two node namespaces, and the check that a torn-down one left nothing (tunnel
//! devices, routes, tc filters, loaded programs) to change what the next mode measures.
//!
//! It touches nothing outside the bench's namespaces and pin directories.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use aya::programs::{ProgramInfo, loaded_programs};
use skiff_ebpf_common::pin;
use skiff_tests::{
    PinDir,
    netns::{ChildGuard, Netns, wait_until},
    topology::NodeTopology,
};

use super::Cluster;
use crate::lbsetup::start_agent_with;

/// The agent's VXLAN device (`skiff_node::overlay::device::VXLAN_DEVICE`).
const SKIFF_VXLAN: &str = "skiff-vxlan";
/// Flannel's VXLAN device (VNI 1).
const FLANNEL_VXLAN: &str = "flannel.1";

/// Skiff's programs by name, and their pins in a node's pin directory.
const PROGRAMS: [(&str, &str); 6] = [
    ("from_pod", pin::PROG_FROM_POD),
    ("to_pod", pin::PROG_TO_POD),
    ("from_overlay", pin::PROG_FROM_OVERLAY),
    ("to_overlay", pin::PROG_TO_OVERLAY),
    ("to_underlay", pin::PROG_TO_UNDERLAY),
    ("from_underlay", pin::PROG_FROM_UNDERLAY),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Datapath {
    /// Skiff's agents: the eBPF overlay and load balancer.
    Ebpf,
    /// Flannel's vxlan backend.
    KernelVxlan,
    /// A route per peer podCIDR via the peer's underlay address.
    PlainRouting,
}

impl Datapath {
    /// The tunnel device the datapath adds to each node, if any.
    pub(super) fn tunnel_device(self) -> Option<&'static str> {
        match self {
            Datapath::Ebpf => Some(SKIFF_VXLAN),
            Datapath::KernelVxlan => Some(FLANNEL_VXLAN),
            Datapath::PlainRouting => None,
        }
    }
}

/// One of Skiff's programs loaded by a node's agent.
pub(super) struct ProgramPin {
    /// `<program>@n<node>`.
    pub label: String,
    pub path: PathBuf,
    pub id: u32,
}

/// The agents of the eBPF datapath. Dropping it kills them and removes their pins, which
/// detaches the programs (their links are held by the pins alone).
pub(super) struct EbpfOverlay {
    agents: Vec<ChildGuard>,
    _pins: Vec<PinDir>,
    pub programs: Vec<ProgramPin>,
}

/// The datapath that is up.
pub(super) enum Active {
    Ebpf(EbpfOverlay),
    KernelVxlan,
    PlainRouting,
}

impl Active {
    pub(super) fn up(c: &Cluster, datapath: Datapath) -> Result<Self> {
        Ok(match datapath {
            Datapath::Ebpf => Active::Ebpf(ebpf_up(c)?),
            Datapath::KernelVxlan => {
                kernel_vxlan_up(c)?;
                Active::KernelVxlan
            }
            Datapath::PlainRouting => {
                plain_routing_up(c)?;
                Active::PlainRouting
            }
        })
    }

    pub(super) fn datapath(&self) -> Datapath {
        match self {
            Active::Ebpf(_) => Datapath::Ebpf,
            Active::KernelVxlan => Datapath::KernelVxlan,
            Active::PlainRouting => Datapath::PlainRouting,
        }
    }

    /// Tears the datapath down, then checks that nothing of it is left.
    pub(super) fn down(self, c: &Cluster) -> Result<()> {
        let programs = match self {
            Active::Ebpf(overlay) => ebpf_down(c, overlay)?,
            Active::KernelVxlan => {
                for node in c.nodes() {
                    sh(&node.node, &format!("ip link del {FLANNEL_VXLAN}"))?;
                }
                Vec::new()
            }
            Active::PlainRouting => {
                for (node, peer) in pairs(c) {
                    sh(&node.node, &format!("ip route del {}", pod_cidr(peer)))?;
                }
                Vec::new()
            }
        };
        check_clean(c, &programs)
    }
}

fn ebpf_up(c: &Cluster) -> Result<EbpfOverlay> {
    let mut overlay = EbpfOverlay { agents: Vec::new(), _pins: Vec::new(), programs: Vec::new() };
    for node in c.nodes() {
        let extra = [
            "--manifests".to_owned(),
            c.dir.0.join("manifests").display().to_string(),
            "--nodes".into(),
            c.dir.0.join("nodes.yaml").display().to_string(),
            "--socket-lb-cgroup".into(),
            c.pod_cgroup(node.index).display().to_string(),
        ];
        let pins = PinDir::new(&node.tag);
        overlay.agents.push(start_agent_with(node, &c.bin, &pins.path, &extra)?);
        // As skiff-cni does for the pods of a cluster: the programs deliver packets
        // for these pods straight into them (redirect_peer), not through the node's
        // routing.
        node.register_endpoints(&pins.path).context("writing the pods into the endpoints map")?;
        for (name, pin) in PROGRAMS {
            let path = pins.path.join(pin);
            if !path.exists() {
                continue;
            }
            let info = ProgramInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
            overlay.programs.push(ProgramPin { label: format!("{name}@n{}", node.index), path, id: info.id() });
        }
        overlay._pins.push(pins);
    }
    if overlay.programs.is_empty() {
        bail!("the agents pinned none of Skiff's programs");
    }
    Ok(overlay)
}

/// Stops the agents and removes what they made; returns the ids of their programs, which
/// must be gone from the kernel once the pins are.
fn ebpf_down(c: &Cluster, mut overlay: EbpfOverlay) -> Result<Vec<u32>> {
    for agent in &mut overlay.agents {
        agent.kill();
    }
    for node in c.nodes() {
        sh(&node.node, &format!("ip link del {SKIFF_VXLAN}"))?;
    }
    let programs = overlay.programs.iter().map(|p| p.id).collect();
    drop(overlay);
    Ok(programs)
}

/// Flannel's vxlan backend, by hand: `flannel.1` with VNI 1 on port 8472, the node's
/// podCIDR network address on it, and for each peer a permanent neighbour entry for the
/// peer's VTEP address, an FDB entry to its underlay address, and a route to its podCIDR.
fn kernel_vxlan_up(c: &Cluster) -> Result<()> {
    let mut macs = Vec::new();
    for n in c.nodes() {
        sh(
            &n.node,
            &format!(
                "ip link add {FLANNEL_VXLAN} type vxlan id 1 local {} dstport 8472 nolearning dev eth0 && \
                 ip link set {FLANNEL_VXLAN} mtu 1450 up && ip addr add 10.244.{}.0/32 dev {FLANNEL_VXLAN}",
                n.underlay_ip(),
                n.index
            ),
        )?;
        let link = sh(&n.node, &format!("ip -o link show {FLANNEL_VXLAN}"))?;
        let mac = link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1);
        macs.push((n.index, mac.context("flannel.1 has no MAC address")?.to_owned()));
    }
    for (node, peer) in pairs(c) {
        let mac = &macs.iter().find(|(i, _)| *i == peer.index).context("a peer without a VTEP")?.1;
        sh(
            &node.node,
            &format!(
                "ip neigh replace 10.244.{p}.0 lladdr {mac} dev {FLANNEL_VXLAN} nud permanent && \
                 bridge fdb append {mac} dev {FLANNEL_VXLAN} dst {ul} && \
                 ip route replace {cidr} via 10.244.{p}.0 dev {FLANNEL_VXLAN} onlink",
                p = peer.index,
                ul = peer.underlay_ip(),
                cidr = pod_cidr(peer),
            ),
        )?;
    }
    Ok(())
}

/// No encapsulation: each node routes the peer's podCIDR to the peer's underlay address,
/// as on one L2 segment (flannel's host-gw). Pods keep their MTU, so packets carry the
/// same payload as in the overlays.
fn plain_routing_up(c: &Cluster) -> Result<()> {
    for (node, peer) in pairs(c) {
        sh(&node.node, &format!("ip route add {} via {} dev eth0", pod_cidr(peer), peer.underlay_ip()))?;
    }
    Ok(())
}

/// `(node, peer)` for each ordered pair of nodes.
fn pairs(c: &Cluster) -> [(&NodeTopology, &NodeTopology); 2] {
    [(&c.n1, &c.n2), (&c.n2, &c.n1)]
}

fn pod_cidr(node: &NodeTopology) -> String {
    format!("10.244.{}.0/24", node.index)
}

/// Fails, naming each, if anything of a datapath is in the nodes: a VXLAN device, a route
/// beyond the node's own pods and the underlay subnet, a tc filter on the underlay or pod
/// interfaces, or one of `programs` (ids) still loaded.
pub(super) fn check_clean(c: &Cluster, programs: &[u32]) -> Result<()> {
    let mut left = Vec::new();
    for node in c.nodes() {
        let ns = &node.node;
        for dev in vxlan_devices(&sh(ns, "ip -d link show")?) {
            left.push(format!("{}: VXLAN device {dev}", ns.name));
        }
        let [a, b, c3, _] = node.underlay_ip().octets();
        let allowed: Vec<String> =
            node.pods.iter().map(|p| p.ip.to_string()).chain([format!("{a}.{b}.{c3}.0/24")]).collect();
        for route in unexpected_routes(&sh(ns, "ip route show")?, &allowed) {
            left.push(format!("{}: route {route}", ns.name));
        }
        for dev in std::iter::once("eth0".to_owned()).chain(node.host_interfaces()) {
            for hook in ["ingress", "egress"] {
                let filters = sh(ns, &format!("tc filter show dev {dev} {hook}"))?;
                if !filters.trim().is_empty() {
                    left.push(format!("{}: tc {hook} filter on {dev}: {}", ns.name, filters.trim()));
                }
            }
        }
    }
    // Programs go once their last reference does, which the kernel may finish a moment
    // after the pins are removed.
    let loaded = || -> Vec<u32> {
        let ids: Vec<u32> = loaded_programs().filter_map(Result::ok).map(|p| p.id()).collect();
        programs.iter().copied().filter(|id| ids.contains(id)).collect()
    };
    if !programs.is_empty() && !wait_until(Duration::from_secs(10), || loaded().is_empty()) {
        left.push(format!("BPF programs still loaded 10 s after the agents stopped: ids {:?}", loaded()));
    }
    if !left.is_empty() {
        bail!("a datapath left this behind: {}", left.join("; "));
    }
    Ok(())
}

/// Names of the VXLAN devices in `ip -d link show` output.
pub(super) fn vxlan_devices(links: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut current = None;
    for line in links.lines() {
        if !line.starts_with(char::is_whitespace) {
            // `5: flannel.1: <...>` or `7: eth0@if6: <...>`
            current = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_owned());
        } else if line.trim_start().starts_with("vxlan ")
            && let Some(name) = current.take()
        {
            found.push(name);
        }
    }
    found
}

/// Lines of `ip route show` whose destination is not in `allowed`.
pub(super) fn unexpected_routes(routes: &str, allowed: &[String]) -> Vec<String> {
    routes
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.split_whitespace().next().is_some_and(|dst| allowed.iter().any(|a| a == dst)))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Runs a shell line in `ns`; its stdout, or an error with its stderr.
fn sh(ns: &Netns, line: &str) -> Result<String> {
    let out = ns.sh_output(line);
    if !out.status.success() {
        bail!("`{line}` in {} failed ({}): {}", ns.name, out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
