//! `cargo xtask bench lb`: P1, the load balancer's cost per packet, and P2, new
//! connections per second through a ClusterIP with 10,000 Services.
//!
//! - P1 synthetic: `skiff-lb-bench` (node-agent/src/bin/skiff-lb-bench.rs; its doc says
//!   how each path is measured) with 1, 10,000 and 100,000 Services.
//! - P2: a client pod opens connections (connect, one request, close) to a ClusterIP
//!   whose three backends are pods of the same node, in these modes:
//!   - `ebpf`: Skiff's agent, on a node as it runs in a cluster: the pods in its
//!     endpoints map as skiff-cni writes them, so a pod's packets for another pod of
//!     the node go from one veth straight into the other (`bpf_redirect_peer`), and
//!     the masquerade rule pod traffic leaving the pod network needs (an iptables
//!     MASQUERADE in the nat table, which turns netfilter conntrack on in the node's
//!     namespace: every flow through the node's stack pays for it, as in the iptables
//!     modes; Skiff's pass beside it);
//!   - `ebpf-pure`: the same without that rule, so without netfilter conntrack;
//!   - `ebpf-sock`: as `ebpf`, with the socket-level load balancer on a cgroup of its
//!     own that the client runs in: each connection goes to a backend at `connect()`.
//!     This is the path a pod of a Skiff cluster gets by default, so the unprefixed
//!     ratio lines (`vs-pod-ip`, `vs-iptables-nft`, `vs-iptables-legacy`) are its;
//!     `tc-` lines are the tc path's (`ebpf`);
//!   - `iptables-nft`, `iptables-legacy`: the same Services as kube-proxy's iptables
//!     mode writes them (`crate::kube_proxy_rules::load_iptables`), plus the masquerade
//!     rule;
//!   - `iptables-nft@1`: kube-proxy's ruleset with that one Service only: the fixed
//!     cost of NAT, apart from the cost of 10,000 rules;
//!   - `pod-ip`: no Service and no agent, straight to the three pods' addresses in
//!     turn through the node's routing (with the masquerade rule): the kernel's own
//!     path, which P2's goal (0.95 of its rate) is set against.
//!
//!   Modes alternate over rounds after a warm-up (`bench_support::alternate`). Each
//!   run gets a node of its own: fresh namespaces and echo servers, then the agent or
//!   the ruleset. Flushing conntrack (`conntrack -F`) between modes would not be
//!   enough: a legacy nat table, once made in a namespace, stays registered until the
//!   namespace goes, and with it netfilter conntrack, which would then tax every later
//!   run. Each run checks which base it ran on (`conntrack -C`: entries in the modes
//!   whose flows cross the node's netfilter, none in the pure one; in Skiff's other
//!   modes, whose flows pass beside it, the rule itself), and any failed connection
//!   fails the bench.
//! - P1 from the kernel: during the `ebpf` runs the kernel's BPF statistics are on
//!   (`BPF_ENABLE_STATS`, what `kernel.bpf_stats_enabled` switches, held by a file
//!   descriptor so that it goes off by itself however the bench ends), and each Skiff
//!   program's run time and run count are read before and after the measurement.
//!
//! This module must not leave anything behind: every namespace, agent and pin of a run
//! is a guard dropped at the end of the run.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};
use skiff_ebpf_common::pin;
use skiff_tests::{PinDir, topology::NodeTopology, unique_tag};

use crate::{
    bench_support::{BenchCgroup, DEFAULT_ROUNDS, Rounds, alternate, print_environment, summary},
    kube_proxy_rules::load_iptables,
    lbsetup::{
        ServiceSpec, build_binaries, services_json, start_agent, start_agent_with, start_echo_servers, write_manifest,
    },
    util::progress,
};

const TARGET_VIP: &str = "10.96.0.10";
const BACKENDS: [&str; 3] = ["b1", "b2", "b3"];
const PODS: [&str; 4] = ["client", "b1", "b2", "b3"];
/// The pod network the masquerade rule leaves alone (the cluster CIDR).
const CLUSTER_CIDR: &str = "10.244.0.0/16";

