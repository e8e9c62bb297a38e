//! The datapath installed as a DaemonSet (deploy/skiff-node.yaml) on a 2-node local
//! cluster whose own agents are kubelets only: before the DaemonSet no node loads BPF or
//! has a CNI configuration; once its pods are Ready on every node, ClusterIPs work from
//! pods on each node (backends local and remote) and pods reach pods across nodes; and a
//! rolling update of the DaemonSet, which replaces the agent pod of every node, loses no
//! request of a steady loop through the Service, on new connections or on one held open.
//!
//! Needs root (namespaces, containerd, BPF); skips without it, fails under CI=true.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use skiff_tests::cluster::{Cluster, ClusterOptions, ClusterSetup};
use skiff_tests::image::{echo_image, node_image, pause_image};
use skiff_tests::netns::wait_until;
use skiff_tests::{ok, require_privileges, unique_tag};

/// The manifest under test, as a user applies it.
const DAEMONSET: &str = include_str!("../../deploy/skiff-node.yaml");
const AGENT_SELECTOR: &str = "app.kubernetes.io/name=skiff-node";

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {type: ClusterIP, selector: {app: web}, ports: [{name: tcp, port: 80, targetPort: 8080}]}
"#;

/// Two echo servers on `node` (named after their pods), behind the `web` Service.
fn web_on(index: usize, node: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web-{index}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web, node: n{index}}}}}
  template:
    metadata: {{labels: {{app: web, node: n{index}}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node}}}
      terminationGracePeriodSeconds: 3
      containers:
      - name: echo
        image: localhost/skiff/echo:1
        command: ["/skiff-echo", "serve", "--tcp", "8080"]
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
"#
    )
}

/// A pod on `node` that the test execs its clients in.
fn client_on(index: usize, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client-{index}, labels: {{app: client}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: localhost/skiff/echo:1
    command: ["/skiff-echo", "serve", "--tcp", "8080"]
"#
    )
}

/// The manifest with the containerd directories of this machine's temp dir (the
/// manifest names /tmp, where the harness's containerds live unless TMPDIR moves them).
fn manifest() -> String {
    let tmp = std::env::temp_dir();
    let tmp = tmp.to_str().expect("temp dir is UTF-8").trim_end_matches('/');
    DAEMONSET.replace("path: /tmp,", &format!("path: {tmp},")).replace("/tmp/skiff-ctd-", &format!("{tmp}/skiff-ctd-"))
}

/// One pod as `kubectl get pods` lists it.
#[derive(Debug, Clone)]
struct PodRow {
    name: String,
    node: String,
    ip: String,
    ready: bool,
    deleting: bool,
}

fn pods(cluster: &Cluster, namespace: &str, selector: &str) -> Vec<PodRow> {
    let jsonpath = "jsonpath={range .items[*]}{.metadata.name}|{.spec.nodeName}|{.status.podIP}|\
                    {.status.conditions[?(@.type==\"Ready\")].status}|{.metadata.deletionTimestamp}{\"\\n\"}{end}";
    let out = cluster.kubectl_out(&["get", "pods", "-n", namespace, "-l", selector, "-o", jsonpath]);
    out.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            (f.len() == 5).then(|| PodRow {
                name: f[0].into(),
                node: f[1].into(),
                ip: f[2].into(),
                ready: f[3] == "True",
                deleting: !f[4].is_empty(),
            })
        })
        .collect()
}

/// Waits until exactly `count` pods match, all Ready and none being deleted.
fn wait_ready(cluster: &Cluster, namespace: &str, selector: &str, count: usize, timeout: Duration) -> Vec<PodRow> {
    let done = || {
        let p = pods(cluster, namespace, selector);
        p.len() == count && p.iter().all(|p| p.ready && !p.deleting)
    };
    if !wait_until(timeout, done) {
        panic!(
            "{count} Ready pods {selector} in {namespace} not there in {} s: {:?}\n{}\n{}",
            timeout.as_secs(),
            pods(cluster, namespace, selector),
            cluster.kubectl_out(&["get", "events", "-A"]),
            cluster.logs()
        );
    }
    pods(cluster, namespace, selector)
}

