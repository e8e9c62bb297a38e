//! `cargo xtask bench overlay`: P3 and P4 on a two-node topology (two node namespaces on
//! an underlay bridge, a client pod on node 1, a server pod on node 2), and P1's cost per
//! packet of the programs in that traffic.
//!
//! Five modes, run in alternating rounds after a warm-up (`bench_support::alternate`):
//! - `EbpfPodIp`: Skiff's agents (`--manifests`, `--nodes`, `--socket-lb-cgroup`) on
//!   both nodes, pod → pod IP;
//! - `EbpfClusterIp`: the same datapath, pod → ClusterIP → pod (P3 against the above),
//!   the path a pod gets by default: the client runs in its node's pod cgroup, as a
//!   pod of the local cluster does, so its connection goes to the backend at
//!   `connect()` (socket-level load balancing) and no packet of it is translated;
//! - `EbpfClusterIpTc`: the same, the client outside that cgroup: every packet is
//!   translated at tc (conntrack, NAT), the path of a node without socket LB or of
//!   traffic the socket hooks cannot see;
//! - `KernelVxlan`: flannel's vxlan backend made by hand (P4's baseline);
//! - `PlainRouting`: a route to the peer's podCIDR via its underlay address, no
//!   encapsulation, same pod MTU: the physical reference, and the ceiling of the kernel's
//!   VXLAN, which takes the same forwarding path on both nodes plus encapsulation; kernel
//!   VXLAN above it is a measurement error, printed as a WARNING line. Skiff's overlay
//!   may pass it: its programs skip both nodes' IP forwarding (wrapped and sent out with
//!   `bpf_redirect_neigh`; handed from the VXLAN device to the pod with
//!   `bpf_redirect_peer`, past the receiving node's routing and the pod veth's backlog
//!   queue), which plain routing pays for every packet.
//!
//! Each run is iperf3 (TCP, `-O 1` so slow start is left out, retransmits from its JSON,
//! the sender's congestion control fixed: cubic unless `--congestion-control` says
//! otherwise) then a request/response rate on one connection (`skiff-echo rr`), clients
//! on one CPU and servers on another in every mode. Each iperf3 run also says how many
//! bytes node 1's underlay sent per packet: whether GSO packets cross it whole, so that
//! modes compare per-packet work on equal packet counts. Clients and servers run in their
//! node's pod cgroup in every mode but `EbpfClusterIpTc`. Each datapath is set up before
//! its modes' runs and torn down after them, every round, with a check that nothing of
//! it is left for the next (`datapaths`).
//!
//! After the rounds, extra ClusterIP runs on the tc path with the kernel's BPF statistics on read each
//! program's real cost per packet. They are kept out of the rounds: the statistics' own
//! clock reads would slow only the eBPF modes.
//!
//! Nothing here may send a packet out of the machine: every address lives in namespaces
//! the bench creates, none of which has a default route to the host.

mod datapaths;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use aya::programs::ProgramInfo;
use serde_json::Value;
use skiff_tests::{
    netns::{ChildGuard, Netns, wait_until},
    topology::{NodeTopology, Pod, Underlay},
    unique_tag,
};

use crate::{
    bench_support::{BenchCgroup, DEFAULT_ROUNDS, Rounds, alternate, print_devices, print_environment, summary},
    lbsetup::{build_binaries, write_manifest},
    util::progress,
};
use datapaths::{Active, Datapath};

const VIP: &str = "10.96.0.30";
const IPERF_PORT: u16 = 5201;
const RR_PORT: u16 = 8080;
const USAGE: &str =
    "usage: cargo xtask bench overlay [-- --seconds S --rounds N --profile DIR --congestion-control NAME]";
/// The senders' TCP congestion control unless `--congestion-control` says otherwise.
const DEFAULT_CONGESTION_CONTROL: &str = "cubic";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    EbpfPodIp,
    EbpfClusterIp,
    EbpfClusterIpTc,
    KernelVxlan,
    PlainRouting,
}