pub fn run(args: &[String]) -> Result<()> {
    let mut services = 10_000usize;
    let mut seconds = 5u64;
    let mut rounds = DEFAULT_ROUNDS;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().with_context(|| format!("{arg} needs a number"));
        match arg.as_str() {
            "--services" => services = value()?.parse()?,
            "--seconds" => seconds = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            other => {
                bail!("unknown argument {other}; usage: cargo xtask bench lb [-- --services N --seconds S --rounds R]")
            }
        }
    }
    ensure!(services > 0 && seconds > 0 && rounds > 0, "--services, --seconds and --rounds must be above 0");
    let bin = build_binaries(true)?;

    // The environment, on a node built as every P2 run builds its own.
    let backends = {
        let topo = NodeTopology::new(&unique_tag("blb"), &PODS);
        let client = topo.pod("client");
        let mut devices = vec![(Some(&client.ns), "eth0"), (Some(&topo.node), client.host_if.as_str())];
        devices.extend(BACKENDS.iter().map(|b| (Some(&topo.node), topo.pod(b).host_if.as_str())));
        print_environment(None, &devices);
        BACKENDS.iter().map(|b| topo.pod(b).ip.to_string()).collect::<Vec<_>>()
    };

    progress("bench", "P1: the load balancer's cost per packet (BPF_PROG_TEST_RUN)...");
    let status = Command::new(bin.join("skiff-lb-bench"))
        .args(["--rounds", &rounds.to_string()])
        .status()
        .context("running skiff-lb-bench")?;
    if !status.success() {
        bail!("skiff-lb-bench failed ({status})");
    }

    progress("bench", &format!("P2: connection rate through a ClusterIP with {services} Services..."));
    let specs = service_specs(services, &backends);
    let one = vec![ServiceSpec { name: "web".into(), vip: TARGET_VIP.into(), endpoints: backends.clone() }];
    let manifests = TempDir(std::env::temp_dir().join(format!("skiff-{}-manifests", unique_tag("blb"))));
    write_manifest(&manifests.0, "services.json", &services_json(&specs))?;
    let p2 = P2 { bin: &bin, manifests: &manifests.0, specs, one, backends, seconds };
    // The kernel's BPF statistics, on while this descriptor lives.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("turning the kernel's BPF statistics on")?;
    let runs = alternate("bench", &MODES, rounds, |mode| p2.measure(*mode))?;
    let figures = Rounds {
        modes: runs.modes.clone(),
        values: runs.values.iter().map(|mode| mode.iter().map(|run| run.rate).collect()).collect(),
    };

    for mode in MODES {
        println!("P2 conn-rate-{}: {}", mode.label(services), summary(figures.of(&mode), "conn/s", 0));
    }
    for line in ratio_lines(&figures, services) {
        println!("{line}");
    }
    for (program, values) in per_program(runs.of(&Mode::Ebpf)) {
        println!("P1 lb-cost-in-traffic-{program}: {}", summary(&values, "ns/pkt", 0));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ebpf,
    EbpfPure,
    EbpfSock,
    IptablesNft,
    IptablesLegacy,
    IptablesNftOne,
    PodIp,
}

const MODES: [Mode; 7] = [
    Mode::Ebpf,
    Mode::EbpfPure,
    Mode::EbpfSock,
    Mode::IptablesNft,
    Mode::IptablesLegacy,
    Mode::IptablesNftOne,
    Mode::PodIp,
];

impl Mode {
    /// The figure's name, from the Service count asked for (not from what a run found).
    fn label(self, services: usize) -> String {
        match self {
            Mode::Ebpf => format!("ebpf@{services}"),
            Mode::EbpfPure => format!("ebpf-pure@{services}"),
            Mode::EbpfSock => format!("ebpf-sock@{services}"),
            Mode::IptablesNft => format!("iptables-nft@{services}"),
            Mode::IptablesLegacy => format!("iptables-legacy@{services}"),
            Mode::IptablesNftOne => "iptables-nft@1".into(),
            Mode::PodIp => "pod-ip".into(),
        }
    }

    /// Whether Skiff's agent is the node's datapath in this mode.
    fn runs_skiff(self) -> bool {
        matches!(self, Mode::Ebpf | Mode::EbpfPure | Mode::EbpfSock)
    }

    /// The iptables back end of the node's masquerade rule: the legacy run keeps all
    /// its rules in legacy tables, as such a node would; the pure run has none.
    fn masquerade(self) -> Option<&'static str> {
        match self {
            Mode::EbpfPure => None,
            Mode::IptablesLegacy => Some("legacy"),
            _ => Some("nft"),
        }
    }
}

