//! A minimal, synchronous CRI v1 client for tests: pod sandboxes, containers and images
//! over a containerd unix socket.
//!
//! It wraps the generated tonic clients of the `k8s-cri` crate in a private
//! current-thread tokio runtime, so tests call plain functions. Every call has a timeout,
//! so a wedged runtime fails a test instead of hanging it. It is not the node agent's
//! CRI client (that one is async and sits behind a trait); it does only what tests need.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    self as cri, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1::{
    ContainerState, ContainerStatus, ExecSyncResponse, PodSandbox, PodSandboxState, PodSandboxStatus,
};

/// How long one CRI call may take (RunPodSandbox includes the CNI ADD).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a test asks for in RunPodSandbox.
#[derive(Clone, Debug, Default)]
pub struct SandboxSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub labels: HashMap<String, String>,
    /// Parent cgroup (cgroupfs path such as `/skiff-test-x`); empty leaves it to runc.
    pub cgroup_parent: String,
    /// Directory for container logs; empty leaves it unset.
    pub log_directory: String,
    /// Share the node's network namespace (no CNI call).
    pub host_network: bool,
}

impl SandboxSpec {
    pub fn new(name: &str, namespace: &str, uid: &str) -> Self {
        Self { name: name.into(), namespace: namespace.into(), uid: uid.into(), ..Self::default() }
    }
}

/// A connected CRI client (runtime and image services on one channel).
pub struct CriClient {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient").field("socket", &self.socket).finish_non_exhaustive()
    }
}