/// The order of every round.
const MODES: [Mode; 5] =
    [Mode::EbpfPodIp, Mode::EbpfClusterIp, Mode::EbpfClusterIpTc, Mode::KernelVxlan, Mode::PlainRouting];

impl Mode {
    fn datapath(self) -> Datapath {
        match self {
            Mode::EbpfPodIp | Mode::EbpfClusterIp | Mode::EbpfClusterIpTc => Datapath::Ebpf,
            Mode::KernelVxlan => Datapath::KernelVxlan,
            Mode::PlainRouting => Datapath::PlainRouting,
        }
    }

    /// The figure ID and label stem of the mode's own figures.
    fn label(self) -> (&'static str, &'static str) {
        match self {
            Mode::EbpfPodIp => ("P4", "ebpf-overlay"),
            Mode::EbpfClusterIp => ("P3", "clusterip"),
            Mode::EbpfClusterIpTc => ("P3", "clusterip-tc"),
            Mode::KernelVxlan => ("P4", "kernel-vxlan"),
            Mode::PlainRouting => ("P4", "plain-routing"),
        }
    }
}

#[derive(Debug, PartialEq)]
struct Options {
    seconds: u64,
    rounds: usize,
    /// Where to write a system-wide `perf record -a -g` of each mode's iperf3 runs
    /// (`<mode>-<n>.data`, the warm-up's included), to see where a mode's CPU time goes;
    /// none by default, as the sampling itself costs a few percent.
    profile: Option<PathBuf>,
    /// The iperf3 client's TCP congestion control (`iperf3 -C`), the same in every mode.
    /// A new namespace inherits the host's default, which may pace every packet with a
    /// timer (BBR without the fq qdisc) or overshoot into drops while it probes: the
    /// bench compares datapaths, so the algorithm is fixed and printed, the kernel's own
    /// default unless told otherwise.
    congestion_control: String,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut options = Options {
        seconds: 10,
        rounds: DEFAULT_ROUNDS,
        profile: None,
        congestion_control: DEFAULT_CONGESTION_CONTROL.into(),
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().with_context(|| format!("{arg} needs a value; {USAGE}"));
        match arg.as_str() {
            "--seconds" => options.seconds = value()?.parse().context("--seconds")?,
            "--rounds" => options.rounds = value()?.parse().context("--rounds")?,
            "--profile" => options.profile = Some(PathBuf::from(value()?)),
            "--congestion-control" => options.congestion_control = value()?.clone(),
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    if options.seconds == 0 || options.rounds == 0 {
        bail!("--seconds and --rounds must be at least 1");
    }
    Ok(options)
}

pub fn run(args: &[String]) -> Result<()> {
    let options = parse_args(args)?;
    let bin = build_binaries(true)?;
    progress("bench", "building two nodes on an underlay bridge...");
    let cluster = Cluster::new(&unique_tag("bov"), bin, options.congestion_control)?;
    print_environment(None, &cluster.path_devices());
    println!("# env pinning: clients on CPU {}, servers on CPU {}", cluster.client_cpu, cluster.server_cpu);
    println!(
        "# env congestion-control: {} (iperf3's sender; the host's default is {})",
        cluster.congestion_control,
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default().trim()
    );
    println!(
        "# env underlay bridge: bridge-nf-call-iptables {} (a wire runs no firewall)",
        cluster.underlay.ns.sh("cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo absent").trim()
    );
    datapaths::check_clean(&cluster, &[]).context("the fresh topology")?;

    if let Some(dir) = &options.profile {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut bench =
        Bench { c: &cluster, active: None, shown: Vec::new(), seconds: options.seconds, profile: options.profile };
    let samples = alternate("bench", &MODES, options.rounds, |mode| bench.measure(*mode))?;
    let costs = bench.program_costs(options.rounds)?;
    bench.switch_to(None)?;
    progress("bench", "every datapath torn down; nothing left in the nodes");

    let figures = Figures::new(&samples);
    for line in figures.lines().into_iter().chain(figures.ceiling_warnings()).chain(cost_lines(&costs)) {
        println!("{line}");
    }
    Ok(())
}

/// The topology and the servers, which live for the whole bench; the datapaths come and go.
pub(crate) struct Cluster {
    // Fields drop in order: servers first, the namespaces after, the files last.
    _servers: Vec<ChildGuard>,
    n1: NodeTopology,
    n2: NodeTopology,
    underlay: Underlay,
    bin: PathBuf,
    client_cpu: usize,
    server_cpu: usize,
    /// The iperf3 client's TCP congestion control.
    congestion_control: String,
    /// Each node's pod cgroup (the agent's `--socket-lb-cgroup`), node 1's first.
    pod_cgroups: [BenchCgroup; 2],
    dir: RemoveDir,
}

impl Cluster {
    fn new(tag: &str, bin: PathBuf, congestion_control: String) -> Result<Self> {
        let underlay = Underlay::new(tag);
        let n1 = NodeTopology::node_of_cluster(tag, 1, &["client"]);
        let n2 = NodeTopology::node_of_cluster(tag, 2, &["server"]);
        underlay.connect(&n1);
        underlay.connect(&n2);
        let dir = RemoveDir(std::env::temp_dir().join(format!("skiff-{tag}")));
        std::fs::create_dir_all(&dir.0)?;
        let server_ip = n2.pod("server").ip.to_string();
        write_manifest(&dir.0.join("manifests"), "bench.yaml", &service_manifest(&server_ip))?;
        let nodes = [&n1, &n2]
            .iter()
            .map(|n| {
                format!("- {{name: n{}, podCIDR: 10.244.{}.0/24, underlayIP: {}}}\n", n.index, n.index, n.underlay_ip())
            })
            .collect::<String>();
        std::fs::write(dir.0.join("nodes.yaml"), format!("nodes:\n{nodes}"))?;
        // Two CPUs on the machines this runs on: the client on one, the server on the other.
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let pod_cgroups = [1, 2].map(|i| BenchCgroup::new(&format!("skiff-{tag}-n{i}")));
        let mut cluster = Self {
            _servers: Vec::new(),
            n1,
            n2,
            underlay,
            bin,
            client_cpu: 0,
            server_cpu: usize::from(cpus > 1),
            congestion_control,
            pod_cgroups,
            dir,
        };
        // Each connection starts from scratch: the kernel otherwise keeps a closed
        // connection's ssthresh and RTT per destination (tcp_metrics) and starts the
        // next one from them, so a mode with many retransmits (plain routing) would slow
        // the start of whichever mode runs after it, to the same server address.
        for pod in [cluster.client(), cluster.server()] {
            pod.ns.sh("sysctl -qw net.ipv4.tcp_no_metrics_save=1 && ip tcp_metrics flush all");
        }
        let echo = cluster.bin.join("skiff-echo");
        let server = cluster.server();
        let server_cgroup = Some(cluster.pod_cgroups[1].0.as_path());
        let servers = [
            pinned(&server.ns, cluster.server_cpu, server_cgroup, Path::new("iperf3")).args([
                "-s",
                "-p",
                &IPERF_PORT.to_string(),
            ]),
            pinned(&server.ns, cluster.server_cpu, server_cgroup, &echo).args([
                "serve",
                "--name",
                "server",
                "--tcp",
                &RR_PORT.to_string(),
            ]),
        ]
        .into_iter()
        .map(|cmd| cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().map(ChildGuard::new))
        .collect::<std::io::Result<Vec<_>>>()
        .context("starting iperf3 and skiff-echo in the server pod (cargo xtask setup installs iperf3)")?;
        let listening = || {
            let out = server.ns.sh_output("ss -Hltn");
            let text = String::from_utf8_lossy(&out.stdout);
            [IPERF_PORT, RR_PORT].iter().all(|p| text.contains(&format!(":{p} ")))
        };
        if !wait_until(Duration::from_secs(10), listening) {
            bail!("the servers in the server pod do not listen on {IPERF_PORT} and {RR_PORT} after 10 s");
        }
        cluster._servers = servers;
        Ok(cluster)
    }

    fn nodes(&self) -> [&NodeTopology; 2] {
        [&self.n1, &self.n2]
    }

    fn client(&self) -> &Pod {
        self.n1.pod("client")
    }

    fn server(&self) -> &Pod {
        self.n2.pod("server")
    }

    /// The client pod's cgroup, its node's pod cgroup.
    fn client_cgroup(&self) -> Option<&Path> {
        Some(self.pod_cgroups[0].0.as_path())
    }

    /// Node `index`'s pod cgroup (1 or 2).
    pub(crate) fn pod_cgroup(&self, index: u8) -> &Path {
        &self.pod_cgroups[usize::from(index.clamp(1, 2)) - 1].0
    }

    /// Every device a packet from the client to the server passes, in order.
    fn path_devices(&self) -> Vec<(Option<&Netns>, &str)> {
        let (client, server, ul) = (self.client(), self.server(), &self.underlay.ns);
        vec![
            (Some(&client.ns), "eth0"),
            (Some(&self.n1.node), &client.host_if),
            (Some(&self.n1.node), "eth0"),
            (Some(ul), "ul1"),
            (Some(ul), "br0"),
            (Some(ul), "ul2"),
            (Some(&self.n2.node), "eth0"),
            (Some(&self.n2.node), &server.host_if),
            (Some(&server.ns), "eth0"),
        ]
    }
}

/// The unmeasured traffic after each set-up.
const SETTLE_SECONDS: u64 = 1;

/// `program` run in `ns` on one CPU (`taskset`), the same CPU in every mode, and in
/// `cgroup` if given (entered before the program starts, so that its sockets are the
/// cgroup's from the first).
fn pinned(ns: &Netns, cpu: usize, cgroup: Option<&Path>, program: &Path) -> Command {
    let cpu = cpu.to_string();
    let mut cmd = match cgroup {
        Some(cgroup) => {
            let mut cmd = ns.command("sh");
            cmd.args(["-c", "echo $$ > \"$1/cgroup.procs\" && shift && exec taskset -c \"$@\"", "sh"])
                .arg(cgroup)
                .arg(&cpu);
            cmd
        }
        None => {
            let mut cmd = ns.command("taskset");
            cmd.args(["-c", &cpu]);
            cmd
        }
    };
    cmd.arg(program).stdin(Stdio::null());
    cmd
}

fn service_manifest(backend: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: bench, namespace: default}}\nspec:\n  clusterIP: {VIP}\n  ports:\n  - {{name: iperf, port: {IPERF_PORT}, targetPort: {IPERF_PORT}, protocol: TCP}}\n  - {{name: rr, port: {RR_PORT}, targetPort: {RR_PORT}, protocol: TCP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: bench-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: bench}}\naddressType: IPv4\nports:\n- {{name: iperf, port: {IPERF_PORT}, protocol: TCP}}\n- {{name: rr, port: {RR_PORT}, protocol: TCP}}\nendpoints:\n- addresses: [\"{backend}\"]\n"
    )
}

/// What one run of one mode measured.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    bits_per_second: f64,
    retransmits: u64,
    /// Requests per second on one connection.
    rr: f64,
}

