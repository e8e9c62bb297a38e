//! A private containerd for one simulated node, running inside that node's network
//! namespace, with everything it owns under one directory, and torn down on drop.
//!
//! Start-up follows what was learned on these machines (see TOOLCHAIN.md): no systemd,
//! so containerd is a child process with a config of its own; it enters the node's
//! namespace with `nsenter --net=` (never `ip netns exec`, which remounts /sys and hides
//! the cgroup mounts); cgroupfs; `restrict_oom_score_adj = true`; runc with its own
//! `Root`; per-node CNI `bin_dir`/`conf_dir` with the `loopback` plugin; our own pause
//! image as `sandbox_image`.
//!
//! Teardown (on drop, also after a failed test) goes from polite to forceful: remove
//! every sandbox through the CRI, stop containerd (SIGTERM, then SIGKILL), force-delete
//! what runc still has, kill the shims that named our socket, unmount whatever is still
//! mounted under our directory, and delete the directory. It never touches another
//! containerd's processes or files: everything is found through our own paths. A run
//! that died without dropping (abort, SIGKILL) is cleaned by the next
//! [`ContainerdNode::start`] (see [`sweep_stale`]): each directory records its owner's
//! pid, and only directories of dead owners are swept.
//!
//! Not cleaned here: the node's network namespace (the caller's `Netns` guard) and the
//! shared `k8s.io` cgroup directory runc leaves empty in each hierarchy.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cri::CriClient, image::PAUSE_IMAGE, netns::ChildGuard};

/// The CRI's containerd namespace.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// Where Debian's containernetworking-plugins live.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// Options for [`ContainerdNode::start`].
#[derive(Clone, Debug)]
pub struct ContainerdOptions {
    /// `sandbox_image` (must be imported before the first RunPodSandbox).
    pub sandbox_image: String,
    /// Image tarballs to import once containerd answers.
    pub images: Vec<PathBuf>,
    /// How long to wait for the socket to answer.
    pub start_timeout: Duration,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        Self { sandbox_image: PAUSE_IMAGE.into(), images: Vec::new(), start_timeout: Duration::from_secs(30) }
    }
}

/// A running containerd for one node. Dropping it removes everything it made.
#[derive(Debug)]
pub struct ContainerdNode {
    /// A short name (used in messages and in the directory name).
    pub name: String,
    /// The node's network namespace path (`/var/run/netns/NAME`).
    pub netns_path: String,
    /// Everything this containerd owns lives under here.
    pub dir: PathBuf,
    /// The gRPC (CRI) socket.
    pub socket: PathBuf,
    /// CNI plugin binaries (holds `loopback` from the start).
    pub cni_bin_dir: PathBuf,
    /// CNI network configurations.
    pub cni_conf_dir: PathBuf,
    /// A directory for the CNI plugins' own data (IPAM state), if a test wants one.
    pub cni_data_dir: PathBuf,
    /// runc's state root (`Root` option); runc v2 adds the namespace below it.
    pub runc_root: PathBuf,
    /// containerd's log (stdout and stderr).
    pub log: PathBuf,
    child: ChildGuard,
}

impl ContainerdNode {
    /// Starts containerd in the network namespace at `netns_path`, waits until its CRI
    /// answers, and imports `opts.images`. `name` must be unique among live nodes (use
    /// [`crate::unique_tag`]); its directory is `/tmp/skiff-ctd-NAME`.
    pub fn start(name: &str, netns_path: &str, opts: &ContainerdOptions) -> Result<Self> {
        sweep_stale();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{name}"));
        // A leftover with the same name: clean it the same way.
        if dir.exists() {
            cleanup_dir(&dir);
        }
        let node = Self {
            name: name.into(),
            netns_path: netns_path.into(),
            socket: dir.join("containerd.sock"),
            cni_bin_dir: dir.join("cni/bin"),
            cni_conf_dir: dir.join("cni/conf"),
            cni_data_dir: dir.join("cni/data"),
            runc_root: dir.join("runc"),
            log: dir.join("containerd.log"),
            dir,
            child: ChildGuard(None),
        };
        let mut node = node;
        node.prepare().with_context(|| format!("preparing containerd {name} in {}", node.dir.display()))?;
        node.spawn_daemon()?;
        node.wait_ready(opts.start_timeout)?;
        for image in &opts.images {
            node.import_image(image)?;
        }
        Ok(node)
    }

