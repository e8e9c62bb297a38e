//! skiff-cni invoked exactly as containerd invokes it — `CNI_*` environment, the
//! network configuration on stdin, run in the node's network namespace — against the
//! real datapath (skiff-node's loader) and real pod network namespaces.
//!
//! Needs root and bpffs; skips without them, fails under CI=true. Every test makes its
//! own node namespace, pod namespaces, bpffs pin directory and IPAM directory, all
//! removed on drop (even when the test fails). Traffic only flows between namespaces
//! the test created.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use serde_json::{Value, json};
use skiff_cni::{ipam::Store, plugin::host_veth_name};
use skiff_datapath::{Pins, Prog, endpoints::EndpointsMap, netlink::in_netns};
use skiff_ebpf_common::Endpoint4;
use skiff_node::datapath::{Datapath, MapSizes};
use skiff_tests::{PinDir, netns::Netns, require_privileges, unique_tag};

/// Privileged tests run one at a time (2 cores, shared).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A simulated node: its network namespace (where containerd, and so the plugin, run),
/// the datapath loaded into its own pin directory, and its CNI data dir.
struct Node {
    tag: String,
    // Field order is drop order: the namespace (and with it every host veth) first,
    // then the datapath's pins, then the IPAM state.
    ns: Netns,
    _datapath: Datapath,
    pins: PinDir,
    data: TempDir,
    cidr: String,
}

impl Node {
    fn new(cidr: &str) -> Self {
        let tag = unique_tag("cni");
        let ns = Netns::new(&format!("{tag}-node"));
        // default.rp_filter=1 (Debian's default), so that the plugin's own
        // rp_filter=0 on each host veth is what the tests see.
        let gateway = {
            let net: skiff_datapath::Ipv4Net = cidr.parse().unwrap();
            net.hosts().next().unwrap()
        };
        ns.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=1 && \
             ip addr add {gateway}/32 dev lo"
        ));
        let pins = PinDir::new(&tag);
        let datapath =
            Datapath::load(&pins.path, MapSizes::default()).unwrap_or_else(|e| panic!("loading the datapath: {e}"));
        let data = TempDir(std::env::temp_dir().join(format!("skiff-cni-test-{tag}")));
        let _ = std::fs::remove_dir_all(&data.0);
        Self { tag, ns, _datapath: datapath, pins, data, cidr: cidr.to_owned() }
    }

    /// The plugin's entry of the conflist as containerd passes it on stdin.
    fn conf(&self) -> String {
        self.conf_with(|_| {})
    }

    fn conf_with(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "skiff",
            "type": "skiff-cni",
            "podCIDR": self.cidr,
            "mtu": 1400,
            "bpffsDir": self.pins.path,
            "dataDir": self.data.0,
        });
        edit(&mut conf);
        conf.to_string()
    }

    fn pod(&self, name: &str) -> Netns {
        Netns::new(&format!("cni-{}-{name}", self.tag))
    }

    fn container_id(&self, name: &str) -> String {
        format!("{}{name}0123456789abcdef", self.tag)
    }

    fn link_pin(&self, container_id: &str) -> PathBuf {
        Pins::new(&self.pins.path).link(Prog::FromPod, &host_veth_name(container_id, "eth0"))
    }

    fn has_link(&self, name: &str) -> bool {
        self.ns.sh_output(&format!("ip link show dev {name}")).status.success()
    }

    fn endpoints(&self) -> BTreeMap<Ipv4Addr, Endpoint4> {
        let map = EndpointsMap::open(&Pins::new(&self.pins.path)).expect("open the endpoints map");
        map.entries().expect("list the endpoints map")
    }

    fn endpoint(&self, ip: Ipv4Addr) -> Option<Endpoint4> {
        self.endpoints().remove(&ip)
    }

    fn ipam_holds(&self, container_id: &str) -> bool {
        Store::new(&self.data.0).read().unwrap().find(container_id, "eth0").is_some()
    }

    fn sk_links(&self) -> usize {
        self.ns
            .sh("ip -o link show")
            .lines()
            .filter(|l| l.split_whitespace().nth(1).is_some_and(|n| n.starts_with("sk")))
            .count()
    }

    /// Asserts that nothing of `container_id` is left: no host veth, no IPAM entry, no
    /// link pin, no `eth0` in its pod namespace.
    fn assert_nothing_left(&self, container_id: &str, pod: Option<&Netns>) {
        let veth = host_veth_name(container_id, "eth0");
        assert!(!self.has_link(&veth), "host veth {veth} was left behind");
        assert!(!self.ipam_holds(container_id), "IPAM entry of {container_id} was left behind");
        assert!(
            !self.link_pin(container_id).exists(),
            "link pin {} was left behind",
            self.link_pin(container_id).display()
        );
        if let Some(pod) = pod {
            assert!(!pod.sh_output("ip link show dev eth0").status.success(), "eth0 was left in {}", pod.name);
            assert!(!pod.sh("ip -4 -o addr").contains("10."), "an address was left in {}", pod.name);
        }
    }
}

