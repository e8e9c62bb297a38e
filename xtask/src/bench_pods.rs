//! `cargo xtask bench pods`: P6 and P8 of the node side, on a local cluster of two nodes
//! (release builds; skiff-control and each node in network namespaces of their own, a
//! containerd per node).
//!
//! - P6: a Deployment of `--replicas` (30) pods; each pod's create → Ready latency, as
//!   seen on a watch of the API (the time the pod's ADDED event arrives to the time the
//!   event with its Ready condition True arrives, in milliseconds; the API's own
//!   timestamps have one-second resolution, so they are printed beside as a check).
//!   p50 and p99 over the pods of a run; three runs (the Deployment deleted and every
//!   pod gone between them), the median run printed with the spread.
//! - The runtime's floor beside each run: the same number of pods made straight through
//!   each node's CRI (RunPodSandbox with the node's CNI, CreateContainer, StartContainer,
//!   all at once, spread over the nodes as the scheduler spreads them) with no API and no
//!   agent; its p99, and P6's p99 as a ratio to it, say how much of P6 is Skiff's.
//! - P8: the resident memory (VmRSS) of the node agent holding the most pods, with
//!   every pod Ready.

use std::collections::HashMap;
use std::io::BufReader;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use skiff_tests::cluster::{Cluster, ClusterOptions};
use skiff_tests::cri::{ContainerSpec, CriClient, SandboxSpec};
use skiff_tests::image::{ECHO_IMAGE, echo_image, pause_image};
use skiff_tests::netns::wait_until;
use skiff_tests::unique_tag;

use crate::bench_support::{percentile, summary};
use crate::util::{progress, run_checked, target_dir, workspace_root};

const RUNS: usize = 3;

pub fn run(args: &[String]) -> Result<()> {
    let mut replicas = 30usize;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--replicas" => replicas = iter.next().context("--replicas N")?.parse()?,
            other => bail!("unknown argument {other}; usage: cargo xtask bench pods [-- --replicas N]"),
        }
    }
    if !crate::util::is_root() {
        bail!("this needs root (network namespaces, containerd, BPF); run it as root");
    }
    crate::setup::ensure_packages()?;
    crate::setup::ensure_bpffs()?;
    let bin_dir = build_cluster_binaries()?;
    progress("images", "building the pause and echo images...");
    let images = vec![pause_image()?, echo_image()?];
    progress("cluster", "starting skiff-control and two nodes...");
    let opts = ClusterOptions { bin_dir: Some(bin_dir) };
    let cluster = Cluster::start_with(&unique_tag("bpod"), 2, &images, &opts)?;

    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut api_p99s = Vec::new();
    let mut rss = Vec::new();
    let mut floors = Vec::new();
    for run in 1..=RUNS {
        let r = one_run(&cluster, replicas).with_context(|| format!("run {run}: {}", cluster.logs()))?;
        let floor = runtime_floor(&cluster, replicas).with_context(|| format!("runtime floor {run}"))?;
        progress("bench", &format!("run {run}: the runtime alone: p99 {floor:.3} s"));
        floors.push(floor);
        progress(
            "bench",
            &format!(
                "run {run}: create→Ready p50 {:.3} s, p99 {:.3} s (API timestamps: p99 {} s); agent RSS {:.1} MB holding {} pods",
                r.p50, r.p99, r.api_p99, r.rss_mb, r.most_pods
            ),
        );
        p50s.push(r.p50);
        p99s.push(r.p99);
        api_p99s.push(r.api_p99);
        rss.push(r.rss_mb);
    }
    keep_logs(&cluster);
    println!("P6 pod-startup-p50: {}", summary(&p50s, "s", 3));
    println!("P6 pod-startup-p99: {}", summary(&p99s, "s", 3));
    println!("P6 pod-startup-p99-api-timestamps: {}", summary(&api_p99s, "s", 0));
    println!("P6 runtime-floor-p99: {}", summary(&floors, "s", 3));
    let ratios: Vec<f64> = p99s.iter().zip(&floors).map(|(p, f)| p / f).collect();
    println!("P6 pod-startup-p99-vs-runtime-floor: {}", summary(&ratios, "x", 2));
    println!("P8 agent-rss@{replicas}-pods: {}", summary(&rss, "MB", 1));
    Ok(())
}

