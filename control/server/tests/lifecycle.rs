//! Object lifecycle with the real kubectl against a real `skiff-control`: deleting a
//! namespace marks it Terminating and the namespace controller removes its content in
//! the background (pods, custom resources, a ConfigMap held by a finalizer), refusing
//! new content meanwhile; the namespace goes once nothing is left.
//!
//! No kubelet runs: the unbound pod (the scheduler finds no node for it) goes at once,
//! and a pod bound to a node stays Terminating until the test finishes
//! its deletion, as a kubelet would.

mod support;

use serde_json::Value;
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
