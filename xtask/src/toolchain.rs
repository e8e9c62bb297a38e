//! The toolchain that builds the BPF crate: the pinned nightly (with rust-src, for
//! `-Z build-std=core`) and bpf-linker built against that nightly's own libLLVM.
//!
//! Tools live outside any clone of the project, under `$CARGO_HOME/skiff-tools`, so the
//! next run and CI's fresh clone find them and skip the builds:
//! - `llvm/lib/`: two symlinks to `<nightly sysroot>/lib/libLLVM.so.22*`, one named
//!   `libLLVM.so` (what the build links against) and one with the file's own name (its
//!   soname, what bpf-linker's rpath resolves at run time);
//! - `bpf-linker/bin/bpf-linker`: built with `LLVM_PREFIX=<tools>/llvm`.
//!
//! This module must not build the BPF crate itself (that is `build_ebpf`), and it must
//! not need root: everything it installs belongs to the user's rustup and cargo homes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{cargo_home, probe, progress, run_checked};

/// The nightly that builds the BPF crate. Must match `ebpf/programs/rust-toolchain.toml`
/// (a unit test below checks it).
pub const NIGHTLY: &str = "nightly-2026-05-20";
/// The BPF target triple (little-endian).
pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// The bpf-linker release we build; it must support the nightly's LLVM major.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// bpf-linker's cargo feature for the nightly's LLVM major...
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
/// ...and the file name prefix of that nightly's libLLVM. Change both with `NIGHTLY`
/// when a new nightly moves to another LLVM major.
const LIBLLVM_PREFIX: &str = "libLLVM.so.22";

/// Environment variables that describe the build of xtask itself (set by `cargo run`,
/// the rustup proxy or the user's shell for the host build) and would mislead a nested
/// cargo building for another toolchain or target. Removed from nested cargo commands.
pub const HOST_BUILD_ENV: &[&str] = &[
    "CARGO",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
];

/// What a BPF build needs, once `ensure` has checked or installed it.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The pinned nightly's sysroot (`rustc --print sysroot`).
    pub sysroot: PathBuf,
    /// The directory holding `bpf-linker`; put it first on PATH for the BPF build.
    pub bpf_linker_bin_dir: PathBuf,
}

/// Names another tools directory than `$CARGO_HOME/skiff-tools`. An empty directory
/// there makes `setup` redo every install outside apt, which is how a fresh machine is
/// checked without one: `SKIFF_TOOLS_DIR=$(mktemp -d) CI=true bash .ci/run`.
pub const TOOLS_DIR_ENV: &str = "SKIFF_TOOLS_DIR";

/// Where tools built for this project live: `$SKIFF_TOOLS_DIR`, else
/// `$CARGO_HOME/skiff-tools`.
pub fn tools_dir() -> Result<PathBuf> {
    match std::env::var_os(TOOLS_DIR_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Ok(cargo_home()?.join("skiff-tools")),
    }
}

/// Checks the pinned nightly and bpf-linker, installing what is missing. Takes well
/// under a second when both are there; installing takes a few minutes.
pub fn ensure() -> Result<Toolchain> {
    let sysroot = ensure_nightly()?;
    let bpf_linker_bin_dir = ensure_bpf_linker(&sysroot)?;
    Ok(Toolchain { sysroot, bpf_linker_bin_dir })
}

/// The pinned nightly's sysroot, or `None` when the toolchain is not installed.
fn nightly_sysroot() -> Option<PathBuf> {
    probe(
        Command::new("rustup")
            .args(["run", NIGHTLY, "rustc", "--print", "sysroot"])
            // A probe must never start a download on its own; installing is a step we announce.
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )
    .filter(|s| !s.is_empty())
    .map(PathBuf::from)
}

fn has_rust_src(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib/src/rust/library").is_dir()
}

fn ensure_nightly() -> Result<PathBuf> {
    if let Some(sysroot) = nightly_sysroot() {
        if has_rust_src(&sysroot) {
            return Ok(sysroot);
        }
        progress("setup", &format!("adding rust-src to {NIGHTLY} (about 30 seconds)..."));
        run_checked(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
            "check the network, then run `cargo xtask setup` again",
        )?;
    } else {
        if probe(Command::new("rustup").arg("--version")).is_none() {
            bail!(
                "`rustup --version` fails: rustup is not on PATH or does not run, and it is needed to \
                 install the pinned nightly {NIGHTLY}. Install rustup (https://rustup.rs), then run \
                 `cargo xtask setup` again"
            );
        }
        progress("setup", &format!("installing toolchain {NIGHTLY} with rust-src (about 90 seconds)..."));
        run_checked(
            Command::new("rustup").args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
            "check the network, then run `cargo xtask setup` again",
        )?;
    }
    let sysroot = nightly_sysroot().with_context(|| {
        format!("`rustup run {NIGHTLY} rustc --print sysroot` still fails after installing; try `rustup toolchain uninstall {NIGHTLY}` and `cargo xtask setup` again")
    })?;
    if !has_rust_src(&sysroot) {
        bail!(
            "{NIGHTLY} has no rust-src under {} even after installing it; run `rustup component add rust-src --toolchain {NIGHTLY}` and look at its output",
            sysroot.display()
        );
    }
    Ok(sysroot)
}

