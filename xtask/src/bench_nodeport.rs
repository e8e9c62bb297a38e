//! `cargo xtask bench nodeport`: P9, NodePort packets per second through one node with
//! 10,000 NodePort Services, Skiff's XDP fast path against kube-proxy's iptables
//! NodePort ruleset (nft) with a flannel-style kernel VXLAN device, the same traffic
//! generator for both.
//!
//! Each run makes two namespaces joined by a veth: the node (`eth0` 192.168.79.1) and a
//! sink (192.168.79.2), which is both where the clients' packets come from and the node
//! that owns the backend's podCIDR (10.244.1.0/24). `skiff-nodeport-bench`
//! (node-agent/src/bin/skiff-nodeport-bench.rs; its doc says how the packets are made
//! and counted) then runs in the node's namespace:
//! - `skiff`: it loads the datapath, writes the Services into the maps and attaches the
//!   NodePort fast path to `eth0`, as the agent does;
//! - `iptables-nft`: this module loads kube-proxy's ruleset
//!   (`kube_proxy_rules::load_iptables` with node ports from 20000, the measured Service
//!   in the middle) and makes `flannel.1` with a route to the other node's podCIDR, as
//!   flannel does; the packets go through the node's stack.
//!
//! Two kinds of traffic, each printed for both datapaths and as a ratio:
//! - established flows (64 flows, 100,000 packets each, in turn in one test run, after
//!   each flow's first packet):
//!   a conntrack hit on both sides;
//! - new flows (`-new-flows`, 50,000 packets, each from a source port never used before):
//!   connection setup, where kube-proxy's packets walk KUBE-SERVICES and KUBE-NODEPORTS
//!   and Skiff picks a backend and writes its conntrack entries.
//!
//! Modes alternate over rounds after a warm-up (`bench_support::alternate`); every run
//! gets fresh namespaces, which are gone when it ends.

use anyhow::{Context, Result, bail, ensure};
use skiff_tests::{netns::Netns, unique_tag};

use crate::{
    bench_support::{DEFAULT_ROUNDS, alternate, print_environment, summary},
    kube_proxy_rules::load_iptables,
    lbsetup::{ServiceSpec, build_binaries},
};

const SERVICES: usize = 10_000;
const NODE_PORT_FIRST: u16 = 20_000;
/// The measured Service's backend, as `skiff-nodeport-bench` has it.
const BACKEND: &str = "10.244.1.5";
/// Packets of a new-flows run, each a flow of its own: one client address, a port each,
/// so that both sides can give every flow its own source port behind the one address
/// they translate to (about 64,000 ports there).
const NEW_FLOWS: u32 = 50_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Skiff,
    IptablesNft,
    SkiffNewFlows,
    IptablesNftNewFlows,
}

impl Mode {
    fn stack(self) -> bool {
        matches!(self, Mode::IptablesNft | Mode::IptablesNftNewFlows)
    }

    fn new_flows(self) -> bool {
        matches!(self, Mode::SkiffNewFlows | Mode::IptablesNftNewFlows)
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Skiff => "skiff-xdp",
            Mode::IptablesNft => "iptables-nft",
            Mode::SkiffNewFlows => "new-flows-skiff-xdp",
            Mode::IptablesNftNewFlows => "new-flows-iptables-nft",
        }
    }
}

const MODES: [Mode; 4] = [Mode::Skiff, Mode::IptablesNft, Mode::SkiffNewFlows, Mode::IptablesNftNewFlows];

