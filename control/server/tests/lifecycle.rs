//! Object lifecycle with the real kubectl against a real `skiff-control`: deleting a
//! namespace marks it Terminating and the namespace controller removes its content in
//! the background (pods, custom resources, a ConfigMap held by a finalizer), refusing
//! new content meanwhile; the namespace goes once nothing is left. `kubectl drain`
//! evicts pods only as far as their PodDisruptionBudget allows.
//!
//! No kubelet runs: the unbound pod (the scheduler finds no node for it) goes at once,
//! and a pod bound to a node stays Terminating until the test finishes
//! its deletion, as a kubelet would.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use skiff_api::{ListParams, Patch};
use support::Server;

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

const CONTENT: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: doomed, finalizers: [example.com/hold]}\n\
data: {a: b}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: unbound, namespace: doomed}\n\
spec: {nodeSelector: {no-such: node}, containers: [{name: c, image: busybox}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: bound, namespace: doomed}\n\
spec: {nodeName: node-a, containers: [{name: c, image: busybox}]}\n---\n\
apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w, namespace: doomed}\nspec: {size: 3}\n";

fn condition<'a>(ns: &'a Value, ty: &str) -> Option<&'a Value> {
    ns.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == ty)
}

fn exists(s: &Server, args: &[&str]) -> bool {
    s.run(args).status.success()
}