/// Runs the modes, holding the one datapath that is up.
struct Bench<'a> {
    c: &'a Cluster,
    active: Option<Active>,
    /// Datapaths whose tunnel device was printed with the environment.
    shown: Vec<Datapath>,
    seconds: u64,
    profile: Option<PathBuf>,
}

impl Bench<'_> {
    /// Tears down the datapath that is up (checking that nothing of it is left) and sets
    /// up `want`, unless it is already up.
    fn switch_to(&mut self, want: Option<Datapath>) -> Result<()> {
        if self.active.as_ref().map(Active::datapath) == want {
            return Ok(());
        }
        if let Some(active) = self.active.take() {
            let was = active.datapath();
            active.down(self.c).with_context(|| format!("tearing down {was:?}"))?;
        }
        if let Some(datapath) = want {
            self.active = Some(Active::up(self.c, datapath).with_context(|| format!("setting up {datapath:?}"))?);
            // One unmeasured second of traffic: what follows a set-up (the agents'
            // first syncs, neighbour resolution, caches) would otherwise fall on
            // whichever mode happens to run first after it.
            let server_ip = self.c.server().ip.to_string();
            iperf(self.c, &server_ip, SETTLE_SECONDS, self.c.client_cgroup())
                .with_context(|| format!("settling {datapath:?}"))?;
            if let Some(dev) = datapath.tunnel_device()
                && !self.shown.contains(&datapath)
            {
                print_devices(&[(Some(&self.c.n1.node), dev), (Some(&self.c.n2.node), dev)]);
                self.shown.push(datapath);
            }
        }
        Ok(())
    }

    fn measure(&mut self, mode: Mode) -> Result<Sample> {
        self.switch_to(Some(mode.datapath()))?;
        let server_ip = self.c.server().ip.to_string();
        let target = if matches!(mode, Mode::EbpfClusterIp | Mode::EbpfClusterIpTc) { VIP } else { &server_ip };
        let cgroup = if mode == Mode::EbpfClusterIpTc { None } else { self.c.client_cgroup() };
        let recording = match &self.profile {
            Some(dir) => Some(PerfRecord::start(dir, mode.label().1)?),
            None => None,
        };
        let underlay_before = underlay_tx(self.c)?;
        let (bits_per_second, retransmits) = iperf(self.c, target, self.seconds, cgroup)?;
        let underlay_after = underlay_tx(self.c)?;
        let (packets, bytes) = (underlay_after.0 - underlay_before.0, underlay_after.1 - underlay_before.1);
        progress(
            "bench",
            &format!(
                "  {}: node 1's underlay sent {packets} packets, {} bytes each on average",
                mode.label().1,
                bytes / packets.max(1)
            ),
        );
        if let Some(recording) = recording {
            recording.stop()?;
        }
        let rr = request_response(self.c, target, self.seconds, cgroup)?;
        Ok(Sample { bits_per_second, retransmits, rr })
    }

    /// Per program and node, the nanoseconds per run (one run per packet, or per GSO/GRO
    /// batch) over `runs` ClusterIP iperf3 runs on the tc path (every packet
    /// translated), read from the kernel's BPF statistics.
    fn program_costs(&mut self, runs: usize) -> Result<Vec<(String, Vec<f64>)>> {
        self.switch_to(Some(Datapath::Ebpf))?;
        let Some(Active::Ebpf(overlay)) = &self.active else { bail!("the eBPF overlay is not up") };
        let before_enable = read_stats_sysctl();
        // BPF_ENABLE_STATS rather than writing kernel.bpf_stats_enabled: the kernel counts
        // holders and turns the statistics off again when the last descriptor closes, so
        // the setting is restored even if the bench dies, and never behind another
        // holder's back.
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("turning on the kernel's BPF statistics (BPF_ENABLE_STATS)")?;
        let mut costs: Vec<(String, Vec<f64>)> =
            overlay.programs.iter().map(|p| (p.label.clone(), Vec::new())).collect();
        for run in 1..=runs {
            progress("bench", &format!("P1 in traffic, run {run}/{runs}: ClusterIP with BPF statistics on"));
            let before = run_counters(&overlay.programs)?;
            iperf(self.c, VIP, self.seconds, None)?;
            let after = run_counters(&overlay.programs)?;
            for ((label, values), (b, a)) in costs.iter_mut().zip(before.iter().zip(&after)) {
                values.extend(per_run_ns(*b, *a));
                // Runs per second against the throughput tell whether the program saw
                // whole GSO/GRO packets or one per MTU.
                let runs_per_s = a.1.saturating_sub(b.1) / self.seconds.max(1);
                progress("bench", &format!("  {label}: {runs_per_s} runs/s"));
            }
        }
        drop(stats);
        // The sysctl shows only what was written to it, not BPF_ENABLE_STATS holders: it
        // stays as it was, which is the point.
        println!(
            "# env bpf-stats: counted during the P1 runs only (BPF_ENABLE_STATS, released after); kernel.bpf_stats_enabled {before_enable} before, {} after",
            read_stats_sysctl()
        );
        Ok(costs)
    }
}

