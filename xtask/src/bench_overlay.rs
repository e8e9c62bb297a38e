//! `cargo xtask bench overlay`: P3 and P4 on a two-node topology (two node namespaces on
//! an underlay bridge, a client pod on node 1, a server pod on node 2).
//!
//! - P3: iperf3 TCP throughput pod → ClusterIP → pod on the other node, against pod →
//!   pod IP directly, both through Skiff's eBPF overlay, same run.
//! - P4: cross-node pod → pod TCP throughput and request/response rate with Skiff's eBPF
//!   overlay, then, in the same namespaces with the agent gone and its programs
//!   detached, with flannel's kernel VXLAN (a VXLAN device with an FDB entry, a
//!   neighbour entry and a route per peer).

use std::{path::Path, process::Stdio};

use anyhow::{Context, Result, bail};
use skiff_tests::{
    PinDir,
    netns::ChildGuard,
    topology::{NodeTopology, Underlay},
    unique_tag,
};

use crate::{
    lbsetup::{build_binaries, start_agent_with, write_manifest},
    util::progress,
};

const VIP: &str = "10.96.0.30";

pub fn run(args: &[String]) -> Result<()> {
    let mut seconds = 5u64;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--seconds" => seconds = iter.next().context("--seconds N")?.parse()?,
            other => bail!("unknown argument {other}; usage: cargo xtask bench overlay [-- --seconds S]"),
        }
    }
    let bin = build_binaries(true)?;
    let tag = unique_tag("bov");
    progress("bench", "building two nodes on an underlay bridge...");
    let underlay = Underlay::new(&tag);
    let n1 = NodeTopology::node_of_cluster(&tag, 1, &["client"]);
    let n2 = NodeTopology::node_of_cluster(&tag, 2, &["server"]);
    underlay.connect(&n1);
    underlay.connect(&n2);
    let server = n2.pod("server");
    let dir = std::env::temp_dir().join(format!("skiff-{tag}"));
    let _cleanup = RemoveDir(dir.clone());
    std::fs::create_dir_all(&dir)?;
    write_manifest(&dir.join("manifests"), "iperf.yaml", &iperf_service(&server.ip.to_string()))?;
    std::fs::write(
        dir.join("nodes.yaml"),
        format!(
            "nodes:\n- {{name: n1, podCIDR: 10.244.1.0/24, underlayIP: {}}}\n- {{name: n2, podCIDR: 10.244.2.0/24, underlayIP: {}}}\n",
            n1.underlay_ip(),
            n2.underlay_ip()
        ),
    )?;

    let _iperf = ChildGuard::new(
        server
            .ns
            .command("iperf3")
            .args(["-s", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 (cargo xtask setup installs it)")?,
    );
    let _echo = ChildGuard::new(
        server
            .ns
            .command(bin.join("skiff-echo").to_str().unwrap_or("skiff-echo"))
            .args(["serve", "--name", "server", "--tcp", "8080"])
            .stdout(Stdio::null())
            .spawn()?,
    );

    // eBPF overlay.
    let (ebpf_direct, ebpf_vip, ebpf_rr) = {
        let pins: Vec<PinDir> = [&n1, &n2].iter().map(|n| PinDir::new(&n.tag)).collect();
        let mut agents = Vec::new();
        for (node, pins) in [&n1, &n2].into_iter().zip(&pins) {
            let extra = [
                "--manifests".to_owned(),
                dir.join("manifests").display().to_string(),
                "--nodes".into(),
                dir.join("nodes.yaml").display().to_string(),
            ];
            agents.push(start_agent_with(node, &bin, &pins.path, &extra)?);
        }
        progress("bench", "eBPF overlay: pod -> pod IP...");
        let direct = iperf(&n1, &server.ip.to_string(), seconds)?;
        progress("bench", "eBPF overlay: pod -> ClusterIP -> pod...");
        let vip = iperf(&n1, VIP, seconds)?;
        progress("bench", "eBPF overlay: request/response...");
        let rr = request_response(&n1, &bin, &format!("{}:8080", server.ip), seconds)?;
        for mut agent in agents {
            agent.kill();
        }
        for node in [&n1, &n2] {
            let _ = node.node.sh_output("ip link del skiff-vxlan");
        }
        (direct, vip, rr)
        // The pins drop here: links go, programs detach.
    };

    // Flannel's kernel VXLAN in the same namespaces.
    progress("bench", "kernel VXLAN (flannel style): setting up FDB, neighbour and route entries...");
    flannel_setup(&[&n1, &n2])?;
    progress("bench", "kernel VXLAN: pod -> pod IP...");
    let kernel_direct = iperf(&n1, &server.ip.to_string(), seconds)?;
    progress("bench", "kernel VXLAN: request/response...");
    let kernel_rr = request_response(&n1, &bin, &format!("{}:8080", server.ip), seconds)?;

    println!("P3 clusterip-throughput@cross-node: {:.2} Gbit/s", ebpf_vip / 1e9);
    println!("P3 pod-ip-throughput@cross-node: {:.2} Gbit/s", ebpf_direct / 1e9);
    println!("P3 clusterip-vs-pod-ip-throughput: {:.3} x", ebpf_vip / ebpf_direct);
    println!("P4 ebpf-overlay-throughput: {:.2} Gbit/s", ebpf_direct / 1e9);
    println!("P4 kernel-vxlan-throughput: {:.2} Gbit/s", kernel_direct / 1e9);
    println!("P4 throughput-vs-kernel-vxlan: {:.3} x", ebpf_direct / kernel_direct);
    println!("P4 ebpf-overlay-rr: {ebpf_rr:.0} req/s");
    println!("P4 kernel-vxlan-rr: {kernel_rr:.0} req/s");
    println!("P4 rr-vs-kernel-vxlan: {:.3} x", ebpf_rr / kernel_rr);
    Ok(())
}

fn iperf_service(backend: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: iperf, namespace: default}}\nspec:\n  clusterIP: {VIP}\n  ports:\n  - {{name: iperf, port: 5201, targetPort: 5201, protocol: TCP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: iperf-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: iperf}}\naddressType: IPv4\nports:\n- {{name: iperf, port: 5201, protocol: TCP}}\nendpoints:\n- addresses: [\"{backend}\"]\n"
    )
}

