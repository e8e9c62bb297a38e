//! `cargo xtask bench cluster`: P5 and P8 on a local cluster of two nodes made by the same
//! code as `cargo xtask up` (`Cluster::start_in` with the agents' proxies fed by the API;
//! release builds).
//!
//! - P8: the demo app (`deploy/examples/web.yaml`) running and Ready, then, at rest, the
//!   resident memory (VmRSS) of the cluster's own processes summed: skiff-control and
//!   every skiff-node (not containerd, runc or the pods). Three samples a second apart.
//! - P5, map-update latency: `--services` (10,000) Services made through the API, each
//!   with an EndpointSlice of one or two endpoints; then per run `--changes` (200) single
//!   changes, alternately an endpoint change of an existing Service and a new Service
//!   (its slice written first), each timed from just before its API write is sent to its
//!   backends showing in the pinned maps of every node (read from outside the agents,
//!   polled about every millisecond). Writes are 300 ms apart, beyond the agents' least
//!   time between two syncs (200 ms), so each change is measured on its own. p50 and
//!   p99 per run.
//! - P5, resync: node 1's agent stopped, its Service maps emptied, the agent started
//!   again with every Service in the API. Two figures from the maps: `restart`, from the
//!   process start to every frontend in the maps (start-up, LIST of Services and
//!   slices, planning, every map write); `write`, from the first Service showing in the
//!   maps to the last (the one sync that programs them all, in name order). Against
//!   them, in the same run, `iptables-restore` of the ruleset kube-proxy's iptables mode
//!   writes for the same Services (KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-* with DNAT and
//!   `statistic --mode random`) into a fresh network namespace, with Debian's nf_tables
//!   and legacy back ends: that is kube-proxy's write alone (its LIST and rule
//!   generation are not counted), so `write` is the like-for-like comparison and
//!   `restart` the whole-agent one. Ratios are iptables ÷ Skiff (above 1: Skiff faster).
//!
//! `--runs` (3) runs of the changes and `--resync-rounds` (5, after a warm-up) of the
//! resync comparison; each figure is printed as the median run with min and max.

mod api;
mod maps;

use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use skiff_tests::cluster::{Cluster, ClusterOptions, ClusterSetup};
use skiff_tests::netns::{Netns, wait_until};
use skiff_tests::unique_tag;

use self::api::BenchService;
use self::maps::NodeMaps;
use crate::bench_support::{DEFAULT_ROUNDS, percentile, print_environment, summary};
use crate::lbsetup::ServiceSpec;
use crate::util::{progress, workspace_root};

struct Options {
    services: usize,
    changes: usize,
    runs: usize,
    /// Rounds of the resync comparison (Skiff, iptables-nft, iptables-legacy in turn).
    resync_rounds: usize,
    clients: usize,
    bin_dir: Option<PathBuf>,
}

const USAGE: &str = "usage: cargo xtask bench cluster [-- --services N --changes N --runs N --resync-rounds N --clients N --bin-dir DIR]";

