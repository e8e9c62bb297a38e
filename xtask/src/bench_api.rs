//! `cargo xtask bench api`: P7 and P8, the control plane's API throughput and memory.
//!
//! skiff-control (release build) runs in a network namespace of its own, on 127.0.0.1
//! there, and `skiff-api-bench` runs beside it in the same namespace, so nothing leaves
//! the namespace. For each store:
//! - P7: `--pods` Pod creates from `--clients` concurrent clients, a LIST of all of them,
//!   watch delivery latency, 10,000 objects of a CRD created and LISTed, and the
//!   server-side apply rate (2,000 Deployments applied twice; see
//!   control/server/src/bin/skiff-api-bench.rs). The
//!   server runs with `--disable-controllers` so the figures are the API server's own.
//! - P8: a fresh server with its scheduler and controllers running (and caching every
//!   pod), 1,000 pods created, then its resident memory (VmRSS).
//!
//! Both stores are measured (`--store` picks one), in alternating rounds (`--rounds`,
//! 5) after a warm-up, each run on fresh servers and data; every figure is printed as
//! the median with its spread. On etcd, P8 prints etcd's own memory apart and summed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use skiff_tests::netns::{ChildGuard, Netns};
use skiff_tests::unique_tag;

use crate::bench_support::{DEFAULT_ROUNDS, Figure, alternate, parse_figures, print_environment, print_summaries};
use crate::util::{progress, run_checked, target_dir, workspace_root};

const PORT: &str = "6443";
const ETCD_CLIENT: &str = "http://127.0.0.1:2379";

pub fn run(args: &[String]) -> Result<()> {
    let mut pods = 10_000usize;
    let mut clients = 16usize;
    let mut rounds = DEFAULT_ROUNDS;
    let mut stores = vec!["embedded".to_string(), "etcd".to_string()];
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--pods" => pods = iter.next().context("--pods N")?.parse()?,
            "--clients" => clients = iter.next().context("--clients N")?.parse()?,
            "--rounds" => rounds = iter.next().context("--rounds N")?.parse()?,
            "--store" => stores = vec![iter.next().context("--store embedded|etcd")?.clone()],
            other => bail!(
                "unknown argument {other}; usage: cargo xtask bench api [-- --pods N --clients N --rounds N --store embedded|etcd]"
            ),
        }
    }
    if !crate::util::is_root() {
        bail!("this needs root (it runs the control plane in a network namespace of its own)");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    progress("build", "cargo build --release -p skiff-control --bins...");
    run_checked(
        Command::new(cargo).args(["build", "--release", "-p", "skiff-control", "--bins"]).current_dir(workspace_root()),
        "fix the build errors above",
    )?;
    let bin = target_dir().join("release");
    if stores.iter().any(|s| s == "etcd") && !etcd_supported(&bin) {
        bail!("the etcd store needs /usr/bin/etcd (cargo xtask setup installs it); or pass --store embedded");
    }
    let tag = unique_tag("bapi");
    let ns = Netns::new(&format!("skiff-{tag}"));
    let dir = std::env::temp_dir().join(format!("skiff-{tag}"));
    let _cleanup = RemoveDir(dir.clone());
    std::fs::create_dir_all(&dir)?;
    print_environment(Some(&dir), &[(Some(&ns), "lo")]);

    // Each round runs every store with a fresh server (and etcd) on a fresh data dir:
    // P7, then P8 on another fresh server with its controllers.
    let mut run = 0usize;
    let results = alternate("bench", &stores, rounds, |store: &String| {
        run += 1;
        let here = dir.join(format!("run-{run}"));
        std::fs::create_dir_all(&here)?;
        let figures = round(&ns, &bin, &here, store, pods, clients);
        let _ = std::fs::remove_dir_all(&here);
        figures
    })?;
    let runs: Vec<Vec<Figure>> = results.values.into_iter().flatten().collect();
    print_summaries(&runs, 1);
    Ok(())
}