/// Builds the BPF objects (or takes those in `SKIFF_EBPF_DIR`) and the release binaries
/// of a local cluster; returns their directory.
pub(crate) fn build_cluster_binaries() -> Result<std::path::PathBuf> {
    let ebpf_dir = crate::build_ebpf::objects_dir()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--release", "--bins", "-p", "skiff-control", "-p", "skiff-node", "-p", "skiff-cni"])
        .current_dir(workspace_root())
        .env(crate::build_ebpf::EBPF_DIR_ENV, &ebpf_dir);
    progress("build", "cargo build --release (skiff-control, skiff-node, skiff-cni)...");
    run_checked(&mut build, "fix the build errors above")?;
    Ok(target_dir().join("release"))
}

/// p99 of start → container started over `pods` pods made straight through the nodes'
/// CRI at once, then removed. They carry none of the kubelet's labels, so the agents
/// leave them alone.
fn runtime_floor(cluster: &Cluster, pods: usize) -> Result<f64> {
    let barrier = Arc::new(std::sync::Barrier::new(pods));
    let threads: Vec<_> = (0..pods)
        .map(|i| {
            let socket = cluster.nodes[i % cluster.nodes.len()].containerd.socket.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<(f64, String)> {
                let mut cri = CriClient::connect(&socket)?;
                let sandbox = SandboxSpec::new(&format!("floor-{i}"), "bench-floor", &format!("floor-uid-{i}"));
                barrier.wait();
                let started = Instant::now();
                let id = cri.run_pod_sandbox(&sandbox)?;
                let container = cri.create_container(&id, &sandbox, &ContainerSpec::new("echo", ECHO_IMAGE))?;
                cri.start_container(&container)?;
                Ok((started.elapsed().as_secs_f64(), id))
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failure = None;
    for (i, t) in threads.into_iter().enumerate() {
        match t.join().map_err(|_| anyhow::anyhow!("a floor thread panicked"))? {
            Ok((latency, id)) => {
                latencies.push(latency);
                let mut cri = CriClient::connect(&cluster.nodes[i % cluster.nodes.len()].containerd.socket)?;
                cri.stop_pod_sandbox(&id)?;
                cri.remove_pod_sandbox(&id)?;
            }
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        return Err(e.context("making a pod straight through the CRI"));
    }
    latencies.sort_by(f64::total_cmp);
    Ok(percentile(&latencies, 0.99))
}

/// Copies the logs of skiff-control and the agents to `target/bench/pods/` (the cluster's
/// directory goes with it), for a look at where a slow pod spent its time.
fn keep_logs(cluster: &Cluster) {
    let dir = target_dir().join("bench").join("pods");
    let _ = std::fs::create_dir_all(&dir);
    let mut logs = vec![(cluster.control_log.clone(), "control.log".to_owned())];
    logs.extend(cluster.nodes.iter().map(|n| (n.agent_log.clone(), format!("{}.agent.log", n.name))));
    for (from, name) in logs {
        if let Err(e) = std::fs::copy(&from, dir.join(name)) {
            progress("bench", &format!("cannot keep {}: {e}", from.display()));
        }
    }
    progress("bench", &format!("the logs of this run are in {}", dir.display()));
}

/// The machine's busy CPU time since boot (all but idle and iowait), from /proc/stat:
/// whether a run was held up by the CPUs or by waiting.
fn busy_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0.0 };
    let ticks: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    (total - idle) / 100.0
}

/// `median unit (min a, max b, n=N)`.
struct RunResult {
    p50: f64,
    p99: f64,
    api_p99: f64,
    rss_mb: f64,
    most_pods: usize,
}

fn deployment(replicas: usize) -> String {
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"bench"}},"spec":{{"replicas":{replicas},"selector":{{"matchLabels":{{"app":"bench"}}}},"template":{{"metadata":{{"labels":{{"app":"bench"}}}},"spec":{{"terminationGracePeriodSeconds":1,"containers":[{{"name":"echo","image":"localhost/skiff/echo:1","command":["/skiff-echo","serve","--name","bench","--tcp","8080"]}}]}}}}}}}}"#
    )
}

/// When the watch saw each pod appear, get its node, get its IP and turn Ready: the
/// phases between them say where the time goes (scheduler, sandbox, container).
#[derive(Default)]
struct Seen {
    added: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
    addressed: HashMap<String, Instant>,
    ready: HashMap<String, Instant>,
}

impl Seen {
    /// p50 and p99 of `to − from` over the pods that have both.
    fn phase(&self, from: &HashMap<String, Instant>, to: &HashMap<String, Instant>) -> (f64, f64) {
        let mut v: Vec<f64> =
            to.iter().filter_map(|(name, t)| Some(t.duration_since(*from.get(name)?).as_secs_f64())).collect();
        v.sort_by(f64::total_cmp);
        (percentile(&v, 0.50), percentile(&v, 0.99))
    }
}

