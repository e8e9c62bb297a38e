//! A Service's traffic through the cluster's lifecycle, on a two-node cluster as
//! `cargo xtask up` makes it (the service proxy fed by the API). A client pod sends a
//! steady, bounded stream of TCP and UDP requests to the `web` Service (one request
//! every 20 ms per protocol, each a new connection or socket) while, phase by phase:
//!
//! 1. the Deployment scales up (2 → 4) and down (4 → 2);
//! 2. it rolls out a new template;
//! 3. each node's agent is killed and started again;
//! 4. skiff-control is killed and started again;
//!
//! and every phase must lose no request. Then node 2 stops for good (its agent killed
//! and left down): within 40 s its Node is not Ready, and its `web` pods are replaced on
//! node 1.
//!
//! What makes zero failures possible is what a user of any Kubernetes does: readiness
//! probes (a pod takes traffic once it answers), and a graceful shutdown: a preStop hook
//! turns the server unready (`GET /unready`), and the server keeps serving for a while
//! after SIGTERM (`--sigterm-delay-ms`). A terminating endpoint leaves every node's slots
//! at once; once it fails its readiness probe it stops serving and leaves the maps
//! altogether, well before its server exits. That matters for UDP: each request comes
//! from a new socket, and about one in seven reuses the source port of a conntrack entry
//! still alive from an earlier one (60 s), which keeps that "flow" on its backend as
//! long as the backend is in the maps (as kube-proxy keeps UDP conntrack entries of
//! endpoints that are still serving).
//!
//! The pods carry NoExecute tolerations of `node.kubernetes.io/unreachable` and
//! `not-ready` with `tolerationSeconds: 2`: without them Skiff's node lifecycle
//! controller evicts after its `--pod-eviction-timeout` (300 s, upstream's default;
//! Skiff has no DefaultTolerationSeconds admission writing it into the pods), far past
//! what a test may wait. A user who wants fast failover sets the same.
//!
//! The request loop runs through the client node's containerd (`ctr tasks exec` in the
//! client's container), not `kubectl exec`: an exec stream runs through the API server
//! and the node's kubelet, which are what the phases restart.
//!
//! Needs root; skips without it, fails under CI=true.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use skiff_tests::cluster::Cluster;
use skiff_tests::netns::wait_until;
use skiff_tests::{ok, require_privileges};
use support::{
    Replies, client_pod, cluster_ip, container_id, datapath_state, ready_endpoints, two_node_cluster, wait_pods_ready,
};

/// The `web` Deployment and Service. The cpu requests make the scheduler spread the
/// replicas over both nodes.
const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers:
      - name: echo
        image: localhost/skiff/echo:1
        command: ["/skiff-echo", "serve", "--sigterm-delay-ms", "3000"]
        ports: [{containerPort: 8080, name: echo}]
        resources: {requests: {cpu: 100m}}
        readinessProbe: {httpGet: {path: /readyz, port: echo}, periodSeconds: 1, failureThreshold: 1}
        lifecycle: {preStop: {httpGet: {path: /unready, port: echo}}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: tcp, port: 80, targetPort: 8080, protocol: TCP}, {name: udp, port: 80, targetPort: 8080, protocol: UDP}]}
"#;

/// Requests per loop run, the pause between requests, a request's timeout.
const RUN_COUNT: &str = "25";
const INTERVAL_MS: &str = "20";
const TIMEOUT_MS: &str = "1000";
/// Upper bound of one phase's loop runs per protocol (25 requests each, about 0.6 s).
const MAX_RUNS: u32 = 200;

/// What one protocol's loop saw during a phase.
#[derive(Debug, Default)]
struct Tally {
    proto: &'static str,
    sent: u64,
    failed: u64,
    /// The failed requests' errors and runs that did not finish, with the run's time.
    problems: Vec<String>,
}

/// The request loops of one phase: per protocol, a thread running `skiff-echo tcp|udp`
/// in the client's container again and again until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    loops: Vec<JoinHandle<Tally>>,
}

/// Where the loops run: the client node's containerd and the client's container.
#[derive(Clone)]
struct Client {
    containerd_socket: PathBuf,
    container: String,
    service: String,
}

static EXEC_ID: AtomicU32 = AtomicU32::new(0);

impl Traffic {
    fn start(client: &Client) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = ["tcp", "udp"]
            .into_iter()
            .map(|proto| {
                let (client, stop) = (client.clone(), stop.clone());
                std::thread::spawn(move || run_loop(&client, proto, &stop))
            })
            .collect();
        Self { stop, loops }
    }

    fn stop(self) -> Vec<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        self.loops.into_iter().map(|l| l.join().expect("a request loop panicked")).collect()
    }
}

