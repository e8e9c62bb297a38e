//! The node's kernel as ADD and DEL change it, behind a small trait: [`System`] is the
//! real one (netlink, /proc/sys, the pinned datapath); the plugin's unit tests use a
//! fake that can fail any step, to prove that a failed ADD undoes everything.
//!
//! Every method reports a [`CniError`] in the runtime's `cniVersion`.

use std::{fs::File, net::Ipv4Addr};

use skiff_datapath::netlink::{self, Link, Netlink, in_netns};
use skiff_ebpf_common::Endpoint4;

use crate::{
    datapath::{self, Datapath},
    error::{CniError, code},
    result::GATEWAY,
};

/// The steps of ADD (in order) and DEL, on the node's and the pod's namespace.
pub trait Kernel {
    /// The interface `name` in the node's namespace.
    fn host_link(&self, name: &str) -> Result<Option<Link>, CniError>;
    /// Deletes the host veth (and so its peer and every route through it); a missing
    /// one is fine.
    fn delete_host_veth(&self, name: &str) -> Result<(), CniError>;
    /// Creates the pair: `host_veth` in the node's namespace, `ifname` in `netns`.
    fn create_veth(&self, host_veth: &str, ifname: &str, mtu: u32, netns: &File) -> Result<Link, CniError>;
    /// Node side: up, `rp_filter=0`, route `ip/32 dev host_veth`.
    fn configure_host(&self, host_veth: &str, host: &Link, ip: Ipv4Addr) -> Result<(), CniError>;
    /// Pod side: up, `ip/32`, gateway route and neighbour, default route. Returns the
    /// pod interface's MAC.
    fn configure_pod(&self, netns: &File, ifname: &str, ip: Ipv4Addr, host_mac: [u8; 6]) -> Result<[u8; 6], CniError>;
    fn insert_endpoint(&self, ip: Ipv4Addr, endpoint: Endpoint4) -> Result<(), CniError>;
    fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), CniError>;
    /// Attaches "from pod" to the host veth and pins the link.
    fn attach(&self, host_veth: &str) -> Result<(), CniError>;
    /// Removes the link pin; a missing one is fine.
    fn detach(&self, host_veth: &str) -> Result<(), CniError>;
}

/// The real kernel: netlink sockets in the node's and the pod's namespaces and the
/// datapath pinned by skiff-node.
#[derive(Debug)]
pub struct System {
    pub nl: Netlink,
    pub datapath: Datapath,
    version: String,
}

impl System {
    pub fn new(datapath: Datapath, version: &str) -> Result<Self, CniError> {
        let nl = Netlink::new().map_err(nl_err(version, "cannot talk to the kernel"))?;
        Ok(Self { nl, datapath, version: version.to_owned() })
    }

    fn nl_err(&self, what: &str) -> impl Fn(netlink::Error) -> CniError {
        nl_err(&self.version, what)
    }

    pub fn dp_err(&self) -> impl Fn(datapath::Error) -> CniError + '_ {
        dp_err(&self.version)
    }
}

pub fn nl_err(version: &str, what: &str) -> impl Fn(netlink::Error) -> CniError {
    let (version, what) = (version.to_owned(), what.to_owned());
    move |e| CniError::new(code::NETLINK, what.clone(), e.to_string()).with_version(&version)
}

pub fn dp_err(version: &str) -> impl Fn(datapath::Error) -> CniError + '_ {
    move |e| match e {
        datapath::Error::NotLoaded { .. } => {
            CniError::new(code::TRY_AGAIN_LATER, "the Skiff datapath is not loaded", e.to_string())
                .with_version(version)
        }
        other => CniError::new(code::DATAPATH, "datapath update failed", other.to_string()).with_version(version),
    }
}

impl Kernel for System {
    fn host_link(&self, name: &str) -> Result<Option<Link>, CniError> {
        self.nl.link(name).map_err(self.nl_err("cannot look up the pod's host veth"))
    }

    fn delete_host_veth(&self, name: &str) -> Result<(), CniError> {
        self.nl.delete_link(name).map(drop).map_err(self.nl_err("cannot delete the pod's veth"))
    }

    fn create_veth(&self, host_veth: &str, ifname: &str, mtu: u32, netns: &File) -> Result<Link, CniError> {
        self.nl.create_veth(host_veth, ifname, mtu, netns).map_err(|e| {
            let what = if e.errno() == Some(nix::errno::Errno::EEXIST) {
                format!(
                    "cannot create the pod's veth: an interface {ifname} already exists in the pod's network namespace"
                )
            } else {
                "cannot create the pod's veth".to_owned()
            };
            CniError::new(code::NETLINK, what, e.to_string()).with_version(&self.version)
        })?;
        self.host_link(host_veth)?.ok_or_else(|| {
            CniError::new(code::NETLINK, "the new veth vanished", host_veth.to_owned()).with_version(&self.version)
        })
    }

    fn configure_host(&self, host_veth: &str, host: &Link, ip: Ipv4Addr) -> Result<(), CniError> {
        self.nl.set_up(host_veth, host.index).map_err(self.nl_err("cannot set the host veth up"))?;
        // Replies of hairpinned Service flows come from the hairpin address, which the
        // reverse-path filter would drop. /proc/sys/net is the opening thread's
        // namespace: this one, the node's.
        let rp_filter = format!("/proc/sys/net/ipv4/conf/{host_veth}/rp_filter");
        std::fs::write(&rp_filter, "0").map_err(|e| {
            CniError::new(code::IO, format!("cannot write {rp_filter}"), e.to_string()).with_version(&self.version)
        })?;
        self.nl.add_route(ip, 32, host.index, None).map_err(self.nl_err("cannot add the node's route to the pod"))
    }

    fn configure_pod(&self, netns: &File, ifname: &str, ip: Ipv4Addr, host_mac: [u8; 6]) -> Result<[u8; 6], CniError> {
        in_netns(netns, || {
            let nl = Netlink::new()?;
            let pod = nl.require_link(ifname)?;
            nl.set_up(ifname, pod.index)?;
            nl.add_address(ifname, pod.index, ip, 32)?;
            nl.add_route(GATEWAY, 32, pod.index, None)?;
            nl.add_permanent_neighbour(pod.index, GATEWAY, &host_mac)?;
            nl.add_route(Ipv4Addr::UNSPECIFIED, 0, pod.index, Some(GATEWAY))?;
            Ok(pod.mac)
        })
        .map_err(self.nl_err("cannot configure the pod's interface"))
    }

    fn insert_endpoint(&self, ip: Ipv4Addr, endpoint: Endpoint4) -> Result<(), CniError> {
        self.datapath.insert_endpoint(ip, endpoint).map_err(self.dp_err())
    }

    fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), CniError> {
        self.datapath.remove_endpoint(ip).map_err(self.dp_err())
    }

    fn attach(&self, host_veth: &str) -> Result<(), CniError> {
        self.datapath.attach_pod_programs(host_veth).map_err(self.dp_err())
    }

    fn detach(&self, host_veth: &str) -> Result<(), CniError> {
        self.datapath.detach_pod_programs(host_veth).map_err(self.dp_err())
    }
}
