//! The connectivity matrix, in the spirit of Cilium's connectivity test: on a two-node
//! cluster as `cargo xtask up` makes it (the service proxy fed by the API), every path a
//! packet can take between pods and Services, over TCP and UDP each:
//!
//! - pod → pod on the same node, and across nodes (the overlay);
//! - pod → ClusterIP with its only backend on the client's node, and on the other node,
//!   from either node;
//! - hairpin: a pod reaching its own Service, itself the only backend;
//! - `sessionAffinity: ClientIP`: many requests from one client land on one backend,
//!   while the same backends without affinity share them;
//! - `internalTrafficPolicy: Local`: only the client's node's backend answers;
//! - a Service without endpoints is refused at once (TCP RST, ICMP port unreachable),
//!   not left to time out;
//! - from a host outside the cluster (a namespace of its own on the nodes' network):
//!   NodePort on either node, with the backend on that node and on the other one, and
//!   `externalTrafficPolicy: Local`, which serves only the node's own backends; an
//!   `externalIPs` address routed by the outside host to node 1 while the backend is
//!   on node 2; the address skiff-control gives a LoadBalancer Service from its pool,
//!   found by ARP (the node with the backend answers for it, at XDP); then,
//!   over HTTP, which client address each backend sees: the client's own with a backend
//!   on the node it connected to, the node's podCIDR network address with a backend
//!   elsewhere; that such a flow and a connection of node 1's host to the same backend
//!   from the same port both get their answers;
//!   and that these went through the nodes' XDP fast path (node 1 sent the packets for
//!   node 2's backend back into the tunnel at XDP, node 2 translated its own, and
//!   answered the ARP requests for the LoadBalancer address there); and the
//!   health-check node port of a LoadBalancer Service with `externalTrafficPolicy:
//!   Local`: 200 from the node holding its backend, 503 from the other; a node port and
//!   an `externalIPs` address with `skiff.io/forwarding-mode: dsr` (direct server
//!   return) on node 1 with the backend on node 2: the backend sees the client's own
//!   address, node 2 answers the client itself from the address and port the client
//!   connected to, and node 1 sees no reply; last, a
//!   LoadBalancer Service's backend moves to the other node, whose gratuitous ARP
//!   updates the outside host's cache at once.
//!
//! - from node 1's host namespace, as a process of the node's cgroup: a pod on the
//!   other node (from the node's podCIDR address, so the reply comes back through the
//!   tunnel), and ClusterIPs with the backend local, remote and both, through the
//!   socket-level load balancer; then that such connections make no conntrack entry
//!   (the node's `ct_new` counter stays, `sock_translated` grows), from the host and
//!   from a pod (the pods' cgroups lie below the node's), that a pod's packets for
//!   another pod of its node go straight into it (`pod_delivered`), and that unconnected
//!   UDP is answered from the ClusterIP the application sent to.
//!
//! - from the client pod's network namespace entered by the test process, which is not
//!   in the node's cgroup (so no socket LB): a ClusterIP with a remote backend and the
//!   client's own node's node port (backend local and remote), translated by the tc
//!   programs on the pod's interface; then that a UDP port of the pod's that carried
//!   such a flow, reused by the pod itself for the same Service (which the socket LB
//!   sends straight to the backend), gets the new flow's answers.
//!
//! Pod → addresses off the pod network (the masquerade, which the `kubernetes` Service
//! needs) is tested in node-agent/tests/overlay_netns.rs.
//!
//! One cluster for the whole file; every pod and Service is applied at once, and once
//! every node's agent has programmed them all, the cells run in parallel, each with
//! `kubectl exec` of the echo client in a pod. A failing cell is reported with its name,
//! the command and the client's output, all failing cells together, then the
//! datapath's maps and counters.
//!
//! Needs root; skips without it, fails under CI=true.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use std::net::Ipv4Addr;

use skiff_tests::cluster::{Cluster, ClusterNode};
use skiff_tests::netns::{Netns, wait_until};
use skiff_tests::{require_privileges, workspace_bin};
use support::{Replies, client_pod, cluster_ip, datapath_state, ready_endpoints, two_node_cluster, wait_pods_ready};

/// An echo server (TCP and UDP on 8080, named after its pod) labelled `at: {at}`, pinned
/// to node `{node}` with `nodeName`.
const SERVER_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: {name}, labels: {app: srv, at: {at}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: localhost/skiff/echo:1
    command: ["/skiff-echo", "serve"]
    readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
"#;

/// A Service on TCP and UDP port 80 (the echo servers' 8080) with `{spec}` added.
const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: {name}{annotations}}
spec: {{spec}, ports: [{name: tcp, port: 80, targetPort: 8080, protocol: TCP}, {name: udp, port: 80, targetPort: 8080, protocol: UDP}]}
"#;

/// The Services of the matrix: name and what their spec adds.
const SERVICES: &[(&str, &str)] = &[
    ("on-n1", "selector: {at: n1}"),
    ("on-n2", "selector: {at: n2}"),
    ("spread", "selector: {app: srv}"),
    ("sticky", "selector: {app: srv}, sessionAffinity: ClientIP"),
    ("empty", "selector: {app: nothing-matches-this}"),
    ("np-n2", "type: NodePort, selector: {at: n2}"),
    ("np-local", "type: NodePort, externalTrafficPolicy: Local, selector: {app: srv}"),
    ("ext-ip", "externalIPs: [192.168.77.150], selector: {at: n2}"),
    ("itp-local", "internalTrafficPolicy: Local, selector: {app: srv}"),
    ("lb", "type: LoadBalancer, selector: {at: n2}"),
    ("lb-local", "type: LoadBalancer, externalTrafficPolicy: Local, selector: {at: n2}"),
    ("np-dsr", "type: NodePort, selector: {at: n2}"),
    ("ext-dsr", "externalIPs: [192.168.77.151], selector: {at: n2}"),
];

/// Annotations of the matrix's Services, by name (the others have none).
const ANNOTATIONS: &[(&str, &str)] =
    &[("np-dsr", "skiff.io/forwarding-mode: dsr"), ("ext-dsr", "skiff.io/forwarding-mode: dsr")];

/// The `ext-ip` Service's external address, routed by the outside host through node 1.
/// (The `lb` Service's address comes from skiff-control's pool; the outside host finds
/// it by ARP.)
const EXTERNAL_IP: &str = "192.168.77.150";
/// The `ext-dsr` Service's external address (direct server return), routed like
/// [`EXTERNAL_IP`].
const EXTERNAL_DSR_IP: &str = "192.168.77.151";

