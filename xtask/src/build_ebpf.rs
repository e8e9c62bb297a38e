//! `cargo xtask build-ebpf`: builds the BPF crate (ebpf/programs) with the pinned
//! nightly and bpf-linker into eBPF object files, one per attach point (`[[bin]]`).
//! Other subcommands call `build_ebpf` for the objects' directory. It checks the
//! toolchain (fast) but installs nothing else.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::toolchain::{self, BPF_TARGET, HOST_BUILD_ENV, NIGHTLY};
use crate::util::{progress, run_checked, target_dir, workspace_root};

/// The BPF crate's package name.
pub const BPF_PACKAGE: &str = "skiff-ebpf-programs";

/// The variable through which the agent's build (which embeds the objects) and the
/// tests find the BPF objects; set, it also spares other subcommands the build here.
pub const EBPF_DIR_ENV: &str = "SKIFF_EBPF_DIR";

pub fn run(release: bool) -> Result<()> {
    let dir = build_ebpf(release)?;
    let objects = objects(&dir)?;
    if objects.is_empty() {
        progress("build-ebpf", &format!("built, but found no eBPF objects in {}", dir.display()));
    } else {
        progress("build-ebpf", &format!("eBPF objects ({}) in {}:", objects.len(), dir.display()));
        for object in objects {
            println!("{}", object.display());
        }
    }
    Ok(())
}

/// Builds the BPF programs and returns the directory holding the objects
/// (`<target>/bpfel-unknown-none/{release,debug}`); each object is named after its bin,
/// e.g. `from-pod`.
pub fn build_ebpf(release: bool) -> Result<PathBuf> {
    let tc = toolchain::ensure()?;
    let profile = if release { "release" } else { "debug" };
    progress("build-ebpf", &format!("building {BPF_PACKAGE} for {BPF_TARGET} with {NIGHTLY} ({profile})..."));

    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(tc.bpf_linker_bin_dir.clone()).chain(std::env::split_paths(&path)))
        .context("a PATH entry contains ':'; fix PATH")?;

    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{NIGHTLY}"))
        .args(["build", "--package", BPF_PACKAGE, "--target", BPF_TARGET, "-Z", "build-std=core", "--bins"])
        .current_dir(workspace_root())
        .env("PATH", path);
    if release {
        cmd.arg("--release");
    }
    // `cargo xtask` runs under the stable toolchain's cargo; its choices must not leak
    // into the nightly build (RUSTUP_TOOLCHAIN would also fight `+nightly`).
    for var in HOST_BUILD_ENV.iter().chain(&["RUSTUP_TOOLCHAIN", "RUSTUP_TOOLCHAIN_SOURCE"]) {
        cmd.env_remove(var);
    }
    run_checked(
        &mut cmd,
        "fix the errors above in ebpf/ (a linker error naming bpf-linker or LLVM: run `cargo xtask setup`)",
    )?;
    Ok(target_dir().join(BPF_TARGET).join(profile))
}

/// The release objects for a subcommand that only uses them: `$SKIFF_EBPF_DIR` when it
/// names a built directory (as `cargo xtask test` and CI set it), else built now.
pub fn objects_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(EBPF_DIR_ENV).filter(|d| !d.is_empty()).map(PathBuf::from)
        && dir.join("from-pod").is_file()
    {
        progress("build-ebpf", &format!("using the objects in {} ({EBPF_DIR_ENV})", dir.display()));
        return Ok(dir);
    }
    build_ebpf(true)
}

/// The eBPF object files in `dir` (ELF files without an extension), sorted.
pub fn objects(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        if path.is_file() && path.extension().is_none() && is_elf(&path) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"\x7fELF"
}
