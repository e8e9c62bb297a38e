//! `cargo xtask test`: the project's one test command (README and `.ci/run` name it).
//! Runs all of `setup` first (packages, toolchain, the Python venv, bpffs), so that it
//! passes on a fresh machine, builds the BPF objects, then runs `cargo test`
//! for the workspace's default members (everything but the BPF crate) with
//! `SKIFF_EBPF_DIR` pointing at the objects. Privileged tests need root: under CI
//! (`CI=true`) not being root is an error; elsewhere they skip, with a warning here.
//!
//! Kept lean on purpose: no clippy, no release build of the workspace.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::build_ebpf::{EBPF_DIR_ENV, build_ebpf};
use crate::setup;
use crate::util::{display, free_bytes, is_ci, is_root, progress, run_checked, target_dir, workspace_root};

/// What a clean `cargo xtask test` writes under the target dir, with room to spare
/// (4.2 GiB measured on a clean clone, December 2026); less free than this and the
/// build may die part-way with an LLVM "No space left on device".
const DISK_NEEDED_BYTES: u64 = 6 << 30;

pub fn run(cargo_args: &[String]) -> Result<()> {
    let started = Instant::now();
    let root = is_root();
    if !root {
        if is_ci() {
            bail!(
                "CI=true but not running as root: privileged tests (BPF, network namespaces) would be skipped; run CI as root"
            );
        }
        progress(
            "test",
            "WARNING: not root, so privileged tests (BPF, network namespaces) will skip; run as root to run them all",
        );
    }

    check_disk();
    let ready = setup::run()?;
    let ebpf_dir = build_ebpf(true)?;

    // The cargo that runs xtask (stable), not whatever `cargo` PATH finds first.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Integration tests run other packages' binaries (the agent, the echo app), which
    // `cargo test` builds only for the package under test.
    let mut build = Command::new(&cargo);
    build.args(["build", "--bins"]).current_dir(workspace_root()).env(EBPF_DIR_ENV, &ebpf_dir);
    no_incremental_under_ci(&mut build);
    progress("test", &format!("building the binaries: `{}`...", display(&build)));
    run_checked(&mut build, "fix the build errors above")?;

    // The containerd and kubelet tests run our OCI images (pause, echo) built from static
    // binaries; built here, with progress and into the same place the tests look
    // (honouring CARGO_TARGET_DIR), so the tests find them up to date. skiff-cni for the
    // containerd tests comes from a target dir of its own (the running `cargo test` holds
    // target/debug's lock).
    progress("test", "building the test images (pause, echo)...");
    crate::images::build(&crate::images::select(&["pause".into(), "echo".into()])?)?;
    let mut harness_build = Command::new(&cargo);
    harness_build
        .args(["build", "-p", "skiff-cni", "--bin", "skiff-cni", "--target-dir", "target/harness"])
        .current_dir(workspace_root())
        .env(EBPF_DIR_ENV, &ebpf_dir);
    no_incremental_under_ci(&mut harness_build);
    progress("test", "building skiff-cni for the containerd tests...");
    run_checked(&mut harness_build, "fix the build errors above")?;
    let node_image_build = NodeImageBuild::start(&ebpf_dir);

    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--no-fail-fast"])
        .args(cargo_args)
        .current_dir(workspace_root())
        .env(EBPF_DIR_ENV, &ebpf_dir)
        .stdout(Stdio::piped());
    no_incremental_under_ci(&mut cmd);
    // The Python client test runs the venv setup made; naming it here keeps the test
    // independent of CARGO_HOME and SKIFF_TOOLS_DIR in its environment.
    cmd.env(crate::python::PYTHON_ENV, &ready.python);
    progress("test", &format!("running `{}` ({EBPF_DIR_ENV}={})...", display(&cmd), ebpf_dir.display()));

    let mut child = cmd.spawn().context("cannot start `cargo test`; is cargo on PATH?")?;
    let stdout = child.stdout.take().context("cargo test's stdout was not captured")?;
    // Pass the output through line by line and add up libtest's "test result:" lines.
    let mut tally = Tally::default();
    let mut panics = PanicDigest::default();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read cargo test's output")?;
        tally.add(&line);
        panics.add(&line);
        // Best effort: if our stdout goes away (`| head`), keep draining so that cargo
        // test still runs to its end and is waited for, instead of being orphaned.
        let _ = writeln!(out, "{line}");
    }
    drop(out);
    let status = child.wait().context("cannot wait for cargo test")?;
    node_image_build.finish();

    let secs = started.elapsed().as_secs_f64();
    let skipped = if root { "" } else { "; privileged tests skipped (not root)" };
    if status.success() {
        progress("test", &format!("ok: {tally} in {secs:.0} s{skipped}"));
        Ok(())
    } else {
        // A failing test's message can be followed by thousands of lines (logs, other
        // binaries): its first lines again here, at the end, where a CI log's tail shows them.
        if !panics.is_empty() {
            progress("test", &format!("what the failing tests said first (whole output above):\n{panics}"));
        }
        bail!(
            "cargo test failed ({status}): {tally} in {secs:.0} s{skipped}; the failing tests and targets are listed above"
        )
    }
}

