//! A local Skiff cluster for end-to-end tests: skiff-control and every node in network
//! namespaces of their own, joined by an underlay bridge, each node with its own
//! containerd and skiff-node (kubelet, overlay and CNI configuration from the API).
//!
//! ```text
//!   ns <tag>-ul: br0 ─┬─ ns <tag>-cp  eth0 192.168.77.2   skiff-control :6443
//!                     ├─ ns <tag>-n1  eth0 192.168.77.11  containerd, skiff-node
//!                     └─ ns <tag>-n2  eth0 192.168.77.12  …
//! ```
//! kubectl runs inside the control plane's namespace, so nothing is ever sent from the
//! root namespace. Nodes get their credentials the upstream way: each agent starts with
//! skiff-control's bootstrap kubeconfig, sends a CSR, and works as `system:node:<name>`
//! with the certificate skiff-control approves and signs.
//!
//! Everything is torn down on drop, also after a failed test: agents first, then each
//! containerd (which removes its sandboxes), then skiff-control, then the namespaces.
//!
//! `cargo xtask up` starts the same cluster with [`Cluster::start_in`] (a fixed
//! directory, optionally an etcd cluster), gives the host a route to the API server
//! ([`Cluster::expose_to_host`]) and then [`Cluster::detach`]es it: nothing is torn down,
//! and what is running is recorded in `state.json` in the cluster's directory.
//! [`teardown`] removes a detached cluster from its tag and directory alone, also when
//! `up` crashed before writing the state. The detached parts live in `detached.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::PinDir;
use crate::containerd::{ContainerdNode, ContainerdOptions};
use crate::netns::{ChildGuard, Netns, wait_until};

mod detached;
pub use detached::{DetachedState, HOST_KUBECONFIG, host_reaches_api, read_state, teardown};

/// The control plane's address on the underlay.
pub const CONTROL_PLANE_IP: &str = "192.168.77.2";
/// The LoadBalancer addresses skiff-control hands out: on the underlay, where the node
/// chosen for each answers ARP for it.
pub const LB_POOL: &str = "192.168.77.192/27";
/// kubectl 1.32, installed on every machine of this project.
pub const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

/// Node `index` (1-based)'s underlay address.
pub fn node_ip(index: usize) -> String {
    format!("192.168.77.{}", 10 + index)
}

/// One node: its namespace, containerd and agent.
#[derive(Debug)]
pub struct ClusterNode {
    bin_dir: PathBuf,
    pub name: String,
    pub ip: String,
    agent: ChildGuard,
    pub agent_log: PathBuf,
    pub containerd: ContainerdNode,
    pub root_dir: PathBuf,
    pub pod_log_dir: PathBuf,
    /// The static pod manifests the agent runs (`--pod-manifest-path`).
    pub manifest_dir: PathBuf,
    /// Where the node's local-path volumes live (`--local-path-dir`): in the node's own
    /// directory, since the nodes share this machine's filesystem.
    pub local_path_dir: PathBuf,
    pub pins: PinDir,
    services_from_api: bool,
    kubelet_only: bool,
    kubeconfig: PathBuf,
    /// skiff-control's bootstrap kubeconfig (a bootstrap token): the agent asks for its
    /// certificate with it.
    bootstrap_kubeconfig: PathBuf,
    pub ns: Netns,
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    bin_dir: PathBuf,
    pub tag: String,
    pub nodes: Vec<ClusterNode>,
    control: ChildGuard,
    /// The etcd members skiff-control stores in (none: its embedded store).
    etcd: Vec<ChildGuard>,
    etcd_servers: Vec<String>,
    /// The root namespace's end of the veth to the control plane, once exposed.
    host_link: Option<String>,
    pub control_log: PathBuf,
    pub dir: PathBuf,
    pub cp_ns: Netns,
    pub underlay: Netns,
}

/// Where the cluster's binaries come from.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// The directory holding skiff-control, skiff-node and skiff-cni (default: beside
    /// the running test binary).
    pub bin_dir: Option<PathBuf>,
}