impl CriClient {
    /// Connects to the CRI endpoint at the unix socket `socket`.
    pub fn connect(socket: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a tokio runtime for the CRI client")?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is required by tonic but unused: the connector dials the socket.
                Endpoint::try_from("http://[::1]:0")?
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                    }))
                    .await
            })
            .with_context(|| format!("connecting to the CRI socket {}", socket.display()))?;
        Ok(Self {
            socket: socket.to_path_buf(),
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn call<T, F>(&self, what: &str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        // The timer must be created inside the runtime, hence the async block.
        match self.rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await }) {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => {
                Err(anyhow!("CRI {what} on {}: {:?}: {}", self.socket.display(), status.code(), status.message()))
            }
            Err(_) => Err(anyhow!("CRI {what} on {}: no answer in {CALL_TIMEOUT:?}", self.socket.display())),
        }
    }

    /// `Version`: the runtime's name and versions.
    pub fn version(&mut self) -> Result<cri::VersionResponse> {
        let mut c = self.runtime.clone();
        self.call("Version", async move { c.version(cri::VersionRequest { version: "v1".into() }).await })
    }

    /// `Status`: the runtime and network conditions (NetworkReady is false until a CNI
    /// config exists in the conf dir).
    /// Verbose, so that `info` carries containerd's `lastCNILoadStatus`.
    pub fn status(&mut self) -> Result<cri::StatusResponse> {
        let mut c = self.runtime.clone();
        self.call("Status", async move { c.status(cri::StatusRequest { verbose: true }).await })
    }

    /// Whether the runtime reports the condition `kind` (e.g. `NetworkReady`) as true.
    pub fn condition(&mut self, kind: &str) -> Result<bool> {
        let status = self.status()?;
        Ok(status.status.is_some_and(|s| s.conditions.iter().any(|c| c.r#type == kind && c.status)))
    }

    /// `RunPodSandbox`: creates and starts a sandbox (containerd runs the CNI ADD);
    /// returns its id.
    pub fn run_pod_sandbox(&mut self, spec: &SandboxSpec) -> Result<String> {
        let config = sandbox_config(spec);
        let mut c = self.runtime.clone();
        let what = format!("RunPodSandbox {}/{}", spec.namespace, spec.name);
        let resp = self.call(&what, async move {
            c.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }).await
        })?;
        Ok(resp.pod_sandbox_id)
    }

    /// `PodSandboxStatus` (verbose, so that [`Self::pod_netns_path`] can read the spec).
    pub fn pod_sandbox_status(&mut self, id: &str) -> Result<cri::PodSandboxStatusResponse> {
        let mut c = self.runtime.clone();
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true };
        self.call(&format!("PodSandboxStatus {id}"), async move { c.pod_sandbox_status(req).await })
    }

    /// Whether the sandbox is SANDBOX_READY.
    pub fn is_ready(&mut self, id: &str) -> Result<bool> {
        let status = self.pod_sandbox_status(id)?.status.context("PodSandboxStatus without status")?;
        Ok(status.state == PodSandboxState::SandboxReady as i32)
    }

    /// The sandbox's primary IP from PodSandboxStatus, if it has one.
    pub fn pod_ip(&mut self, id: &str) -> Result<Option<IpAddr>> {
        let status = self.pod_sandbox_status(id)?.status.context("PodSandboxStatus without status")?;
        match status.network.map(|n| n.ip).filter(|ip| !ip.is_empty()) {
            None => Ok(None),
            Some(ip) => Ok(Some(ip.parse().with_context(|| format!("sandbox {id} has IP {ip:?}"))?)),
        }
    }

    /// The path of the sandbox's network namespace (`/var/run/netns/cni-...`), read from
    /// the runtime spec in the verbose status.
    pub fn pod_netns_path(&mut self, id: &str) -> Result<String> {
        let resp = self.pod_sandbox_status(id)?;
        let info = resp.info.get("info").context("PodSandboxStatus verbose info has no \"info\"")?;
        let info: serde_json::Value = serde_json::from_str(info).context("parsing the verbose sandbox info")?;
        info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|nss| nss.iter().find(|ns| ns["type"] == "network"))
            .and_then(|ns| ns["path"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("sandbox {id}: no network namespace path in its runtime spec"))
    }

    /// The pid of the sandbox's pause process (from the verbose status), if it runs.
    pub fn sandbox_pid(&mut self, id: &str) -> Result<Option<u32>> {
        let resp = self.pod_sandbox_status(id)?;
        let info = resp.info.get("info").context("PodSandboxStatus verbose info has no \"info\"")?;
        let info: serde_json::Value = serde_json::from_str(info).context("parsing the verbose sandbox info")?;
        Ok(info["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).filter(|&p| p != 0))
    }

    /// `StopPodSandbox` (containerd runs the CNI DEL with the netns).
    pub fn stop_pod_sandbox(&mut self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = cri::StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.call(&format!("StopPodSandbox {id}"), async move { c.stop_pod_sandbox(req).await }).map(drop)
    }

    /// `RemovePodSandbox` (containerd runs the CNI DEL again, without a netns).
    pub fn remove_pod_sandbox(&mut self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.call(&format!("RemovePodSandbox {id}"), async move { c.remove_pod_sandbox(req).await }).map(drop)
    }

    /// `ListPodSandbox` without a filter.
    pub fn list_pod_sandboxes(&mut self) -> Result<Vec<PodSandbox>> {
        let mut c = self.runtime.clone();
        let resp = self.call("ListPodSandbox", async move {
            c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await
        })?;
        Ok(resp.items)
    }

    /// Stops and removes every sandbox; returns the first error after trying them all.
    pub fn remove_all_sandboxes(&mut self) -> Result<()> {
        let mut first = None;
        for sb in self.list_pod_sandboxes()? {
            if let Err(e) = self.stop_pod_sandbox(&sb.id).and_then(|()| self.remove_pod_sandbox(&sb.id)) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// `ListImages`: the references (repo tags) of every image the CRI knows.
    pub fn list_image_tags(&mut self) -> Result<Vec<String>> {
        let mut c = self.image.clone();
        let resp =
            self.call("ListImages", async move { c.list_images(cri::ListImagesRequest { filter: None }).await })?;
        Ok(resp.images.into_iter().flat_map(|i| i.repo_tags).collect())
    }

    /// `CreateContainer` in the sandbox `sandbox_id` (made from `sandbox`); returns the
    /// container's id. The container gets a PID namespace of its own, as the kubelet's
    /// containers do, so its process is PID 1 there.
    pub fn create_container(
        &mut self,
        sandbox_id: &str,
        sandbox: &SandboxSpec,
        spec: &ContainerSpec,
    ) -> Result<String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: spec.name.clone(), attempt: spec.attempt }),
            image: Some(cri::ImageSpec { image: spec.image.clone(), ..Default::default() }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .env
                .iter()
                .map(|(key, value)| cri::KeyValue { key: key.clone(), value: value.clone() })
                .collect(),
            mounts: spec
                .mounts
                .iter()
                .map(|(host, container)| cri::Mount {
                    host_path: host.clone(),
                    container_path: container.clone(),
                    ..Default::default()
                })
                .collect(),
            log_path: spec.log_path.clone(),
            stdin: spec.stdin,
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config(sandbox)),
        };
        let mut c = self.runtime.clone();
        let what = format!("CreateContainer {} in {sandbox_id}", spec.name);
        Ok(self.call(&what, async move { c.create_container(req).await })?.container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&mut self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = cri::StartContainerRequest { container_id: id.into() };
        self.call(&format!("StartContainer {id}"), async move { c.start_container(req).await }).map(drop)
    }

    /// `ContainerStatus` (state, exit code, reason, log path).
    pub fn container_status(&mut self, id: &str) -> Result<ContainerStatus> {
        let mut c = self.runtime.clone();
        let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: false };
        let resp = self.call(&format!("ContainerStatus {id}"), async move { c.container_status(req).await })?;
        resp.status.with_context(|| format!("ContainerStatus {id} without status"))
    }

    /// Polls `ContainerStatus` until the container has exited, for at most `timeout`;
    /// returns its last status.
    pub fn wait_container_exited(&mut self, id: &str, timeout: Duration) -> Result<ContainerStatus> {
        let start = std::time::Instant::now();
        loop {
            let status = self.container_status(id)?;
            if status.state == ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                return Err(anyhow!("container {id} still in state {} after {timeout:?}", status.state));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `StopContainer`: SIGTERM, then SIGKILL after `grace` (whole seconds, at least 1).
    pub fn stop_container(&mut self, id: &str, grace: Duration) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = cri::StopContainerRequest { container_id: id.into(), timeout: grace.as_secs().max(1) as i64 };
        self.call(&format!("StopContainer {id}"), async move { c.stop_container(req).await }).map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&mut self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = cri::RemoveContainerRequest { container_id: id.into() };
        self.call(&format!("RemoveContainer {id}"), async move { c.remove_container(req).await }).map(drop)
    }

    /// `ExecSync`: runs `cmd` in the container and returns its exit code and output.
    pub fn exec_sync(&mut self, id: &str, cmd: &[&str], timeout: Duration) -> Result<cri::ExecSyncResponse> {
        let mut c = self.runtime.clone();
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: timeout.as_secs().max(1) as i64,
        };
        self.call(&format!("ExecSync {cmd:?} in {id}"), async move { c.exec_sync(req).await })
    }
}

