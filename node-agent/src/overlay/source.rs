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

use super::Cidr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the nodes file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the nodes file {path} does not parse: {reason}")]
    Parse { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One node of the cluster as the overlay sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    pub name: String,
    pub pod_cidr: Cidr,
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
pub fn parse_nodes(text: &str) -> std::result::Result<Vec<NodeNet>, String> {
    let file: NodesFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for entry in file.nodes {
        let pod_cidr: Cidr = entry.pod_cidr.parse().map_err(|e| format!("node {}: {e}", entry.name))?;
        let underlay_ip: Ipv4Addr = entry
            .underlay_ip
            .parse()
            .map_err(|_| format!("node {}: underlayIP `{}` is not an IPv4 address", entry.name, entry.underlay_ip))?;
        if let Some(other) = seen.insert(pod_cidr, entry.name.clone()) {
            return Err(format!("nodes {other} and {} have the same podCIDR {pod_cidr}", entry.name));
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
        let nodes = parse_nodes(&text).map_err(|reason| Error::Parse { path: self.path.clone(), reason })?;
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
                .contains("node a")
        );
        assert!(parse_nodes("nodes:\n- {name: a, podCIDR: 10.244.1.0/24, underlayIP: x}\n").is_err());
        let dup = "nodes:\n- {name: a, podCIDR: 10.244.1.0/24, underlayIP: 1.1.1.1}\n- {name: b, podCIDR: 10.244.1.0/24, underlayIP: 1.1.1.2}\n";
        assert!(parse_nodes(dup).unwrap_err().contains("same podCIDR"));
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
