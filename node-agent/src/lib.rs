//! skiff-node: the node agent. One process per node doing the work of kubelet,
//! kube-proxy and flanneld. Modules by role:
//! - [`datapath`]: loads the embedded BPF programs and pins them (never writes Service
//!   state); the pin layout, attach, netlink and the CNI conflist it shares with
//!   skiff-cni are in the `skiff_datapath` library;
//! - [`proxy`]: Services + EndpointSlices → desired load-balancer state → the one
//!   reconciler that writes the Service maps;
//! - [`overlay`]: the VXLAN device and the nodes map (peer podCIDR → underlay address);
//! - [`dns`]: cluster DNS on the node, fed by the proxy's Service and EndpointSlice caches;
//! - [`node`]: the Node object, its status and its heartbeat Lease;
//! - [`kubelet`]: this node's pods, run on the container runtime through [`cri`] (the
//!   CRI v1 client over containerd's socket);
//! - [`runner`]: when each role syncs (after changes, bounded in frequency);
//! - [`agent`]: the `skiff-node` command line and the main loop that ties roles together;
//! - [`server`]: the kubelet's HTTPS server (:10250): container logs, exec and
//!   port-forward for the API server;
//! - [`metrics`]: what `/metrics` of that server reports (kubelet, datapath counters,
//!   map fill levels, sync latencies).

pub mod agent;
pub mod cri;
pub mod datapath;
pub mod dns;
pub mod kubelet;
pub mod metrics;
pub mod node;
pub mod overlay;
pub mod proxy;
pub mod runner;
pub mod server;
