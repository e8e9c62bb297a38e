//! The overlay as a role of the agent: it sets up the node's VXLAN device and the
//! programs on it once, then takes each new set of nodes from its source and syncs the
//! overlay settings (this node's podCIDR), the CNI configuration that follows from
//! them, and the nodes map (see `runner` for when).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use skiff_datapath::{Ipv4Net, cidr, cni};
use skiff_ebpf_common::{MasqConfig, NodePortConfig, OverlayConfig};
use tracing::{error, info, warn};

use super::device::{self, LinkOps, Rtnetlink};
use super::reconciler::{AyaNodesMap, NodesReconciler};
use super::source::NodeNet;
use crate::datapath::{self, Datapath, Prog};
use crate::runner::{Role, SyncReason};

/// What the overlay role needs to know about its node.
#[derive(Debug, Clone)]
pub struct OverlaySettings {
    pub node_name: String,
    pub pin_dir: PathBuf,
    /// The cluster CIDR, cut into one podCIDR per node.
    pub cluster_cidr: Ipv4Net,
    /// The interface VXLAN runs over (its MTU sets the overlay's).
    pub underlay_interface: String,
    /// Where to write this node's CNI conflist, once its podCIDR is known.
    pub cni_conf_dir: Option<PathBuf>,
    /// Where to install skiff-cni and loopback.
    pub cni_bin_dir: Option<PathBuf>,
    /// skiff-cni's data directory (IPAM state), written into the conflist.
    pub cni_data_dir: PathBuf,
    /// Masquerade pod traffic that leaves the cluster network behind the underlay
    /// interface's address (flannel's `--ip-masq`).
    pub ip_masq: bool,
    /// NodePort's fast path at XDP on the underlay interface (`--nodeport-xdp`).
    pub nodeport_xdp: bool,
}

/// The overlay role: owns the VXLAN device's settings, the nodes map and the conflist.
pub struct OverlayRole {
    settings: OverlaySettings,
    vxlan_ifindex: u32,
    /// The underlay interface (where NodePort replies leave and ARP answers come
    /// from); `None` while it has no IPv4 address (then the underlay programs are not
    /// attached and NodePort is off).
    underlay: Option<Underlay>,
    mtu: u32,
    reconciler: NodesReconciler<AyaNodesMap>,
    /// The latest set of nodes from the source.
    nodes: Vec<NodeNet>,
    /// This node's podCIDR as last written to the overlay settings.
    local_pod_cidr: Option<Ipv4Net>,
}

impl OverlayRole {
    /// Sets up the VXLAN device, attaches the overlay programs to it and installs the
    /// CNI plugins; the nodes come later, from the source.
    pub fn start(settings: OverlaySettings, datapath: &mut Datapath) -> Result<Self> {
        let cluster = settings.cluster_cidr.trunc();
        let mut link_ops = Rtnetlink::new().context("opening a netlink socket")?;
        let (vxlan_ifindex, mtu) = device::setup(&mut link_ops, &settings.underlay_interface, cluster)
            .context("setting up the VXLAN device")?;
        for prog in [Prog::FromOverlay, Prog::ToOverlay] {
            let how = datapath.attach(prog, device::VXLAN_DEVICE)?;
            info!(program = prog.name(), ?how, "attached to the VXLAN device");
        }
        info!(device = device::VXLAN_DEVICE, mtu, cluster_cidr = %cluster, "overlay device ready");
        let underlay = setup_underlay(&settings, &mut link_ops, datapath)?;
        if let Some(bin_dir) = &settings.cni_bin_dir {
            let plugin = cni::plugin_beside_current_exe().context("finding skiff-cni beside skiff-node")?;
            cni::install_binary(&plugin, bin_dir)?;
            cni::install_loopback(bin_dir)?;
            info!(bin_dir = %bin_dir.display(), "CNI plugins installed");
        }
        let reconciler = NodesReconciler::new(&settings.node_name, AyaNodesMap::open(&settings.pin_dir)?);
        Ok(Self { settings, vxlan_ifindex, underlay, mtu, reconciler, nodes: Vec::new(), local_pod_cidr: None })
    }

