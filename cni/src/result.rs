//! The CNI result ADD prints (spec 1.0.0 "Success" object).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Gateway address every pod routes through: link-local, so it never collides with a
/// pod or node address. The pod has a permanent neighbour entry for it pointing at the
/// host-side veth, so no proxy ARP is needed on the node.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Only in results before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces` of the interface holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {}

/// What ADD set up for one pod; enough to print its result again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork<'a> {
    pub ip: Ipv4Addr,
    pub host_veth: &'a str,
    pub host_mac: &'a str,
    pub ifname: &'a str,
    pub pod_mac: &'a str,
    pub netns: &'a str,
}

impl CniResult {
    /// The pod's address is a /32 on `eth0`, exactly as configured on the interface:
    /// the pod reaches everything, its own podCIDR neighbours included, through the
    /// gateway.
    pub fn new(version: &str, legacy: bool, pod: &PodNetwork<'_>) -> Self {
        Self {
            cni_version: version.to_owned(),
            interfaces: vec![
                Interface { name: pod.host_veth.to_owned(), mac: pod.host_mac.to_owned(), sandbox: None },
                Interface {
                    name: pod.ifname.to_owned(),
                    mac: pod.pod_mac.to_owned(),
                    sandbox: Some(pod.netns.to_owned()),
                },
            ],
            ips: vec![IpConfig {
                version: legacy.then(|| "4".to_owned()),
                address: format!("{}/32", pod.ip),
                gateway: Some(GATEWAY.to_string()),
                interface: Some(1),
            }],
            routes: vec![Route { dst: "0.0.0.0/0".into(), gw: Some(GATEWAY.to_string()) }],
            dns: Dns {},
        }
    }
}

/// Formats a MAC address as the spec wants it (`aa:bb:cc:dd:ee:ff`).
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut out {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_shape() {
        let pod = PodNetwork {
            ip: Ipv4Addr::new(10, 244, 1, 2),
            host_veth: "sk0123456789ab",
            host_mac: "aa:bb:cc:dd:ee:01",
            ifname: "eth0",
            pod_mac: "aa:bb:cc:dd:ee:02",
            netns: "/var/run/netns/cni-1",
        };
        let json = serde_json::to_value(CniResult::new("1.0.0", false, &pod)).unwrap();
        assert_eq!(json["ips"][0]["address"], "10.244.1.2/32");
        assert_eq!(json["ips"][0]["interface"], 1);
        assert!(json["ips"][0].get("version").is_none());
        assert_eq!(json["interfaces"][1]["sandbox"], "/var/run/netns/cni-1");
        assert_eq!(json["routes"][0]["gw"], "169.254.1.1");
        let legacy = serde_json::to_value(CniResult::new("0.4.0", true, &pod)).unwrap();
        assert_eq!(legacy["ips"][0]["version"], "4");
    }

    #[test]
    fn macs() {
        assert_eq!(format_mac(&[0xaa, 1, 2, 3, 4, 0xff]), "aa:01:02:03:04:ff");
        assert_eq!(parse_mac("aa:01:02:03:04:ff"), Some([0xaa, 1, 2, 3, 4, 0xff]));
        assert_eq!(parse_mac("aa:01:02:03:04"), None);
        assert_eq!(parse_mac("aa:01:02:03:04:ff:00"), None);
    }
}
