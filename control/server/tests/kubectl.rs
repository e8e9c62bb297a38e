//! End-to-end tests of the API server with the real kubectl (v1.32 when installed as
//! `kubectl.1.32` next to the dispatcher, else `kubectl` on PATH, or `$SKIFF_KUBECTL`)
//! against `skiff-control` on 127.0.0.1 with a free port and a temporary data dir.
//!
//! Each test starts its own server through a guard that kills it on drop, so no
//! process outlives a test. A missing kubectl fails them, saying how to get one.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Server;

/// API semantics only: the leader Lease renewals and controllers would move the store
/// revision these tests compare (controllers have their own tests).
fn start() -> Server {
    Server::start_with(&["--disable-controllers"])
}

/// The list resourceVersion of a raw LIST (kubectl's own `-o json` lists drop it).
fn list_rv(s: &Server, path: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&s.ok(&["get", "--raw", path])).unwrap();
    v["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

/// One HTTPS GET without client credentials; returns the raw response.
fn raw_https_get(port: u16, ca: &Path, path: &str) -> String {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use std::io::{Read, Write};
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(tls, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn kubectl_apply_get_scale_label_annotate_delete_and_restart() {
    let mut s = start();
    let f = s.write("web.yaml", &support::web_manifest(2));
    let out = s.ok(&["apply", "-f", &f]);
    assert!(out.contains("deployment.apps/web created") && out.contains("service/web created"), "{out}");

    let table = s.ok(&["get", "deployments"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("web "), "{table}");
    let svc = s.ok(&["get", "svc", "web"]);
    assert!(svc.contains("PORT(S)") && svc.contains("80/TCP"), "{svc}");
    assert!(svc.contains("10.96.0.2"), "first free ClusterIP after the kubernetes Service's: {svc}");
    let k = s.json(&["get", "svc", "kubernetes"]);
    assert_eq!(k["spec"]["clusterIP"], "10.96.0.1");
    let slice = s.json(&["get", "endpointslices", "kubernetes"]);
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    assert_eq!(slice["ports"][0]["port"], s.port);

    let d = s.json(&["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate", "defaulted");
    assert!(d["metadata"]["uid"].as_str().unwrap().len() == 36);
    let yaml = s.ok(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(yaml.contains("kubectl.kubernetes.io/last-applied-configuration"), "{yaml}");

    // Re-apply a change: client-side apply = GET + strategic merge PATCH.
    s.write("web.yaml", &support::web_manifest(3).replace("nginx:1.27", "nginx:1.28"));
    let out = s.ok(&["apply", "-f", &f]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("service/web unchanged"), "{out}");
    assert_eq!(s.json(&["get", "svc", "web"])["spec"]["clusterIP"], "10.96.0.2", "kept across apply");
    let d = s.json(&["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.28");
    assert_eq!(d["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1);
    assert_eq!(d["metadata"]["generation"], 2);

    assert!(s.ok(&["scale", "deploy", "web", "--replicas=5"]).contains("scaled"));
    assert!(s.ok(&["label", "deploy", "web", "tier=front"]).contains("labeled"));
    assert!(s.ok(&["annotate", "deploy", "web", "note=hello"]).contains("annotated"));
    let d = s.json(&["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(d["metadata"]["labels"]["tier"], "front");
    assert_eq!(d["metadata"]["annotations"]["note"], "hello");
    let sel = s.ok(&["get", "deploy", "-l", "tier=front", "-o", "name"]);
    assert_eq!(sel.trim(), "deployment.apps/web");
    assert_eq!(s.ok(&["get", "deploy", "-l", "tier=back", "-o", "name"]).trim(), "");

    let desc = s.ok(&["describe", "deploy", "web"]);
    assert!(desc.contains("Name:") && desc.contains("nginx:1.28") && desc.contains("tier=front"), "{desc}");

    s.ok(&["create", "configmap", "cfg", "--from-literal=a=1", "--from-literal=b=2"]);
    s.ok(&["create", "secret", "generic", "sec", "--from-literal=pw=hunter2"]);
    let cm = s.json(&["get", "cm", "cfg"]);
    assert_eq!(cm["data"]["b"], "2");
    let sec = s.json(&["get", "secret", "sec"]);
    assert_eq!(sec["type"], "Opaque");
    assert_eq!(sec["data"]["pw"], "aHVudGVyMg==");

    // Nothing is lost across a restart, and the revision carries on.
    let rv_before = list_rv(&s, "/api/v1/configmaps");
    s.restart();
    let d = s.json(&["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(s.json(&["get", "secret", "sec"])["data"]["pw"], "aHVudGVyMg==");
    // Watch history does not survive a restart: an old resourceVersion is 410 Expired.
    let raw = s.ok(&["get", "--raw", "/api/v1/configmaps?watch=1&resourceVersion=1&timeoutSeconds=2"]);
    assert!(raw.contains("\"ERROR\"") && raw.contains("410"), "{raw}");
    s.ok(&["create", "configmap", "after", "--from-literal=x=y"]);
    let rv_after: u64 =
        s.json(&["get", "cm", "after"])["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(rv_after > rv_before, "revisions keep growing across restarts");

    assert!(s.ok(&["delete", "-f", &f]).contains("deleted"));
    s.ok(&["delete", "cm", "cfg"]);
    assert!(s.fails(&["get", "deploy", "web"]).contains("NotFound"));
    assert!(s.fails(&["get", "cm", "cfg"]).contains("not found"));
}

#[test]
fn kubectl_get_watch_streams_changes() {
    let s = start();
    s.ok(&["create", "configmap", "first", "--from-literal=a=1"]);
    let mut w = s
        .cmd()
        .args(["get", "configmaps", "--watch", "--request-timeout=8s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s.ok(&["create", "configmap", "second", "--from-literal=a=1"]);
    s.ok(&["label", "configmap", "second", "x=y"]);
    s.ok(&["delete", "configmap", "second"]);
    std::thread::sleep(Duration::from_millis(1000));
    let _ = w.kill();
    let out = w.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("first ")), "{text}");
    assert!(text.lines().filter(|l| l.starts_with("second ")).count() >= 2, "{text}");

    // Raw watch from a known revision sees exactly the later changes, with bookmarks allowed.
    let rv = list_rv(&s, "/api/v1/namespaces/default/configmaps");
    s.ok(&["create", "configmap", "third", "--from-literal=a=1"]);
    let raw = s.ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1")]);
    let events: Vec<serde_json::Value> = raw.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 1, "{raw}");
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "third");

    // With a label selector, entering the selection is ADDED and leaving it DELETED.
    let rv = list_rv(&s, "/api/v1/namespaces/default/configmaps");
    s.ok(&["label", "cm", "third", "sel=yes"]);
    s.ok(&["label", "cm", "first", "other=1"]);
    s.ok(&["label", "cm", "third", "sel-"]);
    let raw = s.ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&labelSelector=sel%3Dyes&timeoutSeconds=1")]);
    let types: Vec<String> = raw
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["ADDED", "DELETED"], "{raw}");
    // A watch without a resourceVersion first replays the current state.
    let ev = s
        .cmd()
        .args(["get", "--raw", "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1"])
        .output()
        .unwrap();
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&ev.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "ADDED", "a watch without resourceVersion starts with the current state");
}

#[test]
fn anonymous_401_token_403_and_rbac_role_binding_grants() {
    let mut s = start();
    std::fs::write(s.dir.join("tokens.csv"), "tok-bob,bob,1001,\"dev\"\n").unwrap();
    s.restart();
    let server = format!("https://127.0.0.1:{}", s.port);
    let ca = s.dir.join("pki/ca.crt");
    let empty = s.write("empty.kubeconfig", "apiVersion: v1\nkind: Config\n");
    let base = |extra: &[&str]| {
        let mut c = Command::new(&s.kubectl);
        c.env("HOME", s.tmp.path()).env("KUBECONFIG", &empty);
        c.args(["--server", &server, "--certificate-authority", ca.to_str().unwrap()]).args(extra);
        c.args(["get", "pods"]).output().unwrap()
    };
    // kubectl prompts for a password without credentials, so anonymous is a raw request.
    let anon = raw_https_get(s.port, &ca, "/api/v1/namespaces/default/pods");
    assert!(anon.starts_with("HTTP/1.1 401"), "{anon}");
    assert!(anon.contains(r#""kind":"Status""#) && anon.contains(r#""reason":"Unauthorized""#), "{anon}");
    let anon = raw_https_get(s.port, &ca, "/version");
    assert!(anon.starts_with("HTTP/1.1 401"), "even /version needs credentials: {anon}");
    let bad = base(&["--token", "wrong"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("provide credentials") || err.contains("Unauthorized"), "{err}");
    let bob = base(&["--token", "tok-bob"]);
    assert!(!bob.status.success());
    let err = String::from_utf8_lossy(&bob.stderr);
    assert!(err.contains("Forbidden") && err.contains("User \"bob\" cannot list resource \"pods\""), "{err}");
    // Discovery stays open to authenticated users (kubectl needs it to say "forbidden").
    let mut c = Command::new(&s.kubectl);
    c.env("HOME", s.tmp.path()).env("KUBECONFIG", &empty);
    let v = c
        .args([
            "--server",
            &server,
            "--certificate-authority",
            ca.to_str().unwrap(),
            "--token",
            "tok-bob",
            "get",
            "--raw",
            "/version",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("gitVersion"));
    // The admin certificate still works.
    s.ok(&["get", "pods"]);

    // Bootstrap RBAC objects exist (cluster-admin for system:masters, system:node for nodes).
    let crbs = s.ok(&["get", "clusterrolebindings", "-o", "name"]);
    assert!(crbs.contains("clusterrolebinding.rbac.authorization.k8s.io/system:node"), "{crbs}");

    // RBAC: a Role and RoleBinding let bob read pods in default, and nothing else.
    let rbac = s.write(
        "rbac.yaml",
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-reads-pods, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects:
- {kind: User, name: bob}
"#,
    );
    s.ok(&["apply", "-f", &rbac]);
    let bob_get = |ns: &str| base(&["--token", "tok-bob", "-n", ns]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bob_get("default").status.success() {
        assert!(Instant::now() < deadline, "the RoleBinding never took effect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let other = bob_get("kube-system");
    assert!(String::from_utf8_lossy(&other.stderr).contains("Forbidden"), "a Role grants only in its namespace");
    s.ok(&["delete", "rolebinding", "bob-reads-pods"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while bob_get("default").status.success() {
        assert!(Instant::now() < deadline, "deleting the RoleBinding never took effect");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_input_gets_status_errors_and_changes_nothing() {
    let s = start();
    s.ok(&["create", "configmap", "keep", "--from-literal=a=1"]);
    let rv = list_rv(&s, "/api/v1/configmaps");
    let post = |file: &str| s.fails(&["create", "--raw", "/api/v1/namespaces/default/configmaps", "-f", file]);

    let malformed = s.write("bad.json", "{\"kind\": \"ConfigMap\", ");
    let e = post(&malformed);
    assert!(e.contains("error decoding JSON") || e.contains("BadRequest"), "{e}");
    let wrong_kind = s.write("kind.json", r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#);
    let e = post(&wrong_kind);
    assert!(e.contains("cannot be handled as a ConfigMap"), "{e}");
    let bad_name = s.write("name.json", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#);
    let e = post(&bad_name);
    assert!(e.contains("is invalid") && e.contains("metadata.name"), "{e}");
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    let big = s.write("big.json", &big);
    let e = post(&big);
    assert!(e.contains("too large"), "{e}");
    let bad_type =
        s.write("type.json", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"t"},"data":{"a":5}}"#);
    assert!(post(&bad_type).contains("cannot be handled"));

    // Invalid Deployment: 422 with field causes.
    let bad_deploy = s.write(
        "d.yaml",
        &support::web_manifest(2).split("---").next().unwrap().replace("image: nginx:1.27", "image: \"\""),
    );
    let e = s.fails(&["apply", "-f", &bad_deploy]);
    assert!(e.contains("is invalid") && e.contains("spec.template.spec.containers[0].image"), "{e}");

    // Stale resourceVersion on update: 409 Conflict.
    let mut cm = s.json(&["get", "cm", "keep"]);
    cm["metadata"]["resourceVersion"] = serde_json::json!("1");
    cm["data"]["a"] = serde_json::json!("changed");
    let stale = s.write("stale.json", &cm.to_string());
    let e = s.fails(&["replace", "-f", &stale]);
    assert!(e.contains("Conflict") || e.contains("has been modified"), "{e}");

    // Nothing above reached the store.
    assert_eq!(list_rv(&s, "/api/v1/configmaps"), rv, "no write reached the store");
    assert_eq!(s.json(&["get", "cm"])["items"].as_array().unwrap().len(), 1);
    assert_eq!(s.json(&["get", "cm", "keep"])["data"]["a"], "1");
    assert!(s.fails(&["get", "deploy", "web"]).contains("NotFound"));
}

#[test]
fn api_semantics_paging_selectors_patches_subresources_strict_validation() {
    let s = start();
    for i in 0..5 {
        s.ok(&["create", "configmap", &format!("c{i}"), "--from-literal=a=1"]);
    }
    s.ok(&["label", "cm", "c1", "c3", "grp=a"]);

    // limit/continue pages through everything exactly once.
    let mut names = Vec::new();
    let mut cont = String::new();
    loop {
        let path = format!(
            "/api/v1/namespaces/default/configmaps?limit=2{}",
            if cont.is_empty() { String::new() } else { format!("&continue={cont}") }
        );
        let page: serde_json::Value = serde_json::from_str(&s.ok(&["get", "--raw", &path])).unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        names.extend(items.iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()));
        match page["metadata"]["continue"].as_str() {
            Some(c) => cont = c.to_string(),
            None => break,
        }
    }
    assert_eq!(names, ["c0", "c1", "c2", "c3", "c4"]);

    let sel = s.ok(&["get", "cm", "-l", "grp=a", "-o", "name"]);
    assert_eq!(sel.lines().collect::<Vec<_>>(), ["configmap/c1", "configmap/c3"]);
    let sel = s.ok(&["get", "cm", "-l", "grp!=a", "-o", "name"]);
    assert_eq!(sel.lines().count(), 3);
    let f = s.ok(&["get", "cm", "--field-selector", "metadata.name=c2", "-o", "name"]);
    assert_eq!(f.trim(), "configmap/c2");
    let e = s.fails(&["get", "cm", "--field-selector", "data.a=1"]);
    assert!(e.contains("field label not supported"), "{e}");

    // generateName.
    let g = s.write("gen.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: gen-\ndata: {a: b}\n");
    let out = s.ok(&["create", "-f", &g]);
    assert!(out.starts_with("configmap/gen-") && out.trim().len() == "configmap/gen-xxxxx created".len(), "{out}");

    // JSON patch and merge patch.
    s.ok(&[
        "patch",
        "cm",
        "c0",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/z","value":"26"},{"op":"remove","path":"/data/a"}]"#,
    ]);
    s.ok(&["patch", "cm", "c0", "--type=merge", "-p", r#"{"data":{"m":"1"}}"#]);
    assert_eq!(s.json(&["get", "cm", "c0"])["data"], serde_json::json!({"z": "26", "m": "1"}));
    let e = s.fails(&["patch", "cm", "c0", "--type=json", "-p", r#"[{"op":"remove","path":"/data/nope"}]"#]);
    assert!(e.contains("does not exist"), "{e}");

    // Pods: table columns, status subresource, status.phase field selector. Admission
    // wants the pod's ServiceAccount, which no controller creates here.
    s.ok(&["create", "serviceaccount", "default"]);
    let pod = s.write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
    );
    s.ok(&["apply", "-f", &pod]);
    let t = s.ok(&["get", "pods"]);
    let header: Vec<&str> = t.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{t}");
    assert!(t.contains("0/1") && t.contains("Pending"), "{t}");
    s.ok(&["patch", "pod", "p", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running"}}"#]);
    s.ok(&[
        "patch",
        "pod",
        "p",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Failed"},"metadata":{"labels":{"x":"y"}}}"#,
    ]);
    let p = s.json(&["get", "pod", "p"]);
    assert_eq!(p["status"]["phase"], "Running", "the main resource ignores status");
    assert_eq!(p["metadata"]["labels"]["x"], "y");
    assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always", "defaulted for an untagged image");
    let running = s.ok(&["get", "pods", "--field-selector", "status.phase=Running", "-o", "name"]);
    assert_eq!(running.trim(), "pod/p");

    // pods/binding sets spec.nodeName once; the node agent then selects by it.
    let binding = s.write(
        "binding.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"n1"}}"#,
    );
    s.ok(&["create", "--raw", "/api/v1/namespaces/default/pods/p/binding", "-f", &binding]);
    assert_eq!(s.json(&["get", "pod", "p"])["spec"]["nodeName"], "n1");
    let on_n1 = s.ok(&["get", "pods", "-A", "--field-selector", "spec.nodeName=n1", "-o", "name"]);
    assert_eq!(on_n1.trim(), "pod/p");
    let e = s.fails(&["create", "--raw", "/api/v1/namespaces/default/pods/p/binding", "-f", &binding]);
    assert!(e.contains("already assigned"), "{e}");

    // Strict field validation (kubectl's default) rejects unknown fields; --validate=false drops them.
    let bogus = s.write(
        "bogus.yaml",
        &support::web_manifest(2).split("---").next().unwrap().replace("  replicas: 2", "  replicas: 2\n  bogus: true"),
    );
    let e = s.fails(&["apply", "-f", &bogus]);
    assert!(e.contains(r#"unknown field "spec.bogus""#), "{e}");
    s.ok(&["apply", "--validate=false", "-f", &bogus]);
    assert!(s.json(&["get", "deploy", "web"])["spec"].get("bogus").is_none());

    // The scale subresource.
    let scale: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/apis/apps/v1/namespaces/default/deployments/web/scale"]))
            .unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"]["selector"], "app=web");

    // Finalizers hold a deletion until their owner removes them.
    let fin = s.write(
        "fin.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/keep]\n",
    );
    s.ok(&["create", "-f", &fin]);
    s.ok(&["delete", "cm", "held", "--wait=false"]);
    assert!(s.json(&["get", "cm", "held"])["metadata"]["deletionTimestamp"].is_string());
    s.ok(&["patch", "cm", "held", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    assert!(s.fails(&["get", "cm", "held"]).contains("not found"));

    // A pod bound to a node terminates gracefully until the kubelet confirms (grace 0).
    s.ok(&["delete", "pod", "p", "--wait=false"]);
    let p = s.json(&["get", "pod", "p"]);
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(s.ok(&["get", "pod", "p"]).contains("Terminating"));
    s.ok(&["delete", "pod", "p", "--grace-period=0", "--force"]);
    assert!(s.fails(&["get", "pod", "p"]).contains("not found"));

    // Jobs and DaemonSets are served too; a Job must choose OnFailure or Never.
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: once\nspec:\n  template:\n    spec:\n      containers:\n      - {name: c, image: busybox}\n";
    let bad_job = s.write("job.yaml", job);
    let e = s.fails(&["apply", "-f", &bad_job]);
    assert!(e.contains("spec.template.spec.restartPolicy"), "{e}");
    let good_job = s.write("job2.yaml", &format!("{job}      restartPolicy: Never\n"));
    s.ok(&["apply", "-f", &good_job]);
    let ds = s.write("ds.yaml", "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\nspec:\n  selector:\n    matchLabels: {app: agent}\n  template:\n    metadata:\n      labels: {app: agent}\n    spec:\n      containers:\n      - {name: c, image: busybox}\n");
    s.ok(&["apply", "-f", &ds]);
    let names = s.ok(&["get", "jobs,daemonsets", "-o", "name"]);
    assert_eq!(names.lines().collect::<Vec<_>>(), ["job.batch/once", "daemonset.apps/agent"], "{names}");

    // Deleting a namespace marks it Terminating; with the controllers off (here) no
    // namespace controller removes its content (`lifecycle.rs` tests that it does).
    s.ok(&["create", "namespace", "scratch"]);
    assert_eq!(s.json(&["get", "ns", "scratch"])["metadata"]["labels"]["kubernetes.io/metadata.name"], "scratch");
    s.ok(&["create", "configmap", "x", "-n", "scratch", "--from-literal=a=1"]);
    s.ok(&["delete", "namespace", "scratch", "--wait=false"]);
    assert_eq!(s.json(&["get", "ns", "scratch"])["status"]["phase"], "Terminating");
    assert!(s.fails(&["create", "configmap", "y", "-n", "scratch"]).contains("is being terminated"));
    let e = s.fails(&["delete", "namespace", "default"]);
    assert!(e.contains("may not be deleted"), "{e}");
}

/// `kubectl create deployment|job|service` build their objects in kubectl and send them
/// as protobuf; the decoded objects must say what the flags said.
#[test]
fn kubectl_create_generators_over_protobuf() {
    let s = start();
    s.ok(&["create", "deployment", "web", "--image=nginx:1.27", "--replicas=0", "--port=80"]);
    let d = s.json(&["get", "deployment", "web"]);
    assert_eq!(d["spec"]["replicas"], 0, "a pointer field keeps its zero");
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:1.27");
    assert_eq!(c["ports"][0], serde_json::json!({"containerPort": 80, "protocol": "TCP"}), "no zero-valued noise");

    s.ok(&["create", "job", "pi", "--image=busybox:1.36", "--", "echo", "hi"]);
    let j = s.json(&["get", "job", "pi"]);
    let spec = &j["spec"]["template"]["spec"];
    assert_eq!(spec["containers"][0]["command"], serde_json::json!(["echo", "hi"]));
    assert_eq!(spec["restartPolicy"], "Never");
    let uid = j["metadata"]["uid"].as_str().unwrap();
    assert_eq!(j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], uid);
    assert_eq!(j["spec"]["template"]["metadata"]["labels"]["job-name"], "pi");

    s.ok(&["create", "service", "clusterip", "s1", "--tcp=80:8080"]);
    let svc = s.json(&["get", "service", "s1"]);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert!(svc["spec"]["ports"][0].get("nodePort").is_none());
    s.ok(&["create", "service", "nodeport", "np", "--tcp=81:http"]);
    let np = s.json(&["get", "service", "np"]);
    assert_eq!(np["spec"]["ports"][0]["targetPort"], "http");
    let node_port = np["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&node_port), "a NodePort is allocated: {node_port}");
}

#[test]
fn metrics_are_prometheus_text_for_those_rbac_lets_read_them() {
    let mut s = start();
    std::fs::write(s.dir.join("tokens.csv"), "tok-bob,bob,1001,\"dev\"\n").unwrap();
    s.restart();
    s.ok(&["get", "pods"]);
    s.ok(&["create", "configmap", "m", "--from-literal=a=1"]);
    // An open watch shows as a long-running request while it lasts.
    let mut watch = s.cmd().args(["get", "configmaps", "--watch"]).stdout(Stdio::null()).spawn().unwrap();
    let open_watch = "apiserver_longrunning_requests{verb=\"WATCH\",group=\"\",version=\"v1\",resource=\"configmaps\",subresource=\"\",scope=\"namespace\",component=\"apiserver\"} 1";
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = s.ok(&["get", "--raw", "/metrics"]);
        if text.contains(open_watch) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(text.contains(open_watch), "{text}");
    let list_pods = "verb=\"LIST\",group=\"\",version=\"v1\",resource=\"pods\",subresource=\"\",scope=\"namespace\",component=\"apiserver\"";
    assert!(text.contains(&format!("apiserver_request_total{{{list_pods},code=\"200\"}}")), "{text}");
    assert!(text.contains(&format!("apiserver_request_duration_seconds_bucket{{{list_pods},le=\"+Inf\"}}")), "{text}");
    assert!(text.contains("# TYPE apiserver_request_duration_seconds histogram"), "{text}");
    assert!(text.contains("etcd_request_duration_seconds_count{operation=\"create\",type=\"configmaps\"}"), "{text}");
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    // A user RBAC gives nothing may not read them.
    let server = format!("https://127.0.0.1:{}", s.port);
    let empty = s.write("empty.kubeconfig", "apiVersion: v1\nkind: Config\n");
    let bob = Command::new(&s.kubectl)
        .env("HOME", s.tmp.path())
        .env("KUBECONFIG", &empty)
        .args(["--server", &server, "--certificate-authority", s.dir.join("pki/ca.crt").to_str().unwrap()])
        .args(["--token", "tok-bob", "get", "--raw", "/metrics"])
        .output()
        .unwrap();
    assert!(!bob.status.success(), "bob read /metrics");
    assert!(String::from_utf8_lossy(&bob.stderr).contains("Forbidden"), "{}", String::from_utf8_lossy(&bob.stderr));
}

/// ClusterIPs and NodePorts come from an in-memory index kept from the store's watch;
/// these are the cases where it could go wrong: concurrent creates, a delete followed at
/// once by a create of the same IP, a conflicting NodePort, and a restart.
#[test]
fn service_ips_are_unique_under_concurrent_creates_and_free_again_on_delete() {
    use k8s_openapi::api::core::v1::Service;
    let mut s = start();
    let svc = |name: String| -> Service {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name},
            "spec": {"ports": [{"port": 80}]}}))
        .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ips: Vec<String> = rt.block_on(async {
        let c = s.client();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..8 {
            let c = c.clone();
            tasks.spawn(async move {
                let mut ips = Vec::new();
                for i in 0..10 {
                    let made = c.create(Some("default"), &svc(format!("many-{t}-{i}"))).await.unwrap();
                    ips.push(made.spec.unwrap().cluster_ip.unwrap());
                }
                ips
            });
        }
        tasks.join_all().await.concat()
    });
    let distinct: std::collections::BTreeSet<&String> = ips.iter().collect();
    assert_eq!((ips.len(), distinct.len()), (80, 80), "{ips:?}");
    assert!(!distinct.contains(&"10.96.0.1".to_string()), "the kubernetes Service's IP is never handed out");

    let fixed = |name: &str, ip: &str, node_port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  clusterIP: {ip}\n  \
             ports:\n  - port: 80\n    nodePort: {node_port}\n"
        )
    };
    s.apply("a.yaml", &fixed("fixed-a", "10.96.100.1", 30100));
    let taken = s.fails(&["create", "-f", &s.write("b.yaml", &fixed("fixed-b", "10.96.100.1", 30101))]);
    assert!(taken.contains("provided IP is already allocated"), "{taken}");
    let taken = s.fails(&["create", "-f", &s.write("c.yaml", &fixed("fixed-c", "10.96.100.2", 30100))]);
    assert!(taken.contains("provided port is already allocated"), "{taken}");
    // Freed by the delete at once: the same IP and port for another Service.
    s.ok(&["delete", "svc", "fixed-a"]);
    s.apply("b.yaml", &fixed("fixed-b", "10.96.100.1", 30100));
    assert_eq!(s.json(&["get", "svc", "fixed-b"])["spec"]["clusterIP"], "10.96.100.1");

    // After a restart the index is rebuilt from the store.
    s.restart();
    let taken = s.fails(&["create", "-f", &s.write("d.yaml", &fixed("fixed-d", "10.96.100.1", 30102))]);
    assert!(taken.contains("provided IP is already allocated"), "{taken}");
    s.ok(&["create", "service", "clusterip", "after-restart", "--tcp=80"]);
    let ip = s.json(&["get", "svc", "after-restart"])["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(!distinct.contains(&ip) && ip != "10.96.100.1", "{ip} was already held");
}