fn parse(args: &[String]) -> Result<Options> {
    let mut o =
        Options { services: 10_000, changes: 200, runs: 3, resync_rounds: DEFAULT_ROUNDS, clients: 16, bin_dir: None };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().with_context(|| format!("{arg} needs a value; {USAGE}"));
        match arg.as_str() {
            "--services" => o.services = value()?.parse()?,
            "--changes" => o.changes = value()?.parse()?,
            "--runs" => o.runs = value()?.parse()?,
            "--resync-rounds" => o.resync_rounds = value()?.parse()?,
            "--clients" => o.clients = value()?.parse()?,
            "--bin-dir" => o.bin_dir = Some(value()?.into()),
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    ensure!((1..=api::MAX_SERVICES).contains(&o.services), "--services must be 1..={}", api::MAX_SERVICES);
    ensure!((2..=api::MAX_CHANGES).contains(&o.changes), "--changes must be 2..={}", api::MAX_CHANGES);
    ensure!((1..=api::MAX_RUNS).contains(&o.runs), "--runs must be 1..={}", api::MAX_RUNS);
    ensure!((1..=256).contains(&o.clients), "--clients must be 1..=256");
    ensure!(o.resync_rounds >= 1, "--resync-rounds must be at least 1");
    Ok(o)
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    ensure!(crate::util::is_root(), "this needs root (network namespaces, containerd, BPF); run it as root");
    crate::setup::ensure_packages()?;
    crate::setup::ensure_bpffs()?;
    let bin_dir = match &opts.bin_dir {
        Some(dir) => dir.clone(),
        None => crate::bench_pods::build_cluster_binaries()?,
    };
    progress("images", "building the pause and echo images...");
    let images = vec![skiff_tests::image::pause_image()?, skiff_tests::image::echo_image()?];
    progress("cluster", "starting skiff-control and two nodes, their proxies fed by the API...");
    let setup =
        ClusterSetup { progress: Some(|l| progress("cluster", l)), services_from_api: true, ..Default::default() };
    let opts_cluster = ClusterOptions { bin_dir: Some(bin_dir) };
    let mut cluster = Cluster::start_in(&unique_tag("bcl"), 2, &images, &opts_cluster, &setup)?;
    print_environment(Some(&cluster.dir), &[]);

    let rss = p8(&cluster).with_context(|| format!("P8: {}", cluster.logs()))?;
    let cp_ns = cluster.cp_ns.path();
    let p5 = std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&cp_ns)?;
            p5(&mut cluster, &opts)
        })
        .join()
    });
    let p5 = match p5 {
        Ok(result) => result.with_context(|| format!("P5: {}", cluster.logs()))?,
        Err(_) => bail!("the P5 thread panicked"),
    };

    let n = opts.services;
    let p50s: Vec<f64> = p5.latencies.iter().map(|l| percentile(&sorted_ms(l), 0.50)).collect();
    let p99s: Vec<f64> = p5.latencies.iter().map(|l| percentile(&sorted_ms(l), 0.99)).collect();
    println!("P5 map-update-p50@{n}-services: {}", summary(&p50s, "ms", 1));
    println!("P5 map-update-p99@{n}-services: {}", summary(&p99s, "ms", 1));
    let restart: Vec<f64> = p5.resync_skiff.iter().map(|r| r.all.as_secs_f64()).collect();
    let write: Vec<f64> = p5.resync_skiff.iter().map(|r| (r.all - r.first).as_secs_f64()).collect();
    println!("P5 resync-skiff-restart@{n}-services: {}", summary(&restart, "s", 3));
    println!("P5 resync-skiff-write@{n}-services: {}", summary(&write, "s", 3));
    for (backend, times) in &p5.resync_iptables {
        println!("P5 resync-iptables-{backend}@{n}-services: {}", summary(times, "s", 3));
        for (what, skiff) in [("write", &write), ("restart", &restart)] {
            let ratios: Vec<f64> = times.iter().zip(skiff).map(|(i, s)| i / s).collect();
            println!("P5 resync-{what}-speedup-vs-iptables-{backend}@{n}-services: {}", summary(&ratios, "x", 1));
        }
    }
    println!("P8 cluster-rss-at-rest-with-demo: {}", summary(&rss, "MB", 1));
    Ok(())
}

