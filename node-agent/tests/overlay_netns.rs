//! Netns integration tests of the eBPF VXLAN overlay: two node namespaces on an
//! underlay bridge, pods on each, the real agent on each node with the real programs.
//!
//! Needs root and bpffs; skips without them, fails under CI=true. Everything is removed
//! when a test ends, passed or failed.

use std::{path::PathBuf, process::Stdio, sync::Mutex, time::Duration};

use skiff_tests::{
    PinDir,
    netns::{ChildGuard, wait_until},
    require_privileges,
    topology::{NodeTopology, Underlay},
    unique_tag, workspace_bin,
};

static SERIAL: Mutex<()> = Mutex::new(());

const REMOTE_VIP: &str = "10.96.0.20";
/// A host on the underlay that is no node, with no route to the pods (like the API
/// server of a local cluster), and a Service whose only endpoint it is (like
/// `kubernetes`).
const OUTSIDE_IP: &str = "192.168.77.100";
const OUTSIDE_VIP: &str = "10.96.0.30";

/// Node 1 has pods `c1` (10.244.1.10) and `s1` (10.244.1.11); node 2 has `s2`
/// (10.244.2.10) and `c2` (10.244.2.11). Service `remote` (10.96.0.20:80) has one
/// backend, s2; Service `outside` (10.96.0.30:443) has the outside host's 9443.
struct Cluster {
    tag: String,
    dir: PathBuf,
    agents: Vec<ChildGuard>,
    _servers: Vec<ChildGuard>,
    pins: Vec<PinDir>,
    nodes: Vec<NodeTopology>,
    _outside: skiff_tests::netns::Netns,
    _underlay: Underlay,
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: remote, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: udp, port: 80, targetPort: 8080, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: remote-1
  namespace: default
  labels: {kubernetes.io/service-name: remote}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: udp, port: 8080, protocol: UDP}
