//! `cargo xtask bench dns`: P10, the node's DNS server against dnsmasq (the server
//! inside the old kube-dns), both asked by Debian's `dnsperf` in the node's namespace.
//!
//! One node (release builds) holds `--services` (1,000) Services; dnsmasq serves the
//! same names from a hosts file (`--local=/cluster.local/`, so unknown names there are
//! NXDOMAIN, as with Skiff). The query mix: every Service's A record and one unknown
//! name per ten, in a fixed shuffled order. Each run measures both servers back to
//! back, alternating which goes first:
//! - throughput: dnsperf as fast as the server answers (100 queries in flight, one
//!   client thread), 5 s; a lost query fails the bench;
//! - latency: dnsperf at a fixed 10,000 queries/s for 3 s, each query's latency
//!   recorded (`-v`), p99.
//!
//! Five runs; the median with the spread.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use skiff_tests::cluster::{Cluster, ClusterOptions, ClusterSetup};
use skiff_tests::image::pause_image;
use skiff_tests::netns::wait_until;
use skiff_tests::unique_tag;

use crate::bench_pods::build_cluster_binaries;
use crate::bench_support::{percentile, summary};
use crate::util::{progress, target_dir};

const RUNS: usize = 5;
const SKIFF_DNS: &str = "169.254.20.10";
/// dnsmasq's address, beside Skiff's on the node's loopback.
const DNSMASQ: &str = "169.254.20.11";
const LATENCY_QPS: u32 = 10_000;

pub fn run(args: &[String]) -> Result<()> {
    let mut services = 1000usize;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--services" => services = iter.next().context("--services N")?.parse()?,
            other => bail!("unknown argument {other}; usage: cargo xtask bench dns [-- --services N]"),
        }
    }
    ensure!(crate::util::is_root(), "this needs root (network namespaces, containerd, BPF); run it as root");
    crate::setup::ensure_packages()?;
    crate::setup::ensure_bpffs()?;
    let bin_dir = build_cluster_binaries()?;
    progress("cluster", "starting skiff-control and one node...");
    let setup = ClusterSetup { services_from_api: true, ..Default::default() };
    let opts = ClusterOptions { bin_dir: Some(bin_dir) };
    let cluster = Cluster::start_in(&unique_tag("bdns"), 1, &[pause_image()?], &opts, &setup)?;
    let dir = target_dir().join("bench").join("dns");
    std::fs::create_dir_all(&dir)?;

    let names = create_services(&cluster, services, &dir)?;
    let queries = dir.join("queries.txt");
    std::fs::write(&queries, query_mix(&names))?;
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, names.iter().map(|(name, ip)| format!("{ip} {name}\n")).collect::<String>())?;
    let node = &cluster.nodes[0];
    node.ns.sh(&format!("ip addr add {DNSMASQ}/32 dev lo"));
    let dnsmasq = node
        .ns
        .command("dnsmasq")
        .args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
        .args(["--user=root", "--pid-file=", "--port=53", "--local=/cluster.local/", "--cache-size=10000"])
        .arg(format!("--listen-address={DNSMASQ}"))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting dnsmasq")?;
    let _dnsmasq = skiff_tests::netns::ChildGuard::new(dnsmasq);
    let (probe_name, probe_ip) = &names[names.len() - 1];
    for server in [SKIFF_DNS, DNSMASQ] {
        let answers = || node.ns.sh(&format!("dig +short +time=1 +tries=1 @{server} {probe_name}")).trim() == probe_ip;
        ensure!(wait_until(Duration::from_secs(30), answers), "{server} does not answer {probe_name} with {probe_ip}");
    }

    let (mut ratios, mut skiff_qps, mut dnsmasq_qps, mut skiff_p99, mut dnsmasq_p99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=RUNS {
        let order = if run % 2 == 1 { [SKIFF_DNS, DNSMASQ] } else { [DNSMASQ, SKIFF_DNS] };
        let mut qps = [0.0; 2];
        let mut p99 = [0.0; 2];
        for server in order {
            let i = usize::from(server == DNSMASQ);
            qps[i] = throughput(&cluster, server, &queries)?;
            p99[i] = p99_latency_ms(&cluster, server, &queries)?;
        }
        progress(
            "bench",
            &format!(
                "run {run}: Skiff {:.0} q/s, p99 {:.3} ms; dnsmasq {:.0} q/s, p99 {:.3} ms",
                qps[0], p99[0], qps[1], p99[1]
            ),
        );
        ratios.push(qps[0] / qps[1]);
        skiff_qps.push(qps[0]);
        dnsmasq_qps.push(qps[1]);
        skiff_p99.push(p99[0]);
        dnsmasq_p99.push(p99[1]);
    }
    println!("P10 dns-qps-vs-dnsmasq@{services}-services: {}", summary(&ratios, "x", 2));
    println!("P10 dns-qps: {}", summary(&skiff_qps, "q/s", 0));
    println!("P10 dnsmasq-qps: {}", summary(&dnsmasq_qps, "q/s", 0));
    println!("P10 dns-p99@{LATENCY_QPS}qps: {}", summary(&skiff_p99, "ms", 3));
    println!("P10 dnsmasq-p99@{LATENCY_QPS}qps: {}", summary(&dnsmasq_p99, "ms", 3));
    Ok(())
}

