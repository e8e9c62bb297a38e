//! skiff-node as the kubelet of a real node: skiff-control and a node in network
//! namespaces of their own, the node's pods run by a real containerd through the CRI,
//! everything driven through kubectl 1.32 as a user would.
//!
//! Needs root (namespaces, containerd, BPF); skips without it, fails under CI=true.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use skiff_tests::cluster::Cluster;
use skiff_tests::image::{echo_image, pause_image};
use skiff_tests::netns::wait_until;
use skiff_tests::{ok, require_privileges, unique_tag, workspace_bin};

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 3
      containers:
      - name: echo
        image: localhost/skiff/echo:1
        command: ["/skiff-echo", "serve", "--name", "web", "--tcp", "8080"]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe:
          httpGet: {path: /readyz, port: http}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

const CRASHER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: app
    image: localhost/skiff/echo:1
    command: ["/skiff-echo", "no-such-command"]
"#;

const MISSING_IMAGE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  containers:
  - name: app
    image: localhost/skiff/not-imported:1
"#;

const JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: probe
        image: localhost/skiff/echo:1
        command: ["/skiff-echo", "udp", "127.0.0.1:9", "--count", "1", "--timeout-ms", "100"]
"#;

const STATIC_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: static-web, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: localhost/skiff/echo:1
    command: ["/skiff-echo", "serve", "--name", "static", "--tcp", "8080"]
"#;

const CONFIGURED: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {color: blue}
---
apiVersion: v1
kind: Pod
metadata: {name: configured}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: localhost/skiff/echo:1
    command: ["/skiff-echo", "serve", "--name", "configured-marker", "--tcp", "8080"]
    env:
    - name: COLOR
      valueFrom: {configMapKeyRef: {name: settings, key: color}}
    - name: MY_POD
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    volumeMounts: [{name: cfg, mountPath: /etc/settings}]
    livenessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
  volumes:
  - name: cfg
    configMap: {name: settings}
---
apiVersion: v1
kind: Pod
metadata: {name: unhealthy}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: localhost/skiff/echo:1
    command: ["/skiff-echo", "serve", "--name", "unhealthy", "--tcp", "8080"]
    livenessProbe:
      tcpSocket: {port: 9999}
      periodSeconds: 1
      failureThreshold: 2
"#;

/// The host pid of the process whose command line holds `marker`.
fn pid_of(marker: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains(marker).then_some(pid)
    })
}

fn json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok("kubectl get", cluster.kubectl_ok(&all))).unwrap()
}