    fn prepare(&self) -> Result<()> {
        for d in [&self.dir, &self.cni_bin_dir, &self.cni_conf_dir, &self.cni_data_dir, &self.runc_root] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::fs::write(self.dir.join(OWNER_FILE), std::process::id().to_string())?;
        self.install_system_cni_plugin("loopback")?;
        std::fs::write(self.dir.join("config.toml"), self.config_toml())?;
        Ok(())
    }

    /// containerd 1.6's config (version 2).
    pub fn config_toml(&self) -> String {
        let d = self.dir.display();
        let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = "{d}/debug.sock"
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[{cri}]
  sandbox_image = "{sandbox}"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{runc}"

[{cri}.cni]
  bin_dir = "{bin}"
  conf_dir = "{conf}"
  max_conf_num = 1
"#,
            sock = self.socket.display(),
            sandbox = PAUSE_IMAGE,
            runc = self.runc_root.display(),
            bin = self.cni_bin_dir.display(),
            conf = self.cni_conf_dir.display(),
        );
        s
    }

    /// Starts the containerd process (its log appended to `self.log`).
    fn spawn_daemon(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path))
            .args(["--", "containerd", "--config"])
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning `nsenter ... containerd` (is containerd installed?)")?;
        self.child = ChildGuard::new(child);
        Ok(())
    }

    /// Kills containerd (SIGKILL; its shims and containers keep running, as on a real
    /// node) and starts it again on the same state, waiting until its CRI answers.
    pub fn restart(&mut self, timeout: Duration) -> Result<()> {
        self.child.kill();
        self.spawn_daemon()?;
        self.wait_ready(timeout)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last_err = None;
        while start.elapsed() < timeout {
            if let Some(child) = self.child.0.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("containerd {} exited during start-up ({status}); its log:\n{}", self.name, self.log_tail());
            }
            if self.socket.exists() {
                match CriClient::connect(&self.socket).and_then(|mut c| c.version()) {
                    Ok(_) => return Ok(()),
                    Err(e) => last_err = Some(e),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "containerd {} did not answer on {} within {timeout:?} (last error: {}); its log:\n{}",
            self.name,
            self.socket.display(),
            last_err.map_or("no socket".into(), |e| format!("{e:#}")),
            self.log_tail()
        )
    }

    /// The last lines of containerd's log, for error messages.
    pub fn log_tail(&self) -> String {
        crate::log_tail(&self.log, 40)
    }

    /// A new CRI client on this containerd's socket.
    pub fn cri(&self) -> Result<CriClient> {
        CriClient::connect(&self.socket)
    }

    /// Runs `ctr` against this containerd in the CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", K8S_NAMESPACE])
            .args(args)
            .output()
            .context("running ctr")?;
        if !out.status.success() {
            bail!(
                "ctr {} on {} failed ({}): {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports an OCI image tarball into the CRI's namespace (and unpacks it).
    pub fn import_image(&self, tarball: &Path) -> Result<()> {
        let path = tarball.to_str().context("image path is not UTF-8")?;
        self.ctr(&["images", "import", path]).map(drop).with_context(|| format!("importing {path}"))
    }

    /// Copies a CNI plugin binary into this node's `bin_dir` under `name` (atomically,
    /// so containerd never runs a half-written file).
    pub fn install_cni_plugin(&self, src: &Path, name: &str) -> Result<PathBuf> {
        let dest = self.cni_bin_dir.join(name);
        let tmp = self.cni_bin_dir.join(format!(".{name}.tmp"));
        std::fs::copy(src, &tmp).with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        std::fs::rename(&tmp, &dest)?;
        Ok(dest)
    }

    /// Installs one of Debian's reference plugins (`/usr/lib/cni/NAME`).
    pub fn install_system_cni_plugin(&self, name: &str) -> Result<PathBuf> {
        let src = Path::new(SYSTEM_CNI_DIR).join(name);
        if !src.is_file() {
            bail!("{} is missing: install Debian's containernetworking-plugins", src.display());
        }
        self.install_cni_plugin(&src, name)
    }

    /// Writes a CNI config file into `conf_dir`: a temporary file, then a rename, both
    /// inside `conf_dir`. containerd watches the directory and would read a half-written
    /// file; and containerd 1.6 reloads on WRITE, RENAME and REMOVE events only, never on
    /// CREATE, so a file renamed in from elsewhere (only a CREATE there) goes unnoticed.
    /// The temporary name ends in `.tmp`, an extension libcni does not read.
    pub fn write_cni_config(&self, file_name: &str, contents: &str) -> Result<PathBuf> {
        let dest = self.cni_conf_dir.join(file_name);
        let tmp = self.cni_conf_dir.join(format!(".{file_name}.tmp"));
        std::fs::write(&tmp, contents)?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        Ok(dest)
    }

    /// Waits until the CRI reports NetworkReady (it has loaded a CNI config).
    pub fn wait_network_ready(&self, timeout: Duration) -> Result<()> {
        let mut cri = self.cri()?;
        let start = Instant::now();
        while start.elapsed() < timeout {
            if cri.condition("NetworkReady")? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let info = cri
            .status()
            .map(|s| s.info.get("lastCNILoadStatus").cloned().unwrap_or_else(|| format!("{:?}", s.status)))
            .unwrap_or_else(|e| format!("{e:#}"));
        bail!(
            "containerd {}: CNI network not ready after {timeout:?}; lastCNILoadStatus: {info}; its log:\n{}",
            self.name,
            self.log_tail()
        )
    }

    /// The pid of containerd, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Tears everything down now (drop does the same; calling both is harmless).
    pub fn shutdown(&mut self) {
        if self.child.0.is_some() {
            if let Ok(mut cri) = self.cri() {
                let _ = cri.remove_all_sandboxes();
            }
            self.stop_containerd();
        }
        if self.dir.exists() {
            cleanup_dir(&self.dir);
        }
    }

    fn stop_containerd(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).output();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Some(child) = self.child.0.as_mut()
                    && !matches!(child.try_wait(), Ok(None))
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.child.kill();
    }
}

impl Drop for ContainerdNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

const DIR_PREFIX: &str = "skiff-ctd-";
/// Holds the pid of the process that started the node, for [`sweep_stale`].
pub const OWNER_FILE: &str = "owner.pid";

/// Cleans up the directories of nodes whose owning process died without its drop
/// running (an aborted or killed test run). A live owner's directory is never touched.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(e.path().join(OWNER_FILE)).ok().and_then(|p| p.trim().parse::<u32>().ok());
        if let Some(pid) = owner
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            cleanup_dir(&e.path());
        }
    }
}

