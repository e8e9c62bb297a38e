//! Netns integration tests of the eBPF Service load balancer: a node namespace with a
//! client pod and three backend pods on veths, echo servers in the backends, the real
//! `skiff-node` agent attaching the real BPF program, and a ClusterIP in front.
//!
//! Needs root and bpffs; skips without them, fails under CI=true. Everything (namespaces,
//! veths, pins, processes) is removed when a test ends, passed or failed.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use skiff_tests::{
    PinDir,
    netns::{ChildGuard, wait_until},
    require_privileges,
    topology::NodeTopology,
    unique_tag, workspace_bin,
};

static SERIAL: Mutex<()> = Mutex::new(());

const VIP: &str = "10.96.0.10";
const SELF_VIP: &str = "10.96.0.11";
const EMPTY_VIP: &str = "10.96.0.12";

/// One endpoint of the `web` Service: (pod IP, ready, terminating).
type Endpoint<'a> = (&'a str, bool, bool);

fn web_manifests(endpoints: &[Endpoint<'_>], self_ip: &str) -> String {
    let mut eps = String::new();
    for (ip, ready, terminating) in endpoints {
        eps.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  conditions: {{ready: {ready}, serving: {ready}, terminating: {terminating}}}\n"
        ));
    }
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {VIP}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: 8080, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 8080, protocol: UDP}}
endpoints:
{eps}---
apiVersion: v1
kind: Service
metadata: {{name: self, namespace: default}}
spec:
  clusterIP: {SELF_VIP}
  ports:
  - {{port: 80, targetPort: 8080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: self-1
  namespace: default
  labels: {{kubernetes.io/service-name: self}}
addressType: IPv4
ports:
- {{port: 8080, protocol: TCP}}
endpoints:
- addresses: ["{self_ip}"]
  conditions: {{ready: true}}
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: default}}
spec:
  clusterIP: {EMPTY_VIP}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: 8080, protocol: UDP}}
"#
    )
}

/// A node with pods `client`, `b1`..`b3`, echo servers, and a running agent.
struct Cluster {
    topo: NodeTopology,
    pins: PinDir,
    manifests: PathBuf,
    agent: ChildGuard,
    _servers: Vec<ChildGuard>,
}

impl Cluster {
    fn new() -> Self {
        let tag = unique_tag("lb");
        let topo = NodeTopology::new(&tag, &["client", "b1", "b2", "b3"]);
        let pins = PinDir::new(&tag);
        let manifests = std::env::temp_dir().join(format!("skiff-{tag}-manifests"));
        let _ = std::fs::remove_dir_all(&manifests);
        std::fs::create_dir_all(&manifests).unwrap();
        let echo = workspace_bin("skiff-echo");
        let servers = ["b1", "b2", "b3"]
            .iter()
            .map(|name| {
                let pod = topo.pod(name);
                let child = pod
                    .ns
                    .command(echo.to_str().unwrap())
                    .args(["serve", "--name", name, "--tcp", "8080", "--udp", "8080"])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap();
                ChildGuard::new(child)
            })
            .collect();
        let mut cluster = Self { topo, pins, manifests, agent: ChildGuard(None), _servers: servers };
        let all: Vec<Endpoint<'_>> =
            vec![("10.244.1.11", true, false), ("10.244.1.12", true, false), ("10.244.1.13", true, false)];
        cluster.write_manifests(&web_manifests(&all, "10.244.1.11"));
        cluster.start_agent();
        cluster.wait_dump("10.96.0.10:80/TCP slot 0 count=3");
        cluster
    }