/// The web pods: (name, podIP, containerID, restartCount, ready).
fn web_pods(cluster: &Cluster) -> Vec<(String, String, String, i64, bool)> {
    let pods = json(cluster, &["get", "pods", "-l", "app=web"]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let cs = &p["status"]["containerStatuses"][0];
            (
                p["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                p["status"]["podIP"].as_str().unwrap_or_default().to_owned(),
                cs["containerID"].as_str().unwrap_or_default().to_owned(),
                cs["restartCount"].as_i64().unwrap_or(-1),
                cs["ready"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn three_ready(cluster: &Cluster) -> bool {
    let pods = web_pods(cluster);
    pods.len() == 3 && pods.iter().all(|p| p.4)
}

#[test]
fn pods_run_restart_report_and_survive_agent_and_api_restarts() {
    if !require_privileges("pods_run_restart_report_and_survive_agent_and_api_restarts") {
        return;
    }
    let images = vec![ok("pause image", pause_image()), ok("echo image", echo_image())];
    let mut cluster = ok("starting the cluster", Cluster::start(&unique_tag("kl"), 1, &images));
    let node = cluster.nodes[0].name.clone();

    // A 3-replica Deployment becomes Ready, with pod IPs from the node's podCIDR.
    ok("apply web", cluster.apply(WEB));
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(90), || three_ready(&cluster)),
        "web never got 3 ready pods:\n{}\n{}",
        cluster.kubectl_out(&["get", "pods", "-o", "wide"]),
        cluster.logs()
    );
    eprintln!("3 web pods ready after {:?}", started.elapsed());
    let pod_cidr: ipnet::Ipv4Net =
        cluster.kubectl_out(&["get", "node", &node, "-o", "jsonpath={.spec.podCIDR}"]).parse().expect("podCIDR");
    let pods = web_pods(&cluster);
    for (name, ip, ..) in &pods {
        let ip: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("pod {name} has podIP {ip:?}"));
        assert!(pod_cidr.contains(&ip), "pod {name}'s IP {ip} is outside the node's podCIDR {pod_cidr}");
    }
    // The pods answer on their IPs, from the node.
    for (name, ip, ..) in &pods {
        let out = cluster.nodes[0]
            .ns
            .command(workspace_bin("skiff-echo").to_str().unwrap())
            .args(["tcp", &format!("{ip}:8080"), "--count", "1"])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains("ok web"), "pod {name} at {ip} did not answer: {out}");
    }
    let wide = cluster.kubectl_out(&["get", "pods", "-o", "wide"]);
    assert!(wide.lines().filter(|l| l.contains(" Running ") && l.contains(&node)).count() >= 3, "{wide}");

    // The node's metrics, through the API server's node proxy: its pods and containers,
    // its pod workers, and the datapath's counters and map fill (the endpoints map
    // holds the three pods, written by skiff-cni).
    // The pod counts follow the runtime relist (every second), so they may lag the
    // Ready pods by that much.
    let node_metrics = || cluster.kubectl_out(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/metrics")]);
    let gauge = |text: &str, prefix: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok()).unwrap_or(0.0)
    };
    // Pods and containers are counted by the same relist, but a relist can catch a
    // container between created and running: wait for both counts.
    wait_until(Duration::from_secs(10), || {
        let text = node_metrics();
        gauge(&text, "kubelet_running_pods ") >= 3.0
            && gauge(&text, "kubelet_running_containers{container_state=\"running\"} ") >= 3.0
    });
    let metrics = node_metrics();
    let value = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {line_start} in the node's metrics:\n{metrics}"))
    };
    assert!(value("kubelet_running_pods ") >= 3.0, "{metrics}");
    assert!(value("kubelet_running_containers{container_state=\"running\"} ") >= 3.0, "{metrics}");
    assert!(value("kubelet_pod_worker_duration_seconds_count{operation=\"sync\"} ") >= 3.0, "{metrics}");
    assert!(value("skiff_bpf_map_entries{map_name=\"ENDPOINTS_V1\"} ") >= 3.0, "{metrics}");
    assert!(value("skiff_bpf_map_pressure{map_name=\"ENDPOINTS_V1\"} ") > 0.0, "{metrics}");
    value("skiff_datapath_drops_total{reason=\"no_backend\"} ");
    value("skiff_datapath_sync_duration_seconds_count{role=\"overlay\"} ");

    // kubectl logs and exec reach the pods through the API server and the node's
    // kubelet server.
    let logs = ok("kubectl logs", cluster.kubectl_ok(&["logs", &pods[0].0]));
    assert!(!logs.trim().is_empty(), "kubectl logs {} printed nothing", pods[0].0);
    let version = ok("kubectl exec", cluster.kubectl_ok(&["exec", &pods[0].0, "--", "/skiff-echo", "--version"]));
    assert!(version.starts_with("skiff-echo"), "exec output: {version}");
    let failing = cluster.kubectl(&["exec", &pods[0].0, "--", "/skiff-echo", "exit", "3"]);
    assert_eq!(failing.status.code(), Some(3), "exec exit code; stderr: {}", String::from_utf8_lossy(&failing.stderr));

    // A pod whose readiness fails leaves its Service's EndpointSlice, and comes back.
    let (unready_pod, unready_ip) = (pods[1].0.clone(), pods[1].1.clone());
    let echo = |path: &str| {
        let out = cluster.nodes[0]
            .ns
            .command(workspace_bin("skiff-echo").to_str().unwrap())
            .args(["get", &format!("{unready_ip}:8080"), path])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ready_endpoints = || {
        let slices = json(&cluster, &["get", "endpointslices", "-l", "kubernetes.io/service-name=web"]);
        let mut ips: Vec<String> = slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] != false)
            .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
            .collect();
        ips.sort();
        ips
    };
    assert!(
        wait_until(Duration::from_secs(30), || ready_endpoints().len() == 3),
        "the Service never had 3 ready endpoints: {:?}",
        ready_endpoints()
    );
    echo("/unready");
    assert!(
        wait_until(Duration::from_secs(30), || ready_endpoints().len() == 2
            && !ready_endpoints().contains(&unready_ip)),
        "{unready_pod} stayed in the EndpointSlice after turning unready: {:?}\n{}",
        ready_endpoints(),
        cluster.logs()
    );
    assert_eq!(
        cluster.kubectl_out(&[
            "get",
            "pod",
            &unready_pod,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"
        ]),
        "False"
    );
    echo("/ready");
    assert!(
        wait_until(Duration::from_secs(30), || ready_endpoints().len() == 3),
        "{unready_pod} did not come back: {:?}",
        ready_endpoints()
    );

    // A crashing container restarts with back-off and shows CrashLoopBackOff.
    ok("apply crasher", cluster.apply(CRASHER));
    let crash_looping = || {
        let line = cluster.kubectl_out(&["get", "pod", "crasher", "--no-headers"]);
        line.contains("CrashLoopBackOff")
            && cluster
                .kubectl_out(&["get", "pod", "crasher", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"])
                .parse::<u32>()
                .unwrap_or(0)
                >= 2
    };
    assert!(
        wait_until(Duration::from_secs(60), crash_looping),
        "crasher never showed CrashLoopBackOff:\n{}\n{}",
        cluster.kubectl_out(&["get", "pod", "crasher", "-o", "yaml"]),
        cluster.logs()
    );
    let events = cluster.kubectl_out(&["get", "events", "--field-selector", "involvedObject.name=crasher"]);
    assert!(events.contains("Started") && events.contains("Created"), "events of crasher:\n{events}");
    assert!(events.contains("BackOff"), "events of crasher:\n{events}");
    let previous = cluster.kubectl(&["logs", "crasher", "--previous"]);
    assert!(previous.status.success(), "kubectl logs --previous: {}", String::from_utf8_lossy(&previous.stderr));

    // An image the node does not have: ErrImagePull, then ImagePullBackOff, with events.
    ok("apply missing", cluster.apply(MISSING_IMAGE));
    let pull_failed = || {
        let line = cluster.kubectl_out(&["get", "pod", "missing", "--no-headers"]);
        line.contains("ErrImagePull") || line.contains("ImagePullBackOff")
    };
    assert!(
        wait_until(Duration::from_secs(30), pull_failed),
        "no ErrImagePull:\n{}",
        cluster.kubectl_out(&["get", "pod", "missing", "-o", "yaml"])
    );
    let events = cluster.kubectl_out(&["get", "events", "--field-selector", "involvedObject.name=missing"]);
    assert!(events.contains("Failed to pull image"), "events of missing:\n{events}");

    // A Job runs to completion on the node.
    ok("apply job", cluster.apply(JOB));
    let complete = || cluster.kubectl_out(&["get", "job", "once", "-o", "jsonpath={.status.succeeded}"]) == "1";
    assert!(
        wait_until(Duration::from_secs(60), complete),
        "the job did not complete:\n{}\n{}",
        cluster.kubectl_out(&["get", "pods", "-o", "wide"]),
        cluster.logs()
    );

    // Deleting a pod stops it within its grace period (3 s), and the Deployment replaces it.
    let victim = pods[0].0.clone();
    let t = Instant::now();
    ok("delete pod", cluster.kubectl_ok(&["delete", "pod", &victim, "--timeout=30s"]));
    assert!(t.elapsed() < Duration::from_secs(15), "deleting {victim} took {:?}", t.elapsed());
    assert!(
        wait_until(Duration::from_secs(60), || three_ready(&cluster)),
        "web did not recover after a delete:\n{}",
        cluster.logs()
    );

    // A ConfigMap value reaches a container's env and a mounted file (read from the
    // container's own process); a failing liveness probe restarts its container.
    ok("apply configured", cluster.apply(CONFIGURED));
    let running = |name: &str| {
        cluster.kubectl_out(&["get", "pod", name, "-o", "jsonpath={.status.containerStatuses[0].ready}"]) == "true"
    };
    assert!(
        wait_until(Duration::from_secs(60), || running("configured")),
        "the configured pod never ran:\n{}",
        cluster.logs()
    );
    let pid = pid_of("configured-marker").expect("the configured container's process");
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).replace('\0', "\n");
    assert!(environ.lines().any(|l| l == "COLOR=blue"), "env of the container:\n{environ}");
    assert!(environ.lines().any(|l| l == "MY_POD=configured"), "env of the container:\n{environ}");
    let file = std::fs::read_to_string(format!("/proc/{pid}/root/etc/settings/color")).unwrap_or_default();
    assert_eq!(file, "blue", "the mounted ConfigMap file");
    let restarts = || {
        cluster
            .kubectl_out(&["get", "pod", "unhealthy", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"])
            .parse::<u32>()
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(60), || restarts() >= 1),
        "the unhealthy container was never restarted:\n{}",
        cluster.logs()
    );
    let events = cluster.kubectl_out(&["get", "events", "--field-selector", "involvedObject.name=unhealthy"]);
    assert!(events.contains("Unhealthy") && events.contains("failed liveness probe"), "events:\n{events}");
    assert_eq!(
        cluster.kubectl_out(&[
            "get",
            "pod",
            "configured",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}"
        ]),
        "0"
    );

    // A static pod runs from the node's manifest directory and is mirrored into the API;
    // a deleted mirror comes back without the pod restarting; the file's removal ends it.
    let manifest = cluster.nodes[0].manifest_dir.join("static-web.yaml");
    std::fs::write(&manifest, STATIC_POD).unwrap();
    let mirror = format!("static-web-{node}");
    let static_ready = || {
        cluster.kubectl_out(&["get", "pod", &mirror, "-o", "jsonpath={.status.containerStatuses[0].ready}"]) == "true"
    };
    assert!(
        wait_until(Duration::from_secs(60), static_ready),
        "the static pod never showed ready:\n{}",
        cluster.logs()
    );
    let annotations = cluster.kubectl_out(&["get", "pod", &mirror, "-o", "jsonpath={.metadata.annotations}"]);
    assert!(annotations.contains("kubernetes.io/config.mirror"), "{annotations}");
    let container_id =
        || cluster.kubectl_out(&["get", "pod", &mirror, "-o", "jsonpath={.status.containerStatuses[0].containerID}"]);
    let first_id = container_id();
    ok("delete mirror", cluster.kubectl_ok(&["delete", "pod", &mirror, "--timeout=30s"]));
    assert!(
        wait_until(Duration::from_secs(30), || static_ready() && container_id() == first_id),
        "the mirror did not come back with the same container:\n{}",
        cluster.logs()
    );
    std::fs::remove_file(&manifest).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || cluster
            .kubectl_out(&["get", "pods", "-o", "name"])
            .lines()
            .all(|l| !l.contains("static-web"))),
        "the mirror stayed after the manifest went:\n{}",
        cluster.logs()
    );

    // A restarted agent restarts no pod.
    let before = web_pods(&cluster);
    cluster.nodes[0].kill_agent();
    ok("restart agent", cluster.nodes[0].start_agent());
    std::thread::sleep(Duration::from_secs(8));
    assert!(cluster.nodes[0].agent_running(), "the agent died:\n{}", cluster.nodes[0].log_tail());
    assert!(
        wait_until(Duration::from_secs(30), || three_ready(&cluster)),
        "pods unready after an agent restart:\n{}",
        cluster.logs()
    );
    let mut after = web_pods(&cluster);
    let mut before_sorted = before.clone();
    before_sorted.sort();
    after.sort();
    assert_eq!(before_sorted, after, "the agent restart changed the pods");

    // A restarted API server loses no pod.
    ok("restart skiff-control", cluster.restart_control());
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(30), || three_ready(&cluster)),
        "pods unready after an API restart:\n{}",
        cluster.logs()
    );
    let mut again = web_pods(&cluster);
    again.sort();
    assert_eq!(after, again, "the API restart changed the pods");

    // A restarted containerd is reconnected: the pods keep running, and new ones start.
    ok("restart containerd", cluster.nodes[0].containerd.restart(Duration::from_secs(30)));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        wait_until(Duration::from_secs(30), || three_ready(&cluster)),
        "pods unready after a containerd restart:\n{}",
        cluster.logs()
    );
    let mut after_containerd = web_pods(&cluster);
    after_containerd.sort();
    assert_eq!(again, after_containerd, "the containerd restart changed the pods");
    ok("scale web", cluster.kubectl_ok(&["scale", "deployment", "web", "--replicas=4"]));
    let four_ready = || {
        let pods = web_pods(&cluster);
        pods.len() == 4 && pods.iter().all(|p| p.4)
    };
    assert!(
        wait_until(Duration::from_secs(60), four_ready),
        "no new pod after a containerd restart:\n{}",
        cluster.logs()
    );
}
