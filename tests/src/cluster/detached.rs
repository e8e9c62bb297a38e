//! What `cargo xtask up` needs of a local cluster beyond the tests: an etcd cluster in
//! the control plane's namespace, a route from the host to the API server, detaching
//! (leaving everything running, recorded in `state.json`), and the teardown of a
//! detached cluster from its tag and directory alone.
//!
//! The host route is the one place where the root namespace sends packets: a veth from
//! the root namespace into the control plane's namespace and a /32 route to the API
//! server's address over it, added only when nothing on the host routes those addresses
//! already, and checked with `ip route get` before anything is sent. Pod and Service
//! addresses are never routed from the root namespace: they get `unreachable` routes
//! there (when nothing of the host's own uses them), so that a stray packet to one fails
//! at once instead of leaving by the default route.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::{CONTROL_PLANE_IP, Cluster, KUBECTL, remove_cgroup_tree, unmount_below};
use crate::netns::{ChildGuard, wait_until};

/// The root namespace's end of the veth to the control plane (a /30 of its own).
pub const HOST_LINK_IP: &str = "192.168.78.1";
/// The control plane namespace's end of that veth; the host routes the API server's
/// address through it.
pub const CP_LINK_IP: &str = "192.168.78.2";
/// skiff-control's default pod and Service ranges: the host gets `unreachable` routes for
/// them, so that nothing sent to a pod or Service address from the root namespace can
/// leave by the default route.
pub const FENCED_CIDRS: [&str; 2] = ["10.244.0.0/16", "10.96.0.0/12"];
/// The host's kubeconfig, in the cluster's directory.
pub const HOST_KUBECONFIG: &str = "kubeconfig";
/// What a detached cluster runs, in the cluster's directory.
const STATE_FILE: &str = "state.json";
/// etcd member `i` listens for clients on 127.0.0.1:`ETCD_BASE_PORT + 2i` (peers: +1),
/// inside the control plane's namespace.
const ETCD_BASE_PORT: usize = 12379;

/// A detached cluster's processes and the places it owns, as `state.json` records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedState {
    pub tag: String,
    pub dir: PathBuf,
    pub control_pid: u32,
    pub etcd_pids: Vec<u32>,
    /// The root namespace's end of the veth to the control plane.
    pub host_link: Option<String>,
    pub kubeconfig: PathBuf,
    pub nodes: Vec<DetachedNode>,
}

/// One node of a detached cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedNode {
    pub name: String,
    pub ip: String,
    pub agent_pid: u32,
    pub containerd_pid: u32,
    pub containerd_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub cgroup_root: String,
}

impl DetachedState {
    fn to_json(&self) -> Value {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "name": n.name, "ip": n.ip, "agentPid": n.agent_pid, "containerdPid": n.containerd_pid,
                    "containerdDir": n.containerd_dir, "pinDir": n.pin_dir, "cgroupRoot": n.cgroup_root,
                })
            })
            .collect();
        json!({
            "tag": self.tag, "dir": self.dir, "controlPid": self.control_pid, "etcdPids": self.etcd_pids,
            "hostLink": self.host_link, "kubeconfig": self.kubeconfig, "nodes": nodes,
        })
    }

    fn from_json(v: &Value) -> Option<Self> {
        let s = |v: &Value, k: &str| v[k].as_str().map(str::to_owned);
        let pid = |v: &Value, k: &str| v[k].as_u64().and_then(|p| u32::try_from(p).ok());
        let nodes = v["nodes"]
            .as_array()?
            .iter()
            .map(|n| {
                Some(DetachedNode {
                    name: s(n, "name")?,
                    ip: s(n, "ip")?,
                    agent_pid: pid(n, "agentPid")?,
                    containerd_pid: pid(n, "containerdPid")?,
                    containerd_dir: s(n, "containerdDir")?.into(),
                    pin_dir: s(n, "pinDir")?.into(),
                    cgroup_root: s(n, "cgroupRoot")?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            tag: s(v, "tag")?,
            dir: s(v, "dir")?.into(),
            control_pid: pid(v, "controlPid")?,
            etcd_pids: v["etcdPids"].as_array()?.iter().filter_map(|p| p.as_u64()?.try_into().ok()).collect(),
            host_link: s(v, "hostLink"),
            kubeconfig: s(v, "kubeconfig")?.into(),
            nodes,
        })
    }
}

/// The state of the cluster detached in `dir`, if there is one.
pub fn read_state(dir: &Path) -> Option<DetachedState> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
    DetachedState::from_json(&serde_json::from_str(&text).ok()?)
}