    /// Writes the manifests atomically, as the agent may read at any moment.
    fn write_manifests(&self, text: &str) {
        let tmp = self.manifests.join(".web.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests.join("web.yaml")).unwrap();
    }

    fn start_agent(&mut self) {
        let ready = std::env::temp_dir().join(format!("skiff-{}.ready", self.topo.tag));
        let _ = std::fs::remove_file(&ready);
        let mut args = vec![
            "run".to_owned(),
            "--node-name".into(),
            self.topo.tag.clone(),
            "--pin-dir".into(),
            self.pins.path.display().to_string(),
            "--manifests".into(),
            self.manifests.display().to_string(),
            "--ready-file".into(),
            ready.display().to_string(),
            "--sync-interval-ms".into(),
            "100".into(),
        ];
        for interface in self.topo.host_interfaces() {
            args.push("--pod-interface".into());
            args.push(interface);
        }
        let child = self
            .topo
            .node
            .command(env!("CARGO_BIN_EXE_skiff-node"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        self.agent = ChildGuard::new(child);
        assert!(wait_until(Duration::from_secs(20), || ready.exists()), "the agent did not become ready in 20 s");
        let _ = std::fs::remove_file(&ready);
    }

    fn dump(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_skiff-node"))
            .args(["dump", "--pin-dir", self.pins.path.to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_dump(&self, needle: &str) {
        assert!(
            wait_until(Duration::from_secs(10), || self.dump().contains(needle)),
            "maps never showed `{needle}`:\n{}",
            self.dump()
        );
    }

    /// Opens one long-lived connection from the client to the VIP that makes `count`
    /// requests 100 ms apart; returns the process, its remaining output lines, and the
    /// backend that answered the first request.
    fn hold(&self, count: u32) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>, String) {
        let mut hold = self
            .topo
            .pod("client")
            .ns
            .command(workspace_bin("skiff-echo").to_str().unwrap())
            .args(["hold", &format!("{VIP}:80"), "--count", &count.to_string(), "--interval-ms", "100"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(hold.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "connected");
        let first = lines.next().unwrap().unwrap();
        let held = first.strip_prefix("ok ").unwrap_or_else(|| panic!("first answer: {first}")).to_owned();
        (hold, lines, held)
    }

    /// Runs skiff-echo in a pod and returns its stdout lines.
    fn echo(&self, pod: &str, args: &[&str]) -> Vec<String> {
        let out =
            self.topo.pod(pod).ns.command(workspace_bin("skiff-echo").to_str().unwrap()).args(args).output().unwrap();
        assert!(out.status.success(), "skiff-echo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agent.kill();
        let _ = std::fs::remove_dir_all(&self.manifests);
    }
}

fn tally(lines: &[String]) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut ok = BTreeMap::new();
    let mut errors = Vec::new();
    for line in lines {
        if let Some(name) = line.strip_prefix("ok ") {
            *ok.entry(name.to_owned()).or_default() += 1;
        } else if let Some(e) = line.strip_prefix("err ") {
            errors.push(e.to_owned());
        }
    }
    (ok, errors)
}

fn privileged(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if !require_privileges(test) {
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

#[test]
fn clusterip_spreads_tcp_answers_udp_hairpins_and_rejects() {
    let Some(_serial) = privileged("clusterip_spreads_tcp_answers_udp_hairpins_and_rejects") else { return };
    let cluster = Cluster::new();

    let (ok, errors) = tally(&cluster.echo("client", &["tcp", &format!("{VIP}:80"), "--count", "300"]));
    assert!(errors.is_empty(), "TCP errors: {errors:?}");
    assert_eq!(ok.values().sum::<usize>(), 300);
    for backend in ["b1", "b2", "b3"] {
        let n = ok.get(backend).copied().unwrap_or(0);
        assert!(n >= 60, "every backend must get at least 20% of 300 connections: {ok:?}");
    }

    let (ok, errors) = tally(&cluster.echo("client", &["udp", &format!("{VIP}:53"), "--count", "30"]));
    assert!(errors.is_empty(), "UDP errors: {errors:?}");
    assert_eq!(ok.values().sum::<usize>(), 30);

    // Hairpin: b1 reaches itself through a Service whose only backend is b1.
    let (ok, errors) = tally(&cluster.echo("b1", &["tcp", &format!("{SELF_VIP}:80"), "--count", "5"]));
    assert!(errors.is_empty(), "hairpin errors: {errors:?}");
    assert_eq!(ok.get("b1"), Some(&5));

    // No ready endpoints: refused at once (TCP RST, ICMP port unreachable), never a hang.
    let (ok, errors) = tally(&cluster.echo("client", &["tcp", &format!("{EMPTY_VIP}:80"), "--count", "3"]));
    assert!(ok.is_empty());
    assert_eq!(errors.len(), 3);
    assert!(
        errors.iter().all(|e| e.contains("refused")),
        "TCP to a Service without endpoints must be refused: {errors:?}"
    );
    let (ok, errors) = tally(&cluster.echo("client", &["udp", &format!("{EMPTY_VIP}:53"), "--count", "3"]));
    assert!(ok.is_empty());
    assert!(
        errors.iter().all(|e| e.contains("refused")),
        "UDP to a Service without endpoints must be refused: {errors:?}"
    );
}

#[test]
fn removed_backend_gets_no_new_flows_but_keeps_open_connections() {
    let Some(_serial) = privileged("removed_backend_gets_no_new_flows_but_keeps_open_connections") else { return };
    let cluster = Cluster::new();

    // A long-lived connection: 40 requests, 100 ms apart.
    let (mut hold, lines, held) = cluster.hold(40);
    let held_ip = match held.as_str() {
        "b1" => "10.244.1.11",
        "b2" => "10.244.1.12",
        _ => "10.244.1.13",
    };

    // The held backend leaves the Service entirely.
    let rest: Vec<Endpoint<'_>> = ["10.244.1.11", "10.244.1.12", "10.244.1.13"]
        .into_iter()
        .filter(|ip| *ip != held_ip)
        .map(|ip| (ip, true, false))
        .collect();
    cluster.write_manifests(&web_manifests(&rest, "10.244.1.11"));
    cluster.wait_dump("10.96.0.10:80/TCP slot 0 count=2");

    let (ok, errors) = tally(&cluster.echo("client", &["tcp", &format!("{VIP}:80"), "--count", "60"]));
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!ok.contains_key(&held), "no new flow may reach the removed backend {held}: {ok:?}");

    let rest_lines: Vec<String> = lines.map(Result::unwrap).collect();
    let status = hold.wait().unwrap();
    assert!(status.success());
    let (ok, errors) = tally(&rest_lines);
    assert!(errors.is_empty(), "the open connection must continue: {errors:?}");
    assert_eq!(ok.get(&held), Some(&39), "the open connection stays on {held}: {ok:?}");
}

#[test]
fn terminating_backend_keeps_its_connection_and_gets_no_new_flows() {
    let Some(_serial) = privileged("terminating_backend_keeps_its_connection_and_gets_no_new_flows") else { return };
    let cluster = Cluster::new();
    let (mut hold, lines, held) = cluster.hold(30);
    let eps: Vec<Endpoint<'_>> = [("b1", "10.244.1.11"), ("b2", "10.244.1.12"), ("b3", "10.244.1.13")]
        .into_iter()
        .map(|(name, ip)| if name == held { (ip, false, true) } else { (ip, true, false) })
        .collect();
    cluster.write_manifests(&web_manifests(&eps, "10.244.1.11"));
    cluster.wait_dump("10.96.0.10:80/TCP slot 0 count=2");
    let (ok, errors) = tally(&cluster.echo("client", &["tcp", &format!("{VIP}:80"), "--count", "60"]));
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!ok.contains_key(&held), "a terminating backend gets no new flows: {ok:?}");
    let rest_lines: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(hold.wait().unwrap().success());
    let (ok, errors) = tally(&rest_lines);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(ok.get(&held), Some(&29));
}

#[test]
fn agent_restart_loses_no_requests() {
    let Some(_serial) = privileged("agent_restart_loses_no_requests") else { return };
    let mut cluster = Cluster::new();
    let before = cluster.dump();

    // A steady, bounded loop: 200 requests, a new connection each, 20 ms apart.
    let client = cluster
        .topo
        .pod("client")
        .ns
        .command(workspace_bin("skiff-echo").to_str().unwrap())
        .args(["tcp", &format!("{VIP}:80"), "--count", "200", "--interval-ms", "20", "--timeout-ms", "3000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    cluster.agent.kill();
    // Traffic keeps flowing through the pinned programs while no agent runs.
    std::thread::sleep(Duration::from_millis(1500));
    cluster.start_agent();
    let out = client.wait_with_output().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    let (ok, errors) = tally(&lines);
    assert!(errors.is_empty(), "requests failed across the restart: {errors:?}");
    assert_eq!(ok.values().sum::<usize>(), 200, "{ok:?}");
    assert_eq!(lines.last().map(String::as_str), Some("sent=200 ok=200 failed=0"));
    assert_eq!(cluster.dump(), before, "the restarted agent adopts the maps unchanged");
}
