//! The composition root of `skiff-node run`: the one place that knows every role and
//! wires it to its source. Order matters: the datapath is loaded (or adopted from the
//! pins of an earlier run) first, then the pod interfaces get the "from pod" program,
//! then each enabled role starts with its source on tasks of their own:
//!
//! ```text
//! source task (polls a file or directory) --changes--> role task (runner::run)
//! ```
//!
//! A role applies changes as they come and syncs after them, bounded in frequency (see
//! `runner`). A signal stops the tasks; every pin stays, so traffic keeps flowing until
//! the next agent adopts it.
//!
//! The roles fed by the API (node registration, the kubelet, the overlay's Node source,
//! the proxy's Service source) are wired here too; nothing else in the agent may start a task that outlives a call.
//!
//! One node may run two agents (the DaemonSet install, deploy/skiff-node.yaml): a
//! kubelet-only one with the node's `--kubeconfig` (Node, Lease, pods; it loads no BPF),
//! and the datapath one in a pod with `--in-cluster` (proxy, overlay and the CNI
//! configuration; no Node role). Either may restart without disturbing the other.

mod cli;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use skiff_datapath::{Pins, cidr};
use skiff_ebpf_common::LbConfig;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use cli::{Cli, Command, PinArgs, RunArgs, main};

use crate::cri::CriClient;
use crate::datapath::{Datapath, MapSizes};
use crate::kubelet::KubeletSettings;
use crate::node::NodeSettings;
use crate::overlay::role::{OverlayRole, OverlaySettings};
use crate::overlay::source::{ApiNodeSource, NodeSource, NodesFileSource};
use crate::proxy::announce::AnnouncedMap;
use crate::proxy::api_source::ApiServiceSource;
use crate::proxy::events::ServiceEvents;
use crate::proxy::maps::AyaLbMaps;
use crate::proxy::model::LocalNode;
use crate::proxy::reconciler::LbReconciler;
use crate::proxy::role::ProxyRole;
use crate::proxy::source::{ManifestDirSource, ServiceSource};
use crate::runner::{self, Role, Schedule};

/// How often the proxy looks at the API source's reflector channels.
const API_SOURCE_POLL: Duration = Duration::from_millis(5);

