//! Cluster DNS served by each node's agent, in a 2-node cluster made by the same code as
//! `cargo xtask up`: a pod resolves names through the C library (its resolv.conf is the
//! kubelet's: the node-local address, the search path, ndots:5), and Debian's `dig` on
//! the node asks both of the node's DNS addresses for every record kind, over UDP and
//! TCP. Changes show within a second.
//!
//! Needs root (namespaces, containerd, BPF); skips without it, fails under CI=true.

use std::time::{Duration, Instant};

use skiff_tests::cluster::{Cluster, ClusterSetup};
use skiff_tests::image::{echo_image, pause_image};
use skiff_tests::netns::wait_until;
use skiff_tests::{ok, require_privileges, unique_tag};

const NODE_LOCAL_DNS: &str = "169.254.20.10";
const KUBE_DNS: &str = "10.96.0.10";

/// A ClusterIP Service with a named port, a headless Service over two pods with stable
/// names (the StatefulSet shape: hostname + subdomain), an ExternalName Service, and a
/// client pod.
const APPS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec:
  containers:
  - {name: echo, image: localhost/skiff/echo:1, command: ["/skiff-echo", "serve", "--tcp", "8080"]}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, targetPort: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  containers:
  - {name: echo, image: localhost/skiff/echo:1, command: ["/skiff-echo", "serve", "--tcp", "5432"]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, labels: {app: db}}
spec:
  hostname: db-1
  subdomain: db
  containers:
  - {name: echo, image: localhost/skiff/echo:1, command: ["/skiff-echo", "serve", "--tcp", "5432"]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: db.example.com
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - {name: echo, image: localhost/skiff/echo:1}
"#;

const LATE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: late}
spec:
  ports: [{port: 80}]
"#;

