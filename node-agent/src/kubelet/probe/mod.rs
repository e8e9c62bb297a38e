//! Container probes (liveness, readiness, startup) and lifecycle hooks (postStart,
//! preStop), as the kubelet runs them.
//!
//! - [`handler`]: one attempt of one handler (exec through [`ExecRunner`], httpGet,
//!   tcpSocket, sleep) turned into a [`ProbeOutcome`];
//! - [`grpc`]: the gRPC health check behind grpc probes (plaintext HTTP/2);
//! - [`http`]: the small HTTP/1 client behind httpGet (bounded body, same-host
//!   redirects, HTTPS without certificate verification as upstream);
//! - [`target`]: the container a handler runs against ([`HandlerTarget`]);
//! - [`settings`]: a probe's timing and thresholds ([`ProbeSettings`]);
//! - [`worker`]: one tokio task per (container, probe kind) applying the probe's delay,
//!   period, timeout and thresholds, publishing each change as a [`ProbeUpdate`];
//! - [`results`]: what the workers publish and the manager keeps ([`ProbeUpdate`],
//!   [`ProbeResult`]);
//! - [`manager`]: the [`ProbeManager`] that starts and stops workers as containers start
//!   and stop, and keeps the latest results for the pod worker to read;
//! - [`lifecycle`]: [`run_lifecycle_handler`] for postStart and preStop hooks, and
//!   [`run_hook`] that finds a pod's hook first;
//! - [`cri`]: [`ExecRunner`] over the node's CRI client (ExecSync).
//!
//! This module only observes and reports. It must not restart or stop containers, write
//! pod status or record Events: the pod worker reads [`ProbeUpdate`]s and does that, so
//! that one place alone decides what happens to a container.

pub mod cri;
pub mod grpc;
pub mod handler;
pub mod http;
pub mod lifecycle;
pub mod manager;
pub mod results;
pub mod settings;
pub mod target;
pub mod worker;

#[cfg(test)]
mod tests;

pub use handler::{ExecOutput, ExecRunner, run_probe};
pub use lifecycle::{Hook, run_hook, run_lifecycle_handler};
pub use manager::{ContainerStart, ProbeManager, RunningContainer};
pub use results::{ProbeResult, ProbeUpdate};
pub use settings::ProbeSettings;
pub use target::HandlerTarget;

use std::fmt;

/// The result of running a handler once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The handler succeeded.
    Success,
    /// The container answered, and the answer is a failure (the message says which,
    /// e.g. "HTTP probe failed with statuscode: 503"); counts toward failureThreshold.
    Failure(String),
    /// The probe could not be run (runtime error, bad port name, unsupported handler);
    /// it says nothing about the container, so workers leave their state as it is.
    Unknown(String),
}

impl ProbeOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success)
    }

    /// The text for an Event or a log line; empty for a success.
    pub fn message(&self) -> &str {
        match self {
            Self::Success => "",
            Self::Failure(message) | Self::Unknown(message) => message,
        }
    }
}

/// Which of a container's three probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    pub const ALL: [Self; 3] = [Self::Startup, Self::Liveness, Self::Readiness];

    /// The capitalised name Events use ("Liveness probe failed: ...").
    pub fn label(self) -> &'static str {
        match self {
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
            Self::Startup => "Startup",
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a handler could not be run or got no answer; shown to users as the message of a
/// [`ProbeOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("port {port:?} is not a number and no container port has that name")]
    PortNotFound { port: String },
    #[error("port {port} is out of range 1-65535")]
    PortOutOfRange { port: i64 },
    #[error("no host given and the pod has no IP address yet")]
    NoHost,
    #[error("unsupported scheme {0:?} (HTTP or HTTPS)")]
    UnsupportedScheme(String),
    #[error("invalid request: {0}")]
    InvalidRequest(#[source] ::http::Error),
    #[error("invalid TLS server name {name:?}")]
    ServerName {
        name: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("TLS setup: {0}")]
    TlsConfig(#[source] rustls::Error),
    #[error("dial tcp {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    TlsHandshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Http(#[source] hyper::Error),
    #[error("invalid redirect location {0:?}")]
    BadRedirect(String),
    #[error("stopped after {0} redirects")]
    TooManyRedirects(usize),
    #[error("rpc error: code = {code} desc = {message}")]
    GrpcStatus { code: u32, message: String },
    #[error("unexpected gRPC response: {0}")]
    GrpcResponse(String),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
