//! A fake node client for controller tests without containerd: it registers two Ready
//! Nodes and, watching pods, binds each unscheduled pod to a node, reports it Running
//! (and Ready, at once or after a delay) with an IP from the node's range, and
//! completes the deletion of pods that have a deletionTimestamp, as a kubelet does.
//! `FakeKubelet` runs it on its own runtime and stops it on drop.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};
use skiff_api::{Client, ListParams, Patch, WatchEvent};

pub const NODES: [&str; 2] = ["node-a", "node-b"];

/// The fake kubelet on its own thread and runtime; stopped and joined on drop.
pub struct FakeKubelet {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeKubelet {
    /// Registers the nodes and starts serving pods, which turn Ready `ready_after` their start.
    pub fn start(kubeconfig: &Path, ready_after: Duration) -> Self {
        let client = Client::from_kubeconfig(kubeconfig, "controller-test/fake-node").expect("admin kubeconfig");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                register_nodes(&client).await;
                fake_kubelet(client, st, ready_after).await;
            });
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub async fn register_nodes(client: &Client) {
    for (i, name) in NODES.iter().enumerate() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"podCIDR": format!("10.244.{i}.0/24")},
        }))
        .unwrap();
        client.create(None, &node).await.unwrap_or_else(|e| panic!("registering node {name}: {e}"));
        let status = json!({"status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": format!("127.0.0.{}", i + 2)}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake node is ready",
                            "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
        }});
        client
            .patch::<Node>(None, name, Some("status"), &Patch::Merge(status))
            .await
            .unwrap_or_else(|e| panic!("reporting status of node {name}: {e}"));
    }
}

pub fn now() -> String {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(s as i64).unwrap(),
    ))
    .unwrap()
    .as_str()
    .unwrap()
    .to_string()
}

/// Lists, handles every pod, then watches (in short requests so `stop` is noticed) and
/// handles each change; re-lists when a watch fails. Pods turn Ready `ready_after`
/// their start (at once when zero), as a readiness probe would make them.
pub async fn fake_kubelet(client: Client, stop: Arc<AtomicBool>, ready_after: Duration) {
    let heartbeats = tokio::spawn(heartbeat(client.clone()));
    serve_pods(&client, &stop, ready_after).await;
    heartbeats.abort();
}

/// Renews each node's Lease every 5 s, as a kubelet does, so node lifecycle never
/// declares the fake nodes unreachable in a long test.
async fn heartbeat(client: Client) {
    loop {
        for name in NODES {
            let lease = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()}});
            let patched =
                client.patch::<Lease>(Some("kube-node-lease"), name, None, &Patch::Merge(lease.clone())).await;
            if patched.is_err() {
                let mut l: Lease = serde_json::from_value(lease).unwrap();
                l.metadata.name = Some(name.to_string());
                let _ = client.create(Some("kube-node-lease"), &l).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn now_micro() -> Value {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now()))
        .unwrap()
}

async fn serve_pods(client: &Client, stop: &AtomicBool, ready_after: Duration) {
    let next_ip: HashMap<&str, AtomicU32> = NODES.iter().map(|n| (*n, AtomicU32::new(10))).collect();
    let mut rr = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let Ok((pods, mut rv)) = client.list_all::<Pod>(None, &ListParams::default()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        for p in &pods {
            handle_pod(client, p, &next_ip, &mut rr, ready_after).await;
        }
        'watch: while !stop.load(Ordering::SeqCst) {
            let Ok(mut stream) = client.watch::<Pod>(None, &ListParams::default(), &rv, 2).await else { break };
            loop {
                match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
                    Err(_) if stop.load(Ordering::SeqCst) => return,
                    Err(_) => continue,
                    Ok(None) => break,
                    Ok(Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)))) => {
                        rv = p.metadata.resource_version.clone().unwrap_or(rv);
                        handle_pod(client, &p, &next_ip, &mut rr, ready_after).await;
                    }
                    Ok(Some(Ok(WatchEvent::Deleted(p)))) => rv = p.metadata.resource_version.clone().unwrap_or(rv),
                    Ok(Some(Ok(WatchEvent::Bookmark(b)))) if !b.is_empty() => rv = b,
                    Ok(Some(Ok(WatchEvent::Bookmark(_)))) => {}
                    Ok(Some(Err(_))) => break 'watch,
                }
            }
        }
    }
}

/// One kubelet step for a pod: finish its deletion, bind it, or report it running.
async fn handle_pod(
    client: &Client,
    p: &Pod,
    next_ip: &HashMap<&str, AtomicU32>,
    rr: &mut usize,
    ready_after: Duration,
) {
    let ns = p.metadata.namespace.as_deref();
    let name = p.metadata.name.as_deref().unwrap_or_default();
    if p.metadata.deletion_timestamp.is_some() {
        let _ = client.delete::<Pod>(ns, name, Some(&json!({"gracePeriodSeconds": 0}))).await;
        return;
    }
    let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
    let Some(node) = node else {
        let target = NODES[*rr % NODES.len()];
        *rr += 1;
        let binding = json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns}, "target": {"apiVersion": "v1", "kind": "Node", "name": target}});
        let _: Result<Value, _> = client.create_subresource::<Pod, _, _>(ns, name, "binding", &binding).await;
        return;
    };
    let status = p.status.clone().unwrap_or_default();
    if status.phase.as_deref() == Some("Running") && status.pod_ip.is_some() {
        return;
    }
    // Finished (a test said so): nothing runs any more.
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return;
    }
    let Some(counter) = next_ip.get(node.as_str()) else { return };
    let idx = NODES.iter().position(|n| *n == node).unwrap_or(0);
    let ip = format!("10.244.{idx}.{}", counter.fetch_add(1, Ordering::SeqCst) % 250 + 2);
    let t = now();
    let containers: Vec<Value> = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": format!("fake://{}", c.image.clone().unwrap_or_default()),
                   "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": t}}})
        })
        .collect();
    let ready = ready_after.is_zero();
    let cond =
        |ty: &str, ok: bool| json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastTransitionTime": t});
    let patch = json!({"status": {
        "phase": "Running",
        "hostIP": format!("127.0.0.{}", idx + 2),
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": t,
        "conditions": [cond("PodScheduled", true), cond("Initialized", true), cond("ContainersReady", ready), cond("Ready", ready)],
        "containerStatuses": containers,
    }});
    let _ = client.patch::<Pod>(ns, name, Some("status"), &Patch::Merge(patch)).await;
    if !ready {
        let (client, ns, name) = (client.clone(), ns.map(String::from), name.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(ready_after).await;
            let t = now();
            let cond = |ty: &str| json!({"type": ty, "status": "True", "lastTransitionTime": t});
            let patch = json!({"status": {
                "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
            }});
            let _ = client.patch::<Pod>(ns.as_deref(), &name, Some("status"), &Patch::Merge(patch)).await;
        });
    }
}