fn run(args: RunArgs) -> Result<()> {
    let pin_dir = args.pin_dir.clone().unwrap_or_else(|| Pins::for_node(&args.node_name).dir().to_path_buf());
    let datapath_on = has_datapath_role(&args);
    // A kubelet-only agent leaves the BPF side to the node's datapath agent (a DaemonSet
    // pod): loading here too would reset the settings that agent was started with.
    let mut datapath = if datapath_on { Some(load_datapath(&args, &pin_dir)?) } else { None };
    crate::metrics::set_pin_dir(pin_dir.clone());
    if datapath_on && args.conntrack_gc_interval > 0 {
        spawn_conntrack_gc(pin_dir.clone(), std::time::Duration::from_secs(args.conntrack_gc_interval))?;
    }

    let services = match (&args.manifests, args.services_from_api) {
        (Some(dir), _) => Some(ServicesFrom::Dir(ManifestDirSource::new(dir))),
        (None, true) => Some(ServicesFrom::Api),
        (None, false) => None,
    };
    let dns = dns_settings(&args);
    let dns_shares_proxy_caches = matches!(services, Some(ServicesFrom::Api));
    let proxy = match services {
        Some(services) => {
            let maps = AyaLbMaps::open(&pin_dir).context("opening the Service maps")?;
            let mut reconciler = LbReconciler::adopt(maps).context("adopting the existing Service maps")?;
            // NodePorts live on the node's address; without --node-ip none are programmed.
            reconciler.set_node(args.node_ip.map(|addr| LocalNode { name: args.node_name.clone(), addr }));
            reconciler.set_maglev_table_size(args.maglev_table_size);
            let mut role = ProxyRole::new(reconciler);
            if let Some(addr) = args.node_ip {
                let map = AnnouncedMap::open(&pin_dir).context("opening the announced addresses map")?;
                role.announce(&args.node_name, map, underlay_link(&args.underlay_interface));
                role.serve_health_checks(&args.node_name, addr);
            }
            if let Some(dns) = &dns {
                role.serve_locally(dns.addresses.iter().copied());
            }
            Some((role, services))
        }
        None => None,
    };
    let overlay_nodes = match (&args.nodes, args.nodes_from_api) {
        (Some(file), _) => Some(NodesFrom::File(NodesFileSource::new(file))),
        (None, true) => Some(NodesFrom::Api),
        (None, false) => None,
    };
    let overlay = match overlay_nodes {
        Some(nodes) => {
            let settings = OverlaySettings {
                node_name: args.node_name.clone(),
                pin_dir: pin_dir.clone(),
                cluster_cidr: args.cluster_cidr,
                underlay_interface: args.underlay_interface.clone(),
                cni_conf_dir: args.cni_conf_dir.clone(),
                cni_bin_dir: args.cni_bin_dir.clone(),
                cni_data_dir: args.cni_data_dir.clone(),
                ip_masq: args.ip_masq,
                nodeport_xdp: args.nodeport_xdp,
            };
            let datapath = datapath.as_mut().context("the overlay role needs the datapath")?;
            Some((OverlayRole::start(settings, datapath)?, nodes))
        }
        None => None,
    };
    // The node's own credentials first (TLS bootstrapping), so the client below has them.
    if let (Some(bootstrap), Some(kubeconfig)) = (&args.bootstrap_kubeconfig, &args.kubeconfig) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(crate::node::bootstrap::ensure_credentials(bootstrap, kubeconfig, &args.node_name))
            .context("obtaining this node's client certificate")?;
    }
    // The client's certificate is renewed while the agent runs (`rotation`); the
    // in-cluster client re-reads its ServiceAccount token file as the kubelet rotates it.
    let (api, rotation) = match &args.kubeconfig {
        Some(kubeconfig) => {
            let bootstrap = args.bootstrap_kubeconfig.as_deref();
            let (client, rotation) = crate::node::bootstrap::rotating_client(kubeconfig, bootstrap, &args.node_name)
                .with_context(|| format!("reading the kubeconfig {}", kubeconfig.display()))?;
            (Some(client), Some(rotation))
        }
        None if args.in_cluster => {
            let client = skiff_api::Client::in_cluster(&format!("skiff-node/{}", args.node_name))
                .context("reading the in-cluster configuration (--in-cluster)")?;
            (Some(client), None)
        }
        None => (None, None),
    };
    info!(
        node = %args.node_name,
        pin_dir = %pin_dir.display(),
        datapath = datapath_on,
        proxy = proxy.is_some(),
        overlay = overlay.is_some(),
        node_role = args.kubeconfig.is_some(),
        kubelet = args.container_runtime_endpoint.is_some(),
        "agent started"
    );

    let period = Duration::from_millis(args.sync_interval_ms.max(10));
    let schedule = Schedule {
        min_interval: period,
        max_interval: Duration::from_secs(args.resync_interval_s.max(1)),
        once: args.once,
    };
    let mut waiting_for_first_sync = usize::from(proxy.is_some()) + usize::from(overlay.is_some());
    let (synced_tx, mut synced_rx) = mpsc::unbounded_channel::<&'static str>();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // One thread: the roles own aya maps and never wait on each other, so they share it.
    let tasks = tokio::task::LocalSet::new();
    tasks.block_on(&runtime, async {
        let mut roles = tokio::task::JoinSet::new();
        if let Some((mut role, services)) = proxy {
            let api_source = matches!(services, ServicesFrom::Api);
            let mut source: Box<dyn ServiceSource> = match services {
                ServicesFrom::Dir(dir) => Box::new(dir),
                ServicesFrom::Api => {
                    let client = api.clone().context("--services-from-api needs --kubeconfig or --in-cluster")?;
                    let (source, reflect) = ApiServiceSource::start(client.clone());
                    tokio::task::spawn_local(reflect);
                    if let Some(dns) = &dns {
                        crate::dns::start(dns, source.services().clone(), source.slices().clone()).await?;
                    }
                    role.set_events(ServiceEvents::new(client, &args.node_name, source.services().clone()));
                    Box::new(source)
                }
            };
            let mut first = true;
            // A source that has no snapshot yet (the API's LISTs are not in) is not polled:
            // its first poll must be the complete state.
            let poll = move || match source.ready().then(|| source.poll())? {
                // The first poll is the snapshot, even when empty; later ones only matter when something changed.
                Ok(events) if first || !events.is_empty() => {
                    first = false;
                    Some(events)
                }
                Ok(_) => None,
                Err(e) => {
                    warn!(error = %e, "reading the Service source failed; keeping the last state");
                    None
                }
            };
            // The API source only drains two channels: looking every few milliseconds
            // costs nothing and keeps a change's way to the maps short (P5); a file
            // source reads a directory, so it keeps the sync interval.
            let poll_period = match api_source {
                true => API_SOURCE_POLL.min(period),
                false => period,
            };
            spawn_role(&mut roles, "proxy", role, poll, poll_period, schedule, synced_tx.clone());
        }
        if let (Some(dns), false) = (&dns, dns_shares_proxy_caches) {
            // No proxy on the API to share caches with: DNS watches for itself.
            let client = api.clone().context("--dns needs --kubeconfig or --in-cluster")?;
            let (source, reflect) = ApiServiceSource::start(client);
            tokio::task::spawn_local(reflect);
            crate::dns::start(dns, source.services().clone(), source.slices().clone()).await?;
        }
        if let Some((role, nodes)) = overlay {
            let mut source: Box<dyn NodeSource> = match nodes {
                NodesFrom::File(file) => Box::new(file),
                NodesFrom::Api => {
                    let client = api.clone().context("--nodes-from-api needs --kubeconfig or --in-cluster")?;
                    let (cache, reflect) = skiff_api::reflector::reflector::<Node>(client, None, Default::default());
                    tokio::task::spawn_local(reflect);
                    Box::new(ApiNodeSource::new(cache))
                }
            };
            let poll = move || match source.poll() {
                Ok(nodes) => nodes,
                Err(e) => {
                    warn!(error = %e, "reading the nodes failed; keeping the last state");
                    None
                }
            };
            spawn_role(&mut roles, "overlay", role, poll, period, schedule, synced_tx.clone());
        }
        if waiting_for_first_sync == 0 {
            write_ready_file(args.ready_file.as_deref())?;
        }
        // The roles fed by the API (node, kubelet) run for ever beside the others and are
        // not waited for: they keep retrying while the API is away, and --once does not
        // apply to them. Stopping the agent leaves the pods running.
        let cri = args.container_runtime_endpoint.as_deref().map(CriClient::new);
        let runtime_version = match &cri {
            Some(cri) => runtime_version(cri).await,
            None => String::new(),
        };
        let mut api_roles = Vec::new();
        // The node role goes with the node's own credentials only: an in-cluster agent is
        // a pod on a node some other agent registered.
        if let Some(client) = api.clone().filter(|_| !args.once && !args.in_cluster) {
            let settings = NodeSettings {
                name: args.node_name.clone(),
                internal_ip: args.node_ip,
                max_pods: args.max_pods,
                container_runtime_version: runtime_version,
                kubelet_port: args.kubelet_port,
                // Only a kubelet mounts volumes, so only it announces where they live.
                local_path_dir: cri.as_ref().map(|_| local_path_dir(&args)),
            };
            api_roles.push(tokio::task::spawn_local(crate::node::run(client.clone(), settings, cri.clone())));
            api_roles.extend(rotation.map(|r| tokio::task::spawn_local(r.run())));
            if let Some(cri) = cri {
                let settings = kubelet_settings(&args)?;
                info!(root_dir = %settings.root_dir.display(), pod_log_dir = %settings.pod_log_dir.display(), "kubelet starting");
                let stats = Arc::new(crate::kubelet::stats::CriStats::new(cri.clone(), &settings.cgroup_root));
                let (kubelet, locator) = crate::kubelet::Kubelet::new(client, cri.clone(), settings);
                api_roles.push(tokio::task::spawn_local(kubelet.run()));
                let server = kubelet_server_settings(&args)?;
                info!(addr = %server.addr, "kubelet server starting");
                let runtime: Arc<dyn crate::server::StreamingRuntime> = Arc::new(cri);
                api_roles.push(tokio::task::spawn_local(async move {
                    if let Err(e) = crate::server::serve(server, Arc::new(locator), runtime, stats, std::future::pending()).await {
                        error!(error = %e, "the kubelet server stopped; kubectl logs, exec and port-forward fail");
                    }
                }));
            }
        }
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // Until a signal; with --once, until every role has synced once. An agent with no
        // role (only --pod-interface attachments) runs until a signal too.
        while !(args.once && roles.is_empty()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
                Some(role) = synced_rx.recv() => first_sync_done(role, &mut waiting_for_first_sync, args.ready_file.as_deref())?,
                Some(done) = roles.join_next(), if !roles.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        anyhow::bail!("a role of the agent panicked: {e}");
                    }
                }
            }
        }
        for task in api_roles {
            task.abort();
        }
        // With --once the roles may end before their news was read.
        while let Ok(role) = synced_rx.try_recv() {
            first_sync_done(role, &mut waiting_for_first_sync, args.ready_file.as_deref())?;
        }
        info!("agent stopping; the datapath stays pinned and keeps forwarding");
        anyhow::Ok(())
    })
}