/// Node 1's host namespace (in the node's cgroup), as a cell's `from`.
const NODE1_HOST: &str = "node 1's host";

/// The client pod's network namespace entered by the test itself, whose cgroup is not
/// under the node's: the socket-level load balancer does not see its `connect()`, so its
/// Service traffic meets the tc programs on the pod's interface, as a pod's would on a
/// node where pods run outside the agent's cgroup subtree.
const CLIENT_NETNS: &str = "the client pod's netns, outside the node's cgroup";

/// The host outside the cluster that NodePort clients run on.
const OUTSIDE: &str = "outside";
const OUTSIDE_IP: &str = "192.168.77.100";

/// Everything the matrix applies: the client on node 1, a server on each node, the
/// Services.
fn manifest(n1: &str, n2: &str) -> String {
    let server = |name: &str, at: &str, node: &str| {
        SERVER_POD.replace("{name}", name).replace("{at}", at).replace("{node}", node)
    };
    let services = SERVICES.iter().map(|(name, spec)| {
        let annotations = ANNOTATIONS
            .iter()
            .find(|(service, _)| service == name)
            .map_or(String::new(), |(_, a)| format!(", annotations: {{{a}}}"));
        SERVICE.replace("{name}", name).replace("{annotations}", &annotations).replace("{spec}", spec)
    });
    [client_pod(n1), server("srv-n1", "n1", n1), server("srv-n2", "n2", n2)]
        .into_iter()
        .chain(services)
        .collect::<Vec<_>>()
        .join("---")
}

/// Requests per cell that checks spreading or stickiness: with two backends, 20 requests
/// all landing on one by chance has a probability of 2·2⁻²⁰.
const MANY: u32 = 20;

/// What a cell expects from its requests.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Every request answered, all by this pod.
    AnsweredBy(&'static str),
    /// Every request answered, all by one pod.
    OneBackend,
    /// Every request answered, by more than one pod.
    Spread,
    /// Every request refused (ECONNREFUSED: a TCP RST or an ICMP port unreachable), none
    /// timing out. Told by the error, not by the time: `kubectl exec` alone may take
    /// seconds on a busy machine.
    Refused,
}

