//! `cargo xtask bench <area>`: benchmarks, each measured as a ratio against its baseline
//! in the same run, printed as `ID label: value unit` lines.
//!
//! Areas:
//! - `lb` (xtask/src/bench_lb.rs): P1, the load balancer's cost per packet on each of
//!   its paths under BPF_PROG_TEST_RUN with 1, 10,000 and 100,000 Services
//!   (`skiff-lb-bench`), and from the kernel's BPF statistics during P2; P2, new
//!   connections per second through a ClusterIP with 10,000 Services installed, Skiff's
//!   eBPF load balancer against kube-proxy-style iptables rulesets, pod IP as the
//!   ceiling, modes alternating over rounds.
//! - `nodeport` (xtask/src/bench_nodeport.rs): P9, NodePort packets per second
//!   through Skiff's XDP fast path against kube-proxy's iptables NodePort ruleset with
//!   kernel VXLAN, 10,000 Services.
//! - `overlay` (xtask/src/bench_overlay.rs): P3, throughput through a ClusterIP to a pod
//!   on the other node against pod IP directly; P4, cross-node throughput and
//!   request/response rate with the eBPF overlay against flannel-style kernel VXLAN.
//! - `api` (xtask/src/bench_api.rs): P7, API creates/s, LIST and watch latency; P8,
//!   control-plane memory holding 1,000 pods.
//! - `pods` (xtask/src/bench_pods.rs): P6, pod create→Ready, and the agent's memory.
//! - `cluster` (xtask/src/bench_cluster.rs): P5, API change → every node's maps with
//!   10,000 Services, and a full resync against `iptables-restore` (the ruleset of
//!   `crate::kube_proxy_rules`); P8, the cluster's memory at rest with the demo app.
//!
//! This file only dispatches.

use anyhow::{Result, bail};

pub fn run(area: &str, args: &[String]) -> Result<()> {
    match area {
        "lb" => crate::bench_lb::run(args),
        "overlay" => crate::bench_overlay::run(args),
        "api" => crate::bench_api::run(args),
        "pods" => crate::bench_pods::run(args),
        "cluster" => crate::bench_cluster::run(args),
        "dns" => crate::bench_dns::run(args),
        "nodeport" => crate::bench_nodeport::run(args),
        other => bail!("unknown benchmark area `{other}`; known: lb, overlay, api, pods, cluster, dns, nodeport"),
    }
}
