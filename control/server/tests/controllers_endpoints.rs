//! End-to-end tests of the EndpointSlice/Endpoints, node IPAM, node lifecycle and
//! ServiceAccount controllers against a real `skiff-control` on 127.0.0.1 (free port,
//! temporary data dir, short node grace periods). The test plays the kubelet: it
//! creates pods and nodes directly, sets their status and renews node Leases.
//!
//! Every wait is bounded in time; every server is killed when its guard drops. kubectl
//! (v1.32 when installed as `kubectl.1.32`, else on PATH, or `$SKIFF_KUBECTL`) is used
//! where a user would use it. A failing test
//! prints its server's log; `SKIFF_TEST_LOG=1` prints it always.

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Endpoints, Event, Namespace, Node, NodeCondition, NodeStatus, Pod, PodCondition, PodIP, PodStatus, Service,
    ServiceAccount, ServicePort, ServiceSpec, Toleration,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use skiff_api::{Client, ListParams};
use support::Server;

/// skiff-control with short node-lifecycle timings.
fn start(args: &[&str]) -> Server {
    let mut all = vec!["--node-monitor-grace-period", "3", "--pod-eviction-timeout", "6"];
    all.extend_from_slice(args);
    Server::start_with(&all)
}

/// `start`, then a static token file (`token,user,uid,"groups"` lines) and a restart to
/// load it.
fn start_with_tokens(args: &[&str], tokens: &str) -> Server {
    let mut s = start(args);
    std::fs::write(s.dir.join("tokens.csv"), tokens).unwrap();
    s.restart();
    s
}

/// A client authenticating with a bearer token (e.g. a node's).
fn token_client(s: &Server, token: &str) -> Client {
    let path = s.tmp.path().join(format!("{token}.kubeconfig"));
    let ca = s.dir.join("pki/ca.crt");
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: t\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\ncontexts:\n- name: t\n  context: {{cluster: c, user: u}}\nusers:\n- name: u\n  user:\n    token: {token}\n",
        s.port,
        ca.display()
    );
    std::fs::write(&path, text).unwrap();
    Client::from_kubeconfig(&path, "controllers-endpoints-test-node").unwrap()
}

/// Polls `f` every 100 ms until it gives `Some`, for at most `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now() -> Timestamp {
    let us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    Timestamp::from_microsecond(us as i64).unwrap()
}

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: ns.map(String::from), ..Default::default() }
}

/// A pod of the `web` app as a user would write it: one nginx container with one named
/// port, bound to `node`, no status yet.
fn web_pod(name: &str, node: &str, port_name: &str, port: i32) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"name": port_name, "containerPort": port}]}],
        },
    }))
    .expect("a valid Pod")
}

/// What the kubelet would post: running, with an IP, Ready or not.
async fn set_pod_status(c: &Client, name: &str, ip: &str, ready: bool) {
    let mut pod: Pod = c.get(Some("default"), name).await.unwrap();
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(ip.into()),
        pod_ips: Some(vec![PodIP { ip: ip.into() }]),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            last_transition_time: Some(Time(now())),
            ..Default::default()
        }]),
        ..Default::default()
    });
    c.replace_status(Some("default"), name, &pod).await.unwrap();
}

