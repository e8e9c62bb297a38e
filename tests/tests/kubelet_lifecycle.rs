//! skiff-node's kubelet at the edges of a container's life, on one real node (real
//! skiff-control, containerd and kubectl 1.32): a container the OOM killer ends (an
//! OOMKilled event and `lastState`), a failed container's log as its termination
//! message (`FallbackToLogsOnError`), a pod's `fsGroup` on its volumes and processes,
//! a pod force-deleted while the agent was down (its sandbox, containers and IP go
//! once the agent is back), and the renewal of the node's client certificate.
//!
//! One cluster, the checks in sequence, every wait bounded. Needs root; skips without
//! it, fails under CI=true.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::ensure;

use skiff_tests::cluster::Cluster;
use skiff_tests::image::{echo_image, pause_image};
use skiff_tests::netns::wait_until;
use skiff_tests::{ok, require_privileges, unique_tag};

/// The fsGroup of the `grouped` pod.
const FS_GROUP: u32 = 2345;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: localhost/skiff/echo:1
    command: ["/skiff-echo", "hog", "256"]
    resources: {limits: {memory: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: failing}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: localhost/skiff/echo:1
    command: ["/skiff-echo", "exit", "1", "last words of failing"]
    terminationMessagePolicy: FallbackToLogsOnError
---
apiVersion: v1
kind: ConfigMap
metadata: {name: grouped}
data: {color: green}
---
apiVersion: v1
kind: Pod
metadata: {name: grouped}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {fsGroup: 2345}
  containers:
  - name: app
    image: localhost/skiff/echo:1
    command: ["/skiff-echo", "serve", "--name", "grouped", "--tcp", "8080"]
    volumeMounts: [{name: cfg, mountPath: /etc/cfg}, {name: scratch, mountPath: /scratch}]
  volumes:
  - name: cfg
    configMap: {name: grouped}
  - name: scratch
    emptyDir: {}
---
apiVersion: v1
kind: Pod
metadata: {name: orphan, labels: {role: orphan}}
spec:
  containers: [{name: app, image: "localhost/skiff/echo:1", command: ["/skiff-echo", "serve", "--name", "orphan"]}]
"#;

/// The host pid of the pod's first container, from containerd's task list.
fn container_pid(cluster: &Cluster, pod: &str) -> Option<u32> {
    let id = field(cluster, pod, ".status.containerStatuses[0].containerID");
    let id = id.strip_prefix("containerd://")?;
    let tasks = cluster.nodes[0].containerd.ctr(&["tasks", "ls"]).ok()?;
    tasks.lines().find_map(|l| {
        let mut cols = l.split_whitespace();
        (cols.next()? == id).then(|| cols.next()?.parse().ok()).flatten()
    })
}

fn field(cluster: &Cluster, pod: &str, path: &str) -> String {
    cluster.kubectl_out(&["get", "pod", pod, "-o", &format!("jsonpath={{{path}}}")])
}

fn ready(cluster: &Cluster, pod: &str) -> bool {
    field(cluster, pod, ".status.containerStatuses[0].ready") == "true"
}

/// The messages of the pod's events with `reason`.
fn events(cluster: &Cluster, pod: &str, reason: &str) -> Vec<String> {
    let selector = format!("involvedObject.name={pod},reason={reason}");
    let list = cluster.kubectl_out(&["get", "events", "--field-selector", &selector, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
    v["items"].as_array().into_iter().flatten().filter_map(|e| e["message"].as_str().map(str::to_owned)).collect()
}

/// Whether the node's CNI still holds an allocation for `ip`.
fn ip_allocated(cluster: &Cluster, ip: &str) -> bool {
    let path = cluster.nodes[0].containerd.cni_data_dir.join("ipam.json");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default()).unwrap_or_default();
    state["allocations"].get(ip).is_some()
}

/// Renews the certificate in `kubeconfig` (a copy of the node's) the way the running
/// agent does, from a thread inside the node's network namespace: the API server is
/// reachable there, and nothing is sent from the root namespace.
fn renew_in_node_netns(cluster: &Cluster, kubeconfig: &Path) -> anyhow::Result<()> {
    let netns = std::fs::File::open(cluster.nodes[0].ns.path())?;
    let (kubeconfig, node) = (kubeconfig.to_owned(), cluster.nodes[0].name.clone());
    let renewal = std::thread::spawn(move || -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        #[expect(unsafe_code, reason = "setns(2) moves only this thread, into a namespace whose fd it holds open")]
        let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        ensure!(rc == 0, "setns into the node's namespace: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let (_client, rotation) = skiff_node::node::bootstrap::rotating_client(&kubeconfig, None, &node)?;
            rotation.renew().await?;
            anyhow::Ok(())
        })
    });
    renewal.join().map_err(|_| anyhow::anyhow!("the renewal thread panicked"))?
}

