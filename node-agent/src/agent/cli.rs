//! The `skiff-node` command line: the flags of each subcommand and the dispatch to
//! them. `run` itself is the composition root in `agent/mod.rs`; the small
//! subcommands (stats, dump, reset) are done here.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use skiff_datapath::Ipv4Net;
use tracing::info;

use crate::{
    datapath,
    proxy::maps::{AyaLbMaps, render_dump},
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
    Run(Box<RunArgs>),
    /// Print the datapath's counters.
    Stats(PinArgs),
    /// Print the Service, backend and reverse-NAT maps.
    Dump(PinArgs),
    /// Remove every pin of this node: detaches the programs and drops the maps.
    Reset(PinArgs),
    /// What this node's datapath does with a Service: its frontends, the backends a new
    /// flow may pick and why, where each lives, and a client's conntrack entries.
    Trace(TraceArgs),
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The Service, as `namespace/name` (or `name` in `default`).
    pub service: String,
    /// A client address: its session-affinity and conntrack entries are shown.
    #[arg(long)]
    pub from: Option<std::net::Ipv4Addr>,
    /// Only the frontends on this port (a Service port or a node port).
    #[arg(long)]
    pub port: Option<u16>,
    /// This node's address, to show its node port frontends.
    #[arg(long)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// A kubeconfig to read the Service with (the node's own will do).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    #[command(flatten)]
    pub pins: PinArgs,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// The node's bpffs directory (in a DaemonSet pod, as `run` was given it).
    #[arg(long, env = "SKIFF_PIN_DIR", default_value = "/sys/fs/bpf/skiff/node")]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// This node's name. In a DaemonSet pod, `NODE_NAME` from the downward API
    /// (`spec.nodeName`).
    #[arg(long, env = "NODE_NAME", default_value = "node")]
    pub node_name: String,
    /// The node's bpffs directory (default: /sys/fs/bpf/skiff/<node-name>). The
    /// environment variable lets a DaemonSet pod name it with `$(NODE_NAME)` in it.
    #[arg(long, env = "SKIFF_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// A directory of Service and EndpointSlice manifests (YAML or JSON), watched for
    /// changes: the proxy's source for the demo and tests without an API server.
    /// Without it or --services-from-api the proxy role is off.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Take the proxy's Services and EndpointSlices from the API server (watched through
    /// reflectors) instead of a manifest directory; needs --kubeconfig or --in-cluster.
    #[arg(long, conflicts_with = "manifests", requires = "api")]
    pub services_from_api: bool,
    /// A file listing the cluster's nodes (name, podCIDR, underlayIP), watched for
    /// changes; stands in for the Node watch. Without it the overlay role is off.
    #[arg(long)]
    pub nodes: Option<PathBuf>,
    /// The underlay interface VXLAN runs over (its MTU sets the overlay's).
    #[arg(long, default_value = "eth0")]
    pub underlay_interface: String,
    /// Masquerade pods' traffic to addresses outside the cluster CIDR behind the
    /// underlay interface's address (needs the overlay role), so that pods reach the
    /// API server and other nodes' addresses, whose networks have no route to the pods.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ip_masq: bool,
    /// Translate NodePort and external-frontend packets at XDP on the underlay
    /// interface, sending those for other nodes' backends straight back into the
    /// tunnel (the tc path stays for the rest). Meant for a physical NIC. On a veth
    /// underlay (nodes in network namespaces) an XDP program makes the kernel turn off
    /// segmentation offload toward the node, which costs pod traffic across nodes about
    /// two thirds of its throughput, and the peer needs NAPI (`ethtool -K PEER gro on`)
    /// and the senders full checksums (`ethtool -K IF tx off`): hence off by default.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub nodeport_xdp: bool,
    /// Where containerd reads CNI configuration: the agent writes this node's
    /// conflist there (podCIDR, MTU, bpffs path, data dir). Needs the overlay role.
    #[arg(long, env = "SKIFF_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// Where containerd finds CNI plugins: the agent installs skiff-cni (from beside its
    /// own binary) and loopback there.
    #[arg(long, env = "SKIFF_CNI_BIN_DIR")]
    pub cni_bin_dir: Option<PathBuf>,
    /// skiff-cni's data directory (IPAM state).
    #[arg(long, env = "SKIFF_CNI_DATA_DIR", default_value = "/var/lib/skiff/cni")]
    pub cni_data_dir: PathBuf,
    /// The cluster CIDR, cut into one podCIDR per node.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: Ipv4Net,
    /// A pod's host-side interface to attach "from pod" to (repeatable).
    #[arg(long = "pod-interface")]
    pub pod_interfaces: Vec<String>,
    /// How often the file sources (--manifests, --nodes) look for changes, and the
    /// least time between two syncs of a role, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub sync_interval_ms: u64,
    /// The most time between two syncs of a role even without changes, in seconds: a
    /// sync re-asserts the desired state.
    #[arg(long, default_value_t = 30)]
    pub resync_interval_s: u64,
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
    /// Capacity of the conntrack map when it is first created. Each flow takes two
    /// entries; a full map evicts its least recently used entries.
    #[arg(long, default_value_t = skiff_ebpf_common::capacity::CT)]
    pub ct_max: u32,
    /// How often expired conntrack entries are removed (seconds; 0 never), so that the
    /// map holds live flows only and a burst of new ones does not evict idle live ones.
    #[arg(long, default_value_t = 30)]
    pub conntrack_gc_interval: u64,
    /// A kubeconfig for the API server, with this node's credentials (user
    /// `system:node:<node-name>`, group `system:nodes`). With it the agent registers
    /// the Node and renews its Lease; without it the node role is off.
    #[arg(long, group = "api")]
    pub kubeconfig: Option<PathBuf>,
    /// Reach the API server as the pod's ServiceAccount (token and CA from the mounted
    /// files, the server from KUBERNETES_SERVICE_HOST/PORT), for the datapath roles
    /// alone: no Node registration, no Lease, no kubelet. The agent of a DaemonSet pod
    /// (deploy/skiff-node.yaml) runs so, beside a kubelet-only agent on each node.
    #[arg(long, group = "api", conflicts_with_all = ["bootstrap_kubeconfig", "container_runtime_endpoint"])]
    pub in_cluster: bool,
    /// A kubeconfig with a bootstrap token (skiff-control writes one as
    /// `<data-dir>/bootstrap.kubeconfig`): when --kubeconfig has no valid certificate for
    /// this node, the agent asks for one with it and writes it into --kubeconfig.
    #[arg(long, requires = "kubeconfig")]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// The Maglev lookup table size (a prime; 100 × the backends of a Service with more
    /// than a hundredth as many takes the next prime above that instead). Maglev picks
    /// the backends of node ports and external addresses, and of any Service annotated
    /// `skiff.io/lb-algorithm: maglev`; each table takes this many Service map entries.
    #[arg(long, default_value_t = crate::proxy::maglev::DEFAULT_TABLE_SIZE, value_parser = parse_prime)]
    pub maglev_table_size: u16,
    /// Socket-level load balancing for the processes of this cgroup v2 directory and
    /// below (made if missing): their connections to a ClusterIP go straight to a
    /// backend at `connect()`, with no NAT or conntrack per packet. Give the node's root
    /// cgroup (e.g. /sys/fs/cgroup) to cover its host namespace, hostNetwork pods and
    /// pods; without it only pods' traffic is balanced, by the tc programs.
    #[arg(long)]
    pub socket_lb_cgroup: Option<PathBuf>,
    /// The node's InternalIP address, reported in the Node's status.
    #[arg(long)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// How many pods the node offers (its `pods` capacity).
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Take the overlay's nodes (podCIDR, InternalIP) from the API's Node objects instead
    /// of a nodes file; needs --kubeconfig. The CNI configuration follows this node's
    /// `spec.podCIDR`. Needs --kubeconfig or --in-cluster.
    #[arg(long, conflicts_with = "nodes", requires = "api")]
    pub nodes_from_api: bool,
    /// The CRI socket of the container runtime (containerd's). With it and --kubeconfig,
    /// the agent is the node's kubelet: it runs the pods bound to this node.
    #[arg(long, requires = "kubeconfig")]
    pub container_runtime_endpoint: Option<PathBuf>,
    /// The kubelet's directory for pod data (volumes, termination logs)
    /// (default: /var/lib/skiff/kubelet/<node-name>).
    #[arg(long)]
    pub root_dir: Option<PathBuf>,
    /// Where the local-path provisioner's volumes of this node live, announced to it in
    /// the Node's `skiff.io/local-path-dir` annotation; the directories of deleted
    /// volumes are removed from it (default: /var/lib/skiff/storage/<node-name>).
    #[arg(long)]
    pub local_path_dir: Option<PathBuf>,
    /// Where container logs go (default: /var/log/skiff/<node-name>/pods).
    #[arg(long)]
    pub pod_log_dir: Option<PathBuf>,
    /// The cluster DNS server written into pods' resolv.conf (repeatable); without
    /// one, pods get the node's resolv.conf.
    #[arg(long = "cluster-dns")]
    pub cluster_dns: Vec<std::net::IpAddr>,
    /// Serve cluster DNS on this node (needs --kubeconfig or --in-cluster): on
    /// --dns-address, which this node's kubelet gives pods as their nameserver unless
    /// --cluster-dns names another, and on the `kube-dns` Service's ClusterIP
    /// (--dns-service-ip).
    #[arg(long, requires = "api")]
    pub dns: bool,
    /// The node-local address the DNS server answers on.
    #[arg(long, default_value_t = crate::dns::DEFAULT_NODE_LOCAL_ADDRESS)]
    pub dns_address: std::net::Ipv4Addr,
    /// The `kube-dns` Service's ClusterIP, answered on this node too (default: the
    /// service CIDR's tenth address, 10.96.0.10 by default).
    #[arg(long)]
    pub dns_service_ip: Option<std::net::Ipv4Addr>,
    /// A DNS server (IP or IP:PORT) to ask for names outside the cluster domain;
    /// without one they are refused at once.
    #[arg(long, value_parser = parse_dns_server)]
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Where the kubelet server (logs, exec, port-forward for the API server) listens.
    #[arg(long, default_value = "0.0.0.0")]
    pub kubelet_address: std::net::IpAddr,
    /// The kubelet server's port, also reported in the Node's daemonEndpoints.
    #[arg(long, default_value_t = crate::node::object::KUBELET_PORT)]
    pub kubelet_port: u16,
    /// A directory of static pod manifests (YAML or JSON, one Pod each): the kubelet
    /// runs them without the API server and mirrors them into it.
    #[arg(long, requires = "container_runtime_endpoint")]
    pub pod_manifest_path: Option<PathBuf>,
    /// The cgroup (cgroupfs path) the pods' cgroups go under (default: /skiff/<node-name>).
    #[arg(long)]
    pub cgroup_root: Option<String>,
    /// A file to create once the first sync is done (for scripts and tests).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Sync each role once, after its source was first read, and exit.
    #[arg(long)]
    pub once: bool,
}

