//! Where the overlay learns the cluster's nodes: each node's name, podCIDR and underlay
//! address. Until the control plane assigns `node.spec.podCIDR` and the agent watches
//! Nodes, a nodes file serves (YAML or JSON), re-read when it changes:
//!
//! ```yaml
//! nodes:
//! - {name: node1, podCIDR: 10.244.1.0/24, underlayIP: 192.168.77.11}
//! - {name: node2, podCIDR: 10.244.2.0/24, underlayIP: 192.168.77.12}
//! ```
//! A file that does not parse is reported and the last good set is kept.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Deserialize;
use skiff_datapath::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the nodes file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the nodes file {path} does not parse: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

/// What is wrong in a nodes file.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Yaml(#[from] serde_norway::Error),
    #[error("node {node}: podCIDR `{value}`: {source}")]
    PodCidr {
        node: String,
        value: String,
        #[source]
        source: ipnet::AddrParseError,
    },
    #[error("node {node}: underlayIP `{value}` is not an IPv4 address")]
    UnderlayIp {
        node: String,
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("nodes {first} and {second} have the same podCIDR {pod_cidr}")]
    SamePodCidr { first: String, second: String, pod_cidr: Ipv4Net },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One node of the cluster as the overlay sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    pub name: String,
    /// The node's podCIDR, as its network address.
    pub pod_cidr: Ipv4Net,
    pub underlay_ip: Ipv4Addr,
}

/// A source of the cluster's nodes. `poll` returns the full current set when it
/// changed since the last call, `None` otherwise.
pub trait NodeSource {
    fn poll(&mut self) -> Result<Option<Vec<NodeNet>>>;
}

#[derive(Deserialize)]
struct NodesFile {
    #[serde(default)]
    nodes: Vec<NodeEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NodeEntry {
    name: String,
    #[serde(rename = "podCIDR")]
    pod_cidr: String,
    #[serde(rename = "underlayIP")]
    underlay_ip: String,
}

/// Parses a nodes file's text.
pub fn parse_nodes(text: &str) -> std::result::Result<Vec<NodeNet>, ParseError> {
    let file: NodesFile = serde_norway::from_str(text)?;
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for entry in file.nodes {
        let pod_cidr = match entry.pod_cidr.parse::<Ipv4Net>() {
            Ok(net) => net.trunc(),
            Err(source) => return Err(ParseError::PodCidr { node: entry.name, value: entry.pod_cidr, source }),
        };
        let underlay_ip: Ipv4Addr = match entry.underlay_ip.parse() {
            Ok(ip) => ip,
            Err(source) => return Err(ParseError::UnderlayIp { node: entry.name, value: entry.underlay_ip, source }),
        };
        if let Some(first) = seen.insert(pod_cidr, entry.name.clone()) {
            return Err(ParseError::SamePodCidr { first, second: entry.name, pod_cidr });
        }
        out.push(NodeNet { name: entry.name, pod_cidr, underlay_ip });
    }
    Ok(out)
}

/// The nodes file source.
#[derive(Debug)]
pub struct NodesFileSource {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
}

impl NodesFileSource {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), stamp: None }
    }
}

impl NodeSource for NodesFileSource {
    fn poll(&mut self) -> Result<Option<Vec<NodeNet>>> {
        let read_err = |source| Error::Read { path: self.path.clone(), source };
        let meta = std::fs::metadata(&self.path).map_err(read_err)?;
        let stamp = (meta.modified().map_err(read_err)?, meta.len());
        if self.stamp == Some(stamp) {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.path).map_err(read_err)?;
        // Remember the stamp even on a parse error: the same broken file is reported once.
        self.stamp = Some(stamp);
        let nodes = parse_nodes(&text).map_err(|source| Error::Parse { path: self.path.clone(), source })?;
        Ok(Some(nodes))
    }
}

/// The nodes of the API's Node objects (a reflector's cache): each node's name,
/// `spec.podCIDR` and InternalIP. A node without both (a new node before the node IPAM
/// controller gave it a podCIDR) is left out until it has them.
pub struct ApiNodeSource {
    cache: skiff_api::reflector::Cache<k8s_openapi::api::core::v1::Node>,
    last: Option<Vec<NodeNet>>,
}

impl ApiNodeSource {
    pub fn new(cache: skiff_api::reflector::Cache<k8s_openapi::api::core::v1::Node>) -> Self {
        Self { cache, last: None }
    }
}

/// What the overlay needs of one Node object, if it has it.
pub fn node_net(node: &k8s_openapi::api::core::v1::Node) -> Option<NodeNet> {
    let name = node.metadata.name.clone()?;
    let pod_cidr: Ipv4Net = node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
    let underlay_ip = node
        .status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())?;
    Some(NodeNet { name, pod_cidr: pod_cidr.trunc(), underlay_ip })
}

impl NodeSource for ApiNodeSource {
    fn poll(&mut self) -> Result<Option<Vec<NodeNet>>> {
        if !self.cache.is_synced() {
            return Ok(None);
        }
        let mut nodes: Vec<NodeNet> = self.cache.list().iter().filter_map(|n| node_net(n)).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        if self.last.as_ref() == Some(&nodes) {
            return Ok(None);
        }
        self.last = Some(nodes.clone());
        Ok(Some(nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nodes_and_rejects_bad_entries() {
        let nodes = parse_nodes(
            "nodes:\n- {name: a, podCIDR: 10.244.1.0/24, underlayIP: 192.168.77.11}\n- {name: b, podCIDR: 10.244.2.0/24, underlayIP: 192.168.77.12}\n",
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].underlay_ip, Ipv4Addr::new(192, 168, 77, 12));
        assert!(
            parse_nodes("nodes:\n- {name: a, podCIDR: 10.244.1.0, underlayIP: 1.2.3.4}\n")
                .unwrap_err()
                .to_string()
                .contains("node a")
        );
        assert!(parse_nodes("nodes:\n- {name: a, podCIDR: 10.244.1.0/24, underlayIP: x}\n").is_err());
        let dup = "nodes:\n- {name: a, podCIDR: 10.244.1.0/24, underlayIP: 1.1.1.1}\n- {name: b, podCIDR: 10.244.1.0/24, underlayIP: 1.1.1.2}\n";
        assert!(parse_nodes(dup).unwrap_err().to_string().contains("same podCIDR"));
        assert!(parse_nodes("nodes: [").is_err());
    }

    #[test]
    fn file_source_reports_changes_once() {
        let dir = std::env::temp_dir().join(format!("skiff-nodes-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nodes.yaml");
        std::fs::write(&path, "nodes:\n- {name: a, podCIDR: 10.244.1.0/24, underlayIP: 192.168.77.11}\n").unwrap();
        let mut src = NodesFileSource::new(&path);
        assert_eq!(src.poll().unwrap().unwrap().len(), 1);
        assert!(src.poll().unwrap().is_none());
        std::fs::write(&path, "nodes: [\n").unwrap();
        assert!(src.poll().is_err());
        assert!(src.poll().unwrap().is_none(), "a broken file is reported once");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