pub fn run(args: &[String]) -> Result<()> {
    let mut rounds = DEFAULT_ROUNDS;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--rounds" => rounds = iter.next().context("--rounds N")?.parse()?,
            other => bail!("unknown argument {other}; usage: cargo xtask bench nodeport [-- --rounds N]"),
        }
    }
    let bin_dir = build_binaries(true)?;
    let bench = bin_dir.join("skiff-nodeport-bench");
    print_environment(None, &[]);
    let figures = alternate("nodeport", &MODES, rounds, |mode| measure(*mode, &bench))?;
    for mode in MODES {
        println!("P9 nodeport-pps-{}@{SERVICES}: {}", mode.label(), summary(figures.of(&mode), "pps", 0));
    }
    let ratios = figures.ratios(&Mode::Skiff, &Mode::IptablesNft);
    println!("P9 nodeport-pps-vs-iptables@{SERVICES}: {}", summary(&ratios, "x", 2));
    let ratios = figures.ratios(&Mode::SkiffNewFlows, &Mode::IptablesNftNewFlows);
    println!("P9 nodeport-new-flows-pps-vs-iptables@{SERVICES}: {}", summary(&ratios, "x", 2));
    Ok(())
}

/// One run of `mode` on fresh namespaces: packets per second.
fn measure(mode: Mode, bench: &std::path::Path) -> Result<f64> {
    let tag = unique_tag("p9");
    let node = Netns::new(&format!("{tag}-node"));
    let sink = Netns::new(&format!("{tag}-sink"));
    node.sh(&format!(
        "ip link add eth0 type veth peer name eth0 netns {} && ip addr add 192.168.79.1/24 dev eth0 && ip link set eth0 up",
        sink.name
    ));
    sink.sh("ip addr add 192.168.79.2/24 dev eth0 && ip link set eth0 up");
    let sink_mac = mac(&sink)?;
    // A node forwards (pods' traffic), whichever datapath it runs.
    node.sh(&format!(
        "ip neigh replace 192.168.79.2 lladdr {sink_mac} dev eth0 nud permanent && sysctl -qw net.ipv4.ip_forward=1"
    ));
    if mode.stack() {
        node.sh("ip link add flannel.1 type vxlan id 1 local 192.168.79.1 dstport 8472 nolearning dev eth0 && \
             ip link set flannel.1 mtu 1450 up && ip addr add 10.244.0.0/32 dev flannel.1 && \
             ip neigh replace 10.244.1.0 lladdr 02:00:00:00:01:01 dev flannel.1 nud permanent && \
             bridge fdb append 02:00:00:00:01:01 dev flannel.1 dst 192.168.79.2 && \
             ip route replace 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink");
        load_iptables(&node, &specs(), "nft", Some(NODE_PORT_FIRST))?;
    }
    let mut cmd = node.command(bench.to_str().context("a UTF-8 path")?);
    cmd.args(["--mode", if mode.stack() { "stack" } else { "skiff" }, "--sink-netns", &sink.path()]).args([
        "--services",
        &SERVICES.to_string(),
        "--node-port-first",
        &NODE_PORT_FIRST.to_string(),
    ]);
    if mode.new_flows() {
        cmd.args(["--new-flows", &NEW_FLOWS.to_string()]);
    }
    let out = cmd.output().context("running skiff-nodeport-bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "skiff-nodeport-bench --mode {mode:?} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("[nodeport] {mode:?}: {}", stdout.trim());
    let pps = stdout.split_whitespace().skip_while(|w| *w != "pps").nth(1).context("no pps in the output")?;
    Ok(pps.parse()?)
}

/// The ruleset's Services: cluster IPs from 10.100.0.0, one endpoint each, the measured
/// one (in the middle) on [`BACKEND`].
fn specs() -> Vec<ServiceSpec> {
    (0..SERVICES)
        .map(|i| {
            let vip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 100, 0, 0)) + i as u32);
            let endpoint = if i == SERVICES / 2 {
                BACKEND.to_owned()
            } else {
                std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 244, 8, 0)) + i as u32).to_string()
            };
            ServiceSpec { name: format!("np{i}"), vip: vip.to_string(), endpoints: vec![endpoint] }
        })
        .collect()
}

fn mac(ns: &Netns) -> Result<String> {
    let link = ns.sh("ip -o link show eth0");
    Ok(link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).context("eth0 has no MAC")?.to_owned())
}
