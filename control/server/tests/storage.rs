//! PersistentVolumes, claims and StorageClasses with the controllers and the scheduler of
//! skiff-control, driven by kubectl 1.32: the default `local-path` class and
//! DefaultStorageClass admission, binding of claims to pre-created volumes (size,
//! access modes, selector, smallest fit), reclaim policies, and WaitForFirstConsumer
//! provisioning on the node the scheduler picks. No kubelet runs: the Nodes are fake
//! (Ready, with allocatable) and pods are only placed, so nothing is mounted here (the
//! node agent's side is `tests/tests/storage.rs`).

mod support;

use std::time::Duration;

use support::{Server, node_manifest, wait_for};

fn jsonpath(s: &Server, args: &[&str], path: &str) -> String {
    let mut a = args.to_vec();
    let p = format!("jsonpath={path}");
    a.extend(["-o", &p]);
    s.ok(&a)
}

fn phase(s: &Server, kind: &str, name: &str) -> String {
    jsonpath(s, &["get", kind, name], "{.status.phase}")
}

fn wait_phase(s: &Server, kind: &str, name: &str, want: &str) {
    s.wait_for(20, &format!("{kind} {name} {want}"), || phase(s, kind, name) == want);
}

fn pv(name: &str, size: &str, modes: &str, policy: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  \
         capacity: {{storage: {size}}}\n  accessModes: [{modes}]\n  persistentVolumeReclaimPolicy: {policy}\n  \
         storageClassName: manual\n  hostPath: {{path: /srv/{name}}}\n"
    )
}

fn pvc(name: &str, size: &str, modes: &str, class: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  accessModes: [{modes}]\n  \
         resources: {{requests: {{storage: {size}}}}}\n{class}{extra}"
    )
}

fn events_of(s: &Server, name: &str) -> String {
    s.ok(&["get", "events", "--field-selector", &format!("involvedObject.name={name}")])
}

#[test]
fn the_default_class_is_local_path_and_claims_without_a_class_get_it() {
    let s = Server::start();
    let table = s.ok(&["get", "storageclass"]);
    let row = table.lines().find(|l| l.starts_with("local-path")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.starts_with("local-path (default)"), "{table}");
    assert!(
        row.contains("skiff.io/local-path") && row.contains("Delete") && row.contains("WaitForFirstConsumer"),
        "{row}"
    );

    s.apply("a.yaml", &pvc("defaulted", "1Gi", "ReadWriteOnce", "", ""));
    assert_eq!(jsonpath(&s, &["get", "pvc", "defaulted"], "{.spec.storageClassName}"), "local-path");
    s.apply("b.yaml", &pvc("classless", "1Gi", "ReadWriteOnce", "  storageClassName: \"\"\n", ""));
    let classless = s.json(&["get", "pvc", "classless"]);
    assert_eq!(classless["spec"]["storageClassName"], "", "\"\" asks for no class: {classless}");

    // The claim of the default class waits for a pod: no volume is made for it yet.
    wait_for(Duration::from_secs(10), "WaitForFirstConsumer event", || {
        events_of(&s, "defaulted").contains("WaitForFirstConsumer")
    });
    assert_eq!(phase(&s, "pvc", "defaulted"), "Pending");
    assert_eq!(s.ok(&["get", "pv", "-o", "name"]).trim(), "");
    // Without a class and without volumes: nothing can bind, and the event says so.
    wait_for(Duration::from_secs(10), "FailedBinding event", || {
        events_of(&s, "classless")
            .contains("no persistent volumes available for this claim and no storage class is set")
    });
}