/// Where the proxy takes Services and EndpointSlices from.
enum ServicesFrom {
    Dir(ManifestDirSource),
    Api,
}

/// Where the overlay takes the cluster's nodes from.
enum NodesFrom {
    File(NodesFileSource),
    Api,
}

/// The runtime's name and version for the Node's nodeInfo (`containerd://1.6.20`);
/// empty when the runtime does not answer (the kubelet keeps trying on its own).
async fn runtime_version(cri: &CriClient) -> String {
    match cri.version().await {
        Ok(v) => format!("{}://{}", v.runtime_name, v.runtime_version),
        Err(e) => {
            warn!(error = %e, "the container runtime does not answer yet");
            String::new()
        }
    }
}

/// The :10250 server's settings: the node's addresses, and the cluster CA (from the
/// kubeconfig) that issues the API server's client certificate.
fn kubelet_server_settings(args: &RunArgs) -> Result<crate::server::Settings> {
    let kubeconfig = args.kubeconfig.as_deref().context("the kubelet server needs --kubeconfig")?;
    let creds = skiff_api::kubeconfig::load(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let ca = String::from_utf8(creds.ca_pem).context("the kubeconfig's CA is not PEM text")?;
    let ips = args.node_ip.map(std::net::IpAddr::V4).into_iter().collect();
    let mut settings = crate::server::Settings::new(&args.node_name, ips, ca);
    settings.addr = std::net::SocketAddr::new(args.kubelet_address, args.kubelet_port);
    Ok(settings)
}

/// The DNS server's settings when --dns is on: the node-local address, then the
/// `kube-dns` ClusterIP.
fn dns_settings(args: &RunArgs) -> Option<crate::dns::DnsSettings> {
    if !args.dns {
        return None;
    }
    let service_ip = args.dns_service_ip.unwrap_or_else(|| {
        let base = u32::from(args.service_cidr.trunc().network());
        std::net::Ipv4Addr::from(base + 10)
    });
    Some(crate::dns::DnsSettings {
        domain: args.cluster_domain.clone(),
        addresses: vec![args.dns_address, service_ip],
        port: 53,
        upstream: args.dns_upstream,
    })
}

fn kubelet_settings(args: &RunArgs) -> Result<KubeletSettings> {
    let node = &args.node_name;
    let node_ip = args.node_ip.context("the kubelet needs --node-ip (the pods' hostIP)")?;
    Ok(KubeletSettings {
        node_name: node.clone(),
        node_ip: node_ip.into(),
        root_dir: args.root_dir.clone().unwrap_or_else(|| format!("/var/lib/skiff/kubelet/{node}").into()),
        pod_log_dir: args.pod_log_dir.clone().unwrap_or_else(|| format!("/var/log/skiff/{node}/pods").into()),
        // Pods ask this node's own DNS server when it runs and no other is named.
        cluster_dns: match (args.cluster_dns.is_empty(), args.dns) {
            (true, true) => vec![args.dns_address.into()],
            _ => args.cluster_dns.clone(),
        },
        cluster_domain: args.cluster_domain.clone(),
        cgroup_root: args.cgroup_root.clone().unwrap_or_else(|| format!("/skiff/{node}")),
        static_pod_dir: args.pod_manifest_path.clone(),
        local_path_dir: local_path_dir(args),
    })
}

/// The node's local-path volume directory (`--local-path-dir` or its default).
fn local_path_dir(args: &RunArgs) -> std::path::PathBuf {
    let node = &args.node_name;
    args.local_path_dir.clone().unwrap_or_else(|| format!("/var/lib/skiff/storage/{node}").into())
}

/// Whether this agent loads the datapath: every agent but a kubelet-only one (the node's
/// credentials and no proxy, overlay or pod interface), whose node has its datapath from
/// a DaemonSet pod.
fn has_datapath_role(args: &RunArgs) -> bool {
    let roles = args.manifests.is_some()
        || args.services_from_api
        || args.nodes.is_some()
        || args.nodes_from_api
        || !args.pod_interfaces.is_empty();
    roles || args.kubeconfig.is_none()
}

/// Loads (or adopts) the datapath, sets the load balancer's settings, and attaches
/// "from pod" to the interfaces named on the command line.
fn load_datapath(args: &RunArgs, pin_dir: &Path) -> Result<Datapath> {
    let sizes = MapSizes { services: args.services_max, backends: args.backends_max, ct: args.ct_max };
    let mut datapath = Datapath::load(pin_dir, sizes).context("loading the datapath")?;
    let (service_net, service_mask) = cidr::to_map(args.service_cidr);
    datapath.set_config(LbConfig {
        tcp_timeout_s: args.tcp_timeout_s,
        tcp_closing_timeout_s: args.tcp_closing_timeout_s,
        udp_timeout_s: args.udp_timeout_s,
        hairpin_addr: 0,
        service_net,
        service_mask,
    })?;
    if let Some(cgroup) = &args.socket_lb_cgroup {
        datapath.attach_socket_lb(cgroup).context("attaching the socket-level load balancer")?;
    }
    for interface in &args.pod_interfaces {
        match datapath.attach_pod_programs(interface) {
            Ok(how) => info!(interface, ?how, "pod programs attached"),
            Err(e) => {
                error!(interface, error = %e, "cannot attach the pod programs; traffic of this pod is not load-balanced")
            }
        }
    }
    Ok(datapath)
}

/// Starts a role and the task that polls its source.
fn spawn_role<R: Role + 'static>(
    roles: &mut tokio::task::JoinSet<()>,
    name: &'static str,
    role: R,
    poll: impl FnMut() -> Option<R::Change> + 'static,
    period: Duration,
    schedule: Schedule,
    synced: mpsc::UnboundedSender<&'static str>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut role = runner::Timed::new(name, role);
    roles.spawn_local(runner::poll_source(period, schedule.once, poll, tx));
    roles.spawn_local(async move {
        runner::run(&mut role, schedule, &mut rx, || {
            let _ = synced.send(name);
        })
        .await;
    });
}