/// The ratios printed, `(label, numerator, denominator)`, each per round. The unprefixed
/// ones are for the path a pod gets by default: in a Skiff cluster (`cargo xtask up`)
/// pods live below the cgroup the agent's socket-level load balancer is attached to,
/// so a pod's TCP connection to a ClusterIP is sent to its backend at `connect()`
/// (`ebpf-sock`). The `tc-` ones are for the tc path (`ebpf`), which a node without
/// socket LB gives its pods, and which the socket hooks leave to it.
const RATIOS: [(&str, Mode, Mode); 9] = [
    ("vs-iptables-nft@{n}", Mode::EbpfSock, Mode::IptablesNft),
    ("vs-iptables-legacy@{n}", Mode::EbpfSock, Mode::IptablesLegacy),
    ("vs-pod-ip@{n}", Mode::EbpfSock, Mode::PodIp),
    ("tc-vs-iptables-nft@{n}", Mode::Ebpf, Mode::IptablesNft),
    ("tc-vs-iptables-legacy@{n}", Mode::Ebpf, Mode::IptablesLegacy),
    ("tc-vs-pod-ip@{n}", Mode::Ebpf, Mode::PodIp),
    ("pure-vs-ebpf@{n}", Mode::EbpfPure, Mode::Ebpf),
    ("iptables-nft-vs-pod-ip@{n}", Mode::IptablesNft, Mode::PodIp),
    ("iptables-nft-vs-pod-ip@1", Mode::IptablesNftOne, Mode::PodIp),
];

fn ratio_lines(figures: &Rounds<Mode>, services: usize) -> Vec<String> {
    RATIOS
        .iter()
        .map(|(label, a, b)| {
            let label = label.replace("{n}", &services.to_string());
            format!("P2 conn-rate-{label}: {}", summary(&figures.ratios(a, b), "x", 2))
        })
        .collect()
}

/// Each program's figures in run order, from the runs' maps of program → ns/pkt.
fn per_program(runs: &[Run]) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for (program, ns) in &run.in_traffic {
            out.entry(program.clone()).or_default().push(*ns);
        }
    }
    out
}

/// The masquerade rule a cluster's nodes carry for pod traffic leaving the pod network.
fn masquerade_rule(backend: &str) -> String {
    format!(
        "iptables-{backend} -t nat -A POSTROUTING -s {CLUSTER_CIDR} ! -d {CLUSTER_CIDR} \
         -m comment --comment \"pod traffic leaving the cluster\" -j MASQUERADE --random-fully"
    )
}

struct P2<'a> {
    bin: &'a Path,
    manifests: &'a Path,
    specs: Vec<ServiceSpec>,
    one: Vec<ServiceSpec>,
    backends: Vec<String>,
    seconds: u64,
}

/// What one run measured.
struct Run {
    /// Connections per second.
    rate: f64,
    /// For `ebpf` runs: each Skiff program that ran, its ns per run from the kernel's
    /// statistics.
    in_traffic: BTreeMap<String, f64>,
}

