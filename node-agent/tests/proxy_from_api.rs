//! The service proxy fed by the API: a node namespace of the test's own with a client
//! and two backend pods, and in it a real skiff-control on its loopback (data dir in the
//! test's temporary directory), a real skiff-node with `--services-from-api`
//! (credentials the upstream way: bootstrap token, CSR, `system:node:<name>`) and real
//! BPF maps pinned in a bpffs directory of the test. The client reaches the backends
//! through the ClusterIP. kubectl 1.32 creates, updates and
//! deletes a Service and its EndpointSlice; the maps (read with `skiff-node dump`) follow
//! within a bounded time. Restarting skiff-control rewrites nothing that did not
//! change: the agent's log (one debug line per change its source reports, one info
//! line per sync that wrote the maps) shows only the change made after the restart. A
//! Service the proxy cannot program gets one Warning `FailedToProgram` Event.
//!
//! Needs root and bpffs; skips without them, fails under CI=true. Processes are killed
//! and the namespaces removed by guards, even when the test fails; nothing leaves them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::netns::{ChildGuard, Netns, wait_until};
use skiff_tests::topology::NodeTopology;
use skiff_tests::{PinDir, log_tail, require_privileges, unique_tag, workspace_bin};

/// How long the maps may take to follow a change in the API.
const FOLLOW: Duration = Duration::from_secs(10);

/// The port skiff-control listens on, on the loopback of the node's namespace.
const PORT: &str = "6443";

/// One skiff-control process in the node's namespace, restartable on the same data.
struct Api<'a> {
    process: ChildGuard,
    dir: PathBuf,
    ns: &'a Netns,
}

impl<'a> Api<'a> {
    fn up(dir: &Path, ns: &'a Netns) -> Api<'a> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.with_extension("log")).unwrap();
        let mut cmd = ns.command(workspace_bin("skiff-control").to_str().unwrap());
        cmd.arg("--data-dir").arg(dir).args(["--bind-address", "127.0.0.1", "--port", PORT]);
        let process = ChildGuard::new(cmd.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
        let api = Api { process, dir: dir.to_path_buf(), ns };
        let up = wait_until(Duration::from_secs(20), || {
            dir.join("bootstrap.kubeconfig").is_file() && api.try_kubectl(&["get", "--raw", "/readyz"], None).is_ok()
        });
        assert!(up, "skiff-control is not up after 20 s:\n{}", log_tail(&dir.with_extension("log"), 30));
        api
    }

    /// kubectl 1.32 as the admin, in the node's namespace; panics when it fails.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.try_kubectl(args, stdin).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut cmd = self.ns.command("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
        cmd.env("KUBECONFIG", self.dir.join("admin.kubeconfig")).env("HOME", self.dir.parent().unwrap()).args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl 1.32 is installed on every machine of this project");
        if let Some(text) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    fn apply(&self, manifest: &str) {
        self.kubectl(&["apply", "-f", "-"], Some(manifest));
    }
}

