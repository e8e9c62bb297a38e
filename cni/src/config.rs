//! The network configuration the plugin reads from stdin ([`NetConf`]): one plugin of
//! the list the node agent wrote, whose node-specific part is the shared contract
//! [`NodeNetConfig`] of `skiff_datapath::cni`.
//!
//! Parsing is strict and classifies failures the way the CNI spec wants them reported:
//! bytes that are not JSON are a decode failure (code 6), an unsupported `cniVersion`
//! is code 1, and a well-formed but wrong configuration is code 7.

use std::path::PathBuf;

use serde::Deserialize;
use skiff_datapath::{Ipv4Net, cni::NodeNetConfig};

use crate::error::{CniError, code};

/// The CNI versions this plugin answers for. 1.0.0 is the one containerd 1.6 uses; the
/// older ones share its result shape (with `"version":"4"` in each IP).
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

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
    pub pod_cidr: Ipv4Net,
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
            CniError::new(code::INVALID_CONFIG, "invalid network configuration", e.to_string()).with_version(&version)
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

    #[test]
    fn the_agents_conflist_round_trips_into_the_plugin_config() {
        let cfg = NodeNetConfig {
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            mtu: 1450,
            bpffs_dir: "/sys/fs/bpf/skiff/n1".into(),
            data_dir: "/var/lib/skiff/n1/cni".into(),
        };
        let list = skiff_datapath::cni::conflist(&cfg);
        // What containerd passes on stdin: the plugin with the list's name and version.
        let mut plugin = list["plugins"][0].clone();
        plugin["name"] = list["name"].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        let conf = NetConf::parse(plugin.to_string().as_bytes()).unwrap();
        assert_eq!(conf.node(), cfg);
    }
}
