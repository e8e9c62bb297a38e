//! The network configuration: what the node agent writes into the CNI configuration
//! list ([`NodeNetConfig`]) and what the plugin reads from stdin ([`NetConf`]).
//!
//! Parsing is strict and classifies failures the way the CNI spec wants them reported:
//! bytes that are not JSON are a decode failure (code 6), an unsupported `cniVersion`
//! is code 1, and a well-formed but wrong configuration is code 7.

use std::{fmt, net::Ipv4Addr, path::PathBuf, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CniError, code};

/// The CNI versions this plugin answers for. 1.0.0 is the one containerd 1.6 uses; the
/// older ones share its result shape (with `"version":"4"` in each IP).
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// An IPv4 network in CIDR notation, e.g. `10.244.1.0/24`. The address is the network
/// address (host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// Fails if `prefix > 32` or `network` has host bits set.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 32 {
            return Err(format!("prefix length {prefix} is larger than 32"));
        }
        let cidr = Self { network, prefix };
        if u32::from(network) & !cidr.mask() != 0 {
            return Err(format!(
                "{network}/{prefix} has host bits set (the network address is {}/{prefix})",
                Ipv4Addr::from(u32::from(network) & cidr.mask())
            ));
        }
        Ok(cidr)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// The node's own address in the range (`.1`): never handed to a pod.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// First and last address IPAM may hand out: from `.2` up to the one before the
    /// broadcast address. `None` if the range has no room for a pod (/31, /32).
    pub fn pod_range(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        if self.prefix > 30 {
            return None;
        }
        Some((Ipv4Addr::from(u32::from(self.network) + 2), Ipv4Addr::from(u32::from(self.broadcast()) - 1)))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not in CIDR notation (a.b.c.d/n)"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{s:?}: {prefix:?} is not a prefix length"))?;
        Self::new(addr, prefix)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The node-specific part of the plugin's configuration: what the node agent knows
/// about its node and writes into the CNI configuration list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetConfig {
    /// The node's `spec.podCIDR`; pods get addresses from `.2` upward.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Cidr,
    /// MTU of both ends of every pod veth (underlay MTU − 50 for VXLAN).
    pub mtu: u32,
    /// The node's bpffs directory, where skiff-node pins the maps and programs.
    pub bpffs_dir: PathBuf,
    /// Where the plugin keeps its IPAM state (one directory per node).
    pub data_dir: PathBuf,
}

impl NodeNetConfig {
    /// Checks the values a person could get wrong; the message says which and why.
    pub fn validate(&self) -> Result<(), String> {
        if self.pod_cidr.pod_range().is_none() {
            return Err(format!("podCIDR {} has no room for pods: use a /30 or larger", self.pod_cidr));
        }
        if !(68..=65_535).contains(&self.mtu) {
            return Err(format!("mtu {} is out of range (68..=65535)", self.mtu));
        }
        if !self.bpffs_dir.is_absolute() {
            return Err(format!("bpffsDir {:?} must be an absolute path", self.bpffs_dir));
        }
        if !self.data_dir.is_absolute() {
            return Err(format!("dataDir {:?} must be an absolute path", self.data_dir));
        }
        Ok(())
    }
}

/// The configuration a runtime passes on stdin: one plugin of the conflist, with the
/// list's `name` and `cniVersion` filled in (and `prevResult` for CHECK and DEL).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Cidr,
    pub mtu: u32,
    pub bpffs_dir: PathBuf,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

impl NetConf {
    /// Parses and validates stdin. The error's `cniVersion` is the requested one when it
    /// could be read.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                "cannot decode the network configuration on stdin",
                format!("not valid JSON: {e}"),
            )
        })?;
        let version = requested_version(&value)?;
        let conf: NetConf = serde_json::from_value(value).map_err(|e| {
            CniError::new(code::INVALID_CONFIG, "invalid network configuration", e.to_string()).with_version(&version)
        })?;
        conf.node().validate().map_err(|e| {
            CniError::new(code::INVALID_CONFIG, "invalid network configuration", e).with_version(&version)
        })?;
        Ok(conf)
    }

    pub fn node(&self) -> NodeNetConfig {
        NodeNetConfig {
            pod_cidr: self.pod_cidr,
            mtu: self.mtu,
            bpffs_dir: self.bpffs_dir.clone(),
            data_dir: self.data_dir.clone(),
        }
    }

    /// Whether results carry the pre-1.0 `"version":"4"` field in each IP.
    pub fn legacy_result(&self) -> bool {
        self.cni_version != "1.0.0"
    }
}

/// The `cniVersion` of a decoded configuration, checked against [`SUPPORTED_VERSIONS`].
pub fn requested_version(value: &serde_json::Value) -> Result<String, CniError> {
    let Some(version) = value.get("cniVersion") else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            "the field cniVersion is missing",
        ));
    };
    let Some(version) = version.as_str() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            "cniVersion must be a string",
        ));
    };
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("incompatible CNI version {version:?}"),
            format!("skiff-cni supports {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    Ok(version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_ranges() {
        let c: Ipv4Cidr = "10.244.1.0/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 244, 1, 255));
        assert_eq!(c.pod_range(), Some((Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 254))));
        assert!(c.contains(Ipv4Addr::new(10, 244, 1, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 2, 1)));
        let tiny: Ipv4Cidr = "10.0.0.4/30".parse().unwrap();
        assert_eq!(tiny.pod_range(), Some((Ipv4Addr::new(10, 0, 0, 6), Ipv4Addr::new(10, 0, 0, 6))));
        assert_eq!("10.0.0.4/31".parse::<Ipv4Cidr>().unwrap().pod_range(), None);
        assert!("10.244.1.5/24".parse::<Ipv4Cidr>().unwrap_err().contains("host bits"));
        assert!("10.244.1.0".parse::<Ipv4Cidr>().is_err());
        assert!("10.244.1.0/33".parse::<Ipv4Cidr>().is_err());
    }

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"skiff","type":"skiff-cni","podCIDR":"10.244.1.0/24","mtu":1450,"bpffsDir":"/sys/fs/bpf/skiff/n1","dataDir":"/var/lib/skiff/n1/cni"}"#;

    #[test]
    fn parses_the_conflist_plugin() {
        let conf = NetConf::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(conf.mtu, 1450);
        assert_eq!(conf.pod_cidr.to_string(), "10.244.1.0/24");
        assert!(!conf.legacy_result());
    }

    #[test]
    fn classifies_bad_configurations() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, code::DECODE);
        assert_eq!(
            NetConf::parse(GOOD.replace("1.0.0", "9.9.9").as_bytes()).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        let no_version = GOOD.replace(r#""cniVersion":"1.0.0","#, "");
        assert_eq!(NetConf::parse(no_version.as_bytes()).unwrap_err().code, code::INVALID_CONFIG);
        let bad_cidr = GOOD.replace("10.244.1.0/24", "10.244.1.0/31");
        let err = NetConf::parse(bad_cidr.as_bytes()).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(err.details.contains("no room"), "{err:?}");
        let bad_mtu = GOOD.replace("1450", "10");
        assert_eq!(NetConf::parse(bad_mtu.as_bytes()).unwrap_err().code, code::INVALID_CONFIG);
        let missing = GOOD.replace(r#","mtu":1450"#, "");
        assert!(NetConf::parse(missing.as_bytes()).unwrap_err().details.contains("mtu"));
    }
}