/// What the plugin printed and how it exited.
#[derive(Debug)]
struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    fn success(&self) -> Value {
        assert!(self.ok, "the plugin failed: {self:?}");
        if self.stdout.trim().is_empty() { Value::Null } else { self.json() }
    }

    /// Asserts a CNI error object with `code` and a non-empty message.
    #[track_caller]
    fn error(&self, code: u64) -> Value {
        assert!(!self.ok, "the plugin succeeded, expected error code {code}: {self:?}");
        let err = self.json();
        assert_eq!(err["code"], code, "wrong error code: {self:?}");
        assert!(err["msg"].as_str().is_some_and(|m| !m.is_empty()), "no message: {self:?}");
        assert!(err["cniVersion"].is_string(), "no cniVersion: {self:?}");
        assert!(self.stderr.contains(err["msg"].as_str().unwrap()), "stderr does not explain the failure: {self:?}");
        err
    }

    fn ip(&self) -> Ipv4Addr {
        let result = self.success();
        let addr = result["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("no address in {result}"));
        addr.strip_suffix("/32").unwrap_or_else(|| panic!("{addr} is not a /32")).parse().unwrap()
    }
}

/// Runs the plugin in the node's namespace with the environment containerd 1.6 sets.
/// `netns: None` is the empty `CNI_NETNS` of containerd's second DEL.
fn cni(node: &Node, command: &str, container_id: &str, netns: Option<&Netns>, stdin: &str) -> Outcome {
    let netns = netns.map(Netns::path).unwrap_or_default();
    cni_env(node, stdin, &[("CNI_COMMAND", command), ("CNI_CONTAINERID", container_id), ("CNI_NETNS", &netns)])
}

