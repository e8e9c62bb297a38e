//! `cargo xtask bench <area>`: benchmarks, each measured as a ratio against its baseline
//! in the same run, printed as `ID label: value unit` lines.
//!
//! Areas:
//! - `lb`: P1, the "from pod" program's cost per packet under BPF_PROG_TEST_RUN with
//!   1, 10,000 and 100,000 Services (`skiff-lb-bench`); P2, new connections per second
//!   through a ClusterIP with 10,000 Services installed, Skiff's eBPF load balancer
//!   against a kube-proxy-style iptables ruleset, same topology, same run.
//! - `overlay` (xtask/src/bench_overlay.rs): P3, throughput through a ClusterIP to a pod
//!   on the other node against pod IP directly; P4, cross-node throughput and
//!   request/response rate with the eBPF overlay against flannel-style kernel VXLAN.
//! - `api` (xtask/src/bench_api.rs): P7, API creates/s, LIST and watch latency; P8,
//!   control-plane memory holding 1,000 pods.
//! - `pods` (xtask/src/bench_pods.rs): P6, pod create→Ready, and the agent's memory.
//! - `cluster` (xtask/src/bench_cluster.rs): P5, API change → every node's maps with
//!   10,000 Services, and a full resync against `iptables-restore` (the ruleset of
//!   [`load_iptables`]); P8, the cluster's memory at rest with the demo app.

use std::{fmt::Write as _, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use skiff_tests::{netns::Netns, topology::NodeTopology, unique_tag};

use crate::{
    lbsetup::{ServiceSpec, build_binaries, services_json, start_agent, start_echo_servers, write_manifest},
    util::progress,
};

pub fn run(area: &str, args: &[String]) -> Result<()> {
    match area {
        "lb" => lb(args),
        "overlay" => crate::bench_overlay::run(args),
        "api" => crate::bench_api::run(args),
        "pods" => crate::bench_pods::run(args),
        "cluster" => crate::bench_cluster::run(args),
        "dns" => crate::bench_dns::run(args),
        other => bail!("unknown benchmark area `{other}`; known: lb, overlay, api, pods, cluster, dns"),
    }
}

const TARGET_VIP: &str = "10.96.0.10";

fn lb(args: &[String]) -> Result<()> {
    let mut services = 10_000usize;
    let mut seconds = 5u64;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--services" => services = iter.next().context("--services N")?.parse()?,
            "--seconds" => seconds = iter.next().context("--seconds N")?.parse()?,
            other => bail!("unknown argument {other}; usage: cargo xtask bench lb [-- --services N --seconds S]"),
        }
    }
    let bin = build_binaries(true)?;

    progress("bench", "P1: from_pod cost per packet (BPF_PROG_TEST_RUN)...");
    let status = Command::new(bin.join("skiff-lb-bench")).status().context("running skiff-lb-bench")?;
    if !status.success() {
        bail!("skiff-lb-bench failed ({status})");
    }

    progress("bench", &format!("P2: connection rate through a ClusterIP with {services} Services..."));
    let tag = unique_tag("bench");
    let topo = NodeTopology::new(&tag, &["client", "b1", "b2", "b3"]);
    topo.pod("client").ns.sh("sysctl -qw net.ipv4.ip_local_port_range='1024 65000' net.ipv4.tcp_tw_reuse=1");
    let _servers = start_echo_servers(&topo, &bin, &["b1", "b2", "b3"]);
    let backends: Vec<String> = ["b1", "b2", "b3"].iter().map(|p| topo.pod(p).ip.to_string()).collect();
    let specs = service_specs(services, &backends);

    // eBPF: the agent programs the Services from manifests.
    let ebpf_rate = {
        let pins = skiff_tests::PinDir::new(&tag);
        let manifests = std::env::temp_dir().join(format!("skiff-{tag}-manifests"));
        write_manifest(&manifests, "services.json", &services_json(&specs))?;
        progress("bench", &format!("eBPF: starting the agent with {services} Services..."));
        let started = std::time::Instant::now();
        let mut agent = start_agent(&topo, &bin, &pins.path, &manifests)?;
        progress("bench", &format!("eBPF: {services} Services programmed in {:.1} s", started.elapsed().as_secs_f64()));
        let rate = conn_rate(&topo, &bin, seconds);
        agent.kill();
        let _ = std::fs::remove_dir_all(&manifests);
        rate?
        // `pins` drops here: the links go, and the programs are detached.
    };

    // iptables: the same Services as kube-proxy's iptables mode writes them, with both
    // of Debian's iptables back ends (nf_tables is the default; legacy is what many
    // clusters' kube-proxy images still use).
    let mut iptables_rates = Vec::new();
    for backend in ["nft", "legacy"] {
        progress(
            "bench",
            &format!("iptables-{backend}: loading a kube-proxy-style ruleset with {services} Services..."),
        );
        let started = std::time::Instant::now();
        load_iptables(&topo.node, &specs, backend)?;
        progress("bench", &format!("iptables-{backend}: ruleset loaded in {:.1} s", started.elapsed().as_secs_f64()));
        let rate = conn_rate(&topo, &bin, seconds);
        let _ = topo.node.sh_output(&format!("iptables-{backend} -t nat -F && iptables-{backend} -t nat -X"));
        iptables_rates.push((backend, rate?));
    }

    println!("P2 conn-rate-ebpf@{services}: {ebpf_rate:.0} conn/s");
    for (backend, rate) in &iptables_rates {
        println!("P2 conn-rate-iptables-{backend}@{services}: {rate:.0} conn/s");
    }
    for (backend, rate) in &iptables_rates {
        println!("P2 conn-rate-vs-iptables-{backend}@{services}: {:.2} x", ebpf_rate / rate);
    }
    Ok(())
}