#[test]
fn claims_bind_to_the_smallest_fitting_volume_and_are_reclaimed_by_policy() {
    let s = Server::start();
    s.apply("pv-small.yaml", &pv("pv-small", "1Gi", "ReadWriteOnce", "Delete", ""));
    s.apply("pv-mid.yaml", &pv("pv-mid", "5Gi", "ReadWriteOnce", "Retain", ""));
    s.apply("pv-big.yaml", &pv("pv-big", "10Gi", "ReadWriteOnce, ReadWriteMany", "Retain", ""));
    s.apply("pv-gold.yaml", &pv("pv-gold", "20Gi", "ReadWriteOnce", "Retain", "tier: gold"));
    for v in ["pv-small", "pv-mid", "pv-big", "pv-gold"] {
        wait_phase(&s, "pv", v, "Available");
    }
    let class = "  storageClassName: manual\n";
    // 3Gi: pv-mid (5Gi) is the smallest that fits.
    s.apply("c1.yaml", &pvc("three", "3Gi", "ReadWriteOnce", class, ""));
    wait_phase(&s, "pvc", "three", "Bound");
    assert_eq!(jsonpath(&s, &["get", "pvc", "three"], "{.spec.volumeName}"), "pv-mid");
    // ReadWriteMany: only pv-big offers it.
    s.apply("c2.yaml", &pvc("shared", "1Gi", "ReadWriteMany", class, ""));
    wait_phase(&s, "pvc", "shared", "Bound");
    assert_eq!(jsonpath(&s, &["get", "pvc", "shared"], "{.spec.volumeName}"), "pv-big");
    // A selector: only the gold volume, although pv-small is smaller.
    s.apply("c3.yaml", &pvc("gold", "1Gi", "ReadWriteOnce", class, "  selector: {matchLabels: {tier: gold}}\n"));
    wait_phase(&s, "pvc", "gold", "Bound");
    assert_eq!(jsonpath(&s, &["get", "pvc", "gold"], "{.spec.volumeName}"), "pv-gold");
    s.apply("c4.yaml", &pvc("small", "500Mi", "ReadWriteOnce", class, ""));
    wait_phase(&s, "pvc", "small", "Bound");
    assert_eq!(jsonpath(&s, &["get", "pvc", "small"], "{.spec.volumeName}"), "pv-small");
    // Nothing is left that fits.
    s.apply("c5.yaml", &pvc("huge", "50Gi", "ReadWriteOnce", class, ""));

    let claim = s.json(&["get", "pvc", "three"]);
    assert_eq!(claim["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"], "yes", "{claim}");
    assert_eq!(claim["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"], "yes", "{claim}");
    assert_eq!(claim["status"]["capacity"]["storage"], "5Gi", "{claim}");
    assert_eq!(claim["status"]["accessModes"][0], "ReadWriteOnce", "{claim}");
    let volume = s.json(&["get", "pv", "pv-mid"]);
    assert_eq!(volume["status"]["phase"], "Bound");
    assert_eq!(volume["spec"]["claimRef"]["name"], "three");
    assert_eq!(volume["spec"]["claimRef"]["uid"], claim["metadata"]["uid"]);
    let table = s.ok(&["get", "pv", "pv-mid"]);
    assert!(table.contains("Bound") && table.contains("default/three") && table.contains("5Gi"), "{table}");
    let table = s.ok(&["get", "pvc", "three"]);
    assert!(table.contains("Bound") && table.contains("pv-mid") && table.contains("RWO"), "{table}");

    wait_for(Duration::from_secs(10), "huge's ProvisioningFailed event", || {
        events_of(&s, "huge").contains("storageclass.storage.k8s.io \"manual\" not found")
    });
    assert_eq!(phase(&s, "pvc", "huge"), "Pending");

    // Retain: the volume outlives its claim as Released, and no new claim takes it.
    s.ok(&["delete", "pvc", "three"]);
    wait_phase(&s, "pv", "pv-mid", "Released");
    s.apply("c6.yaml", &pvc("again", "3Gi", "ReadWriteOnce", class, ""));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(phase(&s, "pvc", "again"), "Pending", "a Released volume is not bound again");
    assert_eq!(phase(&s, "pv", "pv-mid"), "Released");

    // Delete on a volume no provisioner made: nothing here can delete it, so it fails.
    s.ok(&["delete", "pvc", "small"]);
    wait_phase(&s, "pv", "pv-small", "Failed");
    let message = jsonpath(&s, &["get", "pv", "pv-small"], "{.status.message}");
    assert!(message.contains("delete it by hand"), "{message}");
}

