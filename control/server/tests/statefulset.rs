//! End-to-end test of the StatefulSet controller with the real kubectl (v1.32) against
//! `skiff-control` on 127.0.0.1, its pods served by the fake kubelet of
//! `support::fake_kubelet` (which makes them Ready after a delay, as a readiness probe
//! would, so the order of creation is observable). A sampler lists the set's pods
//! every 50 ms; the assertions on order are made on those consistent snapshots.
//!
//! Every process is killed and every task stopped on drop; every loop is bounded.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use skiff_api::ListParams;
use support::Server;
use support::fake_kubelet::FakeKubelet;

/// What a snapshot shows of one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    ready: bool,
    terminating: bool,
}

/// One consistent list of the set's pods: ordinal → state.
type Snapshot = BTreeMap<u32, Seen>;

/// Lists `app=web` pods every 50 ms while on; stopped and joined on drop.
struct Sampler {
    stop: Arc<AtomicBool>,
    snaps: Arc<Mutex<Vec<Snapshot>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(s: &Server) -> Self {
        let client = s.client();
        let stop = Arc::new(AtomicBool::new(false));
        let snaps = Arc::new(Mutex::new(Vec::new()));
        let (st, sn) = (stop.clone(), snaps.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                while !st.load(Ordering::SeqCst) {
                    let params = ListParams::default().labels("app=web");
                    if let Ok((pods, _)) = client.list_all::<Pod>(Some("default"), &params).await {
                        sn.lock().unwrap().push(snapshot(&pods));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        });
        Self { stop, snaps, thread: Some(thread) }
    }

    /// The snapshots since the last call.
    fn take(&self) -> Vec<Snapshot> {
        std::mem::take(&mut *self.snaps.lock().unwrap())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn snapshot(pods: &[Pod]) -> Snapshot {
    pods.iter()
        .filter_map(|p| {
            let ord = p.metadata.name.as_deref()?.strip_prefix("web-")?.parse().ok()?;
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Some((ord, Seen { ready, terminating: p.metadata.deletion_timestamp.is_some() }))
        })
        .collect()
}

const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: nginx
spec:
  clusterIP: None
  selector: {app: web}
  ports:
  - port: 80
"#;

/// The `web` StatefulSet behind the headless Service `nginx` (as JSON, which kubectl
/// applies as well as YAML), with `extra` merged into its spec.
fn web_set(policy: &str, extra: Value) -> String {
    let mut set = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web"},
        "spec": {
            "serviceName": "nginx", "replicas": 3, "podManagementPolicy": policy,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27",
                    "volumeMounts": [{"name": "www", "mountPath": "/usr/share/nginx/html"}]}]},
            },
            "volumeClaimTemplates": [{"metadata": {"name": "www"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        set["spec"][k] = v.clone();
    }
    set.to_string()
}

fn pods(s: &Server) -> Vec<Value> {
    let all = s.json(&["get", "pods", "-l", "app=web"]);
    all["items"].as_array().unwrap().iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).cloned().collect()
}

fn pod_names(s: &Server) -> Vec<String> {
    let mut names: Vec<String> = pods(s).iter().map(|p| p["metadata"]["name"].as_str().unwrap().into()).collect();
    names.sort();
    names
}

fn claims(s: &Server) -> Vec<String> {
    let out = s.ok(&["get", "pvc", "-o", "name"]);
    let mut v: Vec<String> = out.lines().map(|l| l.trim_start_matches("persistentvolumeclaim/").to_string()).collect();
    v.sort();
    v
}

/// `(name, image, revision label)` of each live pod, by name.
fn images(s: &Server) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = pods(s)
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["spec"]["containers"][0]["image"].as_str().unwrap().to_string(),
                p["metadata"]["labels"]["controller-revision-hash"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn all_ready(s: &Server, n: usize, image: &str) -> bool {
    let p = pods(s);
    p.len() == n
        && p.iter().all(|p| {
            p["spec"]["containers"][0]["image"] == image
                && p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
}

/// Revision numbers of the set's ControllerRevisions, by name.
fn revisions(s: &Server) -> BTreeMap<String, i64> {
    let all = s.json(&["get", "controllerrevisions", "-l", "app=web"]);
    all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["metadata"]["name"].as_str().unwrap().to_string(), r["revision"].as_i64().unwrap()))
        .collect()
}

fn start() -> (Server, FakeKubelet, Sampler) {
    let s = Server::start();
    let kubelet = FakeKubelet::start(&s.kubeconfig(), Duration::from_millis(800));
    s.wait_for(15, "two Ready nodes", || {
        s.ok(&["get", "nodes"]).lines().filter(|l| l.contains(" Ready ")).count() == 2
    });
    let sampler = Sampler::start(&s);
    (s, kubelet, sampler)
}

#[test]
fn ordered_statefulset_claims_recreate_scale_update_and_undo() {
    let (s, _kubelet, sampler) = start();
    s.apply("svc.yaml", SERVICE);
    let out = s.apply("web.json", &web_set("OrderedReady", json!({})));
    assert!(out.contains("statefulset.apps/web created"), "{out}");
    let out = s.ok(&["rollout", "status", "statefulset/web", "--timeout=90s"]);
    assert!(out.contains("partitioned roll out complete: 3 new pods have been updated"), "{out}");

    // In order: pod n+1 exists only once pod n is Ready, and web-0 was seen waiting.
    let snaps = sampler.take();
    for snap in &snaps {
        for (&ord, _) in snap.iter().filter(|(o, _)| **o > 0) {
            assert!(
                snap.get(&(ord - 1)).is_some_and(|p| p.ready),
                "web-{ord} exists before web-{} is Ready: {snap:?}",
                ord - 1
            );
        }
    }
    assert!(
        snaps.iter().any(|s| s.len() == 1 && s.get(&0).is_some_and(|p| !p.ready)),
        "web-0 was never seen alone and unready: {snaps:?}"
    );

    // Identity: names, labels, hostname/subdomain, a claim per ordinal.
    assert_eq!(pod_names(&s), ["web-0", "web-1", "web-2"]);
    for p in pods(&s) {
        let name = p["metadata"]["name"].as_str().unwrap();
        assert_eq!(p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"], name);
        assert_eq!(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"], &name[4..]);
        assert_eq!(p["spec"]["hostname"], name);
        assert_eq!(p["spec"]["subdomain"], "nginx");
        let vol = p["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "www").unwrap().clone();
        assert_eq!(vol["persistentVolumeClaim"]["claimName"], format!("www-{name}"));
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
    }
    assert_eq!(claims(&s), ["www-web-0", "www-web-1", "www-web-2"]);
    let revs = revisions(&s);
    assert_eq!(revs.len(), 1, "{revs:?}");
    let (rev1, n) = revs.iter().next().unwrap();
    assert_eq!(*n, 1);
    let set = s.json(&["get", "sts", "web"]);
    assert_eq!(set["status"]["currentRevision"], rev1.as_str());
    assert_eq!(set["status"]["updateRevision"], rev1.as_str());
    assert_eq!(set["status"]["readyReplicas"], 3);
    assert_eq!(set["status"]["availableReplicas"], 3);
    assert_eq!(set["status"]["observedGeneration"], 1);
    assert!(images(&s).iter().all(|(_, _, r)| r == rev1));
    let out = s.ok(&["get", "sts", "web"]);
    assert!(out.lines().nth(1).is_some_and(|l| l.contains("3/3")), "{out}");
    let desc = s.ok(&["describe", "sts", "web"]);
    assert!(desc.contains("3 Running / 0 Waiting / 0 Succeeded / 0 Failed"), "{desc}");
    assert!(desc.contains("create Claim www-web-2 Pod web-2 in StatefulSet web success"), "{desc}");

    // A deleted pod comes back under its name (with its claim).
    let uid = s.json(&["get", "pod", "web-1"])["metadata"]["uid"].clone();
    // Without waiting: kubectl could miss the deletion of a pod replaced this fast.
    s.ok(&["delete", "pod", "web-1", "--wait=false"]);
    s.wait_for(30, "web-1 recreated and Ready", || {
        let p = s.run(&["get", "pod", "web-1", "-o", "json"]);
        p.status.success()
            && serde_json::from_slice::<Value>(&p.stdout).is_ok_and(|p| p["metadata"]["uid"] != uid)
            && all_ready(&s, 3, "nginx:1.27")
    });

    // Rolling update with partition 1: web-2 then web-1, one at a time; web-0 stays.
    sampler.take();
    s.ok(&["patch", "sts", "web", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":1}}}}"#]);
    s.ok(&["set", "image", "statefulset/web", "nginx=nginx:1.28"]);
    let out = s.ok(&["rollout", "status", "statefulset/web", "--timeout=90s"]);
    assert!(out.contains("partitioned roll out complete: 2 new pods have been updated"), "{out}");
    let revs = revisions(&s);
    assert_eq!(revs.len(), 2, "{revs:?}");
    let rev2 = revs.iter().find(|(_, n)| **n == 2).unwrap().0.clone();
    let imgs = images(&s);
    assert_eq!(
        imgs,
        [
            ("web-0".into(), "nginx:1.27".into(), rev1.clone()),
            ("web-1".into(), "nginx:1.28".into(), rev2.clone()),
            ("web-2".into(), "nginx:1.28".into(), rev2.clone()),
        ]
    );
    for snap in sampler.take() {
        let down = snap.values().filter(|p| !p.ready || p.terminating).count() + 3 - snap.len();
        assert!(down <= 1, "more than one pod down during the update: {snap:?}");
    }
    let set = s.json(&["get", "sts", "web"]);
    assert_eq!(set["status"]["currentRevision"], rev1.as_str());
    assert_eq!(set["status"]["updateRevision"], rev2.as_str());
    assert_eq!(
        (set["status"]["currentReplicas"].as_i64(), set["status"]["updatedReplicas"].as_i64()),
        (Some(1), Some(2))
    );

    // Partition 0 finishes it; the update revision becomes current.
    s.ok(&["patch", "sts", "web", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#]);
    s.ok(&["rollout", "status", "statefulset/web", "--timeout=90s"]);
    s.wait_for(30, "all pods at nginx:1.28 and current", || {
        let set = s.json(&["get", "sts", "web"]);
        all_ready(&s, 3, "nginx:1.28") && set["status"]["currentRevision"] == rev2.as_str()
    });
    let out = s.ok(&["rollout", "history", "statefulset/web"]);
    let listed: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(listed.contains(&"1") && listed.contains(&"2"), "{out}");

    // Undo: back to the first template; its revision is renumbered 3.
    let out = s.ok(&["rollout", "undo", "statefulset/web"]);
    assert!(out.contains("rolled back"), "{out}");
    s.ok(&["rollout", "status", "statefulset/web", "--timeout=90s"]);
    s.wait_for(60, "all pods back at nginx:1.27", || {
        let set = s.json(&["get", "sts", "web"]);
        all_ready(&s, 3, "nginx:1.27") && set["status"]["currentRevision"] == rev1.as_str()
    });
    let revs = revisions(&s);
    assert_eq!((revs.get(rev1.as_str()), revs.get(&rev2)), (Some(&3), Some(&2)), "{revs:?}");
    let out = s.ok(&["rollout", "history", "statefulset/web", "--revision=3"]);
    assert!(out.contains("nginx:1.27"), "{out}");

    // Scale down to 1: web-2 goes, then web-1; their claims stay.
    sampler.take();
    s.ok(&["scale", "statefulset/web", "--replicas=1"]);
    s.wait_for(30, "only web-0 left", || {
        pod_names(&s) == ["web-0"] && s.json(&["get", "sts", "web"])["status"]["replicas"] == 1
    });
    let snaps = sampler.take();
    for snap in &snaps {
        if snap.get(&1).is_some_and(|p| p.terminating) {
            assert!(!snap.contains_key(&2), "web-1 deleted before web-2 was gone: {snap:?}");
        }
    }
    assert!(!snaps.is_empty(), "the sampler ran");
    assert_eq!(claims(&s), ["www-web-0", "www-web-1", "www-web-2"]);

    // Deleted with --cascade=orphan and created again: the pod and the revisions are
    // adopted, so nothing restarts and no revision is added.
    let pod_uid = s.json(&["get", "pod", "web-0"])["metadata"]["uid"].clone();
    s.ok(&["delete", "statefulset", "web", "--cascade=orphan", "--timeout=60s"]);
    s.wait_for(30, "the set gone", || !s.run(&["get", "sts", "web"]).status.success());
    s.apply("web.json", &web_set("OrderedReady", json!({"replicas": 1})));
    let set_uid = s.json(&["get", "sts", "web"])["metadata"]["uid"].clone();
    s.wait_for(30, "pod and revisions adopted", || {
        let pod = s.json(&["get", "pod", "web-0"]);
        let revs = s.json(&["get", "controllerrevisions", "-l", "app=web"]);
        pod["metadata"]["ownerReferences"][0]["uid"] == set_uid
            && revs["items"].as_array().unwrap().iter().all(|r| r["metadata"]["ownerReferences"][0]["uid"] == set_uid)
            && s.json(&["get", "sts", "web"])["status"]["readyReplicas"] == 1
    });
    assert_eq!(s.json(&["get", "pod", "web-0"])["metadata"]["uid"], pod_uid, "web-0 was not restarted");
    assert_eq!(revisions(&s), revs, "no new revision");
    assert_eq!(s.json(&["get", "sts", "web"])["status"]["currentRevision"], rev1.as_str());

    // Deleting the set removes its pods (garbage collector) but keeps the claims.
    s.ok(&["delete", "statefulset", "web", "--timeout=60s"]);
    s.wait_for(30, "pods of the deleted set gone", || pod_names(&s).is_empty());
    assert_eq!(claims(&s), ["www-web-0", "www-web-1", "www-web-2"]);
    let desc = s.ok(&["get", "events", "--field-selector", "involvedObject.kind=StatefulSet"]);
    assert!(desc.contains("create Pod web-0 in StatefulSet web successful"), "{desc}");
}

#[test]
fn parallel_statefulset_creates_at_once_and_deletes_scaled_claims() {
    let (s, _kubelet, sampler) = start();
    s.apply("svc.yaml", SERVICE);
    let retention = json!({"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Retain"}});
    s.apply("web.json", &web_set("Parallel", retention));
    s.ok(&["rollout", "status", "statefulset/web", "--timeout=90s"]);
    let snaps = sampler.take();
    assert!(
        snaps.iter().any(|s| s.len() == 3 && s.values().all(|p| !p.ready)),
        "the three pods never existed together before being Ready: {snaps:?}"
    );
    assert_eq!(claims(&s), ["www-web-0", "www-web-1", "www-web-2"]);

    // A failed pod is replaced under its name.
    let uid = s.json(&["get", "pod", "web-0"])["metadata"]["uid"].clone();
    s.ok(&["patch", "pod", "web-0", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Failed"}}"#]);
    s.wait_for(30, "web-0 replaced", || {
        let p = s.json(&["get", "pods", "-l", "app=web"]);
        p["items"].as_array().unwrap().iter().any(|p| p["metadata"]["name"] == "web-0" && p["metadata"]["uid"] != uid)
            && all_ready(&s, 3, "nginx:1.27")
    });

    // whenScaled: Delete removes the claims of the pods scaled away.
    s.ok(&["scale", "statefulset/web", "--replicas=1"]);
    s.wait_for(30, "claims of web-1 and web-2 deleted", || pod_names(&s) == ["web-0"] && claims(&s) == ["www-web-0"]);
}
