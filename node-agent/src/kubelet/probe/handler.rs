//! One attempt of one handler: exec (through [`ExecRunner`], which the pod worker
//! implements over CRI ExecSync), httpGet, tcpSocket, grpc, and the lifecycle-only sleep.
//!
//! Nothing here retries, counts or remembers: the worker does that. Every attempt is
//! bounded by the timeout it is given.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Pod, Probe, TCPSocketAction};
use tokio::net::TcpStream;

use super::grpc;
use super::http::{self, HttpCheck};
use super::settings::ProbeSettings;
use super::target::{HandlerTarget, MAX_OUTPUT};
use super::{Error, ProbeOutcome, Result};

/// What a command run in a container printed and how it exited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs a command in a running container and waits for it (CRI ExecSync). `Err` is for
/// failures of the runtime (unknown container, runtime down), not for the command's own
/// exit code. Implementations should pass `timeout` on to the runtime so that it kills
/// the command; the caller also stops waiting after `timeout` and calls that a failure.
pub trait ExecRunner: Send + Sync + 'static {
    fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput, String>> + Send;
}

/// The pod's IP, the default host of its handlers.
pub fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// The pod's containers and init containers (restartable init containers may have
/// probes and hooks), to look a container up by name.
pub fn containers_of(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec.iter().flat_map(|spec| spec.containers.iter().chain(spec.init_containers.iter().flatten()))
}

/// Runs one attempt of `probe` against `target`, bounded by the probe's timeoutSeconds.
pub async fn run_probe<E: ExecRunner>(probe: &Probe, target: &HandlerTarget, exec: &E) -> ProbeOutcome {
    let timeout = ProbeSettings::from_probe(probe).timeout;
    if let Some(action) = &probe.exec {
        run_exec(action, target, exec, timeout).await
    } else if let Some(action) = &probe.http_get {
        run_http(action, target, timeout, HttpCheck::Probe).await
    } else if let Some(action) = &probe.tcp_socket {
        run_tcp(action, target, timeout).await
    } else if let Some(action) = &probe.grpc {
        grpc::run_grpc(action, target, timeout).await
    } else {
        ProbeOutcome::Unknown("the probe has no handler".to_owned())
    }
}

/// Runs the command; a non-zero exit or the timeout is a failure, a runtime error is
/// unknown.
pub(super) async fn run_exec<E: ExecRunner>(
    action: &ExecAction,
    target: &HandlerTarget,
    exec: &E,
    timeout: Duration,
) -> ProbeOutcome {
    let command = action.command.clone().unwrap_or_default();
    if command.is_empty() {
        return ProbeOutcome::Unknown("the exec handler has no command".to_owned());
    }
    let shown = format!("{command:?}");
    let run = exec.exec_sync(&target.container_id, command, timeout);
    match tokio::time::timeout(timeout, run).await {
        Err(_) => ProbeOutcome::Failure(format!("command {shown} timed out after {timeout:?}")),
        Ok(Err(error)) => ProbeOutcome::Unknown(format!("command {shown} could not run: {error}")),
        Ok(Ok(output)) if output.exit_code == 0 => ProbeOutcome::Success,
        Ok(Ok(output)) => {
            let printed = combined_output(&output);
            if printed.is_empty() {
                ProbeOutcome::Failure(format!("command {shown} exited with code {}", output.exit_code))
            } else {
                ProbeOutcome::Failure(printed)
            }
        }
    }
}

/// stdout then stderr, at most [`MAX_OUTPUT`] bytes, as text (the kubelet shows a failing
/// command's output as the Event message).
fn combined_output(output: &ExecOutput) -> String {
    let mut bytes: Vec<u8> = output.stdout.iter().chain(&output.stderr).copied().collect();
    bytes.truncate(MAX_OUTPUT);
    String::from_utf8_lossy(&bytes).trim_end().to_owned()
}

/// Connects and disconnects; refused or timed out is a failure.
pub(super) async fn run_tcp(action: &TCPSocketAction, target: &HandlerTarget, timeout: Duration) -> ProbeOutcome {
    let (host, port) =
        match target.host(action.host.as_ref()).and_then(|host| Ok((host, target.resolve_port(&action.port)?))) {
            Ok(address) => address,
            Err(error) => return ProbeOutcome::Unknown(error.to_string()),
        };
    let addr = http::join_host_port(&host, port);
    match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
        Ok(Ok(_stream)) => ProbeOutcome::Success,
        Ok(Err(source)) => ProbeOutcome::Failure(Error::Connect { addr, source }.to_string()),
        Err(_) => ProbeOutcome::Failure(format!("dial tcp {addr}: i/o timeout after {timeout:?}")),
    }
}

/// Builds the request from the action and the target, then lets [`http::check`] judge
/// the answer.
pub(super) async fn run_http(
    action: &HTTPGetAction,
    target: &HandlerTarget,
    timeout: Duration,
    check: HttpCheck,
) -> ProbeOutcome {
    let request = match http::ProbeRequest::from_action(action, target) {
        Ok(request) => request,
        Err(error) => return ProbeOutcome::Unknown(error.to_string()),
    };
    http::check(&request, timeout, check).await
}
