//! End-to-end tests of the DaemonSet and Job controllers and the garbage collector
//! against a real `skiff-control` process on 127.0.0.1 (free port, temporary data dir),
//! through `skiff_api::Client` and, where a user would, the real kubectl (v1.32 when
//! installed as `kubectl.1.32`, else `kubectl` on PATH, or `$SKIFF_KUBECTL`).
//!
//! There is no kubelet: the tests act as one by writing pods/status, and finish graceful
//! deletions of bound pods themselves. Nodes are plain API objects. Every wait is
//! bounded in time, and the server is killed when its guard drops.

mod support;

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};
use skiff_api::{Client, ListParams, Patch};
use support::Server;

const NS: &str = "default";

/// Polls `f` every 200 ms until it returns `Some`, for at most `secs` seconds.
async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

async fn create_node(c: &Client, name: &str, taint: Option<(&str, &str)>) {
    let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
    if let Some((key, effect)) = taint {
        n["spec"] = json!({"taints": [{"key": key, "value": "x", "effect": effect}]});
    }
    c.create::<Node>(None, &from_json(n)).await.unwrap();
}

async fn pods_of(c: &Client, owner_uid: &str) -> Vec<Pod> {
    let (pods, _) = c.list_all::<Pod>(Some(NS), &ListParams::default()).await.unwrap();
    pods.into_iter().filter(|p| p.metadata.owner_references.iter().flatten().any(|o| o.uid == owner_uid)).collect()
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap()
}

fn node_of(p: &Pod) -> String {
    p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
}

/// A merge patch, retried (at most 20 times) on 409: skiff's PATCH currently treats the
/// resourceVersion it read as a precondition, so a concurrent controller write (the
/// DaemonSet status, say) makes it fail instead of being retried by the server.
async fn patch_retry<K>(c: &Client, ns: Option<&str>, name: &str, patch: Value)
where
    K: k8s_openapi::Resource + serde::de::DeserializeOwned,
{
    for _ in 0..20 {
        match c.patch::<K>(ns, name, None, &Patch::Merge(patch.clone())).await {
            Ok(_) => return,
            Err(e) if e.is_conflict() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("patching {} {name} failed: {e}", K::KIND),
        }
    }
    panic!("patching {} {name} kept conflicting", K::KIND);
}

/// Acts as the kubelet: sets the pod's phase, and for Running a Ready condition.
async fn set_phase(c: &Client, pod: &str, phase: &str) {
    let ready = if phase == "Running" { "True" } else { "False" };
    let status = json!({"status": {"phase": phase, "conditions": [
        {"type": "Ready", "status": ready, "lastTransitionTime": "2020-01-01T00:00:00Z"}]}});
    match c.patch::<Pod>(Some(NS), pod, Some("status"), &Patch::Merge(status)).await {
        // The controller may delete the pod meanwhile (a failed Job removes its active pods).
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => panic!("setting pod {pod} {phase}: {e}"),
    }
}