/// `count` Services; the measured one (`web`, TARGET_VIP) stands in the middle of the
/// list, where kube-proxy's KUBE-SERVICES chain puts an average Service.
fn service_specs(count: usize, backends: &[String]) -> Vec<ServiceSpec> {
    let middle = count / 2;
    (0..count)
        .map(|i| {
            if i == middle {
                ServiceSpec { name: "web".into(), vip: TARGET_VIP.into(), endpoints: backends.to_vec() }
            } else {
                let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 100, 0, 0)) + i as u32);
                ServiceSpec {
                    name: format!("svc-{i}"),
                    vip: ip.to_string(),
                    endpoints: vec![backends[i % backends.len()].clone()],
                }
            }
        })
        .collect()
}

/// Connections per second from the client pod to the target ClusterIP: connect, one
/// request, close, for `seconds`, two client threads.
fn conn_rate(topo: &NodeTopology, bin: &std::path::Path, seconds: u64) -> Result<f64> {
    let client = topo.pod("client");
    // Warm-up, and a check that the Service answers at all.
    let out = client
        .ns
        .command(bin.join("skiff-echo").to_str().unwrap_or("skiff-echo"))
        .args(["tcp", &format!("{TARGET_VIP}:80"), "--count", "20"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("sent=20 ok=20 failed=0") {
        bail!("the ClusterIP does not answer before the measurement:\n{text}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = client
        .ns
        .command(bin.join("skiff-echo").to_str().unwrap_or("skiff-echo"))
        .args([
            "conn-rate",
            &format!("{TARGET_VIP}:80"),
            "--duration-ms",
            &(seconds * 1000).to_string(),
            "--threads",
            "2",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    progress("bench", text.trim());
    let rate = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rate="))
        .and_then(|r| r.parse::<f64>().ok())
        .with_context(|| format!("no rate in the client's output: {text}"))?;
    let failed = text.split_whitespace().find_map(|w| w.strip_prefix("failed=")).unwrap_or("0");
    if failed != "0" {
        progress("bench", &format!("WARNING: {failed} connections failed during the measurement"));
    }
    Ok(rate)
}

/// Loads the nat-table rules kube-proxy's iptables mode writes for these Services:
/// KUBE-SERVICES → KUBE-SVC-* (statistic random) → KUBE-SEP-* (DNAT), plus the
/// masquerade marking chains, in one `iptables-restore`; returns how long the restore
/// itself took (the `bench cluster` resync compares it with the agent's).
pub(crate) fn load_iptables(node: &Netns, specs: &[ServiceSpec], backend: &str) -> Result<Duration> {
    let mut rules = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    rules.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
    let mut sep_id = 0usize;
    let mut body = String::new();
    for (i, s) in specs.iter().enumerate() {
        let svc_chain = format!("KUBE-SVC-{i:016}");
        let _ = writeln!(rules, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            body,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"default/{}:http cluster IP\" -m tcp --dport 80 -j {svc_chain}",
            s.vip, s.name
        );
        let _ = writeln!(
            body,
            "-A {svc_chain} ! -s 10.244.0.0/16 -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ",
            s.vip
        );
        let n = s.endpoints.len();
        for (j, ep) in s.endpoints.iter().enumerate() {
            let sep_chain = format!("KUBE-SEP-{sep_id:016}");
            sep_id += 1;
            let _ = writeln!(rules, ":{sep_chain} - [0:0]");
            if j + 1 < n {
                let p = 1.0 / (n - j) as f64;
                let _ =
                    writeln!(body, "-A {svc_chain} -m statistic --mode random --probability {p:.11} -j {sep_chain}");
            } else {
                let _ = writeln!(body, "-A {svc_chain} -j {sep_chain}");
            }
            let _ = writeln!(body, "-A {sep_chain} -s {ep}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(body, "-A {sep_chain} -p tcp -m tcp -j DNAT --to-destination {ep}:8080");
        }
    }
    rules.push_str(&body);
    rules.push_str("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    rules.push_str("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    rules.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    rules.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    rules.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    rules.push_str("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n");
    rules.push_str("-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n");
    rules.push_str("COMMIT\n");
    let path = std::env::temp_dir().join(format!("skiff-bench-{}.rules", std::process::id()));
    std::fs::write(&path, &rules)?;
    let started = std::time::Instant::now();
    let out = node.sh_output(&format!("iptables-{backend}-restore < {}", path.display()));
    let took = started.elapsed();
    let _ = std::fs::remove_file(&path);
    if !out.status.success() {
        bail!("iptables-{backend}-restore failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}
