//! The tonic channel to the runtime's socket and one method per CRI call the agent uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    self as api, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::{Error, Result};

/// How long one call may take; RunPodSandbox (which runs the CNI ADD) and StopContainer
/// (which waits out a grace period) get their own.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
const SANDBOX_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A CRI client; cheap to clone (clones share one connection).
#[derive(Clone)]
pub struct CriClient {
    socket: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient").field("socket", &self.socket).finish_non_exhaustive()
    }
}

async fn call<T>(
    call: impl Into<String>,
    timeout: Duration,
    fut: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
            Err(Error::Unavailable { call: call.into(), message: status.message().to_owned() })
        }
        Ok(Err(status)) => {
            Err(Error::Status { call: call.into(), code: status.code(), message: status.message().to_owned() })
        }
        Err(_) => Err(Error::Timeout { call: call.into(), timeout }),
    }
}

impl CriClient {
    /// A client for the runtime at the unix socket `socket`. Nothing is dialled until
    /// the first call; a lost connection is dialled again on the next one.
    pub fn new(socket: &Path) -> Self {
        let path = socket.to_path_buf();
        // tonic wants a URI; the connector ignores it and dials the socket.
        let channel = Endpoint::from_static("http://[::1]:0")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }));
        Self {
            socket: socket.to_path_buf(),
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `Version`: the runtime's name and version (for the Node's nodeInfo).
    pub async fn version(&self) -> Result<api::VersionResponse> {
        let mut c = self.runtime.clone();
        call("Version", DEFAULT_CALL_TIMEOUT, c.version(api::VersionRequest { version: "v1".into() })).await
    }

    /// `Status`: the RuntimeReady and NetworkReady conditions.
    pub async fn status(&self) -> Result<api::RuntimeStatus> {
        let mut c = self.runtime.clone();
        let resp = call("Status", DEFAULT_CALL_TIMEOUT, c.status(api::StatusRequest { verbose: false })).await?;
        resp.status.ok_or(Error::Incomplete { call: "Status".into(), field: "status" })
    }

    /// `RunPodSandbox`: creates and starts a sandbox (the runtime runs the CNI ADD).
    pub async fn run_pod_sandbox(&self, config: api::PodSandboxConfig) -> Result<String> {
        let what = format!("RunPodSandbox {}", sandbox_name(&config));
        let mut c = self.runtime.clone();
        let req = api::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        Ok(call(what, SANDBOX_CALL_TIMEOUT, c.run_pod_sandbox(req)).await?.pod_sandbox_id)
    }

    /// `StopPodSandbox`: stops what still runs in it and tears its network down.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::StopPodSandboxRequest { pod_sandbox_id: id.into() };
        call(format!("StopPodSandbox {id}"), SANDBOX_CALL_TIMEOUT, c.stop_pod_sandbox(req)).await.map(drop)
    }

    /// `RemovePodSandbox`, with its containers.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        call(format!("RemovePodSandbox {id}"), SANDBOX_CALL_TIMEOUT, c.remove_pod_sandbox(req)).await.map(drop)
    }

    /// `PodSandboxStatus`.
    pub async fn pod_sandbox_status(&self, id: &str) -> Result<api::PodSandboxStatus> {
        let mut c = self.runtime.clone();
        let req = api::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false };
        let what = format!("PodSandboxStatus {id}");
        let resp = call(what.clone(), DEFAULT_CALL_TIMEOUT, c.pod_sandbox_status(req)).await?;
        resp.status.ok_or(Error::Incomplete { call: what, field: "status" })
    }

    /// `ListPodSandbox` with the given label selector (all sandboxes when empty).
    pub async fn list_pod_sandboxes(
        &self,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<Vec<api::PodSandbox>> {
        let mut c = self.runtime.clone();
        let filter = api::PodSandboxFilter { label_selector: labels, ..Default::default() };
        let req = api::ListPodSandboxRequest { filter: Some(filter) };
        Ok(call("ListPodSandbox", DEFAULT_CALL_TIMEOUT, c.list_pod_sandbox(req)).await?.items)
    }

    /// `CreateContainer` in a sandbox; returns the container's id.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
    ) -> Result<String> {
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let mut c = self.runtime.clone();
        let req = api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        Ok(call(format!("CreateContainer {name}"), DEFAULT_CALL_TIMEOUT, c.create_container(req)).await?.container_id)
    }

    /// `StartContainer`.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::StartContainerRequest { container_id: id.into() };
        call(format!("StartContainer {id}"), DEFAULT_CALL_TIMEOUT, c.start_container(req)).await.map(drop)
    }

    /// `StopContainer`: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::StopContainerRequest {
            container_id: id.into(),
            timeout: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
        };
        // The call itself lasts up to the grace period.
        let timeout = DEFAULT_CALL_TIMEOUT + grace;
        call(format!("StopContainer {id}"), timeout, c.stop_container(req)).await.map(drop)
    }

    /// `RemoveContainer`.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = api::RemoveContainerRequest { container_id: id.into() };
        call(format!("RemoveContainer {id}"), DEFAULT_CALL_TIMEOUT, c.remove_container(req)).await.map(drop)
    }

    /// `ListContainers` with the given label selector (all containers when empty).
    pub async fn list_containers(
        &self,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<Vec<api::Container>> {
        let mut c = self.runtime.clone();
        let filter = api::ContainerFilter { label_selector: labels, ..Default::default() };
        let req = api::ListContainersRequest { filter: Some(filter) };
        Ok(call("ListContainers", DEFAULT_CALL_TIMEOUT, c.list_containers(req)).await?.containers)
    }

    /// `ListContainerStats`: CPU and memory of every container the runtime has.
    pub async fn list_container_stats(&self) -> Result<Vec<api::ContainerStats>> {
        let mut c = self.runtime.clone();
        let req = api::ListContainerStatsRequest { filter: None };
        Ok(call("ListContainerStats", DEFAULT_CALL_TIMEOUT, c.list_container_stats(req)).await?.stats)
    }

    /// `ListPodSandboxStats`: the same for each sandbox as a whole (its cgroup), where
    /// the runtime implements it.
    pub async fn list_pod_sandbox_stats(&self) -> Result<Vec<api::PodSandboxStats>> {
        let mut c = self.runtime.clone();
        let req = api::ListPodSandboxStatsRequest { filter: None };
        Ok(call("ListPodSandboxStats", DEFAULT_CALL_TIMEOUT, c.list_pod_sandbox_stats(req)).await?.stats)
    }

    /// `ContainerStatus`: state, exit code, reason, times, image.
    pub async fn container_status(&self, id: &str) -> Result<api::ContainerStatus> {
        let mut c = self.runtime.clone();
        let req = api::ContainerStatusRequest { container_id: id.into(), verbose: false };
        let what = format!("ContainerStatus {id}");
        let resp = call(what.clone(), DEFAULT_CALL_TIMEOUT, c.container_status(req)).await?;
        resp.status.ok_or(Error::Incomplete { call: what, field: "status" })
    }

    /// `ExecSync`: runs `cmd` in the container and waits for it, at most `timeout`.
    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: Duration) -> Result<api::ExecSyncResponse> {
        let mut c = self.runtime.clone();
        let req = api::ExecSyncRequest {
            container_id: id.into(),
            cmd,
            timeout: i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX),
        };
        call(format!("ExecSync {id}"), DEFAULT_CALL_TIMEOUT + timeout, c.exec_sync(req)).await
    }

    /// `Exec`: the URL of the runtime's streaming server for an interactive exec.
    pub async fn exec(&self, req: api::ExecRequest) -> Result<String> {
        let what = format!("Exec {}", req.container_id);
        let mut c = self.runtime.clone();
        Ok(call(what, DEFAULT_CALL_TIMEOUT, c.exec(req)).await?.url)
    }

    /// `Attach`: the URL of the runtime's streaming server for a session with a
    /// container's own process.
    pub async fn attach(&self, req: api::AttachRequest) -> Result<String> {
        let what = format!("Attach {}", req.container_id);
        let mut c = self.runtime.clone();
        Ok(call(what, DEFAULT_CALL_TIMEOUT, c.attach(req)).await?.url)
    }

    /// `PodSandboxStatus` with `verbose`: the runtime's own description of the sandbox
    /// (containerd: key `info`, a JSON document with the pause pid and runtime spec).
    pub async fn pod_sandbox_info(&self, id: &str) -> Result<std::collections::HashMap<String, String>> {
        let mut c = self.runtime.clone();
        let req = api::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true };
        Ok(call(format!("PodSandboxStatus {id}"), DEFAULT_CALL_TIMEOUT, c.pod_sandbox_status(req)).await?.info)
    }

    /// `PortForward`: the URL of the runtime's streaming server for a sandbox's ports.
    pub async fn port_forward(&self, sandbox_id: &str, ports: Vec<i32>) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = api::PortForwardRequest { pod_sandbox_id: sandbox_id.into(), port: ports };
        Ok(call(format!("PortForward {sandbox_id}"), DEFAULT_CALL_TIMEOUT, c.port_forward(req)).await?.url)
    }

    /// `ImageStatus`: the image if the runtime has it.
    pub async fn image_status(&self, image: &str) -> Result<Option<api::Image>> {
        let mut c = self.image.clone();
        let req = api::ImageStatusRequest { image: Some(image_spec(image)), verbose: false };
        Ok(call(format!("ImageStatus {image}"), DEFAULT_CALL_TIMEOUT, c.image_status(req)).await?.image)
    }

    /// `PullImage`: returns the image's reference (its id) once pulled.
    pub async fn pull_image(&self, image: &str, sandbox_config: api::PodSandboxConfig) -> Result<String> {
        let mut c = self.image.clone();
        let req =
            api::PullImageRequest { image: Some(image_spec(image)), auth: None, sandbox_config: Some(sandbox_config) };
        Ok(call(format!("PullImage {image}"), SANDBOX_CALL_TIMEOUT, c.pull_image(req)).await?.image_ref)
    }

    /// `ListImages`: every image the runtime has (for the Node's status.images).
    pub async fn list_images(&self) -> Result<Vec<api::Image>> {
        let mut c = self.image.clone();
        Ok(call("ListImages", DEFAULT_CALL_TIMEOUT, c.list_images(api::ListImagesRequest { filter: None }))
            .await?
            .images)
    }
}

fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec { image: image.into(), ..Default::default() }
}

fn sandbox_name(config: &api::PodSandboxConfig) -> String {
    config.metadata.as_ref().map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default()
}