/// The node image's static build (minutes on a cold target dir, all of skiff-node's
/// dependencies once more), run beside `cargo test` at the lowest CPU priority: it takes
/// the time the tests leave idle (most of them wait on processes, pods and the network),
/// so the one test that needs the image (`daemonset`) finds it built instead of building
/// it in its own time. The command is the one that test runs, so cargo finds its build
/// fresh; that test (or `cargo xtask images`) reports a build error in full.
struct NodeImageBuild {
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
}

impl NodeImageBuild {
    fn start(ebpf_dir: &std::path::Path) -> Self {
        let spec = skiff_tests::image::NODE;
        let env = skiff_tests::image::node_build_env(ebpf_dir);
        let build = skiff_tests::image::static_build_command(spec.packages, &spec.bins(), spec.profile, &env);
        let log = target_dir().join("node-image-build.log");
        let mut nice = Command::new("nice");
        nice.args(["-n", "19"]).arg(build.get_program()).args(build.get_args());
        if let Some(dir) = build.get_current_dir() {
            nice.current_dir(dir);
        }
        for (key, value) in build.get_envs() {
            match value {
                Some(value) => nice.env(key, value),
                None => nice.env_remove(key),
            };
        }
        let spawned = std::fs::File::create(&log).and_then(|out| {
            let err = out.try_clone()?;
            nice.stdin(Stdio::null()).stdout(out).stderr(err).spawn()
        });
        let child = match spawned {
            Ok(child) => {
                progress(
                    "test",
                    &format!(
                        "building the node image's binaries beside the tests, at low priority (log: {})",
                        log.display()
                    ),
                );
                Some(child)
            }
            Err(e) => {
                progress("test", &format!("not building the node image beside the tests ({e}): its test will"));
                None
            }
        };
        Self { child, log }
    }

    /// Waits for the build (it has normally ended long before) and says how it went.
    fn finish(mut self) {
        let Some(mut child) = self.child.take() else { return };
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => progress(
                "test",
                &format!("the node image's build beside the tests failed ({status}); see {}", self.log.display()),
            ),
            Err(e) => progress("test", &format!("cannot wait for the node image's build: {e}")),
        }
    }
}

impl Drop for NodeImageBuild {
    /// An early return (cargo test could not start) leaves no build behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Says up front when the target dir's filesystem has less room than a clean run
/// writes: a warning, not an error, since a warm target dir needs far less.
fn check_disk() {
    let target = target_dir();
    let Some(free) = free_bytes(&target) else { return };
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    if free < DISK_NEEDED_BYTES {
        progress(
            "test",
            &format!(
                "WARNING: {:.1} GiB free under {}; a clean build and test run writes about {:.0} GiB there and may fail with \"No space left on device\": free some space or point CARGO_TARGET_DIR elsewhere",
                gib(free),
                target.display(),
                gib(DISK_NEEDED_BYTES)
            ),
        );
    } else {
        progress("test", &format!("{:.1} GiB free under {}", gib(free), target.display()));
    }
}

/// A CI run starts from a clean clone and builds once, so incremental caches (gigabytes
/// for 60 test binaries) would only use disk.
fn no_incremental_under_ci(cmd: &mut Command) {
    if is_ci() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
}

/// Totals over libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; ...` lines.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    binaries: u32,
    passed: u32,
    failed: u32,
    ignored: u32,
}

