//! The `skiff-node` command line and the agent's main loop.
//!
//! `run` ties the roles together: the datapath is loaded (or adopted) first, then the
//! pod interfaces get the "from pod" program, then the proxy loop feeds Service and
//! EndpointSlice changes to the reconciler until a signal stops the agent. Stopping
//! leaves every pin in place, so traffic keeps flowing until the next agent adopts it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use skiff_datapath::{Ipv4Net, Pins, cidr, cni};
use skiff_ebpf_common::{LbConfig, OverlayConfig};
use tracing::{error, info, warn};

use crate::{
    datapath::{self, Datapath, MapSizes, Prog},
    overlay::{
        device::{self, Rtnetlink},
        reconciler::{AyaNodesMap, NodesReconciler},
        source::{NodeSource, NodesFileSource},
    },
    proxy::{
        maps::{AyaLbMaps, render_dump},
        reconciler::LbReconciler,
        source::{ManifestDirSource, ServiceSource},
    },
};

#[derive(Debug, Parser)]
#[command(name = "skiff-node", version, about = "Skiff node agent: eBPF service proxy and datapath")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the datapath and keep the Service maps in line with the desired state.
    Run(RunArgs),
    /// Print the datapath's counters.
    Stats(PinArgs),
    /// Print the Service, backend and reverse-NAT maps.
    Dump(PinArgs),
    /// Remove every pin of this node: detaches the programs and drops the maps.
    Reset(PinArgs),
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// The node's bpffs directory.
    #[arg(long, default_value = "/sys/fs/bpf/skiff/node")]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// This node's name.
    #[arg(long, default_value = "node")]
    pub node_name: String,
    /// The node's bpffs directory (default: /sys/fs/bpf/skiff/<node-name>).
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// A directory of Service and EndpointSlice manifests (YAML or JSON), watched for
    /// changes. Stands in for the API server until the control plane exists. Without
    /// it the proxy role is off.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// A file listing the cluster's nodes (name, podCIDR, underlayIP), watched for
    /// changes; stands in for the Node watch. Without it the overlay role is off.
    #[arg(long)]
    pub nodes: Option<PathBuf>,
    /// The underlay interface VXLAN runs over (its MTU sets the overlay's).
    #[arg(long, default_value = "eth0")]
    pub underlay_interface: String,
    /// Where containerd reads CNI configuration: the agent writes this node's
    /// conflist there (podCIDR, MTU, bpffs path, data dir). Needs the overlay role.
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// Where containerd finds CNI plugins: the agent installs skiff-cni (from beside its
    /// own binary) and loopback there.
    #[arg(long)]
    pub cni_bin_dir: Option<PathBuf>,
    /// skiff-cni's data directory (IPAM state).
    #[arg(long, default_value = "/var/lib/skiff/cni")]
    pub cni_data_dir: PathBuf,
    /// The cluster CIDR, cut into one podCIDR per node.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: Ipv4Net,
    /// A pod's host-side interface to attach "from pod" to (repeatable).
    #[arg(long = "pod-interface")]
    pub pod_interfaces: Vec<String>,
    /// How often to look for changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub sync_interval_ms: u64,
    /// Idle timeout of UDP flows, in seconds.
    #[arg(long, default_value_t = skiff_ebpf_common::DEFAULT_UDP_TIMEOUT_S)]
    pub udp_timeout_s: u32,
    /// Idle timeout of established TCP flows, in seconds.
    #[arg(long, default_value_t = skiff_ebpf_common::DEFAULT_TCP_TIMEOUT_S)]
    pub tcp_timeout_s: u32,
    /// How long a TCP flow lives after FIN or RST, in seconds.
    #[arg(long, default_value_t = skiff_ebpf_common::DEFAULT_TCP_CLOSING_TIMEOUT_S)]
    pub tcp_closing_timeout_s: u32,
    /// The Service CIDR: only packets to it are looked up as Service traffic.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: Ipv4Net,
    /// Capacity of the services map when it is first created.
    #[arg(long, default_value_t = skiff_ebpf_common::capacity::SERVICES)]
    pub services_max: u32,
    /// Capacity of the backends map when it is first created.
    #[arg(long, default_value_t = skiff_ebpf_common::capacity::BACKENDS)]
    pub backends_max: u32,
    /// Capacity of the conntrack map when it is first created.
    #[arg(long, default_value_t = skiff_ebpf_common::capacity::CT)]
    pub ct_max: u32,
    /// A file to create once the first sync is done (for scripts and tests).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Sync once and exit.
    #[arg(long)]
    pub once: bool,
}

