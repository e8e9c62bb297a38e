//! The node's kernel network setup for the overlay: one VXLAN device in external
//! (collect_md) mode on UDP 8472 with MTU = underlay MTU − 50, one route for the whole
//! cluster CIDR through it (so the node's own traffic to pods reaches the tunnel), and
//! the forwarding sysctls. No per-peer FDB, neighbour or route entries.
//!
//! The kernel is reached through [`LinkOps`]; [`IpCommand`] drives iproute2 and
//! /proc/sys. Everything here is idempotent: a restarted agent finds the device and
//! keeps it, so traffic never stops.

use std::process::Command;

use tracing::info;

use super::Cidr;

/// Name of the node's VXLAN device.
pub const VXLAN_DEVICE: &str = "skiff-vxlan";
/// VXLAN's overhead over IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`: {source} (is iproute2 installed?)")]
    Spawn { command: String, source: std::io::Error },
    #[error("interface {interface}: {reason}")]
    Interface { interface: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kernel operations the overlay needs.
pub trait LinkOps {
    /// MTU of an interface.
    fn mtu(&mut self, interface: &str) -> Result<u32>;
    /// Index of an interface.
    fn ifindex(&mut self, interface: &str) -> Result<u32>;
    /// Creates the VXLAN device if missing (or with the wrong settings), sets its MTU,
    /// turns ARP off (peers are found by the nodes map, not by ARP) and brings it up.
    fn ensure_vxlan(&mut self, name: &str, port: u16, mtu: u32) -> Result<()>;
    /// Adds or replaces a route to `cidr` through `interface`.
    fn ensure_route(&mut self, cidr: Cidr, interface: &str) -> Result<()>;
    /// Writes a sysctl under /proc/sys (e.g. `net/ipv4/ip_forward`).
    fn sysctl(&mut self, key: &str, value: &str) -> Result<()>;
}

/// [`LinkOps`] through iproute2 and /proc/sys, in the agent's network namespace.
#[derive(Debug, Default)]
pub struct IpCommand;

fn ip(args: &[&str]) -> Result<String> {
    let command = format!("ip {}", args.join(" "));
    let out =
        Command::new("ip").args(args).output().map_err(|source| Error::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(Error::Command { command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value after `word` in `ip -d link show` output.
fn field<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == word {
            return words.next();
        }
    }
    None
}

impl LinkOps for IpCommand {
    fn mtu(&mut self, interface: &str) -> Result<u32> {
        let text = ip(&["-o", "link", "show", "dev", interface])?;
        field(&text, "mtu").and_then(|m| m.parse().ok()).ok_or_else(|| Error::Interface {
            interface: interface.into(),
            reason: "no MTU in `ip link` output".into(),
        })
    }

    fn ifindex(&mut self, interface: &str) -> Result<u32> {
        let text = ip(&["-o", "link", "show", "dev", interface])?;
        text.split(':').next().and_then(|i| i.trim().parse().ok()).ok_or_else(|| Error::Interface {
            interface: interface.into(),
            reason: "no index in `ip link` output".into(),
        })
    }

    fn ensure_vxlan(&mut self, name: &str, port: u16, mtu: u32) -> Result<()> {
        let port_s = port.to_string();
        match ip(&["-d", "-o", "link", "show", "dev", name]) {
            Ok(text) if text.contains("external") && field(&text, "dstport") == Some(port_s.as_str()) => {}
            Ok(_) => {
                info!(device = name, "replacing a VXLAN device with other settings");
                ip(&["link", "del", name])?;
                ip(&["link", "add", name, "type", "vxlan", "external", "dstport", &port_s, "nolearning"])?;
            }
            Err(_) => {
                info!(device = name, port, "creating the VXLAN device");
                ip(&["link", "add", name, "type", "vxlan", "external", "dstport", &port_s, "nolearning"])?;
            }
        }
        ip(&["link", "set", "dev", name, "mtu", &mtu.to_string(), "arp", "off", "up"])?;
        Ok(())
    }

    fn ensure_route(&mut self, cidr: Cidr, interface: &str) -> Result<()> {
        ip(&["route", "replace", &cidr.to_string(), "dev", interface, "scope", "link"])?;
        Ok(())
    }

    fn sysctl(&mut self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{key}");
        std::fs::write(&path, value)
            .map_err(|source| Error::Spawn { command: format!("write {value} to {path}"), source })
    }
}

/// Sets up the node for the overlay and returns the VXLAN device's index.
pub fn setup(ops: &mut dyn LinkOps, underlay: &str, cluster_cidr: Cidr) -> Result<(u32, u32)> {
    let mtu = ops.mtu(underlay)?.saturating_sub(VXLAN_OVERHEAD);
    ops.ensure_vxlan(VXLAN_DEVICE, skiff_ebpf_common::VXLAN_PORT, mtu)?;
    ops.ensure_route(cluster_cidr, VXLAN_DEVICE)?;
    // A node forwards for its pods; replies translated back to a VIP arrive on an
    // interface the VIP is not routed through, which strict reverse-path filtering drops.
    ops.sysctl("net/ipv4/ip_forward", "1")?;
    for conf in ["all", "default", VXLAN_DEVICE] {
        ops.sysctl(&format!("net/ipv4/conf/{conf}/rp_filter"), "0")?;
    }
    let ifindex = ops.ifindex(VXLAN_DEVICE)?;
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
        fn ifindex(&mut self, _: &str) -> Result<u32> {
            Ok(7)
        }
        fn ensure_vxlan(&mut self, name: &str, port: u16, mtu: u32) -> Result<()> {
            self.log.push(format!("vxlan {name} port {port} mtu {mtu}"));
            Ok(())
        }
        fn ensure_route(&mut self, cidr: Cidr, interface: &str) -> Result<()> {
            self.log.push(format!("route {cidr} dev {interface}"));
            Ok(())
        }
        fn sysctl(&mut self, key: &str, value: &str) -> Result<()> {
            self.log.push(format!("sysctl {key}={value}"));
            Ok(())
        }
    }

    #[test]
    fn setup_creates_one_device_and_one_route() {
        let mut ops = FakeOps::default();
        let (ifindex, mtu) = setup(&mut ops, "eth0", "10.244.0.0/16".parse().unwrap()).unwrap();
        assert_eq!((ifindex, mtu), (7, 1450));
        assert_eq!(ops.log[0], "vxlan skiff-vxlan port 8472 mtu 1450");
        assert_eq!(ops.log[1], "route 10.244.0.0/16 dev skiff-vxlan");
        assert_eq!(ops.log.iter().filter(|l| l.starts_with("route")).count(), 1, "no per-peer routes");
    }

    #[test]
    fn field_reads_ip_output() {
        let text = "5: skiff-vxlan: <BROADCAST,NOARP,UP> mtu 1450 qdisc noqueue \\ vxlan external id 0 srcport 0 0 dstport 8472 nolearning";
        assert_eq!(field(text, "mtu"), Some("1450"));
        assert_eq!(field(text, "dstport"), Some("8472"));
    }
}