/// `kubectl exec POD -- /skiff-echo ARGS...`: the names that answered, and the errors.
fn echo_client(cluster: &Cluster, pod: &str, args: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut argv = vec!["exec", pod, "--", "/skiff-echo"];
    argv.extend_from_slice(args);
    let out = ok(&format!("the client in {pod}"), cluster.kubectl_ok(&argv));
    parse_client(&out)
}

fn parse_client(out: &str) -> (Vec<String>, Vec<String>) {
    let oks = out.lines().filter_map(|l| l.strip_prefix("ok ")).map(str::to_owned).collect();
    let errs = out.lines().filter(|l| l.starts_with("err")).map(str::to_owned).collect();
    (oks, errs)
}

#[test]
fn the_datapath_daemonset_serves_services_and_survives_a_rolling_update() {
    if !require_privileges("the_datapath_daemonset_serves_services_and_survives_a_rolling_update") {
        return;
    }
    let images = vec![
        ok("building the pause image", pause_image()),
        ok("building the echo image", echo_image()),
        ok("building the node image", node_image()),
    ];
    let setup = ClusterSetup { kubelet_only: true, ..Default::default() };
    let cluster = ok(
        "starting a cluster of kubelet-only agents",
        Cluster::start_in(&unique_tag("ds"), 2, &images, &ClusterOptions::default(), &setup),
    );
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();

    // Kubelets alone: no BPF, no CNI configuration, so no node is Ready yet.
    for node in &cluster.nodes {
        assert!(
            !node.pins.path.exists(),
            "the kubelet-only agent of {} loaded BPF into {}",
            node.name,
            node.pins.path.display()
        );
        let ready = cluster.kubectl_out(&[
            "get",
            "node",
            &node.name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        assert_ne!(ready, "True", "{} is Ready without a pod network", node.name);
    }

    ok("applying deploy/skiff-node.yaml", cluster.apply(&manifest()));
    let agents = wait_ready(&cluster, "kube-system", AGENT_SELECTOR, 2, Duration::from_secs(90));
    let on: BTreeSet<&str> = agents.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(on, names.iter().map(String::as_str).collect(), "one agent pod per node: {agents:?}");
    ok(
        "the nodes becoming Ready with the DaemonSet's CNI configuration",
        cluster.wait_nodes(Duration::from_secs(60), true),
    );
    for node in &cluster.nodes {
        assert!(
            node.pins.path.is_dir(),
            "the agent pod on {} pinned nothing in {}",
            node.name,
            node.pins.path.display()
        );
    }

    let mut apps = SERVICE.to_owned();
    for (i, name) in names.iter().enumerate() {
        apps += &format!("---{}---{}", web_on(i + 1, name), client_on(i + 1, name));
    }
    ok("applying the web Deployments, the Service and the clients", cluster.apply(&apps));
    let web = wait_ready(&cluster, "default", "app=web", 4, Duration::from_secs(90));
    wait_ready(&cluster, "default", "app=client", 2, Duration::from_secs(90));
    let node_of: BTreeMap<String, String> = web.iter().map(|p| (p.name.clone(), p.node.clone())).collect();
    let cluster_ip = cluster.kubectl_out(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(!cluster_ip.is_empty(), "the web Service has no ClusterIP");
    let vip = format!("{cluster_ip}:80");
    // The EndpointSlice reaches the agents a moment after the pods are Ready.
    let all_answer = || {
        let (oks, _) = echo_client(&cluster, "client-1", &["tcp", &vip, "--count", "20", "--timeout-ms", "1000"]);
        oks.iter().collect::<BTreeSet<_>>().len() == 4
    };
    assert!(
        wait_until(Duration::from_secs(30), all_answer),
        "not every backend answers through {vip}:\n{}",
        cluster.logs()
    );

    // Both roles of each agent synced from the API as its ServiceAccount.
    for agent in &agents {
        let logs = ok("the agent's log", cluster.kubectl_ok(&["logs", "-n", "kube-system", &agent.name]));
        let synced = logs.lines().filter(|l| l.contains("first sync done")).count();
        assert!(synced == 2 && !logs.to_lowercase().contains("forbidden"), "agent {}:\n{logs}", agent.name);
    }
    // Through the ClusterIP from each node, answered by backends on both nodes.
    for (i, node) in names.iter().enumerate() {
        let client = format!("client-{}", i + 1);
        let (oks, errs) = echo_client(&cluster, &client, &["tcp", &vip, "--count", "40", "--timeout-ms", "2000"]);
        assert!(errs.is_empty() && oks.len() == 40, "{client} on {node} -> {vip}: {errs:?}");
        let backends: BTreeSet<&str> = oks.iter().filter_map(|p| node_of.get(p).map(String::as_str)).collect();
        assert_eq!(backends.len(), 2, "{client} on {node} reached backends on {backends:?} only: {oks:?}");
    }
    // Pod to pod across nodes, straight over the overlay.
    for (i, node) in names.iter().enumerate() {
        let client = format!("client-{}", i + 1);
        let remote = web.iter().find(|p| &p.node != node).expect("a web pod on the other node");
        let (oks, errs) = echo_client(
            &cluster,
            &client,
            &["tcp", &format!("{}:8080", remote.ip), "--count", "5", "--timeout-ms", "2000"],
        );
        assert!(
            errs.is_empty() && oks.iter().all(|n| n == &remote.name),
            "{client} -> {}: {oks:?} {errs:?}",
            remote.name
        );
    }

    // A rolling update of the DaemonSet under a steady loop of new connections from one
    // node and one held connection from the other: not one request may fail.
    let mut loops: Vec<_> = [("client-1", "tcp"), ("client-2", "hold")]
        .into_iter()
        .map(|(pod, kind)| {
            let argv = ["exec", pod, "--", "/skiff-echo", kind, vip.as_str()];
            let flags = ["--count", "800", "--interval-ms", "50", "--timeout-ms", "2000"];
            let child = cluster
                .kubectl_command(&[&argv[..], &flags[..]].concat())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting kubectl exec");
            (pod, kind, ChildKill(Some(child)))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let old: BTreeSet<String> = agents.iter().map(|p| p.name.clone()).collect();
    let patch = r#"{"spec":{"template":{"metadata":{"annotations":{"skiff.test/rollout":"1"}}}}}"#;
    ok(
        "patching the DaemonSet's pod template",
        cluster.kubectl_ok(&["-n", "kube-system", "patch", "ds", "skiff-node", "--type", "merge", "-p", patch]),
    );
    let replaced = || {
        let p = pods(&cluster, "kube-system", AGENT_SELECTOR);
        p.len() == 2 && p.iter().all(|p| p.ready && !p.deleting && !old.contains(&p.name))
    };
    assert!(
        wait_until(Duration::from_secs(35), replaced),
        "the rolling update did not replace every agent pod in 35 s: {:?}\n{}",
        pods(&cluster, "kube-system", AGENT_SELECTOR),
        cluster.logs()
    );
    for (pod, kind, child) in &mut loops {
        if child.0.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()) {
            let out = child.0.take().unwrap().wait_with_output().expect("reading kubectl exec");
            panic!(
                "the {kind} loop in {pod} ended before the rolling update did:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    for (pod, kind, mut child) in loops {
        let out = child.0.take().unwrap().wait_with_output().expect("waiting for kubectl exec");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (oks, errs) = parse_client(&stdout);
        assert!(
            out.status.success() && errs.is_empty() && oks.len() == 800,
            "the {kind} loop in {pod} through {vip} during the rolling update: {} ok, failures {errs:?}\n{}{}",
            oks.len(),
            stdout.lines().last().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A child process killed on drop, so that a failing test leaves no kubectl behind.
struct ChildKill(Option<std::process::Child>);

impl Drop for ChildKill {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