fn cni_env(node: &Node, stdin: &str, vars: &[(&str, &str)]) -> Outcome {
    let container_id = vars.iter().find(|(k, _)| *k == "CNI_CONTAINERID").map_or("", |(_, v)| v);
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", node.ns.path()))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_skiff-cni"))
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!(
                "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{container_id};K8S_POD_INFRA_CONTAINER_ID={container_id};\
                 K8S_POD_UID=uid-{container_id};IgnoreUnknown=1"
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn nsenter skiff-cni");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `f` on a thread inside the network namespace at `path`; sockets it creates stay
/// in that namespace.
fn in_ns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    in_netns(&ns, || Ok(f())).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn add_check_del_round_trip_with_traffic_between_two_pods() {
    if !require_privileges("add_check_del_round_trip_with_traffic_between_two_pods") {
        return;
    }
    let _serial = serial();
    let node = Node::new("10.244.1.0/24");
    let (pod_a, pod_b) = (node.pod("a"), node.pod("b"));
    let (id_a, id_b) = (node.container_id("a"), node.container_id("b"));

    let add_a = cni(&node, "ADD", &id_a, Some(&pod_a), &node.conf());
    let result_a = add_a.success();
    let ip_a = add_a.ip();
    let ip_b = cni(&node, "ADD", &id_b, Some(&pod_b), &node.conf()).ip();
    assert_eq!(ip_a, Ipv4Addr::new(10, 244, 1, 2), "IPAM starts at .2");
    assert_ne!(ip_a, ip_b);

    // The result: host veth, then eth0 in the sandbox holding the /32, default route.
    let veth_a = host_veth_name(&id_a, "eth0");
    assert_eq!(result_a["cniVersion"], "1.0.0");
    assert_eq!(result_a["interfaces"][0]["name"], veth_a.as_str());
    assert_eq!(result_a["interfaces"][1]["name"], "eth0");
    assert_eq!(result_a["interfaces"][1]["sandbox"], pod_a.path().as_str());
    assert_eq!(result_a["ips"][0]["interface"], 1);
    assert_eq!(result_a["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(result_a["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}));
    let host_mac = result_a["interfaces"][0]["mac"].as_str().unwrap().to_owned();
    let pod_mac = result_a["interfaces"][1]["mac"].as_str().unwrap().to_owned();

    // Node side: veth up with the MTU, route to the pod, rp_filter off.
    let link = node.ns.sh(&format!("ip -o link show dev {veth_a}"));
    assert!(link.contains("mtu 1400") && link.contains(",UP") && link.contains(&host_mac), "{link}");
    let route = node.ns.sh(&format!("ip route show {ip_a}/32"));
    assert!(route.contains(&format!("dev {veth_a}")) && route.contains("scope link"), "{route}");
    assert_eq!(node.ns.sh(&format!("cat /proc/sys/net/ipv4/conf/{veth_a}/rp_filter")).trim(), "0");

    // Pod side: eth0 with the /32, gateway neighbour, routes.
    let eth0 = pod_a.sh("ip -o link show dev eth0");
    assert!(eth0.contains("mtu 1400") && eth0.contains(&pod_mac), "{eth0}");
    assert!(pod_a.sh("ip -4 -o addr show dev eth0").contains(&format!("{ip_a}/32")));
    let routes = pod_a.sh("ip route");
    assert!(routes.lines().any(|l| l.starts_with("default via 169.254.1.1 dev eth0")), "{routes}");
    assert!(routes.lines().any(|l| l.starts_with("169.254.1.1 dev eth0") && l.contains("scope link")), "{routes}");
    let neigh = pod_a.sh("ip neigh show 169.254.1.1 dev eth0");
    assert!(neigh.contains(&host_mac) && neigh.contains("PERMANENT"), "{neigh}");

    // Datapath: the endpoint entry and the from-pod program attached via a pinned link.
    let ifindex: u32 = link.split(':').next().unwrap().trim().parse().unwrap();
    let endpoint = node.endpoint(ip_a).expect("endpoints map entry");
    assert_eq!(endpoint.ifindex, ifindex);
    assert_eq!(skiff_cni::result::format_mac(&endpoint.host_mac), host_mac);
    assert_eq!(skiff_cni::result::format_mac(&endpoint.pod_mac), pod_mac);
    assert!(node.link_pin(&id_a).exists());
    let attached = in_ns(&node.ns.path(), || {
        aya::programs::SchedClassifier::query_tcx(&veth_a, aya::programs::TcAttachType::Ingress)
            .map(|(_, progs)| progs.len())
    });
    assert_eq!(attached.expect("query tcx"), 1, "from_pod is attached at tc ingress of {veth_a}");

    // CHECK passes for both pods, with and without prevResult.
    assert_eq!(cni(&node, "CHECK", &id_a, Some(&pod_a), &node.conf()).success(), Value::Null);
    let with_prev = node.conf_with(|c| c["prevResult"] = result_a.clone());
    cni(&node, "CHECK", &id_a, Some(&pod_a), &with_prev).success();
    cni(&node, "CHECK", &id_b, Some(&pod_b), &node.conf()).success();

    // TCP from pod a to pod b, through the node (and the from-pod program).
    let listener = in_ns(&pod_b.path(), || TcpListener::bind((ip_b, 7777)).expect("bind in pod b"));
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"pong!").unwrap();
        (peer, buf)
    });
    let reply = in_ns(&pod_a.path(), || {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((ip_b, 7777)), Duration::from_secs(5)).expect("connect a → b");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"ping!").unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        buf
    });
    let (peer, request) = server.join().unwrap();
    assert_eq!(&reply, b"pong!");
    assert_eq!(&request, b"ping!");
    assert_eq!(peer.ip(), ip_a, "pod b sees pod a's own address");

    // CHECK notices a broken pod.
    pod_a.sh("ip route del default");
    let err = cni(&node, "CHECK", &id_a, Some(&pod_a), &node.conf()).error(103);
    assert!(err["details"].as_str().unwrap().contains("default route"), "{err}");

    // DEL removes everything, as containerd calls it: with the netns, then without.
    for (id, pod) in [(&id_a, &pod_a), (&id_b, &pod_b)] {
        assert_eq!(cni(&node, "DEL", id, Some(pod), &node.conf()).success(), Value::Null);
        cni(&node, "DEL", id, None, &node.conf()).success();
        node.assert_nothing_left(id, Some(pod));
    }
    assert!(node.endpoints().is_empty(), "endpoints left: {:?}", node.endpoints());
    assert!(node.ns.sh(&format!("ip route show {ip_a}/32")).trim().is_empty());
}