fn one_run(cluster: &Cluster, replicas: usize) -> Result<RunResult> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut watch = cluster
        .kubectl_command(&["get", "pods", "-l", "app=bench", "--watch", "--output-watch-events", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kubectl get --watch")?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    let recorder = seen.clone();
    let reader = std::thread::spawn(move || {
        let events = serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<serde_json::Value>();
        for event in events.map_while(Result::ok) {
            let at = Instant::now();
            let pod = &event["object"];
            let Some(name) = pod["metadata"]["name"].as_str() else { continue };
            let mut s = recorder.lock().unwrap();
            s.added.entry(name.to_owned()).or_insert(at);
            if pod["spec"]["nodeName"].is_string() {
                s.bound.entry(name.to_owned()).or_insert(at);
            }
            if pod["status"]["podIP"].is_string() {
                s.addressed.entry(name.to_owned()).or_insert(at);
            }
            let ready = pod["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            if ready {
                s.ready.entry(name.to_owned()).or_insert(at);
            }
        }
    });
    // The watch is established before the Deployment exists.
    std::thread::sleep(Duration::from_millis(500));
    let (busy_before, started) = (busy_cpu_seconds(), Instant::now());
    cluster.apply(&deployment(replicas))?;
    let all_ready = wait_until(Duration::from_secs(180), || seen.lock().unwrap().ready.len() >= replicas);
    let busy = busy_cpu_seconds() - busy_before;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    progress(
        "bench",
        &format!(
            "CPU: {busy:.2} busy core-seconds of {:.2} ({cores} cores) until every pod was Ready",
            started.elapsed().as_secs_f64() * cores as f64
        ),
    );
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();
    ensure!(all_ready, "only {} of {replicas} pods became Ready in 180 s", seen.lock().unwrap().ready.len());

    let s = seen.lock().unwrap();
    let mut latencies: Vec<f64> =
        s.ready.iter().filter_map(|(name, r)| Some(r.duration_since(*s.added.get(name)?).as_secs_f64())).collect();
    latencies.sort_by(f64::total_cmp);
    let phases = [
        ("create→bound", s.phase(&s.added, &s.bound)),
        ("bound→podIP", s.phase(&s.bound, &s.addressed)),
        ("podIP→Ready", s.phase(&s.addressed, &s.ready)),
    ];
    let phases: Vec<String> =
        phases.iter().map(|(name, (p50, p99))| format!("{name} p50 {p50:.3} s, p99 {p99:.3} s")).collect();
    progress("bench", &format!("phases: {}", phases.join("; ")));
    let api_latencies = api_latencies(cluster)?;
    let (rss_mb, most_pods) = agent_rss(cluster)?;

    cluster.kubectl_ok(&["delete", "deployment", "bench", "--wait=true"])?;
    let gone = wait_until(Duration::from_secs(120), || {
        cluster.kubectl_out(&["get", "pods", "-l", "app=bench", "-o", "name"]).is_empty()
    });
    ensure!(gone, "the bench pods were not gone 120 s after the Deployment was deleted");
    Ok(RunResult {
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        api_p99: percentile(&api_latencies, 0.99),
        rss_mb,
        most_pods,
    })
}

/// Ready's lastTransitionTime − creationTimestamp of every bench pod (whole seconds).
fn api_latencies(cluster: &Cluster) -> Result<Vec<f64>> {
    let pods: serde_json::Value =
        serde_json::from_str(&cluster.kubectl_ok(&["get", "pods", "-l", "app=bench", "-o", "json"])?)?;
    let time = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok());
    let mut out: Vec<f64> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let created = time(&p["metadata"]["creationTimestamp"])?;
            let ready = p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
            Some((time(&ready["lastTransitionTime"])? - created).get_seconds() as f64)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// The VmRSS of the agent of the node with the most bench pods, and that count.
fn agent_rss(cluster: &Cluster) -> Result<(f64, usize)> {
    let mut best = (0.0, 0);
    for node in &cluster.nodes {
        let pods = cluster
            .kubectl_out(&[
                "get",
                "pods",
                "-l",
                "app=bench",
                "--field-selector",
                &format!("spec.nodeName={}", node.name),
                "-o",
                "name",
            ])
            .lines()
            .count();
        let pid = node.agent_pid().context("the agent is not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")?;
        if pods >= best.1 {
            best = (kib / 1024.0, pods);
        }
    }
    Ok(best)
}