#[test]
fn deleting_a_namespace_removes_its_content_in_the_background() {
    let s = Server::start();
    s.apply("node.yaml", &support::node_manifest("node-a", "4", "8Gi", "", ""));
    s.apply("crd.yaml", CRD);
    s.wait_for(20, "the Widget CRD to be served", || exists(&s, &["get", "widgets", "-A"]));
    s.ok(&["create", "namespace", "doomed"]);
    let ns = s.json(&["get", "ns", "doomed"]);
    assert_eq!(ns["spec"]["finalizers"], serde_json::json!(["kubernetes"]), "{ns}");
    assert_eq!(ns["status"]["phase"], "Active");
    s.apply("content.yaml", CONTENT);

    let out = s.ok(&["delete", "namespace", "doomed", "--wait=false"]);
    assert!(out.contains("namespace \"doomed\" deleted"), "{out}");
    let ns = s.json(&["get", "ns", "doomed"]);
    assert_eq!(ns["status"]["phase"], "Terminating", "{ns}");
    assert!(ns["metadata"]["deletionTimestamp"].is_string(), "{ns}");

    // New content is refused while the namespace terminates, with upstream's message.
    let err = s.fails(&["create", "configmap", "late", "-n", "doomed", "--from-literal=a=b"]);
    assert!(
        err.contains("configmaps \"late\" is forbidden: unable to create new content in namespace doomed because it is being terminated"),
        "{err}"
    );
    // A second delete says the system is on it.
    let err = s.fails(&["delete", "namespace", "doomed", "--wait=false"]);
    assert!(err.contains("The system is ensuring all content is removed from this namespace"), "{err}");

    // Unheld content goes at once; what is held stays, and the conditions say why.
    s.wait_for(20, "the unbound pod and the widget to go", || {
        !exists(&s, &["get", "pod", "unbound", "-n", "doomed"]) && !exists(&s, &["get", "widget", "w", "-n", "doomed"])
    });
    s.wait_for(20, "the conditions to name the remaining content", || {
        let ns = s.json(&["get", "ns", "doomed"]);
        condition(&ns, "NamespaceContentRemaining").is_some_and(|c| c["status"] == "True")
            && condition(&ns, "NamespaceFinalizersRemaining").is_some_and(|c| {
                c["status"] == "True" && c["message"].as_str().unwrap_or("").contains("example.com/hold in 1")
            })
    });
    let ns = s.json(&["get", "ns", "doomed"]);
    for (ty, status) in [("NamespaceDeletionDiscoveryFailure", "False"), ("NamespaceDeletionContentFailure", "False")] {
        assert_eq!(condition(&ns, ty).map(|c| c["status"].clone()), Some(status.into()), "{ty}: {ns}");
    }
    let pod = s.json(&["get", "pod", "bound", "-n", "doomed"]);
    assert!(pod["metadata"]["deletionTimestamp"].is_string(), "the bound pod is terminating: {pod}");
    let cm = s.json(&["get", "cm", "held", "-n", "doomed"]);
    assert!(cm["metadata"]["deletionTimestamp"].is_string(), "the held ConfigMap is terminating: {cm}");

    // The "kubelet" finishes the pod; the finalizer still holds the namespace.
    s.ok(&["delete", "pod", "bound", "-n", "doomed", "--grace-period=0", "--force"]);
    s.wait_for(20, "only the ConfigMap to remain", || {
        let ns = s.json(&["get", "ns", "doomed"]);
        condition(&ns, "NamespaceContentRemaining")
            .is_some_and(|c| c["message"] == "Some resources are remaining: configmaps has 1 resource instances")
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(s.json(&["get", "ns", "doomed"])["status"]["phase"], "Terminating");

    // Its owner removes the finalizer: the ConfigMap goes, then the namespace.
    s.ok(&["patch", "cm", "held", "-n", "doomed", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    s.wait_for(20, "the namespace to go", || {
        let out = s.run(&["get", "ns", "doomed"]);
        String::from_utf8_lossy(&out.stderr).contains("NotFound")
    });
    // The name is free again, for a namespace that works as new.
    s.ok(&["create", "namespace", "doomed"]);
    s.ok(&["create", "configmap", "fresh", "-n", "doomed", "--from-literal=a=b"]);
}

/// Plays the kubelet of every node, by polling: a pod the scheduler bound is reported
/// Running and Ready, a terminating pod is deleted for good. Stops when `stop` is set.
fn poll_kubelet(client: skiff_api::Client, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            while !stop.load(Ordering::SeqCst) {
                let pods = client.list_all::<Pod>(None, &ListParams::default()).await.map(|(p, _)| p).unwrap_or_default();
                for p in pods {
                    let (ns, name) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref().unwrap_or_default());
                    if p.metadata.deletion_timestamp.is_some() {
                        let _ = client.delete::<Pod>(ns, name, Some(&json!({"gracePeriodSeconds": 0}))).await;
                        continue;
                    }
                    let bound = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
                    let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    if bound && !running {
                        let ready = |ty: &str| json!({"type": ty, "status": "True"});
                        let status = json!({"status": {"phase": "Running", "podIP": "10.244.9.9",
                            "conditions": [ready("PodScheduled"), ready("Initialized"), ready("ContainersReady"), ready("Ready")]}});
                        let _ = client.patch::<Pod>(ns, name, Some("status"), &Patch::Merge(status)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    })
}

/// Names and nodes of the running, not terminating `app=web` pods.
fn web_pods(s: &Server) -> Vec<(String, String)> {
    let list = s.json(&["get", "pods", "-l", "app=web"]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running")
        .map(|p| (p["metadata"]["name"].as_str().unwrap().into(), p["spec"]["nodeName"].as_str().unwrap_or("").into()))
        .collect()
}

const PDB: &str = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web}\n\
spec: {minAvailable: MIN, selector: {matchLabels: {app: web}}}\n";

#[test]
fn drain_evicts_within_the_disruption_budget() {
    let s = Server::start();
    for n in ["node-a", "node-b"] {
        s.apply(&format!("{n}.yaml"), &support::node_manifest(n, "4", "8Gi", "", ""));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let kubelet = poll_kubelet(s.client(), stop.clone());
    s.ok(&["create", "deployment", "web", "--image=nginx:1.27", "--replicas=2"]);
    s.wait_for(30, "two running web pods", || web_pods(&s).len() == 2);

    // A budget that allows no disruption: drain cordons the node, then gives up.
    s.apply("pdb.yaml", &PDB.replace("MIN", "2"));
    s.wait_for(20, "the budget's status", || {
        let st = &s.json(&["get", "pdb", "web"])["status"];
        st["currentHealthy"] == 2
            && st["desiredHealthy"] == 2
            && st["expectedPods"] == 2
            && st["observedGeneration"] == 1
    });
    let pdb = s.json(&["get", "pdb", "web"]);
    assert_eq!(pdb["status"]["disruptionsAllowed"], 0, "{pdb}");
    assert_eq!(pdb["status"]["conditions"][0]["type"], "DisruptionAllowed");
    assert_eq!(pdb["status"]["conditions"][0]["status"], "False");
    let node = web_pods(&s)[0].1.clone();
    let err = s.fails(&["drain", &node, "--ignore-daemonsets", "--timeout", "5s"]);
    assert!(err.contains("Cannot evict pod as it would violate the pod's disruption budget."), "{err}");
    assert_eq!(s.json(&["get", "node", &node])["spec"]["unschedulable"], true, "drain cordons first");
    assert_eq!(web_pods(&s).len(), 2, "no pod was evicted");
    // The raw API answer: 429 with a DisruptionBudget cause.
    let victim = web_pods(&s)[0].0.clone();
    let body = s.write("eviction.json", &format!(
        r#"{{"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {{"name": "{victim}", "namespace": "default"}}}}"#
    ));
    let err = s.fails(&["create", "--raw", &format!("/api/v1/namespaces/default/pods/{victim}/eviction"), "-f", &body]);
    assert!(
        err.contains("(TooManyRequests): Cannot evict pod as it would violate the pod's disruption budget"),
        "{err}"
    );
    s.ok(&["uncordon", &node]);
    assert!(s.json(&["get", "node", &node])["spec"]["unschedulable"].is_null());

    // One disruption allowed: drain evicts the pods one at a time (each replacement
    // becomes ready on the other node first) and completes.
    s.apply("pdb.yaml", &PDB.replace("MIN", "1"));
    s.wait_for(20, "the budget to allow one disruption", || {
        s.json(&["get", "pdb", "web"])["status"]["disruptionsAllowed"] == 1
    });
    let out = s.ok(&["drain", &node, "--ignore-daemonsets", "--timeout", "60s"]);
    assert!(out.contains(&format!("node/{node} drained")), "{out}");
    assert!(out.contains("evicting pod default/web-"), "{out}");
    s.wait_for(30, "two running web pods off the drained node", || {
        let pods = web_pods(&s);
        pods.len() == 2 && pods.iter().all(|(_, n)| *n != node)
    });
    assert_eq!(s.json(&["get", "node", &node])["spec"]["unschedulable"], true);
    s.ok(&["uncordon", &node]);
    assert!(s.json(&["get", "node", &node])["spec"]["unschedulable"].is_null());
    let out = s.ok(&["cordon", "node-a"]);
    assert!(out.contains("node/node-a cordoned"), "{out}");
    assert_eq!(s.json(&["get", "node", "node-a"])["spec"]["unschedulable"], true);
    s.ok(&["uncordon", "node-a"]);
    stop.store(true, Ordering::SeqCst);
    kubelet.join().unwrap();
}