    /// Writes this node's CNI configuration, which containerd picks up on its own.
    fn write_cni_config(&self, conf_dir: &Path, pod_cidr: Ipv4Net) {
        let config = cni::NodeNetConfig {
            pod_cidr,
            mtu: self.mtu,
            bpffs_dir: self.settings.pin_dir.clone(),
            data_dir: self.settings.cni_data_dir.clone(),
        };
        match cni::write_conflist(conf_dir, &config) {
            Ok(path) => info!(path = %path.display(), %pod_cidr, mtu = self.mtu, "CNI configuration written"),
            Err(e) => {
                error!(conf_dir = %conf_dir.display(), error = %e, "cannot write the CNI configuration; pods cannot start")
            }
        }
    }

    /// Points the programs at this node's podCIDR when it changed. Returns whether that
    /// failed (and must be retried).
    fn sync_local_pod_cidr(&mut self) -> bool {
        let local = self.nodes.iter().find(|n| n.name == self.settings.node_name).map(|n| n.pod_cidr);
        if local.is_none() {
            warn!(node = %self.settings.node_name, "this node is not in the nodes file; its pods cannot be reached from other nodes");
        }
        if local == self.local_pod_cidr {
            return false;
        }
        let (local_pod_net, local_pod_mask) = local.map(cidr::to_map).unwrap_or((u32::MAX, u32::MAX));
        let (cluster_net, cluster_mask) = cidr::to_map(self.settings.cluster_cidr.trunc());
        let config = OverlayConfig {
            vxlan_ifindex: self.vxlan_ifindex,
            vni: skiff_ebpf_common::DEFAULT_VNI,
            local_pod_net,
            local_pod_mask,
            cluster_net,
            cluster_mask,
        };
        let written = datapath::set_overlay_config(&self.settings.pin_dir, config)
            .and_then(|()| datapath::set_nodeport_config(&self.settings.pin_dir, self.nodeport_config(local)))
            .map_err(anyhow::Error::from)
            .and_then(|()| self.own_pod_address(local));
        match written {
            Ok(()) => {
                self.local_pod_cidr = local;
                info!(pod_cidr = ?local.map(|c| c.to_string()), "overlay configured");
                if let (Some(conf_dir), Some(cidr)) = (&self.settings.cni_conf_dir, local) {
                    self.write_cni_config(conf_dir, cidr);
                }
                false
            }
            Err(e) => {
                error!(error = %e, "cannot write the overlay settings; will retry");
                true
            }
        }
    }
}

/// The node's own address in its podCIDR: the first host address (skiff-cni hands out
/// addresses from the second on). Every node routes it into the tunnel toward this one,
/// so it is the source of this node's own traffic to pods elsewhere: their replies come
/// back through the tunnel.
fn node_pod_addr(pod_cidr: Ipv4Net) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(pod_cidr.network()) + 1)
}

/// The source of NodePort flows this node sends to backends on other nodes: the
/// podCIDR's network address, which no pod and none of the node's own sockets use, and
/// whose replies come back through the tunnel too. Not [`node_pod_addr`]: those flows
/// keep the client's port where they can, a port from the same ephemeral range the
/// node's own connections take theirs from, so a NodePort flow and a connection of the
/// node to the same backend could share a reply address, and the flow's conntrack entry
/// would take the connection's replies.
fn nodeport_snat_addr(pod_cidr: Ipv4Net) -> std::net::Ipv4Addr {
    pod_cidr.network()
}

impl OverlayRole {
    /// Gives the VXLAN device this node's podCIDR address and makes it the source of
    /// the node's own traffic into the cluster network (as flannel's `flannel.1`
    /// address): otherwise a pod on another node would answer the node's underlay
    /// address, and its reply would be masqueraded on the way.
    fn own_pod_address(&self, pod_cidr: Option<Ipv4Net>) -> Result<()> {
        let Some(cidr) = pod_cidr else { return Ok(()) };
        let addr = node_pod_addr(cidr);
        let cluster = self.settings.cluster_cidr.trunc();
        // The netlink handle blocks on a runtime of its own, which cannot run inside the
        // agent's: a thread of its own for this rare change (a new podCIDR).
        std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                let mut link_ops = Rtnetlink::new().context("opening a netlink socket")?;
                link_ops.ensure_host_address(device::VXLAN_DEVICE, addr)?;
                link_ops.ensure_route(cluster, device::VXLAN_DEVICE, Some(addr))?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the netlink thread panicked")))
        })
    }

    /// NodePort's settings for this node's podCIDR ([`nodeport_snat_addr`] is the source
    /// of flows to another node's backend). Off without a podCIDR or an underlay address.
    fn nodeport_config(&self, pod_cidr: Option<Ipv4Net>) -> NodePortConfig {
        let (Some(cidr), Some(underlay)) = (pod_cidr, self.underlay) else {
            return NodePortConfig::default();
        };
        let snat = nodeport_snat_addr(cidr);
        NodePortConfig {
            underlay_ifindex: underlay.ifindex,
            underlay_mac: underlay.mac,
            _pad: [0; 2],
            snat_addr: skiff_ebpf_common::addr_to_map(snat.octets()),
            node_addr: skiff_ebpf_common::addr_to_map(underlay.addr.octets()),
            port_first: skiff_ebpf_common::port_to_map(skiff_ebpf_common::DEFAULT_NODE_PORT_FIRST),
            port_last: skiff_ebpf_common::port_to_map(skiff_ebpf_common::DEFAULT_NODE_PORT_LAST),
        }
    }
}