/// Node 1's underlay interface's transmitted (packets, bytes) so far: one packet per
/// GSO packet that crosses it whole.
fn underlay_tx(c: &Cluster) -> Result<(u64, u64)> {
    let text = c.n1.node.sh("ip -j -s link show dev eth0");
    let links: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("`ip -j -s link`: {text}"))?;
    let tx = &links[0]["stats64"]["tx"];
    match (tx["packets"].as_u64(), tx["bytes"].as_u64()) {
        (Some(packets), Some(bytes)) => Ok((packets, bytes)),
        _ => bail!("no transmit counters of node 1's eth0 in `ip -j -s link`: {text}"),
    }
}

/// A running `perf record -a -g` (every CPU, call graphs), stopped with SIGINT so that
/// perf writes its file out.
struct PerfRecord {
    /// Killed if the run fails before [`PerfRecord::stop`].
    child: ChildGuard,
    path: PathBuf,
}

impl PerfRecord {
    /// Starts recording into `dir/<stem>-<n>.data`, `n` the first number not yet taken.
    fn start(dir: &Path, stem: &str) -> Result<Self> {
        let path = (1..)
            .map(|n| dir.join(format!("{stem}-{n}.data")))
            .find(|p| !p.exists())
            .context("no free profile name")?;
        let child = Command::new("perf")
            .args(["record", "-a", "-g", "-q", "-o"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record (--profile needs perf)")?;
        Ok(Self { child: ChildGuard::new(child), path })
    }

    fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.0.take() else { bail!("perf record was already stopped") };
        // SIGINT makes perf write its file out; the `kill` program sends it without
        // unsafe code here.
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let status = child.wait().context("waiting for perf record")?;
        progress("bench", &format!("  profile: {} ({status})", self.path.display()));
        Ok(())
    }
}

fn read_stats_sysctl() -> String {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").map_or_else(|e| format!("({e})"), |s| s.trim().into())
}

/// `(run_time_ns, run_cnt)` of each program.
fn run_counters(programs: &[datapaths::ProgramPin]) -> Result<Vec<(u64, u64)>> {
    programs
        .iter()
        .map(|p| {
            let info = ProgramInfo::from_pin(&p.path).with_context(|| format!("reading {}", p.path.display()))?;
            Ok((u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX), info.run_count()))
        })
        .collect()
}

