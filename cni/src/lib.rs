//! skiff-cni: the CNI plugin (spec 1.0.0) that containerd runs for each pod sandbox,
//! and the helpers the node agent uses to install it.
//!
//! The plugin gives each pod a routed veth (no bridge, in the style of Calico and
//! Cilium): `eth0` with a /32 from the node's podCIDR and a default route through the
//! link-local gateway 169.254.1.1 (the host-side veth), a node route to the pod, the
//! pod's entry in the pinned endpoints map and the "from pod" tc program on its host
//! veth. Modules:
//! - [`config`]: the network configuration (stdin) and the node's settings;
//! - [`plugin`]: the commands, ADD/DEL/CHECK/VERSION;
//! - [`ipam`]: addresses from the podCIDR, persisted under a file lock;
//! - [`kernel`]: the steps of ADD and DEL behind a trait (real and, in tests, fake);
//! - [`netlink`]: veth, addresses, routes, neighbours (kernel-facing);
//! - [`datapath`]: the endpoints map and tc attach (opens skiff-node's pins only);
//! - [`install`]: [`write_conflist`] and [`install_binary`] for the node agent;
//! - [`result`], [`error`]: the CNI result and error objects.
//!
//! The node agent sets a node up with the library (after loading the datapath, whose
//! pins the plugin needs):
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use std::path::Path;
//! let cfg = skiff_cni::NodeNetConfig {
//!     pod_cidr: "10.244.1.0/24".parse().unwrap(),
//!     mtu: 1450,
//!     bpffs_dir: "/sys/fs/bpf/skiff/node-1".into(),
//!     data_dir: "/var/lib/skiff/node-1/cni".into(),
//! };
//! let bin_dir = Path::new("/var/lib/skiff/node-1/cni-bin");
//! skiff_cni::install_binary(&skiff_cni::install::plugin_beside_current_exe()?, bin_dir)?;
//! skiff_cni::install_loopback(bin_dir)?;
//! skiff_cni::write_conflist(Path::new("/etc/skiff/node-1/net.d"), &cfg)?;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod datapath;
pub mod error;
pub mod install;
pub mod ipam;
pub mod kernel;
pub mod netlink;
pub mod plugin;
pub mod result;

pub use config::{Ipv4Cidr, NetConf, NodeNetConfig};
pub use error::CniError;
pub use install::{CONFLIST_NAME, install_binary, install_loopback, write_conflist};
