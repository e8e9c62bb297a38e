//! A real containerd per simulated node, driven through the CRI: pod sandboxes run our
//! own pause image and get their network from a CNI plugin that containerd calls.
//!
//! `containerd_runs_a_pod_sandbox_with_a_reference_cni` checks the harness itself
//! (containerd in a netns, the hand-built pause image, the CRI client, teardown) with
//! Debian's reference `bridge` + `host-local` plugins, independent of skiff-cni.
//!
//! `two_nodes_pods_get_ips_from_their_pod_cidrs_via_skiff_cni` is issue test 2: two
//! netns nodes, each with its own containerd, Skiff datapath (loaded into a per-node
//! bpffs directory) and skiff-cni (conflist and binary installed with the plugin's own
//! helpers); two pods per node get addresses from their node's podCIDR, on `eth0` in
//! the pod netns; stop and remove (the double DEL) leave no veth, netns or sandbox.
//! The plugin binary is built into `target/harness` by the test (see
//! `skiff_tests::image::build_binary`).
//!
//! Privileged (root, bpffs): skipped locally without it, failed under `CI=true`.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use ipnet::{IpNet, Ipv4Net};
use skiff_tests::{
    containerd::{ContainerdNode, ContainerdOptions},
    cri::SandboxSpec,
    image,
    netns::{Netns, wait_until},
    ok, require_privileges, unique_tag,
};

/// The IPv4 addresses on `eth0` inside the network namespace at `path`.
fn eth0_addrs(netns_path: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns_path}"))
        .args(["--", "ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .expect("spawn nsenter");
    assert!(out.status.success(), "ip addr in {netns_path}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks that nothing of a dropped node is left: directory, mounts, processes.
fn assert_node_gone(dir: &Path, socket: &str) {
    assert!(!dir.exists(), "{} still exists after the node was dropped", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&*dir.to_string_lossy())).collect();
    assert!(left.is_empty(), "mounts left under {}: {left:#?}", dir.display());
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(socket) && !c.contains("cargo") && !c.contains("containerd_cri-"))
        .collect();
    assert!(procs.is_empty(), "processes left that use {socket}: {procs:#?}");
}

#[test]
fn containerd_runs_a_pod_sandbox_with_a_reference_cni() {
    if !require_privileges("containerd_runs_a_pod_sandbox_with_a_reference_cni") {
        return;
    }
    let started = Instant::now();
    let pause = ok("building the pause image", image::pause_image());
    let tag = unique_tag("ctd");
    let ns = Netns::new(&format!("sk{tag}"));
    let echo = ok("building the echo image", image::echo_image());
    let opts = ContainerdOptions { images: vec![pause, echo], ..ContainerdOptions::default() };
    let mut node = ok("starting containerd", ContainerdNode::start(&tag, &ns.path(), &opts));
    let (dir, socket) = (node.dir.clone(), node.socket.to_string_lossy().into_owned());

    ok("installing bridge", node.install_system_cni_plugin("bridge"));
    ok("installing host-local", node.install_system_cni_plugin("host-local"));
    let subnet = Ipv4Net::new(Ipv4Addr::new(10, 244, 99, 0), 24).expect("subnet");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ref",
        "plugins": [{
            "type": "bridge",
            "bridge": "skbr0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet.to_string() }]],
                "dataDir": node.cni_data_dir.join("host-local"),
            },
        }],
    });
    ok("writing the conflist", node.write_cni_config("10-ref.conflist", &conflist.to_string()));
    ok("waiting for NetworkReady", node.wait_network_ready(Duration::from_secs(10)));

    let mut cri = ok("connecting to the CRI", node.cri());
    let version = ok("Version", cri.version());
    assert_eq!(version.runtime_name, "containerd");
    let images = ok("ListImages", cri.list_image_tags());
    for name in [image::PAUSE_IMAGE, image::ECHO_IMAGE] {
        assert!(images.iter().any(|t| t == name), "CRI does not list {name}: {images:?}");
    }

    let id = ok("RunPodSandbox", cri.run_pod_sandbox(&SandboxSpec::new("ref-pod", "default", &format!("uid-{tag}"))));
    assert!(
        ok("PodSandboxStatus", cri.is_ready(&id)),
        "sandbox {id} is not READY; containerd log:\n{}",
        node.log_tail()
    );
    let ip = ok("PodSandboxStatus", cri.pod_ip(&id)).unwrap_or_else(|| panic!("sandbox {id} has no IP"));
    assert!(IpNet::from(subnet).contains(&ip), "sandbox IP {ip} is outside {subnet}");
    let netns_path = ok("netns path", cri.pod_netns_path(&id));
    let addrs = eth0_addrs(&netns_path);
    assert!(addrs.contains(&format!("inet {ip}/24")), "eth0 in {netns_path} lacks {ip}: {addrs}");
    // The sandbox runs our pause binary. Its process may still be `runc init` for a
    // moment after the sandbox is READY: runc's start only lets it go on to exec.
    let pid = ok("sandbox pid", cri.sandbox_pid(&id)).unwrap_or_else(|| panic!("sandbox {id} reports no pid"));
    let cmdline = || std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    wait_until(Duration::from_secs(5), || cmdline() == b"/pause\0");
    let cmdline = cmdline();
    assert_eq!(cmdline, b"/pause\0", "sandbox {id} runs {:?}, not /pause", String::from_utf8_lossy(&cmdline));
    let listed = ok("ListPodSandbox", cri.list_pod_sandboxes());
    assert_eq!(listed.len(), 1, "{listed:?}");

    ok("StopPodSandbox", cri.stop_pod_sandbox(&id));
    assert!(!Path::new(&netns_path).exists(), "pod netns {netns_path} is still there after StopPodSandbox");
    ok("RemovePodSandbox", cri.remove_pod_sandbox(&id));
    assert!(ok("ListPodSandbox", cri.list_pod_sandboxes()).is_empty());

    drop(cri);
    node.shutdown();
    drop(node);
    assert_node_gone(&dir, &socket);
    eprintln!("reference CNI sandbox test took {:?}", started.elapsed());
}

