//! LimitRange and ResourceQuota admission and the resource quota controller, with the
//! real kubectl against a real `skiff-control`: LimitRange defaults and bounds on pods
//! and claims; quotas refusing what does not fit with upstream's messages, `used/hard`
//! kept by the controller (a deleted or finished pod gives its slot back); a Deployment
//! held to a quota records FailedCreate; parallel creates never overrun a quota.
//!
//! No kubelet runs and no node exists: pods stay Pending and go at once when deleted.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::Server;

fn pod_yaml(name: &str, ns: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{containers: [{{name: {name}, image: busybox, resources: {resources}}}]}}\n"
    )
}

/// Creates a quota and waits for the controller's first count of it.
fn quota(s: &Server, ns: &str, name: &str, hard: &str) {
    s.ok(&["create", "quota", name, "-n", ns, &format!("--hard={hard}")]);
    let keys: Vec<&str> = hard.split(',').map(|kv| kv.split('=').next().unwrap()).collect();
    s.wait_for(20, &format!("quota {ns}/{name} to be counted"), || {
        let q = s.json(&["get", "quota", name, "-n", ns]);
        keys.iter().all(|k| q["status"]["used"].get(*k).is_some() && q["status"]["hard"].get(*k).is_some())
    });
}

fn used(s: &Server, ns: &str, name: &str, key: &str) -> String {
    let q = s.json(&["get", "quota", name, "-n", ns]);
    q["status"]["used"][key].as_str().unwrap_or("").to_string()
}

fn wait_used(s: &Server, ns: &str, name: &str, key: &str, want: &str) {
    s.wait_for(20, &format!("quota {ns}/{name} to show {key}={want}"), || used(s, ns, name, key) == want);
}

#[test]
fn limit_ranges_default_and_bound_pods_and_claims() {
    let s = Server::start();
    s.ok(&["create", "namespace", "lr"]);
    s.apply(
        "lr.yaml",
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: bounds, namespace: lr}\nspec:\n  limits:\n\
         \x20\x20- type: Container\n    max: {cpu: 500m}\n    default: {cpu: 300m, memory: 128Mi}\n    defaultRequest: {cpu: 100m}\n\
         \x20\x20- type: PersistentVolumeClaim\n    max: {storage: 2Gi}\n",
    );

    // Stored with upstream's defaulting: the default request falls back to the default.
    let lr = s.json(&["get", "limitrange", "bounds", "-n", "lr"]);
    assert_eq!(lr["spec"]["limits"][0]["defaultRequest"], serde_json::json!({"cpu": "100m", "memory": "128Mi"}));

    // A pod without resources gets the defaults, and the note of what was set.
    s.ok(&["run", "plain", "-n", "lr", "--image=busybox"]);
    let p = s.json(&["get", "pod", "plain", "-n", "lr"]);
    let res = &p["spec"]["containers"][0]["resources"];
    assert_eq!(res["requests"], serde_json::json!({"cpu": "100m", "memory": "128Mi"}), "{p}");
    assert_eq!(res["limits"], serde_json::json!({"cpu": "300m", "memory": "128Mi"}), "{p}");
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container plain; cpu, memory limit for container plain"
    );

    // Over the maximum: refused with upstream's message.
    let f = s.write("big.yaml", &pod_yaml("big", "lr", "{limits: {cpu: \"1\"}}"));
    let err = s.fails(&["create", "-f", &f]);
    assert!(
        err.contains("pods \"big\" is forbidden: maximum cpu usage per Container is 500m, but limit is 1"),
        "{err}"
    );

    // Claims are held to their storage bounds.
    let claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: huge, namespace: lr}\n\
                 spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 5Gi}}}\n";
    let f = s.write("claim.yaml", claim);
    let err = s.fails(&["create", "-f", &f]);
    assert!(
        err.contains(
            "persistentvolumeclaims \"huge\" is forbidden: maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"
        ),
        "{err}"
    );

    // A Pod item bounds the sum of the (defaulted) containers.
    s.apply(
        "pod-lr.yaml",
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: per-pod, namespace: lr}\nspec:\n  limits:\n\
         \x20\x20- type: Pod\n    max: {memory: 200Mi}\n",
    );
    let two = "apiVersion: v1\nkind: Pod\nmetadata: {name: two, namespace: lr}\n\
               spec: {containers: [{name: a, image: busybox}, {name: b, image: busybox}]}\n";
    let f = s.write("two.yaml", two);
    let err = s.fails(&["create", "-f", &f]);
    assert!(
        err.contains("pods \"two\" is forbidden: maximum memory usage per Pod is 200Mi, but limit is 256Mi"),
        "{err}"
    );
}

