//! The kubelet's view of the objects a pod refers to, against a real skiff-control on
//! 127.0.0.1, with a node's credentials (a static token for `system:node:<name>` in
//! group `system:nodes`, so RBAC's `system:node` role applies): a ConfigMap and a
//! Secret read through `ObjectLookup for skiff_api::Client`, a ServiceAccount token
//! bound to a pod (the TokenRequest API) that the API server then accepts as that
//! ServiceAccount, and a pod's env and kube-api-access volume built from them.
//!
//! Needs nothing but loopback and a built skiff-control; the API server is killed by a
//! guard even when the test fails.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use skiff_node::kubelet::env::{EnvContext, container_env};
use skiff_node::kubelet::lookup::{LookupError, ObjectLookup, TokenCache, TokenSpec};
use skiff_node::kubelet::volumes::{VolumeContext, container_mounts, prepare_volumes};
use skiff_tests::netns::{ChildGuard, wait_until};
use skiff_tests::{unique_tag, workspace_bin};

const NODE_TOKEN: &str = "node-token-for-the-kubelet-lookup-test";
const NS: &str = "default";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A kubeconfig `<name>.kubeconfig` for a bearer token.
fn kubeconfig(dir: &Path, name: &str, port: u16, ca: &Path, token: &str) -> PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\nusers:\n- name: u\n  user:\n    token: {token}\n",
        ca.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: Some(NS.into()), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_config_maps_secrets_and_pod_tokens_through_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("control");
    std::fs::create_dir_all(&data).unwrap();
    let node = unique_tag("lookup");
    std::fs::write(data.join("tokens.csv"), format!("{NODE_TOKEN},system:node:{node},node-uid,\"system:nodes\"\n"))
        .unwrap();
    let port = free_port();
    let log = std::fs::File::create(tmp.path().join("control.log")).unwrap();
    let child = Command::new(workspace_bin("skiff-control"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--bind-address", "127.0.0.1", "--port", &port.to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("cannot start skiff-control");
    let _control = ChildGuard::new(child);
    let control_log = || std::fs::read_to_string(tmp.path().join("control.log")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || data.join("admin.kubeconfig").exists()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "skiff-control did not come up in 20 s:\n{}",
        control_log()
    );
    let admin = skiff_api::Client::from_kubeconfig(&data.join("admin.kubeconfig"), "test").unwrap();
    let ca = data.join("pki/ca.crt");
    let node_client =
        skiff_api::Client::from_kubeconfig(&kubeconfig(tmp.path(), "node", port, &ca, NODE_TOKEN), "skiff-node")
            .unwrap();

    // The objects a pod refers to, created by the admin.
    let cm = ConfigMap {
        metadata: meta("app-config"),
        data: Some(BTreeMap::from([("color".into(), "blue".into()), ("mode".into(), "fast".into())])),
        ..Default::default()
    };
    admin.create(Some(NS), &cm).await.unwrap();
    let secret = Secret {
        metadata: meta("app-secret"),
        data: Some(BTreeMap::from([("password".into(), ByteString(b"s3cret".to_vec()))])),
        ..Default::default()
    };
    admin.create(Some(NS), &secret).await.unwrap();
    // The root-CA publisher puts the cluster CA into every namespace.
    let mut published = false;
    for _ in 0..200 {
        let root_ca = admin.get_opt::<ConfigMap>(Some(NS), "kube-root-ca.crt").await.unwrap();
        if let Some(cm) = root_ca {
            let data = cm.data.unwrap_or_default();
            assert_eq!(
                data.get("ca.crt"),
                Some(&std::fs::read_to_string(&ca).unwrap()),
                "kube-root-ca.crt holds the CA"
            );
            published = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(published, "kube-root-ca.crt was not published in {NS} within 20 s");
    admin.create(Some(NS), &ServiceAccount { metadata: meta("bot"), ..Default::default() }).await.unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"nodeName": node, "serviceAccountName": "bot", "containers": [{"name": "app", "image": "demo:1",
            "env": [{"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "color"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "password"}}},
                    {"name": "GREETING", "value": "$(COLOR) and $(PASSWORD)"}],
            "volumeMounts": [{"name": "kube-api-access-abcde", "readOnly": true,
                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
            "volumes": [
                {"name": "maybe-config", "configMap": {"name": "missing-config", "optional": true}},
                {"name": "maybe-secret", "secret": {"secretName": "missing-secret", "optional": true}},
                {"name": "kube-api-access-abcde", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}]},
    }))
    .unwrap();
    let pod = admin.create(Some(NS), &pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();

    // Reads as the node. A node may read only what its own pods use; an authorizer
    // that learns of the pod from a watch may take a moment to allow it.
    let mut got = node_client.config_map(NS, "app-config").await;
    for _ in 0..50 {
        match &got {
            Err(LookupError::Api { source, .. }) if source.is_forbidden() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                got = node_client.config_map(NS, "app-config").await;
            }
            _ => break,
        }
    }
    let got = got.unwrap().expect("the ConfigMap");
    assert_eq!(got.data.unwrap()["color"], "blue");
    let got = node_client.secret(NS, "app-secret").await.unwrap().expect("the Secret");
    assert_eq!(got.data.unwrap()["password"].0, b"s3cret");
    assert!(node_client.config_map(NS, "missing-config").await.unwrap().is_none());
    assert!(node_client.secret(NS, "missing-secret").await.unwrap().is_none());

    // A token bound to the pod, which the API server accepts as the ServiceAccount.
    let spec = TokenSpec {
        namespace: NS.into(),
        service_account: "bot".into(),
        pod_name: "web".into(),
        pod_uid: uid.clone(),
        audiences: vec![],
        expiration_seconds: 3607,
    };
    let token = node_client.service_account_token(&spec).await.unwrap_or_else(|e| panic!("{e}\n{}", control_log()));
    let lifetime = token.expiration.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((3500..=3607).contains(&lifetime), "token lifetime {lifetime} s");
    let as_pod =
        skiff_api::Client::from_kubeconfig(&kubeconfig(tmp.path(), "pod", port, &ca, &token.token), "pod").unwrap();
    assert_authenticated(&as_pod, "the pod's token").await;
    // A stale uid (the pod was recreated) is refused.
    let stale = TokenSpec { pod_uid: "not-the-uid".into(), ..spec.clone() };
    let err = node_client.service_account_token(&stale).await.unwrap_err().to_string();
    assert!(err.contains("409") || err.contains("does not match"), "{err}");

    // The env and the kube-api-access volume of the pod, from the real API.
    let lookup = TokenCache::new(node_client.clone());
    let env_ctx = EnvContext { node_name: node.clone(), ..Default::default() };
    let env = container_env(&pod, &pod.spec.as_ref().unwrap().containers[0], &env_ctx, &lookup).await.unwrap();
    let get = |k: &str| env.iter().find(|kv| kv.key == k).map(|kv| kv.value.clone());
    assert_eq!(get("COLOR").as_deref(), Some("blue"));
    assert_eq!(get("GREETING").as_deref(), Some("blue and s3cret"));
    let pod_dir = tmp.path().join("pods").join(&uid);
    let ctx = VolumeContext { env: &env_ctx, secrets_on_tmpfs: false };
    let prepared = prepare_volumes(&pod, &pod_dir, &ctx, &lookup).await.unwrap();
    let mounts = container_mounts(&pod, &pod.spec.as_ref().unwrap().containers[0], &prepared, &env).unwrap();
    let sa_dir = PathBuf::from(&mounts[0].host_path);
    assert_eq!(std::fs::read_to_string(sa_dir.join("namespace")).unwrap(), NS);
    assert_eq!(std::fs::read(sa_dir.join("ca.crt")).unwrap(), std::fs::read(&ca).unwrap());
    let file_token = std::fs::read_to_string(sa_dir.join("token")).unwrap();
    assert_eq!(file_token.split('.').count(), 3, "a JWT");

    // That directory holds what a client in the pod needs (`skiff_api::incluster`).
    let in_pod = kubeconfig(tmp.path(), "in-pod", port, &sa_dir.join("ca.crt"), &file_token);
    assert_authenticated(&skiff_api::Client::from_kubeconfig(&in_pod, "in-pod").unwrap(), "the token file").await;
}

/// The API server knows who this is: any answer but 401 (the ServiceAccount may well
/// not be allowed to read ServiceAccounts; 403 still means it was authenticated).
async fn assert_authenticated(client: &skiff_api::Client, what: &str) {
    match client.get_opt::<ServiceAccount>(Some(NS), "bot").await {
        Ok(_) => {}
        Err(e) => assert_ne!(e.code(), Some(401), "{what} was refused: {e}"),
    }
}
