//! Resource metrics and the HorizontalPodAutoscaler on real components: a 2-node local
//! cluster (skiff-control, skiff-node kubelets on real containerd), a pod that burns a
//! CPU (`skiff-echo burn`, bounded in time). skiff-control's scraper reads each
//! kubelet's `/metrics/resource` (CRI container stats, the node's pods' cgroup) every
//! 15 s, so within a minute `kubectl top pods` shows the pod above 100m and
//! `kubectl top nodes` lists every node; then `kubectl autoscale` makes an HPA that
//! scales the Deployment up.
//!
//! Runs in about two minutes (two scrapes and an HPA sync of 15 s each after the
//! cluster is up). Needs root (namespaces, containerd, BPF); skips without it, fails
//! under CI=true.

use std::time::{Duration, Instant};

use skiff_tests::cluster::Cluster;
use skiff_tests::image::{echo_image, pause_image};
use skiff_tests::netns::wait_until;
use skiff_tests::{ok, require_privileges, unique_tag};

/// One container burning a CPU for two minutes (every replica the HPA adds burns too,
/// then idles), asking for 100m so that a whole core is 1000% of its request.
const BURN: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 1
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burner
        image: localhost/skiff/echo:1
        command: ["/skiff-echo", "burn", "120"]
        resources: {requests: {cpu: 100m}}
"#;

/// The CPU column of `kubectl top` (`1234m`) in millicores.
fn millicores(cell: &str) -> Option<u64> {
    cell.strip_suffix('m').and_then(|m| m.parse().ok()).or_else(|| cell.parse::<u64>().ok().map(|c| c * 1000))
}

#[test]
fn kubectl_top_and_an_hpa_on_a_cpu_burning_pod() {
    if !require_privileges("kubectl_top_and_an_hpa_on_a_cpu_burning_pod") {
        return;
    }
    let images = vec![ok("pause image", pause_image()), ok("echo image", echo_image())];
    let cluster = ok("starting the cluster", Cluster::start(&unique_tag("mt"), 2, &images));
    let started = Instant::now();
    ok("apply burn", cluster.apply(BURN));

    // The burning pod shows in kubectl top pods above 100m.
    let mut last = String::new();
    let burning = wait_until(Duration::from_secs(90), || {
        let out = cluster.kubectl(&["top", "pods", "-l", "app=burn", "--no-headers"]);
        last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        last.lines().any(|l| l.split_whitespace().nth(1).and_then(millicores).is_some_and(|m| m > 100))
    });
    assert!(burning, "kubectl top pods never showed the burn pod above 100m; last:\n{last}\n{}", cluster.logs());
    eprintln!("kubectl top pods after {:?}:\n{last}", started.elapsed());
    let containers = ok("kubectl top pods --containers", cluster.kubectl_ok(&["top", "pods", "--containers"]));
    assert!(containers.contains("burner"), "{containers}");

    // Every node has figures (from its pods' cgroup subtree).
    let listed = wait_until(Duration::from_secs(60), || {
        let out = cluster.kubectl(&["top", "nodes", "--no-headers"]);
        last = String::from_utf8_lossy(&out.stdout).to_string();
        cluster.nodes.iter().all(|n| last.lines().any(|l| l.starts_with(&n.name) && !l.contains("<unknown>")))
    });
    assert!(listed, "kubectl top nodes did not list every node; last:\n{last}\n{}", cluster.logs());
    eprintln!("kubectl top nodes after {:?}:\n{last}", started.elapsed());

    // The kubelet's endpoint itself, through the API server's node proxy.
    let node = cluster.kubectl_out(&["get", "pods", "-l", "app=burn", "-o", "jsonpath={.items[0].spec.nodeName}"]);
    let raw = cluster.kubectl_out(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/metrics/resource")]);
    for metric in [
        "container_cpu_usage_seconds_total{container=\"burner\",namespace=\"default\",pod=\"burn-",
        "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"burn-",
        "node_cpu_usage_seconds_total ",
        "node_memory_working_set_bytes ",
        "resource_scrape_error 0",
    ] {
        assert!(raw.lines().any(|l| l.starts_with(metric)), "no {metric} in /metrics/resource of {node}:\n{raw}");
    }
    let agent_log = cluster.nodes.iter().find(|n| n.name == node).map(|n| n.log_tail()).unwrap_or_default();
    for line in agent_log.lines().filter(|l| l.contains("ListPodSandboxStats")) {
        eprintln!("{node}: {line}");
    }

    // The HPA scales the Deployment up: a whole core is far above 50% of 100m.
    ok(
        "kubectl autoscale",
        cluster.kubectl_ok(&["autoscale", "deployment", "burn", "--cpu-percent=50", "--min=1", "--max=3"]),
    );
    let replicas = || cluster.kubectl_out(&["get", "deployment", "burn", "-o", "jsonpath={.spec.replicas}"]);
    let scaled = wait_until(Duration::from_secs(90), || replicas() == "3");
    let hpa = cluster.kubectl_out(&["get", "hpa", "burn", "-o", "yaml"]);
    assert!(scaled, "the HPA did not scale burn to 3 (now {}):\n{hpa}\n{}", replicas(), cluster.logs());
    let table = cluster.kubectl_out(&["get", "hpa", "burn"]);
    assert!(table.contains("cpu: ") && table.contains("%/50%"), "kubectl get hpa:\n{table}");
    let events = cluster.kubectl_out(&["get", "events", "--field-selector", "involvedObject.name=burn"]);
    assert!(events.contains("SuccessfulRescale"), "{events}");
    eprintln!("scaled to 3 after {:?}:\n{table}", started.elapsed());
}
