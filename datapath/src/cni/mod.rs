//! The contract between the node agent and the CNI plugin: the node-specific settings
//! the agent writes into the CNI configuration list ([`NodeNetConfig`]) and that
//! skiff-cni reads back from stdin, and (in [`install`]) how the agent puts the list
//! and the plugin binaries where containerd finds them.
//!
//! The plugin's own parsing of stdin (versions, error codes) stays in skiff-cni.

pub mod config;
pub mod install;

pub use config::{ConfigError, NodeNetConfig};
pub use install::{
    CONFLIST_NAME, LOOPBACK_SOURCES, NETWORK_NAME, PLUGIN_TYPE, conflist, install_binary, install_loopback,
    plugin_beside_current_exe, write_conflist,
};
