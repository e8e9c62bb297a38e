//! postStart and preStop hooks: one run of a [`LifecycleHandler`], bounded by a timeout
//! the caller chooses (for preStop, what is left of the grace period).
//!
//! It must not decide what a failed hook means: the pod worker kills the container
//! after a failed postStart and goes on to StopContainer after any preStop.

use std::time::Duration;

use k8s_openapi::api::core::v1::{LifecycleHandler, Pod};

use super::ProbeOutcome;
use super::handler::{self, ExecRunner};
use super::http::HttpCheck;
use super::target::HandlerTarget;

/// Runs `handler` once against `target` within `timeout`.
///
/// - exec: success when the command exits 0; its output is the failure message;
/// - httpGet: success when the container answers at all (any status), as upstream;
/// - sleep: waits `seconds`; cut short by `timeout`, which is then a failure;
/// - tcpSocket: not a hook action upstream either (kept in the API for compatibility),
///   so a failure that says so.
pub async fn run_lifecycle_handler<E: ExecRunner>(
    handler: &LifecycleHandler,
    target: &HandlerTarget,
    exec: &E,
    timeout: Duration,
) -> ProbeOutcome {
    if let Some(action) = &handler.exec {
        handler::run_exec(action, target, exec, timeout).await
    } else if let Some(action) = &handler.http_get {
        handler::run_http(action, target, timeout, HttpCheck::Lifecycle).await
    } else if let Some(action) = &handler.sleep {
        let wanted = Duration::from_secs(u64::try_from(action.seconds).unwrap_or(0));
        if wanted > timeout {
            tokio::time::sleep(timeout).await;
            ProbeOutcome::Failure(format!("sleep of {wanted:?} cut short: only {timeout:?} were left"))
        } else {
            tokio::time::sleep(wanted).await;
            ProbeOutcome::Success
        }
    } else if handler.tcp_socket.is_some() {
        ProbeOutcome::Failure("tcpSocket is not supported as a lifecycle hook".to_owned())
    } else {
        ProbeOutcome::Failure("the lifecycle hook has no action".to_owned())
    }
}

/// Which hook of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PostStart,
    PreStop,
}

impl Hook {
    /// The reason of the Event for a failure of this hook, as upstream names it.
    pub fn failure_reason(self) -> &'static str {
        match self {
            Self::PostStart => "FailedPostStartHook",
            Self::PreStop => "FailedPreStopHook",
        }
    }
}

/// Runs container `container_name`'s `hook` from the pod's spec in instance
/// `container_id`, with the pod IP as the default host; `None` when the container has
/// no such hook.
pub async fn run_hook<E: ExecRunner>(
    pod: &Pod,
    container_name: &str,
    container_id: &str,
    hook: Hook,
    exec: &E,
    timeout: Duration,
) -> Option<ProbeOutcome> {
    let container = handler::containers_of(pod).find(|c| c.name == container_name)?;
    let lifecycle = container.lifecycle.as_ref()?;
    let handler = match hook {
        Hook::PostStart => lifecycle.post_start.as_ref(),
        Hook::PreStop => lifecycle.pre_stop.as_ref(),
    }?;
    let target = HandlerTarget::new(container_id, handler::pod_ip(pod), container);
    Some(run_lifecycle_handler(handler, &target, exec, timeout).await)
}