/// `IP` (port 53) or `IP:PORT`.
fn parse_dns_server(value: &str) -> Result<std::net::SocketAddr, String> {
    value
        .parse()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{value:?} is neither IP nor IP:PORT"))
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
        Command::Run(args) => super::run(*args),
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
        Command::Trace(args) => {
            let (namespace, name) = args.service.split_once('/').unwrap_or(("default", &args.service));
            let client = skiff_api::Client::from_kubeconfig(&args.kubeconfig, "skiff-node/trace")
                .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let svc: k8s_openapi::api::core::v1::Service = rt
                .block_on(client.get(Some(namespace), name))
                .with_context(|| format!("getting Service {namespace}/{name}"))?;
            let options =
                crate::proxy::trace::TraceOptions { from: args.from, port: args.port, node_addr: args.node_ip };
            print!("{}", crate::proxy::trace::trace(&args.pins.pin_dir, &svc, &options)?);
            Ok(())
        }
        Command::Reset(args) => {
            datapath::remove_pins(&args.pin_dir).with_context(|| format!("removing {}", args.pin_dir.display()))?;
            info!(pin_dir = %args.pin_dir.display(), "datapath removed");
            Ok(())
        }
    }
}

fn parse_prime(text: &str) -> Result<u16, String> {
    let n: u16 = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    if !crate::proxy::maglev::is_prime(usize::from(n)) || n < 7 {
        return Err(format!("{n} is not a prime of at least 7 (e.g. 251, 1021, 4093, 16381, 65521)"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command, RunArgs};

    fn run_args(flags: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["skiff-node", "run"].into_iter().chain(flags.iter().copied());
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(*args),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn the_datapath_roles_take_their_credentials_from_a_kubeconfig_or_the_pod() {
        let ds = run_args(&["--in-cluster", "--services-from-api", "--nodes-from-api"]).unwrap();
        assert!(ds.in_cluster && ds.kubeconfig.is_none());
        assert!(super::super::has_datapath_role(&ds));
        let node = run_args(&["--kubeconfig", "k", "--services-from-api", "--nodes-from-api"]).unwrap();
        assert!(super::super::has_datapath_role(&node));
        for alone in ["--services-from-api", "--nodes-from-api"] {
            let err = run_args(&[alone]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{alone}: {err}");
        }
    }

    #[test]
    fn an_in_cluster_agent_is_never_the_kubelet_and_a_kubelet_only_agent_loads_no_bpf() {
        for other in
            [&["--kubeconfig", "k"][..], &["--container-runtime-endpoint", "s"], &["--bootstrap-kubeconfig", "b"]]
        {
            let flags: Vec<&str> = ["--in-cluster"].iter().chain(other).copied().collect();
            let err = run_args(&flags).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict, "{flags:?}: {err}");
        }
        let kubelet = run_args(&["--kubeconfig", "k", "--container-runtime-endpoint", "s"]).unwrap();
        assert!(!super::super::has_datapath_role(&kubelet));
        // Without any API role the agent is there for the datapath alone (the demo, tests).
        assert!(super::super::has_datapath_role(&run_args(&[]).unwrap()));
        let attached = run_args(&["--kubeconfig", "k", "--pod-interface", "veth1"]).unwrap();
        assert!(super::super::has_datapath_role(&attached));
    }
}
