//! `cargo xtask setup`: installs what a fresh machine lacks, idempotently — Debian
//! packages, the BPF toolchain (see `toolchain`), the Python client's venv (see
//! `python`), and the bpffs mount. Every check
//! runs without root and the whole command takes about a second when nothing is
//! missing; only installing needs root, and then a clear error says so.
//!
//! It must not change kernel settings of the root network namespace (in particular
//! `net.ipv4.ip_forward`): tests and the local cluster live in namespaces of their own.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::{is_root, progress, run_checked};
use crate::{python, toolchain};

/// Debian packages the project's build and tests use that a fresh machine may lack:
/// networking tools for the datapath and tests, protoc with the well-known `.proto`
/// files (`libprotobuf-dev`: `google/protobuf/*.proto`, which etcd-client's build
/// script needs) for the gRPC clients' builds, containerd/runc/CNI plugins and etcd for
/// the local cluster, Python with venv for the Python client test. A unit test checks
/// that every tool the code runs comes from this list or from what a fresh machine has.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "bpftool",
    "iperf3",
    "protobuf-compiler",
    "libprotobuf-dev",
    "libc6-dev",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "etcd-server",
    "etcd-client",
    "tcpdump",
    "ethtool",
    // `conntrack -F` between the modes of `bench lb`.
    "conntrack",
    "util-linux",
    "procps",
    "python3",
    "python3-venv",
    // Cluster DNS: a real resolver's client on the node (`dig`) for the tests, and the
    // load generator and the baseline server of `bench dns`.
    "bind9-dnsutils",
    "dnsperf",
    "dnsmasq-base",
];

/// Where bpffs must be mounted for pinning maps, programs and links.
pub const BPFFS: &str = "/sys/fs/bpf";

/// What `setup` found or installed, for the commands that run after it.
pub struct Ready {
    /// The Python venv's interpreter, which the Python client test runs.
    pub python: std::path::PathBuf,
}

pub fn run() -> Result<Ready> {
    let started = Instant::now();
    ensure_packages()?;
    let tc = toolchain::ensure()?;
    let py = python::ensure()?;
    if is_root() {
        ensure_bpffs()?;
    } else if !bpffs_mounted()? {
        // Only root can mount it, and only root runs the tests that pin to it.
        progress("setup", &format!("WARNING: bpffs is not mounted at {BPFFS}; as root, setup mounts it"));
    }
    progress(
        "setup",
        &format!(
            "ready in {:.1} s: {} Debian packages, {} at {}, bpf-linker in {}, Python client {} in {}, bpffs at {BPFFS}",
            started.elapsed().as_secs_f64(),
            DEBIAN_PACKAGES.len(),
            toolchain::NIGHTLY,
            tc.sysroot.display(),
            tc.bpf_linker_bin_dir.display(),
            python::KUBERNETES_CLIENT_VERSION,
            py.display(),
        ),
    );
    Ok(Ready { python: py })
}

/// The packages of `DEBIAN_PACKAGES` that are not installed, by one `dpkg-query` call.
pub fn missing_packages() -> Result<Vec<&'static str>> {
    let out =
        Command::new("dpkg-query").args(["-W", "-f=${Package} ${Status}\n"]).args(DEBIAN_PACKAGES).output().context(
            "cannot run dpkg-query: this does not look like a Debian-based machine; \
             install the packages listed in xtask/src/setup.rs (DEBIAN_PACKAGES) by hand",
        )?;
    // dpkg-query exits 1 when some package is unknown; its stdout still lists the known ones.
    let listed = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.strip_suffix(" install ok installed"))
        .map(|name| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(DEBIAN_PACKAGES.iter().copied().filter(|p| !installed.contains(p)).collect())
}

/// Installs the missing Debian packages (one `apt-get update`, one `apt-get install`).
pub fn ensure_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "missing Debian packages: {list}. Install them as root \
             (`sudo apt-get install -y --no-install-recommends {list}`) or run `cargo xtask setup` as root"
        );
    }
    progress("setup", &format!("installing Debian packages: {list}; apt-get update first (about 10 seconds)..."));
    run_checked(
        Command::new("apt-get").args(["-q", "update"]).env("DEBIAN_FRONTEND", "noninteractive"),
        "check the network and /etc/apt/sources.list, then run `cargo xtask setup` again",
    )?;
    progress("setup", &format!("apt-get install {list} (up to a minute)..."));
    run_checked(
        Command::new("apt-get")
            .args(["-q", "install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "read apt's message above (a package unknown to this Debian release, or a held lock), \
         fix it, then run `cargo xtask setup` again",
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!(
            "apt-get reported success but these packages are still not installed: {}; check `dpkg --audit`",
            still.join(" ")
        );
    }
    Ok(())
}

/// Whether a bpf filesystem is mounted at `BPFFS`, according to /proc/mounts.
pub fn bpffs_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}

/// Mounts bpffs at `BPFFS` unless it is there already.
pub fn ensure_bpffs() -> Result<()> {
    if bpffs_mounted()? {
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted at {BPFFS}; as root run `mount -t bpf bpf {BPFFS}` or `cargo xtask setup`");
    }
    progress("setup", &format!("mounting bpffs at {BPFFS}"));
    std::fs::create_dir_all(BPFFS).with_context(|| format!("cannot create {BPFFS}"))?;
    run_checked(
        Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]),
        "the kernel needs CONFIG_BPF_SYSCALL, and a container needs CAP_SYS_ADMIN to mount",
    )?;
    if !bpffs_mounted()? {
        bail!("`mount -t bpf bpf {BPFFS}` succeeded but /proc/mounts shows no bpf filesystem there");
    }
    Ok(())
}

