//! `skiff-control`: the Skiff control plane. Parses flags and runs `server::run`; all
//! behaviour lives in the library.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use skiff_control::server::{self, Config};
use skiff_control::store::EtcdConfig;

/// Kubernetes API server (HTTPS only) with an embedded store or etcd.
#[derive(Debug, Parser)]
#[command(name = "skiff-control", version)]
struct Args {
    /// Where the store, PKI, tokens file, ServiceAccount signing key, admin kubeconfig
    /// and the nodes' bootstrap.kubeconfig (CA + bootstrap token) live.
    #[arg(long, env = "SKIFF_DATA_DIR", default_value = "/var/lib/skiff/control")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port.
    #[arg(long, default_value_t = 6443)]
    port: u16,
    /// Address written into the kubeconfig and the serving certificate (default: the
    /// bind address, or 127.0.0.1 when binding to all addresses).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// Pod network; each node gets a /24 of it.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// Service ClusterIP range; its first address is the `kubernetes` Service.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnet::Ipv4Net,
    /// Addresses for LoadBalancer Services (status.loadBalancer.ingress): one or more
    /// IPv4 CIDRs, comma-separated (e.g. 192.168.1.240/28,192.168.2.0/24), lowest free
    /// first, network and broadcast addresses skipped; spec.loadBalancerIP picks one.
    /// Unset: LoadBalancer Services stay <pending>, as without a cloud provider.
    #[arg(long, value_delimiter = ',', value_name = "CIDR[,CIDR...]")]
    service_lb_pool: Vec<ipnet::Ipv4Net>,
    /// Where the local-path provisioner puts volumes on a node that does not announce a
    /// directory of its own (annotation `skiff.io/local-path-dir`, which skiff-node sets):
    /// `<DIR>/<node>/<volume>`.
    #[arg(long, default_value = "/var/lib/skiff/storage")]
    local_path_dir: std::path::PathBuf,
    /// Extra subject alternative name for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Serve the API only: do not run the scheduler and controllers in this replica.
    #[arg(long)]
    disable_controllers: bool,
    /// A node whose heartbeat Lease is older than this is marked NotReady (seconds).
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// Pods on a NotReady node are evicted after this (seconds).
    #[arg(long, default_value_t = 300)]
    pod_eviction_timeout: u64,
    /// How often every Ready node's kubelet is scraped for metrics.k8s.io (seconds;
    /// metrics-server's --metric-resolution).
    #[arg(long, default_value_t = 15)]
    metric_resolution: u64,
    /// How often the HorizontalPodAutoscaler controller looks at each HPA (seconds).
    #[arg(long, default_value_t = 15)]
    horizontal_pod_autoscaler_sync_period: u64,
    /// An HPA scales down to the highest recommendation of this window (seconds),
    /// unless its spec.behavior says otherwise.
    #[arg(long, default_value_t = 300)]
    horizontal_pod_autoscaler_downscale_stabilization: u64,
    /// Keep objects in etcd at these client URLs (comma-separated, http://host:port)
    /// instead of the embedded store; the PKI and kubeconfig stay in --data-dir.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// Key prefix in etcd, so several clusters can share one etcd.
    #[arg(long, default_value = skiff_control::store::etcd::DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// Write the audit log (JSON lines of audit.k8s.io/v1 Events) to this file, or `-`
    /// for stdout.
    #[arg(long)]
    audit_log_path: Option<std::path::PathBuf>,
    /// The audit.k8s.io/v1 Policy (YAML) deciding which requests are logged at which
    /// level; without it every request is logged at Metadata.
    #[arg(long)]
    audit_policy_file: Option<std::path::PathBuf>,
    /// For tests of panic recovery only: requests for this non-resource path panic.
    #[arg(long, hide = true)]
    debug_panic_path: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // Colour codes only for a person at a terminal; a log file must stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let a = Args::parse();
    if let Some(p) = a.debug_panic_path.clone() {
        skiff_control::apiserver::debug_panic_on(p);
    }
    // No --etcd-servers: the embedded store in --data-dir.
    let etcd = if a.etcd_servers.is_empty() {
        None
    } else {
        Some(EtcdConfig { endpoints: a.etcd_servers, prefix: a.etcd_prefix })
    };
    let cfg = Config {
        data_dir: a.data_dir,
        bind_address: a.bind_address,
        port: a.port,
        advertise_address: a.advertise_address,
        cluster_cidr: a.cluster_cidr,
        service_cidr: a.service_cidr,
        service_lb_pool: a.service_lb_pool,
        local_path_dir: a.local_path_dir,
        tls_sans: a.tls_sans,
        run_controllers: !a.disable_controllers,
        node_monitor_grace_period: std::time::Duration::from_secs(a.node_monitor_grace_period),
        pod_eviction_timeout: std::time::Duration::from_secs(a.pod_eviction_timeout),
        metric_resolution: std::time::Duration::from_secs(a.metric_resolution.max(1)),
        hpa_sync_period: std::time::Duration::from_secs(a.horizontal_pod_autoscaler_sync_period.max(1)),
        hpa_downscale_stabilization: std::time::Duration::from_secs(
            a.horizontal_pod_autoscaler_downscale_stabilization,
        ),
        etcd,
        audit_log_path: a.audit_log_path,
        audit_policy_file: a.audit_policy_file,
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    server::run(cfg, shutdown).await.context("skiff-control failed")
}