pub fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal; a log file must stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Stats(args) => {
            for (name, value) in datapath::read_stats(&args.pin_dir)? {
                println!("{name}: {value}");
            }
            Ok(())
        }
        Command::Dump(args) => {
            let maps = AyaLbMaps::open(&args.pin_dir).context("opening the Service maps")?;
            print!("{}", render_dump(&maps)?);
            Ok(())
        }
        Command::Reset(args) => {
            datapath::remove_pins(&args.pin_dir).with_context(|| format!("removing {}", args.pin_dir.display()))?;
            info!(pin_dir = %args.pin_dir.display(), "datapath removed");
            Ok(())
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let pin_dir = args.pin_dir.clone().unwrap_or_else(|| Pins::for_node(&args.node_name).dir().to_path_buf());
    let sizes = MapSizes { services: args.services_max, backends: args.backends_max, ct: args.ct_max };
    let mut datapath = Datapath::load(&pin_dir, sizes).context("loading the datapath")?;
    let (service_net, service_mask) = cidr::to_map(args.service_cidr);
    datapath.set_config(LbConfig {
        tcp_timeout_s: args.tcp_timeout_s,
        tcp_closing_timeout_s: args.tcp_closing_timeout_s,
        udp_timeout_s: args.udp_timeout_s,
        hairpin_addr: 0,
        service_net,
        service_mask,
    })?;
    for interface in &args.pod_interfaces {
        match datapath.attach_from_pod(interface) {
            Ok(how) => info!(interface, ?how, "from_pod attached"),
            Err(e) => error!(interface, error = %e, "cannot attach from_pod; traffic of this pod is not load-balanced"),
        }
    }

    let mut proxy = match &args.manifests {
        Some(dir) => {
            let maps = AyaLbMaps::open(&pin_dir).context("opening the Service maps")?;
            let reconciler = LbReconciler::adopt(maps).context("adopting the existing Service maps")?;
            Some((reconciler, ManifestDirSource::new(dir)))
        }
        None => None,
    };
    let mut overlay = match &args.nodes {
        Some(file) => Some(Overlay::start(&args, &pin_dir, file, &mut datapath)?),
        None => None,
    };
    info!(node = %args.node_name, pin_dir = %pin_dir.display(), proxy = proxy.is_some(), overlay = overlay.is_some(), "agent started");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(args.sync_interval_ms.max(10)));
        let mut first = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
            }
            if let Some((reconciler, source)) = &mut proxy {
                match source.poll() {
                    Ok(events) => {
                        for event in events {
                            reconciler.apply(event);
                        }
                    }
                    Err(e) => warn!(error = %e, "reading the Service source failed; keeping the last state"),
                }
                let summary = reconciler.sync();
                if summary.changed() {
                    info!(%summary, "service maps synced");
                }
            }
            if let Some(overlay) = &mut overlay {
                overlay.poll();
            }
            if first {
                first = false;
                if let Some(path) = &args.ready_file {
                    std::fs::write(path, b"ready\n").with_context(|| format!("writing {}", path.display()))?;
                }
            }
            if args.once {
                break;
            }
        }
        info!("agent stopping; the datapath stays pinned and keeps forwarding");
        anyhow::Ok(())
    })
}

/// The overlay role's state in the main loop.
struct Overlay {
    node_name: String,
    pin_dir: PathBuf,
    cluster: Ipv4Net,
    vxlan_ifindex: u32,
    source: NodesFileSource,
    reconciler: NodesReconciler<AyaNodesMap>,
    local_pod_cidr: Option<Ipv4Net>,
    mtu: u32,
    cni_conf_dir: Option<PathBuf>,
    cni_data_dir: PathBuf,
}