/// Every program the build, the tests, the demo and the benchmarks run, and the Debian
/// package it comes from. Each package must be in `DEBIAN_PACKAGES` or on a fresh
/// machine already (`fresh-machine-packages.txt`, a copy of the project's shared list);
/// a unit test checks both, and another that the code runs no program missing here.
/// `None` marks the programs that come with rustup, not from Debian.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "only the unit tests below read it; it lives beside DEBIAN_PACKAGES so both change together"
    )
)]
pub const TOOLS: &[(&str, Option<&str>)] = &[
    ("cargo", None),
    ("rustup", None),
    ("cc", Some("gcc")),
    ("protoc", Some("protobuf-compiler")),
    ("apt-get", Some("apt")),
    ("dpkg-query", Some("dpkg")),
    ("sh", Some("dash")),
    ("bash", Some("bash")),
    ("cat", Some("coreutils")),
    ("ip", Some("iproute2")),
    ("bridge", Some("iproute2")),
    ("ss", Some("iproute2")),
    ("nsenter", Some("util-linux")),
    ("taskset", Some("util-linux")),
    ("mount", Some("mount")),
    ("umount", Some("mount")),
    ("kill", Some("procps")),
    ("sysctl", Some("procps")),
    ("iptables", Some("iptables")),
    ("iptables-", Some("iptables")),
    ("nft", Some("nftables")),
    ("bpftool", Some("bpftool")),
    ("iperf3", Some("iperf3")),
    // `bench overlay -- --profile DIR` only.
    ("perf", Some("linux-perf")),
    ("ethtool", Some("ethtool")),
    ("conntrack", Some("conntrack")),
    ("nstat", Some("iproute2")),
    ("uname", Some("coreutils")),
    ("stat", Some("coreutils")),
    // `cargo xtask test`: the node image's build beside the tests, at low priority.
    ("nice", Some("coreutils")),
    ("containerd", Some("containerd")),
    ("ctr", Some("containerd")),
    ("runc", Some("runc")),
    ("loopback", Some("containernetworking-plugins")),
    ("etcd", Some("etcd-server")),
    ("etcdctl", Some("etcd-client")),
    ("kubectl", Some("kubectl")),
    ("python3", Some("python3")),
    // The kubelet server test: an HTTPS client and a pseudo-terminal for `exec -it`.
    ("curl", Some("curl")),
    ("script", Some("bsdutils")),
    ("dig", Some("bind9-dnsutils")),
    ("dnsperf", Some("dnsperf")),
    ("dnsmasq", Some("dnsmasq-base")),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::{DEBIAN_PACKAGES, TOOLS};
    use crate::util::workspace_root;

    /// What a fresh machine of the project's kind has before setup runs.
    const FRESH_MACHINE_PACKAGES: &str = include_str!("fresh-machine-packages.txt");

    #[test]
    fn every_tools_package_is_installed_by_setup_or_on_a_fresh_machine() {
        let fresh: BTreeSet<&str> = FRESH_MACHINE_PACKAGES.lines().map(str::trim).collect();
        for (tool, package) in TOOLS {
            let Some(package) = package else { continue };
            assert!(
                DEBIAN_PACKAGES.contains(package) || fresh.contains(package),
                "`{tool}` comes from the Debian package {package}, which a fresh machine lacks: \
                 add it to DEBIAN_PACKAGES in xtask/src/setup.rs"
            );
        }
    }

    /// The programs the workspace's Rust code starts by name: the first word of the
    /// string literal after `Command::new(`, or after the netns helpers `.run(`,
    /// `.command(`, `.sh(` and `.sh_output(` (with or without `&format!(`).
    fn programs_started(text: &str) -> BTreeSet<String> {
        const CALLS: &[&str] = &["Command::new(", ".run(", ".command(", ".sh(", ".sh_output("];
        let mut found = BTreeSet::new();
        for call in CALLS {
            for (at, _) in text.match_indices(call) {
                let rest = &text[at + call.len()..];
                let rest = rest.strip_prefix("&format!(").unwrap_or(rest);
                let Some(literal) = rest.strip_prefix('"') else { continue };
                let word: String =
                    literal.chars().take_while(|c| !c.is_whitespace() && *c != '"' && *c != '{').collect();
                let program = word.rsplit('/').next().unwrap_or(&word).to_string();
                // Other string literals after such a call (this test's own table) are no programs.
                let is_name = program.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                if !program.is_empty() && is_name {
                    found.insert(program);
                }
            }
        }
        found
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    rust_files(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_program_the_code_runs_is_in_the_tools_table() {
        let mut files = Vec::new();
        rust_files(&workspace_root(), &mut files);
        assert!(files.len() > 50, "found only {} Rust files under {}", files.len(), workspace_root().display());
        let known: BTreeSet<&str> = TOOLS.iter().map(|(tool, _)| *tool).collect();
        let mut unknown = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for program in programs_started(&text) {
                if !known.contains(program.as_str()) {
                    unknown.push(format!("{program} (in {})", file.display()));
                }
            }
        }
        assert!(
            unknown.is_empty(),
            "programs run by the code but missing from TOOLS in xtask/src/setup.rs: {unknown:?}; \
             add each with its Debian package"
        );
    }

    #[test]
    fn programs_started_reads_the_first_word_of_the_command() {
        let text = r#"Command::new("ip").args(x); ns.sh(&format!("iptables-{b}-restore < f")); ns.run("/usr/bin/etcd", &[]); Command::new(bin)"#;
        let found: Vec<String> = programs_started(text).into_iter().collect();
        assert_eq!(found, ["etcd", "ip", "iptables-"]);
    }
}
