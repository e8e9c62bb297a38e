//! Persistent storage on a real node: a claim of the default `local-path` class gets a
//! directory on the node its pod is scheduled to, a file a pod writes there is read by
//! the next pod of the claim, a claim in use is not deleted under its pod, and deleting
//! the claim deletes the volume and its directory. skiff-control and a node (containerd, skiff-node) in network namespaces
//! of their own, driven through kubectl 1.32.
//!
//! Needs root (namespaces, containerd, BPF); skips without it, fails under CI=true.

use std::path::PathBuf;
use std::time::Duration;

use skiff_tests::cluster::Cluster;
use skiff_tests::image::{echo_image, pause_image};
use skiff_tests::netns::wait_until;
use skiff_tests::{ok, require_privileges, unique_tag};

const CLAIM: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 100Mi}}
"#;

/// A pod of the claim, mounting it at /data (read-only when `read_only`).
fn pod(name: &str, read_only: bool) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {{runAsUser: 1000}}
  containers:
  - name: app
    image: localhost/skiff/echo:1
    command: ["/skiff-echo", "serve", "--name", "{name}", "--tcp", "8080"]
    volumeMounts: [{{name: data, mountPath: /data, readOnly: {read_only}}}]
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: data}}
"#
    )
}

fn running(cluster: &Cluster, pod: &str) -> bool {
    cluster.kubectl_out(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"]) == "Running"
}

fn wait_running(cluster: &Cluster, pod: &str) {
    assert!(
        wait_until(Duration::from_secs(90), || running(cluster, pod)),
        "pod {pod} never ran:\n{}\n{}\n{}",
        cluster.kubectl_out(&["describe", "pod", pod]),
        cluster.kubectl_out(&["describe", "pvc", "data"]),
        cluster.logs()
    );
}

fn delete_pod(cluster: &Cluster, pod: &str) {
    ok("delete pod", cluster.kubectl_ok(&["delete", "pod", pod, "--wait=false"]));
    assert!(
        wait_until(Duration::from_secs(60), || !cluster.kubectl(&["get", "pod", pod]).status.success()),
        "pod {pod} was never deleted:\n{}",
        cluster.logs()
    );
}

#[test]
fn a_claim_keeps_its_data_across_pods_and_goes_with_its_volume() {
    if !require_privileges("a_claim_keeps_its_data_across_pods_and_goes_with_its_volume") {
        return;
    }
    let images = vec![ok("pause image", pause_image()), ok("echo image", echo_image())];
    let cluster = ok("starting the cluster", Cluster::start(&unique_tag("st"), 1, &images));
    let node = &cluster.nodes[0];

    // The default class waits for the first pod; then the volume is made on its node.
    ok("apply claim", cluster.apply(CLAIM));
    assert_eq!(cluster.kubectl_out(&["get", "pvc", "data", "-o", "jsonpath={.spec.storageClassName}"]), "local-path");
    ok("apply writer", cluster.apply(&pod("writer", false)));
    wait_running(&cluster, "writer");
    let volume = cluster.kubectl_out(&["get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}"]);
    assert!(volume.starts_with("pvc-"), "claim bound to {volume:?}");
    let path = cluster.kubectl_out(&["get", "pv", &volume, "-o", "jsonpath={.spec.hostPath.path}"]);
    let dir = node.local_path_dir.join(&volume);
    assert_eq!(PathBuf::from(&path), dir, "the volume lives in the node's --local-path-dir");
    assert_eq!(
        cluster.kubectl_out(&[
            "get",
            "node",
            &node.name,
            "-o",
            "jsonpath={.metadata.annotations.skiff\\.io/local-path-dir}"
        ]),
        node.local_path_dir.to_string_lossy()
    );

    // A pod running as a user (not root) writes into the volume.
    ok(
        "writing through the volume",
        cluster.kubectl_ok(&["exec", "writer", "--", "/skiff-echo", "write", "/data/note.txt", "kept across pods"]),
    );
    assert_eq!(std::fs::read_to_string(dir.join("note.txt")).unwrap_or_default(), "kept across pods");
    delete_pod(&cluster, "writer");
    assert!(dir.join("note.txt").is_file(), "the data outlives the pod");

    // The next pod of the claim reads it; mounted read-only, it cannot write.
    ok("apply reader", cluster.apply(&pod("reader", true)));
    wait_running(&cluster, "reader");
    let read = ok("reading", cluster.kubectl_ok(&["exec", "reader", "--", "/skiff-echo", "read", "/data/note.txt"]));
    assert_eq!(read, "kept across pods");
    let refused = cluster.kubectl(&["exec", "reader", "--", "/skiff-echo", "write", "/data/other.txt", "x"]);
    assert!(!refused.status.success(), "a read-only mount took a write");

    // A claim in use stays (Terminating) while its pod runs; once the pod is gone, the
    // claim goes, the volume follows (reclaim policy Delete), and the node removes its
    // directory.
    ok("delete claim", cluster.kubectl_ok(&["delete", "pvc", "data", "--wait=false"]));
    std::thread::sleep(Duration::from_secs(3));
    assert!(cluster.kubectl(&["get", "pv", &volume]).status.success(), "the volume went while a pod used it");
    assert!(dir.join("note.txt").is_file());
    delete_pod(&cluster, "reader");
    assert!(
        wait_until(Duration::from_secs(30), || !cluster.kubectl(&["get", "pvc", "data"]).status.success()),
        "claim data was not deleted:\n{}",
        cluster.logs()
    );
    assert!(
        wait_until(Duration::from_secs(30), || !cluster.kubectl(&["get", "pv", &volume]).status.success()),
        "volume {volume} was not deleted:\n{}",
        cluster.logs()
    );
    assert!(
        wait_until(Duration::from_secs(30), || !dir.exists()),
        "the node kept {} after its volume was deleted:\n{}",
        dir.display(),
        cluster.logs()
    );
}