/// Where a cluster lives and what it stores in: the tests take the defaults,
/// `cargo xtask up` names a fixed directory and may ask for etcd.
#[derive(Debug, Clone, Default)]
pub struct ClusterSetup {
    /// The cluster's directory (default `$TMPDIR/skiff-cluster-<tag>`); emptied first.
    pub dir: Option<PathBuf>,
    /// Members of an etcd cluster to start in the control plane's namespace, with
    /// skiff-control on it; 0 keeps skiff-control's embedded store.
    pub etcd_members: usize,
    /// Called with one line per step as the cluster starts (nothing by default).
    pub progress: Option<fn(&str)>,
    /// Run each agent's service proxy on the API's Services and EndpointSlices
    /// (`--services-from-api`), so that ClusterIPs work in pods.
    pub services_from_api: bool,
    /// Start each agent as the kubelet alone (no overlay, proxy or CNI configuration):
    /// the datapath comes from the DaemonSet of deploy/skiff-node.yaml, so the nodes are
    /// only registered, not Ready, when [`Cluster::start_in`] returns.
    pub kubelet_only: bool,
}

impl Cluster {
    /// Starts skiff-control and `nodes` nodes with the given image tarballs imported,
    /// and waits until every node is Ready.
    pub fn start(tag: &str, nodes: usize, images: &[PathBuf]) -> Result<Self> {
        Self::start_with(tag, nodes, images, &ClusterOptions::default())
    }

    /// [`Self::start`] with options.
    pub fn start_with(tag: &str, nodes: usize, images: &[PathBuf], opts: &ClusterOptions) -> Result<Self> {
        Self::start_in(tag, nodes, images, opts, &ClusterSetup::default())
    }

    /// [`Self::start_with`] in a given directory and store, reporting progress.
    pub fn start_in(
        tag: &str,
        nodes: usize,
        images: &[PathBuf],
        opts: &ClusterOptions,
        setup: &ClusterSetup,
    ) -> Result<Self> {
        let bin_dir = opts.bin_dir.clone().unwrap_or_else(crate::target_bin_dir);
        let dir = setup.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("skiff-cluster-{tag}")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("control")).context("creating the cluster directory")?;
        let progress = setup.progress.unwrap_or(|_| {});
        let step = std::time::Instant::now();
        let underlay = Netns::new(&format!("{tag}-ul"));
        crate::topology::add_wire_bridge(&underlay);
        let cp_ns = Netns::new(&format!("{tag}-cp"));
        attach(&underlay, &cp_ns, "ulcp", CONTROL_PLANE_IP);
        progress(&format!("namespaces {tag}-ul (underlay bridge) and {tag}-cp ({CONTROL_PLANE_IP}) {}", took(step)));

        let names: Vec<String> = (1..=nodes).map(|i| format!("{tag}-n{i}")).collect();
        let control_log = dir.join("control.log");
        let mut cluster = Self {
            bin_dir: bin_dir.clone(),
            tag: tag.to_owned(),
            nodes: Vec::new(),
            control: ChildGuard(None),
            etcd: Vec::new(),
            etcd_servers: Vec::new(),
            host_link: None,
            control_log,
            dir,
            cp_ns,
            underlay,
        };
        if setup.etcd_members > 0 {
            let step = std::time::Instant::now();
            cluster.start_etcd(setup.etcd_members)?;
            progress(&format!("etcd: {} members healthy {}", setup.etcd_members, took(step)));
        }
        let step = std::time::Instant::now();
        cluster.start_control()?;
        progress(&format!("skiff-control answers /readyz {}", took(step)));