/// Durations in milliseconds, sorted.
fn sorted_ms(d: &[Duration]) -> Vec<f64> {
    let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Moves this thread into the network namespace at `path` (threads it starts follow).
fn enter_netns(path: &str) -> Result<()> {
    let ns = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering the network namespace {path}"))
}

/// P8: the demo app Ready, then three samples of the cluster's processes' summed RSS.
fn p8(cluster: &Cluster) -> Result<Vec<f64>> {
    progress("p8", "applying deploy/examples/web.yaml and waiting for its 3 pods to be Ready...");
    let web = std::fs::read_to_string(workspace_root().join("deploy/examples/web.yaml"))?;
    cluster.apply(&web)?;
    let ready = || {
        let out = cluster.kubectl_out(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        out.split_whitespace().filter(|s| *s == "True").count() >= 3
    };
    ensure!(wait_until(Duration::from_secs(180), ready), "the demo's pods were not Ready in 180 s");
    progress("p8", "the demo is Ready; letting the cluster settle for 5 s");
    std::thread::sleep(Duration::from_secs(5));
    let mut pids = vec![("skiff-control".to_owned(), control_pid(cluster)?)];
    for node in &cluster.nodes {
        pids.push((format!("skiff-node {}", node.name), node.agent_pid().context("an agent is not running")?));
    }
    let mut samples = Vec::new();
    for _ in 0..3 {
        let mut total = 0.0;
        let mut each = Vec::new();
        for (name, pid) in &pids {
            let mb = crate::bench_api::rss_mb(*pid)?;
            total += mb;
            each.push(format!("{name} {mb:.1} MB"));
        }
        progress("p8", &format!("RSS {total:.1} MB: {}", each.join(", ")));
        samples.push(total);
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(samples)
}

/// skiff-control's pid: the one process of that name in the control plane's namespace.
fn control_pid(cluster: &Cluster) -> Result<u32> {
    let out = std::process::Command::new("ip").args(["netns", "pids", &cluster.cp_ns.name]).output()?;
    let pids = String::from_utf8_lossy(&out.stdout).into_owned();
    pids.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "skiff-control"))
        .context("no skiff-control process in the control plane's namespace")
}

struct P5 {
    /// Per run, every change's latency.
    latencies: Vec<Vec<Duration>>,
    resync_skiff: Vec<api::Resync>,
    resync_iptables: Vec<(&'static str, Vec<f64>)>,
}

/// P5, on a thread inside the control plane's network namespace.
fn p5(cluster: &mut Cluster, opts: &Options) -> Result<P5> {
    // Worker threads start here, so they share this thread's namespace.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let client = skiff_api::Client::from_kubeconfig(&cluster.dir.join("control/admin.kubeconfig"), "skiff-bench")?;
    let mut maps = cluster.nodes.iter().map(|n| NodeMaps::open(&n.name, &n.pins.path)).collect::<Result<Vec<_>>>()?;

    progress("p5", &format!("creating {} Services through the API ({} clients)...", opts.services, opts.clients));
    let started = Instant::now();
    rt.block_on(api::create_namespace(&client))?;
    let mut world = rt.block_on(api::populate(&client, opts.services, opts.clients))?;
    progress("p5", &format!("{} Services created in {:.1} s", opts.services, started.elapsed().as_secs_f64()));
    let took = api::wait_programmed(&maps, &world, Duration::from_secs(600))?;
    let after = took.as_secs_f64();
    progress("p5", &format!("every node's maps hold them {after:.1} s after the last create"));

    let mut latencies = Vec::new();
    for run in 0..opts.runs {
        progress(
            "p5",
            &format!("run {}: {} single changes, each timed to every node's maps...", run + 1, opts.changes),
        );
        let r = api::change_run(&rt, &client, &maps, &mut world, run, opts.changes)?;
        let show = |name: &str, d: &[Duration]| {
            let v = sorted_ms(d);
            format!("{name} p50 {:.1} ms, p99 {:.1} ms (n={})", percentile(&v, 0.5), percentile(&v, 0.99), v.len())
        };
        progress(
            "p5",
            &format!(
                "run {}: {}; {}; {} lost",
                run + 1,
                show("endpoint changes", &r.endpoint_changes),
                show("new Services", &r.new_services),
                r.lost
            ),
        );
        latencies.push([r.endpoint_changes, r.new_services].concat());
    }
    agents_own_view(cluster);

    let mut resync_skiff = Vec::new();
    let specs = iptables_specs(&world);
    let mut resync_iptables: Vec<(&'static str, Vec<f64>)> = vec![("nft", Vec::new()), ("legacy", Vec::new())];
    // A warm-up resync (page cache, the agent's binary) whose figures are dropped, then
    // the rounds, each Skiff then both iptables back ends.
    resync(cluster, &mut maps[0], &world)?;
    for run in 1..=opts.resync_rounds {
        let r = resync(cluster, &mut maps[0], &world)?;
        let (first, all) = (r.first.as_secs_f64(), r.all.as_secs_f64());
        progress(
            "p5",
            &format!(
                "resync run {run}: skiff-node's first Service in its maps {first:.3} s after its start, all {} {all:.3} s after (writing {:.3} s)",
                world.len(),
                all - first
            ),
        );
        resync_skiff.push(r);
        for (backend, times) in &mut resync_iptables {
            let ns = Netns::new(&format!("{}-ipt", cluster.tag));
            let took = crate::kube_proxy_rules::load_iptables(&ns, &specs, backend, None)?.as_secs_f64();
            progress("p5", &format!("resync run {run}: iptables-{backend}-restore of the same Services: {took:.3} s"));
            times.push(took);
        }
    }
    Ok(P5 { latencies, resync_skiff, resync_iptables })
}

/// Node 1's agent stopped, its maps emptied, started again: when the bench's Services
/// came back in its maps.
fn resync(cluster: &mut Cluster, maps: &mut NodeMaps, world: &[BenchService]) -> Result<api::Resync> {
    let node = &mut cluster.nodes[0];
    node.kill_agent();
    let removed = maps.clear()?;
    progress("p5", &format!("resync: {}'s agent stopped, {removed} map entries removed; starting it", node.name));
    let started = Instant::now();
    node.start_agent()?;
    api::wait_resynced(maps, world, started, Duration::from_secs(300))
}

/// The bench's Services as the lb bench's iptables ruleset takes them.
fn iptables_specs(world: &[BenchService]) -> Vec<ServiceSpec> {
    world
        .iter()
        .map(|s| ServiceSpec {
            name: s.name.clone(),
            vip: s.vip.to_string(),
            endpoints: s.endpoints.iter().map(ToString::to_string).collect(),
        })
        .collect()
}

/// Prints what each agent itself reports of the same changes (kube-proxy's metric).
fn agents_own_view(cluster: &Cluster) {
    for node in &cluster.nodes {
        let text = cluster.kubectl_out(&["get", "--raw", &format!("/api/v1/nodes/{}/proxy/metrics", node.name)]);
        let value =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
        let sum = value("kubeproxy_network_programming_duration_seconds_sum");
        let count = value("kubeproxy_network_programming_duration_seconds_count");
        match (sum, count) {
            (Some(sum), Some(count)) if count > 0.0 => progress(
                "p5",
                &format!(
                    "{}'s own kubeproxy_network_programming_duration_seconds: {count} changes, mean {:.1} ms",
                    node.name,
                    sum / count * 1000.0
                ),
            ),
            _ => progress("p5", &format!("{} reports no network programming latency", node.name)),
        }
    }
}
