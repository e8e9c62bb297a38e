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

/// The fake nodes' kubelet servers for `/metrics/resource` (HTTPS on 127.0.0.1, a
/// self-signed certificate, as a kubelet's), reporting every Running pod bound to the
/// node as using `pod_millicores` of CPU (one container each, the node the sum) and
/// `POD_MEMORY` bytes. The CPU counters grow at that rate from each container's start,
/// so the API server's scraper sees real rates; the test turns the knob with
/// [`ResourceMetrics::set_pod_millicores`]. Stops (its thread and runtime) on drop.
#[allow(dead_code, reason = "not every test binary scrapes the fake nodes")]
pub struct ResourceMetrics {
    millicores: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The memory every fake pod uses: 32 MiB.
#[allow(dead_code, reason = "not every test binary scrapes the fake nodes")]
pub const POD_MEMORY: u64 = 32 << 20;

#[allow(dead_code, reason = "not every test binary scrapes the fake nodes")]
impl ResourceMetrics {
    /// Starts one server per fake node and points each Node at its server
    /// (`InternalIP` 127.0.0.1 and `daemonEndpoints.kubeletEndpoint.Port`); call after
    /// the nodes are registered.
    pub fn start(kubeconfig: &Path, pod_millicores: u32) -> Self {
        let client =
            Client::from_kubeconfig(kubeconfig, "controller-test/fake-kubelet-server").expect("admin kubeconfig");
        let millicores = Arc::new(AtomicU32::new(pod_millicores));
        let stop = Arc::new(AtomicBool::new(false));
        let (mc, st) = (millicores.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let counters: Counters = Arc::default();
                let mut servers = Vec::new();
                for node in NODES {
                    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
                    let port = listener.local_addr().unwrap().port();
                    let status = json!({"status": {
                        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node}],
                        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                    }});
                    client
                        .patch::<Node>(None, node, Some("status"), &Patch::Merge(status))
                        .await
                        .unwrap_or_else(|e| panic!("pointing node {node} at its fake kubelet server: {e}"));
                    let state = (client.clone(), node, mc.clone(), counters.clone());
                    servers.push(tokio::spawn(serve_metrics(listener, state)));
                }
                ready_tx.send(()).unwrap();
                while !st.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                for s in servers {
                    s.abort();
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(30)).expect("the fake kubelet servers did not start");
        Self { millicores, stop, thread: Some(thread) }
    }

    /// From now on every pod uses `m` millicores.
    pub fn set_pod_millicores(&self, m: u32) {
        self.millicores.store(m, Ordering::SeqCst);
    }
}

impl Drop for ResourceMetrics {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Each container's CPU counter: (time of the last reading in ms, core-seconds then).
type Counters = Arc<std::sync::Mutex<HashMap<String, (i64, f64)>>>;

async fn serve_metrics(listener: tokio::net::TcpListener, state: (Client, &'static str, Arc<AtomicU32>, Counters)) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else { return };
            // One request per connection, as the scraper sends: read its head, answer, close.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let (code, body) = if head.starts_with(b"GET /metrics/resource ") {
                ("200 OK", metrics_text(&state).await)
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(resp.as_bytes()).await;
            let _ = tls.shutdown().await;
        });
    }
}

/// The node's `/metrics/resource` text now.
async fn metrics_text(
    (client, node, millicores, counters): &(Client, &'static str, Arc<AtomicU32>, Counters),
) -> String {
    let now_ms = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()) as i64;
    let rate = f64::from(millicores.load(Ordering::SeqCst)) / 1000.0;
    let pods = client.list_all::<Pod>(None, &ListParams::default()).await.map(|(p, _)| p).unwrap_or_default();
    let mut text = String::from("# TYPE container_cpu_usage_seconds_total counter\n");
    let mut running = 0u32;
    let mut counters = counters.lock().unwrap();
    for p in &pods {
        let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(*node);
        let status = p.status.clone().unwrap_or_default();
        if !on_node || status.phase.as_deref() != Some("Running") || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let (ns, name) =
            (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default());
        let start_ms = status.start_time.as_ref().map_or(now_ms, |t| t.0.as_millisecond());
        for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
            let key = format!("{ns}/{name}/{}", c.name);
            let (last, total) = counters.get(&key).copied().unwrap_or((start_ms, 0.0));
            let total = total + rate * ((now_ms - last).max(0) as f64 / 1000.0);
            counters.insert(key, (now_ms, total));
            let labels = format!("container=\"{}\",namespace=\"{ns}\",pod=\"{name}\"", c.name);
            text.push_str(&format!("container_cpu_usage_seconds_total{{{labels}}} {total} {now_ms}\n"));
            text.push_str(&format!("container_memory_working_set_bytes{{{labels}}} {POD_MEMORY} {now_ms}\n"));
            text.push_str(&format!("container_start_time_seconds{{{labels}}} {} {now_ms}\n", start_ms as f64 / 1000.0));
            running += 1;
        }
    }
    // The node's counter grows with its running containers' rates and never goes back
    // when a pod goes.
    let (last, node_cpu) = counters.get(*node).copied().unwrap_or((now_ms, 0.0));
    let node_cpu = node_cpu + rate * f64::from(running) * ((now_ms - last).max(0) as f64 / 1000.0);
    counters.insert(node.to_string(), (now_ms, node_cpu));
    let node_mem = u64::from(running) * POD_MEMORY;
    text.push_str(&format!(
        "node_cpu_usage_seconds_total {node_cpu} {now_ms}\nnode_memory_working_set_bytes {node_mem} {now_ms}\n"
    ));
    text.push_str("resource_scrape_error 0\n");
    text
}
