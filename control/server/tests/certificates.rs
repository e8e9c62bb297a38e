//! Node credentials the upstream way, against a real skiff-control and kubectl 1.32: the
//! bootstrap token in `bootstrap.kubeconfig` may create a kubelet client
//! CertificateSigningRequest, which the in-process approver approves and the signer
//! issues at once; the certificate authenticates as `system:node:<name>` in
//! `system:nodes`. Other requests wait for `kubectl certificate approve|deny`, and
//! `kubectl get csr` shows where each stands.

mod support;

use std::process::Command;

use base64::Engine;
use rcgen::KeyPair;
use support::Server;

/// A PEM CSR for `cn` in `orgs`, and its key.
fn request(cn: &str, orgs: &[&str]) -> (String, KeyPair) {
    let key = KeyPair::generate().unwrap();
    (skiff_control::tls::signer::request_pem(cn, orgs, &key).unwrap(), key)
}

fn csr_manifest(name: &str, pem: &str, signer: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  request: {b64}\n  signerName: {signer}\n  usages: [digital signature, client auth]\n"
    )
}

fn kubectl_as(s: &Server, kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(&s.kubectl).env("KUBECONFIG", kubeconfig).env("HOME", s.tmp.path()).args(args).output().unwrap()
}

fn cert_of(s: &Server, csr: &str) -> String {
    s.ok(&["get", "csr", csr, "-o", "jsonpath={.status.certificate}"])
}

/// Gets `node` a certificate with the bootstrap token, as a node agent would, and
/// returns a kubeconfig with it.
fn node_credentials(s: &Server, node: &str) -> std::path::PathBuf {
    let bootstrap = s.dir.join("bootstrap.kubeconfig");
    let (pem, key) = request(&format!("system:node:{node}"), &["system:nodes"]);
    let csr = format!("node-csr-{node}");
    let f = s.write(&format!("{csr}.yaml"), &csr_manifest(&csr, &pem, "kubernetes.io/kube-apiserver-client-kubelet"));
    let out = kubectl_as(s, &bootstrap, &["create", "-f", &f]);
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    s.wait_for(20, "the node certificate", || !cert_of(s, &csr).is_empty());
    let cert = base64::engine::general_purpose::STANDARD.decode(cert_of(s, &csr)).unwrap();
    let path = s.tmp.path().join(format!("{node}.kubeconfig"));
    let b = |x: &[u8]| base64::engine::general_purpose::STANDARD.encode(x);
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: node1\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: {}\ncontexts:\n- name: node1\n  context: {{cluster: c, user: n1}}\nusers:\n- name: n1\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            s.port,
            b(&std::fs::read(s.dir.join("pki/ca.crt")).unwrap()),
            b(&cert),
            b(key.serialize_pem().as_bytes())
        ),
    )
    .unwrap();
    path
}