/// Where a cell sends to.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The pod's own IP, on the echo port.
    Pod(&'static str),
    /// The Service's ClusterIP, on port 80.
    Service(&'static str),
    /// The Service's node port for the cell's protocol, on node `.1` (0-based)'s address.
    NodePort(&'static str, usize),
    /// An `externalIPs` address, on port 80.
    External(&'static str),
    /// The Service's LoadBalancer ingress address, on port 80.
    LoadBalancer(&'static str),
}

/// One cell of the matrix, run for TCP and for UDP.
struct Cell {
    name: &'static str,
    /// A pod's name, [`OUTSIDE`], [`NODE1_HOST`] or [`CLIENT_NETNS`].
    from: &'static str,
    to: Target,
    requests: u32,
    expect: Expect,
}

const CELLS: &[Cell] = &[
    Cell {
        name: "pod → pod, same node",
        from: "client",
        to: Target::Pod("srv-n1"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n1"),
    },
    Cell {
        name: "pod → pod, across nodes",
        from: "client",
        to: Target::Pod("srv-n2"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "pod → pod, across nodes (from node 2)",
        from: "srv-n2",
        to: Target::Pod("client"),
        requests: 3,
        expect: Expect::AnsweredBy("client"),
    },
    Cell {
        name: "pod → ClusterIP, backend local",
        from: "client",
        to: Target::Service("on-n1"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n1"),
    },
    Cell {
        name: "pod → ClusterIP, backend remote",
        from: "client",
        to: Target::Service("on-n2"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "pod → ClusterIP, backend remote (from node 2)",
        from: "srv-n2",
        to: Target::Service("on-n1"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n1"),
    },
    Cell {
        name: "hairpin: pod → own Service, itself the only backend (node 1)",
        from: "srv-n1",
        to: Target::Service("on-n1"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n1"),
    },
    Cell {
        name: "hairpin: pod → own Service, itself the only backend (node 2)",
        from: "srv-n2",
        to: Target::Service("on-n2"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "no affinity: requests spread over both backends",
        from: "client",
        to: Target::Service("spread"),
        requests: MANY,
        expect: Expect::Spread,
    },
    Cell {
        name: "sessionAffinity ClientIP: every request on one backend",
        from: "client",
        to: Target::Service("sticky"),
        requests: MANY,
        expect: Expect::OneBackend,
    },
    Cell {
        name: "internalTrafficPolicy Local: node 1's backend only",
        from: "client",
        to: Target::Service("itp-local"),
        requests: MANY,
        expect: Expect::AnsweredBy("srv-n1"),
    },
    Cell {
        name: "Service without endpoints: refused at once",
        from: "client",
        to: Target::Service("empty"),
        requests: 1,
        expect: Expect::Refused,
    },
    Cell {
        name: "node 1 host → pod on node 2",
        from: NODE1_HOST,
        to: Target::Pod("srv-n2"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "node 1 host → ClusterIP, backend local (socket LB)",
        from: NODE1_HOST,
        to: Target::Service("on-n1"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n1"),
    },
    Cell {
        name: "node 1 host → ClusterIP, backend remote (socket LB)",
        from: NODE1_HOST,
        to: Target::Service("on-n2"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "node 1 host → ClusterIP, requests spread over both backends (socket LB)",
        from: NODE1_HOST,
        to: Target::Service("spread"),
        requests: MANY,
        expect: Expect::Spread,
    },
    Cell {
        name: "node 1 host → Service without endpoints: refused at once (socket LB)",
        from: NODE1_HOST,
        to: Target::Service("empty"),
        requests: 1,
        expect: Expect::Refused,
    },
    Cell {
        name: "node 1 host → ClientIP affinity: one backend for all requests (socket LB)",
        from: NODE1_HOST,
        to: Target::Service("sticky"),
        requests: MANY,
        expect: Expect::OneBackend,
    },
    Cell {
        name: "node 1 host → its own node port, backend on node 2 (socket LB)",
        from: NODE1_HOST,
        to: Target::NodePort("np-n2", 0),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "node 1 host → LoadBalancer ingress address (socket LB)",
        from: NODE1_HOST,
        to: Target::LoadBalancer("lb"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "client pod outside the node's cgroup → ClusterIP, backend remote (tc)",
        from: CLIENT_NETNS,
        to: Target::Service("on-n2"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "client pod outside the node's cgroup → ClusterIP, backend local (tc)",
        from: CLIENT_NETNS,
        to: Target::Service("on-n1"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n1"),
    },
    Cell {
        name: "client pod outside the node's cgroup → its node's node port, backend on node 2 (tc)",
        from: CLIENT_NETNS,
        to: Target::NodePort("np-n2", 0),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "client pod outside the node's cgroup → its node's node port, backend local (tc)",
        from: CLIENT_NETNS,
        to: Target::NodePort("np-local", 0),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n1"),
    },
    Cell {
        name: "outside → NodePort on node 1, backend on node 2",
        from: OUTSIDE,
        to: Target::NodePort("np-n2", 0),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "outside → NodePort by direct server return on node 1, backend on node 2",
        from: OUTSIDE,
        to: Target::NodePort("np-dsr", 0),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "outside → NodePort on node 2, backend on node 2",
        from: OUTSIDE,
        to: Target::NodePort("np-n2", 1),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "outside → externalIPs address through node 1, backend on node 2",
        from: OUTSIDE,
        to: Target::External(EXTERNAL_IP),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "outside → externalIPs address by direct server return through node 1, backend on node 2",
        from: OUTSIDE,
        to: Target::External(EXTERNAL_DSR_IP),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "outside → LoadBalancer ingress address, announced by ARP from node 2 (its backend's)",
        from: OUTSIDE,
        to: Target::LoadBalancer("lb"),
        requests: 3,
        expect: Expect::AnsweredBy("srv-n2"),
    },
    Cell {
        name: "outside → NodePort externalTrafficPolicy Local on node 1: node 1's backend only",
        from: OUTSIDE,
        to: Target::NodePort("np-local", 0),
        requests: MANY,
        expect: Expect::AnsweredBy("srv-n1"),
    },
    Cell {
        name: "outside → NodePort externalTrafficPolicy Local on node 2: node 2's backend only",
        from: OUTSIDE,
        to: Target::NodePort("np-local", 1),
        requests: MANY,
        expect: Expect::AnsweredBy("srv-n2"),
    },
];

/// Per-request timeout of the clients: long enough for a slow first packet, short
/// enough that a timeout is told from a refusal.
const TIMEOUT_MS: &str = "3000";

/// Runs one cell over one protocol; `Err` holds the failure report.
fn run_cell(cluster: &Cluster, outside: &Netns, cell: &Cell, proto: &str, address: &str) -> Result<(), String> {
    let count = cell.requests.to_string();
    let client = [proto, address, "--count", &count, "--timeout-ms", TIMEOUT_MS];
    let echo = workspace_bin("skiff-echo");
    let echo = echo.to_str().expect("UTF-8 path");
    let started = Instant::now();
    let (out, shown) = if cell.from == OUTSIDE {
        let out = outside.command(echo).args(client).output().expect("running the echo client");
        (out, format!("[{}] skiff-echo {}", outside.name, client.join(" ")))
    } else if cell.from == CLIENT_NETNS {
        let netns = pod_netns(&cluster.kubectl_out(&["get", "pod", "client", "-o", "jsonpath={.status.podIP}"]));
        let out = Command::new("nsenter").arg(format!("--net={netns}")).arg(echo).args(client).output();
        (out.expect("running the echo client"), format!("nsenter --net={netns} skiff-echo {}", client.join(" ")))
    } else if cell.from == NODE1_HOST {
        let line = format!("{echo} {}", client.join(" "));
        (cluster.nodes[0].host_sh(&line), format!("[{} host, its cgroup] {line}", cluster.nodes[0].name))
    } else {
        let args = [["exec", cell.from, "--", "/skiff-echo"].as_slice(), &client].concat();
        (cluster.kubectl(&args), format!("kubectl {}", args.join(" ")))
    };
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let replies = Replies::parse(&stdout);
    let all_answered = replies.finished && replies.errors.is_empty() && replies.answers.len() == cell.requests as usize;
    let verdict = match cell.expect {
        Expect::AnsweredBy(pod) if all_answered && replies.names() == [pod] => Ok(()),
        Expect::AnsweredBy(pod) => Err(format!("expected {count} answers from {pod}")),
        Expect::OneBackend if all_answered && replies.names().len() == 1 => Ok(()),
        Expect::OneBackend => Err(format!("expected {count} answers, all from one backend")),
        Expect::Spread if all_answered && replies.names().len() > 1 => Ok(()),
        Expect::Spread => Err(format!("expected {count} answers from more than one backend")),
        Expect::Refused
            if replies.finished
                && replies.answers.is_empty()
                && replies.errors.iter().all(|e| e.contains("Connection refused")) =>
        {
            Ok(())
        }
        Expect::Refused => Err(format!("expected every request refused (ECONNREFUSED, not a {TIMEOUT_MS} ms timeout)")),
    };
    verdict.map_err(|why| {
        format!(
            "FAILED cell `{} ({})`: {why}\n  command: {shown} ({}, {took:.1?})\n  stdout:\n{}  stderr: {}",
            cell.name,
            proto.to_uppercase(),
            out.status,
            indent(&stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// The network namespace (as `/proc/PID/ns/net`) that holds `pod_ip`: one of a process
/// of the pod's, found by asking each distinct namespace for its addresses.
fn pod_netns(pod_ip: &str) -> String {
    assert!(!pod_ip.is_empty(), "the client pod has no IP");
    let mut seen = std::collections::HashSet::new();
    let pids =
        std::fs::read_dir("/proc").expect("reading /proc").filter_map(|e| e.ok()?.file_name().into_string().ok());
    for pid in pids.filter(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        let path = format!("/proc/{pid}/ns/net");
        let Ok(id) = std::fs::read_link(&path) else { continue };
        if !seen.insert(id) {
            continue;
        }
        let addrs = Command::new("nsenter").arg(format!("--net={path}")).args(["ip", "-4", "-o", "addr"]).output();
        if addrs.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {pod_ip}/"))) {
            return path;
        }
    }
    panic!("no network namespace holds {pod_ip}");
}

/// A LoadBalancer Service's ingress address, once skiff-control has given it one.
fn lb_ingress_ip(cluster: &Cluster, service: &str) -> String {
    let get =
        || cluster.kubectl_out(&["get", "service", service, "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"]);
    assert!(wait_until(Duration::from_secs(30), || !get().is_empty()), "Service {service} got no LoadBalancer address");
    let ip = get();
    let pool: ipnet::Ipv4Net = skiff_tests::cluster::LB_POOL.parse().expect("the pool is a CIDR");
    assert!(
        ip.parse::<Ipv4Addr>().is_ok_and(|a| pool.contains(&a)),
        "Service {service}'s address {ip} is not from {pool}"
    );
    ip
}

/// The node port of a Service's port named after the protocol (`tcp`, `udp`).
fn node_port(cluster: &Cluster, service: &str, proto: &str) -> String {
    let path = format!("jsonpath={{.spec.ports[?(@.name==\"{proto}\")].nodePort}}");
    let port = cluster.kubectl_out(&["get", "service", service, "-o", &path]);
    assert!(!port.is_empty(), "Service {service} has no {proto} node port");
    port
}

/// The client address a backend sees through a node port: (Service, node, backend that
/// answers, whether it sees the client's own address).
const SOURCE_CHECKS: &[(&str, usize, &str, bool)] = &[
    // The backend on the node the client reached: nothing to translate back through
    // another node, so the client's address is kept.
    ("np-local", 0, "srv-n1", true),
    ("np-n2", 1, "srv-n2", true),
    // The backend on another node: its replies must come back through this node, so
    // the packets reach it from this node's podCIDR network address.
    ("np-n2", 0, "srv-n2", false),
    // ... unless the Service asks for direct server return: the backend's node answers
    // the client itself, so the client's address is kept.
    ("np-dsr", 0, "srv-n2", true),
];

/// Runs [`SOURCE_CHECKS`] with `skiff-echo get ADDR /peer` from outside; the failures.
fn check_node_port_sources(cluster: &Cluster, outside: &Netns) -> Vec<String> {
    let echo = workspace_bin("skiff-echo");
    let mut failures = Vec::new();
    for &(service, node, backend, keeps_client) in SOURCE_CHECKS {
        let node = &cluster.nodes[node];
        let target = format!("{}:{}", node.ip, node_port(cluster, service, "tcp"));
        let out = outside
            .command(echo.to_str().expect("UTF-8 path"))
            .args(["get", &target, "/peer", "--timeout-ms", TIMEOUT_MS])
            .output()
            .expect("running the echo client");
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let pod_cidr = cluster.kubectl_out(&["get", "node", &node.name, "-o", "jsonpath={.spec.podCIDR}"]);
        // The podCIDR's network address: the node's NodePort source address.
        let snat_addr = pod_cidr.parse::<ipnet::Ipv4Net>().map(|c| c.network());
        let expected =
            if keeps_client { OUTSIDE_IP.to_owned() } else { snat_addr.map(|a| a.to_string()).unwrap_or(pod_cidr) };
        let want = format!("200 {backend} {expected}");
        if stdout != want {
            failures.push(format!(
                "FAILED source check: {service} through {} ({target}) from {OUTSIDE_IP}: expected `{want}`, got `{stdout}` ({}; stderr: {})",
                node.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    failures
}

/// The direct-server-return cells and source check went as DSR: node 1 sent their
/// packets into the tunnel with the frontend in the header (`dsr_tunneled`), node 2
/// learnt the flows from it (`dsr_learnt`) and sent their replies to the client itself
/// (`dsr_replied`), and node 1 reverse-translated no reply of theirs (its
/// `rev_translated` did not move while only DSR requests ran), through the node port
/// and through the external address alike; and the backend behind the external
/// address sees the client's own address. `Err`: the report.
fn check_direct_server_return(cluster: &Cluster, outside: &Netns) -> Option<String> {
    let (tunneled, learnt, replied) =
        (counter(cluster, 0, "dsr_tunneled"), counter(cluster, 1, "dsr_learnt"), counter(cluster, 1, "dsr_replied"));
    eprintln!(
        "direct server return: node 1 dsr_tunneled {tunneled}; node 2 dsr_learnt {learnt}, dsr_replied {replied}"
    );
    let mut failures = Vec::new();
    if tunneled == 0 || learnt == 0 || replied == 0 {
        failures.push(format!(
            "expected node 1 dsr_tunneled, node 2 dsr_learnt and dsr_replied > 0; got {tunneled}, {learnt}, {replied}"
        ));
    }
    let echo = workspace_bin("skiff-echo");
    let echo = echo.to_str().expect("UTF-8 path");
    let node_port_target = format!("{}:{}", cluster.nodes[0].ip, node_port(cluster, "np-dsr", "tcp"));
    for target in [node_port_target, format!("{EXTERNAL_DSR_IP}:80")] {
        let rev_before = counter(cluster, 0, "rev_translated");
        let replied_before = counter(cluster, 1, "dsr_replied");
        let out = outside
            .command(echo)
            .args(["tcp", &target, "--count", "5", "--timeout-ms", TIMEOUT_MS])
            .output()
            .expect("running the echo client");
        let replies = Replies::parse(&String::from_utf8_lossy(&out.stdout));
        let (rev_after, replied_after) = (counter(cluster, 0, "rev_translated"), counter(cluster, 1, "dsr_replied"));
        if !(replies.finished && replies.errors.is_empty() && replies.names() == ["srv-n2"]) {
            failures.push(format!("5 requests to {target}: expected 5 answers from srv-n2: {replies:?}"));
        }
        if rev_after != rev_before || replied_after <= replied_before {
            failures.push(format!(
                "during 5 requests to {target}: node 1 rev_translated {rev_before} → {rev_after} (expected unchanged), node 2 dsr_replied {replied_before} → {replied_after} (expected more)"
            ));
        }
    }
    let target = format!("{EXTERNAL_DSR_IP}:80");
    let out = outside
        .command(echo)
        .args(["get", &target, "/peer", "--timeout-ms", TIMEOUT_MS])
        .output()
        .expect("running the echo client");
    let (got, want) = (String::from_utf8_lossy(&out.stdout).trim().to_owned(), format!("200 srv-n2 {OUTSIDE_IP}"));
    if got != want {
        failures.push(format!("source check through {target}: expected `{want}`, got `{got}` ({})", out.status));
    }
    (!failures.is_empty()).then(|| format!("FAILED direct server return: {}", failures.join("; ")))
}

/// The NodePort cells went through XDP: node 1 sent packets for node 2's backend
/// straight back into the tunnel (`xdp_tunneled`), node 2 translated packets for its
/// own (`xdp_translated` beyond `xdp_tunneled`). `Err`: the failure report.
fn check_nodeport_fast_path(cluster: &Cluster) -> Option<String> {
    let tunneled = counter(cluster, 0, "xdp_tunneled");
    let (translated, tunneled2) = (counter(cluster, 1, "xdp_translated"), counter(cluster, 1, "xdp_tunneled"));
    let (to_tc1, to_tc2) = (counter(cluster, 0, "xdp_to_tc"), counter(cluster, 1, "xdp_to_tc"));
    eprintln!(
        "NodePort at XDP: node 1 xdp_tunneled {tunneled} (xdp_to_tc {to_tc1}); node 2 xdp_translated {translated}, xdp_tunneled {tunneled2} (xdp_to_tc {to_tc2})"
    );
    (tunneled == 0 || translated <= tunneled2).then(|| {
        format!(
            "FAILED NodePort fast path: node 1 xdp_tunneled {tunneled} (expected > 0), node 2 xdp_translated {translated} with xdp_tunneled {tunneled2} (expected more translated than tunneled)"
        )
    })
}

/// The outside host found the `lb` Service's LoadBalancer address by ARP, and node 2
/// (which announces it: the backend lives there) answered at XDP, every request of
/// them: with the fast path attached nothing is left for tc's answer. `Err`: the failure
/// report.
fn check_arp_answered_at_xdp(cluster: &Cluster) -> Option<String> {
    let (answered, at_xdp) = (counter(cluster, 1, "arp_answered"), counter(cluster, 1, "xdp_arp_answered"));
    eprintln!("ARP for LoadBalancer addresses: node 2 arp_answered {answered}, xdp_arp_answered {at_xdp}");
    (at_xdp == 0 || at_xdp != answered).then(|| {
        format!(
            "FAILED ARP at XDP: node 2 answered {answered} ARP requests, {at_xdp} of them at XDP (expected > 0, all)"
        )
    })
}

/// The `lb-local` Service's health-check node port, asked from outside on each node:
/// node 2 (its backend's) answers 200 with one local endpoint, node 1 503 with none.
/// `Err`: the failure report.
fn check_health_check_node_port(cluster: &Cluster, outside: &Netns) -> Option<String> {
    let port = cluster.kubectl_out(&["get", "service", "lb-local", "-o", "jsonpath={.spec.healthCheckNodePort}"]);
    if port.is_empty() {
        return Some("FAILED health check: the lb-local Service has no healthCheckNodePort".to_owned());
    }
    let mut failures = Vec::new();
    for (node, want_status, want_count) in [(0, "503", 0), (1, "200", 1)] {
        let url = format!("http://{}:{port}/healthz", cluster.nodes[node].ip);
        let ask = || outside.sh_output(&format!("curl -s -m 3 -w '\n%{{http_code}}' {url}"));
        let answered = |out: &std::process::Output| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let ok = text.trim_end().ends_with(want_status)
                && text.contains(&format!("\"localEndpoints\":{want_count}"))
                && text.contains("\"name\":\"lb-local\"");
            (ok, text)
        };
        // The agents open the port once the Service reaches them.
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(30), || {
            let (ok, text) = answered(&ask());
            last = text;
            ok
        });
        if !ok {
            failures.push(format!(
                "FAILED health check: {url} on {}: expected {want_status} with localEndpoints {want_count}, got `{}`",
                cluster.nodes[node].name,
                last.trim()
            ));
        }
    }
    (!failures.is_empty()).then(|| failures.join("\n"))
}

/// The `lb` Service's backend moves from node 2 to node 1 (its selector changed): node
/// 1 announces the address now, and its gratuitous ARP updates the outside host's ARP
/// cache at once (without it, the host would keep sending to node 2 until its entry
/// went stale, half a minute or more); the address is then answered by node 1's pod.
/// `Err`: the failure report.
fn check_announcement_moves(cluster: &Cluster, outside: &Netns) -> Option<String> {
    let ip = lb_ingress_ip(cluster, "lb");
    let mac = |node: usize| {
        let link = cluster.nodes[node].ns.sh("ip -o link show eth0");
        link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap_or_default().to_owned()
    };
    let (n1_mac, n2_mac) = (mac(0), mac(1));
    let cached = || outside.sh(&format!("ip neigh show {ip}"));
    if !cached().contains(&n2_mac) {
        return Some(format!(
            "FAILED announcement move: before the move, the outside host's entry for {ip} is `{}`, not node 2's {n2_mac}",
            cached().trim()
        ));
    }
    cluster.kubectl_out(&["patch", "service", "lb", "-p", r#"{"spec":{"selector":{"at":"n1"}}}"#]);
    if !wait_until(Duration::from_secs(10), || cached().contains(&n1_mac)) {
        return Some(format!(
            "FAILED announcement move: 10 s after lb's backend moved to node 1, the outside host's entry for {ip} is `{}`, not node 1's {n1_mac} (no gratuitous ARP?)",
            cached().trim()
        ));
    }
    let echo = workspace_bin("skiff-echo");
    let out = outside
        .command(echo.to_str().expect("UTF-8 path"))
        .args(["get", &format!("{ip}:80"), "/peer", "--timeout-ms", TIMEOUT_MS])
        .output()
        .expect("running the echo client");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!answer.starts_with("200 srv-n1 "))
        .then(|| format!("FAILED announcement move: {ip} after the move answered `{answer}`, expected node 1's srv-n1"))
}

/// A datapath counter of a node (`skiff-node stats`).
fn counter(cluster: &Cluster, node: usize, name: &str) -> u64 {
    let node = &cluster.nodes[node];
    let out = node
        .ns
        .command(workspace_bin("skiff-node").to_str().expect("UTF-8 path"))
        .args(["stats", "--pin-dir"])
        .arg(&node.pins.path)
        .output()
        .expect("running skiff-node stats");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = stdout.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok());
    value.unwrap_or_else(|| panic!("no counter {name} in `skiff-node stats`: {stdout}"))
}

/// `skiff-node trace` on node 1 for the `sticky` Service and the client pod (which the
/// matrix sent through it): the frontends, both backends and where they live, the
/// client's affinity entry and its conntrack entries. `Err`: the failure report.
fn check_trace(cluster: &Cluster, client_ip: &str) -> Option<String> {
    let node = &cluster.nodes[0];
    // `skiff-node trace ARGS` on node 1; its output (also printed, for people).
    let trace = |args: &[&str]| {
        let out = node
            .ns
            .command(workspace_bin("skiff-node").to_str().expect("UTF-8 path"))
            .arg("trace")
            .args(args)
            .arg("--kubeconfig")
            .arg(cluster.dir.join("control/admin.kubeconfig"))
            .arg("--pin-dir")
            .arg(&node.pins.path)
            .output()
            .expect("running skiff-node trace");
        eprintln!("skiff-node trace {} on {}:\n{}", args.join(" "), node.name, String::from_utf8_lossy(&out.stdout));
        out
    };
    let out = trace(&["default/sticky", "--from", client_ip, "--port", "80"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = [
        "Service default/sticky",
        ":80/TCP: 2 backend(s); session affinity",
        ":80/UDP: 2 backend(s); session affinity",
        "a pod on this node",
        "through the VXLAN tunnel",
    ];
    let mut missing: Vec<&str> = expected.iter().copied().filter(|e| !text.contains(e)).collect();
    // The client pod's flows went through the tc path (its affinity entry and conntrack
    // entries) or, where its cgroup lies below the node's, the socket hooks (an
    // affinity of its network namespace, no conntrack).
    let tc_path =
        text.contains(&format!("{client_ip}'s affinity: ")) && text.contains(&format!("conntrack: {client_ip}:"));
    let socket_path = text.contains("socket-level affinity of network namespace")
        && text.contains(&format!("conntrack: no flow from {client_ip}"));
    if !tc_path && !socket_path {
        missing.push("the client's affinity and conntrack entries (tc), or its namespace's affinity and no conntrack (socket LB)");
    }
    // A node port picks by Maglev (the default there), over the one backend of np-n2.
    let node_port = trace(&["default/np-n2", "--node-ip", &node.ip]);
    let node_port_text = String::from_utf8_lossy(&node_port.stdout);
    let maglev = format!("{}:", node.ip);
    if !node_port_text.lines().any(|l| l.contains(&maglev) && l.contains("1021-entry Maglev table")) {
        missing.push("a node port frontend with a 1021-entry Maglev table");
    }
    (!out.status.success() || !missing.is_empty()).then(|| {
        format!(
            "FAILED skiff-node trace: missing {missing:?} ({}):\n{}{}",
            out.status,
            indent(&text),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A port node 1's host and the outside client both use as their source port, inside
/// Linux's default ephemeral range, where both would pick ports on their own.
const SHARED_SOURCE_PORT: &str = "45678";

/// A NodePort flow to another node's backend gets source NAT with the client's own port
/// where it can; node 1's host, talking to the same backend from the same port, must
/// keep its answers. Both flows' replies come through the tunnel to node 1: if the two
/// shared a source address, the NodePort flow's conntrack entry would take the host's
/// replies and send them to the outside client. In a full run this happened by chance
/// (a port picked by both), so this sets it up on purpose. `Err`: the failure report.
fn check_nodeport_snat_spares_node_connections(cluster: &Cluster, outside: &Netns) -> Option<String> {
    let echo = workspace_bin("skiff-echo");
    let echo = echo.to_str().expect("UTF-8 path");
    let node_port = format!("{}:{}", cluster.nodes[0].ip, node_port(cluster, "np-n2", "udp"));
    let backend = format!("{}:8080", cluster.kubectl_out(&["get", "pod", "srv-n2", "-o", "jsonpath={.status.podIP}"]));
    let args = |target: &str| {
        ["udp", target, "--count", "3", "--timeout-ms", TIMEOUT_MS, "--source-port", SHARED_SOURCE_PORT]
            .map(str::to_owned)
    };
    let from_outside = outside.command(echo).args(args(&node_port)).output().expect("running the echo client");
    let from_host = cluster.nodes[0].host_sh(&format!("{echo} {}", args(&backend).join(" ")));
    let mut failures = Vec::new();
    for (who, target, out) in [("outside", &node_port, from_outside), ("node 1's host", &backend, from_host)] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let replies = Replies::parse(&stdout);
        if !(replies.finished && replies.errors.is_empty() && replies.names() == ["srv-n2"]) {
            failures.push(format!(
                "from {who} to {target} (source port {SHARED_SOURCE_PORT}): expected 3 answers from srv-n2\n{}",
                indent(&stdout)
            ));
        }
    }
    (!failures.is_empty()).then(|| format!("FAILED NodePort source NAT check: {}", failures.join("; ")))
}

/// Source ports the client pod uses first for a Service flow through the tc programs,
/// then for one the socket-level load balancer sends straight to the same backend; one
/// per backend (local, remote). Inside Linux's default ephemeral range, where the
/// kernel picks ports on its own.
const REUSED_SOURCE_PORTS: [&str; 2] = ["45679", "45680"];

/// The client pod's UDP port that carried a Service flow translated by the tc programs
/// (the test process in the pod's network namespace, outside its cgroup), then, its
/// socket closed, carries a flow of the pod's own to the same Service, which the socket
/// LB sends straight to the backend: the second flow's answers must reach it. Both
/// flows' replies come from the backend to the same address and port, and until the
/// first flow's conntrack entry times out, its reverse NAT would rewrite the second
/// one's replies to come from the ClusterIP, which the second socket (connected to the
/// backend) drops. The matrix ran into this by chance (a pod's request timing out while
/// the tc cells ran), so this sets it up on purpose, with the backend on the client's
/// node and on the other. `Err`: the failure report.
fn check_udp_port_reused_by_a_direct_flow(cluster: &Cluster) -> Option<String> {
    let echo = workspace_bin("skiff-echo");
    let echo = echo.to_str().expect("UTF-8 path");
    let netns = pod_netns(&cluster.kubectl_out(&["get", "pod", "client", "-o", "jsonpath={.status.podIP}"]));
    let mut failures = Vec::new();
    let superseded = counter(cluster, 0, "ct_superseded");
    for ((service, backend), port) in [("on-n1", "srv-n1"), ("on-n2", "srv-n2")].into_iter().zip(REUSED_SOURCE_PORTS) {
        let target = format!("{}:80", cluster_ip(cluster, service));
        let client = ["udp", &target, "--count", "3", "--timeout-ms", TIMEOUT_MS, "--source-port", port];
        let through_tc = Command::new("nsenter").arg(format!("--net={netns}")).arg(echo).args(client).output();
        let through_tc = String::from_utf8_lossy(&through_tc.expect("running the echo client").stdout).into_owned();
        let from_pod = cluster.kubectl_out(&[["exec", "client", "--", "/skiff-echo"].as_slice(), &client].concat());
        for (how, stdout) in [("through the tc programs", through_tc), ("from the pod (socket LB)", from_pod)] {
            let replies = Replies::parse(&stdout);
            if !(replies.finished && replies.errors.is_empty() && replies.names() == [backend]) {
                failures.push(format!(
                    "{how} to {target} (source port {port}): expected 3 answers from {backend}\n{}",
                    indent(&stdout)
                ));
            }
        }
    }
    // Each pod flow's first datagram removed its Service flow's entries on node 1, where
    // the client's packets were translated.
    let superseded_after = counter(cluster, 0, "ct_superseded");
    if superseded_after < superseded + 2 {
        failures.push(format!("node 1's ct_superseded {superseded} → {superseded_after} (expected +2)"));
    }
    (!failures.is_empty()).then(|| format!("FAILED UDP port reuse check: {}", failures.join("; ")))
}

/// Datagrams from an unconnected UDP socket in node 1's host namespace to a ClusterIP
/// (the socket LB's `sendmsg` and `recvmsg` hooks): answered, and from the ClusterIP as
/// the application sees it. `Err`: the failure report.
fn check_socket_lb_unconnected_udp(cluster: &Cluster) -> Option<String> {
    let target = format!("{}:80", cluster_ip(cluster, "on-n2"));
    let echo = workspace_bin("skiff-echo");
    let line = format!("{} udp-sendto {target} --count 3 --timeout-ms {TIMEOUT_MS}", echo.display());
    let out = cluster.nodes[0].host_sh(&line);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let replies = Replies::parse(&stdout);
    let fine = replies.finished && replies.errors.is_empty() && replies.names() == ["srv-n2"];
    (!fine).then(|| {
        format!("FAILED socket LB check: unconnected UDP from node 1's host to {target}:\n{}", indent(&stdout))
    })
}

/// Connections from node 1's host namespace to a ClusterIP go to a backend at
/// `connect()`: they make no conntrack entry. Run alone, after the matrix, so that no
/// other flow creates entries on node 1 meanwhile. `Err`: the failure report.
fn check_socket_lb_skips_conntrack(cluster: &Cluster, from_pod: bool) -> Option<String> {
    const CONNECTIONS: u64 = 5;
    let (ct_before, sock_before) = (counter(cluster, 0, "ct_new"), counter(cluster, 0, "sock_translated"));
    let target = format!("{}:80", cluster_ip(cluster, "spread"));
    let (from, stdout) = if from_pod {
        let count = CONNECTIONS.to_string();
        let args =
            ["exec", "client", "--", "/skiff-echo", "tcp", &target, "--count", &count, "--timeout-ms", TIMEOUT_MS];
        ("the client pod on node 1", cluster.kubectl_out(&args))
    } else {
        let echo = workspace_bin("skiff-echo");
        let line = format!("{} tcp {target} --count {CONNECTIONS} --timeout-ms {TIMEOUT_MS}", echo.display());
        ("node 1's host", String::from_utf8_lossy(&cluster.nodes[0].host_sh(&line).stdout).into_owned())
    };
    let replies = Replies::parse(&stdout);
    let (ct_after, sock_after) = (counter(cluster, 0, "ct_new"), counter(cluster, 0, "sock_translated"));
    let fine =
        replies.answers.len() as u64 == CONNECTIONS && ct_after == ct_before && sock_after >= sock_before + CONNECTIONS;
    (!fine).then(|| {
        format!(
            "FAILED socket LB check: {CONNECTIONS} connections from {from} to {target}: {} answered; ct_new {ct_before} → {ct_after} (expected unchanged), sock_translated {sock_before} → {sock_after} (expected +{CONNECTIONS})",
            replies.answers.len()
        )
    })
}

/// A pod's packets for another pod of its node go straight into that pod (`from_pod`
/// hands them over with `bpf_redirect_peer`), not through the node's routing: node 1's
/// `pod_delivered` grows by both directions' packets of connections from the client pod
/// to `srv-n1`. Run alone, after the matrix, so that no flow from the tunnel adds to it
/// meanwhile. `Err`: the failure report.
fn check_pod_to_pod_same_node_skips_the_node(cluster: &Cluster) -> Option<String> {
    const CONNECTIONS: u64 = 3;
    // At least a SYN, its answer and one data segment each way per connection.
    const AT_LEAST: u64 = 4 * CONNECTIONS;
    let before = counter(cluster, 0, "pod_delivered");
    let srv = cluster.kubectl_out(&["get", "pod", "srv-n1", "-o", "jsonpath={.status.podIP}"]);
    let target = format!("{srv}:8080");
    let count = CONNECTIONS.to_string();
    let args = ["exec", "client", "--", "/skiff-echo", "tcp", &target, "--count", &count, "--timeout-ms", TIMEOUT_MS];
    let replies = Replies::parse(&cluster.kubectl_out(&args));
    let after = counter(cluster, 0, "pod_delivered");
    eprintln!("same-node delivery: {CONNECTIONS} connections, node 1's pod_delivered {before} → {after}");
    let fine = replies.answers.len() as u64 == CONNECTIONS && after >= before + AT_LEAST;
    (!fine).then(|| {
        format!(
            "FAILED same-node delivery check: {CONNECTIONS} connections from the client pod to {target}: {} answered; node 1's pod_delivered {before} → {after} (expected +{AT_LEAST} at least)",
            replies.answers.len()
        )
    })
}

/// Each node is one router hop for pod traffic, as with the kernel's forwarding: a UDP
/// traceroute (`skiff-echo hops`) from the client pod on node 1 meets node 1, then node
/// 2, then `srv-n2`; toward `srv-n1`, node 1 then the pod. The programs lower the TTL
/// as they forward, and leave a packet whose TTL runs out to the node's stack, which
/// answers with ICMP time exceeded. `Some`: the failure report.
fn check_each_node_is_one_hop(cluster: &Cluster) -> Option<String> {
    let mut failures = Vec::new();
    for (server, hops) in [("srv-n2", 3), ("srv-n1", 2)] {
        let ip = cluster.kubectl_out(&["get", "pod", server, "-o", "jsonpath={.status.podIP}"]);
        let target = format!("{ip}:8080");
        let args = ["exec", "client", "--", "/skiff-echo", "hops", &target, "--timeout-ms", "1000"];
        let trace = cluster.kubectl_ok(&args).unwrap_or_else(|e| format!("{e:#}"));
        eprintln!("hops from the client pod to {server} ({ip}):\n{}", indent(&trace));
        let lines: Vec<&str> = trace.lines().collect();
        let expired = lines.iter().filter(|l| l.ends_with("time-exceeded")).count();
        let answered = lines.iter().any(|l| l.ends_with(&format!("{ip} answer {server}")));
        if lines.last() != Some(&format!("hops={hops}").as_str()) || expired != hops - 1 || !answered {
            failures.push(format!(
                "to {server} ({ip}) {hops} hops expected, {} time-exceeded first:\n{}",
                hops - 1,
                indent(&trace)
            ));
        }
    }
    (!failures.is_empty()).then(|| format!("FAILED hop check (TTL):\n{}", failures.join("")))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

#[test]
fn connectivity_matrix() {
    if !require_privileges("connectivity_matrix") {
        return;
    }
    let started = Instant::now();
    let cluster = two_node_cluster("cx");
    let (n1, n2) = (cluster.nodes[0].name.clone(), cluster.nodes[1].name.clone());
    eprintln!("cluster up after {:.1?}", started.elapsed());

    cluster.apply(&manifest(&n1, &n2)).expect("applying the matrix's pods and Services");
    let pods = ["client", "srv-n1", "srv-n2"];
    let all_ready = wait_pods_ready(&cluster, "role=client", 1, Duration::from_secs(60))
        && wait_pods_ready(&cluster, "app=srv", 2, Duration::from_secs(60));
    assert!(all_ready, "the matrix's pods did not become Ready:\n{}", cluster.logs());
    let pod_ip = |pod: &str| cluster.kubectl_out(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
    let endpoints = [
        ("on-n1", 1),
        ("on-n2", 1),
        ("spread", 2),
        ("sticky", 2),
        ("np-n2", 1),
        ("np-local", 2),
        ("ext-ip", 1),
        ("lb", 1),
        ("itp-local", 2),
        ("lb-local", 1),
        ("np-dsr", 1),
        ("ext-dsr", 1),
    ];
    assert!(
        wait_until(Duration::from_secs(30), || endpoints
            .iter()
            .all(|(svc, n)| ready_endpoints(&cluster, svc).len() == *n)),
        "the Services' EndpointSlices did not fill: {:?}",
        endpoints.map(|(svc, _)| (svc, ready_endpoints(&cluster, svc)))
    );
    eprintln!("pods ready and endpoints published after {:.1?}", started.elapsed());

    // Every address once, then every (cell, protocol) on its own thread.
    let address = |cell: &Cell, proto: &str| match cell.to {
        Target::Pod(pod) => format!("{}:8080", pod_ip(pod)),
        Target::Service(svc) => format!("{}:80", cluster_ip(&cluster, svc)),
        Target::NodePort(svc, node) => format!("{}:{}", cluster.nodes[node].ip, node_port(&cluster, svc, proto)),
        Target::External(ip) => format!("{ip}:80"),
        Target::LoadBalancer(svc) => format!("{}:80", lb_ingress_ip(&cluster, svc)),
    };
    let runs: Vec<(&Cell, &str, String)> =
        CELLS.iter().flat_map(|cell| ["tcp", "udp"].map(|proto| (cell, proto, address(cell, proto)))).collect();
    assert!(pods.iter().all(|p| !pod_ip(p).is_empty()), "a pod without an IP");
    let outside = cluster.external_host(OUTSIDE, OUTSIDE_IP);
    // The outside host routes the externalIPs address through node 1; it finds the
    // LoadBalancer address (skiff-control's pool) by ARP.
    for ip in [EXTERNAL_IP, EXTERNAL_DSR_IP] {
        outside.sh(&format!("ip route add {ip}/32 via {}", cluster.nodes[0].ip));
    }
    // Every agent has programmed every Service with its backends (on a slow machine one
    // may lag the API by seconds, and a frontend without backends refuses at once), and
    // the LoadBalancer address, once its status reaches it: node 2 answers ARP for it.
    let mut programmed: Vec<String> = endpoints
        .iter()
        .flat_map(|(svc, n)| {
            // internalTrafficPolicy Local: each node holds its own backend only.
            let n = if *svc == "itp-local" { 1 } else { *n };
            let ip = cluster_ip(&cluster, svc);
            ["TCP", "UDP"].map(|proto| format!("service {ip}:80/{proto} slot 0 count={n} "))
        })
        .collect();
    programmed.push(format!("service {}:80/TCP slot 0 ", lb_ingress_ip(&cluster, "lb")));
    let missing = |node: &ClusterNode| {
        let dump = node.datapath_dump().unwrap_or_default();
        programmed.iter().filter(|line| !dump.contains(line.as_str())).cloned().collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || cluster.nodes.iter().all(|n| missing(n).is_empty())),
        "the agents did not program every Service: missing {:?}\n{}",
        cluster.nodes.iter().map(|n| (n.name.clone(), missing(n))).collect::<Vec<_>>(),
        datapath_state(&cluster)
    );
    eprintln!("every Service programmed on every node after {:.1?}", started.elapsed());
    let mut failures: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = runs
            .iter()
            .map(|(cell, proto, address)| s.spawn(|| run_cell(&cluster, &outside, cell, proto, address)))
            .collect();
        runs.into_iter().filter_map(|r| r.join().expect("a cell's thread panicked").err()).collect()
    });
    failures.extend(check_node_port_sources(&cluster, &outside));
    failures.extend(check_nodeport_snat_spares_node_connections(&cluster, &outside));
    failures.extend(check_pod_to_pod_same_node_skips_the_node(&cluster));
    failures.extend(check_each_node_is_one_hop(&cluster));
    failures.extend(check_socket_lb_skips_conntrack(&cluster, false));
    failures.extend(check_socket_lb_skips_conntrack(&cluster, true));
    failures.extend(check_socket_lb_unconnected_udp(&cluster));
    failures.extend(check_udp_port_reused_by_a_direct_flow(&cluster));
    failures.extend(check_trace(&cluster, &pod_ip("client")));
    failures.extend(check_nodeport_fast_path(&cluster));
    failures.extend(check_direct_server_return(&cluster, &outside));
    failures.extend(check_arp_answered_at_xdp(&cluster));
    failures.extend(check_health_check_node_port(&cluster, &outside));
    // Last: it moves the `lb` Service's backend.
    failures.extend(check_announcement_moves(&cluster, &outside));
    let cells = CELLS.len() * 2 + SOURCE_CHECKS.len() + 12;
    eprintln!("{} of {cells} cells passed; the whole matrix took {:.1?}", cells - failures.len(), started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {cells} connectivity cells failed:\n{}\n{}{}",
        failures.len(),
        failures.join("\n"),
        datapath_state(&cluster),
        cluster.logs()
    );
}
