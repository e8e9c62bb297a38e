//! The Python venv holding the official `kubernetes` client, which the
//! `python_client` test of skiff-control runs against the API server.
//!
//! Like the BPF tools (see `toolchain`), it lives outside any clone, at
//! `<tools>/python` (`$CARGO_HOME/skiff-tools/python` unless `SKIFF_TOOLS_DIR` names
//! another place), so a second `cargo xtask setup` (or CI's next
//! fresh clone) finds it and skips the install. The test looks for `$SKIFF_PYTHON`, then
//! `<venv>/bin/python`; `cargo xtask test` sets the former.
//!
//! This module must not install anything system-wide: the interpreter comes from the
//! Debian packages (`python3`, `python3-venv` in `setup::DEBIAN_PACKAGES`), and pip only
//! ever writes into the venv.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::toolchain::tools_dir;
use crate::util::{probe, progress, run_checked};

/// The client release the test is written against; pinned so CI does not change
/// under us when PyPI gets a new one.
pub const KUBERNETES_CLIENT_VERSION: &str = "37.0.2";

/// The environment variable naming the venv's interpreter for the test.
pub const PYTHON_ENV: &str = "SKIFF_PYTHON";

/// `<tools>/python` (see `toolchain::tools_dir`).
pub fn venv_dir() -> Result<PathBuf> {
    Ok(tools_dir()?.join("python"))
}

/// The venv's interpreter (it may not exist yet).
pub fn venv_python() -> Result<PathBuf> {
    Ok(venv_dir()?.join("bin/python"))
}

/// The installed client's version, or `None` when the venv or the package is missing.
fn installed_version(python: &Path) -> Option<String> {
    probe(Command::new(python).args(["-c", "import kubernetes; print(kubernetes.__version__)"]))
}

/// The interpreter that creates the venv: Debian's, which `python3-venv` belongs to,
/// else whatever `python3` is on PATH (e.g. on a machine set up by hand).
fn base_python() -> PathBuf {
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() { debian.into() } else { "python3".into() }
}

/// Creates the venv and installs the pinned client unless both are there. Takes a
/// fraction of a second when nothing is missing; installing takes about a minute.
pub fn ensure() -> Result<PathBuf> {
    let dir = venv_dir()?;
    let python = venv_python()?;
    if installed_version(&python).as_deref() == Some(KUBERNETES_CLIENT_VERSION) {
        return Ok(python);
    }
    if !python.exists() {
        let base = base_python();
        progress("setup", &format!("creating a Python venv at {} with {}...", dir.display(), base.display()));
        run_checked(
            Command::new(&base).args(["-m", "venv"]).arg(&dir),
            "on Debian the venv module is in python3-venv (`apt-get install python3-venv`); \
             a broken half-created venv can be deleted, then run `cargo xtask setup` again",
        )?;
    }
    progress(
        "setup",
        &format!("installing the Python kubernetes client {KUBERNETES_CLIENT_VERSION} from PyPI (about a minute)..."),
    );
    run_checked(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes=={KUBERNETES_CLIENT_VERSION}")),
        "check the network access to pypi.org (or pip's proxy settings), then run `cargo xtask setup` again",
    )?;
    match installed_version(&python) {
        Some(v) if v == KUBERNETES_CLIENT_VERSION => Ok(python),
        other => bail!(
            "pip reported success but `{} -c 'import kubernetes'` gives {other:?}, not {KUBERNETES_CLIENT_VERSION}; \
             delete {} and run `cargo xtask setup` again",
            python.display(),
            dir.display()
        ),
    }
}
