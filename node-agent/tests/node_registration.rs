//! skiff-node's node role against a real skiff-control on 127.0.0.1: the agent
//! registers its Node with a node's credentials (a static token for
//! `system:node:<name>` in group `system:nodes`, so RBAC's `system:node` role applies),
//! kubectl 1.32 sees it Ready with its labels, capacity, addresses and nodeInfo, the
//! Lease in `kube-node-lease` is renewed, and it keeps being renewed after the API
//! server restarts.
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

const NODE_TOKEN: &str = "node-token-for-the-registration-test";

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
        let pinned = Path::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
        let kubectl = std::env::var_os("SKIFF_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| if pinned.exists() { pinned.into() } else { "kubectl".into() });
        let out = Command::new(kubectl)
            .env("KUBECONFIG", self.data.join("admin.kubeconfig"))
            .env("HOME", self.data.parent().unwrap())
            .args(args)
            .output()
            .expect("cannot run kubectl (kubectl 1.32 is installed on every machine of this project)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kubeconfig with the node's token.
    fn node_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("node.kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: n\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\ncontexts:\n- name: n\n  context: {{cluster: c, user: node}}\nusers:\n- name: node\n  user:\n    token: {NODE_TOKEN}\n",
            self.port,
            self.data.join("pki/ca.crt").display()
        );
        std::fs::write(&path, text).unwrap();
        path
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
    // The API server reads its static tokens at start.
    std::fs::write(data.join("tokens.csv"), format!("{NODE_TOKEN},system:node:{node},node-uid,\"system:nodes\"\n"))
        .unwrap();
    let mut cp = ControlPlane::start(&data, free_port());
    let kubeconfig = cp.node_kubeconfig(tmp.path());

    let pins = PinDir::new(&node);
    let agent_log = tmp.path().join("agent.log");
    let agent = Command::new(env!("CARGO_BIN_EXE_skiff-node"))
        .args(["run", "--node-name", &node, "--pin-dir", pins.path.to_str().unwrap()])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
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
