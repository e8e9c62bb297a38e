//! End-to-end test of what makes every pod's `/var/run/secrets/kubernetes.io/serviceaccount`
//! with the real kubectl (v1.32 when installed): ServiceAccount admission (the account
//! defaulted and checked, the `kube-api-access-*` projected volume and its mounts) and
//! the root-CA publisher (ConfigMap `kube-root-ca.crt` in every namespace, repaired).
//!
//! The test starts its own `skiff-control` (with its controllers) through a guard that
//! kills it on drop.

mod support;

use support::Server;

const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn root_ca(s: &Server, ns: &str) -> Option<String> {
    let out = s.run(&["get", "cm", "kube-root-ca.crt", "-n", ns, "-o", "jsonpath={.data.ca\\.crt}"]);
    out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
}

#[test]
fn pods_get_the_service_account_volume_and_namespaces_the_root_ca() {
    let s = Server::start();
    let ca = std::fs::read_to_string(s.dir.join("pki/ca.crt")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    // The controllers are up once the system namespaces have their ConfigMap.
    s.wait_for(60, "kube-root-ca.crt in default", || root_ca(&s, "default").as_deref() == Some(ca.as_str()));

    // A pod created right after its namespace: admission waits for the ServiceAccount
    // controller's `default` instead of refusing the pod.
    s.ok(&["create", "namespace", "team"]);
    s.apply(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: team}\nspec:\n  initContainers:\n  - {name: init, image: busybox}\n  containers:\n  - {name: app, image: busybox}\n  - name: side\n    image: busybox\n    volumeMounts: [{name: own, mountPath: /var/run/secrets/kubernetes.io/serviceaccount}]\n  volumes:\n  - {name: own, emptyDir: {}}\n",
    );
    let yaml = s.ok(&["get", "pod", "web", "-n", "team", "-o", "yaml"]);
    for want in [
        "serviceAccountName: default",
        "serviceAccount: default",
        "name: kube-api-access-",
        "expirationSeconds: 3607",
        "name: kube-root-ca.crt",
        "fieldPath: metadata.namespace",
        "defaultMode: 420",
        "mountPath: /var/run/secrets/kubernetes.io/serviceaccount",
    ] {
        assert!(yaml.contains(want), "{want:?} missing from\n{yaml}");
    }
    let pod = s.json(&["get", "pod", "web", "-n", "team"]);
    let volume = pod["spec"]["volumes"][1]["name"].as_str().unwrap().to_string();
    assert!(volume.starts_with("kube-api-access-") && volume.len() == "kube-api-access-".len() + 5, "{pod}");
    let token_mount = serde_json::json!({"name": volume, "readOnly": true, "mountPath": MOUNT});
    assert_eq!(pod["spec"]["initContainers"][0]["volumeMounts"], serde_json::json!([token_mount]));
    assert_eq!(pod["spec"]["containers"][0]["volumeMounts"], serde_json::json!([token_mount]));
    assert_eq!(pod["spec"]["containers"][1]["volumeMounts"][0]["name"], "own", "an existing mount is kept");
    assert_eq!(pod["spec"]["containers"][1]["volumeMounts"].as_array().unwrap().len(), 1);

    // The new namespace gets the CA, and keeps it.
    s.wait_for(30, "kube-root-ca.crt in team", || root_ca(&s, "team").as_deref() == Some(ca.as_str()));
    s.ok(&["patch", "cm", "kube-root-ca.crt", "-n", "team", "--type=merge", "-p", r#"{"data":{"ca.crt":"forged"}}"#]);
    s.wait_for(30, "the changed kube-root-ca.crt repaired", || root_ca(&s, "team").as_deref() == Some(ca.as_str()));
    s.ok(&["delete", "cm", "kube-root-ca.crt", "-n", "team"]);
    s.wait_for(30, "the deleted kube-root-ca.crt recreated", || root_ca(&s, "team").as_deref() == Some(ca.as_str()));

    // Opting out, and accounts that do not exist.
    s.apply(
        "quiet.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: quiet, namespace: team}\nspec:\n  automountServiceAccountToken: false\n  containers:\n  - {name: app, image: busybox}\n",
    );
    let quiet = s.json(&["get", "pod", "quiet", "-n", "team"]);
    assert!(quiet["spec"].get("volumes").is_none(), "{quiet}");
    assert!(quiet["spec"]["containers"][0].get("volumeMounts").is_none(), "{quiet}");
    let stray =
        ["run", "stray", "-n", "team", "--image=busybox", "--overrides", r#"{"spec":{"serviceAccountName":"nobody"}}"#];
    let e = s.fails(&stray);
    assert!(e.contains("error looking up service account team/nobody"), "{e}");
    s.ok(&["create", "serviceaccount", "nobody", "-n", "team"]);
    s.ok(&stray);
    assert_eq!(s.json(&["get", "pod", "stray", "-n", "team"])["spec"]["serviceAccountName"], "nobody");

    // A mirror pod is left as its kubelet wrote it.
    s.apply(
        "mirror.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: static-n1\n  namespace: team\n  annotations: {kubernetes.io/config.mirror: abc}\nspec:\n  nodeName: n1\n  containers:\n  - {name: app, image: busybox}\n",
    );
    let mirror = s.json(&["get", "pod", "static-n1", "-n", "team"]);
    assert!(mirror["spec"].get("serviceAccountName").is_none(), "{mirror}");
    assert!(mirror["spec"].get("volumes").is_none(), "{mirror}");
}