/// One simulated node for the skiff-cni test. Field order is drop order: containerd
/// (which stops its sandboxes, so skiff-cni DEL runs while the datapath exists), then
/// the namespace, the datapath and its pins, the IPAM directory.
struct SkiffNode {
    containerd: ContainerdNode,
    ns: Netns,
    _datapath: skiff_node::datapath::Datapath,
    _pins: skiff_tests::PinDir,
    cidr: Ipv4Net,
}

impl SkiffNode {
    fn start(index: u8, pause: &Path, plugin: &Path) -> Self {
        let tag = unique_tag("skc");
        let ns = Netns::new(&format!("sk{tag}"));
        let pins = skiff_tests::PinDir::new(&tag);
        let datapath = skiff_node::datapath::Datapath::load(&pins.path, skiff_node::datapath::MapSizes::default())
            .unwrap_or_else(|e| panic!("loading the datapath into {}: {e}", pins.path.display()));
        let opts = ContainerdOptions { images: vec![pause.to_path_buf()], ..ContainerdOptions::default() };
        let containerd = ok("starting containerd", ContainerdNode::start(&tag, &ns.path(), &opts));
        let cidr = Ipv4Net::new(Ipv4Addr::new(10, 244, index, 0), 24).expect("podCIDR");
        let cfg = skiff_cni::NodeNetConfig {
            pod_cidr: cidr,
            mtu: 1450,
            bpffs_dir: pins.path.clone(),
            data_dir: containerd.cni_data_dir.join("skiff"),
        };
        skiff_cni::install_binary(plugin, &containerd.cni_bin_dir).expect("installing skiff-cni");
        skiff_cni::write_conflist(&containerd.cni_conf_dir, &cfg).expect("writing the skiff conflist");
        ok("waiting for NetworkReady", containerd.wait_network_ready(Duration::from_secs(10)));
        Self { containerd, ns, _datapath: datapath, _pins: pins, cidr }
    }

    fn host_veths(&self) -> String {
        self.ns.sh("ip -o link show type veth")
    }
}

