//! `cargo xtask`: the project's one entry point for machine setup, BPF builds, tests,
//! images, the demo and benchmarks. This file only parses the command line and dispatches;
//! each subcommand lives in a module of its own.

mod bench;
mod bench_api;
mod bench_cluster;
mod bench_dns;
mod bench_lb;
mod bench_nodeport;
mod bench_overlay;
mod bench_pods;
mod bench_support;
mod build_ebpf;
mod demo;
mod images;
mod kube_proxy_rules;
mod lbsetup;
mod python;
mod setup;
mod test;
mod toolchain;
mod up;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Skiff's developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks: Debian packages, the pinned nightly toolchain,
    /// bpf-linker, the Python client's venv, and the bpffs mount. Fast when everything
    /// is already there. `SKIFF_TOOLS_DIR` moves the tools it builds (default
    /// `$CARGO_HOME/skiff-tools`).
    Setup,
    /// Build the BPF programs (ebpf/programs) into eBPF objects.
    BuildEbpf {
        /// Build with the dev profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Run all tests: the whole of `setup`, build-ebpf, then `cargo test` for the workspace.
    Test {
        /// Extra arguments for `cargo test`, after `--`
        /// (e.g. `cargo xtask test -- -p skiff-node -- --nocapture`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Show the eBPF load balancer on one node in network namespaces: a ClusterIP
    /// Service with three pods, programmed through the real agent, answering a client.
    Demo,
    /// Build Skiff's OCI image tarballs (pause, the echo demo app, the node agent) from
    /// static binaries into target/images, and print their paths. No registry: with
    /// `--import-into` they go straight into a containerd.
    Images {
        /// Which images (pause, echo, node); all when none is named.
        names: Vec<String>,
        /// Import them into the containerd at this socket (`ctr -n k8s.io images import`).
        #[arg(long, value_name = "SOCKET")]
        import_into: Option<std::path::PathBuf>,
    },
    /// Start a local multi-node cluster (network namespaces on this machine) and leave
    /// it running: setup, builds, skiff-control, a containerd and skiff-node per node,
    /// a route from the host to the API server. Prints `export KUBECONFIG=...`. On a
    /// cluster that is already up it says so and changes nothing.
    Up {
        /// How many nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Where skiff-control stores the cluster's objects.
        #[arg(long, value_enum, default_value = "embedded")]
        store: up::Store,
        /// Use the prebuilt skiff-control, skiff-node and skiff-cni in this directory
        /// instead of building them.
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<std::path::PathBuf>,
    },
    /// Remove everything `up` made (also after a crashed `up`); idempotent.
    Down,
    /// Show what of the local cluster is running: processes, nodes and their Ready state.
    Status,
    /// Run a benchmark of one area of the datapath or control plane.
    Bench {
        /// What to measure.
        area: String,
        /// Extra arguments for the benchmark, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// Prints the error and its causes, one per line, without anyhow's backtrace (which
/// `RUST_BACKTRACE=1` would otherwise add): these errors are for people, and say what to do.
fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Setup => setup::run().map(drop),
        Command::BuildEbpf { debug } => build_ebpf::run(!debug),
        Command::Test { cargo_args } => test::run(&cargo_args),
        Command::Demo => demo::run(),
        Command::Images { names, import_into } => images::run(&names, import_into.as_deref()),
        Command::Bench { area, args } => bench::run(&area, &args),
        Command::Up { nodes, store, bin_dir } => up::up(&up::UpOptions { nodes, store, bin_dir }),
        Command::Down => up::down(),
        Command::Status => up::status(),
    }
}