/// Nanoseconds per run between two `(run_time_ns, run_cnt)` readings; `None` when the
/// program did not run.
fn per_run_ns(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let runs = after.1.checked_sub(before.1).filter(|&n| n > 0)?;
    Some(after.0.saturating_sub(before.0) as f64 / runs as f64)
}

/// TCP throughput (bit/s, as the receiver counted it) and the sender's retransmits from
/// the client pod (in `cgroup` if given) to `target`. A failed run fails the bench.
fn iperf(c: &Cluster, target: &str, seconds: u64, cgroup: Option<&Path>) -> Result<(f64, u64)> {
    let out = pinned(&c.client().ns, c.client_cpu, cgroup, Path::new("iperf3"))
        .args(["-c", target, "-p", &IPERF_PORT.to_string(), "-t", &seconds.to_string(), "-O", "1", "-J"])
        .args(["-C", &c.congestion_control])
        .output()
        .context("running iperf3")?;
    let parsed = parse_iperf(&String::from_utf8_lossy(&out.stdout)).with_context(|| format!("iperf3 to {target}"));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(parsed.err().unwrap_or_else(|| anyhow::anyhow!("{}", stderr.trim())))
            .with_context(|| format!("iperf3 to {target} failed ({})", out.status));
    }
    let (bps, retransmits) = parsed?;
    progress("bench", &format!("  {:.2} Gbit/s, {retransmits} retransmits", bps / 1e9));
    Ok((bps, retransmits))
}

