//! skiff-node's node role against a real skiff-control on 127.0.0.1: started with only
//! skiff-control's `bootstrap.kubeconfig` (a bootstrap token), the agent asks for a
//! client certificate (a CertificateSigningRequest skiff-control approves and signs),
//! writes its own kubeconfig, and registers its Node as `system:node:<name>` in group
//! `system:nodes`; kubectl 1.32 sees it Ready with its labels, capacity, addresses and
//! nodeInfo, the Lease in `kube-node-lease` is renewed, and it keeps being renewed after
//! the API server restarts. With those credentials the node may not touch another
//! node's Node object or read a Secret no pod of it uses (403).
//!
//! Needs root and bpffs (the agent loads its datapath, attached to nothing here); skips
//! without them, fails under CI=true. Both processes are killed by guards, even when
//! the test fails; only loopback is used.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use skiff_tests::netns::{ChildGuard, wait_until};
use skiff_tests::{PinDir, require_privileges, unique_tag, workspace_bin};

/// skiff-control on 127.0.0.1 with a data dir of the test's.
struct ControlPlane {
    guard: ChildGuard,
    data: PathBuf,
    port: u16,
}

impl ControlPlane {
    fn start(data: &Path, port: u16) -> Self {
        let log = std::fs::File::create(data.with_extension("log")).unwrap();
        let child = Command::new(workspace_bin("skiff-control"))
            .arg("--data-dir")
            .arg(data)
            .args(["--bind-address", "127.0.0.1", "--port", &port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start skiff-control");
        let cp = Self { guard: ChildGuard::new(child), data: data.to_path_buf(), port };
        assert!(
            wait_until(Duration::from_secs(20), || data.join("admin.kubeconfig").exists()
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "skiff-control did not come up in 20 s"
        );
        cp
    }

    /// Kills the API server and starts it again on the same port and data.
    fn restart(&mut self) {
        self.guard.kill();
        std::thread::sleep(Duration::from_secs(3));
        *self = Self::start(&self.data.clone(), self.port);
    }

    /// The node Lease's renewTime ("" while there is none).
    fn lease_renewed_at(&self, node: &str) -> String {
        self.kubectl(&["get", "lease", "-n", "kube-node-lease", node, "-o", "jsonpath={.spec.renewTime}"])
    }

    fn kubectl(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.kubectl_as(&self.data.join("admin.kubeconfig"), args).stdout).into_owned()
    }

    fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
        let pinned = Path::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
        let kubectl = std::env::var_os("SKIFF_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| if pinned.exists() { pinned.into() } else { "kubectl".into() });
        Command::new(kubectl)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", self.data.parent().unwrap())
            .args(args)
            .output()
            .expect("cannot run kubectl (kubectl 1.32 is installed on every machine of this project)")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn node_registers_reports_ready_and_renews_its_lease_across_an_api_restart() {
    if !require_privileges("node_registers_reports_ready_and_renews_its_lease_across_an_api_restart") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("control");
    std::fs::create_dir_all(&data).unwrap();
    let node = unique_tag("reg");
    let mut cp = ControlPlane::start(&data, free_port());
    assert!(
        data.join("bootstrap.kubeconfig").is_file(),
        "skiff-control wrote no bootstrap.kubeconfig: is {} an older build? (cargo build -p skiff-control)",
        workspace_bin("skiff-control").display()
    );
    // The agent starts with the bootstrap token only and writes its own kubeconfig.
    let kubeconfig = tmp.path().join("node/kubeconfig");

    let pins = PinDir::new(&node);
    let agent_log = tmp.path().join("agent.log");
    let agent = Command::new(env!("CARGO_BIN_EXE_skiff-node"))
        .args(["run", "--node-name", &node, "--pin-dir", pins.path.to_str().unwrap()])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--bootstrap-kubeconfig")
        .arg(data.join("bootstrap.kubeconfig"))
        .args(["--node-ip", "192.168.77.11", "--max-pods", "42"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = ChildGuard::new(agent);
    let log = || std::fs::read_to_string(&agent_log).unwrap_or_default();

    let ready =
        || cp.kubectl(&["get", "node", &node, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
    assert!(wait_until(Duration::from_secs(20), || ready() == "True"), "the node never became Ready:\n{}", log());
    let node_json: serde_json::Value =
        serde_json::from_str(&cp.kubectl(&["get", "node", &node, "-o", "json"])).unwrap();
    let labels = &node_json["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], node.as_str());
    assert_eq!(labels["kubernetes.io/os"], "linux");
    let status = &node_json["status"];
    assert_eq!(status["capacity"]["pods"], "42");
    assert!(status["capacity"]["cpu"].as_str().unwrap().parse::<u32>().unwrap() >= 1, "{status}");
    assert!(status["capacity"]["memory"].as_str().unwrap().ends_with("Ki"), "{status}");
    assert_eq!(status["addresses"][0], serde_json::json!({"type": "InternalIP", "address": "192.168.77.11"}));
    assert!(status["nodeInfo"]["kubeletVersion"].as_str().unwrap().starts_with("v1.32.0-skiff"), "{status}");
    // Whether there is pressure depends on this machine (a full disk is DiskPressure
    // here too); that each condition is reported does not.
    for pressure in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        let found = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == pressure);
        let reported = found.and_then(|c| c["status"].as_str()).is_some_and(|s| s == "True" || s == "False");
        assert!(reported && found.unwrap()["reason"].is_string(), "{pressure} in {status}");
    }
    let table = cp.kubectl(&["get", "nodes"]);
    assert!(table.lines().any(|l| l.starts_with(&node) && l.contains(" Ready ")), "kubectl get nodes:\n{table}");

    // The node's own credentials: a certificate from an auto-approved request, in a
    // kubeconfig only root may read.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777, 0o600);
    let csrs = cp.kubectl(&["get", "csr"]);
    let row = csrs.lines().find(|l| l.starts_with("node-csr-")).unwrap_or_else(|| panic!("kubectl get csr:\n{csrs}"));
    assert!(row.contains("system:bootstrap:") && row.ends_with("Approved,Issued"), "kubectl get csr:\n{csrs}");
    let who = cp.kubectl_as(&kubeconfig, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(String::from_utf8_lossy(&who.stdout), format!("system:node:{node}"), "{who:?}");
    // What it may not do: another node's Node object, a Secret no pod of it uses.
    cp.kubectl(&["create", "secret", "generic", "not-for-nodes", "--from-literal=a=b"]);
    let other = "apiVersion: v1\nkind: Node\nmetadata:\n  name: someone-else\n";
    let other_file = tmp.path().join("other-node.yaml");
    std::fs::write(&other_file, other).unwrap();
    cp.kubectl(&["create", "-f", other_file.to_str().unwrap()]);
    for args in [
        &["label", "node", "someone-else", "taken=yes"][..],
        &["delete", "node", "someone-else"],
        &["get", "secret", "not-for-nodes"],
    ] {
        let out = cp.kubectl_as(&kubeconfig, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("Forbidden"), "kubectl {args:?} as the node: {out:?}");
    }

    // The heartbeat: the Lease's renewTime moves (every 10 s).
    assert!(wait_until(Duration::from_secs(10), || !cp.lease_renewed_at(&node).is_empty()), "no Lease:\n{}", log());
    let first = cp.lease_renewed_at(&node);
    assert!(
        wait_until(Duration::from_secs(25), || cp.lease_renewed_at(&node) != first),
        "the Lease was not renewed:\n{}",
        log()
    );

    // The API server goes away and comes back on the same port: the agent keeps going.
    cp.restart();
    let before = cp.lease_renewed_at(&node);
    assert!(
        wait_until(Duration::from_secs(25), || cp.lease_renewed_at(&node) != before),
        "the Lease was not renewed after the API server restarted:\n{}",
        log()
    );
    assert!(agent.0.as_mut().unwrap().try_wait().unwrap().is_none(), "the agent exited:\n{}", log());
    agent.kill();
}
