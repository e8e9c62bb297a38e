//! The scheduler inside skiff-control, driven by kubectl: fake Nodes (no kubelet; the
//! Node objects carry allocatable and a Ready condition) and Pods, checking where each
//! Pod lands and what an unschedulable one reports.

mod support;

use std::time::Duration;

use support::{Server, node_manifest, wait_for};

fn node_of(s: &Server, pod: &str) -> String {
    s.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
}

fn pod(name: &str, cpu: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{extra}  containers: [{{name: c, image: x, resources: {{requests: {{cpu: {cpu}}}}}}}]\n"
    )
}

#[test]
fn places_pods_by_resources_selectors_and_taints() {
    let s = Server::start();
    s.apply("a.yaml", &node_manifest("small", "1", "2Gi", ", disk: ssd", ""));
    s.apply("b.yaml", &node_manifest("big", "4", "8Gi", "", ""));
    s.apply("c.yaml", &node_manifest("tainted", "16", "32Gi", "", "{key: dedicated, value: gpu, effect: NoSchedule}"));

    // Too big for "small", and "tainted" is not tolerated: only "big" fits.
    s.apply("p1.yaml", &pod("needs-2cpu", "2", ""));
    // nodeSelector picks "small" although "big" has more room.
    s.apply("p2.yaml", &pod("wants-ssd", "100m", "  nodeSelector: {disk: ssd}\n"));
    // Tolerating the taint and selecting the node by name through affinity.
    let tolerating = "  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]\n  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [tainted]}]}]}}}\n";
    s.apply("p3.yaml", &pod("on-gpu", "1", tolerating));
    // Nothing has 32 cpus.
    s.apply("p4.yaml", &pod("too-big", "32", ""));

    wait_for(Duration::from_secs(20), "three pods bound", || {
        ["needs-2cpu", "wants-ssd", "on-gpu"].iter().all(|p| !node_of(&s, p).is_empty())
    });
    assert_eq!(node_of(&s, "needs-2cpu"), "big");
    assert_eq!(node_of(&s, "wants-ssd"), "small");
    assert_eq!(node_of(&s, "on-gpu"), "tainted");
    let scheduled = s.json(&["get", "pod", "on-gpu"]);
    let conds = scheduled["status"]["conditions"].as_array().unwrap();
    assert!(conds.iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "True"), "{conds:?}");

    // The unschedulable pod says why, in kube-scheduler's words, as condition and event.
    wait_for(Duration::from_secs(20), "FailedScheduling event", || {
        s.ok(&["get", "events", "--field-selector", "involvedObject.name=too-big", "-o", "name"]).contains("event")
    });
    assert!(node_of(&s, "too-big").is_empty());
    let describe = s.ok(&["describe", "pod", "too-big"]);
    assert!(describe.contains("FailedScheduling"), "{describe}");
    assert!(describe.contains("0/3 nodes are available:") && describe.contains("Insufficient cpu"), "{describe}");
    assert!(describe.contains("untolerated taint {dedicated: gpu}"), "{describe}");

    // A node that fits arrives: the waiting pod is placed without waiting for a retry timer.
    s.apply("d.yaml", &node_manifest("huge", "64", "128Gi", "", ""));
    wait_for(Duration::from_secs(10), "too-big bound to huge", || node_of(&s, "too-big") == "huge");
}

#[test]
fn spreads_identical_pods_and_respects_cordon() {
    let s = Server::start();
    s.apply("a.yaml", &node_manifest("n1", "2", "4Gi", "", ""));
    s.apply("b.yaml", &node_manifest("n2", "2", "4Gi", "", ""));
    s.ok(&["cordon", "n2"]);
    s.apply("p0.yaml", &pod("first", "100m", ""));
    wait_for(Duration::from_secs(20), "first bound", || !node_of(&s, "first").is_empty());
    assert_eq!(node_of(&s, "first"), "n1", "a cordoned node takes no new pods");
    s.ok(&["uncordon", "n2"]);
    for i in 0..6 {
        s.apply(&format!("s{i}.yaml"), &pod(&format!("spread-{i}"), "200m", ""));
    }
    let mut on = std::collections::HashMap::<String, usize>::new();
    wait_for(Duration::from_secs(30), "six pods bound", || {
        on.clear();
        for i in 0..6 {
            *on.entry(node_of(&s, &format!("spread-{i}"))).or_default() += 1;
        }
        !on.contains_key("")
    });
    // Least-requested scoring fills the emptier node first, so neither takes them all.
    assert!(on.get("n1").copied().unwrap_or(0) >= 2 && on.get("n2").copied().unwrap_or(0) >= 2, "{on:?}");
}

#[test]
fn pods_of_a_deleted_node_are_collected() {
    let s = Server::start();
    s.apply("a.yaml", &node_manifest("stays", "2", "4Gi", "", ""));
    s.apply("b.yaml", &node_manifest("goes", "2", "4Gi", "", ""));
    s.apply("p1.yaml", &pod("on-stays", "100m", "  nodeSelector: {kubernetes.io/hostname: stays}\n"));
    s.apply("p2.yaml", &pod("on-goes", "100m", "  nodeSelector: {kubernetes.io/hostname: goes}\n"));
    s.apply("p3.yaml", &pod("terminating-on-goes", "100m", "  nodeSelector: {kubernetes.io/hostname: goes}\n"));
    wait_for(Duration::from_secs(20), "three pods bound", || {
        ["on-stays", "on-goes", "terminating-on-goes"].iter().all(|p| !node_of(&s, p).is_empty())
    });
    // A bound pod being deleted waits for its kubelet, which this node no longer has.
    s.ok(&["delete", "pod", "terminating-on-goes", "--wait=false"]);
    let ts = s.ok(&["get", "pod", "terminating-on-goes", "-o", "jsonpath={.metadata.deletionTimestamp}"]);
    assert!(!ts.is_empty(), "a bound pod is deleted gracefully");

    s.ok(&["delete", "node", "goes"]);
    wait_for(Duration::from_secs(20), "the pods of the deleted node to be collected", || {
        let names = s.ok(&["get", "pods", "-o", "name"]);
        !names.contains("on-goes")
    });
    assert_eq!(s.ok(&["get", "pods", "-o", "name"]).trim(), "pod/on-stays", "pods on live nodes stay");
}
