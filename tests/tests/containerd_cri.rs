//! A real containerd per simulated node, driven through the CRI: pod sandboxes run our
//! own pause image and get their network from a CNI plugin that containerd calls.
//!
//! `containerd_runs_a_pod_sandbox_with_a_reference_cni` checks the harness itself
//! (containerd in a netns, the hand-built pause image, the CRI client, teardown) with
//! Debian's reference `bridge` + `host-local` plugins, independent of skiff-cni.
//!
//! Privileged (root, bpffs): skipped locally without it, failed under `CI=true`.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use skiff_tests::{
    containerd::{ContainerdNode, ContainerdOptions},
    cri::SandboxSpec,
    image,
    netns::Netns,
    require_privileges, unique_tag,
};

fn ok<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

fn in_subnet(ip: IpAddr, net: Ipv4Addr, prefix: u32) -> bool {
    let IpAddr::V4(ip) = ip else { return false };
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

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
    let opts = ContainerdOptions { images: vec![pause], ..ContainerdOptions::default() };
    let mut node = ok("starting containerd", ContainerdNode::start(&tag, &ns.path(), &opts));
    let (dir, socket) = (node.dir.clone(), node.socket.to_string_lossy().into_owned());

    ok("installing bridge", node.install_system_cni_plugin("bridge"));
    ok("installing host-local", node.install_system_cni_plugin("host-local"));
    let subnet = Ipv4Addr::new(10, 244, 99, 0);
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
                "ranges": [[{ "subnet": format!("{subnet}/24") }]],
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
    assert!(images.iter().any(|t| t == image::PAUSE_IMAGE), "CRI does not list {}: {images:?}", image::PAUSE_IMAGE);

    let id = ok("RunPodSandbox", cri.run_pod_sandbox(&SandboxSpec::new("ref-pod", "default", &format!("uid-{tag}"))));
    assert!(ok("PodSandboxStatus", cri.is_ready(&id)), "sandbox {id} is not READY; containerd log:\n{}", node.log_tail());
    let ip = ok("PodSandboxStatus", cri.pod_ip(&id)).unwrap_or_else(|| panic!("sandbox {id} has no IP"));
    assert!(in_subnet(ip, subnet, 24), "sandbox IP {ip} is outside {subnet}/24");
    let netns_path = ok("netns path", cri.pod_netns_path(&id));
    let addrs = eth0_addrs(&netns_path);
    assert!(addrs.contains(&format!("inet {ip}/24")), "eth0 in {netns_path} lacks {ip}: {addrs}");
    // The pause process is ours: the sandbox's only process runs /pause.
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