/// Creates `count` Services without selectors (names `svc-<i>`) and returns each
/// one's FQDN and ClusterIP.
fn create_services(cluster: &Cluster, count: usize, dir: &Path) -> Result<Vec<(String, String)>> {
    progress("services", &format!("creating {count} Services..."));
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let items: Vec<String> = chunk
            .iter()
            .map(|i| format!("{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"svc-{i}\",\"namespace\":\"default\"}},\"spec\":{{\"ports\":[{{\"port\":80}}]}}}}"))
            .collect();
        let list = format!("{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}", items.join(","));
        let file = dir.join("services.json");
        std::fs::write(&file, list)?;
        // A List is no kind the server validates against; its items are.
        cluster.kubectl_ok(&["create", "--validate=false", "-f", file.to_str().context("path")?])?;
        progress("services", &format!("{} of {count} created", chunk[chunk.len() - 1] + 1));
    }
    let out = cluster.kubectl_ok(&[
        "get",
        "services",
        "-n",
        "default",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.clusterIP}{\"\\n\"}{end}",
    ])?;
    let names: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, _)| name.starts_with("svc-"))
        .map(|(name, ip)| (format!("{name}.default.svc.cluster.local"), ip.to_owned()))
        .collect();
    ensure!(names.len() == count, "{} of the {count} Services have a ClusterIP", names.len());
    Ok(names)
}

/// Every name's A query, and an unknown name after every tenth, shuffled by a fixed
/// permutation so that both servers see the same order.
fn query_mix(names: &[(String, String)]) -> String {
    let mut lines: Vec<String> = Vec::new();
    for (i, (name, _)) in names.iter().enumerate() {
        lines.push(format!("{name} A"));
        if i % 10 == 9 {
            lines.push(format!("missing-{i}.default.svc.cluster.local A"));
        }
    }
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..lines.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        lines.swap(i, (state % (i as u64 + 1)) as usize);
    }
    lines.join("\n") + "\n"
}

fn dnsperf(cluster: &Cluster, server: &str, queries: &Path, extra: &[&str]) -> Result<String> {
    let out: std::process::Output = cluster.nodes[0]
        .ns
        .command("dnsperf")
        .args(["-s", server, "-d", queries.to_str().context("path")?, "-c", "1", "-T", "1", "-t", "2"])
        .args(extra)
        .output()
        .context("running dnsperf")?;
    ensure!(out.status.success(), "dnsperf against {server}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Queries per second at full speed; fails when a query is lost.
fn throughput(cluster: &Cluster, server: &str, queries: &Path) -> Result<f64> {
    let out = dnsperf(cluster, server, queries, &["-l", "5", "-q", "100"])?;
    let value = |label: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| v.split_whitespace().next())
            .map(str::to_owned)
    };
    let lost: u64 = value("Queries lost:").context("no `Queries lost` in dnsperf's output")?.parse()?;
    ensure!(lost == 0, "{lost} queries to {server} were lost:\n{out}");
    Ok(value("Queries per second:").context("no `Queries per second` in dnsperf's output")?.parse()?)
}

/// p99 of the per-query latencies at a fixed rate, in milliseconds.
fn p99_latency_ms(cluster: &Cluster, server: &str, queries: &Path) -> Result<f64> {
    let rate = LATENCY_QPS.to_string();
    let out = dnsperf(cluster, server, queries, &["-l", "3", "-Q", &rate, "-v"])?;
    // `> NOERROR name A 0.000123`: the last field is the latency in seconds.
    let mut latencies: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect();
    ensure!(latencies.len() > 1000, "only {} latencies from dnsperf -v against {server}", latencies.len());
    latencies.sort_by(f64::total_cmp);
    Ok(percentile(&latencies, 0.99))
}

#[cfg(test)]
mod tests {
    use super::query_mix;

    #[test]
    fn the_mix_has_every_name_once_and_one_unknown_per_ten() {
        let names: Vec<(String, String)> = (0..30).map(|i| (format!("svc-{i}.x"), String::new())).collect();
        let mix = query_mix(&names);
        let lines: Vec<&str> = mix.lines().collect();
        assert_eq!(lines.len(), 33);
        assert_eq!(lines.iter().filter(|l| l.starts_with("missing-")).count(), 3);
        assert!((0..30).all(|i| lines.contains(&format!("svc-{i}.x A").as_str())));
        assert_eq!(mix, query_mix(&names), "the same order every time");
    }
}
