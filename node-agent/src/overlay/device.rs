//! The node's kernel network setup for the overlay: one VXLAN device in external
//! (collect_md) mode on UDP 8472 with MTU = underlay MTU − 50, one route for the whole
//! cluster CIDR through it (so the node's own traffic to pods reaches the tunnel), and
//! the forwarding sysctls. No per-peer FDB, neighbour or route entries.
//!
//! The kernel is reached through [`LinkOps`]; [`Rtnetlink`] is the real one (rtnetlink
//! through `skiff_datapath::netlink`, and /proc/sys), the unit tests use a fake.
//! Everything here is idempotent: a restarted agent finds the device and keeps it, so
//! traffic never stops.

use std::{net::Ipv4Addr, path::PathBuf};

use skiff_datapath::{Ipv4Net, netlink::Netlink};

/// Name of the node's VXLAN device.
pub const VXLAN_DEVICE: &str = "skiff-vxlan";
/// VXLAN's overhead over IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netlink(#[from] skiff_datapath::netlink::Error),
    #[error("writing {value} to {path}: {source}")]
    Sysctl {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kernel operations the overlay needs.
pub trait LinkOps {
    /// MTU of an interface.
    fn mtu(&mut self, interface: &str) -> Result<u32>;
    /// Creates the VXLAN device if missing (or with the wrong settings), sets its MTU,
    /// turns ARP off (peers are found by the nodes map, not by ARP), brings it up and
    /// returns its index.
    fn ensure_vxlan(&mut self, name: &str, port: u16, mtu: u32) -> Result<u32>;
    /// Adds or replaces a route to `cidr` through `interface`, with `source` as the
    /// preferred source address when given.
    fn ensure_route(&mut self, cidr: Ipv4Net, interface: &str, source: Option<Ipv4Addr>) -> Result<()>;
    /// Adds `ip/32` to `interface` unless it is there.
    fn ensure_host_address(&mut self, interface: &str, ip: Ipv4Addr) -> Result<()>;
    /// Writes a sysctl under /proc/sys (e.g. `net/ipv4/ip_forward`).
    fn sysctl(&mut self, key: &str, value: &str) -> Result<()>;
    /// The first IPv4 address of an interface, if it has one.
    fn ipv4_address(&mut self, interface: &str) -> Result<Option<Ipv4Addr>>;
    /// The index and MAC address of an interface.
    fn index_and_mac(&mut self, interface: &str) -> Result<(u32, [u8; 6])>;
}

/// [`LinkOps`] over rtnetlink and /proc/sys, in the agent's network namespace.
#[derive(Debug)]
pub struct Rtnetlink {
    nl: Netlink,
}

impl Rtnetlink {
    pub fn new() -> Result<Self> {
        Ok(Self { nl: Netlink::new()? })
    }
}

impl LinkOps for Rtnetlink {
    fn mtu(&mut self, interface: &str) -> Result<u32> {
        Ok(self.nl.require_link(interface)?.mtu)
    }

    fn ensure_vxlan(&mut self, name: &str, port: u16, mtu: u32) -> Result<u32> {
        Ok(self.nl.ensure_vxlan(name, port, mtu)?)
    }

    fn ensure_route(&mut self, cidr: Ipv4Net, interface: &str, source: Option<Ipv4Addr>) -> Result<()> {
        let index = self.nl.require_link(interface)?.index;
        Ok(self.nl.replace_route(cidr.network(), cidr.prefix_len(), index, source)?)
    }

    fn ensure_host_address(&mut self, interface: &str, ip: Ipv4Addr) -> Result<()> {
        let index = self.nl.require_link(interface)?.index;
        if self.nl.addresses(index)?.contains(&(ip, 32)) {
            return Ok(());
        }
        Ok(self.nl.add_address(interface, index, ip, 32)?)
    }

    fn sysctl(&mut self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from(format!("/proc/sys/{key}"));
        std::fs::write(&path, value).map_err(|source| Error::Sysctl { path, value: value.to_owned(), source })
    }

    fn ipv4_address(&mut self, interface: &str) -> Result<Option<Ipv4Addr>> {
        let index = self.nl.require_link(interface)?.index;
        Ok(self.nl.addresses(index)?.first().map(|(ip, _)| *ip))
    }

    fn index_and_mac(&mut self, interface: &str) -> Result<(u32, [u8; 6])> {
        let link = self.nl.require_link(interface)?;
        Ok((link.index, link.mac))
    }
}

/// Sets up the node for the overlay; returns the VXLAN device's index and MTU.
pub fn setup(ops: &mut dyn LinkOps, underlay: &str, cluster_cidr: Ipv4Net) -> Result<(u32, u32)> {
    let mtu = ops.mtu(underlay)?.saturating_sub(VXLAN_OVERHEAD);
    let ifindex = ops.ensure_vxlan(VXLAN_DEVICE, skiff_ebpf_common::VXLAN_PORT, mtu)?;
    ops.ensure_route(cluster_cidr.trunc(), VXLAN_DEVICE, None)?;
    // A node forwards for its pods; replies translated back to a VIP arrive on an
    // interface the VIP is not routed through, which strict reverse-path filtering drops.
    ops.sysctl("net/ipv4/ip_forward", "1")?;
    for conf in ["all", "default", VXLAN_DEVICE] {
        ops.sysctl(&format!("net/ipv4/conf/{conf}/rp_filter"), "0")?;
    }
    Ok((ifindex, mtu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeOps {
        log: Vec<String>,
    }

    impl LinkOps for FakeOps {
        fn mtu(&mut self, _: &str) -> Result<u32> {
            Ok(1500)
        }
        fn ensure_vxlan(&mut self, name: &str, port: u16, mtu: u32) -> Result<u32> {
            self.log.push(format!("vxlan {name} port {port} mtu {mtu}"));
            Ok(7)
        }
        fn ensure_route(&mut self, cidr: Ipv4Net, interface: &str, source: Option<Ipv4Addr>) -> Result<()> {
            self.log.push(format!("route {cidr} dev {interface} src {source:?}"));
            Ok(())
        }
        fn ensure_host_address(&mut self, interface: &str, ip: Ipv4Addr) -> Result<()> {
            self.log.push(format!("address {ip}/32 dev {interface}"));
            Ok(())
        }
        fn sysctl(&mut self, key: &str, value: &str) -> Result<()> {
            self.log.push(format!("sysctl {key}={value}"));
            Ok(())
        }
        fn ipv4_address(&mut self, _: &str) -> Result<Option<Ipv4Addr>> {
            Ok(Some(Ipv4Addr::new(192, 168, 77, 11)))
        }
        fn index_and_mac(&mut self, _: &str) -> Result<(u32, [u8; 6])> {
            Ok((2, [2, 0, 0, 0, 0, 1]))
        }
    }

    #[test]
    fn setup_creates_one_device_and_one_route() {
        let mut ops = FakeOps::default();
        let (ifindex, mtu) = setup(&mut ops, "eth0", "10.244.0.0/16".parse().unwrap()).unwrap();
        assert_eq!((ifindex, mtu), (7, 1450));
        assert_eq!(ops.log[0], "vxlan skiff-vxlan port 8472 mtu 1450");
        assert_eq!(ops.log[1], "route 10.244.0.0/16 dev skiff-vxlan src None");
        assert_eq!(ops.log.iter().filter(|l| l.starts_with("route")).count(), 1, "no per-peer routes");
        assert!(ops.log.contains(&"sysctl net/ipv4/ip_forward=1".to_owned()));
        assert!(ops.log.contains(&"sysctl net/ipv4/conf/skiff-vxlan/rp_filter=0".to_owned()));
    }
}