fn run_loop(client: &Client, proto: &'static str, stop: &AtomicBool) -> Tally {
    let mut tally = Tally { proto, ..Default::default() };
    let started = Instant::now();
    let target = format!("{}:80", client.service);
    for _ in 0..MAX_RUNS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let exec_id = format!("loop-{proto}-{}", EXEC_ID.fetch_add(1, Ordering::Relaxed));
        let at = started.elapsed();
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&client.containerd_socket)
            .args(["-n", "k8s.io", "tasks", "exec", "--exec-id", &exec_id, &client.container, "/skiff-echo"])
            .args([proto, &target, "--count", RUN_COUNT, "--interval-ms", INTERVAL_MS, "--timeout-ms", TIMEOUT_MS])
            .output()
            .expect("running ctr");
        let replies = Replies::parse(&String::from_utf8_lossy(&out.stdout));
        tally.sent += (replies.answers.len() + replies.errors.len()) as u64;
        tally.failed += replies.errors.len() as u64;
        tally.problems.extend(replies.errors.iter().map(|e| format!("{proto} run at {at:.1?}: {e}")));
        if !replies.finished {
            tally.failed += 1;
            tally.problems.push(format!(
                "{proto} run at {at:.1?} did not finish ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    tally
}

/// One phase's outcome: its report line, and the failures that fail the test.
struct Phase {
    line: String,
    problems: Vec<String>,
}

/// Runs `action` under traffic (from a second before it to two seconds after it).
fn under_traffic(cluster: &mut Cluster, client: &Client, phase: &str, action: impl FnOnce(&mut Cluster)) -> Phase {
    let started = Instant::now();
    let traffic = Traffic::start(client);
    std::thread::sleep(Duration::from_secs(1));
    action(cluster);
    std::thread::sleep(Duration::from_secs(2));
    let tallies = traffic.stop();
    let counts: Vec<String> =
        tallies.iter().map(|t| format!("{} {} sent, {} failed", t.proto, t.sent, t.failed)).collect();
    let line = format!("phase `{phase}` ({:.1?}): {}", started.elapsed(), counts.join("; "));
    eprintln!("{line}");
    let mut problems = Vec::new();
    for t in tallies {
        if t.sent < 50 {
            problems.push(format!("the {} loop sent only {} requests", t.proto, t.sent));
        }
        problems.extend(t.problems);
    }
    Phase { line, problems }
}

/// The `web` pods that are not terminating: (name, node, ready).
fn web_pods(cluster: &Cluster) -> Vec<(String, String, bool)> {
    let list = cluster.kubectl_out(&["get", "pods", "-l", "app=web", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (
                p["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                p["spec"]["nodeName"].as_str().unwrap_or_default().to_owned(),
                ready,
            )
        })
        .collect()
}

/// Every `web` pod, terminating ones included.
fn all_web_pods(cluster: &Cluster) -> usize {
    cluster.kubectl_out(&["get", "pods", "-l", "app=web", "-o", "name"]).lines().count()
}

/// Waits until `web` has `n` pods, all ready and none terminating, and the Service
/// exactly their `n` ready endpoints; panics with the cluster's state otherwise.
fn settle(cluster: &Cluster, n: usize, what: &str) {
    let settled = wait_until(Duration::from_secs(60), || {
        all_web_pods(cluster) == n
            && wait_pods_ready(cluster, "app=web", n, Duration::ZERO)
            && ready_endpoints(cluster, "web").len() == n
    });
    assert!(
        settled,
        "{what}: web did not settle on {n} ready pods:\n{}\nendpoints: {:?}\n{}",
        cluster.kubectl_out(&["get", "pods", "-o", "wide"]),
        ready_endpoints(cluster, "web"),
        cluster.logs()
    );
}

/// Waits until the agent on node `index` is back: its process runs and its Node is
/// Ready, then gives its first sync a moment.
fn agent_back(cluster: &mut Cluster, index: usize) {
    let name = cluster.nodes[index].name.clone();
    let ready = wait_until(Duration::from_secs(30), || {
        cluster.kubectl_out(&["get", "node", &name, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"])
            == "True"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        ready && cluster.nodes[index].agent_running(),
        "the agent of {name} did not come back:\n{}",
        cluster.nodes[index].log_tail()
    );
}

#[test]
fn service_traffic_survives_the_cluster_lifecycle() {
    if !require_privileges("service_traffic_survives_the_cluster_lifecycle") {
        return;
    }
    let started = Instant::now();
    let mut cluster = two_node_cluster("lc");
    let (n1, n2) = (cluster.nodes[0].name.clone(), cluster.nodes[1].name.clone());
    eprintln!("cluster up after {:.1?}", started.elapsed());
    ok("applying web and the client", cluster.apply(&format!("{}---{MANIFEST}", client_pod(&n1))));
    assert!(
        wait_pods_ready(&cluster, "role=client", 1, Duration::from_secs(60)),
        "the client pod did not become Ready:\n{}",
        cluster.logs()
    );
    settle(&cluster, 2, "start");
    let client = Client {
        containerd_socket: cluster.nodes[0].containerd.socket.clone(),
        container: container_id(&cluster, "client"),
        service: cluster_ip(&cluster, "web"),
    };
    eprintln!("web ready after {:.1?}: {:?}", started.elapsed(), web_pods(&cluster));

    let mut reports = Vec::new();
    let scale = |replicas: usize| {
        move |c: &mut Cluster| {
            ok("kubectl scale", c.kubectl_ok(&["scale", "deployment", "web", &format!("--replicas={replicas}")]));
            settle(c, replicas, &format!("scale to {replicas}"));
        }
    };
    reports.push(under_traffic(&mut cluster, &client, "scale up 2 → 4", scale(4)));
    reports.push(under_traffic(&mut cluster, &client, "scale down 4 → 2", scale(2)));
    reports.push(under_traffic(&mut cluster, &client, "rolling update", |c| {
        let before: Vec<String> = web_pods(c).into_iter().map(|p| p.0).collect();
        ok("kubectl set env", c.kubectl_ok(&["set", "env", "deployment/web", "ROLLOUT=2"]));
        ok("kubectl rollout status", c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]));
        settle(c, 2, "rolling update");
        let after: Vec<String> = web_pods(c).into_iter().map(|p| p.0).collect();
        assert!(after.iter().all(|p| !before.contains(p)), "the rollout kept old pods: {before:?} → {after:?}");
    }));
    for index in [0, 1] {
        let phase = format!("agent restart on {}", cluster.nodes[index].name);
        reports.push(under_traffic(&mut cluster, &client, &phase, |c| {
            c.nodes[index].kill_agent();
            std::thread::sleep(Duration::from_secs(1));
            ok("starting the agent again", c.nodes[index].start_agent());
            agent_back(c, index);
        }));
    }
    reports.push(under_traffic(&mut cluster, &client, "skiff-control restart", |c| {
        ok("restarting skiff-control", c.restart_control());
        assert!(
            wait_until(Duration::from_secs(20), || ready_endpoints(c, "web").len() == 2),
            "web's endpoints after the restart: {:?}",
            ready_endpoints(c, "web")
        );
        std::thread::sleep(Duration::from_secs(2));
    }));
    let failed: Vec<String> = reports
        .iter()
        .filter(|p| !p.problems.is_empty())
        .map(|p| format!("{}\n  {}", p.line, p.problems.join("\n  ")))
        .collect();
    assert!(
        failed.is_empty(),
        "requests failed:\n{}\n{}{}",
        failed.join("\n"),
        datapath_state(&cluster),
        cluster.logs()
    );

    // Node 2 stops for good; at least one web pod runs there first.
    if !web_pods(&cluster).iter().any(|p| p.1 == n2) {
        ok("kubectl scale", cluster.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"]));
        settle(&cluster, 3, "scale to 3 before the node stop");
    }
    let on_n2: Vec<String> = web_pods(&cluster).into_iter().filter(|p| p.1 == n2).map(|p| p.0).collect();
    assert!(!on_n2.is_empty(), "no web pod on {n2}: {:?}", web_pods(&cluster));
    let replicas = web_pods(&cluster).len();
    let stopped = Instant::now();
    cluster.nodes[1].kill_agent();
    let ready_status = || {
        cluster.kubectl_out(&["get", "node", &n2, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"])
    };
    // The lease is renewed every 10 s and judged stale 40 s after its last renewal: at
    // most 40 s after the kill, plus the controller's own round trip.
    let not_ready = wait_until(Duration::from_secs(42), || ready_status() != "True");
    let not_ready_after = stopped.elapsed();
    assert!(not_ready, "{n2} was still Ready {not_ready_after:.1?} after its agent stopped:\n{}", cluster.logs());
    eprintln!("{n2} not Ready ({}) after {not_ready_after:.1?}", ready_status());
    let replaced = wait_until(Duration::from_secs(40), || {
        let pods = web_pods(&cluster);
        pods.len() == replicas
            && pods.iter().all(|p| p.1 == n1 && p.2)
            && ready_endpoints(&cluster, "web").len() == replicas
    });
    assert!(
        replaced,
        "the web pods of {n2} ({on_n2:?}) were not replaced on {n1}:\n{}\nendpoints: {:?}\n{}",
        cluster.kubectl_out(&["get", "pods", "-o", "wide"]),
        ready_endpoints(&cluster, "web"),
        cluster.logs()
    );
    eprintln!(
        "web pods of {n2} replaced on {n1} after {:.1?}; whole test {:.1?}",
        stopped.elapsed(),
        started.elapsed()
    );
}
