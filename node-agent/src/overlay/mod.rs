//! The overlay role: pods on different nodes reach each other over VXLAN, flannel
//! style, with eBPF doing the forwarding.
//!
//! - [`source`]: where the set of nodes comes from (a nodes file today; the Node watch
//!   of the control plane later), behind [`source::NodeSource`];
//! - [`device`]: the node's one VXLAN device in external mode, its cluster-CIDR route
//!   and the sysctls forwarding needs, behind [`device::LinkOps`];
//! - [`reconciler`]: the one writer of the nodes map (peer podCIDR → underlay address).
//!
//! This role never writes Service state and never adds per-peer FDB, neighbour or route
//! entries: a node joining or leaving is one map entry.

pub mod device;
pub mod reconciler;
pub mod source;

use std::net::Ipv4Addr;

/// An IPv4 CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn mask(&self) -> u32 {
        if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix_len)) }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// (network, mask) as the BPF maps store them.
    pub fn to_map(&self) -> (u32, u32) {
        (
            skiff_ebpf_common::addr_to_map(self.network().octets()),
            skiff_ebpf_common::addr_to_map(self.mask().to_be_bytes()),
        )
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').ok_or_else(|| format!("`{s}` is not a CIDR like 10.244.1.0/24"))?;
        let addr = addr.parse().map_err(|_| format!("`{s}`: `{addr}` is not an IPv4 address"))?;
        let prefix_len =
            len.parse::<u8>().ok().filter(|l| *l <= 32).ok_or_else(|| format!("`{s}`: bad prefix length"))?;
        Ok(Self { addr, prefix_len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_masks() {
        let c: Cidr = "10.244.1.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert!(c.contains("10.244.1.200".parse().unwrap()));
        assert!(!c.contains("10.244.2.1".parse().unwrap()));
        assert!("10.244.1.0".parse::<Cidr>().is_err());
        assert!("10.244.1.0/33".parse::<Cidr>().is_err());
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().mask(), 0);
    }
}
