//! `cargo xtask demo`: the first thing a newcomer runs. Until the local cluster exists,
//! it builds a one-node topology in network namespaces (a client pod and three `web`
//! pods), programs one ClusterIP Service through the real agent, and shows requests to
//! the ClusterIP answered by all three pods through the eBPF load balancer.
//!
//! Everything it creates (namespaces, veths, bpffs pins, processes) is removed at the end,
//! also on failure. No packet leaves the namespaces it creates.

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context, Result, bail};
use skiff_tests::{topology::NodeTopology, unique_tag};

use crate::{
    lbsetup::{ServiceSpec, build_binaries, services_json, start_agent, start_echo_servers, write_manifest},
    util::progress,
};

const VIP: &str = "10.96.0.10";

pub fn run() -> Result<()> {
    let bin = build_binaries(false)?;
    let tag = unique_tag("demo");
    progress("demo", "creating network namespaces: node, client, web-1, web-2, web-3...");
    let topo = NodeTopology::new(&tag, &["client", "web-1", "web-2", "web-3"]);
    let pins = skiff_tests::PinDir::new(&tag);
    let manifests = std::env::temp_dir().join(format!("skiff-{tag}-manifests"));
    let _cleanup = RemoveDir(manifests.clone());

    let _servers = start_echo_servers(&topo, &bin, &["web-1", "web-2", "web-3"]);
    let web = ServiceSpec {
        name: "web".into(),
        vip: VIP.into(),
        endpoints: ["web-1", "web-2", "web-3"].iter().map(|p| topo.pod(p).ip.to_string()).collect(),
    };
    write_manifest(&manifests, "web.json", &services_json(&[web]))?;
    progress("demo", &format!("Service default/web: ClusterIP {VIP}:80 -> pods web-1..3 :8080 (TCP and UDP)"));

    progress("demo", "starting skiff-node in the node namespace (loads and attaches the eBPF load balancer)...");
    let mut agent = start_agent(&topo, &bin, &pins.path, &manifests)?;

    let dump = Command::new(bin.join("skiff-node")).args(["dump", "--pin-dir"]).arg(&pins.path).output()?;
    println!("\nService maps written by the agent:\n{}", String::from_utf8_lossy(&dump.stdout));

    let client = topo.pod("client");
    for (proto, count) in [("tcp", 12), ("udp", 6)] {
        progress("demo", &format!("client pod ({}) -> {VIP}:80/{proto}, {count} requests:", client.ip));
        let out = client
            .ns
            .command(bin.join("skiff-echo").to_str().unwrap_or("skiff-echo"))
            .args([proto, &format!("{VIP}:80"), "--count", &count.to_string()])
            .output()
            .context("running the client")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut answered: BTreeMap<&str, usize> = BTreeMap::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("ok ") {
                *answered.entry(name).or_default() += 1;
            } else if line.starts_with("err") {
                println!("  {line}");
            }
        }
        for (pod, n) in &answered {
            println!("  answered by {pod}: {n}");
        }
        if answered.values().sum::<usize>() != count {
            bail!("some requests through the ClusterIP failed:\n{text}");
        }
    }

    let stats = Command::new(bin.join("skiff-node")).args(["stats", "--pin-dir"]).arg(&pins.path).output()?;
    println!("\nDatapath counters:\n{}", String::from_utf8_lossy(&stats.stdout));
    agent.kill();
    progress("demo", "done: the ClusterIP answered through the eBPF load balancer; cleaning up");
    Ok(())
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