#[test]
fn wait_for_first_consumer_provisions_on_the_node_the_pod_goes_to() {
    let volumes = tempfile::tempdir().unwrap();
    let base = volumes.path().to_path_buf();
    let s = Server::start_with(&["--local-path-dir", base.to_str().unwrap()]);
    s.apply("n1.yaml", &node_manifest("n1", "4", "8Gi", "", ""));
    s.apply("n2.yaml", &node_manifest("n2", "4", "8Gi", ", disk: ssd", ""));
    s.apply("data.yaml", &pvc("data", "2Gi", "ReadWriteOnce", "", ""));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(phase(&s, "pvc", "data"), "Pending", "no pod uses it yet");

    let pod = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{extra}  containers: [{{name: c, image: x}}]\n  \
             volumes: [{{name: v, persistentVolumeClaim: {{claimName: data}}}}]\n"
        )
    };
    s.apply("first.yaml", &pod("first", "  nodeSelector: {disk: ssd}\n"));
    wait_phase(&s, "pvc", "data", "Bound");
    let claim = s.json(&["get", "pvc", "data"]);
    assert_eq!(claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"], "n2", "{claim}");
    assert_eq!(claim["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"], "skiff.io/local-path");
    let name = format!("pvc-{}", claim["metadata"]["uid"].as_str().unwrap());
    assert_eq!(claim["spec"]["volumeName"], name.as_str());
    let volume = s.json(&["get", "pv", &name]);
    assert_eq!(volume["spec"]["hostPath"]["path"], base.join("n2").join(&name).to_str().unwrap(), "{volume}");
    assert_eq!(volume["spec"]["capacity"]["storage"], "2Gi");
    assert_eq!(volume["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(volume["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"], "skiff.io/local-path");
    let terms = &volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"];
    assert_eq!(terms[0]["matchExpressions"][0]["values"][0], "n2", "{volume}");
    s.wait_for(20, "first bound to n2", || jsonpath(&s, &["get", "pod", "first"], "{.spec.nodeName}") == "n2");
    assert!(events_of(&s, "data").contains("ProvisioningSucceeded"));

    // Another pod of the claim follows its volume to n2, whatever the spreading says.
    for i in 0..3 {
        s.apply(&format!("f{i}.yaml"), &pod(&format!("follower-{i}"), ""));
    }
    for i in 0..3 {
        let p = format!("follower-{i}");
        s.wait_for(20, &format!("{p} bound"), || !jsonpath(&s, &["get", "pod", &p], "{.spec.nodeName}").is_empty());
        assert_eq!(jsonpath(&s, &["get", "pod", &p], "{.spec.nodeName}"), "n2");
    }

    // An unbound claim of an Immediate class with no volume: the pod waits, and says why.
    s.apply(
        "instant.yaml",
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: instant}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: Immediate\n",
    );
    s.apply("orphan.yaml", &pvc("orphan", "1Gi", "ReadWriteOnce", "  storageClassName: instant\n", ""));
    s.apply(
        "stuck.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: stuck}\nspec:\n  containers: [{name: c, image: x}]\n  volumes: [{name: v, persistentVolumeClaim: {claimName: orphan}}]\n",
    );
    wait_for(Duration::from_secs(20), "stuck's FailedScheduling event", || {
        events_of(&s, "stuck").contains("FailedScheduling")
    });
    let describe = s.ok(&["describe", "pod", "stuck"]);
    assert!(describe.contains("pod has unbound immediate PersistentVolumeClaims (\"orphan\")"), "{describe}");
    assert!(jsonpath(&s, &["get", "pod", "stuck"], "{.spec.nodeName}").is_empty());

    // A claim in use is kept (Terminating) until its pods are gone; then, with reclaim
    // policy Delete, its provisioned volume goes too.
    assert_eq!(claim["metadata"]["finalizers"][0], "kubernetes.io/pvc-protection", "{claim}");
    s.ok(&["delete", "pvc", "data", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(2));
    let terminating = s.json(&["get", "pvc", "data"]);
    assert!(terminating["metadata"]["deletionTimestamp"].is_string(), "{terminating}");
    assert_eq!(s.ok(&["get", "pv", "-o", "name"]).trim(), format!("persistentvolume/{name}"));
    s.ok(&["delete", "pod", "--all", "--grace-period=0", "--force"]);
    s.wait_for(20, "the claim deleted", || !s.run(&["get", "pvc", "data"]).status.success());
    s.wait_for(20, "the provisioned volume deleted", || s.ok(&["get", "pv", "-o", "name"]).trim().is_empty());
}
