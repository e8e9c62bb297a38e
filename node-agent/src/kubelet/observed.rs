//! What the runtime has for one pod: its sandboxes and containers as the CRI reports
//! them, reduced to the facts the plan and the status need. Built from CRI answers by
//! `worker`; built by hand in the plan's and the status's unit tests.

use crate::cri::api;

/// Nanoseconds since the Unix epoch, as the CRI reports times.
pub type UnixNanos = i64;

/// One pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxObs {
    pub id: String,
    pub attempt: u32,
    pub ready: bool,
    pub created_at: UnixNanos,
    /// The pod's IP (empty for host-network sandboxes and before the CNI ran).
    pub ip: String,
}

/// A container's runtime state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl ContainerState {
    pub fn from_cri(state: i32) -> Self {
        match api::ContainerState::try_from(state) {
            Ok(api::ContainerState::ContainerCreated) => Self::Created,
            Ok(api::ContainerState::ContainerRunning) => Self::Running,
            Ok(api::ContainerState::ContainerExited) => Self::Exited,
            _ => Self::Unknown,
        }
    }
}

/// One container instance (each restart is a new instance with the next attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerObs {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    /// The restart count of this instance (CRI metadata attempt).
    pub attempt: u32,
    pub state: ContainerState,
    pub created_at: UnixNanos,
    pub started_at: UnixNanos,
    pub finished_at: UnixNanos,
    pub exit_code: i32,
    /// The runtime's reason for the exit (`Completed`, `Error`, `OOMKilled`).
    pub reason: String,
    /// The termination message (from terminationMessagePath, or the log tail).
    pub message: String,
    pub image_ref: String,
}

impl ContainerObs {
    pub fn from_cri(sandbox_id: &str, status: &api::ContainerStatus) -> Self {
        let meta = status.metadata.clone().unwrap_or_default();
        Self {
            id: status.id.clone(),
            sandbox_id: sandbox_id.to_owned(),
            name: meta.name,
            attempt: meta.attempt,
            state: ContainerState::from_cri(status.state),
            created_at: status.created_at,
            started_at: status.started_at,
            finished_at: status.finished_at,
            exit_code: status.exit_code,
            reason: status.reason.clone(),
            message: status.message.clone(),
            image_ref: status.image_ref.clone(),
        }
    }

    pub fn is_running(&self) -> bool {
        self.state == ContainerState::Running
    }

    pub fn has_exited(&self) -> bool {
        matches!(self.state, ContainerState::Exited | ContainerState::Unknown)
    }
}

/// Everything the runtime has for one pod uid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub sandboxes: Vec<SandboxObs>,
    pub containers: Vec<ContainerObs>,
}

impl Observed {
    /// The newest sandbox (highest attempt, then newest).
    pub fn latest_sandbox(&self) -> Option<&SandboxObs> {
        self.sandboxes.iter().max_by_key(|s| (s.attempt, s.created_at))
    }

    /// The newest instance of container `name` in sandbox `sandbox_id`.
    pub fn latest_container(&self, sandbox_id: &str, name: &str) -> Option<&ContainerObs> {
        self.containers
            .iter()
            .filter(|c| c.sandbox_id == sandbox_id && c.name == name)
            .max_by_key(|c| (c.attempt, c.created_at))
    }

    /// The newest instance of container `name` in any sandbox (restart counts carry
    /// over a new sandbox, as upstream).
    pub fn latest_any(&self, name: &str) -> Option<&ContainerObs> {
        self.containers.iter().filter(|c| c.name == name).max_by_key(|c| (c.attempt, c.created_at))
    }

    /// The instance before the newest (for `lastState` and `logs --previous`).
    pub fn previous_any(&self, name: &str) -> Option<&ContainerObs> {
        let latest = self.latest_any(name)?;
        self.containers.iter().filter(|c| c.name == name && c.id != latest.id).max_by_key(|c| (c.attempt, c.created_at))
    }

    /// Whether anything of the pod still runs: a ready sandbox or a live container.
    pub fn anything_running(&self) -> bool {
        self.sandboxes.iter().any(|s| s.ready) || self.containers.iter().any(|c| !c.has_exited())
    }
}
