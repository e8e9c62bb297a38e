//! What the end-to-end suites on a two-node cluster share (`connectivity.rs`,
//! `cluster_lifecycle.rs`): the cluster `cargo xtask up` makes, with the service proxy
//! fed by the API; the echo clients' output read back; the datapath's state for a
//! failure message.
//!
//! Only test plumbing lives here: no assertion about Skiff's behaviour.

#![allow(dead_code, reason = "each suite that includes this module uses a part of it")]

use std::time::Duration;

use skiff_tests::cluster::{Cluster, ClusterOptions, ClusterSetup};
use skiff_tests::image::{echo_image, pause_image};
use skiff_tests::netns::wait_until;
use skiff_tests::{ok, unique_tag, workspace_bin};

/// The pod the clients run in: an echo server (so that it keeps running) pinned to the
/// node named `{node}`.
pub const CLIENT_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {role: client}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - {name: echo, image: "localhost/skiff/echo:1", command: ["/skiff-echo", "serve"]}
"#;

/// [`CLIENT_POD`] on `node`.
pub fn client_pod(node: &str) -> String {
    CLIENT_POD.replace("{node}", node)
}

/// A two-node cluster as `cargo xtask up` starts it (every agent programs Services from
/// the API), with the pause and echo images imported on every node.
pub fn two_node_cluster(kind: &str) -> Cluster {
    let images = vec![ok("pause image", pause_image()), ok("echo image", echo_image())];
    let setup = ClusterSetup { services_from_api: true, ..Default::default() };
    ok("starting the cluster", Cluster::start_in(&unique_tag(kind), 2, &images, &ClusterOptions::default(), &setup))
}

/// What one run of `skiff-echo tcp|udp|hold` printed: the names that answered, the
/// errors, and everything it wrote (for messages).
#[derive(Debug, Default)]
pub struct Replies {
    pub answers: Vec<String>,
    pub errors: Vec<String>,
    /// The client's `sent=N ok=K failed=F` line was there: it ran to its end.
    pub finished: bool,
}

impl Replies {
    pub fn parse(stdout: &str) -> Self {
        let mut r = Self::default();
        for line in stdout.lines() {
            if let Some(name) = line.strip_prefix("ok ") {
                r.answers.push(name.trim().to_owned());
            } else if let Some(why) = line.strip_prefix("err ") {
                r.errors.push(why.trim().to_owned());
            } else if line.starts_with("sent=") {
                r.finished = true;
            }
        }
        r
    }

    /// The distinct names that answered, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names = self.answers.clone();
        names.sort();
        names.dedup();
        names
    }
}

/// A Service's ClusterIP.
pub fn cluster_ip(cluster: &Cluster, service: &str) -> String {
    let ip = cluster.kubectl_out(&["get", "service", service, "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(!ip.is_empty(), "Service {service} has no ClusterIP");
    ip
}

/// The pod's first container's id in containerd (without `containerd://`).
pub fn container_id(cluster: &Cluster, pod: &str) -> String {
    let id = cluster.kubectl_out(&["get", "pod", pod, "-o", "jsonpath={.status.containerStatuses[0].containerID}"]);
    id.strip_prefix("containerd://").unwrap_or_else(|| panic!("pod {pod} has no container id: {id:?}")).to_owned()
}

/// The ready addresses of a Service's EndpointSlices (nil `ready` counts as ready),
/// sorted.
pub fn ready_endpoints(cluster: &Cluster, service: &str) -> Vec<String> {
    let selector = format!("kubernetes.io/service-name={service}");
    let list = cluster.kubectl_out(&["get", "endpointslices", "-l", &selector, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
    let mut ips = Vec::new();
    for slice in v["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
        for endpoint in slice["endpoints"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let ready = endpoint.pointer("/conditions/ready").and_then(serde_json::Value::as_bool).unwrap_or(true);
            if let (true, Some(ip)) = (ready, endpoint.pointer("/addresses/0").and_then(serde_json::Value::as_str)) {
                ips.push(ip.to_owned());
            }
        }
    }
    ips.sort();
    ips.dedup();
    ips
}

/// Waits until every pod matching `selector` (at least `count`) is Ready.
pub fn wait_pods_ready(cluster: &Cluster, selector: &str, count: usize, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let list = cluster.kubectl_out(&["get", "pods", "-l", selector, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
        let pods: Vec<&serde_json::Value> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let ready = |p: &&serde_json::Value| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        };
        pods.len() == count && pods.iter().all(ready)
    })
}

/// Every node's Service maps (`skiff-node dump`) and datapath counters (`skiff-node
/// stats`), for a failure message.
pub fn datapath_state(cluster: &Cluster) -> String {
    let bin = workspace_bin("skiff-node");
    let mut s = String::new();
    for node in &cluster.nodes {
        for what in ["dump", "stats"] {
            let out = node
                .ns
                .command(bin.to_str().expect("UTF-8 path"))
                .args([what, "--pin-dir"])
                .arg(&node.pins.path)
                .output()
                .expect("running skiff-node");
            s += &format!(
                "--- skiff-node {what} on {}:\n{}{}\n",
                node.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    s
}
