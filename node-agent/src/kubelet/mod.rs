//! The kubelet: runs this node's pods through the CRI.

pub mod probe;