impl P2<'_> {
    /// One run of `mode` on a node of its own; the connection rate.
    fn measure(&self, mode: Mode) -> Result<Run> {
        let tag = unique_tag("blb");
        let topo = NodeTopology::new(&tag, &PODS);
        topo.pod("client").ns.sh("sysctl -qw net.ipv4.ip_local_port_range='1024 65000' net.ipv4.tcp_tw_reuse=1");
        let _servers = start_echo_servers(&topo, self.bin, &BACKENDS);
        let pins = PinDir::new(&tag);
        let started = Instant::now();
        // The socket mode's cgroup: the agent attaches to it, the client runs in it.
        let cgroup = (mode == Mode::EbpfSock).then(|| BenchCgroup::new(&format!("skiff-bench-{tag}")));
        let mut agent = match mode {
            Mode::Ebpf | Mode::EbpfPure => Some(start_agent(&topo, self.bin, &pins.path, self.manifests)?),
            Mode::EbpfSock => {
                let cgroup = cgroup.as_ref().map(|c| c.0.display().to_string()).unwrap_or_default();
                let args =
                    ["--manifests".into(), self.manifests.display().to_string(), "--socket-lb-cgroup".into(), cgroup];
                Some(start_agent_with(&topo, self.bin, &pins.path, &args)?)
            }
            Mode::IptablesNft => load_iptables(&topo.node, &self.specs, "nft", None).map(|_| None)?,
            Mode::IptablesLegacy => load_iptables(&topo.node, &self.specs, "legacy", None).map(|_| None)?,
            Mode::IptablesNftOne => load_iptables(&topo.node, &self.one, "nft", None).map(|_| None)?,
            Mode::PodIp => None,
        };
        if agent.is_some() {
            // As skiff-cni does for a cluster's pods: the programs deliver packets for
            // the node's pods straight into them.
            topo.register_endpoints(&pins.path).context("writing the pods into the endpoints map")?;
        }
        // After the ruleset: a restore replaces the whole nat table.
        if let Some(backend) = mode.masquerade() {
            topo.node.sh(&masquerade_rule(backend));
        }
        progress("bench", &format!("  {mode:?}: set up in {:.1} s", started.elapsed().as_secs_f64()));
        let targets = match mode {
            Mode::PodIp => self.backends.iter().map(|b| format!("{b}:8080")).collect::<Vec<_>>().join(","),
            _ => format!("{TARGET_VIP}:80"),
        };
        // The Service answers at all, from every backend's side, before the clock runs.
        let check = self.conn_rate(
            &topo,
            cgroup.as_ref(),
            &targets,
            &["--max", "20", "--threads", "1", "--duration-ms", "10000"],
        )?;
        ensure!(check.conns == 20, "{mode:?}: the warm-up made {} connections of 20", check.conns);

        let before = if mode == Mode::Ebpf { program_stats(&pins.path)? } else { BTreeMap::new() };
        let duration = (self.seconds * 1000).to_string();
        let run = self.conn_rate(&topo, cgroup.as_ref(), &targets, &["--duration-ms", &duration, "--threads", "2"])?;
        let mut in_traffic = BTreeMap::new();
        if mode == Mode::Ebpf {
            let after = program_stats(&pins.path)?;
            in_traffic = after.iter().filter_map(|(p, a)| Some((p.clone(), per_run(*before.get(p)?, *a)?))).collect();
            // Without statistics the kernel counts no runs either.
            ensure!(in_traffic.contains_key("from_pod"), "the kernel counted no run of from_pod: statistics off?");
        }

        let tracked = conntrack_count(&topo)?;
        match mode.masquerade() {
            None => ensure!(tracked == 0, "{mode:?}: netfilter conntrack tracked {tracked} flows in a pure run"),
            // Skiff hands a pod's packets for a pod of the node straight to it, past the
            // node's netfilter, so its flows are not tracked: the rule is checked instead.
            Some(backend) if mode.runs_skiff() => ensure!(
                topo.node.sh(&format!("iptables-{backend} -t nat -S POSTROUTING")).contains("MASQUERADE"),
                "{mode:?}: the masquerade rule is missing"
            ),
            Some(_) => ensure!(tracked > 0, "{mode:?}: netfilter conntrack was off; the masquerade rule is missing"),
        }
        if let Some(agent) = agent.as_mut() {
            agent.kill();
        }
        Ok(Run { rate: run.rate, in_traffic })
        // The pins drop here (links go, programs detach), then the namespaces.
    }

    /// `skiff-echo conn-rate` from the client pod (in `cgroup` if given); any failed
    /// connection is an error.
    fn conn_rate(
        &self,
        topo: &NodeTopology,
        cgroup: Option<&BenchCgroup>,
        targets: &str,
        args: &[&str],
    ) -> Result<ConnRun> {
        let echo = self.bin.join("skiff-echo");
        let line = format!("exec {} conn-rate {targets} {}", echo.display(), args.join(" "));
        let line = match cgroup {
            Some(cgroup) => format!("echo $$ > {}/cgroup.procs && {line}", cgroup.0.display()),
            None => line,
        };
        let out = topo.pod("client").ns.command("sh").args(["-c", &line]).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "skiff-echo conn-rate {targets} failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let run = parse_conn_rate(&text)?;
        progress("bench", &format!("  {}", text.trim()));
        ensure!(run.failed == 0, "{} of {} connections to {targets} failed", run.failed, run.conns);
        Ok(run)
    }
}

/// `conntrack -C` in the node's namespace: the flows netfilter tracks there.
fn conntrack_count(topo: &NodeTopology) -> Result<u64> {
    let out = topo.node.sh_output("conntrack -C");
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "conntrack -C failed: {}", String::from_utf8_lossy(&out.stderr));
    text.trim().parse().with_context(|| format!("conntrack -C printed `{}`", text.trim()))
}