/// The nightly's libLLVM file, e.g. `<sysroot>/lib/libLLVM.so.22.1-rust-1.97.0-nightly`.
fn find_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let entries = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {} (the {NIGHTLY} sysroot's lib directory)", lib.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", lib.display()))?;
        if entry.file_name().to_string_lossy().starts_with(LIBLLVM_PREFIX) {
            return Ok(entry.path());
        }
    }
    bail!(
        "no {LIBLLVM_PREFIX}* in {}: {NIGHTLY} does not ship the LLVM major that bpf-linker is built for \
         (feature {BPF_LINKER_LLVM_FEATURE}); update NIGHTLY, BPF_LINKER_LLVM_FEATURE and LIBLLVM_PREFIX \
         together in xtask/src/toolchain.rs",
        lib.display()
    )
}

/// Makes `link` a symlink to `target`, replacing whatever is there. Returns whether it changed.
fn ensure_symlink(link: &Path, target: &Path) -> Result<bool> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(false);
    }
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link)
            .with_context(|| format!("cannot remove stale {} (remove it by hand)", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot create symlink {} -> {}", link.display(), target.display()))?;
    Ok(true)
}

/// Points `<tools>/llvm/lib` at the nightly's libLLVM and returns `<tools>/llvm`.
fn ensure_llvm_prefix(tools: &Path, sysroot: &Path) -> Result<PathBuf> {
    let libllvm = find_libllvm(sysroot)?;
    let prefix = tools.join("llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let soname = libllvm.file_name().context("libLLVM path has no file name")?.to_os_string();

    // Links left by an older nightly (another soname) would only confuse a reader.
    for entry in std::fs::read_dir(&lib).with_context(|| format!("cannot list {}", lib.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", lib.display()))?;
        let name = entry.file_name();
        if name != "libLLVM.so" && name != soname && name.to_string_lossy().starts_with("libLLVM") {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove stale {}", entry.path().display()))?;
        }
    }
    let mut changed = false;
    for name in [std::ffi::OsString::from("libLLVM.so"), soname] {
        changed |= ensure_symlink(&lib.join(name), &libllvm)?;
    }
    if changed {
        progress("setup", &format!("linked {} -> {}", lib.display(), libllvm.display()));
    }
    Ok(prefix)
}

fn ensure_bpf_linker(sysroot: &Path) -> Result<PathBuf> {
    let tools = tools_dir()?;
    let llvm_prefix = ensure_llvm_prefix(&tools, sysroot)?;
    let root = tools.join("bpf-linker");
    let bin_dir = root.join("bin");
    let bin = bin_dir.join("bpf-linker");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    let works = || probe(Command::new(&bin).arg("--version")).is_some_and(|v| v == wanted);
    if works() {
        return Ok(bin_dir);
    }

    progress(
        "setup",
        &format!(
            "building bpf-linker {BPF_LINKER_VERSION} against {NIGHTLY}'s libLLVM into {} (about 1 minute)...",
            root.display()
        ),
    );
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", BPF_LINKER_LLVM_FEATURE])
        .arg("--root")
        .arg(&root)
        // bpf-linker ships its Cargo.lock; --locked keeps its dependencies at the tested versions.
        .arg("--locked")
        // A binary that is there but does not run (e.g. after an LLVM change) is still
        // "installed" to cargo; --force rebuilds it.
        .arg("--force")
        .env("LLVM_PREFIX", &llvm_prefix)
        // Away from the workspace, so no rust-toolchain.toml picks another toolchain.
        .current_dir(&tools);
    for var in HOST_BUILD_ENV {
        cmd.env_remove(var);
    }
    run_checked(
        &mut cmd,
        "read the compile errors above; a missing C toolchain (`apt-get install build-essential`) \
         or network access to crates.io are the usual causes. Then run `cargo xtask setup` again",
    )?;
    if !works() {
        bail!(
            "{} was built but `{} --version` does not print `{wanted}`; check that {} holds valid links to libLLVM, \
             then delete {} and run `cargo xtask setup` again",
            bin.display(),
            bin.display(),
            llvm_prefix.join("lib").display(),
            root.display()
        );
    }
    Ok(bin_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_matches_the_bpf_crates_rust_toolchain_file() {
        let path = crate::util::workspace_root().join("ebpf/programs/rust-toolchain.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let channel = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("channel"))
            .and_then(|rest| rest.split('"').nth(1))
            .unwrap_or_else(|| panic!("no channel = \"...\" line in {}", path.display()));
        assert_eq!(channel, NIGHTLY, "{} and xtask/src/toolchain.rs must name the same nightly", path.display());
    }
}
