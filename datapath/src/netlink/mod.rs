//! Kernel-facing network setup over rtnetlink: veth pairs, addresses, routes,
//! neighbour entries and (in [`vxlan`]) the node's VXLAN device.
//!
//! A netlink socket talks to the network namespace it was created in, and `setns`
//! switches only the calling thread, so pod-side work runs on a short-lived thread that
//! enters the pod's namespace first ([`in_netns`]); the calling thread stays where it
//! is. [`Netlink`] drives its own single-threaded runtime, so it must not be used from
//! inside another tokio runtime. This module never touches IPAM or BPF state.

pub mod vxlan;

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd, AsRawFd},
};

use futures_util::TryStreamExt;
use nix::{errno::Errno, sched::CloneFlags};
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteProtocol, RouteScope},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("there is no interface {name} in this network namespace")]
    NoSuchLink { name: String },
}

impl Error {
    /// The errno of a netlink error, if the kernel sent one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Netlink { source: rtnetlink::Error::NetlinkError(msg), .. } => {
                Some(Errno::from_raw(-msg.raw_code()))
            }
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let op = op.into();
    move |source| Error::Netlink { op, source }
}

fn is_errno(e: &rtnetlink::Error, errno: Errno) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(msg) if msg.raw_code() == -(errno as i32))
}

/// An interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link =
            Link { index: msg.header.index, mac: [0; 6], mtu: 0, up: msg.header.flags.contains(LinkFlags::Up) };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(a),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                _ => {}
            }
        }
        link
    }
}

/// An IPv4 route as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// A netlink connection in the calling thread's network namespace, driven by a
/// single-threaded runtime of its own.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

impl Netlink {
    pub fn new() -> Result<Self> {
        let io_err = |source| Error::Io { op: "opening a netlink socket", source };
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(io_err)?;
        let handle = {
            let _guard = rt.enter();
            let (connection, handle, _) = rtnetlink::new_connection().map_err(io_err)?;
            rt.spawn(connection);
            handle
        };
        Ok(Self { rt, handle })
    }

    /// Creates a veth pair: `host` here, `peer` directly in the namespace `netns`
    /// (no temporary name, so no clash with the node's own interfaces), both with `mtu`.
    pub fn create_veth(&self, host: &str, peer: &str, mtu: u32, netns: &File) -> Result<()> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .mtu(mtu)
            .setns_by_fd(netns.as_fd().as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, peer).mtu(mtu).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg))).build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(nl_err(format!("creating veth pair {host} (node) / {peer} (pod)")))
    }

    /// The raw message of interface `name`, or `None`.
    fn link_message(&self, name: &str) -> Result<Option<LinkMessage>> {
        let result =
            self.rt.block_on(async { self.handle.link().get().match_name(name.to_owned()).execute().try_next().await });
        match result {
            Ok(msg) => Ok(msg),
            Err(e) if is_errno(&e, Errno::ENODEV) => Ok(None),
            Err(source) => Err(Error::Netlink { op: format!("looking up interface {name}"), source }),
        }
    }

    /// The interface called `name`, or `None`.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.link_message(name)?.as_ref().map(Link::from_message))
    }

    /// The interface called `name`, which must exist.
    pub fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)?.ok_or_else(|| Error::NoSuchLink { name: name.to_owned() })
    }

    pub fn set_up(&self, name: &str, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.rt.block_on(self.handle.link().set(msg).execute()).map_err(nl_err(format!("setting {name} up")))
    }

    /// Deletes the interface `name`; `Ok(false)` if there is none.
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        let msg = LinkUnspec::new_with_name(name).build();
        match self.rt.block_on(self.handle.link().del_with_message(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, Errno::ENODEV) => Ok(false),
            Err(source) => Err(Error::Netlink { op: format!("deleting interface {name}"), source }),
        }
    }

    pub fn add_address(&self, name: &str, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        self.rt
            .block_on(self.handle.address().add(index, IpAddr::V4(ip), prefix).execute())
            .map_err(nl_err(format!("adding {ip}/{prefix} to {name}")))
    }

    /// IPv4 addresses on interface `index`.
    pub fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let msgs: Vec<_> = self
            .rt
            .block_on(self.handle.address().get().set_link_index_filter(index).execute().try_collect())
            .map_err(nl_err("listing addresses"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .flat_map(|m| {
                m.attributes.iter().filter_map(move |a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds `dst/prefix` out of interface `oif`: via `gateway`, or on-link (scope link)
    /// without one.
    pub fn add_route(&self, dst: Ipv4Addr, prefix: u8, oif: u32, gateway: Option<Ipv4Addr>) -> Result<()> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, prefix).output_interface(oif);
        builder = match gateway {
            Some(gw) => builder.gateway(gw),
            None => builder.scope(RouteScope::Link),
        };
        self.rt
            .block_on(self.handle.route().add(builder.build()).execute())
            .map_err(nl_err(format!("adding route {dst}/{prefix} (interface index {oif}, gateway {gateway:?})")))
    }

    /// Adds or replaces the on-link (scope link) route `dst/prefix dev oif` (with
    /// `src source` when given), with the protocol `ip route replace` gives a route
    /// (boot), so it looks the same to people and tools as the one the agent used to
    /// make with iproute2.
    pub fn replace_route(&self, dst: Ipv4Addr, prefix: u8, oif: u32, source: Option<Ipv4Addr>) -> Result<()> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(oif)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Boot);
        if let Some(source) = source {
            builder = builder.pref_source(source);
        }
        let msg = builder.build();
        self.rt
            .block_on(self.handle.route().add(msg).replace().execute())
            .map_err(nl_err(format!("replacing route {dst}/{prefix} (interface index {oif})")))
    }

    /// IPv4 routes of the main table.
    pub fn routes(&self) -> Result<Vec<Route>> {
        let msgs: Vec<_> = self
            .rt
            .block_on(self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute().try_collect())
            .map_err(nl_err("listing routes"))?;
        Ok(msgs
            .iter()
            .map(|m| {
                let mut dst = Ipv4Addr::UNSPECIFIED;
                let (mut gw, mut oif) = (None, None);
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        _ => {}
                    }
                }
                Route { dst, prefix: m.header.destination_prefix_length, gateway: gw, oif }
            })
            .collect())
    }

    /// A permanent neighbour entry `ip → mac` on interface `index`.
    pub fn add_permanent_neighbour(&self, index: u32, ip: Ipv4Addr, mac: &[u8; 6]) -> Result<()> {
        self.rt
            .block_on(self.handle.neighbours().add(index, IpAddr::V4(ip)).link_layer_address(mac).replace().execute())
            .map_err(nl_err(format!("adding neighbour entry {ip} on interface index {index}")))
    }
}

/// Runs `f` on a thread that has entered the network namespace `netns`. The caller's
/// own thread never changes namespace.
pub fn in_netns<T: Send>(netns: &File, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::Io { op: "entering the pod's network namespace", source: e.into() })?;
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