#[test]
fn repeated_add_returns_the_same_result() {
    if !require_privileges("repeated_add_returns_the_same_result") {
        return;
    }
    let _serial = serial();
    let node = Node::new("10.244.1.0/24");
    let pod = node.pod("r");
    let id = node.container_id("r");
    let first = cni(&node, "ADD", &id, Some(&pod), &node.conf()).success();
    let index_before = node.ns.sh(&format!("ip -o link show dev {}", host_veth_name(&id, "eth0")));
    let second = cni(&node, "ADD", &id, Some(&pod), &node.conf()).success();
    assert_eq!(first, second);
    let index_after = node.ns.sh(&format!("ip -o link show dev {}", host_veth_name(&id, "eth0")));
    assert_eq!(index_before, index_after, "the veth was not recreated");
    assert_eq!(Store::new(&node.data.0).read().unwrap().allocations.len(), 1);
    assert_eq!(node.endpoints().len(), 1);
    // The same request in an older spec version gets the same address, in that version.
    let legacy = cni(&node, "ADD", &id, Some(&pod), &node.conf_with(|c| c["cniVersion"] = json!("0.4.0"))).success();
    assert_eq!(legacy["cniVersion"], "0.4.0");
    assert_eq!(legacy["ips"][0]["address"], first["ips"][0]["address"]);
    assert_eq!(legacy["ips"][0]["version"], "4");
    cni(&node, "DEL", &id, Some(&pod), &node.conf()).success();
    node.assert_nothing_left(&id, Some(&pod));
}