#[test]
fn oom_fallback_message_fs_group_orphans_and_certificate_renewal() {
    if !require_privileges("oom_fallback_message_fs_group_orphans_and_certificate_renewal") {
        return;
    }
    let images = vec![ok("pause image", pause_image()), ok("echo image", echo_image())];
    let started = Instant::now();
    let mut cluster = ok("starting the cluster", Cluster::start(&unique_tag("lc"), 1, &images));
    eprintln!("cluster up after {:?}", started.elapsed());
    ok("apply pods", cluster.apply(PODS));
    assert!(
        wait_until(Duration::from_secs(30), || ready(&cluster, "grouped") && ready(&cluster, "orphan")),
        "grouped and orphan never became ready:\n{}\n{}",
        cluster.kubectl_out(&["get", "pods", "-o", "wide"]),
        cluster.logs()
    );

    // fsGroup: the container is in the group; the ConfigMap's file and the emptyDir
    // belong to it (group read; setgid on the emptyDir).
    let pid = container_pid(&cluster, "grouped").expect("the grouped container's process");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap_or_default();
    assert!(groups.split_whitespace().any(|g| g == FS_GROUP.to_string()), "the container's {groups:?}");
    let root = format!("/proc/{pid}/root");
    let file = std::fs::metadata(format!("{root}/etc/cfg/color")).expect("the ConfigMap's file");
    assert_eq!(file.gid(), FS_GROUP, "group of the ConfigMap's file");
    assert_eq!(file.permissions().mode() & 0o040, 0o040, "group read on the ConfigMap's file");
    assert_eq!(std::fs::read_to_string(format!("{root}/etc/cfg/color")).unwrap(), "green");
    let scratch = std::fs::metadata(format!("{root}/scratch")).expect("the emptyDir");
    assert_eq!(scratch.gid(), FS_GROUP, "group of the emptyDir");
    assert_eq!(scratch.permissions().mode() & 0o2000, 0o2000, "setgid on the emptyDir");

    // A pod force-deleted while the agent is down: once the agent is back, its sandbox
    // and containers leave containerd, and its IP is released (CNI DEL ran).
    let orphan_uid = field(&cluster, "orphan", ".metadata.uid");
    let orphan_ip = field(&cluster, "orphan", ".status.podIP");
    let orphan_container = field(&cluster, "orphan", ".status.containerStatuses[0].containerID");
    let orphan_container = orphan_container.trim_start_matches("containerd://").to_owned();
    assert!(!orphan_uid.is_empty() && !orphan_container.is_empty(), "orphan has no uid or container");
    assert!(ip_allocated(&cluster, &orphan_ip), "the orphan's IP {orphan_ip} is not in the node's IPAM state");
    let host_dirs = [
        cluster.nodes[0].root_dir.join("pods").join(&orphan_uid),
        cluster.nodes[0].pod_log_dir.join(format!("default_orphan_{orphan_uid}")),
    ];
    assert!(host_dirs.iter().all(|d| d.is_dir()), "the orphan's directories are not where expected: {host_dirs:?}");
    cluster.nodes[0].kill_agent();
    ok(
        "force delete orphan",
        cluster.kubectl_ok(&["delete", "pod", "orphan", "--grace-period=0", "--force", "--wait=false"]),
    );
    ok("restart the agent", cluster.nodes[0].start_agent());
    let mut cri = ok("CRI client", cluster.nodes[0].containerd.cri());
    let sandboxes_of_orphan = |cri: &mut skiff_tests::cri::CriClient| {
        ok("list sandboxes", cri.list_pod_sandboxes())
            .iter()
            .filter(|s| s.metadata.as_ref().is_some_and(|m| m.uid == orphan_uid))
            .count()
    };
    let containers =
        |cluster: &Cluster| ok("ctr containers", cluster.nodes[0].containerd.ctr(&["containers", "ls", "-q"]));
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || sandboxes_of_orphan(&mut cri) == 0
            && !containers(&cluster).contains(&orphan_container)
            && !ip_allocated(&cluster, &orphan_ip)),
        "the orphan's sandbox, container or IP stayed: sandboxes {}, container left {}, IP allocated {}\n{}",
        sandboxes_of_orphan(&mut cri),
        containers(&cluster).contains(&orphan_container),
        ip_allocated(&cluster, &orphan_ip),
        cluster.logs()
    );
    eprintln!("orphan removed {:?} after the agent restart", t.elapsed());
    let orphan_running = ok("ctr tasks", cluster.nodes[0].containerd.ctr(&["tasks", "ls"])).contains(&orphan_container);
    assert!(!orphan_running, "the orphan's container still runs");
    // What it had on the host goes with it: its pod directory and its logs.
    assert!(
        wait_until(Duration::from_secs(5), || host_dirs.iter().all(|d| !d.exists())),
        "the orphan's directories stayed: {host_dirs:?}"
    );
    assert!(ready(&cluster, "grouped"), "the agent restart disturbed the grouped pod");

    // OOM: the status says OOMKilled in lastState, and an OOMKilled event names the
    // container, once per killed instance.
    let oom_last = || field(&cluster, "hog", ".status.containerStatuses[0].lastState.terminated.reason") == "OOMKilled";
    assert!(
        wait_until(Duration::from_secs(30), || oom_last() && !events(&cluster, "hog", "OOMKilled").is_empty()),
        "no OOMKilled lastState or event for hog:\n{}\nevents:\n{}\n{}",
        cluster.kubectl_out(&["get", "pod", "hog", "-o", "yaml"]),
        cluster.kubectl_out(&["get", "events", "--field-selector", "involvedObject.name=hog"]),
        cluster.logs()
    );
    // The events go out as soon as a kill is seen, the restart count with the pod's
    // status, which the kubelet writes beside its work: give the count time to catch up.
    let restarts =
        || -> usize { field(&cluster, "hog", ".status.containerStatuses[0].restartCount").parse().unwrap_or(0) };
    // The agent was restarted above while hog was being killed: an instance whose
    // OOMKilled state had not reached the API yet is announced once more by the new
    // agent, so one event beyond one per instance is allowed.
    let allowed = |restarts: usize| restarts + 2;
    wait_until(Duration::from_secs(10), || events(&cluster, "hog", "OOMKilled").len() <= allowed(restarts()));
    let oom_events = events(&cluster, "hog", "OOMKilled");
    let restarts = restarts();
    assert!(
        oom_events.iter().all(|m| m.contains("Container app") && m.contains("16Mi")),
        "OOMKilled events: {oom_events:?}"
    );
    assert!(
        oom_events.len() <= allowed(restarts),
        "{} OOMKilled events for {} instances: {oom_events:?}",
        oom_events.len(),
        restarts + 1
    );
    assert_eq!(field(&cluster, "hog", ".status.containerStatuses[0].lastState.terminated.exitCode"), "137");

    // FallbackToLogsOnError: a failed container with an empty termination log gets the
    // tail of its log as its message.
    let message = || field(&cluster, "failing", ".status.containerStatuses[0].state.terminated.message");
    assert!(
        wait_until(Duration::from_secs(20), || message().contains("last words of failing")),
        "failing's message is {:?}:\n{}",
        message(),
        cluster.kubectl_out(&["get", "pod", "failing", "-o", "yaml"])
    );
    assert_eq!(field(&cluster, "failing", ".status.phase"), "Failed");

    // The node's client certificate is renewed with the current one as credentials
    // (approved as selfnodeclient), and the new one works before it is taken.
    let node = cluster.nodes[0].name.clone();
    let copy = cluster.dir.join("renewed.kubeconfig");
    std::fs::copy(cluster.dir.join(&node).join("kubeconfig"), &copy).unwrap();
    let before = std::fs::read_to_string(&copy).unwrap();
    ok("renewing the node's certificate", renew_in_node_netns(&cluster, &copy));
    assert_ne!(std::fs::read_to_string(&copy).unwrap(), before, "the kubeconfig was not rewritten");
    let requesters = cluster.kubectl_out(&["get", "csr", "-o", "jsonpath={.items[*].spec.username}"]);
    assert!(
        requesters.split_whitespace().any(|u| u == format!("system:node:{node}")),
        "no CSR sent as the node itself: {requesters}"
    );
    eprintln!("all checks passed after {:?}", started.elapsed());
}