impl Tally {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} ignored across {} test binaries",
            self.passed, self.failed, self.ignored, self.binaries
        )
    }
}

/// The first lines of each panic message in libtest's output (`thread 'x' panicked at
/// FILE:LINE:COL:`, in newer Rust `thread 'x' (ID) panicked at ...`, and what follows),
/// with the test it belongs to (the `---- NAME stdout ----` header libtest prints before
/// a failing test's captured output).
#[derive(Debug, Default)]
struct PanicDigest {
    /// The failing test whose captured output is being read.
    test: Option<String>,
    /// Lines still to keep of the panic being read.
    keep: usize,
    panics: Vec<Panic>,
}

#[derive(Debug, PartialEq)]
struct Panic {
    test: String,
    lines: Vec<String>,
}

impl PanicDigest {
    /// Lines kept of one panic message: enough for a list of failed cells.
    const LINES: usize = 40;
    /// Panics kept: a broken build fails many tests the same way.
    const PANICS: usize = 8;

    fn add(&mut self, line: &str) {
        if let Some(name) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----")) {
            self.test = Some(name.to_owned());
            self.keep = 0;
        } else if line.starts_with("thread '") && line.contains(" panicked at ") {
            if self.panics.len() == Self::PANICS {
                self.keep = 0;
                return;
            }
            let test = self.test.clone().unwrap_or_else(|| "?".to_owned());
            self.panics.push(Panic { test, lines: vec![line.to_owned()] });
            self.keep = Self::LINES;
        } else if self.keep > 0 {
            let Some(panic) = self.panics.last_mut() else { return };
            if line.starts_with("stack backtrace:") || line.starts_with("note: ") || line == "failures:" {
                self.keep = 0;
                return;
            }
            self.keep -= 1;
            panic.lines.push(if self.keep == 0 { "    [...]".to_owned() } else { line.to_owned() });
        }
    }

    fn is_empty(&self) -> bool {
        self.panics.is_empty()
    }
}

impl std::fmt::Display for PanicDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for panic in &self.panics {
            writeln!(f, "---- {} ----", panic.test)?;
            for line in &panic.lines {
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Panic, PanicDigest, Tally};

    #[test]
    fn panic_digest_keeps_each_failing_tests_first_lines() {
        let mut d = PanicDigest::default();
        let output = [
            "test a ... FAILED",
            "failures:",
            "",
            "---- connectivity_matrix stdout ----",
            "cluster up after 3.0s",
            "thread 'connectivity_matrix' panicked at tests/tests/connectivity.rs:909:5:",
            "1 of 72 connectivity cells failed:",
            "FAILED pod → pod",
            "stack backtrace:",
            "   0: rust_begin_unwind",
            "---- other stdout ----",
            "thread 'other' (14636) panicked at src/lib.rs:1:1:",
            "boom",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
            "failures:",
            "    connectivity_matrix",
        ];
        for line in output {
            d.add(line);
        }
        let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            d.panics,
            [
                Panic {
                    test: "connectivity_matrix".into(),
                    lines: lines(&[
                        "thread 'connectivity_matrix' panicked at tests/tests/connectivity.rs:909:5:",
                        "1 of 72 connectivity cells failed:",
                        "FAILED pod → pod",
                    ]),
                },
                Panic {
                    test: "other".into(),
                    lines: lines(&["thread 'other' (14636) panicked at src/lib.rs:1:1:", "boom"])
                },
            ]
        );
        assert!(d.to_string().starts_with("---- connectivity_matrix ----\nthread 'connectivity_matrix' panicked"));
    }

    #[test]
    fn panic_digest_cuts_a_long_message() {
        let mut d = PanicDigest::default();
        d.add("thread 'x' panicked at a.rs:1:1:");
        for i in 0..100 {
            d.add(&format!("line {i}"));
        }
        let lines = &d.panics[0].lines;
        assert_eq!(lines.len(), PanicDigest::LINES + 1);
        assert_eq!(lines.last().map(String::as_str), Some("    [...]"));
    }

    #[test]
    fn tally_adds_libtest_result_lines() {
        let mut t = Tally::default();
        t.add("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 5 filtered out; finished in 1.20s");
        t.add("running 3 tests");
        assert_eq!(t, Tally { binaries: 2, passed: 4, failed: 2, ignored: 1 });
    }
}