impl Overlay {
    /// Sets up the VXLAN device and attaches the overlay programs to it.
    fn start(args: &RunArgs, pin_dir: &Path, nodes_file: &Path, datapath: &mut Datapath) -> Result<Self> {
        let cluster = args.cluster_cidr.trunc();
        let mut link_ops = Rtnetlink::new().context("opening a netlink socket")?;
        let (vxlan_ifindex, mtu) =
            device::setup(&mut link_ops, &args.underlay_interface, cluster).context("setting up the VXLAN device")?;
        for prog in [Prog::FromOverlay, Prog::ToOverlay] {
            let how = datapath.attach(prog, device::VXLAN_DEVICE)?;
            info!(program = prog.name(), ?how, "attached to the VXLAN device");
        }
        info!(device = device::VXLAN_DEVICE, mtu, cluster_cidr = %cluster, "overlay device ready");
        if let Some(bin_dir) = &args.cni_bin_dir {
            let plugin = cni::plugin_beside_current_exe().context("finding skiff-cni beside skiff-node")?;
            cni::install_binary(&plugin, bin_dir)?;
            cni::install_loopback(bin_dir)?;
            info!(bin_dir = %bin_dir.display(), "CNI plugins installed");
        }
        let reconciler = NodesReconciler::new(&args.node_name, AyaNodesMap::open(pin_dir)?);
        let mut overlay = Self {
            node_name: args.node_name.clone(),
            pin_dir: pin_dir.to_path_buf(),
            cluster,
            vxlan_ifindex,
            source: NodesFileSource::new(nodes_file),
            reconciler,
            local_pod_cidr: None,
            mtu,
            cni_conf_dir: args.cni_conf_dir.clone(),
            cni_data_dir: args.cni_data_dir.clone(),
        };
        overlay.poll();
        Ok(overlay)
    }

    /// Writes this node's CNI configuration, which containerd picks up on its own.
    fn write_cni_config(&self, conf_dir: &Path, pod_cidr: Ipv4Net) {
        let config = cni::NodeNetConfig {
            pod_cidr,
            mtu: self.mtu,
            bpffs_dir: self.pin_dir.clone(),
            data_dir: self.cni_data_dir.clone(),
        };
        match cni::write_conflist(conf_dir, &config) {
            Ok(path) => info!(path = %path.display(), %pod_cidr, mtu = self.mtu, "CNI configuration written"),
            Err(e) => {
                error!(conf_dir = %conf_dir.display(), error = %e, "cannot write the CNI configuration; pods cannot start")
            }
        }
    }

    fn poll(&mut self) {
        let nodes = match self.source.poll() {
            Ok(Some(nodes)) => nodes,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "reading the nodes failed; keeping the last state");
                return;
            }
        };
        let local = nodes.iter().find(|n| n.name == self.node_name).map(|n| n.pod_cidr);
        if local.is_none() {
            warn!(node = %self.node_name, "this node is not in the nodes file; its pods cannot be reached from other nodes");
        }
        if local != self.local_pod_cidr {
            let (local_pod_net, local_pod_mask) = local.map(cidr::to_map).unwrap_or((u32::MAX, u32::MAX));
            let (cluster_net, cluster_mask) = cidr::to_map(self.cluster);
            let config = OverlayConfig {
                vxlan_ifindex: self.vxlan_ifindex,
                vni: skiff_ebpf_common::DEFAULT_VNI,
                local_pod_net,
                local_pod_mask,
                cluster_net,
                cluster_mask,
            };
            match datapath::set_overlay_config(&self.pin_dir, config) {
                Ok(()) => {
                    self.local_pod_cidr = local;
                    info!(pod_cidr = ?local.map(|c| c.to_string()), "overlay configured");
                    if let (Some(conf_dir), Some(cidr)) = (&self.cni_conf_dir, local) {
                        self.write_cni_config(conf_dir, cidr);
                    }
                }
                Err(e) => error!(error = %e, "cannot write the overlay settings"),
            }
        }
        match self.reconciler.sync(&nodes) {
            Ok(0) => {}
            Ok(changes) => info!(changes, nodes = nodes.len(), "nodes map synced"),
            Err(e) => error!(error = %e, "cannot read the nodes map"),
        }
    }
}