fn service(name: &str, selector: Option<&str>, target: IntOrString) -> Service {
    Service {
        metadata: meta(Some("default"), name),
        spec: Some(ServiceSpec {
            selector: selector.map(|s| [("app".to_string(), s.to_string())].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(target),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

async fn slices_of(c: &Client, svc: &str) -> Vec<EndpointSlice> {
    let p = ListParams::default().labels(format!("kubernetes.io/service-name={svc}"));
    c.list_all::<EndpointSlice>(Some("default"), &p).await.unwrap().0
}

/// (address, ready, serving, terminating) of every endpoint of a Service, sorted.
async fn endpoint_states(c: &Client, svc: &str) -> Vec<(String, bool, bool, bool)> {
    let mut out: Vec<_> = slices_of(c, svc)
        .await
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| {
            let cond = e.conditions.clone().unwrap_or_default();
            (
                e.addresses[0].clone(),
                cond.ready.unwrap_or(false),
                cond.serving.unwrap_or(false),
                cond.terminating.unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    out
}

fn ips(addrs: &Option<Vec<k8s_openapi::api::core::v1::EndpointAddress>>) -> Vec<String> {
    let mut v: Vec<String> = addrs.iter().flatten().map(|a| a.ip.clone()).collect();
    v.sort();
    v
}

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_endpoints_and_service_accounts_follow_pods() {
    let cp = start(&[]);
    let c = cp.client();
    c.create(Some("default"), &service("web", Some("web"), IntOrString::Int(8080))).await.unwrap();
    c.create(Some("default"), &service("manual", None, IntOrString::Int(8080))).await.unwrap();
    for (name, ip, ready) in [("web-a", "10.244.1.10", true), ("web-b", "10.244.1.11", false)] {
        c.create(Some("default"), &web_pod(name, "n1", "http", 8080)).await.unwrap();
        set_pod_status(&c, name, ip, ready).await;
    }
    // A pod without an IP yet is not an endpoint.
    c.create(Some("default"), &web_pod("web-c", "n1", "http", 8080)).await.unwrap();

    let want = vec![("10.244.1.10".to_string(), true, true, false), ("10.244.1.11".to_string(), false, false, false)];
    eventually("the web slice to list both pods", T, || async {
        (endpoint_states(&c, "web").await == want).then_some(())
    })
    .await;
    let slices = slices_of(&c, "web").await;
    assert_eq!(slices.len(), 1, "{slices:?}");
    let s = &slices[0];
    assert!(s.metadata.name.as_deref().unwrap().starts_with("web-"), "{:?}", s.metadata.name);
    let labels = s.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["endpointslice.kubernetes.io/managed-by"], "endpointslice-controller.k8s.io");
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Service", "web"));
    let port = &s.ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port, port.protocol.as_deref()), (Some("http"), Some(8080), Some("TCP")));
    let ep = s.endpoints.iter().find(|e| e.addresses[0] == "10.244.1.10").unwrap();
    assert_eq!(ep.node_name.as_deref(), Some("n1"));
    assert_eq!(ep.target_ref.as_ref().unwrap().name.as_deref(), Some("web-a"));

    let eps: Endpoints = eventually("Endpoints web", T, || async {
        c.get_opt::<Endpoints>(Some("default"), "web").await.unwrap().filter(|e| {
            e.subsets.as_ref().is_some_and(|s| s.len() == 1 && ips(&s[0].not_ready_addresses) == ["10.244.1.11"])
        })
    })
    .await;
    let subset = &eps.subsets.as_ref().unwrap()[0];
    assert_eq!(ips(&subset.addresses), ["10.244.1.10"]);
    assert_eq!(subset.ports.as_ref().unwrap()[0].port, 8080);
    let out = cp.ok(&["get", "endpoints", "web"]);
    assert!(out.contains("10.244.1.10:8080"), "{out}");

    // Minimal writes: with nothing changing, the slice's resourceVersion stays.
    let rv = s.metadata.resource_version.clone();
    let eps_rv = eps.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(slices_of(&c, "web").await[0].metadata.resource_version, rv, "slice rewritten without a change");
    let again = c.get::<Endpoints>(Some("default"), "web").await.unwrap();
    assert_eq!(again.metadata.resource_version, eps_rv, "Endpoints rewritten without a change");

    // web-a goes not ready: it moves to notReadyAddresses.
    set_pod_status(&c, "web-a", "10.244.1.10", false).await;
    eventually("web-a in notReadyAddresses", T, || async {
        let e = c.get::<Endpoints>(Some("default"), "web").await.unwrap();
        let s = e.subsets.unwrap_or_default();
        (s.len() == 1 && s[0].addresses.is_none() && ips(&s[0].not_ready_addresses) == ["10.244.1.10", "10.244.1.11"])
            .then_some(())
    })
    .await;
    // Back to ready, then deleted: terminating, still serving, not ready; gone from Endpoints.
    set_pod_status(&c, "web-a", "10.244.1.10", true).await;
    eventually("web-a ready again", T, || async {
        endpoint_states(&c, "web").await.contains(&("10.244.1.10".into(), true, true, false)).then_some(())
    })
    .await;
    c.delete::<Pod>(Some("default"), "web-a", None).await.unwrap();
    eventually("web-a terminating in the slice", T, || async {
        endpoint_states(&c, "web").await.contains(&("10.244.1.10".into(), false, true, true)).then_some(())
    })
    .await;
    eventually("web-a gone from Endpoints", T, || async {
        let e = c.get::<Endpoints>(Some("default"), "web").await.unwrap();
        let s = e.subsets.unwrap_or_default();
        (s.len() == 1 && s[0].addresses.is_none() && ips(&s[0].not_ready_addresses) == ["10.244.1.11"]).then_some(())
    })
    .await;

    // A named targetPort resolves per pod; different numbers, different slices.
    c.create(Some("default"), &service("named", Some("named"), IntOrString::String("web".into()))).await.unwrap();
    for (name, ip, port) in [("named-a", "10.244.2.10", 8080), ("named-b", "10.244.2.11", 9090)] {
        let mut p = web_pod(name, "n1", "web", port);
        p.metadata.labels = Some([("app".to_string(), "named".to_string())].into());
        c.create(Some("default"), &p).await.unwrap();
        set_pod_status(&c, name, ip, true).await;
    }
    let ports = eventually("two slices for the named port", T, || async {
        let mut ports: Vec<(i32, String)> = slices_of(&c, "named")
            .await
            .iter()
            .flat_map(|s| {
                let port = s.ports.iter().flatten().filter_map(|p| p.port).next().unwrap_or(0);
                s.endpoints.iter().map(move |e| (port, e.addresses[0].clone()))
            })
            .collect();
        ports.sort();
        (ports.len() == 2).then_some(ports)
    })
    .await;
    assert_eq!(ports, [(8080, "10.244.2.10".to_string()), (9090, "10.244.2.11".to_string())]);
    let out = cp.ok(&["get", "endpoints", "named", "-o", "jsonpath={.subsets[*].ports[*].port}"]);
    let mut got: Vec<&str> = out.split_whitespace().collect();
    got.sort();
    assert_eq!(got, ["8080", "9090"]);

    // The Service without a selector is left alone.
    assert!(slices_of(&c, "manual").await.is_empty());
    assert!(c.get_opt::<Endpoints>(Some("default"), "manual").await.unwrap().is_none());
    // The API server's own Endpoints are untouched.
    let k = c.get::<Endpoints>(Some("default"), "kubernetes").await.unwrap();
    assert!(k.subsets.unwrap()[0].addresses.as_ref().unwrap()[0].ip == "127.0.0.1");

    // Deleting the Service removes its slices and Endpoints.
    c.delete::<Service>(Some("default"), "named", None).await.unwrap();
    eventually("the named Service's slices and Endpoints to go", T, || async {
        let gone = slices_of(&c, "named").await.is_empty()
            && c.get_opt::<Endpoints>(Some("default"), "named").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;

    // ServiceAccounts: a new namespace gets `default`, and gets it back when deleted.
    c.create(None, &Namespace { metadata: meta(None, "team"), ..Default::default() }).await.unwrap();
    eventually("ServiceAccount team/default", T, || async {
        c.get_opt::<ServiceAccount>(Some("team"), "default").await.unwrap()
    })
    .await;
    c.delete::<ServiceAccount>(Some("team"), "default", None).await.unwrap();
    eventually("ServiceAccount team/default recreated", T, || async {
        c.get_opt::<ServiceAccount>(Some("team"), "default").await.unwrap()
    })
    .await;
    let out = cp.ok(&["get", "serviceaccounts", "-n", "team", "-o", "name"]);
    assert_eq!(out.trim(), "serviceaccount/default");
}

async fn pod_cidr(c: &Client, node: &str) -> Option<String> {
    let n: Node = c.get(None, node).await.unwrap();
    let spec = n.spec?;
    let cidr = spec.pod_cidr.filter(|c| !c.is_empty())?;
    assert_eq!(spec.pod_cidrs.as_deref(), Some(std::slice::from_ref(&cidr)), "podCIDRs mirrors podCIDR");
    Some(cidr)
}

async fn wait_cidr(c: &Client, node: &str) -> String {
    eventually(&format!("a podCIDR on {node}"), T, || pod_cidr(c, node)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_ranges_that_survive_a_restart() {
    let mut cp = start(&[]);
    let c = cp.client();
    let mut seen = BTreeSet::new();
    for n in ["n1", "n2", "n3"] {
        c.create(None, &Node { metadata: meta(None, n), ..Default::default() }).await.unwrap();
    }
    let mut before = Vec::new();
    for n in ["n1", "n2", "n3"] {
        let cidr = wait_cidr(&c, n).await;
        assert!(cidr.starts_with("10.244.") && cidr.ends_with(".0/24"), "{n}: {cidr}");
        assert!(seen.insert(cidr.clone()), "{cidr} given twice");
        before.push(cidr);
    }
    let out = cp.ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]);
    assert_eq!(out.split_whitespace().count(), 3, "{out}");

    cp.restart();
    let c = cp.client();
    c.create(None, &Node { metadata: meta(None, "n4"), ..Default::default() }).await.unwrap();
    // The restarted replica waits for the old one's leader Lease to lapse first.
    let cidr = eventually("a podCIDR on n4", Duration::from_secs(40), || pod_cidr(&c, "n4")).await;
    assert!(seen.insert(cidr.clone()), "{cidr} given twice after restart");
    for (n, cidr) in ["n1", "n2", "n3"].iter().zip(&before) {
        assert_eq!(pod_cidr(&c, n).await.as_ref(), Some(cidr), "{n} kept its range");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_range_warns_and_freed_ranges_are_reused() {
    let cp = start(&["--cluster-cidr", "10.250.0.0/23"]);
    let c = cp.client();
    for n in ["a", "b"] {
        c.create(None, &Node { metadata: meta(None, n), ..Default::default() }).await.unwrap();
        wait_cidr(&c, n).await;
    }
    let a = pod_cidr(&c, "a").await.unwrap();
    c.create(None, &Node { metadata: meta(None, "c"), ..Default::default() }).await.unwrap();
    eventually("a CIDRNotAvailable event for c", T, || async {
        let evs = c.list_all::<Event>(Some("default"), &ListParams::default()).await.unwrap().0;
        evs.iter()
            .any(|e| {
                e.reason.as_deref() == Some("CIDRNotAvailable")
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.name.as_deref() == Some("c")
            })
            .then_some(())
    })
    .await;
    assert_eq!(pod_cidr(&c, "c").await, None);
    c.delete::<Node>(None, "a", None).await.unwrap();
    assert_eq!(wait_cidr(&c, "c").await, a, "the deleted node's range is reused");
}

fn ready_node(name: &str) -> Node {
    Node {
        metadata: meta(None, name),
        spec: None,
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                message: Some("kubelet is posting ready status".into()),
                last_heartbeat_time: Some(Time(now())),
                last_transition_time: Some(Time(now())),
            }]),
            ..Default::default()
        }),
    }
}

/// Creates or renews a node's Lease, as the kubelet does every few seconds.
/// Panics on any error but a conflict: the node's own credentials must be allowed to
/// create and update its Lease (RBAC `system:node`).
async fn renew(c: &Client, node: &str) {
    let ns = Some("kube-node-lease");
    let spec = LeaseSpec {
        holder_identity: Some(node.into()),
        lease_duration_seconds: Some(40),
        renew_time: Some(MicroTime(now())),
        ..Default::default()
    };
    match c.get_opt::<Lease>(ns, node).await.unwrap() {
        Some(mut l) => {
            l.spec = Some(spec);
            // A conflict means someone renewed in between; the next round wins.
            match c.replace(ns, node, &l).await {
                Ok(_) => {}
                Err(e) if e.is_conflict() => {}
                Err(e) => panic!("renewing Lease {node} failed: {e}"),
            }
        }
        None => {
            c.create(ns, &Lease { metadata: meta(ns, node), spec: Some(spec) }).await.unwrap();
        }
    }
}

fn ready_of(n: &Node) -> (String, Option<String>) {
    let c = n.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    c.map(|c| (c.status.clone(), c.reason.clone())).unwrap_or_default()
}

fn taints_of(n: &Node) -> Vec<(String, String)> {
    let mut t: Vec<_> = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect();
    t.sort();
    t
}

fn tolerating(name: &str, node: &str, seconds: Option<i64>) -> Pod {
    let mut p = web_pod(name, node, "http", 80);
    p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
        key: Some("node.kubernetes.io/unreachable".into()),
        operator: Some("Exists".into()),
        effect: Some("NoExecute".into()),
        toleration_seconds: seconds,
        ..Default::default()
    }]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_nodes_are_marked_tainted_and_evicted_and_recover() {
    // "silent" acts with a node's identity (group system:nodes), as its agent would.
    let cp = start_with_tokens(&[], "tok-silent,system:node:silent,2001,\"system:nodes\"\n");
    let c = cp.client();
    let node_client = token_client(&cp, "tok-silent");
    for n in ["alive", "silent"] {
        c.create(None, &ready_node(n)).await.unwrap();
    }
    renew(&c, "alive").await;
    renew(&node_client, "silent").await;
    c.create(Some("default"), &web_pod("on-alive", "alive", "http", 80)).await.unwrap();
    c.create(Some("default"), &web_pod("plain", "silent", "http", 80)).await.unwrap();
    c.create(Some("default"), &tolerating("short", "silent", Some(1))).await.unwrap();
    c.create(Some("default"), &tolerating("forever", "silent", None)).await.unwrap();
    for (p, ip) in
        [("on-alive", "10.244.5.1"), ("plain", "10.244.6.1"), ("short", "10.244.6.2"), ("forever", "10.244.6.3")]
    {
        set_pod_status(&c, p, ip, true).await;
    }

    // The kubelet of "alive" keeps renewing; "silent" stops now. Bounded: at most 60 s.
    let renewer = {
        let c = c.clone();
        tokio::spawn(async move {
            for _ in 0..240 {
                renew(&c, "alive").await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _renewer = AbortOnDrop(renewer);

    let silent = eventually("silent to become Unknown with unreachable taints", T, || async {
        let n: Node = c.get(None, "silent").await.unwrap();
        let tainted = taints_of(&n)
            == [
                ("node.kubernetes.io/unreachable".to_string(), "NoExecute".to_string()),
                ("node.kubernetes.io/unreachable".to_string(), "NoSchedule".to_string()),
            ];
        (ready_of(&n) == ("Unknown".into(), Some("NodeStatusUnknown".into())) && tainted).then_some(n)
    })
    .await;
    let message = silent.status.as_ref().unwrap().conditions.as_ref().unwrap()[0].message.clone();
    assert_eq!(message.as_deref(), Some("Kubelet stopped posting node status."));
    let tainted_at = silent
        .spec
        .as_ref()
        .unwrap()
        .taints
        .as_ref()
        .unwrap()
        .iter()
        .find(|t| t.effect == "NoExecute")
        .and_then(|t| t.time_added.clone())
        .expect("the NoExecute taint has timeAdded")
        .0;

    let alive: Node = c.get(None, "alive").await.unwrap();
    assert_eq!(ready_of(&alive).0, "True", "a node renewing its Lease stays Ready");
    assert!(taints_of(&alive).is_empty());

    // Its pods are marked not ready at once.
    eventually("pods on silent marked not ready", T, || async {
        let p: Pod = c.get(Some("default"), "forever").await.unwrap();
        let ready = p.status.and_then(|s| s.conditions).unwrap_or_default();
        ready.iter().any(|c| c.type_ == "Ready" && c.status == "False").then_some(())
    })
    .await;
    let deleted_at = |p: &Pod| -> Option<Timestamp> {
        // Bound pods terminate gracefully: deletionTimestamp = time of DELETE + grace.
        let grace = p.metadata.deletion_grace_period_seconds.unwrap_or(0);
        let t = p.metadata.deletion_timestamp.as_ref()?.0;
        Some(Timestamp::from_second(t.as_second() - grace).unwrap())
    };
    let evicted = |name: &'static str| {
        let c = c.clone();
        async move {
            match c.get_opt::<Pod>(Some("default"), name).await.unwrap() {
                None => Some(None),
                Some(p) => deleted_at(&p).map(Some),
            }
        }
    };
    let short = eventually("the pod tolerating 1 s to be evicted", T, || evicted("short")).await;
    let plain = eventually("the pod without toleration to be evicted", T, || evicted("plain")).await;
    if let (Some(short), Some(plain)) = (short, plain) {
        let after = |t: Timestamp| t.as_second() - tainted_at.as_second();
        assert!(after(short) <= 4, "short tolerance evicted {}s after the taint", after(short));
        // Second-resolution timestamps: 6 s timeout, allow 1 s of rounding.
        assert!(after(plain) >= 5, "plain pod evicted {}s after the taint, before the 6 s timeout", after(plain));
    }
    let forever: Pod = c.get(Some("default"), "forever").await.unwrap();
    assert!(forever.metadata.deletion_timestamp.is_none(), "a pod tolerating forever stays");
    let on_alive: Pod = c.get(Some("default"), "on-alive").await.unwrap();
    assert!(on_alive.metadata.deletion_timestamp.is_none(), "pods of a Ready node stay");
    let evs = c.list_all::<Event>(Some("default"), &ListParams::default()).await.unwrap().0;
    assert!(
        evs.iter().any(|e| e.reason.as_deref() == Some("NodeNotReady") && e.involved_object.name.as_deref() == Some("silent")),
        "a NodeNotReady event"
    );

    // The kubelet comes back: renewing the Lease clears the taints.
    let back = eventually("silent to lose its taints after renewing", T, || async {
        renew(&node_client, "silent").await;
        let n: Node = c.get(None, "silent").await.unwrap();
        taints_of(&n).is_empty().then_some(n)
    })
    .await;
    assert_eq!(ready_of(&back).0, "True");
    let out = cp.ok(&["get", "node", "silent"]);
    assert!(out.contains("Ready"), "{out}");
}