/// `end.sum_received.bits_per_second` and `end.sum_sent.retransmits` of iperf3's JSON
/// (`-J`); its `error` as the error.
fn parse_iperf(json: &str) -> Result<(f64, u64)> {
    let v: Value = serde_json::from_str(json).context("iperf3's output is not JSON")?;
    if let Some(error) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {error}");
    }
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"].as_f64().context("no end.sum_received.bits_per_second")?;
    let retransmits = end["sum_sent"]["retransmits"].as_u64().context("no end.sum_sent.retransmits")?;
    if bps <= 0.0 {
        bail!("iperf3 moved no data");
    }
    Ok((bps, retransmits))
}

/// Requests per second on one connection from the client pod (in `cgroup` if given) to
/// `target`; a lost request (timeout, closed connection) fails the bench.
fn request_response(c: &Cluster, target: &str, seconds: u64, cgroup: Option<&Path>) -> Result<f64> {
    let out = pinned(&c.client().ns, c.client_cpu, cgroup, &c.bin.join("skiff-echo"))
        .args(["rr", &format!("{target}:{RR_PORT}"), "--duration-ms", &(seconds * 1000).to_string()])
        .output()
        .context("running skiff-echo rr")?;
    if !out.status.success() {
        bail!(
            "request/response to {target}:{RR_PORT} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let rate = parse_rr(&String::from_utf8_lossy(&out.stdout))?;
    progress("bench", &format!("  {rate:.0} req/s"));
    Ok(rate)
}

/// The rate of `skiff-echo rr`'s summary line `requests=N elapsed_s=S rate=R`.
fn parse_rr(text: &str) -> Result<f64> {
    let field =
        |name: &str| text.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse::<f64>().ok());
    let requests = field("requests=").with_context(|| format!("no requests= in `{}`", text.trim()))?;
    let rate = field("rate=").with_context(|| format!("no rate= in `{}`", text.trim()))?;
    if requests < 1.0 {
        bail!("no request was answered");
    }
    Ok(rate)
}

/// The rounds' figures by metric.
struct Figures {
    throughput: Rounds<Mode>,
    retransmits: Rounds<Mode>,
    rr: Rounds<Mode>,
}

impl Figures {
    fn new(samples: &Rounds<Mode, Sample>) -> Self {
        let metric = |f: fn(&Sample) -> f64| Rounds {
            modes: samples.modes.clone(),
            values: samples.values.iter().map(|s| s.iter().map(f).collect()).collect(),
        };
        Self {
            throughput: metric(|s| s.bits_per_second / 1e9),
            retransmits: metric(|s| s.retransmits as f64),
            rr: metric(|s| s.rr),
        }
    }

    fn lines(&self) -> Vec<String> {
        use Mode::*;
        let (tp, rr) = (&self.throughput, &self.rr);
        let ratio = |r: &Rounds<Mode>, a, b| summary(&r.ratios(&a, &b), "x", 2);
        let mut lines = vec![
            format!("P3 pod-ip-throughput@cross-node: {}", summary(tp.of(&EbpfPodIp), "Gbit/s", 2)),
            format!("P3 clusterip-throughput@cross-node: {}", summary(tp.of(&EbpfClusterIp), "Gbit/s", 2)),
            format!("P3 clusterip-vs-pod-ip-throughput: {}", ratio(tp, EbpfClusterIp, EbpfPodIp)),
            format!("P3 clusterip-rr@cross-node: {}", summary(rr.of(&EbpfClusterIp), "req/s", 0)),
            format!("P3 clusterip-vs-pod-ip-rr: {}", ratio(rr, EbpfClusterIp, EbpfPodIp)),
            format!("P3 clusterip-tc-throughput@cross-node: {}", summary(tp.of(&EbpfClusterIpTc), "Gbit/s", 2)),
            format!("P3 clusterip-tc-vs-pod-ip-throughput: {}", ratio(tp, EbpfClusterIpTc, EbpfPodIp)),
            format!("P3 clusterip-tc-rr@cross-node: {}", summary(rr.of(&EbpfClusterIpTc), "req/s", 0)),
            format!("P3 clusterip-tc-vs-pod-ip-rr: {}", ratio(rr, EbpfClusterIpTc, EbpfPodIp)),
        ];
        for mode in [EbpfPodIp, KernelVxlan, PlainRouting] {
            lines.push(format!("P4 {}-throughput: {}", mode.label().1, summary(tp.of(&mode), "Gbit/s", 2)));
        }
        for mode in MODES {
            let (id, label) = mode.label();
            lines.push(format!("{id} {label}-retransmits: {}", summary(self.retransmits.of(&mode), "segments", 0)));
        }
        for mode in [EbpfPodIp, KernelVxlan, PlainRouting] {
            lines.push(format!("P4 {}-rr: {}", mode.label().1, summary(rr.of(&mode), "req/s", 0)));
        }
        lines.extend([
            format!("P4 throughput-vs-kernel-vxlan: {}", ratio(tp, EbpfPodIp, KernelVxlan)),
            format!("P4 throughput-vs-plain-routing: {}", ratio(tp, EbpfPodIp, PlainRouting)),
            format!("P4 kernel-vxlan-throughput-vs-plain-routing: {}", ratio(tp, KernelVxlan, PlainRouting)),
            format!("P4 rr-vs-kernel-vxlan: {}", ratio(rr, EbpfPodIp, KernelVxlan)),
            format!("P4 rr-vs-plain-routing: {}", ratio(rr, EbpfPodIp, PlainRouting)),
            format!("P4 kernel-vxlan-rr-vs-plain-routing: {}", ratio(rr, KernelVxlan, PlainRouting)),
        ]);
        lines
    }

    /// A WARNING for each kernel VXLAN figure above plain routing in any round: on the
    /// same forwarding path, encapsulation only adds work, so that is a measurement
    /// error to explain, not a result. (Skiff's modes skip that path; see the module.)
    fn ceiling_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for mode in [Mode::KernelVxlan] {
            for (metric, rounds) in [("throughput", &self.throughput), ("rr", &self.rr)] {
                let ratios = rounds.ratios(&mode, &Mode::PlainRouting);
                let above = ratios.iter().filter(|r| **r > 1.0).count();
                if above > 0 {
                    warnings.push(format!(
                        "WARNING: {mode:?} {metric} is above plain routing (the ceiling) in {above} of {} rounds, {}: a measurement error to explain, not a result",
                        ratios.len(),
                        summary(&ratios, "x", 2)
                    ));
                }
            }
        }
        warnings
    }
}

fn cost_lines(costs: &[(String, Vec<f64>)]) -> Vec<String> {
    costs
        .iter()
        .map(|(program, ns)| {
            if ns.is_empty() {
                format!("# P1 overlay-cost-in-traffic-{program}: not run by this traffic")
            } else {
                format!("P1 overlay-cost-in-traffic-{program}: {}", summary(ns, "ns/pkt", 0))
            }
        })
        .collect()
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests;
