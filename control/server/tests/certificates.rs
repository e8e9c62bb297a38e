//! Node credentials the upstream way, against a real skiff-control and kubectl 1.32: the
//! bootstrap token in `bootstrap.kubeconfig` may create a kubelet client
//! CertificateSigningRequest, which the in-process approver approves and the signer
//! issues at once; the certificate authenticates as `system:node:<name>` in
//! `system:nodes`. Other requests wait for `kubectl certificate approve|deny`, and
//! `kubectl get csr` shows where each stands.

mod support;

use std::process::Command;

use base64::Engine;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use support::Server;

/// A PEM CSR for `cn` in `orgs`, and its key.
fn request(cn: &str, orgs: &[&str]) -> (String, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    p.distinguished_name = dn;
    (p.serialize_request(&key).unwrap().pem().unwrap(), key)
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

    // A kubelet client request from the bootstrap token is approved and issued at once.
    let (pem, key) = request("system:node:n1", &["system:nodes"]);
    let f = s.write("node.yaml", &csr_manifest("node-csr-n1", &pem, "kubernetes.io/kube-apiserver-client-kubelet"));
    let out = kubectl_as(&s, &bootstrap, &["create", "-f", &f]);
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    let cert_of = |name: &str| s.ok(&["get", "csr", name, "-o", "jsonpath={.status.certificate}"]);
    s.wait_for(20, "the node certificate", || !cert_of("node-csr-n1").is_empty());
    let table = s.ok(&["get", "csr"]);
    let row = table.lines().find(|l| l.starts_with("node-csr-n1")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("Approved,Issued") && row.contains("system:bootstrap:"), "{table}");
    assert!(row.contains("kubernetes.io/kube-apiserver-client-kubelet"), "{table}");

    // The certificate is the node's identity.
    let cert = base64::engine::general_purpose::STANDARD.decode(cert_of("node-csr-n1")).unwrap();
    let node_kubeconfig = s.tmp.path().join("node.kubeconfig");
    let b = |x: &[u8]| base64::engine::general_purpose::STANDARD.encode(x);
    std::fs::write(
        &node_kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: node1\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: {}\ncontexts:\n- name: node1\n  context: {{cluster: c, user: n1}}\nusers:\n- name: n1\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            s.port,
            b(&std::fs::read(s.dir.join("pki/ca.crt")).unwrap()),
            b(&cert),
            b(key.serialize_pem().as_bytes())
        ),
    )
    .unwrap();
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
    s.wait_for(20, "alice's certificate", || !cert_of("alice").is_empty());
    let table = s.ok(&["get", "csr"]);
    let row = |n: &str| table.lines().find(|l| l.starts_with(n)).unwrap_or_else(|| panic!("{table}")).to_string();
    assert!(row("alice").ends_with("Approved,Issued"), "{table}");
    assert!(row("bob").ends_with("Denied"), "{table}");
    assert!(cert_of("bob").is_empty());
    // The request's subject is fixed: an approved one is signed for what it asked.
    let approval = s.json(&["get", "csr", "alice"]);
    assert_eq!(approval["status"]["conditions"][0]["reason"], "KubectlApprove", "{approval}");
}
