//! The controller manager: the reconcilers that turn desired state into actual state
//! (Deployment → ReplicaSets → Pods, Service → EndpointSlices, Node → podCIDR, ...),
//! and the scheduler, run inside skiff-control while this replica holds the leader
//! Lease.
//!
//! Every controller talks to the API through `skiff_api::Client` over the in-process
//! transport, as user `system:kube-controller-manager`, so it gets the same validation,
//! RBAC and conflict semantics as a remote client. Controllers read from the shared
//! reflector caches in `Context` and never poll. Each controller lives in its own module
//! with one `run(ctx)` entry point registered in `CONTROLLERS`; it must only write the
//! objects it owns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ListableResource, Metadata};
use serde::de::DeserializeOwned;
use skiff_api::reflector::{self, Cache};
use skiff_api::{Client, ListParams};

use crate::apiserver::ApiServer;
use crate::apiserver::local::LocalTransport;
use crate::auth::{CONTROLLER_USER, SCHEDULER_USER};

pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod events;
pub mod gc;
pub mod job;
pub mod leader;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod owned_pods;
pub mod podgc;
pub mod replicaset;
pub mod serviceaccount;

/// Settings of the controllers (flags of skiff-control).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The pod network; node IPAM cuts a /24 per node from it.
    pub cluster_cidr: String,
    /// A node whose Lease is older than this becomes NotReady.
    pub node_monitor_grace_period: Duration,
    /// Pods on a NotReady node are evicted after this.
    pub pod_eviction_timeout: Duration,
    /// Who this replica is in leader election (unique per process).
    pub identity: String,
}

/// The shared reflector caches every controller reads from.
#[derive(Debug, Clone)]
pub struct Informers {
    pub pods: Cache<Pod>,
    pub nodes: Cache<Node>,
    pub services: Cache<Service>,
    pub endpoint_slices: Cache<EndpointSlice>,
    pub deployments: Cache<Deployment>,
    pub replica_sets: Cache<ReplicaSet>,
    pub daemon_sets: Cache<DaemonSet>,
    pub jobs: Cache<Job>,
    pub namespaces: Cache<Namespace>,
    pub service_accounts: Cache<ServiceAccount>,
    pub endpoints: Cache<Endpoints>,
    /// Node heartbeat Leases (namespace `kube-node-lease` only).
    pub node_leases: Cache<Lease>,
}

impl Informers {
    /// Starts one reflector per resource on `tasks`; they stop when the set is dropped.
    pub fn start(client: &Client, tasks: &mut tokio::task::JoinSet<()>) -> Self {
        fn one<K>(client: &Client, tasks: &mut tokio::task::JoinSet<()>) -> Cache<K>
        where
            K: ListableResource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
        {
            in_namespace(client, tasks, None)
        }
        fn in_namespace<K>(client: &Client, tasks: &mut tokio::task::JoinSet<()>, ns: Option<&str>) -> Cache<K>
        where
            K: ListableResource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
        {
            let (cache, fut) = reflector::reflector::<K>(client.clone(), ns.map(String::from), ListParams::default());
            tasks.spawn(fut);
            cache
        }
        Self {
            pods: one(client, tasks),
            nodes: one(client, tasks),
            services: one(client, tasks),
            endpoint_slices: one(client, tasks),
            deployments: one(client, tasks),
            replica_sets: one(client, tasks),
            daemon_sets: one(client, tasks),
            jobs: one(client, tasks),
            namespaces: one(client, tasks),
            service_accounts: one(client, tasks),
            endpoints: one(client, tasks),
            // Only node heartbeats: the leader-election Leases in kube-system change every
            // two seconds and no controller needs them.
            node_leases: in_namespace(client, tasks, Some(nodelifecycle::LEASE_NAMESPACE)),
        }
    }

    /// Waits until every cache has been filled once, so no controller acts on a partial view.
    pub async fn wait_synced(&self) {
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        self.services.wait_synced().await;
        self.endpoint_slices.wait_synced().await;
        self.deployments.wait_synced().await;
        self.replica_sets.wait_synced().await;
        self.daemon_sets.wait_synced().await;
        self.jobs.wait_synced().await;
        self.namespaces.wait_synced().await;
        self.service_accounts.wait_synced().await;
        self.endpoints.wait_synced().await;
        self.node_leases.wait_synced().await;
    }
}

/// What every controller gets.
#[derive(Debug)]
pub struct Context {
    pub client: Client,
    pub informers: Informers,
    pub config: ControllerConfig,
    pub events: events::Recorder,
}

/// The current time as the k8s-openapi timestamp type (its jiff is built without the
/// clock, so read it here).
pub fn now() -> k8s_openapi::jiff::Timestamp {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    k8s_openapi::jiff::Timestamp::from_microsecond(micros as i64).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
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
    ("nodelifecycle", |ctx| Box::pin(nodelifecycle::run(ctx))),
    ("serviceaccount", |ctx| Box::pin(serviceaccount::run(ctx))),
    ("daemonset", |ctx| Box::pin(daemonset::run(ctx))),
    ("job", |ctx| Box::pin(job::run(ctx))),
    ("garbage-collector", |ctx| Box::pin(gc::run(ctx))),
    ("pod-garbage-collector", |ctx| Box::pin(podgc::run(ctx))),
];

/// Campaigns for the controller-manager Lease and, while leading, runs the informers,
/// every controller and the scheduler. Losing the Lease stops them all; they start
/// again from fresh caches if this replica wins it back.
pub async fn run(api: Arc<ApiServer>, config: ControllerConfig) {
    let client = Client::new(
        Arc::new(LocalTransport::new(api.clone(), CONTROLLER_USER, &[])),
        "skiff-control/controller-manager",
    );
    let scheduler_client =
        Client::new(Arc::new(LocalTransport::new(api, SCHEDULER_USER, &[])), "skiff-control/scheduler");
    let election = leader::LeaderElection::new(client.clone(), "skiff-controller-manager", &config.identity);
    election
        .run(move || {
            let client = client.clone();
            let scheduler_client = scheduler_client.clone();
            let config = config.clone();
            async move { lead(client, scheduler_client, config).await }
        })
        .await;
}

async fn lead(client: Client, scheduler_client: Client, config: ControllerConfig) {
    let mut tasks = tokio::task::JoinSet::new();
    let informers = Informers::start(&client, &mut tasks);
    informers.wait_synced().await;
    let events = events::Recorder::new(client.clone(), "skiff-controller-manager");
    tasks.spawn(crate::scheduler::run::run(scheduler_client, informers.clone()));
    let ctx = Arc::new(Context { client, informers, config, events });
    for (name, start) in CONTROLLERS {
        tracing::info!(controller = name, "starting controller");
        tasks.spawn(start(ctx.clone()));
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r
            && e.is_panic()
        {
            tracing::error!(error = %e, "a controller task panicked");
        }
    }
}