#[test]
fn fifty_concurrent_adds_get_distinct_addresses() {
    if !require_privileges("fifty_concurrent_adds_get_distinct_addresses") {
        return;
    }
    let _serial = serial();
    const PODS: usize = 50;
    let node = Node::new("10.244.1.0/24");
    let pods: Vec<Netns> = (0..PODS).map(|i| node.pod(&format!("p{i}"))).collect();
    let ids: Vec<String> = (0..PODS).map(|i| node.container_id(&format!("p{i}"))).collect();
    let conf = node.conf();

    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> =
            pods.iter().zip(&ids).map(|(pod, id)| s.spawn(|| cni(&node, "ADD", id, Some(pod), &conf))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<Ipv4Addr> = outcomes.iter().map(Outcome::ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), PODS, "every pod got its own address");
    assert_eq!(node.sk_links(), PODS);
    assert_eq!(node.endpoints().len(), PODS);
    assert_eq!(Store::new(&node.data.0).read().unwrap().allocations.len(), PODS);
    for (pod, outcome) in pods.iter().zip(&outcomes) {
        assert!(pod.sh("ip -4 -o addr show dev eth0").contains(&format!("{}/32", outcome.ip())));
    }

    let dels: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> =
            pods.iter().zip(&ids).map(|(pod, id)| s.spawn(|| cni(&node, "DEL", id, Some(pod), &conf))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for del in &dels {
        del.success();
    }
    assert_eq!(node.sk_links(), 0);
    assert!(node.endpoints().is_empty());
    assert!(Store::new(&node.data.0).read().unwrap().allocations.is_empty());
    assert_eq!(std::fs::read_dir(Pins::new(&node.pins.path).links_dir()).unwrap().count(), 0, "link pins left");
}

#[test]
fn double_del_and_del_of_unknown_container_succeed() {
    if !require_privileges("double_del_and_del_of_unknown_container_succeed") {
        return;
    }
    let _serial = serial();
    let node = Node::new("10.244.1.0/24");
    let pod = node.pod("d");
    let id = node.container_id("d");
    let ip = cni(&node, "ADD", &id, Some(&pod), &node.conf()).ip();
    cni(&node, "DEL", &id, Some(&pod), &node.conf()).success();
    cni(&node, "DEL", &id, None, &node.conf()).success();
    cni(&node, "DEL", &id, Some(&pod), &node.conf()).success();
    node.assert_nothing_left(&id, Some(&pod));
    assert_eq!(node.endpoint(ip), None);
    // DEL of a container that never had an ADD (or after the netns is gone).
    cni(&node, "DEL", &node.container_id("never"), None, &node.conf()).success();
    // The released address is not handed out again at once.
    let again = cni(&node, "ADD", &id, Some(&pod), &node.conf()).ip();
    assert_ne!(again, ip);
    cni(&node, "DEL", &id, None, &node.conf()).success();
    node.assert_nothing_left(&id, None);
}

#[test]
fn bad_input_fails_with_the_right_code_and_leaves_nothing() {
    if !require_privileges("bad_input_fails_with_the_right_code_and_leaves_nothing") {
        return;
    }
    let _serial = serial();
    let node = Node::new("10.244.1.0/24");
    let pod = node.pod("bad");
    let id = node.container_id("bad");

    // Malformed JSON: decode failure.
    let err = cni(&node, "ADD", &id, Some(&pod), "{\"cniVersion\": \"1.0.0\", ").error(6);
    assert!(err["msg"].as_str().unwrap().contains("decode"), "{err}");
    node.assert_nothing_left(&id, Some(&pod));

    // ADD without CNI_NETNS: invalid environment.
    let err = cni(&node, "ADD", &id, None, &node.conf()).error(4);
    assert!(err["msg"].as_str().unwrap().contains("CNI_NETNS"), "{err}");
    node.assert_nothing_left(&id, Some(&pod));

    // A CNI_NETNS that does not exist.
    let out = cni_env(
        &node,
        &node.conf(),
        &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", &id), ("CNI_NETNS", "/var/run/netns/skiff-cni-no-such-netns")],
    );
    out.error(4);
    node.assert_nothing_left(&id, Some(&pod));

    // An unknown cniVersion: incompatible version.
    let err = cni(&node, "ADD", &id, Some(&pod), &node.conf_with(|c| c["cniVersion"] = json!("9.9.9"))).error(1);
    assert!(err["msg"].as_str().unwrap().contains("9.9.9"), "{err}");
    node.assert_nothing_left(&id, Some(&pod));

    // A configuration that parses but is wrong: invalid network config.
    let err = cni(&node, "ADD", &id, Some(&pod), &node.conf_with(|c| c["podCIDR"] = json!("10.244.1.7/24"))).error(7);
    assert!(err["details"].as_str().unwrap().contains("host bits"), "{err}");
    node.assert_nothing_left(&id, Some(&pod));

    // Unknown command.
    cni(&node, "FROB", &id, Some(&pod), &node.conf()).error(4);

    // The datapath is not loaded (skiff-node is not running): try again later.
    let err =
        cni(&node, "ADD", &id, Some(&pod), &node.conf_with(|c| c["bpffsDir"] = json!("/sys/fs/bpf/skiff-test/none")))
            .error(11);
    assert!(err["details"].as_str().unwrap().contains("is skiff-node running?"), "{err}");
    node.assert_nothing_left(&id, Some(&pod));

    // Failure halfway through (eth0 already exists in the pod): everything undone.
    pod.sh("ip link add eth0 type veth peer name other0");
    let err = cni(&node, "ADD", &id, Some(&pod), &node.conf()).error(101);
    assert!(err["msg"].as_str().unwrap().contains("already exists"), "{err}");
    assert!(!node.has_link(&host_veth_name(&id, "eth0")));
    assert!(!node.ipam_holds(&id));
    assert!(node.endpoints().is_empty());
    pod.sh("ip link del eth0");
    node.assert_nothing_left(&id, Some(&pod));

    // VERSION works with any stdin.
    let version = cni(&node, "VERSION", "", None, "{\"cniVersion\":\"1.0.0\"}").success();
    assert_eq!(version["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"]));
}

