//! The one CIDR type of the node side, [`Ipv4Net`] from `ipnet` (clap and serde parse
//! it directly), and the few things the BPF maps and IPAM need of it. No other CIDR
//! parser exists on the node: add helpers here instead.

use std::net::Ipv4Addr;

pub use ipnet::Ipv4Net;

/// (network, mask) in the byte order the BPF maps store them.
pub fn to_map(net: Ipv4Net) -> (u32, u32) {
    (skiff_ebpf_common::addr_to_map(net.network().octets()), skiff_ebpf_common::addr_to_map(net.netmask().octets()))
}

/// Whether `net` is written as its network address (no host bits set), as a podCIDR
/// must be.
pub fn is_network(net: Ipv4Net) -> bool {
    net.addr() == net.network()
}

/// First and last address a node's IPAM may hand to pods: from `.2` (`.1` is the
/// node's own) up to the one before the broadcast address. `None` if the range has no
/// room for a pod (/31, /32).
pub fn pod_range(net: Ipv4Net) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if net.prefix_len() > 30 {
        return None;
    }
    let first = u32::from(net.network()) + 2;
    let last = u32::from(net.broadcast()) - 1;
    Some((Ipv4Addr::from(first), Ipv4Addr::from(last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_map_form() {
        let c: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert_eq!(pod_range(c), Some((Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 254))));
        assert!(c.contains(&Ipv4Addr::new(10, 244, 1, 77)));
        assert!(!c.contains(&Ipv4Addr::new(10, 244, 2, 1)));
        let tiny: Ipv4Net = "10.0.0.4/30".parse().unwrap();
        assert_eq!(pod_range(tiny), Some((Ipv4Addr::new(10, 0, 0, 6), Ipv4Addr::new(10, 0, 0, 6))));
        assert_eq!(pod_range("10.0.0.4/31".parse().unwrap()), None);
        assert!(!is_network("10.244.1.5/24".parse().unwrap()));
        assert!(is_network(c));
        assert!("10.244.1.0".parse::<Ipv4Net>().is_err());
        assert!("10.244.1.0/33".parse::<Ipv4Net>().is_err());
        let (net, mask) = to_map("10.96.0.0/12".parse().unwrap());
        assert_eq!(skiff_ebpf_common::addr_from_map(net), [10, 96, 0, 0]);
        assert_eq!(skiff_ebpf_common::addr_from_map(mask), [255, 240, 0, 0]);
        assert_eq!(to_map("0.0.0.0/0".parse().unwrap()), (0, 0));
    }
}
