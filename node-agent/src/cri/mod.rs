//! The node agent's CRI client: the runtime and image services of containerd (or any
//! CRI v1 runtime) over its unix socket, async, one timeout per call.
//!
//! It speaks the generated CRI v1 types of the `k8s-cri` crate (re-exported as
//! [`api`]) and adds nothing of the kubelet's: what to create and when is decided in
//! `kubelet`. The channel connects lazily and reconnects by itself, so a restarted
//! containerd is picked up on the next call; calls made while it is away fail with
//! [`Error::Unavailable`] and the caller retries.

mod client;

pub use client::{CriClient, DEFAULT_CALL_TIMEOUT};
pub use k8s_cri::v1 as api;

/// Label keys the kubelet puts on sandboxes and containers, as upstream's kubelet does,
/// so that an agent restarted from nothing can map CRI objects back to pods.
pub mod labels {
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// Marks what this agent created; sandboxes without it are not ours to remove.
    pub const MANAGED_BY: &str = "io.skiff.managed-by";
    pub const MANAGED_BY_VALUE: &str = "skiff-node";
}

/// Why a CRI call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CRI {call}: {code:?}: {message}")]
    Status { call: String, code: tonic::Code, message: String },
    #[error("CRI {call}: the runtime is unreachable: {message}")]
    Unavailable { call: String, message: String },
    #[error("CRI {call}: no answer in {timeout:?}")]
    Timeout { call: String, timeout: std::time::Duration },
    #[error("CRI {call}: the runtime's answer has no {field}")]
    Incomplete { call: String, field: &'static str },
}

impl Error {
    /// The object the call named does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { code: tonic::Code::NotFound, .. })
    }

    /// The runtime could not be reached: retry later, change nothing.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
