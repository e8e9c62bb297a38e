//! What the node reports about its machine, read from /proc, /etc and the root file
//! system. The parsing is pure and tested on fixture text; only `MachineFacts::read`
//! touches the machine.

use std::path::Path;

/// The machine as the Node object describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineFacts {
    pub cpus: usize,
    /// MemTotal, in KiB.
    pub memory_kib: u64,
    /// MemAvailable, in KiB.
    pub memory_available_kib: u64,
    pub kernel_version: String,
    /// `PRETTY_NAME` of /etc/os-release.
    pub os_image: String,
    /// The Go-style architecture name Kubernetes uses (`amd64`, `arm64`).
    pub architecture: &'static str,
    pub machine_id: String,
    pub boot_id: String,
    /// Free share of the root file system, 0.0 to 1.0.
    pub root_fs_free: f64,
    /// Processes running now, and the most the kernel allows.
    pub processes: u64,
    pub pid_max: u64,
    /// What the container runtime says (filled in by the node role, which has the CRI).
    pub runtime: RuntimeFacts,
}

/// The container runtime's health and images, as the Node's status reports them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeFacts {
    /// Why the node cannot run pods now (runtime down, no pod network yet); `None`
    /// when it can, or when the agent drives no runtime.
    pub not_ready: Option<String>,
    /// The images on the node: their names (tags and digests) and size in bytes.
    pub images: Vec<(Vec<String>, u64)>,
}

impl MachineFacts {
    /// Reads the facts of this machine; anything unreadable is reported as unknown
    /// (empty or zero) rather than stopping the node from registering.
    pub fn read() -> Self {
        let text = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let meminfo = text("/proc/meminfo");
        let (processes, _) = parse_loadavg_processes(&text("/proc/loadavg")).unwrap_or((0, 0));
        Self {
            cpus: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
            memory_kib: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0),
            memory_available_kib: meminfo_kib(&meminfo, "MemAvailable").unwrap_or(0),
            kernel_version: text("/proc/sys/kernel/osrelease").trim().to_string(),
            runtime: RuntimeFacts::default(),
            os_image: os_release_pretty_name(&text("/etc/os-release")).unwrap_or_else(|| "Linux".into()),
            architecture: go_arch(std::env::consts::ARCH),
            machine_id: text("/etc/machine-id").trim().to_string(),
            boot_id: text("/proc/sys/kernel/random/boot_id").trim().to_string(),
            root_fs_free: free_share(Path::new("/")).unwrap_or(1.0),
            processes,
            pid_max: text("/proc/sys/kernel/pid_max").trim().parse().unwrap_or(0),
        }
    }
}

/// A `/proc/meminfo` field in KiB (`MemTotal:       24567892 kB`).
pub fn meminfo_kib(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"` → `Debian GNU/Linux 12 (bookworm)`.
pub fn os_release_pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| Some(line.strip_prefix("PRETTY_NAME=")?.trim_matches('"').to_string()))
}

/// The running and total process counts of `/proc/loadavg` (`0.10 0.20 0.30 2/345 6789`).
pub fn parse_loadavg_processes(loadavg: &str) -> Option<(u64, u64)> {
    let (running, total) = loadavg.split_whitespace().nth(3)?.split_once('/')?;
    Some((total.parse().ok()?, running.parse().ok()?))
}

/// Rust's architecture names as Go (and so Kubernetes) spells them.
pub fn go_arch(rust_arch: &str) -> &'static str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        _ => "unknown",
    }
}

fn free_share(path: &Path) -> Option<f64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let blocks = st.blocks() as f64;
    (blocks > 0.0).then(|| st.blocks_available() as f64 / blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_and_etc_formats() {
        let meminfo = "MemTotal:       24567892 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo_kib(meminfo, "MemTotal"), Some(24_567_892));
        assert_eq!(meminfo_kib(meminfo, "MemAvailable"), Some(20_000_000));
        assert_eq!(meminfo_kib(meminfo, "Mem"), None, "a prefix of a field name is not the field");
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(os_release_pretty_name(os).as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(parse_loadavg_processes("0.10 0.20 0.30 2/345 6789"), Some((345, 2)));
        assert_eq!(parse_loadavg_processes("garbage"), None);
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }

    #[test]
    fn this_machine_has_cpus_memory_and_a_kernel() {
        let f = MachineFacts::read();
        assert!(f.cpus >= 1 && f.memory_kib > 0 && !f.kernel_version.is_empty(), "{f:?}");
        assert!(f.processes > 0 && f.pid_max > f.processes, "{f:?}");
    }
}