/// What a test asks for in CreateContainer.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub name: String,
    /// An image the runtime has (imported, e.g. `skiff_tests::image::ECHO_IMAGE`).
    pub image: String,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `(host path, container path)` bind mounts, read-write.
    pub mounts: Vec<(String, String)>,
    /// The container's log, relative to the sandbox's `log_directory`; empty for none.
    pub log_path: String,
    /// The restart count (a name and attempt pair is unique in a sandbox).
    pub attempt: u32,
    /// Keep a stdin open for the process (`kubectl attach -i`).
    pub stdin: bool,
}

impl ContainerSpec {
    pub fn new(name: &str, image: &str) -> Self {
        Self { name: name.into(), image: image.into(), ..Self::default() }
    }
}

/// The PodSandboxConfig of `spec`, for RunPodSandbox and again for CreateContainer.
fn sandbox_config(spec: &SandboxSpec) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: spec.name.clone(),
            uid: spec.uid.clone(),
            namespace: spec.namespace.clone(),
            attempt: spec.attempt,
        }),
        // With the node's network the node's UTS namespace is shared too: no hostname.
        hostname: if spec.host_network { String::new() } else { spec.name.clone() },
        log_directory: spec.log_directory.clone(),
        labels: spec.labels.clone(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: spec.cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: if spec.host_network { cri::NamespaceMode::Node } else { cri::NamespaceMode::Pod } as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
