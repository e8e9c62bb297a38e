//! Node IPAM: gives every Node without `spec.podCIDR` the lowest free /24 of the
//! cluster CIDR (`spec.podCIDR` and `spec.podCIDRs`), from which its node agent
//! addresses pods.
//!
//! The allocator (`CidrSet`) lives in memory and is rebuilt from the nodes' own specs
//! whenever this replica starts leading, before anything is allocated, so no two nodes
//! ever share a range across restarts or leader changes. One worker runs reconciles,
//! so allocations never race each other. When the range is exhausted the node gets a
//! Warning event `CIDRNotAvailable` and waits until a deleted node frees a range.
//!
//! It must not change a podCIDR once set (the node's pods already use it), and handles
//! IPv4 only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use skiff_api::Patch;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};

use super::Context;
use crate::events::EventType;

/// The size of each node's range, as upstream's default `--node-cidr-mask-size`.
pub const NODE_MASK: u8 = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{cidr:?} is not an IPv4 CIDR (a.b.c.d/n)")]
    Parse {
        cidr: String,
        #[source]
        source: ipnet::AddrParseError,
    },
    #[error(
        "cluster CIDR {cidr} is smaller than one /{NODE_MASK} node range; give a prefix of /{NODE_MASK} or shorter"
    )]
    TooSmall { cidr: Ipv4Net },
    #[error("{0} is not a /{NODE_MASK} inside the cluster CIDR")]
    OutOfRange(String),
    #[error("{cidr} is already allocated to node {owner}")]
    Taken { cidr: String, owner: String },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting podCIDR {cidr} on node {node} failed: {source}")]
    Patch {
        node: String,
        cidr: String,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The /24s of the cluster CIDR and who holds each.
#[derive(Debug, Clone)]
pub struct CidrSet {
    /// The cluster CIDR, host bits cleared.
    cluster: Ipv4Net,
    /// Node range → node.
    used: BTreeMap<Ipv4Net, String>,
}

impl CidrSet {
    pub fn new(cluster_cidr: Ipv4Net) -> Result<Self, CidrError> {
        if cluster_cidr.prefix_len() > NODE_MASK {
            return Err(CidrError::TooSmall { cidr: cluster_cidr });
        }
        Ok(Self { cluster: cluster_cidr.trunc(), used: BTreeMap::new() })
    }

    /// The node range `cidr` names (host bits ignored), if it is one of ours.
    fn range_of(&self, cidr: &str) -> Result<Ipv4Net, CidrError> {
        let net: Ipv4Net = cidr.trim().parse().map_err(|source| CidrError::Parse { cidr: cidr.to_string(), source })?;
        if net.prefix_len() != NODE_MASK || !self.cluster.contains(&net) {
            return Err(CidrError::OutOfRange(cidr.to_string()));
        }
        Ok(net.trunc())
    }

    fn ranges(&self) -> impl Iterator<Item = Ipv4Net> {
        // `new` checked that the cluster CIDR holds at least one node range.
        self.cluster.subnets(NODE_MASK).into_iter().flatten()
    }

    /// Records a node's existing range (recovery, or a node created with one).
    pub fn occupy(&mut self, node: &str, cidr: &str) -> Result<(), CidrError> {
        let range = self.range_of(cidr)?;
        match self.used.get(&range) {
            Some(owner) if owner != node => Err(CidrError::Taken { cidr: cidr.to_string(), owner: owner.clone() }),
            _ => {
                self.used.insert(range, node.to_string());
                Ok(())
            }
        }
    }

    /// The range already held by `node`, else the lowest free one; `None` when exhausted.
    pub fn allocate(&mut self, node: &str) -> Option<String> {
        if let Some(c) = self.held_by(node) {
            return Some(c);
        }
        let range = self.ranges().find(|r| !self.used.contains_key(r))?;
        self.used.insert(range, node.to_string());
        Some(range.to_string())
    }

    pub fn held_by(&self, node: &str) -> Option<String> {
        self.used.iter().find(|(_, n)| n.as_str() == node).map(|(r, _)| r.to_string())
    }

    /// Frees whatever `node` holds.
    pub fn release(&mut self, node: &str) -> bool {
        let before = self.used.len();
        self.used.retain(|_, n| n != node);
        before != self.used.len()
    }

    pub fn free(&self) -> u32 {
        let count = 1u32 << (NODE_MASK - self.cluster.prefix_len());
        count - self.used.len() as u32
    }
}

fn pod_cidr(node: &Node) -> Option<&str> {
    node.spec.as_ref()?.pod_cidr.as_deref().filter(|c| !c.is_empty())
}

struct State {
    cidrs: Mutex<CidrSet>,
    /// Nodes told about exhaustion, so one waiting node gets one event, not one per retry.
    warned: Mutex<BTreeSet<String>>,
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    let mut cidrs = match CidrSet::new(ctx.config.cluster_cidr) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(cluster_cidr = %ctx.config.cluster_cidr, error = %e, "node IPAM disabled: bad --cluster-cidr");
            return;
        }
    };
    // Recover before allocating anything: the caches are synced when controllers start.
    for node in ctx.informers.nodes.list() {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(c) = pod_cidr(&node)
            && let Err(e) = cidrs.occupy(&name, c)
        {
            tracing::warn!(node = %name, pod_cidr = c, error = %e, "node's podCIDR cannot be recorded");
        }
    }
    tracing::info!(cluster_cidr = %ctx.config.cluster_cidr, free = cidrs.free(), "node IPAM ready");
    let state = Arc::new(State { cidrs: Mutex::new(cidrs), warned: Mutex::new(BTreeSet::new()) });
    let queue: WorkQueue<String> = WorkQueue::new();
    let feeder = {
        let (ctx, queue) = (ctx.clone(), queue.clone());
        async move {
            let mut nodes = ctx.informers.nodes.subscribe();
            while let Some(c) = nodes.recv().await {
                match c {
                    Change::Applied(n) => queue.add(n.metadata.name.clone().unwrap_or_default()),
                    Change::Deleted(n) => {
                        queue.add(n.metadata.name.clone().unwrap_or_default());
                        // A range may have become free: nodes waiting for one try again.
                        for waiting in ctx.informers.nodes.list().iter().filter(|n| pod_cidr(n).is_none()) {
                            queue.add(waiting.metadata.name.clone().unwrap_or_default());
                        }
                    }
                }
            }
        }
    };
    // One worker: allocation decisions are serialised.
    let workers = run_workers("nodeipam", queue, 1, move |name: String| {
        let (ctx, state) = (ctx.clone(), state.clone());
        async move { reconcile(&ctx, &state, &name).await }
    });
    tokio::join!(feeder, workers);
}

