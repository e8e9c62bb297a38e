//! Small helpers shared by the subcommands: progress lines, running commands with
//! errors that name the command and say what to do, and facts about this process.
//! Nothing here decides policy; the subcommand modules do.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Prints one progress line, `[tag] message`, to stderr (stdout stays for results).
pub fn progress(tag: &str, message: &str) {
    eprintln!("[{tag}] {message}");
}

/// The workspace root (the parent of `xtask/`), whatever directory cargo was run from.
pub fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}

/// The workspace's target directory: `$CARGO_TARGET_DIR` when set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// Whether this process runs with effective uid 0. `/proc/self` is owned by the
/// process's effective uid, which avoids `unsafe` for `geteuid`.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether we run under CI (`CI=true` or `CI=1`, as most CI systems set it).
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `$CARGO_HOME`, defaulting to `$HOME/.cargo` as cargo and rustup do.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .context("neither CARGO_HOME nor HOME is set; set CARGO_HOME to cargo's home directory")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// The command line of `cmd` as a person would type it, for messages.
pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(OsStr::to_string_lossy).collect::<Vec<_>>().join(" ")
}

/// Runs `cmd` with inherited stdio and fails, saying `hint`, unless it exits with 0.
pub fn run_checked(cmd: &mut Command, hint: &str) -> Result<()> {
    let shown = display(cmd);
    let status = cmd.status().with_context(|| format!("could not start `{shown}`: is it installed and on PATH?"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); {hint}");
    }
    Ok(())
}

/// Runs `cmd` capturing its output; `Ok(None)` when it cannot start or exits non-zero.
/// For probes whose failure only means "not there yet".
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Bytes free for an unprivileged writer on the filesystem holding `path` (or its
/// nearest existing ancestor, for a target dir not made yet); `None` if unknown.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let stat = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
}
