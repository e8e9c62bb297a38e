//! The kubelet role: runs this node's pods on the container runtime through the CRI.
pub mod backoff;
pub mod config;
pub mod observed;
pub mod plan;
pub mod status;