#[test]
fn two_nodes_pods_get_ips_from_their_pod_cidrs_via_skiff_cni() {
    if !require_privileges("two_nodes_pods_get_ips_from_their_pod_cidrs_via_skiff_cni") {
        return;
    }
    let started = Instant::now();
    let pause = ok("building the pause image", image::pause_image());
    let plugin = ok("building skiff-cni", image::build_binary("skiff-cni", "skiff-cni"));
    let nodes: Vec<SkiffNode> = (1..=2).map(|i| SkiffNode::start(i, &pause, &plugin)).collect();

    // Two pods per node; every IP in its node's podCIDR, on the pod's eth0, all distinct.
    let mut pods = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let mut cri = ok("connecting to the CRI", node.containerd.cri());
        for p in 0..2 {
            let name = format!("pod-{n}-{p}");
            let spec = SandboxSpec::new(&name, "default", &format!("uid-{n}-{p}-{}", std::process::id()));
            let id = cri.run_pod_sandbox(&spec).unwrap_or_else(|e| {
                panic!("RunPodSandbox {name} on node {n}: {e:#}\ncontainerd log:\n{}", node.containerd.log_tail())
            });
            assert!(ok("PodSandboxStatus", cri.is_ready(&id)), "sandbox {name} is not READY");
            let ip = ok("PodSandboxStatus", cri.pod_ip(&id)).unwrap_or_else(|| panic!("sandbox {name} has no IP"));
            assert!(IpNet::from(node.cidr).contains(&ip), "{name} on node {n} got {ip}, outside {}", node.cidr);
            let netns_path = ok("netns path", cri.pod_netns_path(&id));
            let addrs = eth0_addrs(&netns_path);
            assert!(addrs.contains(&format!("inet {ip}/")), "eth0 of {name} ({netns_path}) lacks {ip}: {addrs}");
            pods.push((n, id, ip, netns_path));
        }
    }
    let mut ips: Vec<IpAddr> = pods.iter().map(|p| p.2).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), pods.len(), "pod IPs are not unique: {pods:?}");
    for node in &nodes {
        assert_eq!(node.host_veths().lines().count(), 2, "expected one host veth per pod:\n{}", node.host_veths());
    }

    // Stop (DEL with the netns) then remove (DEL again without it): everything goes.
    for (n, id, _, netns_path) in &pods {
        let mut cri = ok("connecting to the CRI", nodes[*n].containerd.cri());
        ok("StopPodSandbox", cri.stop_pod_sandbox(id));
        assert!(!Path::new(netns_path).exists(), "pod netns {netns_path} is still there after StopPodSandbox");
        ok("RemovePodSandbox", cri.remove_pod_sandbox(id));
    }
    for (n, node) in nodes.iter().enumerate() {
        let mut cri = ok("connecting to the CRI", node.containerd.cri());
        assert!(ok("ListPodSandbox", cri.list_pod_sandboxes()).is_empty(), "node {n} still lists sandboxes");
        assert_eq!(node.host_veths(), "", "node {n} still has pod veths after the sandboxes were removed");
    }
    // Addresses are free again: a new pod on node 1 gets one from the same range.
    {
        let mut cri = ok("connecting to the CRI", nodes[0].containerd.cri());
        let id = ok("RunPodSandbox again", cri.run_pod_sandbox(&SandboxSpec::new("again", "default", "uid-again")));
        let ip = ok("PodSandboxStatus", cri.pod_ip(&id)).expect("IP");
        assert!(IpNet::from(nodes[0].cidr).contains(&ip), "{ip}");
        ok("StopPodSandbox", cri.stop_pod_sandbox(&id));
        ok("RemovePodSandbox", cri.remove_pod_sandbox(&id));
    }

    let dirs: Vec<(std::path::PathBuf, String)> =
        nodes.iter().map(|n| (n.containerd.dir.clone(), n.containerd.socket.to_string_lossy().into_owned())).collect();
    drop(nodes);
    for (dir, socket) in dirs {
        assert_node_gone(&dir, &socket);
    }
    eprintln!("skiff-cni two-node sandbox test took {:?}", started.elapsed());
}