async fn reconcile(ctx: &Context, state: &State, name: &str) -> Result<Action> {
    let Some(node) = ctx.informers.nodes.get_named(None, name) else {
        if state.cidrs.lock().unwrap().release(name) {
            tracing::info!(node = name, "node deleted; its pod range is free");
        }
        state.warned.lock().unwrap().remove(name);
        return Ok(Action::Done);
    };
    if let Some(c) = pod_cidr(&node) {
        if let Err(e) = state.cidrs.lock().unwrap().occupy(name, c) {
            tracing::warn!(node = name, pod_cidr = c, error = %e, "node's podCIDR conflicts; leaving it");
        }
        return Ok(Action::Done);
    }
    let allocated = state.cidrs.lock().unwrap().allocate(name);
    let Some(cidr) = allocated else {
        let first = state.warned.lock().unwrap().insert(name.to_string());
        if first {
            tracing::warn!(node = name, cluster_cidr = %ctx.config.cluster_cidr, "no free pod range for node");
            let msg = format!(
                "Node {name} status is now: CIDRNotAvailable (every /{NODE_MASK} of {} is in use; delete a node or widen --cluster-cidr)",
                ctx.config.cluster_cidr
            );
            ctx.events.record(node.as_ref(), EventType::Warning, "CIDRNotAvailable", &msg).await;
        }
        // Deletions requeue waiting nodes; the periodic look is a safety net only.
        return Ok(Action::RequeueAfter(Duration::from_secs(60)));
    };
    state.warned.lock().unwrap().remove(name);
    let patch = Patch::Merge(serde_json::json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}));
    match ctx.client.patch::<Node>(None, name, None, &patch).await {
        Ok(_) => {
            tracing::info!(node = name, pod_cidr = %cidr, "allocated pod range");
            Ok(Action::Done)
        }
        Err(e) if e.is_not_found() => {
            state.cidrs.lock().unwrap().release(name);
            Ok(Action::Done)
        }
        // Keep the range reserved for this node: the retry patches the same one.
        Err(source) => Err(Error::Patch { node: name.to_string(), cidr, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_lowest_free_and_reuses_released() {
        let mut s = CidrSet::new(cidr("10.244.0.0/16")).unwrap();
        assert_eq!(s.free(), 256);
        assert_eq!(s.allocate("a").as_deref(), Some("10.244.0.0/24"));
        assert_eq!(s.allocate("b").as_deref(), Some("10.244.1.0/24"));
        assert_eq!(s.allocate("a").as_deref(), Some("10.244.0.0/24"), "idempotent per node");
        assert!(s.release("a"));
        assert_eq!(s.allocate("c").as_deref(), Some("10.244.0.0/24"));
    }

    #[test]
    fn recovery_prevents_sharing() {
        let mut s = CidrSet::new(cidr("10.244.0.0/16")).unwrap();
        s.occupy("old", "10.244.0.0/24").unwrap();
        s.occupy("old2", "10.244.2.0/24").unwrap();
        assert_eq!(s.allocate("new").as_deref(), Some("10.244.1.0/24"));
        assert_eq!(s.allocate("new2").as_deref(), Some("10.244.3.0/24"));
        assert!(matches!(s.occupy("x", "10.244.0.0/24"), Err(CidrError::Taken { .. })));
        assert!(matches!(s.occupy("x", "10.245.0.0/24"), Err(CidrError::OutOfRange(_))));
        assert!(matches!(s.occupy("x", "10.244.5.0/25"), Err(CidrError::OutOfRange(_))));
    }

    #[test]
    fn exhaustion_and_bad_config() {
        let mut s = CidrSet::new(cidr("10.0.0.0/23")).unwrap();
        assert!(s.allocate("a").is_some());
        assert_eq!(s.allocate("b").as_deref(), Some("10.0.1.0/24"));
        assert_eq!(s.allocate("c"), None);
        assert!(matches!(CidrSet::new(cidr("10.0.0.0/25")), Err(CidrError::TooSmall { .. })));
        assert!(matches!(s.occupy("x", "nonsense"), Err(CidrError::Parse { .. })));
        // Host bits in the flag are ignored, as a network address is meant.
        assert_eq!(CidrSet::new(cidr("10.1.2.3/16")).unwrap().allocate("a").as_deref(), Some("10.1.0.0/24"));
    }
}