/// One store's P7 and P8 on fresh servers; the figures it printed.
fn round(ns: &Netns, bin: &Path, dir: &Path, store: &str, pods: usize, clients: usize) -> Result<Vec<Figure>> {
    progress("bench", &format!("P7 on the {store} store: {pods} pods, {clients} clients..."));
    let mut figures = {
        let _etcd = (store == "etcd").then(|| start_etcd(ns, &dir.join("etcd-p7"))).transpose()?;
        let _server = start_server(ns, bin, &dir.join("p7"), store, false)?;
        let out = bench(
            ns,
            bin,
            &dir.join("p7"),
            &["--label", store, "--pods", &pods.to_string(), "--clients", &clients.to_string()],
        )?;
        parse_figures(&out)
    };
    progress("bench", &format!("P8 on the {store} store: memory holding 1000 pods, controllers running..."));
    let etcd = (store == "etcd").then(|| start_etcd(ns, &dir.join("etcd-p8"))).transpose()?;
    let server = start_server(ns, bin, &dir.join("p8"), store, true)?;
    let pid = server.id().context("server pid")?;
    let idle = rss_mb(pid)?;
    bench(ns, bin, &dir.join("p8"), &["--label", store, "--pods", "1000", "--clients", "8", "--create-only"])?;
    // Let the controllers and scheduler catch up with the new pods before reading.
    std::thread::sleep(Duration::from_secs(5));
    let held = rss_mb(pid)?;
    progress("bench", &format!("skiff-control RSS: {idle:.0} MB idle, {held:.0} MB holding 1000 pods"));
    let figure = |name: String, value: f64| Figure { name, value, unit: "MB".into() };
    figures.push(figure(format!("P8 rss-1000-pods@{store}"), held));
    if let Some(etcd) = &etcd {
        // etcd's memory is the control plane's too when it runs on etcd.
        let etcd_rss = rss_mb(etcd.id().context("etcd pid")?)?;
        figures.push(figure("P8 etcd-rss-1000-pods@etcd".into(), etcd_rss));
        figures.push(figure("P8 rss-1000-pods-with-etcd@etcd".into(), held + etcd_rss));
    }
    Ok(figures)
}

fn etcd_supported(bin: &Path) -> bool {
    let help = Command::new(bin.join("skiff-control")).arg("--help").output();
    Path::new("/usr/bin/etcd").exists()
        && help.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--etcd-servers"))
}

fn start_etcd(ns: &Netns, dir: &Path) -> Result<ChildGuard> {
    let child = ns
        .command("/usr/bin/etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir)
        .args([
            "--listen-client-urls",
            ETCD_CLIENT,
            "--advertise-client-urls",
            ETCD_CLIENT,
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "bench=http://127.0.0.1:2380",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcd")?;
    let guard = ChildGuard::new(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ns.sh_output("etcdctl --endpoints=http://127.0.0.1:2379 endpoint health").status.success() {
        if Instant::now() > deadline {
            bail!("etcd did not become healthy in 20 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(guard)
}

fn start_server(ns: &Netns, bin: &Path, dir: &Path, store: &str, controllers: bool) -> Result<ChildGuard> {
    let mut cmd = ns.command(bin.join("skiff-control").to_str().context("path")?);
    cmd.arg("--data-dir").arg(dir).args(["--bind-address", "127.0.0.1", "--port", PORT]);
    if store == "etcd" {
        cmd.args(["--etcd-servers", ETCD_CLIENT]);
    }
    if !controllers {
        cmd.arg("--disable-controllers");
    }
    let log = std::fs::File::create(dir.with_extension("log"))?;
    let child =
        cmd.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(log).spawn().context("starting skiff-control")?;
    let guard = ChildGuard::new(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("admin.kubeconfig").exists()
        || ns.sh_output(&format!("ss -Hltn 'sport = :{PORT}'")).stdout.is_empty()
    {
        if Instant::now() > deadline {
            bail!(
                "skiff-control did not come up in 20 s: {}",
                std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(guard)
}

/// Runs skiff-api-bench against the server of `dir`; returns what it printed (its
/// progress goes to stderr, shown as it comes).
fn bench(ns: &Netns, bin: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let out = ns
        .command(bin.join("skiff-api-bench").to_str().context("path")?)
        .arg("--kubeconfig")
        .arg(dir.join("admin.kubeconfig"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("running skiff-api-bench")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("skiff-api-bench failed ({}): {text}", out.status);
    }
    Ok(text)
}

pub(crate) fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the server's memory")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
