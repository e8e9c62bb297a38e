//! `cargo xtask up`, `down` and `status`: a local multi-node Skiff cluster on this
//! machine, left running between commands.
//!
//! `up` runs setup, builds the BPF objects, the binaries (the dev profile: `cargo xtask
//! test` builds the same ones, so after a test run nothing is rebuilt, and a dev build
//! of the control plane's large dependencies takes a fraction of a release build on a
//! small machine) and the images, then starts the cluster with the tests' own harness
//! (`skiff_tests::cluster`), gives the host a route to the API server, and detaches
//! it: the processes keep running after `up` exits, recorded in
//! `/var/lib/skiff/local/state.json`. `up` on a cluster that answers says so and
//! changes nothing; on a cluster that does not answer (a crash) it removes the rest
//! first. `down` removes everything from the fixed tag and directory alone, so it also
//! cleans up after a crashed `up`, and is idempotent.
//!
//! It must not route pod or Service addresses from the root namespace: the one host
//! route is the harness's checked /32 to the API server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use skiff_tests::cluster::{
    self, CONTROL_PLANE_IP, Cluster, ClusterOptions, ClusterSetup, DetachedState, KUBECTL, host_reaches_api,
};

use crate::util::{is_root, progress, run_checked, target_dir, workspace_root};

/// The local cluster's tag: its namespaces are `skiff-ul`, `skiff-cp`, `skiff-n1`, ...
pub const TAG: &str = "skiff";
/// The local cluster's directory: state, kubeconfigs, logs, the control plane's data.
pub const DIR: &str = "/var/lib/skiff/local";

/// Where skiff-control keeps the cluster's objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Store {
    /// skiff-control's embedded store.
    Embedded,
    /// A 3-member etcd cluster in the control plane's namespace.
    Etcd,
}

/// `cargo xtask up`'s options.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub nodes: usize,
    pub store: Store,
    /// Prebuilt skiff-control, skiff-node and skiff-cni (skips the cargo build).
    pub bin_dir: Option<PathBuf>,
}

/// `cargo xtask up`.
pub fn up(opts: &UpOptions) -> Result<()> {
    let started = Instant::now();
    ensure!(is_root(), "`up` needs root (network namespaces, containerd, BPF); run it as root");
    ensure!((1..=40).contains(&opts.nodes), "--nodes must be between 1 and 40");
    let dir = Path::new(DIR);
    if let Some(state) = cluster::read_state(dir) {
        if answers(&state) {
            progress(
                "up",
                &format!("a cluster is already up ({} nodes); `cargo xtask down` removes it", state.nodes.len()),
            );
            print_next(&state.kubeconfig);
            return Ok(());
        }
        progress("up", "a previous cluster does not answer (crashed?): removing what is left of it first");
        down()?;
    } else if leftovers() {
        progress("up", "removing what a crashed `up` left first");
        down()?;
    }

    step("setup", || crate::setup::run().map(drop))?;
    let ebpf_dir = step("build-ebpf", crate::build_ebpf::objects_dir)?;
    let bin_dir = match &opts.bin_dir {
        Some(dir) => {
            progress("build", &format!("using the binaries in {}", dir.display()));
            dir.clone()
        }
        None => step("build", || build_binaries(&ebpf_dir))?,
    };
    let images = step("images", || {
        let built = crate::images::build(&crate::images::select(&["pause".into(), "echo".into()])?)?;
        Ok(built.into_iter().map(|b| b.tarball).collect::<Vec<_>>())
    })?;

    let members = if opts.store == Store::Etcd { 3 } else { 0 };
    let setup = ClusterSetup {
        dir: Some(dir.into()),
        etcd_members: members,
        progress: Some(|l| progress("cluster", l)),
        services_from_api: true,
        ..Default::default()
    };
    let mut cluster = Cluster::start_in(TAG, opts.nodes, &images, &ClusterOptions { bin_dir: Some(bin_dir) }, &setup)
        .context("starting the cluster (`cargo xtask down` removes what is left)")?;
    step("services", || {
        let has_kubernetes = || !cluster.kubectl_out(&["get", "service", "kubernetes", "-o", "name"]).is_empty();
        ensure!(
            skiff_tests::netns::wait_until(Duration::from_secs(30), has_kubernetes),
            "the built-in `kubernetes` Service did not appear in 30 s:\n{}",
            cluster.logs()
        );
        // Every node's datapath must carry it, translating back to the ClusterIP.
        let vip = cluster.kubectl_out(&["get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"]);
        let vip = vip.trim();
        let rev_nat = format!(" {vip}:443");
        for node in &cluster.nodes {
            let programmed = |dump: String| dump.lines().any(|l| l.starts_with("rev_nat ") && l.ends_with(&rev_nat));
            let has_vip = || node.datapath_dump().is_ok_and(programmed);
            ensure!(
                skiff_tests::netns::wait_until(Duration::from_secs(30), has_vip),
                "{}'s datapath did not program the `kubernetes` Service ({vip}:443) in 30 s:\n{}",
                node.name,
                node.log_tail()
            );
        }
        Ok(())
    })?;
    let kubeconfig = step("host", || cluster.expose_to_host())?;
    let state = cluster.detach()?;
    progress(
        "up",
        &format!(
            "cluster {TAG} is up: {} node(s) Ready, {} store, API server {CONTROL_PLANE_IP}:6443, in {:.1} s",
            state.nodes.len(),
            if members > 0 { "etcd" } else { "embedded" },
            started.elapsed().as_secs_f64()
        ),
    );
    print_next(&kubeconfig);
    Ok(())
}