/// Counts a role's first sync; the last one makes the agent ready.
fn first_sync_done(role: &str, waiting: &mut usize, ready_file: Option<&Path>) -> Result<()> {
    info!(role, "first sync done");
    *waiting = waiting.saturating_sub(1);
    if *waiting == 0 { write_ready_file(ready_file) } else { Ok(()) }
}

/// Tells scripts and tests that every role has synced once (`--ready-file`).
fn write_ready_file(path: Option<&Path>) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, b"ready\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The underlay interface's index and MAC address, for gratuitous ARPs; `None` (and a
/// warning) if it cannot be read.
fn underlay_link(interface: &str) -> Option<(u32, [u8; 6])> {
    let link = skiff_datapath::netlink::Netlink::new().and_then(|nl| nl.require_link(interface));
    match link {
        Ok(link) => Some((link.index, link.mac)),
        Err(e) => {
            tracing::warn!(interface, error = %e, "no gratuitous ARPs for announced addresses: the underlay interface cannot be read");
            None
        }
    }
}

/// Removes expired conntrack entries every `interval`, on a thread of its own (see
/// `datapath::conntrack_gc`).
fn spawn_conntrack_gc(pin_dir: PathBuf, interval: std::time::Duration) -> Result<()> {
    std::thread::Builder::new()
        .name("conntrack-gc".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                match crate::datapath::conntrack_gc::collect(&pin_dir) {
                    Ok(c) if c.removed > 0 => {
                        tracing::debug!(scanned = c.scanned, removed = c.removed, "conntrack collected")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "conntrack collection failed; will retry"),
                }
            }
        })
        .context("starting the conntrack collector")?;
    Ok(())
}