/// TCP throughput in bit/s from node 1's client pod to `target`:5201.
fn iperf(n1: &NodeTopology, target: &str, seconds: u64) -> Result<f64> {
    let out = n1
        .pod("client")
        .ns
        .command("iperf3")
        .args(["-c", target, "-p", "5201", "-t", &seconds.to_string(), "-J"])
        .output()
        .context("running iperf3")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("iperf3 to {target} failed: {text}");
    }
    // end.sum_received.bits_per_second, without a JSON dependency.
    let received = text.find("\"sum_received\"").context("no sum_received in iperf3's output")?;
    let rest = &text[received..];
    let key = rest.find("\"bits_per_second\"").context("no bits_per_second")?;
    let value: String = rest[key + 17..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    let bps: f64 = value.parse().with_context(|| format!("bits_per_second `{value}`"))?;
    progress("bench", &format!("  {:.2} Gbit/s", bps / 1e9));
    Ok(bps)
}

fn request_response(n1: &NodeTopology, bin: &Path, target: &str, seconds: u64) -> Result<f64> {
    let out = n1
        .pod("client")
        .ns
        .command(bin.join("skiff-echo").to_str().unwrap_or("skiff-echo"))
        .args(["rr", target, "--duration-ms", &(seconds * 1000).to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rate = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rate="))
        .and_then(|r| r.parse::<f64>().ok())
        .with_context(|| format!("no rate in: {text}"))?;
    progress("bench", &format!("  {rate:.0} req/s"));
    Ok(rate)
}

/// Flannel's vxlan backend, by hand: `flannel.1` with VNI 1 on port 8472, the node's
/// podCIDR network address on it, and for each peer a permanent neighbour entry for the
/// peer's VTEP address, an FDB entry to its underlay address, and a route to its podCIDR.
fn flannel_setup(nodes: &[&NodeTopology]) -> Result<()> {
    let mut macs = Vec::new();
    for n in nodes {
        n.node.sh(&format!(
            "ip link add flannel.1 type vxlan id 1 local {} dstport 8472 nolearning dev eth0 && \
             ip link set flannel.1 mtu 1450 up && ip addr add 10.244.{}.0/32 dev flannel.1",
            n.underlay_ip(),
            n.index
        ));
        let mac = n.node.sh("ip -o link show flannel.1");
        let mac = mac.split_whitespace().find(|w| w.len() == 17 && w.matches(':').count() == 5).map(str::to_owned);
        macs.push(mac.context("flannel.1 has no MAC address")?);
    }
    for (i, n) in nodes.iter().enumerate() {
        for (j, peer) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            n.node.sh(&format!(
                "ip neigh replace 10.244.{p}.0 lladdr {mac} dev flannel.1 nud permanent && \
                 bridge fdb append {mac} dev flannel.1 dst {ul} && \
                 ip route replace 10.244.{p}.0/24 via 10.244.{p}.0 dev flannel.1 onlink",
                p = peer.index,
                mac = macs[j],
                ul = peer.underlay_ip()
            ));
        }
    }
    Ok(())
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