impl Cluster {
    /// Starts `members` etcd members inside the control plane's namespace (loopback
    /// only: skiff-control is their one client) and waits until all are healthy.
    pub(super) fn start_etcd(&mut self, members: usize) -> Result<()> {
        let url = |i: usize, offset: usize| format!("http://127.0.0.1:{}", ETCD_BASE_PORT + 2 * i + offset);
        let initial: Vec<String> = (0..members).map(|i| format!("m{i}={}", url(i, 1))).collect();
        for i in 0..members {
            let log =
                std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("etcd-m{i}.log")))?;
            let child = self
                .cp_ns
                .command("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(self.dir.join("etcd").join(format!("m{i}")))
                .args(["--listen-client-urls", &url(i, 0), "--advertise-client-urls", &url(i, 0)])
                .args(["--listen-peer-urls", &url(i, 1), "--initial-advertise-peer-urls", &url(i, 1)])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &format!("skiff-{}", self.tag)])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting etcd (install Debian's etcd-server: `cargo xtask setup`)")?;
            self.etcd.push(ChildGuard::new(child));
        }
        self.etcd_servers = (0..members).map(|i| url(i, 0)).collect();
        let endpoints = self.etcd_servers.join(",");
        let healthy = wait_until(Duration::from_secs(30), || {
            self.cp_ns
                .command("etcdctl")
                .args(["--endpoints", &endpoints, "endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        ensure!(
            healthy,
            "etcd ({endpoints}) was not healthy within 30 s:\n{}",
            super::tail(&self.dir.join("etcd-m0.log"))
        );
        Ok(())
    }

    /// skiff-control's arguments for its store.
    pub(super) fn etcd_args(&self) -> Vec<String> {
        if self.etcd_servers.is_empty() {
            Vec::new()
        } else {
            vec!["--etcd-servers".into(), self.etcd_servers.join(",")]
        }
    }

    /// Gives the root namespace a route to the API server (a veth into the control
    /// plane's namespace and a /32 route over it, checked with `ip route get`), checks
    /// that kubectl on the host reaches it, and writes the host's kubeconfig (the
    /// admin's: the API server's certificate is valid for [`CONTROL_PLANE_IP`]).
    pub fn expose_to_host(&mut self) -> Result<PathBuf> {
        let link = format!("{}-h", self.tag);
        ensure!(link.len() <= 15, "the tag {} is too long for an interface name", self.tag);
        for addr in [CONTROL_PLANE_IP, HOST_LINK_IP, CP_LINK_IP] {
            ensure_unrouted(addr)?;
        }
        host_sh(&format!("ip link add {link} type veth peer name host0 netns {}", self.cp_ns.name))?;
        self.host_link = Some(link.clone());
        self.cp_ns.sh(&format!("ip addr add {CP_LINK_IP}/30 dev host0 && ip link set host0 up"));
        host_sh(&format!(
            "ip addr add {HOST_LINK_IP}/30 dev {link} && ip link set {link} up && \
             ip route add {CONTROL_PLANE_IP}/32 via {CP_LINK_IP} dev {link}"
        ))?;
        ensure!(routes_via(CONTROL_PLANE_IP, &link), "the host's route to {CONTROL_PLANE_IP} does not use {link}");
        fence_cluster_cidrs()?;
        let kubeconfig = self.dir.join(HOST_KUBECONFIG);
        std::fs::copy(self.dir.join("control/admin.kubeconfig"), &kubeconfig).context("writing the host kubeconfig")?;
        let ok = wait_until(Duration::from_secs(10), || host_reaches_api(&kubeconfig, &link));
        ensure!(ok, "kubectl on the host does not reach the API server at {CONTROL_PLANE_IP} over {link}");
        Ok(kubeconfig)
    }

    /// Leaves everything running and records it in `state.json`: the cluster outlives
    /// this process, and [`teardown`] removes it later.
    pub fn detach(self) -> Result<DetachedState> {
        let pid = |g: &ChildGuard| g.id().unwrap_or(0);
        let nodes = self
            .nodes
            .iter()
            .map(|n| DetachedNode {
                name: n.name.clone(),
                ip: n.ip.clone(),
                agent_pid: pid(&n.agent),
                containerd_pid: n.containerd.pid().unwrap_or(0),
                containerd_dir: n.containerd.dir.clone(),
                pin_dir: n.pins.path.clone(),
                cgroup_root: n.cgroup_root(),
            })
            .collect();
        let state = DetachedState {
            tag: self.tag.clone(),
            dir: self.dir.clone(),
            control_pid: pid(&self.control),
            etcd_pids: self.etcd.iter().map(pid).collect(),
            host_link: self.host_link.clone(),
            kubeconfig: self.dir.join(HOST_KUBECONFIG),
            nodes,
        };
        // A containerd directory whose owner died is swept by the next harness start
        // (a test run): from now on containerd itself is the owner.
        for n in &state.nodes {
            std::fs::write(n.containerd_dir.join(crate::containerd::OWNER_FILE), n.containerd_pid.to_string())?;
        }
        let text = serde_json::to_string_pretty(&state.to_json())?;
        std::fs::write(self.dir.join(STATE_FILE), text).context("writing the cluster's state")?;
        // Nothing is dropped: the guards would stop every process and delete the namespaces.
        std::mem::forget(self);
        Ok(state)
    }
}

/// Whether kubectl on the host reaches the API server with `kubeconfig`, after checking
/// that the host's route to it goes through `link` (never the default route).
pub fn host_reaches_api(kubeconfig: &Path, link: &str) -> bool {
    routes_via(CONTROL_PLANE_IP, link)
        && Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--request-timeout", "3s", "get", "--raw", "/readyz"])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Removes the detached (or crashed) cluster `tag` in `dir`: agents, then each node's
/// sandboxes through its containerd, every process in the cluster's namespaces, what
/// containerd and runc leave (see `containerd::sweep_stale`), cgroups, namespaces, the
/// host link, pins, mounts and the directory. Idempotent; returns what it removed.
pub fn teardown(tag: &str, dir: &Path) -> Vec<String> {
    let state = read_state(dir);
    let mut done = Vec::new();
    let mut nodes: Vec<String> = state.iter().flat_map(|s| s.nodes.iter().map(|n| n.name.clone())).collect();
    let namespaces = list_netns();
    let node_prefix = format!("{tag}-n");
    for ns in &namespaces {
        if ns.strip_prefix(&node_prefix).is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            && !nodes.contains(ns)
        {
            nodes.push(ns.clone());
        }
    }
    // Agents first, so that nothing starts pods again while they go.
    let mut killed = 0;
    for node in &nodes {
        for pid in netns_pids(node) {
            if cmdline(pid).contains("skiff-node") {
                kill(pid);
                killed += 1;
            }
        }
    }
    if killed > 0 {
        done.push(format!("stopped {killed} node agents"));
    }
    for node in &nodes {
        let socket = std::env::temp_dir().join(format!("skiff-ctd-{node}")).join("containerd.sock");
        if socket.exists()
            && let Ok(mut cri) = crate::cri::CriClient::connect(&socket)
            && cri.remove_all_sandboxes().is_ok()
        {
            done.push(format!("removed the pods of {node}"));
        }
    }
    let mut all: Vec<String> = nodes.clone();
    all.extend([format!("{tag}-cp"), format!("{tag}-ul")]);
    let mut pids = Vec::new();
    for ns in all.iter().filter(|ns| namespaces.contains(ns)) {
        pids.extend(netns_pids(ns));
    }
    pids.extend(state.iter().flat_map(|s| s.etcd_pids.iter().copied().chain([s.control_pid])));
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|p| *p != 0 && Path::new(&format!("/proc/{p}")).exists());
    for &pid in &pids {
        kill(pid);
    }
    wait_until(Duration::from_secs(5), || pids.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists()));
    if !pids.is_empty() {
        done.push(format!("stopped {} processes (skiff-control, etcd, containerd, shims)", pids.len()));
    }
    // Every containerd directory of a dead owner: runc's containers, shims, pod netns,
    // mounts, files.
    crate::containerd::sweep_stale();
    for node in &nodes {
        remove_cgroup_tree(&format!("/skiff-test/{node}"));
        let pins = Path::new("/sys/fs/bpf/skiff-test").join(node);
        if pins.exists() && std::fs::remove_dir_all(&pins).is_ok() {
            done.push(format!("removed the pins in {}", pins.display()));
        }
    }
    for ns in all.iter().filter(|ns| namespaces.contains(ns)) {
        if Command::new("ip").args(["netns", "del", ns]).output().is_ok_and(|o| o.status.success()) {
            done.push(format!("deleted namespace {ns}"));
        }
    }
    if unfence_cluster_cidrs() {
        done.push(format!("removed the host's unreachable routes for {}", FENCED_CIDRS.join(", ")));
    }
    let link = format!("{tag}-h");
    if Command::new("ip").args(["link", "del", &link]).output().is_ok_and(|o| o.status.success()) {
        done.push(format!("deleted link {link}"));
    }
    if dir.exists() {
        unmount_below(dir);
        for _ in 0..10 {
            if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        done.push(format!("removed {}", dir.display()));
    }
    done
}

/// Fails unless the host routes `addr` only by its default route (nothing of its own
/// is there, which the /32 route would hide).
fn ensure_unrouted(addr: &str) -> Result<()> {
    let routes = host_sh(&format!("ip route show match {addr}"))?;
    if let Some(line) = routes.lines().find(|l| !l.trim().is_empty() && !l.starts_with("default")) {
        bail!("this host already routes {addr} ({line}); the local cluster needs 192.168.77.0/24 and 192.168.78.0/30");
    }
    Ok(())
}

/// Adds the host's `unreachable` routes for [`FENCED_CIDRS`] (each unless the host
/// already routes something there of its own) and checks them with `ip route get`.
fn fence_cluster_cidrs() -> Result<()> {
    for cidr in FENCED_CIDRS {
        let existing = host_sh(&format!("ip route show {cidr}"))?;
        if existing.contains("unreachable") {
            continue;
        }
        let first = cidr.split('/').next().unwrap_or(cidr);
        ensure_unrouted(first)?;
        host_sh(&format!("ip route add unreachable {cidr}"))?;
        let got = Command::new("ip").args(["route", "get", first]).output()?;
        ensure!(!got.status.success(), "the host still routes {first} after `ip route add unreachable {cidr}`");
    }
    Ok(())
}

/// Removes the host's `unreachable` routes for [`FENCED_CIDRS`]; whether there were any.
pub(super) fn unfence_cluster_cidrs() -> bool {
    let mut removed = false;
    for cidr in FENCED_CIDRS {
        if host_sh(&format!("ip route show {cidr}")).is_ok_and(|r| r.contains("unreachable")) {
            removed |= host_sh(&format!("ip route del unreachable {cidr}")).is_ok();
        }
    }
    removed
}

/// Whether `ip route get addr` on the host names `link` as the device.
fn routes_via(addr: &str, link: &str) -> bool {
    let route = host_sh(&format!("ip route get {addr}")).unwrap_or_default();
    route.split_whitespace().collect::<Vec<_>>().windows(2).any(|w| w[0] == "dev" && w[1] == link)
}

/// Runs a shell line in the root namespace; its stdout, or an error with its stderr.
fn host_sh(line: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", line]).output().with_context(|| format!("running {line}"))?;
    ensure!(out.status.success(), "`{line}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names of the network namespaces (`ip netns list`).
fn list_netns() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out).lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
}

/// The processes in network namespace `name`.
fn netns_pids(name: &str) -> Vec<u32> {
    let out = Command::new("ip").args(["netns", "pids", name]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// A process's command line, arguments joined by spaces ("" when it is gone).
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn kill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_json() {
        let state = DetachedState {
            tag: "skiff".into(),
            dir: "/var/lib/skiff/local".into(),
            control_pid: 10,
            etcd_pids: vec![11, 12, 13],
            host_link: Some("skiff-h".into()),
            kubeconfig: "/var/lib/skiff/local/kubeconfig".into(),
            nodes: vec![DetachedNode {
                name: "skiff-n1".into(),
                ip: "192.168.77.11".into(),
                agent_pid: 20,
                containerd_pid: 21,
                containerd_dir: "/tmp/skiff-ctd-skiff-n1".into(),
                pin_dir: "/sys/fs/bpf/skiff-test/skiff-n1".into(),
                cgroup_root: "/skiff-test/skiff-n1".into(),
            }],
        };
        assert_eq!(DetachedState::from_json(&state.to_json()), Some(state));
    }
}