endpoints:
- addresses: ["10.244.2.10"]
---
apiVersion: v1
kind: Service
metadata: {name: outside, namespace: default}
spec:
  clusterIP: 10.96.0.30
  ports:
  - {name: https, port: 443, targetPort: 9443, protocol: TCP}
  - {name: udp, port: 443, targetPort: 9443, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: outside-1
  namespace: default
  labels: {kubernetes.io/service-name: outside}
addressType: IPv4
ports:
- {name: https, port: 9443, protocol: TCP}
- {name: udp, port: 9443, protocol: UDP}
endpoints:
- addresses: ["192.168.77.100"]
---
apiVersion: v1
kind: Service
metadata: {name: hostnet, namespace: default}
spec:
  clusterIP: 10.96.0.40
  ports:
  - {name: http, port: 80, targetPort: 9090, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hostnet-1
  namespace: default
  labels: {kubernetes.io/service-name: hostnet}
addressType: IPv4
ports:
- {name: http, port: 9090, protocol: TCP}
endpoints:
- addresses: ["192.168.77.11"]
"#;

fn nodes_file(nodes: &[&NodeTopology]) -> String {
    let mut s = String::from("nodes:\n");
    for n in nodes {
        s.push_str(&format!(
            "- {{name: n{i}, podCIDR: 10.244.{i}.0/24, underlayIP: {ip}}}\n",
            i = n.index,
            ip = n.underlay_ip()
        ));
    }
    s
}

impl Cluster {
    fn new() -> Self {
        let tag = unique_tag("ov");
        let underlay = Underlay::new(&tag);
        let n1 = NodeTopology::node_of_cluster(&tag, 1, &["c1", "s1"]);
        let n2 = NodeTopology::node_of_cluster(&tag, 2, &["s2", "c2"]);
        underlay.connect(&n1);
        underlay.connect(&n2);
        let outside = underlay.attach_host(&tag, "out", OUTSIDE_IP.parse().unwrap());
        let dir = std::env::temp_dir().join(format!("skiff-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        std::fs::write(dir.join("manifests/services.yaml"), SERVICES).unwrap();
        std::fs::write(dir.join("nodes.yaml"), nodes_file(&[&n1, &n2])).unwrap();

        let echo = workspace_bin("skiff-echo");
        let mut servers = Vec::new();
        for (node, pod) in [(&n1, "s1"), (&n2, "s2")] {
            let child = node
                .pod(pod)
                .ns
                .command(echo.to_str().unwrap())
                .args(["serve", "--name", pod, "--tcp", "8080", "--udp", "8080"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            servers.push(ChildGuard::new(child));
        }
        // A server on each node's own address, for pods reaching node addresses and for
        // a Service whose backend is on the host network (`hostnet`: node 1's).
        for (node, name) in [(&n1, "node1"), (&n2, "node2")] {
            let child = node
                .node
                .command(echo.to_str().unwrap())
                .args(["serve", "--name", name, "--tcp", "9090"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            servers.push(ChildGuard::new(child));
        }
        let child = outside
            .command(echo.to_str().unwrap())
            .args(["serve", "--name", "outside", "--tcp", "9443", "--udp", "9443"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        servers.push(ChildGuard::new(child));

        let mut cluster = Self {
            tag,
            dir,
            agents: Vec::new(),
            _servers: servers,
            pins: Vec::new(),
            nodes: vec![n1, n2],
            _outside: outside,
            _underlay: underlay,
        };
        for i in 0..2 {
            cluster.start_agent(i);
        }
        cluster
    }

    /// Node `i`'s datapath counter `name` (`skiff-node stats`), and the whole listing
    /// for failure messages.
    fn counter(&self, i: usize, name: &str) -> (u64, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff-node"))
            .args(["stats", "--pin-dir", self.pins[i].path.to_str().unwrap()])
            .output()
            .unwrap();
        let stats = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = stats
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} counter: {stats}"));
        (value, stats)
    }

    fn start_agent(&mut self, i: usize) {
        let node = &self.nodes[i];
        let pins = PinDir::new(&node.tag);
        let ready = self.dir.join(format!("ready-{i}"));
        let _ = std::fs::remove_file(&ready);
        let mut args = vec![
            "run".to_owned(),
            "--node-name".into(),
            format!("n{}", node.index),
            "--pin-dir".into(),
            pins.path.display().to_string(),
            "--manifests".into(),
            self.dir.join("manifests").display().to_string(),
            "--nodes".into(),
            self.dir.join("nodes.yaml").display().to_string(),
            "--underlay-interface".into(),
            "eth0".into(),
            "--ready-file".into(),
            ready.display().to_string(),
            "--sync-interval-ms".into(),
            "100".into(),
            "--cni-conf-dir".into(),
            self.dir.join(format!("cni-{i}/conf")).display().to_string(),
            "--cni-bin-dir".into(),
            self.dir.join(format!("cni-{i}/bin")).display().to_string(),
            "--cni-data-dir".into(),
            self.dir.join(format!("cni-{i}/data")).display().to_string(),
        ];
        for interface in node.host_interfaces() {
            args.push("--pod-interface".into());
            args.push(interface);
        }
        let child =
            node.node.command(env!("CARGO_BIN_EXE_skiff-node")).args(&args).env("RUST_LOG", "warn").spawn().unwrap();
        self.agents.push(ChildGuard::new(child));
        self.pins.push(pins);
        assert!(wait_until(Duration::from_secs(20), || ready.exists()), "agent on n{} not ready in 20 s", i + 1);
        // As skiff-cni would for pods it set up: packets for them go straight in.
        self.nodes[i].register_endpoints(&self.pins[i].path).unwrap();
    }

    fn node(&self, index: u8) -> &NodeTopology {
        &self.nodes[usize::from(index) - 1]
    }

    fn echo(&self, node: u8, pod: &str, args: &[&str]) -> Vec<String> {
        let out = self
            .node(node)
            .pod(pod)
            .ns
            .command(workspace_bin("skiff-echo").to_str().unwrap())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "skiff-echo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }

    fn summary(&self, node: u8, pod: &str, args: &[&str]) -> String {
        self.echo(node, pod, args).last().cloned().unwrap_or_default()
    }

    fn write_nodes(&self, nodes: &[&NodeTopology]) {
        let tmp = self.dir.join(".nodes.tmp");
        std::fs::write(&tmp, nodes_file(nodes)).unwrap();
        std::fs::rename(&tmp, self.dir.join("nodes.yaml")).unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            agent.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = &self.tag;
    }
}

fn privileged(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if !require_privileges(test) {
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

#[test]
fn pods_on_two_nodes_talk_over_the_ebpf_overlay() {
    let Some(_serial) = privileged("pods_on_two_nodes_talk_over_the_ebpf_overlay") else { return };
    let c = Cluster::new();

    // The device: external mode, flannel's port, MTU = underlay MTU - 50, and no
    // per-peer FDB, neighbour or route entries.
    let link = c.node(1).node.sh("ip -d link show dev skiff-vxlan");
    assert!(link.contains("external") && link.contains("dstport 8472") && link.contains("mtu 1450"), "{link}");
    assert!(c.node(1).node.sh("bridge fdb show dev skiff-vxlan").trim().is_empty(), "no FDB entries");
    let routes = c.node(1).node.sh("ip route show dev skiff-vxlan");
    assert_eq!(routes.lines().count(), 1, "one route for the cluster CIDR only: {routes}");

    // The agent wrote each node's CNI configuration and installed the plugins.
    for i in 0..2 {
        let conf = std::fs::read_to_string(c.dir.join(format!("cni-{i}/conf/10-skiff.conflist"))).unwrap();
        assert!(conf.contains(&format!("10.244.{}.0/24", i + 1)) && conf.contains("1450"), "{conf}");
        for plugin in ["skiff-cni", "loopback"] {
            assert!(c.dir.join(format!("cni-{i}/bin/{plugin}")).is_file(), "{plugin} not installed");
        }
    }

    // TCP and UDP pod to pod, both directions.
    assert_eq!(c.summary(1, "c1", &["tcp", "10.244.2.10:8080", "--count", "20"]), "sent=20 ok=20 failed=0");
    assert_eq!(c.summary(1, "c1", &["udp", "10.244.2.10:8080", "--count", "20"]), "sent=20 ok=20 failed=0");
    assert_eq!(c.summary(2, "c2", &["tcp", "10.244.1.11:8080", "--count", "20"]), "sent=20 ok=20 failed=0");

    // Large packets: a 1400-byte datagram, and a bulk TCP transfer (no MTU black hole).
    assert_eq!(
        c.summary(1, "c1", &["udp", "10.244.2.10:8080", "--count", "5", "--size", "1400"]),
        "sent=5 ok=5 failed=0"
    );
    let bulk = c.echo(1, "c1", &["bulk", "10.244.2.10:8080", "--bytes", "20000000"]);
    assert_eq!(bulk[0], "ok s2 got 20000000", "{bulk:?}");
    // Those went into the tunnel wrapped by from_pod itself (GSO packets included: the
    // bulk transfer's), not through the VXLAN device, and nothing was dropped.
    let (encapsulated, stats) = c.counter(0, "tunnel_encapsulated");
    assert!(encapsulated >= 45, "packets n1 wrapped in VXLAN itself: {encapsulated}\n{stats}");
    // Once the peer's MAC is known, wrapped packets get it from the FIB and go to the
    // underlay interface directly; only the first ones go through neighbour output.
    let (neigh_output, stats) = c.counter(0, "wire_neigh_output");
    assert!(neigh_output * 4 < encapsulated, "wrapped packets left to neighbour output: {neigh_output}\n{stats}");
    assert!(stats.contains("errors: 0"), "{stats}");
    let eth0 = c.node(1).node.sh("ip -s link show dev eth0");
    let tx_dropped = eth0.lines().skip_while(|l| !l.trim_start().starts_with("TX:")).nth(1);
    let tx_dropped = tx_dropped.and_then(|l| l.split_whitespace().nth(3)).unwrap_or("?");
    assert_eq!(tx_dropped, "0", "n1's underlay interface dropped packets on transmit:\n{eth0}");

    // A ClusterIP whose only backend is on the other node; the reply is translated back
    // on the client's node.
    assert_eq!(c.summary(1, "c1", &["tcp", &format!("{REMOTE_VIP}:80"), "--count", "20"]), "sent=20 ok=20 failed=0");
    assert_eq!(c.summary(1, "c1", &["udp", &format!("{REMOTE_VIP}:80"), "--count", "20"]), "sent=20 ok=20 failed=0");

    // Pods reach the nodes' underlay addresses.
    let node2 = format!("{}:9090", c.node(2).underlay_ip());
    assert_eq!(c.summary(1, "c1", &["tcp", &node2, "--count", "5"]), "sent=5 ok=5 failed=0");

    // Each node is one router hop, as with the kernel's forwarding (and flannel): a UDP
    // traceroute from c1 meets node 1, then node 2, then the pod; toward a pod of its own
    // node, node 1 then the pod. Where the TTL runs out, the programs leave the packet
    // to the node's stack, which answers with ICMP time exceeded.
    let addresses = |node: u8| c.node(node).node.sh("ip -4 -o addr show");
    let trace = c.echo(1, "c1", &["hops", "10.244.2.10:8080", "--timeout-ms", "1000"]);
    eprintln!("c1 -> s2 (10.244.2.10, another node): {trace:?}");
    assert_eq!(trace.len(), 4, "{trace:?}");
    for (line, node) in trace[..2].iter().zip([1, 2]) {
        let router = line.split_whitespace().nth(2).unwrap_or_default();
        assert!(line.ends_with("time-exceeded"), "hop {node} must be node {node}: {trace:?}");
        assert!(addresses(node).contains(&format!(" {router}/")), "{router} is not node {node}'s: {trace:?}");
    }
    assert_eq!((trace[2].as_str(), trace[3].as_str()), ("hop 3 10.244.2.10 answer s2", "hops=3"));
    let trace = c.echo(1, "c1", &["hops", "10.244.1.11:8080", "--timeout-ms", "1000"]);
    assert_eq!(trace[1..], ["hop 2 10.244.1.11 answer s1", "hops=2"], "{trace:?}");
    assert!(trace[0].ends_with("time-exceeded"), "{trace:?}");
    for (i, at_least) in [(0, 2), (1, 1)] {
        let (expired, stats) = c.counter(i, "ttl_expired");
        assert!(expired >= at_least, "n{} left {expired} packets to its stack at TTL 1\n{stats}", i + 1);
        assert!(stats.contains("errors: 0"), "{stats}");
    }
}

#[test]
fn pods_reach_hosts_outside_the_cluster_network_masqueraded() {
    let Some(_serial) = privileged("pods_reach_hosts_outside_the_cluster_network_masqueraded") else { return };
    let c = Cluster::new();
    let direct = format!("{OUTSIDE_IP}:9443");
    let service = format!("{OUTSIDE_VIP}:443");
    for (node, pod) in [(1, "c1"), (2, "c2")] {
        for target in [&direct, &service] {
            for proto in ["tcp", "udp"] {
                assert_eq!(
                    c.summary(node, pod, &[proto, target, "--count", "20", "--timeout-ms", "2000"]),
                    "sent=20 ok=20 failed=0",
                    "{pod} on n{node} -> {target} over {proto}"
                );
            }
        }
    }
    // A Service whose backend is on the host network: from the backend's own node (the
    // reply comes from the node's stack into the pod's veth) and from the other node
    // (the reply comes back masqueraded over the underlay).
    for (node, pod) in [(1, "c1"), (2, "c2")] {
        assert_eq!(
            c.summary(node, pod, &["tcp", "10.96.0.40:80", "--count", "10", "--timeout-ms", "2000"]),
            "sent=10 ok=10 failed=0",
            "{pod} on n{node} -> hostnet"
        );
    }
    // One long connection, many requests: the flow keeps its port.
    assert_eq!(
        c.summary(1, "c1", &["hold", &service, "--count", "20", "--interval-ms", "10"]),
        "sent=20 ok=20 failed=0"
    );
    let (snat_new, stats) = c.counter(0, "snat_new");
    // 20 TCP connections to each target, one UDP flow each, and the held connection.
    assert!(snat_new >= 43, "masqueraded flows on n1: {snat_new}\n{stats}");
    assert!(stats.contains("snat_no_port: 0"), "{stats}");
}

#[test]
fn a_node_leaving_stops_traffic_to_it_and_nothing_else() {
    let Some(_serial) = privileged("a_node_leaving_stops_traffic_to_it_and_nothing_else") else { return };
    let c = Cluster::new();
    assert_eq!(c.summary(1, "c1", &["tcp", "10.244.2.10:8080", "--count", "5"]), "sent=5 ok=5 failed=0");

    // A long-lived local flow and a steady loop to a local pod keep going throughout.
    let steady = c
        .node(1)
        .pod("c1")
        .ns
        .command(workspace_bin("skiff-echo").to_str().unwrap())
        .args(["hold", "10.244.1.11:8080", "--count", "30", "--interval-ms", "100"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // Node 2 leaves the cluster.
    c.write_nodes(&[c.node(1)]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            c.summary(1, "c1", &["tcp", "10.244.2.10:8080", "--count", "1", "--timeout-ms", "500"])
                == "sent=1 ok=0 failed=1"
        }),
        "traffic to the node that left must stop"
    );
    assert_eq!(c.summary(1, "c1", &["tcp", "10.244.1.11:8080", "--count", "10"]), "sent=10 ok=10 failed=0");

    let out = steady.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sent=30 ok=30 failed=0"), "the local flow must not notice: {text}");

    // Node 2 joins again.
    c.write_nodes(&[c.node(1), c.node(2)]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            c.summary(1, "c1", &["tcp", "10.244.2.10:8080", "--count", "1", "--timeout-ms", "500"])
                == "sent=1 ok=1 failed=0"
        }),
        "traffic to the node that joined again must flow"
    );
}