        for (i, name) in names.iter().enumerate() {
            let index = i + 1;
            let step = std::time::Instant::now();
            let ns = Netns::new(name);
            attach(&cluster.underlay, &ns, &format!("ul{index}"), &node_ip(index));
            ns.sh("sysctl -qw net.ipv4.ip_forward=1");
            let opts = ContainerdOptions { images: images.to_vec(), ..Default::default() };
            let containerd = ContainerdNode::start(name, &ns.path(), &opts)
                .with_context(|| format!("starting containerd for {name}"))?;
            let node_dir = cluster.dir.join(name);
            std::fs::create_dir_all(node_dir.join("manifests"))?;
            // Written by the agent itself from the certificate skiff-control signs for it.
            let kubeconfig = node_dir.join("kubeconfig");
            let mut node = ClusterNode {
                bin_dir: bin_dir.clone(),
                name: name.clone(),
                ip: node_ip(index),
                agent: ChildGuard(None),
                agent_log: node_dir.join("agent.log"),
                root_dir: node_dir.join("kubelet"),
                pod_log_dir: node_dir.join("pods"),
                manifest_dir: node_dir.join("manifests"),
                local_path_dir: node_dir.join("storage"),
                pins: PinDir::new(name),
                services_from_api: setup.services_from_api,
                kubelet_only: setup.kubelet_only,
                kubeconfig,
                bootstrap_kubeconfig: cluster.dir.join("control/bootstrap.kubeconfig"),
                containerd,
                ns,
            };
            node.start_agent()?;
            progress(&format!(
                "node {name} ({}): containerd with {} images, skiff-node started {}",
                node.ip,
                images.len(),
                took(step)
            ));
            cluster.nodes.push(node);
        }
        let step = std::time::Instant::now();
        if setup.kubelet_only {
            cluster.wait_nodes(Duration::from_secs(60), false)?;
            progress(&format!("every node is registered {}", took(step)));
        } else {
            cluster.wait_nodes(Duration::from_secs(60), true)?;
            progress(&format!("every node is Ready {}", took(step)));
        }
        Ok(cluster)
    }

    /// Waits until every node is registered, and Ready too when `ready`.
    pub fn wait_nodes(&self, timeout: Duration, ready: bool) -> Result<()> {
        let what = if ready { "become Ready" } else { "register" };
        for node in &self.nodes {
            let done = || {
                let jsonpath = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
                let status = self.kubectl(&["get", "node", &node.name, "-o", jsonpath]);
                status.status.success() && (!ready || String::from_utf8_lossy(&status.stdout).trim() == "True")
            };
            if !wait_until(timeout, done) {
                bail!("node {} did not {what} in {} s; its log:\n{}", node.name, timeout.as_secs(), node.log_tail());
            }
        }
        Ok(())
    }

    fn start_control(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.control_log)?;
        let child = self
            .cp_ns
            .command(binary(&self.bin_dir, "skiff-control")?.to_str().context("path")?)
            .arg("--data-dir")
            .arg(self.dir.join("control"))
            .args(["--bind-address", "0.0.0.0", "--advertise-address", CONTROL_PLANE_IP])
            .args(["--service-lb-pool", LB_POOL])
            .args(self.etcd_args())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting skiff-control")?;
        self.control = ChildGuard::new(child);
        let kubeconfig = self.dir.join("control/admin.kubeconfig");
        let up = wait_until(Duration::from_secs(30), || {
            kubeconfig.exists() && self.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        ensure!(up, "skiff-control did not come up in 30 s:\n{}", tail(&self.control_log));
        Ok(())
    }

    /// Kills skiff-control and starts it again on the same data.
    pub fn restart_control(&mut self) -> Result<()> {
        self.control.kill();
        std::thread::sleep(Duration::from_secs(1));
        self.start_control()
    }

    /// A machine outside the cluster on the nodes' network: a namespace of its own on
    /// the underlay bridge with `eth0` at `ip` (in 192.168.77.0/24, no node's), for
    /// NodePort clients. Dropping it removes it and its port on the bridge.
    pub fn external_host(&self, name: &str, ip: &str) -> Netns {
        let ns = Netns::new(&format!("{}-{name}", self.tag));
        attach(&self.underlay, &ns, &format!("ulx{name}"), ip);
        ns
    }

    /// Runs kubectl (as the cluster admin) inside the control plane's namespace.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).output().expect("cannot run kubectl 1.32")
    }

    /// A kubectl command (as the cluster admin) inside the control plane's namespace.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.cp_ns.command(KUBECTL);
        cmd.args(args).env("KUBECONFIG", self.dir.join("control/admin.kubeconfig")).env("HOME", &self.dir);
        cmd
    }

    /// kubectl's stdout ("" when it failed).
    pub fn kubectl_out(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        if out.status.success() { String::from_utf8_lossy(&out.stdout).trim().to_owned() } else { String::new() }
    }

    /// kubectl that must succeed: its stdout, or an error with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args);
        ensure!(
            out.status.success(),
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of a manifest.
    pub fn apply(&self, manifest: &str) -> Result<()> {
        use std::io::Write;
        let mut child = self
            .kubectl_command(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(manifest.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// The logs of skiff-control and every agent, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut s = format!("--- skiff-control:\n{}\n", tail(&self.control_log));
        for n in &self.nodes {
            s += &format!(
                "--- {} agent:\n{}\n--- {} containerd:\n{}\n",
                n.name,
                n.log_tail(),
                n.name,
                n.containerd.log_tail()
            );
        }
        s
    }
}

impl ClusterNode {
    /// Starts (or starts again) this node's agent.
    pub fn start_agent(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.agent_log)?;
        let mut cmd = self.ns.command(binary(&self.bin_dir, "skiff-node")?.to_str().context("path")?);
        cmd.args(["run", "--node-name", &self.name, "--node-ip", &self.ip]).arg("--pin-dir").arg(&self.pins.path);
        if !self.kubelet_only {
            cmd.args(["--nodes-from-api", "--underlay-interface", "eth0", "--dns"])
                .arg("--cni-conf-dir")
                .arg(&self.containerd.cni_conf_dir)
                .arg("--cni-bin-dir")
                .arg(&self.containerd.cni_bin_dir)
                .arg("--cni-data-dir")
                .arg(&self.containerd.cni_data_dir)
                .args(self.services_from_api.then_some("--services-from-api"));
            if self.services_from_api {
                cmd.arg("--socket-lb-cgroup").arg(self.socket_lb_cgroup());
            }
            // The NodePort fast path is off by default on veths (it costs the overlay
            // its segmentation offload); the local cluster runs it so that it is tested.
            cmd.args(["--nodeport-xdp", "true"]);
        } else {
            // The DaemonSet's agent serves DNS on the node-local address.
            cmd.args(["--cluster-dns", "169.254.20.10"]);
        }
        let child = cmd
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--bootstrap-kubeconfig")
            .arg(&self.bootstrap_kubeconfig)
            .arg("--container-runtime-endpoint")
            .arg(&self.containerd.socket)
            .arg("--root-dir")
            .arg(&self.root_dir)
            .arg("--pod-log-dir")
            .arg(&self.pod_log_dir)
            .arg("--pod-manifest-path")
            .arg(&self.manifest_dir)
            .arg("--local-path-dir")
            .arg(&self.local_path_dir)
            .args(["--cgroup-root", &self.cgroup_root()])
            .env("RUST_LOG", "info,skiff_node::kubelet=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting skiff-node")?;
        self.agent = ChildGuard::new(child);
        Ok(())
    }

    /// What this node's datapath holds: `skiff-node dump` of its Service maps.
    pub fn datapath_dump(&self) -> Result<String> {
        let out = Command::new(binary(&self.bin_dir, "skiff-node")?)
            .arg("dump")
            .arg("--pin-dir")
            .arg(&self.pins.path)
            .output()
            .context("running skiff-node dump")?;
        ensure!(out.status.success(), "skiff-node dump: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The cgroup the node's pods go under.
    pub fn cgroup_root(&self) -> String {
        format!("/skiff-test/{}", self.name)
    }

    /// The node's cgroup in the cgroup v2 tree (the unified hierarchy of a hybrid
    /// mount, or the root of a v2-only one): the socket-level load balancer acts for the
    /// processes below it. The cluster's teardown removes it with the pods' cgroups.
    pub fn socket_lb_cgroup(&self) -> PathBuf {
        let hybrid = Path::new("/sys/fs/cgroup/unified");
        let v2 = if hybrid.is_dir() { hybrid } else { Path::new("/sys/fs/cgroup") };
        v2.join(self.cgroup_root().trim_start_matches('/'))
    }

    /// A shell line run in the node's host namespace, as a process of the node's own
    /// cgroup (a child cgroup `host` of [`Self::socket_lb_cgroup`]), as a node's system
    /// services run; its output, failed or not.
    pub fn host_sh(&self, line: &str) -> Output {
        let host = self.socket_lb_cgroup().join("host");
        let _ = std::fs::create_dir_all(&host);
        let line = format!("echo $$ > {}/cgroup.procs && {line}", host.display());
        self.ns.sh_output(&line)
    }

    /// Kills the agent (SIGKILL: nothing of its own cleanup runs).
    pub fn kill_agent(&mut self) {
        self.agent.kill();
    }

    /// The agent's process id (nsenter execs the agent, so it is the agent's).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.id()
    }

    /// Whether the agent process still runs.
    pub fn agent_running(&mut self) -> bool {
        self.agent.0.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log_tail(&self) -> String {
        tail(&self.agent_log)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.agent.kill();
        }
        // Each node's containerd removes its sandboxes (CNI DEL) as it drops; the pods'
        // cgroups, which runc leaves, go after it.
        for node in std::mem::take(&mut self.nodes) {
            let cgroup_root = node.cgroup_root();
            drop(node);
            remove_cgroup_tree(&cgroup_root);
        }
        self.control.kill();
        for member in &mut self.etcd {
            member.kill();
        }
        if let Some(link) = self.host_link.take() {
            let _ = Command::new("ip").args(["link", "del", &link]).output();
            detached::unfence_cluster_cidrs();
        }
        // The kubelets' tmpfs volumes (secrets, tokens) of pods still running at the end.
        unmount_below(&self.dir);
        // Processes that just died (shims, kubectl) may still be closing files in it.
        for _ in 0..10 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// `(took 1.2 s)` since `start`, for progress lines.
fn took(start: std::time::Instant) -> String {
    format!("(took {:.1} s)", start.elapsed().as_secs_f64())
}

/// Unmounts every mount under `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> =
        mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|p| Path::new(p).starts_with(dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).output();
    }
}

/// `dir/name`, which must have been built.
fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    ensure!(
        path.is_file(),
        "{} is missing: build it first (`cargo build --bins`; cargo xtask test does)",
        path.display()
    );
    Ok(path)
}

/// Connects namespace `ns` to the underlay bridge with `eth0` at `ip`/24, set up as a
/// real wire would be for a node's NodePort fast path (XDP), which sends packets for
/// other nodes' backends back out of the node's `eth0` by a redirect:
/// - the bridge's end gets NAPI, without which a veth refuses redirected frames: GRO
///   turned on (off first: a new veth shows GRO on without NAPI);
/// - `eth0` sends full checksums (transmit checksum offload off): across a veth, a
///   TCP packet normally carries only its pseudo-header's sum and the kernel's note to
///   finish it, and a frame redirected at XDP loses that note, so its receiver would
///   find it corrupt. On a physical network every frame carries its full checksum.
fn attach(underlay: &Netns, ns: &Netns, port: &str, ip: &str) {
    underlay.sh(&format!(
        "ip link add {port} type veth peer name eth0 netns {} && ip link set {port} master br0 up && ethtool -K {port} gro off && ethtool -K {port} gro on >/dev/null",
        ns.name
    ));
    ns.sh(&format!("ip addr add {ip}/24 dev eth0 && ip link set eth0 up && ethtool -K eth0 tx off >/dev/null"));
}

/// Removes the (empty) cgroup `path` and everything below it from every v1 hierarchy
/// and the v2 tree under /sys/fs/cgroup.
pub(crate) fn remove_cgroup_tree(path: &str) {
    fn rmdir_below(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                rmdir_below(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    for h in hierarchies.flatten() {
        let tree = h.path().join(path.trim_start_matches('/'));
        if tree.is_dir() {
            rmdir_below(&tree);
            // The shared parent goes with the last node that used it.
            if let Some(parent) = tree.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// The last 150 lines of a log file.
pub fn tail(path: &Path) -> String {
    crate::log_tail(path, 150)
}
