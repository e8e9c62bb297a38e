//! `cargo xtask up --nodes 2` end to end: kubectl on the host with the printed
//! kubeconfig (two Ready nodes, the demo Deployment Running, logs and exec through the
//! API server, its Service's ClusterIP from a pod; no host route to a pod), `up` again
//! (already up), `status`, `down`, and nothing left after it; then the same on a
//! 3-member etcd.
//! A guard runs `down` also when the test fails.
//!
//! The binaries come from `$SKIFF_UP_BIN_DIR` or beside this test (`cargo xtask test`
//! builds them there first): a nested `cargo build` of this target directory would wait
//! for the lock the running `cargo test` holds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::cluster::KUBECTL;
use skiff_tests::netns::wait_until;

const DIR: &str = "/var/lib/skiff/local";

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("running the xtask binary")
}

/// Runs `cargo xtask down` on drop, so that a failing test leaves nothing behind.
struct DownGuard;

impl Drop for DownGuard {
    fn drop(&mut self) {
        let out = xtask(&["down"]);
        eprintln!("down guard: {}", out.status);
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(KUBECTL).arg("--kubeconfig").arg(kubeconfig).args(args).output().expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn kubeconfig_from(out: &Output) -> PathBuf {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("export KUBECONFIG="));
    PathBuf::from(line.unwrap_or_else(|| panic!("no `export KUBECONFIG=` line in:\n{stdout}")))
}

#[test]
fn up_kubectl_status_down_leaves_nothing() {
    if !skiff_tests::require_privileges("up_kubectl_status_down_leaves_nothing") {
        return;
    }
    if Path::new(DIR).join("state.json").exists() {
        // This test would remove the developer's cluster; under CI nothing is up.
        let why = "a local cluster is already up and this test would remove it: `cargo xtask down` first";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("SKIPPED up_kubectl_status_down_leaves_nothing: {why}");
        return;
    }
    let _down = DownGuard;
    let bin_dir = std::env::var_os("SKIFF_UP_BIN_DIR").map_or_else(skiff_tests::target_bin_dir, PathBuf::from);

    let start = Instant::now();
    let out = xtask(&["up", "--nodes", "2", "--bin-dir", bin_dir.to_str().unwrap()]);
    assert!(out.status.success(), "up failed ({})", out.status);
    let kubeconfig = kubeconfig_from(&out);
    eprintln!("up took {:.1} s", start.elapsed().as_secs_f64());

    // kubectl on the host, through the checked route.
    let ready = kubectl(
        &kubeconfig,
        &["get", "nodes", "-o", r#"jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status} {end}"#],
    );
    assert_eq!(ready.split_whitespace().collect::<Vec<_>>(), ["True", "True"], "nodes' Ready: {ready}");

    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/web.yaml");
    kubectl(&kubeconfig, &["apply", "-f", web.to_str().unwrap()]);
    let running = wait_until(Duration::from_secs(120), || {
        let out = Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.phase}"])
            .output()
            .expect("kubectl");
        let phases = String::from_utf8_lossy(&out.stdout).into_owned();
        phases.split_whitespace().filter(|p| *p == "Running").count() == 3
    });
    assert!(running, "web pods: {}", kubectl(&kubeconfig, &["get", "pods", "-o", "wide"]));
    // logs and exec go through the API server to a kubelet: they work from the host too.
    let ips = kubectl(&kubeconfig, &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.podIP}"]);
    let ip = ips.split_whitespace().last().expect("a pod IP");
    let reply = kubectl(&kubeconfig, &["exec", "deploy/web", "--", "/skiff-echo", "get", &format!("{ip}:8080"), "/"]);
    assert!(reply.starts_with("200"), "exec: {reply}");
    kubectl(&kubeconfig, &["logs", "deploy/web"]);
    // The Service's ClusterIP from a pod (each agent's proxy takes Services from the API).
    let cluster_ip = kubectl(&kubeconfig, &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let via_service = wait_until(Duration::from_secs(30), || {
        let out = Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["exec", "deploy/web", "--", "/skiff-echo", "get", &format!("{cluster_ip}:80"), "/"])
            .output()
            .expect("kubectl");
        String::from_utf8_lossy(&out.stdout).starts_with("200 web")
    });
    assert!(via_service, "no answer from the web Service at {cluster_ip}:80");
    // The host may reach the API server, never a pod: no route sends one out.
    let route = Command::new("ip").args(["route", "get", ip]).output().unwrap();
    assert!(
        !route.status.success(),
        "the host routes the pod address {ip}: {}",
        String::from_utf8_lossy(&route.stdout)
    );

    // A second `up` finds the cluster up and changes nothing.
    let again = xtask(&["up", "--nodes", "2", "--bin-dir", bin_dir.to_str().unwrap()]);
    assert!(again.status.success(), "second up failed");
    assert_eq!(kubeconfig_from(&again), kubeconfig);

    let status = xtask(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(status.matches("Ready=True").count(), 2, "status:\n{status}");
    assert!(!status.contains("NOT RUNNING") && status.contains("answers"), "status:\n{status}");

    let down = xtask(&["down"]);
    assert!(down.status.success(), "down failed");
    assert_nothing_left();
    // Idempotent.
    assert!(xtask(&["down"]).status.success(), "a second down failed");
    let status = xtask(&["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("no local cluster is up"));

    // The same on a 3-member etcd.
    let out = xtask(&["up", "--nodes", "1", "--store", "etcd", "--bin-dir", bin_dir.to_str().unwrap()]);
    assert!(out.status.success(), "up --store etcd failed ({})", out.status);
    let kubeconfig = kubeconfig_from(&out);
    let ready = kubectl(
        &kubeconfig,
        &["get", "nodes", "-o", r#"jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}"#],
    );
    assert_eq!(ready, "True");
    let status = String::from_utf8_lossy(&xtask(&["status"]).stdout).into_owned();
    assert_eq!(status.matches(" running").count(), 1 + 3 + 2, "status:\n{status}");
    assert!(status.contains("store: etcd"), "status:\n{status}");
    assert!(xtask(&["down"]).status.success(), "down failed");
    assert_nothing_left();
}

fn assert_nothing_left() {
    let netns = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
        .lines()
        .filter(|l| l.starts_with("skiff-"))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(netns.is_empty(), "namespaces left: {netns:?}");
    assert!(!Path::new("/sys/class/net/skiff-h").exists(), "the host link is left");
    assert!(!Path::new(DIR).exists(), "{DIR} is left");
    for cidr in ["10.244.0.0/16", "10.96.0.0/12"] {
        let routes = Command::new("ip").args(["route", "show", cidr]).output().unwrap();
        assert!(routes.stdout.is_empty(), "a host route for {cidr} is left");
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let ours = |s: &str| s.contains(DIR) || s.contains("skiff-ctd-skiff-n") || s.contains("skiff-test/skiff-n");
    let left: Vec<&str> = mounts.lines().filter(|l| ours(l)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!ours(&cmdline), "process left: {} {cmdline}", entry.file_name().to_string_lossy());
    }
    for dir in ["/sys/fs/bpf/skiff-test", "/tmp"] {
        let left: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("skiff-n") || n.starts_with("skiff-ctd-skiff-n"))
            .collect();
        assert!(left.is_empty(), "left in {dir}: {left:?}");
    }
}
