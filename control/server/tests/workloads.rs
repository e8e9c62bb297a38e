//! End-to-end test of the ReplicaSet and Deployment controllers with the real kubectl
//! (v1.32 as `kubectl.1.32`, else `kubectl` on PATH, or `$SKIFF_KUBECTL`) against
//! `skiff-control` on 127.0.0.1.
//!
//! No kubelet runs here, so the test plays it with the *fake node client* of
//! `support::fake_kubelet` (two Ready Nodes; pods bound, reported Running and Ready,
//! deletions completed, as a kubelet does). A sampler
//! records how many pods exist and are ready during rollouts to check the surge and
//! unavailability bounds.
//!
//! Every process is killed and every task stopped on drop; every loop is bounded.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use skiff_api::{Client, ListParams};
use support::Server;
use support::fake_kubelet::{fake_kubelet, register_nodes};

/// Pod counts seen by the sampler while a rollout runs.
#[derive(Debug, Default, Clone)]
struct Samples {
    count: u32,
    max_live: usize,
    min_ready: usize,
    /// The most distinct images among live pods at one instant.
    max_images: usize,
}

/// The fake nodes and the sampler, on their own runtime; stopped and joined on drop.
struct FakeCluster {
    stop: Arc<AtomicBool>,
    sampling: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
    selector: Arc<Mutex<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeCluster {
    fn start(kubeconfig: &Path) -> Self {
        let client = Client::from_kubeconfig(kubeconfig, "workloads-test/fake-node").expect("admin kubeconfig");
        let stop = Arc::new(AtomicBool::new(false));
        let sampling = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Samples::default()));
        let selector = Arc::new(Mutex::new("app=web".to_string()));
        let (st, sa, sm, sel) = (stop.clone(), sampling.clone(), samples.clone(), selector.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                register_nodes(&client).await;
                let kubelet = tokio::spawn(fake_kubelet(client.clone(), st.clone(), Duration::ZERO));
                let sampler = tokio::spawn(sampler(client, st.clone(), sa, sm, sel));
                let _ = kubelet.await;
                let _ = sampler.await;
            });
        });
        Self { stop, sampling, samples, selector, thread: Some(thread) }
    }

    /// Starts sampling pods with this label selector from now on.
    fn sample_pods(&self, selector: &str) -> Samples {
        *self.selector.lock().unwrap() = selector.to_string();
        self.sample(true)
    }

    /// Starts a fresh sampling window (`true`), or ends it and returns what it saw.
    fn sample(&self, on: bool) -> Samples {
        if on {
            *self.samples.lock().unwrap() = Samples { min_ready: usize::MAX, ..Default::default() };
        }
        self.sampling.store(on, Ordering::SeqCst);
        self.samples.lock().unwrap().clone()
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// While sampling is on, records the most live (not terminating) `app=web` pods and
/// the fewest ready ones, every 50 ms.
async fn sampler(
    client: Client,
    stop: Arc<AtomicBool>,
    on: Arc<AtomicBool>,
    out: Arc<Mutex<Samples>>,
    selector: Arc<Mutex<String>>,
) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !on.load(Ordering::SeqCst) {
            continue;
        }
        let params = ListParams::default().labels(selector.lock().unwrap().clone());
        let Ok((pods, _)) = client.list_all::<Pod>(Some("default"), &params).await else {
            continue;
        };
        let live: Vec<&Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        let ready = live
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if on.load(Ordering::SeqCst) {
            let mut s = out.lock().unwrap();
            s.count += 1;
            s.max_live = s.max_live.max(live.len());
            s.min_ready = s.min_ready.min(ready);
            let images: std::collections::BTreeSet<_> =
                live.iter().filter_map(|p| p.spec.as_ref()?.containers.first()?.image.clone()).collect();
            s.max_images = s.max_images.max(images.len());
        }
    }
}

fn web_pods(s: &Server) -> Vec<Value> {
    s.json(&["get", "pods", "-l", "app=web"])["items"].as_array().unwrap().clone()
}

fn ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn rs_by_image(s: &Server, image: &str) -> Value {
    let all = s.json(&["get", "rs", "-l", "app=web"]);
    all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rs| rs["spec"]["template"]["spec"]["containers"][0]["image"] == image)
        .unwrap_or_else(|| panic!("no ReplicaSet with image {image}: {all}"))
        .clone()
}