/// A selector-less Service `name` on `ip` (port 80 → 8080) and its one EndpointSlice with
/// the given ready endpoints.
fn service(name: &str, ip: &str, endpoints: &[&str]) -> String {
    let eps: String =
        endpoints.iter().map(|a| format!("- addresses: [\"{a}\"]\n  conditions: {{ready: true}}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{eps}"
    )
}

fn dump(pins: &PinDir) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-node"))
        .args(["dump", "--pin-dir", pins.path.to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the dump satisfies `ok`; returns how long that took.
fn follow(pins: &PinDir, what: &str, log: &Path, ok: impl Fn(&str) -> bool) -> Duration {
    let start = Instant::now();
    assert!(
        wait_until(FOLLOW, || ok(&dump(pins))),
        "the maps did not follow ({what}) within {FOLLOW:?}:\n{}\nagent log:\n{}",
        dump(pins),
        log_tail(log, 40)
    );
    start.elapsed()
}

/// The log lines that say the maps were written, and those naming a source change.
fn writes_and_changes(log: &Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let pick = |needle: &str| text.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect::<Vec<_>>();
    (pick("service maps synced"), pick("service source change"))
}

#[test]
fn maps_follow_services_from_the_api_and_an_api_restart_rewrites_nothing() {
    if !require_privileges("maps_follow_services_from_the_api_and_an_api_restart_rewrites_nothing") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("control");
    std::fs::create_dir_all(&data).unwrap();
    let node = unique_tag("pxapi");
    // The node's namespace with a client and two backend pods (10.244.1.10, .11, .12).
    let topo = NodeTopology::new(&node, &["client", "b1", "b2"]);
    let _servers: Vec<ChildGuard> = ["b1", "b2"]
        .iter()
        .map(|b| {
            let mut echo = topo.pod(b).ns.command(workspace_bin("skiff-echo").to_str().unwrap());
            echo.args(["serve", "--name", b, "--tcp", "8080"]).stdout(Stdio::null());
            ChildGuard::new(echo.spawn().unwrap())
        })
        .collect();
    let mut api = Api::up(&data, &topo.node);

    let pins = PinDir::new(&node);
    let log = tmp.path().join("agent.log");
    let ready = tmp.path().join("agent.ready");
    let mut run = topo.node.command(env!("CARGO_BIN_EXE_skiff-node"));
    run.args(["run", "--node-name", &node, "--pin-dir", pins.path.to_str().unwrap(), "--services-from-api"])
        .arg("--kubeconfig")
        .arg(tmp.path().join("node/kubeconfig"))
        .arg("--bootstrap-kubeconfig")
        .arg(data.join("bootstrap.kubeconfig"))
        .args(["--node-ip", "192.168.77.11", "--sync-interval-ms", "50"])
        .arg("--ready-file")
        .arg(&ready);
    for interface in topo.host_interfaces() {
        run.args(["--pod-interface", &interface]);
    }
    run.env("RUST_LOG", "info,skiff_node::proxy=debug").stdout(Stdio::null());
    let mut agent = ChildGuard::new(run.stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap());

    // The first sync is the API's snapshot: the built-in `kubernetes` Service is there.
    assert!(wait_until(Duration::from_secs(30), || ready.exists()), "agent not ready:\n{}", log_tail(&log, 40));
    follow(&pins, "the kubernetes Service", &log, |d| d.contains("10.96.0.1:443/TCP slot 0 count=1"));

    api.apply(&service("web", "10.96.0.50", &["10.244.1.11", "10.244.1.12"]));
    let took = follow(&pins, "web created", &log, |d| d.contains("10.96.0.50:80/TCP slot 0 count=2"));
    eprintln!("web created → maps: {took:?}");
    // Traffic: the client reaches both backends through the ClusterIP.
    let mut client = topo.pod("client").ns.command(workspace_bin("skiff-echo").to_str().unwrap());
    client.args(["tcp", "10.96.0.50:80", "--count", "20", "--timeout-ms", "3000"]);
    let out = String::from_utf8_lossy(&client.output().unwrap().stdout).into_owned();
    for backend in ["ok b1", "ok b2"] {
        assert!(out.lines().any(|l| l == backend), "no answer from {backend} through the ClusterIP:\n{out}");
    }
    assert!(!out.contains("err "), "failed requests through the ClusterIP:\n{out}");
    api.apply(&service("web", "10.96.0.50", &["10.244.1.11", "10.244.1.12", "10.244.1.4"]));
    let took = follow(&pins, "web scaled", &log, |d| {
        d.contains("10.96.0.50:80/TCP slot 0 count=3") && d.contains("10.244.1.4:8080/TCP")
    });
    eprintln!("web slice updated → maps: {took:?}");

    // skiff-control restarts (same data, same port). Its reflectors reconnect; whatever
    // they relist or replay must not reach the maps. A marker Service created after the
    // restart shows the agent is watching again; it must be the only change.
    let (writes_before, changes_before) = writes_and_changes(&log);
    let maps_before = dump(&pins);
    api.process.kill();
    std::thread::sleep(Duration::from_secs(2));
    api = Api::up(&data, &topo.node);
    std::thread::sleep(Duration::from_secs(3));
    api.apply(&service("marker", "10.96.0.51", &["10.244.1.9"]));
    follow(&pins, "marker after the restart", &log, |d| d.contains("10.96.0.51:80/TCP slot 0 count=1"));
    let (writes_after, changes_after) = writes_and_changes(&log);
    let new_changes = &changes_after[changes_before.len()..];
    assert!(
        new_changes.iter().all(|l| l.contains("default/marker")) && !new_changes.is_empty(),
        "after the API restart the source reported more than the marker:\n{}",
        new_changes.join("\n")
    );
    let new_writes = &writes_after[writes_before.len()..];
    assert!(new_writes.len() <= 2, "more map syncs than the marker needs:\n{}", new_writes.join("\n"));
    let untouched = |d: &str| d.lines().filter(|l| !l.contains("10.96.0.51") && !l.contains("10.244.1.9")).count();
    assert_eq!(untouched(&dump(&pins)), untouched(&maps_before), "maps outside the marker changed");

    // A Service the proxy cannot program (SCTP is not supported) gets a Warning Event
    // from this node, once, and the agent goes on.
    api.apply(&service("sctp", "10.96.0.52", &["10.244.1.5"]).replace("protocol: TCP}]}", "protocol: SCTP}]}"));
    let events = || {
        let selector = "involvedObject.kind=Service,involvedObject.name=sctp,reason=FailedToProgram";
        api.kubectl(&["get", "events", "--field-selector", selector, "-o", "jsonpath={.items[*].message}"], None)
    };
    assert!(
        wait_until(FOLLOW, || events().contains(&format!("node {node}: port http: protocol \"SCTP\""))),
        "no FailedToProgram event: {:?}\n{}",
        events(),
        log_tail(&log, 20)
    );
    api.apply(&service("sctp", "10.96.0.52", &["10.244.1.6"]).replace("protocol: TCP}]}", "protocol: SCTP}]}"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(events().matches("SCTP").count(), 1, "the same problem is announced once: {}", events());

    // Deletions: the slice first (the frontend stays, with no backends), then the Service.
    api.kubectl(&["delete", "endpointslice", "web-1"], None);
    follow(&pins, "slice deleted", &log, |d| {
        d.contains("10.96.0.50:80/TCP slot 0 count=0") && !d.contains("10.244.1.4:8080/TCP")
    });
    api.kubectl(&["delete", "service", "web"], None);
    follow(&pins, "web deleted", &log, |d| !d.contains("10.96.0.50:") && d.contains("10.96.0.51:80/TCP"));

    assert!(agent.0.as_mut().unwrap().try_wait().unwrap().is_none(), "the agent exited:\n{}", log_tail(&log, 40));
    agent.kill();
}