/// `dig` in node 1's namespace; `+short` output lines, or the status line without it.
fn dig(cluster: &Cluster, args: &[&str]) -> String {
    let node = &cluster.nodes[0];
    let out = node.ns.command("dig").args(["+time=2", "+tries=1"]).args(args).output().expect("running dig");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn status(cluster: &Cluster, server: &str, args: &[&str]) -> String {
    let at = format!("@{server}");
    let out = dig(cluster, &[&[at.as_str()], args].concat());
    out.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no status in dig {args:?}: {out}"))
}

fn lookup(cluster: &Cluster, name: &str) -> Result<Vec<String>, String> {
    let out = cluster.kubectl(&["exec", "client", "--", "/skiff-echo", "lookup", name]);
    if out.status.success() {
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        lines.sort();
        Ok(lines)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn field(cluster: &Cluster, kind_name: &str, path: &str) -> String {
    cluster.kubectl_out(&["get", kind_name, "-o", &format!("jsonpath={{{path}}}")])
}

/// How long until `dig +short` of `name` on node 1 says `want`, polled every 20 ms for
/// up to 5 s.
fn time_until(cluster: &Cluster, name: &str, want: &str) -> Duration {
    let start = Instant::now();
    let at = format!("@{NODE_LOCAL_DNS}");
    let seen = wait_until(Duration::from_secs(5), || dig(cluster, &[&at, name, "+short"]) == want);
    assert!(seen, "{name} did not become {want:?} in 5 s");
    start.elapsed()
}

#[test]
fn pods_and_nodes_resolve_every_record_kind_from_the_node_local_server() {
    if !require_privileges("pods_and_nodes_resolve_every_record_kind_from_the_node_local_server") {
        return;
    }
    let images = vec![ok("pause image", pause_image()), ok("echo image", echo_image())];
    let setup = ClusterSetup { services_from_api: true, ..Default::default() };
    let cluster =
        ok("starting the cluster", Cluster::start_in(&unique_tag("dns"), 2, &images, &Default::default(), &setup));
    ok("applying the apps", cluster.apply(APPS));
    for pod in ["web-1", "db-0", "db-1", "client"] {
        let ready = wait_until(Duration::from_secs(60), || {
            field(&cluster, &format!("pod/{pod}"), ".status.phase") == "Running"
        });
        assert!(ready, "pod {pod} is not running:\n{}", cluster.logs());
    }
    let web_ip = field(&cluster, "service/web", ".spec.clusterIP");
    let db0 = field(&cluster, "pod/db-0", ".status.podIP");
    let db1 = field(&cluster, "pod/db-1", ".status.podIP");
    let mut dbs = vec![db0.clone(), db1.clone()];
    dbs.sort();
    // The headless Service lists its pods once the EndpointSlice controller saw them ready.
    let listed = wait_until(Duration::from_secs(30), || lookup(&cluster, "db").is_ok_and(|a| a == dbs));
    assert!(listed, "db -> {:?}, want {dbs:?}", lookup(&cluster, "db"));

    // A pod, through the C library's resolver and the kubelet's resolv.conf.
    let resolv = cluster.kubectl_out(&["exec", "client", "--", "/skiff-echo", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains(&format!("nameserver {NODE_LOCAL_DNS}")), "{resolv}");
    assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
    assert!(resolv.contains("ndots:5"), "{resolv}");
    assert_eq!(lookup(&cluster, "web"), Ok(vec![web_ip.clone()]));
    assert_eq!(lookup(&cluster, "kubernetes.default"), Ok(vec!["10.96.0.1".to_owned()]));
    assert_eq!(lookup(&cluster, "db-0.db"), Ok(vec![db0.clone()]), "a StatefulSet-style stable name");
    let dashed = format!("{}.default.pod", db1.replace('.', "-"));
    assert_eq!(lookup(&cluster, &dashed), Ok(vec![db1.clone()]));
    assert!(lookup(&cluster, "nope").is_err(), "unknown names must fail");

    // The node, with dig, on both addresses, UDP and TCP.
    for server in [NODE_LOCAL_DNS, KUBE_DNS] {
        let at = format!("@{server}");
        let q = |args: &[&str]| dig(&cluster, &[&[at.as_str(), "+short"], args].concat());
        assert_eq!(q(&["web.default.svc.cluster.local"]), web_ip, "A via {server}");
        assert_eq!(q(&["+tcp", "web.default.svc.cluster.local"]), web_ip, "A over TCP via {server}");
        assert_eq!(q(&["_http._tcp.web.default.svc.cluster.local", "SRV"]), "0 100 80 web.default.svc.cluster.local.");
        assert_eq!(q(&["-x", &web_ip]), "web.default.svc.cluster.local.");
        assert_eq!(q(&["-x", &db0]), "db-0.db.default.svc.cluster.local.");
        assert_eq!(q(&["ext.default.svc.cluster.local", "CNAME"]), "db.example.com.");
        let srv = q(&["_pg._tcp.db.default.svc.cluster.local", "SRV"]);
        assert!(srv.contains("5432 db-0.db.default.svc.cluster.local.") && srv.contains("db-1.db"), "{srv}");
        assert_eq!(status(&cluster, server, &["nope.default.svc.cluster.local"]), "NXDOMAIN");
        assert_eq!(status(&cluster, server, &["example.com"]), "REFUSED", "no upstream: refused at once");
    }

    // A malformed query is answered (FORMERR) and the server keeps serving.
    let garbage = format!("printf 'garbage-garbage' > /dev/udp/{NODE_LOCAL_DNS}/53");
    let sent = cluster.nodes[0].ns.command("bash").args(["-c", &garbage]).status().expect("running bash");
    assert!(sent.success());
    assert_eq!(dig(&cluster, &[&format!("@{NODE_LOCAL_DNS}"), "+short", "web.default.svc.cluster.local"]), web_ip);

    // A Service created, then deleted: in and out of DNS within a second each.
    ok("creating late", cluster.apply(LATE));
    let late_ip = field(&cluster, "service/late", ".spec.clusterIP");
    let appeared = time_until(&cluster, "late.default.svc.cluster.local", &late_ip);
    ok("deleting late", cluster.kubectl_ok(&["delete", "service", "late", "--wait=false"]).map(drop));
    let vanished = time_until(&cluster, "late.default.svc.cluster.local", "");
    println!("late appeared after {appeared:?}, vanished after {vanished:?}");
    assert!(appeared <= Duration::from_secs(1) && vanished <= Duration::from_secs(1), "{appeared:?} {vanished:?}");
}