#[test]
fn quotas_refuse_what_does_not_fit_and_the_controller_keeps_usage() {
    let s = Server::start();
    s.ok(&["create", "namespace", "q"]);
    quota(&s, "q", "q", "pods=2");
    assert_eq!(used(&s, "q", "q", "pods"), "0");
    // A dry run is checked but charges nothing.
    s.ok(&["run", "dry", "-n", "q", "--image=busybox", "--dry-run=server"]);
    assert_eq!(used(&s, "q", "q", "pods"), "0");

    s.ok(&["run", "p1", "-n", "q", "--image=busybox"]);
    s.ok(&["run", "p2", "-n", "q", "--image=busybox"]);
    let err = s.fails(&["run", "p3", "-n", "q", "--image=busybox"]);
    assert!(
        err.contains("pods \"p3\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"),
        "{err}"
    );
    assert_eq!(used(&s, "q", "q", "pods"), "2");
    let err = s.fails(&["run", "p3", "-n", "q", "--image=busybox", "--dry-run=server"]);
    assert!(err.contains("exceeded quota: q"), "{err}");
    let table = s.ok(&["get", "quota", "-n", "q"]);
    assert!(table.contains("pods: 2/2"), "{table}");
    let described = s.ok(&["describe", "quota", "q", "-n", "q"]);
    assert!(described.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["pods", "2", "2"]), "{described}");

    // A deleted pod gives its slot back: the controller recounts.
    s.ok(&["delete", "pod", "p1", "-n", "q", "--wait=false"]);
    wait_used(&s, "q", "q", "pods", "1");
    s.ok(&["run", "p3", "-n", "q", "--image=busybox"]);

    // So does a finished one.
    s.ok(&[
        "patch",
        "pod",
        "p2",
        "-n",
        "q",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ]);
    wait_used(&s, "q", "q", "pods", "1");
    s.ok(&["run", "p4", "-n", "q", "--image=busybox"]);

    // A quota on cpu needs every container to say how much.
    s.ok(&["create", "namespace", "cpu"]);
    quota(&s, "cpu", "compute", "requests.cpu=1,limits.cpu=2");
    let err = s.fails(&["run", "nores", "-n", "cpu", "--image=busybox"]);
    assert!(
        err.contains("pods \"nores\" is forbidden: failed quota: compute: must specify limits.cpu for: nores; requests.cpu for: nores"),
        "{err}"
    );
    let sized = "{requests: {cpu: 600m}, limits: {cpu: \"1\"}}";
    s.ok(&["create", "-f", &s.write("s1.yaml", &pod_yaml("s1", "cpu", sized))]);
    let err = s.fails(&["create", "-f", &s.write("s2.yaml", &pod_yaml("s2", "cpu", sized))]);
    assert!(
        err.contains(
            "pods \"s2\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1"
        ),
        "{err}"
    );
    assert_eq!(used(&s, "cpu", "compute", "limits.cpu"), "1");

    // Object counts of any kind.
    s.ok(&["create", "namespace", "apps"]);
    quota(&s, "apps", "deploys", "count/deployments.apps=1,configmaps=3");
    s.ok(&["create", "deployment", "a", "-n", "apps", "--image=busybox", "--replicas=0"]);
    let err = s.fails(&["create", "deployment", "b", "-n", "apps", "--image=busybox", "--replicas=0"]);
    assert!(
        err.contains(
            "deployments.apps \"b\" is forbidden: exceeded quota: deploys, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"
        ),
        "{err}"
    );
    // kube-root-ca.crt is a ConfigMap of the namespace too.
    wait_used(&s, "apps", "deploys", "configmaps", "1");
    s.ok(&["delete", "deployment", "a", "-n", "apps"]);
    wait_used(&s, "apps", "deploys", "count/deployments.apps", "0");
    s.ok(&["create", "deployment", "b", "-n", "apps", "--image=busybox", "--replicas=0"]);

    // Services: counted on create, and on an update that adds node ports.
    s.ok(&["create", "namespace", "svc"]);
    quota(&s, "svc", "net", "services=2,services.nodeports=0,services.loadbalancers=0");
    s.ok(&["create", "service", "clusterip", "one", "-n", "svc", "--tcp=80"]);
    let err = s.fails(&["create", "service", "nodeport", "two", "-n", "svc", "--tcp=80"]);
    assert!(
        err.contains(
            "services \"two\" is forbidden: exceeded quota: net, requested: services.nodeports=1, used: services.nodeports=0, limited: services.nodeports=0"
        ),
        "{err}"
    );
    let err = s.fails(&["patch", "service", "one", "-n", "svc", "-p", r#"{"spec":{"type":"NodePort"}}"#]);
    assert!(
        err.contains("services \"one\" is forbidden: exceeded quota: net, requested: services.nodeports=1"),
        "{err}"
    );
    assert_eq!(used(&s, "svc", "net", "services"), "1");

    // Claims by their requested storage.
    quota(&s, "svc", "disk", "requests.storage=3Gi,persistentvolumeclaims=5");
    let claim = |name: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: svc}}\n\
             spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 2Gi}}}}}}\n"
        )
    };
    s.ok(&["create", "-f", &s.write("c1.yaml", &claim("c1"))]);
    let err = s.fails(&["create", "-f", &s.write("c2.yaml", &claim("c2"))]);
    assert!(
        err.contains(
            "persistentvolumeclaims \"c2\" is forbidden: exceeded quota: disk, requested: requests.storage=2Gi, used: requests.storage=2Gi, limited: requests.storage=3Gi"
        ),
        "{err}"
    );

    // A scoped quota counts only the pods in its scope.
    s.ok(&["create", "namespace", "scoped"]);
    // (Not waiting for the controller: admission counts a quota it has not counted.)
    s.ok(&["create", "quota", "best-effort", "-n", "scoped", "--hard=pods=1", "--scopes=BestEffort"]);
    s.ok(&["run", "be1", "-n", "scoped", "--image=busybox"]);
    let err = s.fails(&["run", "be2", "-n", "scoped", "--image=busybox"]);
    assert!(err.contains("exceeded quota: best-effort, requested: pods=1, used: pods=1, limited: pods=1"), "{err}");
    s.ok(&["create", "-f", &s.write("sized.yaml", &pod_yaml("sized", "scoped", "{requests: {cpu: 100m}}"))]);
}

