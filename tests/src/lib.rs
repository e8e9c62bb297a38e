//! Support for Skiff's privileged tests, the demo and the benchmarks: network
//! namespaces that clean up after themselves, a one-node pod topology on veths, and the
//! privilege rule (skip locally, fail under `CI=true`).
//!
//! Every address used here lives in namespaces this code creates; nothing is ever sent
//! from the root namespace. Namespace names carry the creating process's id so that
//! concurrent runs never share one.

#[cfg(feature = "cri")]
pub mod cluster;
#[cfg(feature = "cri")]
pub mod containerd;
#[cfg(feature = "cri")]
pub mod cri;
#[cfg(feature = "image")]
pub mod image;
pub mod netns;
pub mod topology;

use std::path::{Path, PathBuf};

/// Whether this process may run privileged tests (root, bpffs mounted). Without the
/// privileges a test skips, except under `CI=true`, where it fails.
pub fn require_privileges(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false);
    let bpffs = std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf")))
        .unwrap_or(false);
    if root && bpffs {
        return true;
    }
    let why = if root { "bpffs is not mounted (run `cargo xtask setup`)" } else { "it needs root" };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: cannot run under CI=true: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// The value of a harness step, or a panic naming the step and the whole error chain.
pub fn ok<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// A unique, short tag for names of this run's namespaces and pins.
pub fn unique_tag(kind: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{kind}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A bpffs directory for one test's pins, removed (with every pin in it) on drop.
#[derive(Debug)]
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new(tag: &str) -> Self {
        let path = Path::new("/sys/fs/bpf/skiff-test").join(tag);
        let _ = std::fs::remove_dir_all(&path);
        Self { path }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The directory holding this workspace's built binaries (`target/debug` or
/// `target/release`), found from the running test binary.
pub fn target_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary next to the test binary, with a clear panic if it was not
/// built (cargo builds a package's binaries before its integration tests, but not other
/// packages' binaries).
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = target_bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p <its package>` (cargo xtask test does)",
        path.display()
    );
    path
}

/// The last `lines` lines of a log file ("" when it cannot be read), for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