/// Acts as the kubelet for pods being deleted gracefully: confirms with grace 0.
async fn finish_deletions(c: &Client, pods: &[Pod]) {
    for p in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_some()) {
        let _ = c.delete::<Pod>(Some(NS), &name(p), Some(&json!({"gracePeriodSeconds": 0}))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_one_pod_per_eligible_node() {
    let s = Server::start_with(&[]);
    let c = s.client();
    for n in ["n1", "n2", "n3"] {
        create_node(&c, n, None).await;
    }
    let ds: DaemonSet = from_json(json!({"metadata": {"name": "agent"}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}},
                     "spec": {"containers": [{"name": "a", "image": "busybox:1.36"}]}}}}));
    let ds = c.create(Some(NS), &ds).await.unwrap();
    let uid = ds.metadata.uid.clone().unwrap();

    let on_nodes = |want: Vec<&'static str>| {
        let (c, uid) = (c.clone(), uid.clone());
        async move {
            let pods: Vec<Pod> =
                pods_of(&c, &uid).await.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
            let mut nodes: Vec<String> = pods.iter().map(node_of).collect();
            nodes.sort();
            (nodes == want).then_some(pods)
        }
    };
    let pods = eventually("one pod on each of 3 nodes", 30, || on_nodes(vec!["n1", "n2", "n3"])).await;
    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        let tolerated: Vec<_> = spec.tolerations.iter().flatten().filter_map(|t| t.key.clone()).collect();
        assert!(tolerated.contains(&"node.kubernetes.io/not-ready".to_string()), "{tolerated:?}");
        assert!(tolerated.contains(&"node.kubernetes.io/unschedulable".to_string()), "{tolerated:?}");
        assert!(p.metadata.labels.as_ref().unwrap().contains_key("controller-revision-hash"));
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("DaemonSet", Some(true)));
    }

    create_node(&c, "n4", None).await;
    eventually("a pod on the new node", 30, || on_nodes(vec!["n1", "n2", "n3", "n4"])).await;
    create_node(&c, "tainted", Some(("dedicated", "NoSchedule"))).await;
    // The tainted node must stay without a pod while the DaemonSet is settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = on_nodes(vec!["n1", "n2", "n3", "n4"]).await.expect("no pod may go to the tainted node");

    for p in &pods {
        set_phase(&c, &name(p), "Running").await;
    }
    let st = eventually("DaemonSet status with 4 ready pods", 30, || {
        let c = c.clone();
        async move {
            let ds = c.get::<DaemonSet>(Some(NS), "agent").await.unwrap();
            let st = ds.status.clone()?;
            (st.number_available == Some(4) && st.observed_generation == ds.metadata.generation).then_some(st)
        }
    })
    .await;
    assert_eq!(
        (st.desired_number_scheduled, st.current_number_scheduled, st.number_ready, st.number_misscheduled),
        (4, 4, 4, 0)
    );
    assert_eq!(st.updated_number_scheduled, Some(4));
    let out = s.ok(&["rollout", "status", "ds/agent", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");

    // A removed node loses its pod (nobody is left to confirm a graceful deletion).
    c.delete::<Node>(None, "n4", None).await.unwrap();
    eventually("the pod of the removed node gone", 30, || on_nodes(vec!["n1", "n2", "n3"])).await;

    // A NoSchedule taint keeps the running pod (misscheduled); NoExecute evicts it.
    let taint = |effect: &str| json!({"spec": {"taints": [{"key": "dedicated", "value": "x", "effect": effect}]}});
    patch_retry::<Node>(&c, None, "n3", taint("NoSchedule")).await;
    eventually("n3's pod counted misscheduled", 30, || {
        let c = c.clone();
        async move {
            let st = c.get::<DaemonSet>(Some(NS), "agent").await.unwrap().status?;
            (st.number_misscheduled == 1 && st.desired_number_scheduled == 2).then_some(())
        }
    })
    .await;
    on_nodes(vec!["n1", "n2", "n3"]).await.expect("a NoSchedule taint does not evict");
    patch_retry::<Node>(&c, None, "n3", taint("NoExecute")).await;
    eventually("n3's pod evicted by the NoExecute taint", 30, || {
        let (c, uid) = (c.clone(), uid.clone());
        async move {
            let pods = pods_of(&c, &uid).await;
            finish_deletions(&c, &pods).await;
            (pods.iter().all(|p| node_of(p) != "n3")).then_some(())
        }
    })
    .await;
    patch_retry::<Node>(&c, None, "n3", json!({"spec": {"taints": null}})).await;
    let back = eventually("a pod back on n3", 30, || on_nodes(vec!["n1", "n2", "n3"])).await;
    for p in back.iter().filter(|p| node_of(p) == "n3") {
        set_phase(&c, &name(p), "Running").await;
    }

    // Rolling update: a template change replaces every pod, at most one unavailable.
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}});
    patch_retry::<DaemonSet>(&c, Some(NS), "agent", patch).await;
    eventually("all pods at the new revision and available", 60, || {
        let (c, uid) = (c.clone(), uid.clone());
        async move {
            let pods = pods_of(&c, &uid).await;
            let live: Vec<&Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
            let terminating = pods.len() - live.len();
            assert!(terminating <= 1, "maxUnavailable 1 allows one pod down at a time, not {terminating}");
            finish_deletions(&c, &pods).await;
            for p in live.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running")) {
                set_phase(&c, &name(p), "Running").await;
            }
            let ds = c.get::<DaemonSet>(Some(NS), "agent").await.unwrap();
            let st = ds.status?;
            (st.observed_generation == ds.metadata.generation
                && st.updated_number_scheduled == Some(3)
                && st.number_available == Some(3)
                && live.len() == 3)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_and_expire() {
    let s = Server::start_with(&[]);
    let c = s.client();
    let job = |name: &str, completions: i32, parallelism: i32, extra: Value| -> Job {
        let mut j = json!({"metadata": {"name": name}, "spec": {
            "completions": completions, "parallelism": parallelism, "backoffLimit": 1,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "w", "image": "busybox:1.36"}]}}}});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                j["spec"][k] = v;
            }
        }
        from_json(j)
    };

    // completions 3, parallelism 2: two pods at a time, three successes in all.
    let work = c.create(Some(NS), &job("work", 3, 2, json!({}))).await.unwrap();
    let uid = work.metadata.uid.clone().unwrap();
    let first = eventually("2 active pods", 30, || {
        let (c, uid) = (c.clone(), uid.clone());
        async move {
            let pods = pods_of(&c, &uid).await;
            (pods.len() == 2).then_some(pods)
        }
    })
    .await;
    for p in &first {
        let labels = p.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get("batch.kubernetes.io/job-name").map(String::as_str), Some("work"));
        assert_eq!(labels.get("controller-uid"), Some(&uid));
        assert_eq!(p.spec.as_ref().unwrap().restart_policy.as_deref(), Some("Never"));
    }
    let done = eventually("job work Complete", 60, || {
        let (c, uid) = (c.clone(), uid.clone());
        async move {
            for p in pods_of(&c, &uid).await {
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded") {
                    set_phase(&c, &name(&p), "Succeeded").await;
                }
            }
            let j = c.get::<Job>(Some(NS), "work").await.unwrap();
            let conds = j.status.as_ref()?.conditions.clone()?;
            conds.iter().any(|c| c.type_ == "Complete" && c.status == "True").then_some(j)
        }
    })
    .await;
    let st = done.status.unwrap();
    assert_eq!((st.succeeded, st.failed, st.active), (Some(3), Some(0), Some(0)));
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert!(st.conditions.unwrap().iter().any(|c| c.type_ == "SuccessCriteriaMet" && c.status == "True"));
    assert_eq!(pods_of(&c, &uid).await.len(), 3, "exactly `completions` pods ran");

    // backoffLimit 1: the second failed pod fails the Job.
    let fails = c.create(Some(NS), &job("fails", 2, 2, json!({}))).await.unwrap();
    let fuid = fails.metadata.uid.clone().unwrap();
    let failed = eventually("job fails Failed", 60, || {
        let (c, uid) = (c.clone(), fuid.clone());
        async move {
            for p in pods_of(&c, &uid).await {
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed") {
                    set_phase(&c, &name(&p), "Failed").await;
                }
            }
            let j = c.get::<Job>(Some(NS), "fails").await.unwrap();
            j.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Failed" && c.status == "True").cloned()
        }
    })
    .await;
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));

    // ttlSecondsAfterFinished 0: the finished Job is deleted, and its pods with it (GC).
    let short = c.create(Some(NS), &job("short", 1, 1, json!({"ttlSecondsAfterFinished": 0}))).await.unwrap();
    let suid = short.metadata.uid.clone().unwrap();
    eventually("job short deleted after finishing, with its pod", 60, || {
        let (c, uid) = (c.clone(), suid.clone());
        async move {
            let pods = pods_of(&c, &uid).await;
            for p in &pods {
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded") {
                    set_phase(&c, &name(p), "Succeeded").await;
                }
            }
            let gone = c.get_opt::<Job>(Some(NS), "short").await.unwrap().is_none();
            (gone && pods.is_empty()).then_some(())
        }
    })
    .await;

    // activeDeadlineSeconds: a Job that runs too long fails with DeadlineExceeded.
    c.create(Some(NS), &job("slow", 1, 1, json!({"activeDeadlineSeconds": 2}))).await.unwrap();
    let reason = eventually("job slow DeadlineExceeded", 30, || {
        let c = c.clone();
        async move {
            let j = c.get::<Job>(Some(NS), "slow").await.unwrap();
            j.status?.conditions?.into_iter().find(|c| c.type_ == "Failed").and_then(|c| c.reason)
        }
    })
    .await;
    assert_eq!(reason, "DeadlineExceeded");
}