#[test]
fn bootstrap_token_gets_a_node_certificate_and_kubectl_approves_others() {
    let s = Server::start();
    let bootstrap = s.dir.join("bootstrap.kubeconfig");
    let text = std::fs::read_to_string(&bootstrap).expect("skiff-control writes bootstrap.kubeconfig");
    assert!(text.contains("token: ") && text.contains("certificate-authority-data"), "{text}");

    // As the bootstrap token: who am I, and what may I not do.
    let who = kubectl_as(&s, &bootstrap, &["auth", "whoami", "-o", "json"]);
    let who: serde_json::Value = serde_json::from_slice(&who.stdout).unwrap();
    let groups = who["status"]["userInfo"]["groups"].to_string();
    assert!(who["status"]["userInfo"]["username"].as_str().unwrap().starts_with("system:bootstrap:"), "{who}");
    assert!(groups.contains("system:bootstrappers"), "{who}");
    let denied = kubectl_as(&s, &bootstrap, &["get", "secrets", "-n", "kube-system"]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Forbidden"), "{denied:?}");

    // A kubelet client request from the bootstrap token is approved and issued at once,
    // and the certificate is the node's identity.
    let node_kubeconfig = node_credentials(&s, "n1");
    let table = s.ok(&["get", "csr"]);
    let row = table.lines().find(|l| l.starts_with("node-csr-n1")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("Approved,Issued") && row.contains("system:bootstrap:"), "{table}");
    assert!(row.contains("kubernetes.io/kube-apiserver-client-kubelet"), "{table}");
    let out = kubectl_as(&s, &node_kubeconfig, &["auth", "whoami", "-o", "json"]);
    let who: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:n1", "{who}");
    assert!(who["status"]["userInfo"]["groups"].to_string().contains("\"system:nodes\""), "{who}");

    // A request for someone else's identity is not auto-approved, whoever sends it.
    let (pem, _) = request("system:node:n2", &["system:nodes", "system:masters"]);
    let f = s.write("evil.yaml", &csr_manifest("evil", &pem, "kubernetes.io/kube-apiserver-client-kubelet"));
    assert!(kubectl_as(&s, &bootstrap, &["create", "-f", &f]).status.success());

    // Any other client request waits for a person: approve one, deny another.
    let (pem, _) = request("alice", &["devs"]);
    s.apply("alice.yaml", &csr_manifest("alice", &pem, "kubernetes.io/kube-apiserver-client"));
    let (pem, _) = request("bob", &[]);
    s.apply("bob.yaml", &csr_manifest("bob", &pem, "kubernetes.io/kube-apiserver-client"));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let table = s.ok(&["get", "csr"]);
    for name in ["alice", "bob", "evil"] {
        let row = table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{table}"));
        assert!(row.ends_with("Pending"), "{table}");
    }
    s.ok(&["certificate", "approve", "alice"]);
    s.ok(&["certificate", "deny", "bob"]);
    s.wait_for(20, "alice's certificate", || !cert_of(&s, "alice").is_empty());
    let table = s.ok(&["get", "csr"]);
    let row = |n: &str| table.lines().find(|l| l.starts_with(n)).unwrap_or_else(|| panic!("{table}")).to_string();
    assert!(row("alice").ends_with("Approved,Issued"), "{table}");
    assert!(row("bob").ends_with("Denied"), "{table}");
    assert!(cert_of(&s, "bob").is_empty());
    // The request's subject is fixed: an approved one is signed for what it asked.
    let approval = s.json(&["get", "csr", "alice"]);
    assert_eq!(approval["status"]["conditions"][0]["reason"], "KubectlApprove", "{approval}");
}

/// The node restrictions through the real server: a node changes only its own Node and
/// Lease, reads only the Secrets of pods bound to it, and creates only mirror pods.
#[test]
fn a_node_may_touch_only_its_own_objects() {
    let s = Server::start();
    let n1 = node_credentials(&s, "n1");
    let as_n1 = |args: &[&str]| kubectl_as(&s, &n1, args);
    let forbidden = |out: std::process::Output| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains("Forbidden"), "expected 403: {out:?}");
    };
    let node = |name: &str| format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n");
    let f = s.write("n1.yaml", &node("n1"));
    assert!(as_n1(&["create", "-f", &f]).status.success());
    let f = s.write("n2.yaml", &node("n2"));
    forbidden(as_n1(&["create", "-f", &f]));
    s.ok(&["create", "-f", &f]);
    assert!(as_n1(&["label", "node", "n1", "role=mine"]).status.success());
    forbidden(as_n1(&["label", "node", "n2", "role=mine"]));
    forbidden(as_n1(&["delete", "node", "n2"]));
    assert!(as_n1(&["get", "nodes"]).status.success());

    let lease = |name: &str| {
        format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {name}\n  namespace: kube-node-lease\nspec:\n  holderIdentity: {name}\n"
        )
    };
    let f = s.write("l1.yaml", &lease("n1"));
    assert!(as_n1(&["create", "-f", &f]).status.success());
    let f = s.write("l2.yaml", &lease("n2"));
    forbidden(as_n1(&["create", "-f", &f]));

    s.ok(&["create", "secret", "generic", "used", "--from-literal=a=b"]);
    s.ok(&["create", "secret", "generic", "unused", "--from-literal=a=b"]);
    s.apply(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: user\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: app\n  volumes:\n  - name: s\n    secret:\n      secretName: used\n",
    );
    s.wait_for(10, "n1 to read the Secret its pod uses", || as_n1(&["get", "secret", "used"]).status.success());
    forbidden(as_n1(&["get", "secret", "unused"]));
    forbidden(as_n1(&["get", "secrets"]));
    forbidden(as_n1(&["get", "configmap", "-n", "kube-system", "extension-apiserver-authentication"]));

    // Pods: a plain pod no, a mirror pod of its own yes; status only of its own pods.
    let pod = |name: &str, node: &str, mirror: bool| {
        let ann = if mirror { "  annotations:\n    kubernetes.io/config.mirror: hash\n" } else { "" };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{ann}spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: app\n"
        )
    };
    let f = s.write("plain.yaml", &pod("plain", "n1", false));
    forbidden(as_n1(&["create", "-f", &f]));
    let f = s.write("mirror2.yaml", &pod("mirror-n2", "n2", true));
    forbidden(as_n1(&["create", "-f", &f]));
    let f = s.write("mirror1.yaml", &pod("mirror-n1", "n1", true));
    assert!(as_n1(&["create", "-f", &f]).status.success(), "{}", s.log());
    s.apply("other.yaml", &pod("other", "n2", false));
    let status = r#"{"status":{"phase":"Running"}}"#;
    let out = as_n1(&["patch", "pod", "user", "--subresource=status", "--type=merge", "-p", status]);
    assert!(out.status.success(), "{out:?}");
    forbidden(as_n1(&["patch", "pod", "other", "--subresource=status", "--type=merge", "-p", status]));
    forbidden(as_n1(&["delete", "pod", "other"]));
}
