//! The CNI error object and the spec's error codes.

use serde::Serialize;

/// Error codes: 1–99 are the CNI spec's (1.0.0), 100+ are this plugin's own.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (CNI_COMMAND, CNI_NETNS, ...).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (reading stdin, the IPAM state, bpffs).
    pub const IO: u32 = 5;
    /// Failed to decode content (stdin is not JSON).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition, such as the datapath not loaded yet.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The podCIDR has no free address.
    pub const RANGE_EXHAUSTED: u32 = 100;
    /// A netlink operation (veth, address, route, neighbour) failed.
    pub const NETLINK: u32 = 101;
    /// Writing the endpoints map or attaching the tc program failed.
    pub const DATAPATH: u32 = 102;
    /// CHECK found the pod's network not as ADD left it.
    pub const CHECK_FAILED: u32 = 103;
}

/// A CNI error, printed as the spec's error object on stdout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{msg}: {details} (CNI error code {code})")]
pub struct CniError {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { cni_version: "1.0.0".into(), code, msg: msg.into(), details: details.into() }
    }

    /// Reports in the version the runtime asked for (it must be a supported one).
    pub fn with_version(mut self, version: &str) -> Self {
        version.clone_into(&mut self.cni_version);
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializing a CNI error cannot fail")
    }
}