/// The node's underlay interface.
#[derive(Clone, Copy, Debug)]
struct Underlay {
    ifindex: u32,
    mac: [u8; 6],
    addr: std::net::Ipv4Addr,
}

impl Underlay {
    fn of(link_ops: &mut Rtnetlink, interface: &str, addr: std::net::Ipv4Addr) -> Result<Self> {
        let (ifindex, mac) = link_ops.index_and_mac(interface)?;
        Ok(Self { ifindex, mac, addr })
    }
}

/// Attaches the underlay interface's programs (NodePort and the masquerade) and points
/// the masquerade at the interface's address; with `--ip-masq=false` it clears the
/// masquerade's settings, which turns that part into a pass-through (a restarted agent
/// may find it attached). Returns the interface, `None` if it has no IPv4 address (then
/// nothing is attached: no NodePort, no masquerade).
fn setup_underlay(
    settings: &OverlaySettings,
    link_ops: &mut Rtnetlink,
    datapath: &mut Datapath,
) -> Result<Option<Underlay>> {
    let interface = &settings.underlay_interface;
    let Some(node_addr) = link_ops.ipv4_address(interface)? else {
        warn!(
            interface,
            "the underlay interface has no IPv4 address: no NodePort and no masquerade, so pods cannot reach addresses outside the cluster network"
        );
        datapath::set_masq_config(&settings.pin_dir, MasqConfig::default())?;
        datapath::set_nodeport_config(&settings.pin_dir, NodePortConfig::default())?;
        return Ok(None);
    };
    for prog in [Prog::ToUnderlay, Prog::FromUnderlay] {
        let how = datapath.attach(prog, interface)?;
        info!(program = prog.name(), interface, ?how, "attached to the underlay interface");
    }
    if settings.nodeport_xdp {
        let how = datapath.attach_xdp(interface)?;
        info!(interface, ?how, "NodePort's fast path attached at XDP on the underlay interface");
    } else {
        datapath.detach_xdp(interface)?;
    }
    if !settings.ip_masq {
        datapath::set_masq_config(&settings.pin_dir, MasqConfig::default())?;
        return Underlay::of(link_ops, interface, node_addr).map(Some);
    }
    let (cluster_net, cluster_mask) = cidr::to_map(settings.cluster_cidr.trunc());
    let config = MasqConfig {
        node_addr: skiff_ebpf_common::addr_to_map(node_addr.octets()),
        cluster_net,
        cluster_mask,
        port_first: skiff_ebpf_common::port_to_map(skiff_ebpf_common::DEFAULT_MASQ_PORT_FIRST),
        port_last: skiff_ebpf_common::port_to_map(skiff_ebpf_common::DEFAULT_MASQ_PORT_LAST),
    };
    datapath::set_masq_config(&settings.pin_dir, config)?;
    info!(%node_addr, "pod traffic leaving the cluster network is masqueraded");
    Underlay::of(link_ops, interface, node_addr).map(Some)
}

impl Role for OverlayRole {
    /// The whole set of nodes, each time it changes.
    type Change = Vec<NodeNet>;

    fn apply(&mut self, nodes: Vec<NodeNet>) {
        self.nodes = nodes;
    }

    fn sync(&mut self, _reason: SyncReason) -> bool {
        let failed = self.sync_local_pod_cidr();
        match self.reconciler.sync(&self.nodes) {
            Ok(0) => failed,
            Ok(changes) => {
                info!(changes, nodes = self.nodes.len(), "nodes map synced");
                failed
            }
            Err(e) => {
                error!(error = %e, "cannot read the nodes map; will retry");
                true
            }
        }
    }
}