#[test]
fn exhausted_range_fails_and_leaves_nothing() {
    if !require_privileges("exhausted_range_fails_and_leaves_nothing") {
        return;
    }
    let _serial = serial();
    // A /30 has one pod address: .0 network, .1 node, .2 pod, .3 broadcast.
    let node = Node::new("10.244.1.4/30");
    let (pod1, pod2) = (node.pod("x1"), node.pod("x2"));
    let (id1, id2) = (node.container_id("x1"), node.container_id("x2"));
    assert_eq!(cni(&node, "ADD", &id1, Some(&pod1), &node.conf()).ip(), Ipv4Addr::new(10, 244, 1, 6));
    let err = cni(&node, "ADD", &id2, Some(&pod2), &node.conf()).error(100);
    assert!(err["details"].as_str().unwrap().contains("10.244.1.4/30"), "{err}");
    node.assert_nothing_left(&id2, Some(&pod2));
    assert_eq!(node.endpoints().len(), 1);
    assert_eq!(node.sk_links(), 1);
    // Freeing the one address makes room again.
    cni(&node, "DEL", &id1, Some(&pod1), &node.conf()).success();
    assert_eq!(cni(&node, "ADD", &id2, Some(&pod2), &node.conf()).ip(), Ipv4Addr::new(10, 244, 1, 6));
    cni(&node, "DEL", &id2, Some(&pod2), &node.conf()).success();
    node.assert_nothing_left(&id1, Some(&pod1));
    node.assert_nothing_left(&id2, Some(&pod2));
}

/// The files the node agent writes: the conflist is what the plugin accepts.
#[test]
fn conflist_written_by_the_agent_is_accepted() {
    let dir = std::env::temp_dir().join(format!("skiff-cni-conflist-{}", std::process::id()));
    let _guard = TempDir(dir.clone());
    let cfg = skiff_cni::NodeNetConfig {
        pod_cidr: "10.244.3.0/24".parse().unwrap(),
        mtu: 1450,
        bpffs_dir: "/sys/fs/bpf/skiff/n3".into(),
        data_dir: "/var/lib/skiff/n3/cni".into(),
    };
    let path = skiff_cni::write_conflist(&dir.join("net.d"), &cfg).unwrap();
    let list: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(list["plugins"][0]["type"], "skiff-cni");
    skiff_cni::install_binary(Path::new(env!("CARGO_BIN_EXE_skiff-cni")), &dir.join("bin")).unwrap();
    let out = Command::new(dir.join("bin/skiff-cni")).env_clear().env("CNI_COMMAND", "VERSION").output().unwrap();
    assert!(out.status.success());
    let version: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(version["cniVersion"], "1.0.0");
}