/// Removes what a (stopped) containerd left under `dir`: runc containers, shims, mounts,
/// files. Each step is best effort; the next one still runs.
fn cleanup_dir(dir: &Path) {
    let socket = dir.join("containerd.sock");
    // A containerd whose owner died names its config: stop it before it acts again.
    kill_processes_naming(&dir.join("config.toml").to_string_lossy());
    // runc v2 keeps each namespace's containers in Root/NAMESPACE. A sandbox that was
    // never stopped also leaves its pod netns (a bind mount under /var/run/netns),
    // named in runc's state.
    let runc_root = dir.join("runc").join(K8S_NAMESPACE);
    let mut pod_netns = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&runc_root) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if let Some(state) = std::fs::read(e.path().join("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            {
                for ns in state["config"]["namespaces"].as_array().into_iter().flatten() {
                    if let Some(path) = ns["path"].as_str().filter(|p| p.starts_with("/var/run/netns/cni-")) {
                        pod_netns.push(path.to_owned());
                    }
                }
            }
            let _ = Command::new("runc").arg("--root").arg(&runc_root).args(["delete", "--force", &id]).output();
        }
    }
    // The shims name our socket.
    kill_processes_naming(&socket.to_string_lossy());
    for path in pod_netns {
        let _ = Command::new("umount").args(["-l", &path]).output();
        let _ = std::fs::remove_file(&path);
    }
    unmount_under(dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGKILLs processes whose command line contains `needle` (the shims name our socket
/// with `-address`), never this process.
fn kill_processes_naming(needle: &str) {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            let _ = Command::new("kill").args(["-9", &pid]).output();
        }
    }
}

/// Unmounts (lazily, deepest first) every mount point under `dir`.
fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<String> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| Path::new(p).starts_with(dir))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", &p]).output();
        }
    }
}
