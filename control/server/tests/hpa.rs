//! Resource metrics and the HorizontalPodAutoscaler against a real skiff-control and
//! the real kubectl (1.32), with fake nodes: `support::fake_kubelet` plays the kubelets
//! (pods bound and Running) and serves each node's `/metrics/resource` over HTTPS with
//! CPU figures the test sets. skiff-control scrapes them every second
//! (`--metric-resolution 1`) and its HPA controller syncs every second.
//!
//! Proves: `metrics.k8s.io` in discovery; `kubectl top nodes`, `kubectl top pods`
//! (with `--containers` and a label selector); an autoscaling/v2 HPA on CPU
//! utilization scales a Deployment up to its maxReplicas, then down after the
//! scale-down stabilization window of its `behavior`, never below minReplicas; a
//! `ContainerResource` HPA on memory per pod scales another; their
//! status (currentReplicas, desiredReplicas, currentMetrics, conditions, lastScaleTime),
//! the TARGETS column of `kubectl get hpa`, and the `SuccessfulRescale` events.
//!
//! Every process and thread is stopped on drop; every wait is bounded.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Server;
use support::fake_kubelet::{FakeKubelet, ResourceMetrics};

const BURN: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 1
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      containers:
      - name: burner
        image: localhost/skiff/echo:1
        resources: {requests: {cpu: 100m, memory: 16Mi}}
"#;

const HPA: &str = r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burn}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burn}
  minReplicas: 2
  maxReplicas: 4
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 3}
"#;

/// A second target, scaled on one container's memory per pod (the fake pods use 32Mi).
const MEMORY: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: mem}
spec:
  replicas: 1
  selector: {matchLabels: {app: mem}}
  template:
    metadata: {labels: {app: mem}}
    spec:
      containers:
      - name: app
        image: localhost/skiff/echo:1
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: mem}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: mem}
  minReplicas: 1
  maxReplicas: 2
  metrics:
  - type: ContainerResource
    containerResource: {name: memory, container: app, target: {type: AverageValue, averageValue: 16Mi}}
"#;

fn replicas_of(s: &Server, name: &str) -> i64 {
    s.json(&["get", "deployment", name])["spec"]["replicas"].as_i64().unwrap_or(-1)
}

fn replicas(s: &Server) -> i64 {
    replicas_of(s, "burn")
}

fn condition(hpa: &Value, ty: &str) -> (String, String) {
    let c = hpa["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == ty));
    c.map(|c| (c["status"].as_str().unwrap_or("").into(), c["reason"].as_str().unwrap_or("").into()))
        .unwrap_or_default()
}

fn rescale_events(s: &Server) -> Vec<String> {
    let events = s.json(&["get", "events"]);
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "SuccessfulRescale" && e["involvedObject"]["kind"] == "HorizontalPodAutoscaler")
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect()
}

