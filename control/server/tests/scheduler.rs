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

/// The message of a pod's PodScheduled condition ("" while it has none).
fn scheduled_message(s: &Server, pod: &str) -> String {
    s.ok(&["get", "pod", pod, "-o", r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].message}"#])
}

/// The nodes of the pods labelled `app=<app>`, by pod name (empty for pending ones).
fn nodes_of_app(s: &Server, app: &str) -> std::collections::BTreeMap<String, String> {
    let list = s.json(&["get", "pods", "-l", &format!("app={app}")]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let name = p["metadata"]["name"].as_str().unwrap().to_string();
            (name, p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// A Deployment `name` of `replicas` pods labelled `app=<name>` requesting 100m, with
/// `spec` (YAML lines indented by 6) added to the pod template's spec.
fn deployment(name: &str, replicas: u32, spec: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  \
         selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n{spec}      \
         containers: [{{name: c, image: x, resources: {{requests: {{cpu: 100m}}}}}}]\n"
    )
}

#[test]
fn anti_affinity_puts_replicas_on_distinct_nodes_and_affinity_co_locates() {
    let s = Server::start();
    for n in ["n1", "n2", "n3"] {
        s.apply(&format!("{n}.yaml"), &node_manifest(n, "4", "8Gi", "", ""));
    }
    let anti = "      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          \
                - {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: web}}}\n";
    s.apply("web.yaml", &deployment("web", 3, anti));
    wait_for(Duration::from_secs(30), "three web replicas bound", || {
        let on = nodes_of_app(&s, "web");
        on.len() == 3 && on.values().all(|n| !n.is_empty())
    });
    let mut hosts: Vec<String> = nodes_of_app(&s, "web").into_values().collect();
    hosts.sort();
    assert_eq!(hosts, ["n1", "n2", "n3"], "one replica per node");

    // A fourth replica has no node left.
    s.ok(&["scale", "deployment", "web", "--replicas=4"]);
    let mut pending = String::new();
    wait_for(Duration::from_secs(30), "the fourth replica to be reported unschedulable", || {
        let on = nodes_of_app(&s, "web");
        match on.iter().find(|(_, n)| n.is_empty()) {
            Some((p, _)) if on.len() == 4 => {
                pending = p.clone();
                !scheduled_message(&s, p).is_empty()
            }
            _ => false,
        }
    });
    assert_eq!(
        scheduled_message(&s, &pending),
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
         preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.."
    );
    let describe = s.ok(&["describe", "pod", &pending]);
    assert!(
        describe.contains("FailedScheduling") && describe.contains("didn't match pod anti-affinity rules"),
        "{describe}"
    );

    // Affinity: a pod wanting to be next to the cache lands on the cache's node.
    s.apply(
        "cache.yaml",
        &pod("cache", "100m", "  nodeSelector: {kubernetes.io/hostname: n2}\n")
            .replace("metadata: {name: cache}", "metadata: {name: cache, labels: {app: cache}}"),
    );
    let near = "  affinity: {podAffinity: {requiredDuringSchedulingIgnoredDuringExecution: \
                [{topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: cache}}}]}}\n";
    s.apply("api.yaml", &pod("api", "100m", near));
    wait_for(Duration::from_secs(20), "api bound", || !node_of(&s, "api").is_empty());
    assert_eq!(node_of(&s, "api"), "n2");
}

#[test]
fn topology_spread_evens_pods_out_over_zones() {
    let s = Server::start();
    // Zone a has three nodes, zone b one: resource scoring alone would favour zone a.
    for (n, zone) in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")] {
        s.apply(
            &format!("{n}.yaml"),
            &node_manifest(n, "4", "8Gi", &format!(", topology.kubernetes.io/zone: {zone}"), ""),
        );
    }
    let spread = "      topologySpreadConstraints:\n      - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, \
                  whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: spread}}}\n";
    s.apply("spread.yaml", &deployment("spread", 4, spread));
    wait_for(Duration::from_secs(30), "four replicas bound", || {
        let on = nodes_of_app(&s, "spread");
        on.len() == 4 && on.values().all(|n| !n.is_empty())
    });
    let on = nodes_of_app(&s, "spread");
    let in_b = on.values().filter(|n| *n == "b1").count();
    assert_eq!(in_b, 2, "two pods per zone: {on:?}");
}

#[test]
fn a_higher_priority_pod_preempts_a_lower_one() {
    let s = Server::start();
    s.apply("full.yaml", &node_manifest("full", "1", "4Gi", "", ""));
    s.apply(
        "classes.yaml",
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n---\n\
         apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high-polite}\nvalue: 1000\npreemptionPolicy: Never\n",
    );
    s.apply("low.yaml", &pod("low", "1", "  terminationGracePeriodSeconds: 0\n"));
    wait_for(Duration::from_secs(20), "low bound", || node_of(&s, "low") == "full");

    // preemptionPolicy Never: waits instead of evicting, and says so.
    s.apply("polite.yaml", &pod("polite", "1", "  priorityClassName: high-polite\n"));
    wait_for(Duration::from_secs(20), "polite reported unschedulable", || !scheduled_message(&s, "polite").is_empty());
    assert_eq!(
        scheduled_message(&s, "polite"),
        "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.."
    );
    assert_eq!(node_of(&s, "low"), "full");
    s.ok(&["delete", "pod", "polite"]);

    s.apply("high.yaml", &pod("high", "1", "  priorityClassName: high\n"));
    wait_for(Duration::from_secs(30), "high bound to full", || node_of(&s, "high") == "full");
    let left = s.ok(&["get", "pods", "-o", "name"]);
    assert!(!left.contains("pod/low"), "the victim is deleted: {left}");
    let events = s.ok(&["get", "events", "--field-selector", "involvedObject.name=low", "-o", "json"]);
    assert!(events.contains("Preempted by pod"), "{events}");
}
