//! The reconcilers that turn desired state into actual state (Deployment → ReplicaSets
//! → Pods, Service → EndpointSlices, Node → podCIDR, LoadBalancer Service → address,
//! ...), run by `crate::manager` while this replica holds the leader Lease.
//!
//! Every controller talks to the API through the `skiff_api::Client` in `Context` (user
//! `system:kube-controller-manager`). Controllers read from the shared reflector caches
//! in `Context` and never poll. Each controller lives in its own module
//! with one `run(ctx)` entry point registered in `CONTROLLERS`; it must only write the
//! objects it owns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use skiff_api::Client;

use crate::events;
use crate::informers::Informers;

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpointslice;
pub mod gc;
pub mod hpa;
pub mod job;
pub mod lbipam;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod owned_pods;
pub mod podgc;
pub mod replicaset;
pub mod resourcequota;
pub mod rootca;
pub mod serviceaccount;
pub mod statefulset;
pub mod volume;

/// Settings of the controllers (flags of skiff-control).
#[derive(Debug, Clone)]
pub struct Config {
    /// The pod network; node IPAM cuts a /24 per node from it.
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The addresses LoadBalancer Services are given (`lbipam`); empty gives none.
    pub service_lb_pool: Vec<ipnet::Ipv4Net>,
    /// A node whose Lease is older than this becomes NotReady.
    pub node_monitor_grace_period: Duration,
    /// Pods on a NotReady node are evicted after this.
    pub pod_eviction_timeout: Duration,
    /// Where the local-path provisioner puts volumes on nodes that do not announce a
    /// directory of their own: `<dir>/<node>/<volume>`.
    pub local_path_dir: std::path::PathBuf,
    /// Who this replica is in leader election (unique per process).
    pub identity: String,
    /// The cluster CA certificate (PEM) that `rootca` publishes in every namespace as
    /// ConfigMap `kube-root-ca.crt`; empty publishes nothing.
    pub root_ca_pem: String,
    /// How often `hpa` reconciles each HorizontalPodAutoscaler.
    pub hpa_sync_period: Duration,
    /// The default scale-down stabilization window of `hpa`.
    pub hpa_downscale_stabilization: Duration,
}

/// What every controller gets.
#[derive(Debug)]
pub struct Context {
    pub client: Client,
    pub informers: Informers,
    pub config: Config,
    pub events: events::Recorder,
}

type ControllerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// A controller's entry point: runs until aborted.
pub type StartFn = fn(Arc<Context>) -> ControllerFuture;

/// The controllers, by name. Each runs until its task is aborted (leadership lost).
pub const CONTROLLERS: &[(&str, StartFn)] = &[
    ("replicaset", replicaset::start),
    ("deployment", deployment::start),
    ("endpointslice", |ctx| Box::pin(endpointslice::run(ctx))),
    ("nodeipam", |ctx| Box::pin(nodeipam::run(ctx))),
    ("lbipam", |ctx| Box::pin(lbipam::run(ctx))),
    ("nodelifecycle", |ctx| Box::pin(nodelifecycle::run(ctx))),
    ("serviceaccount", |ctx| Box::pin(serviceaccount::run(ctx))),
    ("root-ca-cert-publisher", |ctx| Box::pin(rootca::run(ctx))),
    ("daemonset", |ctx| Box::pin(daemonset::run(ctx))),
    ("job", |ctx| Box::pin(job::run(ctx))),
    ("statefulset", |ctx| Box::pin(statefulset::run(ctx))),
    ("cronjob", |ctx| Box::pin(cronjob::run(ctx))),
    ("namespace", |ctx| Box::pin(namespace::run(ctx))),
    ("disruption", |ctx| Box::pin(disruption::run(ctx))),
    ("resourcequota", |ctx| Box::pin(resourcequota::run(ctx))),
    ("garbage-collector", |ctx| Box::pin(gc::run(ctx))),
    ("pod-garbage-collector", |ctx| Box::pin(podgc::run(ctx))),
    ("persistentvolume-binder", |ctx| Box::pin(volume::binder::run(ctx))),
    ("local-path-provisioner", |ctx| Box::pin(volume::provisioner::run(ctx))),
    ("pvc-protection", |ctx| Box::pin(volume::protection::run(ctx))),
    ("horizontal-pod-autoscaler", |ctx| Box::pin(hpa::run(ctx))),
];