#[test]
fn deployments_are_held_to_quota_and_parallel_creates_never_overrun_it() {
    let s = Server::start();
    s.ok(&["create", "namespace", "d"]);
    quota(&s, "d", "q", "pods=2");
    s.ok(&["create", "deployment", "web", "-n", "d", "--image=nginx", "--replicas=3"]);
    let pods = |ns: &str| -> usize {
        let l = s.json(&["get", "pods", "-n", ns]);
        l["items"].as_array().map_or(0, Vec::len)
    };
    s.wait_for(30, "the Deployment's first two pods", || pods("d") == 2);
    s.wait_for(30, "a FailedCreate event naming the quota", || {
        let events = s.json(&["get", "events", "-n", "d"]);
        events["items"].as_array().into_iter().flatten().any(|e: &Value| {
            e["reason"] == "FailedCreate"
                && e["involvedObject"]["kind"] == "ReplicaSet"
                && e["message"].as_str().is_some_and(|m| {
                    m.contains("is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2")
                })
        })
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pods("d"), 2, "the third pod stays refused");
    // Raising the quota lets the ReplicaSet's retry through.
    s.ok(&["patch", "quota", "q", "-n", "d", "-p", r#"{"spec":{"hard":{"pods":"3"}}}"#]);
    s.wait_for(60, "the Deployment's third pod once the quota allows it", || pods("d") == 3);
    wait_used(&s, "d", "q", "pods", "3");

    // Ten creates at once against five slots: the compare-and-swap on the quota lets
    // exactly five through.
    s.ok(&["create", "namespace", "c"]);
    quota(&s, "c", "q", "pods=5");
    let results: Vec<(bool, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    let out = s.run(&["run", &format!("p{i}"), "-n", "c", "--image=busybox"]);
                    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let passed = results.iter().filter(|(ok, _)| *ok).count();
    assert_eq!(passed, 5, "{results:?}");
    for (_, err) in results.iter().filter(|(ok, _)| !ok) {
        assert!(err.contains("exceeded quota: q, requested: pods=1, used: pods=5, limited: pods=5"), "{err}");
    }
    assert_eq!(pods("c"), 5);
    assert_eq!(used(&s, "c", "q", "pods"), "5");
}
