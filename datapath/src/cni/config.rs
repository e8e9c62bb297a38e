//! The node-specific settings the agent writes into the CNI configuration list and
//! skiff-cni reads back from stdin, and their validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cidr::{self, Ipv4Net};

/// A value of [`NodeNetConfig`] a person got wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("podCIDR {0} has host bits set (the network address is {net})", net = .0.trunc())]
    HostBits(Ipv4Net),
    #[error("podCIDR {0} has no room for pods: use a /30 or larger")]
    NoRoom(Ipv4Net),
    #[error("mtu {0} is out of range (68..=65535)")]
    Mtu(u32),
    #[error("{field} {path:?} must be an absolute path")]
    NotAbsolute { field: &'static str, path: PathBuf },
}

/// The node-specific part of the plugin's configuration: what the node agent knows
/// about its node and writes into the CNI configuration list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetConfig {
    /// The node's `spec.podCIDR`; pods get addresses from `.2` upward.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    /// MTU of both ends of every pod veth (underlay MTU − 50 for VXLAN).
    pub mtu: u32,
    /// The node's bpffs directory, where skiff-node pins the maps and programs.
    pub bpffs_dir: PathBuf,
    /// Where the plugin keeps its IPAM state (one directory per node).
    pub data_dir: PathBuf,
}

impl NodeNetConfig {
    /// Checks the values a person could get wrong; the error says which and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !cidr::is_network(self.pod_cidr) {
            return Err(ConfigError::HostBits(self.pod_cidr));
        }
        if cidr::pod_range(self.pod_cidr).is_none() {
            return Err(ConfigError::NoRoom(self.pod_cidr));
        }
        if !(68..=65_535).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        for (field, path) in [("bpffsDir", &self.bpffs_dir), ("dataDir", &self.data_dir)] {
            if !path.is_absolute() {
                return Err(ConfigError::NotAbsolute { field, path: path.clone() });
            }
        }
        Ok(())
    }
}