#[test]
fn metrics_api_and_hpa_scale_on_cpu() {
    let started = Instant::now();
    let s = Server::start_with(&["--metric-resolution", "1", "--horizontal-pod-autoscaler-sync-period", "1"]);
    let _kubelet = FakeKubelet::start(&s.kubeconfig(), Duration::ZERO);
    s.wait_for(30, "the fake nodes", || s.ok(&["get", "nodes", "-o", "name"]).lines().count() == 2);
    let metrics = ResourceMetrics::start(&s.kubeconfig(), 500);

    // Discovery has the group, as kubectl top needs.
    let resources = s.ok(&["api-resources", "--api-group=metrics.k8s.io", "--no-headers"]);
    assert!(resources.contains("NodeMetrics") && resources.contains("PodMetrics"), "{resources}");

    s.apply("burn.yaml", BURN);
    // One pod at 500m of its 100m request.
    s.wait_for(30, "kubectl top pods to show the burn pod", || {
        let out = s.run(&["top", "pods", "-l", "app=burn", "--no-headers"]);
        String::from_utf8_lossy(&out.stdout).contains("500m")
    });
    let top = s.ok(&["top", "pods", "--containers"]);
    assert!(
        top.contains("burner") && top.contains("500m") && top.contains("32Mi"),
        "kubectl top pods --containers:\n{top}"
    );
    s.wait_for(30, "kubectl top nodes to list both nodes", || {
        let out = s.run(&["top", "nodes", "--no-headers"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("node-a") && text.contains("node-b") && !text.contains("<unknown>")
    });
    let top_nodes = s.ok(&["top", "nodes"]);
    assert!(top_nodes.contains("500m"), "the node running the pod shows its 500m:\n{top_nodes}");
    let node: Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes/node-a"])).unwrap();
    assert_eq!(node["kind"], "NodeMetrics");
    assert!(node["window"].as_str().is_some_and(|w| w.ends_with('s')), "{node}");
    let missing = s.fails(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope"]);
    assert!(missing.contains("not found"), "{missing}");

    // 500% of requests against 50%: 10 replicas wanted, 4 allowed; minReplicas 2 first.
    s.apply("hpa.yaml", HPA);
    s.wait_for(60, "the HPA to scale the Deployment to maxReplicas", || replicas(&s) == 4);
    s.wait_for(30, "the HPA's status after the scale-up", || {
        let hpa = s.json(&["get", "hpa", "burn"]);
        hpa["status"]["desiredReplicas"] == 4
            && hpa["status"]["currentReplicas"] == 4
            && condition(&hpa, "ScalingLimited") == ("True".into(), "TooManyReplicas".into())
    });
    let hpa = s.json(&["get", "hpa", "burn"]);
    assert_eq!(condition(&hpa, "ScalingActive"), ("True".into(), "ValidMetricFound".into()), "{hpa}");
    assert_eq!(condition(&hpa, "AbleToScale").0, "True", "{hpa}");
    assert!(hpa["status"]["lastScaleTime"].is_string(), "{hpa}");
    let current = &hpa["status"]["currentMetrics"][0]["resource"];
    assert_eq!((current["name"].as_str(), current["current"]["averageUtilization"].as_i64()), (Some("cpu"), Some(500)));
    let table = s.ok(&["get", "hpa", "burn", "--no-headers"]);
    assert!(table.contains("cpu: 500%/50%"), "kubectl get hpa:\n{table}");
    let described = s.ok(&["describe", "hpa", "burn"]);
    assert!(
        described.contains("SuccessfulRescale") && described.contains("resource cpu on pods"),
        "kubectl describe hpa:\n{described}"
    );
    let events = rescale_events(&s);
    assert!(
        events
            .iter()
            .any(|m| m == "New size: 4; reason: cpu resource utilization (percentage of request) above target"),
        "{events:?}"
    );

    // 20m: 20% of requests, 2 replicas wanted, after the 3 s stabilization window.
    metrics.set_pod_millicores(20);
    let lowered = Instant::now();
    s.wait_for(60, "the HPA to scale down to 2", || replicas(&s) == 2);
    // The last high recommendation may have been made up to one sync (1 s) before the
    // figures changed: the window of 3 s keeps the Deployment up at least 2 s longer.
    assert!(lowered.elapsed() >= Duration::from_secs(2), "scaled down within the stabilization window");
    assert!(rescale_events(&s).iter().any(|m| m == "New size: 2; reason: All metrics below target"));

    // Idle: 0 wanted, minReplicas holds it at 2.
    metrics.set_pod_millicores(0);
    s.wait_for(30, "the HPA to report TooFewReplicas", || {
        let hpa = s.json(&["get", "hpa", "burn"]);
        condition(&hpa, "ScalingLimited") == ("True".into(), "TooFewReplicas".into())
    });
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(replicas(&s), 2, "minReplicas must hold");
    let table = s.ok(&["get", "hpa", "burn", "--no-headers"]);
    assert!(table.contains("cpu: 0%/50%"), "kubectl get hpa:\n{table}");

    // One container's memory, as an average value: 32Mi per pod against 16Mi wants
    // twice the pods, and (the fake pods' memory being fixed) ever more: maxReplicas 2.
    s.apply("mem.yaml", MEMORY);
    s.wait_for(60, "the memory HPA to scale mem to 2", || replicas_of(&s, "mem") == 2);
    let table = s.ok(&["get", "hpa", "mem", "--no-headers"]);
    assert!(table.contains("memory: 33554432/16Mi"), "kubectl get hpa:\n{table}");
    eprintln!("metrics and HPA test took {:?}", started.elapsed());
}