/// `cargo xtask down`.
pub fn down() -> Result<()> {
    ensure!(is_root(), "`down` needs root (network namespaces, mounts, cgroups); run it as root");
    let started = Instant::now();
    let done = cluster::teardown(TAG, Path::new(DIR));
    for line in &done {
        progress("down", line);
    }
    if done.is_empty() {
        progress("down", "no local cluster: nothing to remove");
    } else {
        progress("down", &format!("the local cluster is gone ({:.1} s)", started.elapsed().as_secs_f64()));
    }
    ensure!(!leftovers(), "something is still left after `down`: {}", leftover_list().join(", "));
    Ok(())
}

/// `cargo xtask status`.
pub fn status() -> Result<()> {
    let Some(state) = cluster::read_state(Path::new(DIR)) else {
        if leftovers() {
            println!(
                "no cluster is up, but a crashed `up` left {}: run `cargo xtask down`",
                leftover_list().join(", ")
            );
        } else {
            println!("no local cluster is up (start one with `cargo xtask up`)");
        }
        return Ok(());
    };
    let alive = |pid: u32, name: &str| if process_alive(pid, name) { "running" } else { "NOT RUNNING" };
    let api = answers(&state);
    println!("cluster {} in {} (kubeconfig {})", state.tag, state.dir.display(), state.kubeconfig.display());
    println!(
        "  skiff-control pid {} {}; API server from the host: {}",
        state.control_pid,
        alive(state.control_pid, "skiff-control"),
        if api { "answers" } else { "DOES NOT ANSWER" }
    );
    if state.etcd_pids.is_empty() {
        println!("  store: embedded");
    } else {
        let members: Vec<String> = state.etcd_pids.iter().map(|p| format!("pid {p} {}", alive(*p, "etcd"))).collect();
        println!("  store: etcd, members {}", members.join(", "));
    }
    let ready = if api { node_ready(&state.kubeconfig) } else { Vec::new() };
    for n in &state.nodes {
        let r = ready.iter().find(|(name, _)| *name == n.name).map_or("unknown", |(_, r)| r.as_str());
        println!(
            "  node {} {}: Ready={r}; skiff-node pid {} {}; containerd pid {} {}",
            n.name,
            n.ip,
            n.agent_pid,
            alive(n.agent_pid, "skiff-node"),
            n.containerd_pid,
            alive(n.containerd_pid, "containerd"),
        );
    }
    Ok(())
}

/// Runs one step of `up` with a progress line saying how long it took.
fn step<T>(tag: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let out = f()?;
    progress(tag, &format!("done in {:.1} s", start.elapsed().as_secs_f64()));
    Ok(out)
}

/// `cargo build --bins` (dev profile, as `cargo xtask test`); the binaries' directory.
fn build_binaries(ebpf_dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--bins"]).current_dir(workspace_root()).env(crate::build_ebpf::EBPF_DIR_ENV, ebpf_dir);
    progress("build", "cargo build --bins (dev profile)...");
    run_checked(&mut build, "fix the build errors above")?;
    Ok(target_dir().join("debug"))
}

/// Whether the detached cluster's API server answers kubectl on the host.
fn answers(state: &DetachedState) -> bool {
    process_alive(state.control_pid, "skiff-control")
        && state.host_link.as_deref().is_some_and(|link| host_reaches_api(&state.kubeconfig, link))
}

/// Each node's name and Ready status, from the API.
fn node_ready(kubeconfig: &Path) -> Vec<(String, String)> {
    let out = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "nodes", "-o"])
        .arg(r#"jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#)
        .output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines().filter_map(|l| l.split_once(' ')).map(|(name, ready)| (name.to_owned(), ready.to_owned())).collect()
}

/// Whether `pid` runs a program whose command line names `name` (a pid that was reused
/// by something else is not our process).
fn process_alive(pid: u32, name: &str) -> bool {
    pid != 0
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).split('\0').next().is_some_and(|p| p.contains(name)))
}

/// What of a local cluster exists: its namespaces, host link, directory.
fn leftover_list() -> Vec<String> {
    let netns = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    let mut left: Vec<String> = String::from_utf8_lossy(&netns)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{TAG}-")))
        .map(|n| format!("namespace {n}"))
        .collect();
    if Path::new(&format!("/sys/class/net/{TAG}-h")).exists() {
        left.push(format!("link {TAG}-h"));
    }
    if Path::new(DIR).exists() {
        left.push(DIR.to_owned());
    }
    left
}

fn leftovers() -> bool {
    !leftover_list().is_empty()
}

/// The one `export` line (stdout) and what to try next (stderr).
fn print_next(kubeconfig: &Path) {
    println!("export KUBECONFIG={}", kubeconfig.display());
    let web = workspace_root().join("deploy/examples/web.yaml");
    eprintln!(
        "then try (kubectl 1.32 is {KUBECTL}):\n  \
         kubectl get nodes -o wide\n  \
         kubectl apply -f {web} && kubectl rollout status deploy/web && kubectl get pods -o wide\n  \
         kubectl exec deploy/web -- /skiff-echo get $(kubectl get svc web -o jsonpath='{{.spec.clusterIP}}'):80 /\n  \
         cargo xtask status; cargo xtask down",
        web = web.display()
    );
}