/// A ReplicaSet with no replicas (so a ReplicaSet controller leaves it alone) and two
/// hand-made pods that name it as a (non-controller) owner and do not match its selector.
async fn rs_with_pods(c: &Client, rs: &str, hold_first: bool) -> (String, [String; 2]) {
    let r: ReplicaSet = from_json(json!({"metadata": {"name": rs}, "spec": {"replicas": 0,
        "selector": {"matchLabels": {"app": rs}},
        "template": {"metadata": {"labels": {"app": rs}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}));
    let r = c.create(Some(NS), &r).await.unwrap();
    let uid = r.metadata.uid.clone().unwrap();
    let mut names = [String::new(), String::new()];
    for (i, slot) in names.iter_mut().enumerate() {
        let mut p = json!({"metadata": {"name": format!("{rs}-{i}"), "labels": {"hand-made": rs},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": uid,
                                 "blockOwnerDeletion": true}]},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}});
        if i == 0 && hold_first {
            p["metadata"]["finalizers"] = json!(["skiff.test/hold"]);
        }
        *slot = name(&c.create::<Pod>(Some(NS), &from_json(p)).await.unwrap());
    }
    (uid, names)
}

/// `kubectl delete rs NAME --cascade=...`.
fn delete_rs(s: &Server, rs: &str, cascade: &str) {
    s.ok(&["delete", "rs", rs, &format!("--cascade={cascade}"), "--wait=false"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_background_orphan_foreground() {
    let s = Server::start_with(&[]);
    let c = s.client();

    // Background (kubectl's default): the owner goes at once, the pods after it.
    let (_, bg) = rs_with_pods(&c, "bg", false).await;
    delete_rs(&s, "bg", "background");
    eventually("pods of a deleted ReplicaSet collected", 30, || {
        let (c, bg) = (c.clone(), bg.clone());
        async move {
            for p in &bg {
                if c.get_opt::<Pod>(Some(NS), p).await.unwrap().is_some() {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;

    // A pod whose owner never existed is collected too.
    let ghost: Pod = from_json(json!({"metadata": {"name": "ghost-child", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}]},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}));
    c.create(Some(NS), &ghost).await.unwrap();
    eventually("a pod with a nonexistent owner collected", 30, || {
        let c = c.clone();
        async move { c.get_opt::<Pod>(Some(NS), "ghost-child").await.unwrap().is_none().then_some(()) }
    })
    .await;

    // Orphan: the owner goes, the pods stay without the reference.
    let (_, or) = rs_with_pods(&c, "or", false).await;
    delete_rs(&s, "or", "orphan");
    eventually("orphaning ReplicaSet gone", 30, || {
        let c = c.clone();
        async move { c.get_opt::<ReplicaSet>(Some(NS), "or").await.unwrap().is_none().then_some(()) }
    })
    .await;
    // Give the collector time to (wrongly) act before looking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for p in &or {
        let pod = c.get::<Pod>(Some(NS), p).await.expect("orphaned pods stay");
        assert!(pod.metadata.owner_references.unwrap_or_default().is_empty(), "{p} still has an owner");
        assert!(pod.metadata.deletion_timestamp.is_none());
    }

    // Foreground: the owner waits, terminating, until its pods are gone.
    let (_, fg) = rs_with_pods(&c, "fg", true).await;
    delete_rs(&s, "fg", "foreground");
    eventually("the unheld pod deleted and the held one terminating", 30, || {
        let (c, fg) = (c.clone(), fg.clone());
        async move {
            let held = c.get::<Pod>(Some(NS), &fg[0]).await.unwrap();
            let other = c.get_opt::<Pod>(Some(NS), &fg[1]).await.unwrap();
            (held.metadata.deletion_timestamp.is_some() && other.is_none()).then_some(())
        }
    })
    .await;
    let rs = c.get::<ReplicaSet>(Some(NS), "fg").await.expect("the owner waits for its pods");
    assert!(rs.metadata.deletion_timestamp.is_some());
    assert!(rs.metadata.finalizers.unwrap_or_default().contains(&"foregroundDeletion".to_string()));
    // Release the held pod: then the owner goes too.
    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    c.patch::<Pod>(Some(NS), &fg[0], None, &release).await.unwrap();
    eventually("the foreground-deleted ReplicaSet gone after its pods", 30, || {
        let (c, held) = (c.clone(), fg[0].clone());
        async move {
            let rs_gone = c.get_opt::<ReplicaSet>(Some(NS), "fg").await.unwrap().is_none();
            let pod_gone = c.get_opt::<Pod>(Some(NS), &held).await.unwrap().is_none();
            assert!(pod_gone || !rs_gone, "the owner went before its pod");
            rs_gone.then_some(())
        }
    })
    .await;
}
