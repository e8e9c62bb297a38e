//! skiff-cni under a real containerd (the `skiff-tests` harness): the node agent's
//! install steps (`install_binary`, `write_conflist`), then pod sandboxes run through
//! the CRI, so containerd itself calls ADD, and DEL twice (StopPodSandbox with the
//! netns, RemovePodSandbox without).
//!
//! Privileged (root, bpffs): skipped locally without it, failed under `CI=true`.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use skiff_cni::{NodeNetConfig, ipam::Store, plugin::host_veth_name};
use skiff_datapath::{Pins, endpoints::EndpointsMap, netlink::in_netns};
use skiff_node::datapath::{Datapath, MapSizes};
use skiff_tests::{
    PinDir,
    containerd::{ContainerdNode, ContainerdOptions},
    cri::SandboxSpec,
    image,
    netns::Netns,
    ok, require_privileges, unique_tag,
};

fn endpoints(pins: &Path) -> usize {
    let map = EndpointsMap::open(&Pins::new(pins)).expect("open the endpoints map");
    map.entries().expect("list the endpoints map").len()
}

fn in_ns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    in_netns(&ns, || Ok(f())).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn containerd_runs_pod_sandboxes_on_skiff_cni() {
    if !require_privileges("containerd_runs_pod_sandboxes_on_skiff_cni") {
        return;
    }
    let pause = ok("building the pause image", image::pause_image());
    let tag = unique_tag("ccni");
    let ns = Netns::new(&format!("sk{tag}"));
    ns.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 && \
         ip addr add 10.244.7.1/32 dev lo");
    let pins = PinDir::new(&tag);
    let _datapath =
        Datapath::load(&pins.path, MapSizes::default()).unwrap_or_else(|e| panic!("loading the datapath: {e}"));
    let opts = ContainerdOptions { images: vec![pause], ..ContainerdOptions::default() };
    let mut node = ok("starting containerd", ContainerdNode::start(&tag, &ns.path(), &opts));

    // What the node agent does for its node.
    let cfg = NodeNetConfig {
        pod_cidr: "10.244.7.0/24".parse().unwrap(),
        mtu: 1450,
        bpffs_dir: pins.path.clone(),
        data_dir: node.cni_data_dir.join("skiff"),
    };
    skiff_cni::install_binary(Path::new(env!("CARGO_BIN_EXE_skiff-cni")), &node.cni_bin_dir).unwrap();
    skiff_cni::write_conflist(&node.cni_conf_dir, &cfg).unwrap();
    ok("waiting for NetworkReady", node.wait_network_ready(Duration::from_secs(10)));

    let mut cri = ok("connecting to the CRI", node.cri());
    let mut pods = Vec::new();
    for name in ["web-a", "web-b"] {
        let id =
            ok("RunPodSandbox", cri.run_pod_sandbox(&SandboxSpec::new(name, "default", &format!("uid-{tag}-{name}"))));
        assert!(
            ok("PodSandboxStatus", cri.is_ready(&id)),
            "sandbox {id} is not READY; containerd log:\n{}",
            node.log_tail()
        );
        let ip = match ok("PodSandboxStatus", cri.pod_ip(&id)) {
            Some(IpAddr::V4(ip)) => ip,
            other => panic!("sandbox {id} has IP {other:?}; containerd log:\n{}", node.log_tail()),
        };
        assert!(cfg.pod_cidr.contains(&ip), "{ip} is outside {}", cfg.pod_cidr);
        let netns = ok("netns path", cri.pod_netns_path(&id));
        let eth0 = ns.sh(&format!("nsenter --net={netns} ip -4 -o addr show dev eth0"));
        assert!(eth0.contains(&format!("{ip}/32")), "{eth0}");
        assert!(ns.sh_output(&format!("ip link show dev {}", host_veth_name(&id, "eth0"))).status.success());
        pods.push((id, ip, netns));
    }
    assert_eq!(endpoints(&pins.path), 2);

    // Pod to pod over TCP, through the node.
    let (ip_a, ip_b) = (pods[0].1, pods[1].1);
    let listener = in_ns(&pods[1].2, || TcpListener::bind((ip_b, 8080)).expect("bind in pod b"));
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(b"hi").unwrap();
        peer.ip()
    });
    let greeting = in_ns(&pods[0].2, || {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((ip_b, 8080)), Duration::from_secs(5)).expect("connect");
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&greeting, b"hi");
    assert_eq!(server.join().unwrap(), IpAddr::V4(ip_a));

    // Teardown as the kubelet does it: DEL from StopPodSandbox, again from Remove.
    for (id, ip, _) in &pods {
        ok("StopPodSandbox", cri.stop_pod_sandbox(id));
        assert!(!ns.sh_output(&format!("ip link show dev {}", host_veth_name(id, "eth0"))).status.success());
        ok("RemovePodSandbox", cri.remove_pod_sandbox(id));
        assert!(Store::new(&cfg.data_dir).read().unwrap().allocations.keys().all(|held| held != ip));
    }
    assert_eq!(endpoints(&pins.path), 0);
    assert!(Store::new(&cfg.data_dir).read().unwrap().allocations.is_empty());
    assert!(ok("ListPodSandbox", cri.list_pod_sandboxes()).is_empty());

    drop(cri);
    node.shutdown();
}
