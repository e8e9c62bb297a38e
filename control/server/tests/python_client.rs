//! The official Python `kubernetes` client against `skiff-control` on 127.0.0.1 (a CI
//! requirement: CRUD, list with selectors, watch). The checks themselves are in
//! `tests/python/client_check.py`; this file starts a server with a temporary data dir,
//! runs the script with the admin kubeconfig and fails with its output.
//!
//! The interpreter is `$SKIFF_PYTHON` (which `cargo xtask test` sets), else the venv
//! `cargo xtask setup` creates at `$SKIFF_TOOLS_DIR/python` or
//! `$CARGO_HOME/skiff-tools/python` (`~/.cargo` when CARGO_HOME is unset). Without it
//! (or without the `kubernetes` package) the test fails, saying how to get it.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Server;

/// The script may take this long; a hung watch must not hang CI.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn venv_python() -> Option<PathBuf> {
    if let Some(tools) = std::env::var_os("SKIFF_TOOLS_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(tools).join("python/bin/python"));
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(cargo_home.join("skiff-tools/python/bin/python"))
}

/// A Python that can `import kubernetes`; panics saying how to get one when there is none.
fn python() -> PathBuf {
    let candidate = match std::env::var_os("SKIFF_PYTHON").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => venv_python().unwrap_or_else(|| "python3".into()),
    };
    let works = Command::new(&candidate)
        .args(["-c", "import kubernetes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        works,
        "{} cannot `import kubernetes`; run `cargo xtask setup` (it creates the venv) or set SKIFF_PYTHON",
        candidate.display()
    );
    candidate
}

/// Runs `cmd` to completion or kills it after `timeout`; returns (success, stdout+stderr).
fn run_bounded(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("cannot start python");
    // Drained on threads so a chatty script cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = format!("{}{}", out_t.join().unwrap(), err_t.join().unwrap());
    match status {
        Some(st) => (st.success(), text),
        None => (false, format!("{text}\n(killed after {} s)", timeout.as_secs())),
    }
}

/// Runs `tests/python/<script>` against a fresh server; fails with its output.
fn run_script(script: &str) {
    let python = python();
    let server = Server::start_with(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(server.kubeconfig())
        // Keep the client's caches and any stray config under the temp dir.
        .env("HOME", server.tmp.path())
        .env_remove("KUBECONFIG")
        .env("PYTHONUNBUFFERED", "1");
    let (ok, output) = run_bounded(&mut cmd, SCRIPT_TIMEOUT);
    assert!(ok, "{} failed:\n{output}\n--- server log ---\n{}", script.display(), server.log());
    println!("{output}");
}

#[test]
fn python_client_crud_selectors_watch_and_errors() {
    run_script("client_check.py");
}

/// CustomResourceDefinitions through ApiextensionsV1Api, their objects through
/// CustomObjectsApi (`tests/python/crd_check.py`).
#[test]
fn python_client_custom_resources() {
    run_script("crd_check.py");
}
