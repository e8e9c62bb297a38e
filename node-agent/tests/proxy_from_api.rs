//! The service proxy fed by the API: a real skiff-control on 127.0.0.1 (its data dir in
//! the test's temporary directory), a real skiff-node with `--services-from-api`
//! (credentials the upstream way: bootstrap token, CSR, `system:node:<name>`) and real
//! BPF maps pinned in a bpffs directory of the test. kubectl 1.32 creates, updates and
//! deletes a Service and its EndpointSlice; the maps (read with `skiff-node dump`) follow
//! within a bounded time. Restarting skiff-control rewrites nothing that did not
//! change: the agent's log (one debug line per change its source reports, one info
//! line per sync that wrote the maps) shows only the change made after the restart. A
//! Service the proxy cannot program gets one Warning `FailedToProgram` Event.
//!
//! Needs root and bpffs; skips without them, fails under CI=true. Both processes are
//! killed by guards, even when the test fails; only loopback is used.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::netns::{ChildGuard, wait_until};
use skiff_tests::{PinDir, log_tail, require_privileges, unique_tag, workspace_bin};

/// How long the maps may take to follow a change in the API.
const FOLLOW: Duration = Duration::from_secs(10);

/// One skiff-control process on 127.0.0.1, restartable on the same port and data.
struct Api {
    process: ChildGuard,
    dir: PathBuf,
}

impl Api {
    fn up(dir: &Path, port: u16) -> Api {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.with_extension("log")).unwrap();
        let mut cmd = Command::new(workspace_bin("skiff-control"));
        cmd.arg("--data-dir").arg(dir).arg("--bind-address").arg("127.0.0.1").arg("--port").arg(port.to_string());
        let process = ChildGuard::new(cmd.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
        let listening = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        let up = wait_until(Duration::from_secs(20), || dir.join("bootstrap.kubeconfig").is_file() && listening());
        assert!(up, "skiff-control is not up after 20 s:\n{}", log_tail(&dir.with_extension("log"), 30));
        Api { process, dir: dir.to_path_buf() }
    }

    /// kubectl 1.32 as the admin; panics when it fails.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
        cmd.env("KUBECONFIG", self.dir.join("admin.kubeconfig")).env("HOME", self.dir.parent().unwrap()).args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl 1.32 is installed on every machine of this project");
        if let Some(text) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
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
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut api = Api::up(&data, port);

    let node = unique_tag("pxapi");
    let pins = PinDir::new(&node);
    let log = tmp.path().join("agent.log");
    let ready = tmp.path().join("agent.ready");
    let agent = Command::new(env!("CARGO_BIN_EXE_skiff-node"))
        .args(["run", "--node-name", &node, "--pin-dir", pins.path.to_str().unwrap(), "--services-from-api"])
        .arg("--kubeconfig")
        .arg(tmp.path().join("node/kubeconfig"))
        .arg("--bootstrap-kubeconfig")
        .arg(data.join("bootstrap.kubeconfig"))
        .args(["--node-ip", "192.168.77.11", "--sync-interval-ms", "50"])
        .arg("--ready-file")
        .arg(&ready)
        .env("RUST_LOG", "info,skiff_node::proxy=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = ChildGuard::new(agent);

    // The first sync is the API's snapshot: the built-in `kubernetes` Service is there.
    assert!(wait_until(Duration::from_secs(30), || ready.exists()), "agent not ready:\n{}", log_tail(&log, 40));
    follow(&pins, "the kubernetes Service", &log, |d| d.contains("10.96.0.1:443/TCP slot 0 count=1"));

    api.apply(&service("web", "10.96.0.50", &["10.244.1.2", "10.244.1.3"]));
    let took = follow(&pins, "web created", &log, |d| d.contains("10.96.0.50:80/TCP slot 0 count=2"));
    eprintln!("web created → maps: {took:?}");
    api.apply(&service("web", "10.96.0.50", &["10.244.1.2", "10.244.1.3", "10.244.1.4"]));
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
    api = Api::up(&data, port);
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