/// Each pinned Skiff program's (run time in ns, run count) under `pin_dir`.
fn program_stats(pin_dir: &Path) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for name in [
        pin::PROG_FROM_POD,
        pin::PROG_TO_POD,
        pin::PROG_FROM_OVERLAY,
        pin::PROG_TO_OVERLAY,
        pin::PROG_FROM_UNDERLAY,
        pin::PROG_TO_UNDERLAY,
    ] {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::programs::ProgramInfo::from_pin(&path).with_context(|| format!("{}", path.display()))?;
        let program = name.trim_end_matches("_v1").to_owned();
        out.insert(program, (info.run_time().as_nanos() as u64, info.run_count()));
    }
    Ok(out)
}

/// ns per run between two readings of (run time, run count); `None` if it did not run.
fn per_run(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let runs = after.1.checked_sub(before.1).filter(|n| *n > 0)?;
    Some(after.0.saturating_sub(before.0) as f64 / runs as f64)
}

/// What `skiff-echo conn-rate` printed.
#[derive(Debug, PartialEq)]
struct ConnRun {
    conns: u64,
    failed: u64,
    rate: f64,
}

/// Parses `conns=N failed=F elapsed_s=S rate=R`.
fn parse_conn_rate(text: &str) -> Result<ConnRun> {
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name}= in the client's output: {text}"))
    };
    Ok(ConnRun { conns: field("conns")?.parse()?, failed: field("failed")?.parse()?, rate: field("rate")?.parse()? })
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

/// A directory removed with everything in it on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_rate_output_is_parsed() {
        let run = parse_conn_rate("conns=1200 failed=3 elapsed_s=1.001 rate=1195.8\n").unwrap();
        assert_eq!(run, ConnRun { conns: 1200, failed: 3, rate: 1195.8 });
        assert!(parse_conn_rate("conns=1 elapsed_s=1.0").is_err(), "a missing field is an error");
    }

    #[test]
    fn per_run_cost_is_the_difference_of_readings() {
        assert_eq!(per_run((1_000, 10), (31_000, 110)), Some(300.0));
        assert_eq!(per_run((1_000, 10), (1_000, 10)), None, "a program that did not run has no cost");
    }

    #[test]
    fn ratios_are_per_round_and_labelled_by_the_counts_asked_for() {
        let at = |mode: Mode| MODES.iter().position(|m| *m == mode).unwrap();
        let mut values = vec![vec![1.0, 1.0]; MODES.len()];
        values[at(Mode::Ebpf)] = vec![300.0, 330.0];
        values[at(Mode::EbpfSock)] = vec![570.0, 550.0];
        values[at(Mode::IptablesNft)] = vec![100.0, 110.0];
        values[at(Mode::PodIp)] = vec![600.0, 550.0];
        let lines = ratio_lines(&Rounds { modes: MODES.to_vec(), values }, 10_000);
        // The headline lines are the socket path's, a pod's default.
        assert_eq!(lines[0], "P2 conn-rate-vs-iptables-nft@10000: 5.70 x (min 5.00, max 5.70, n=2)");
        assert_eq!(lines[2], "P2 conn-rate-vs-pod-ip@10000: 1.00 x (min 0.95, max 1.00, n=2)");
        assert_eq!(lines[3], "P2 conn-rate-tc-vs-iptables-nft@10000: 3.00 x (min 3.00, max 3.00, n=2)");
        assert_eq!(lines[5], "P2 conn-rate-tc-vs-pod-ip@10000: 0.60 x (min 0.50, max 0.60, n=2)");
        assert_eq!(lines[8], "P2 conn-rate-iptables-nft-vs-pod-ip@1: 0.00 x (min 0.00, max 0.00, n=2)");
    }

    #[test]
    fn only_the_pure_run_lacks_the_masquerade_rule() {
        let without: Vec<Mode> = MODES.into_iter().filter(|m| m.masquerade().is_none()).collect();
        assert_eq!(without, [Mode::EbpfPure]);
        assert_eq!(Mode::IptablesLegacy.masquerade(), Some("legacy"));
        assert!(masquerade_rule("nft").starts_with("iptables-nft -t nat -A POSTROUTING -s 10.244.0.0/16 ! -d"));
    }

    #[test]
    fn in_traffic_figures_are_gathered_per_program() {
        let run = |a: f64, b: f64| Run {
            rate: 0.0,
            in_traffic: BTreeMap::from([("from_pod".to_owned(), a), ("to_pod".to_owned(), b)]),
        };
        let all = per_program(&[run(1.0, 2.0), run(3.0, 4.0)]);
        assert_eq!(all["from_pod"], [1.0, 3.0]);
        assert_eq!(all["to_pod"], [2.0, 4.0]);
    }
}