#[test]
fn deployment_rollout_undo_scale_with_kubectl() {
    let s = Server::start();
    let cluster = FakeCluster::start(&s.kubeconfig());
    s.wait_for(15, "two Ready nodes", || {
        let out = s.ok(&["get", "nodes"]);
        out.lines().filter(|l| l.contains(" Ready ")).count() == 2
    });

    let f = s.write("web.yaml", &support::web_manifest(3));
    let out = s.ok(&["apply", "-f", &f]);
    assert!(out.contains("deployment.apps/web created") && out.contains("service/web created"), "{out}");
    let out = s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");

    // The first revision: one ReplicaSet named by the template hash, owning 3 ready pods.
    let rs1 = rs_by_image(&s, "nginx:1.27");
    let rs1_name = rs1["metadata"]["name"].as_str().unwrap().to_string();
    let hash = rs1["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_string();
    assert_eq!(rs1_name, format!("web-{hash}"));
    assert_eq!(rs1["spec"]["selector"]["matchLabels"]["pod-template-hash"], hash);
    assert_eq!(rs1["spec"]["template"]["metadata"]["labels"]["pod-template-hash"], hash);
    assert_eq!(rs1["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    assert_eq!(rs1["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"], "3");
    assert_eq!(rs1["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"], "4");
    assert_eq!(rs1["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert_eq!(rs1["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(rs1["status"]["readyReplicas"], 3);
    let pods = web_pods(&s);
    assert_eq!(pods.len(), 3, "{pods:?}");
    for p in &pods {
        let o = &p["metadata"]["ownerReferences"][0];
        assert_eq!((o["kind"].as_str(), o["name"].as_str()), (Some("ReplicaSet"), Some(rs1_name.as_str())));
        assert_eq!((o["controller"].as_bool(), o["blockOwnerDeletion"].as_bool()), (Some(true), Some(true)));
        assert!(p["metadata"]["name"].as_str().unwrap().starts_with(&format!("{rs1_name}-")));
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], hash);
        assert!(p["status"]["podIP"].as_str().unwrap().starts_with("10.244."));
        assert!(ready(p));
    }

    let table = s.ok(&["get", "deploy", "web"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["web", "3/3", "3", "3"], "{table}");
    let table = s.ok(&["get", "pods", "-l", "app=web", "-o", "wide"]);
    assert_eq!(table.lines().filter(|l| l.contains("Running") && l.contains("1/1")).count(), 3, "{table}");
    let yaml = s.ok(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(yaml.contains("observedGeneration: 1") && yaml.contains("NewReplicaSetAvailable"), "{yaml}");
    assert!(yaml.contains("MinimumReplicasAvailable"), "{yaml}");
    let d = s.json(&["get", "deploy", "web"]);
    assert_eq!(d["status"]["updatedReplicas"], 3);
    assert_eq!(d["status"]["availableReplicas"], 3);
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");

    // `get -w` streams pods; kubectl is killed after a few seconds whatever happens.
    let mut w = s
        .cmd()
        .args(["get", "pods", "-l", "app=web", "--watch", "--request-timeout=6s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = w.kill();
    let out = w.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().filter(|l| l.starts_with(&format!("{rs1_name}-"))).count() >= 3, "{text}");

    let desc = s.ok(&["describe", "deployment", "web"]);
    assert!(desc.contains("ScalingReplicaSet"), "{desc}");
    assert!(desc.contains(&format!("Scaled up replica set {rs1_name} from 0 to 3")), "{desc}");
    let desc = s.ok(&["describe", "rs", &rs1_name]);
    assert!(desc.contains("SuccessfulCreate"), "{desc}");

    // A new image rolls out within maxSurge 1 / maxUnavailable 0 (25% of 3, rounded).
    cluster.sample(true);
    s.ok(&["set", "image", "deployment/web", "web=nginx:1.28"]);
    let out = s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let seen = cluster.sample(false);
    eprintln!("set image: {seen:?}");
    assert!(seen.count >= 3, "the sampler ran: {seen:?}");
    assert!(seen.max_live <= 4, "more than replicas + maxSurge pods: {seen:?}");
    assert!(seen.min_ready >= 3, "fewer than replicas - maxUnavailable ready pods: {seen:?}");
    let rs2 = rs_by_image(&s, "nginx:1.28");
    assert_eq!(rs2["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");
    assert_eq!(rs2["spec"]["replicas"], 3);
    assert_eq!(rs_by_image(&s, "nginx:1.27")["spec"]["replicas"], 0);
    s.wait_for(20, "only new pods", || {
        let pods = web_pods(&s);
        pods.len() == 3 && pods.iter().all(|p| p["spec"]["containers"][0]["image"] == "nginx:1.28" && ready(p))
    });
    let desc = s.ok(&["describe", "deployment", "web"]);
    assert!(desc.contains(&format!("Scaled down replica set {rs1_name}")), "{desc}");

    let hist = s.ok(&["rollout", "history", "deployment/web"]);
    let revs: Vec<&str> =
        hist.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| w.parse::<u32>().is_ok()).collect();
    assert_eq!(revs, ["1", "2"], "{hist}");
    let rev1 = s.ok(&["rollout", "history", "deployment/web", "--revision=1"]);
    assert!(rev1.contains("nginx:1.27"), "{rev1}");

    // Undo: the first ReplicaSet is reused (revision 3) and scales back up.
    cluster.sample(true);
    let out = s.ok(&["rollout", "undo", "deployment/web"]);
    assert!(out.contains("rolled back"), "{out}");
    let out = s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let seen = cluster.sample(false);
    eprintln!("undo: {seen:?}");
    assert!(seen.count >= 3 && seen.max_live <= 4 && seen.min_ready >= 3, "{seen:?}");
    let d = s.json(&["get", "deploy", "web"]);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.27");
    let rs1 = rs_by_image(&s, "nginx:1.27");
    assert_eq!(rs1["metadata"]["name"], rs1_name.as_str(), "the old ReplicaSet is reused, not recreated");
    assert_eq!(rs1["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    assert_eq!(rs1["spec"]["replicas"], 3);
    assert_eq!(rs_by_image(&s, "nginx:1.28")["spec"]["replicas"], 0);
    s.wait_for(20, "the old image back on every pod", || {
        let pods = web_pods(&s);
        pods.len() == 3 && pods.iter().all(|p| p["spec"]["containers"][0]["image"] == "nginx:1.27" && ready(p))
    });
    let hist = s.ok(&["rollout", "history", "deployment/web"]);
    let revs: Vec<&str> =
        hist.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| w.parse::<u32>().is_ok()).collect();
    assert_eq!(revs, ["2", "3"], "{hist}");

    // Scaling.
    assert!(s.ok(&["scale", "deployment/web", "--replicas=5"]).contains("scaled"));
    s.wait_for(30, "5 ready pods", || {
        let pods = web_pods(&s);
        let d = s.json(&["get", "deploy", "web"]);
        pods.iter().filter(|p| ready(p)).count() == 5 && pods.len() == 5 && d["status"]["readyReplicas"] == 5
    });
    let out = s.ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    assert!(s.ok(&["scale", "deployment/web", "--replicas=2"]).contains("scaled"));
    s.wait_for(30, "2 pods", || web_pods(&s).len() == 2);

    // Deleting the Deployment is the API server's and garbage collector's business;
    // the controllers must simply not recreate it or fail.
    assert!(s.ok(&["delete", "deployment", "web"]).contains("deleted"));
    let out = s.run(&["get", "deployment", "web"]);
    assert!(!out.status.success());
    drop(cluster);
}

#[test]
fn replicaset_adopts_orphans_and_replaces_deleted_pods() {
    let s = Server::start();
    let _cluster = FakeCluster::start(&s.kubeconfig());
    // An orphan that matches the selector is adopted and counts as a replica.
    s.ok(&["run", "orphan", "--image=busybox", "--labels=app=cache", "--restart=Always"]);
    let rs = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: cache
spec:
  replicas: 2
  selector:
    matchLabels: {app: cache}
  template:
    metadata:
      labels: {app: cache}
    spec:
      containers:
      - name: c
        image: busybox
"#;
    let f = s.write("rs.yaml", rs);
    s.ok(&["apply", "-f", &f]);
    s.wait_for(20, "2 ready cache pods", || {
        let rs = s.json(&["get", "rs", "cache"]);
        rs["status"]["readyReplicas"] == 2 && rs["status"]["observedGeneration"] == 1
    });
    let pods = s.json(&["get", "pods", "-l", "app=cache"]);
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(pods.len(), 2, "{pods:?}");
    let orphan = pods.iter().find(|p| p["metadata"]["name"] == "orphan").expect("the orphan was kept");
    assert_eq!(orphan["metadata"]["ownerReferences"][0]["name"], "cache");

    // A deleted pod is replaced; a relabelled one is released and replaced.
    s.ok(&["delete", "pod", "orphan", "--wait=false"]);
    s.ok(&["label", "pod", "-l", "app=cache", "app=other", "--overwrite"]);
    s.wait_for(20, "2 fresh ready cache pods", || {
        let pods = s.json(&["get", "pods", "-l", "app=cache"]);
        let rs = s.json(&["get", "rs", "cache"]);
        pods["items"].as_array().unwrap().len() == 2 && rs["status"]["readyReplicas"] == 2
    });
    let released = s.json(&["get", "pods", "-l", "app=other"]);
    for p in released["items"].as_array().unwrap() {
        assert!(p["metadata"]["ownerReferences"].as_array().is_none_or(|r| r.is_empty()), "released: {p}");
    }
    let desc = s.ok(&["describe", "rs", "cache"]);
    assert!(desc.contains("SuccessfulCreate"), "{desc}");
}

const REC: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: rec
spec:
  replicas: 2
  revisionHistoryLimit: 1
  strategy: {type: Recreate}
  selector:
    matchLabels: {app: rec}
  template:
    metadata:
      labels: {app: rec}
    spec:
      containers:
      - name: c
        image: busybox:1
"#;

fn images(s: &Server, selector: &str) -> Vec<String> {
    let pods = s.json(&["get", "pods", "-l", selector]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn recreate_strategy_and_pause_resume() {
    let s = Server::start();
    let cluster = FakeCluster::start(&s.kubeconfig());
    let f = s.write("rec.yaml", REC);
    s.ok(&["apply", "-f", &f]);
    let out = s.ok(&["rollout", "status", "deployment/rec", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");

    // Recreate: the old pods are all gone before any new one exists.
    cluster.sample_pods("app=rec");
    s.ok(&["set", "image", "deployment/rec", "c=busybox:2"]);
    let out = s.ok(&["rollout", "status", "deployment/rec", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let seen = cluster.sample(false);
    eprintln!("recreate: {seen:?}");
    assert!(seen.count >= 3 && seen.max_images == 1 && seen.max_live <= 2, "old and new pods overlapped: {seen:?}");
    s.wait_for(20, "two busybox:2 pods", || images(&s, "app=rec") == ["busybox:2", "busybox:2"]);

    // Paused: a template change makes no new ReplicaSet, but scaling still applies.
    s.ok(&["rollout", "pause", "deployment/rec"]);
    s.ok(&["set", "image", "deployment/rec", "c=busybox:3"]);
    s.ok(&["scale", "deployment/rec", "--replicas=3"]);
    s.wait_for(20, "3 busybox:2 pods while paused", || images(&s, "app=rec") == ["busybox:2"; 3]);
    let rss = s.json(&["get", "rs", "-l", "app=rec"]);
    assert_eq!(rss["items"].as_array().unwrap().len(), 2, "no ReplicaSet for the paused template: {rss}");
    let d = s.json(&["get", "deploy", "rec"]);
    let progressing =
        d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Progressing").cloned();
    assert_eq!(progressing.as_ref().map(|c| c["reason"].clone()), Some(json!("DeploymentPaused")), "{d}");

    cluster.sample_pods("app=rec");
    s.ok(&["rollout", "resume", "deployment/rec"]);
    let out = s.ok(&["rollout", "status", "deployment/rec", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let seen = cluster.sample(false);
    assert!(seen.max_images == 1, "{seen:?}");
    s.wait_for(20, "three busybox:3 pods", || images(&s, "app=rec") == ["busybox:3"; 3]);
    // revisionHistoryLimit 1: the oldest idle ReplicaSet is deleted, one is kept for undo.
    s.wait_for(20, "history trimmed to one old ReplicaSet", || {
        let hist = s.ok(&["rollout", "history", "deployment/rec"]);
        let revs: Vec<String> = hist
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.parse::<u32>().is_ok())
            .map(String::from)
            .collect();
        revs == ["2", "3"]
    });
}
