//! skiff-cni: the CNI plugin (spec 1.0.0) that containerd runs for each pod sandbox.
//!
//! The plugin gives each pod a routed veth (no bridge, in the style of Calico and
//! Cilium): `eth0` with a /32 from the node's podCIDR and a default route through the
//! link-local gateway 169.254.1.1 (the host-side veth), a node route to the pod, the
//! pod's entry in the pinned endpoints map and the "from pod" tc program on its host
//! veth. Modules:
//! - [`config`]: the network configuration on stdin;
//! - [`plugin`]: the commands, ADD/DEL/CHECK/VERSION;
//! - [`ipam`]: addresses from the podCIDR, persisted under a file lock;
//! - [`kernel`]: the steps of ADD and DEL behind a trait (real and, in tests, fake);
//! - [`datapath`]: the endpoints map and tc attach (opens skiff-node's pins only);
//! - [`result`], [`error`]: the CNI result and error objects.
//!
//! The kernel-facing work (netlink, pins, attach) and the conflist the node agent
//! writes are in `skiff_datapath`, which the node agent shares; this crate depends on
//! no other binary crate. The agent sets a node up with that library (after loading
//! the datapath, whose pins the plugin needs):
//! ```no_run
//! # fn main() -> Result<(), skiff_datapath::cni::install::Error> {
//! use std::path::Path;
//! use skiff_datapath::cni;
//! let cfg = cni::NodeNetConfig {
//!     pod_cidr: "10.244.1.0/24".parse().unwrap(),
//!     mtu: 1450,
//!     bpffs_dir: "/sys/fs/bpf/skiff/node-1".into(),
//!     data_dir: "/var/lib/skiff/node-1/cni".into(),
//! };
//! let bin_dir = Path::new("/var/lib/skiff/node-1/cni-bin");
//! cni::install_binary(&cni::plugin_beside_current_exe()?, bin_dir)?;
//! cni::install_loopback(bin_dir)?;
//! cni::write_conflist(Path::new("/etc/skiff/node-1/net.d"), &cfg)?;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod datapath;
pub mod error;
pub mod ipam;
pub mod kernel;
pub mod plugin;
pub mod result;

pub use config::NetConf;
pub use error::CniError;
// The contract with the node agent, for the plugin's tests and users.
pub use skiff_datapath::cni::{CONFLIST_NAME, NodeNetConfig, install_binary, install_loopback, write_conflist};
