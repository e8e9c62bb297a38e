//! The shared reflector caches the controllers and the scheduler read from: one
//! list-then-watch per resource, started once per term of leadership, so no component
//! polls and no two components watch the same resource twice.
//!
//! It must not act on what it caches: readers subscribe and decide.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ListableResource, Metadata};
use serde::de::DeserializeOwned;
use skiff_api::reflector::{self, Cache};
use skiff_api::{Client, ListParams};

/// The namespace of node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

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
    pub persistent_volume_claims: Cache<PersistentVolumeClaim>,
    pub persistent_volumes: Cache<PersistentVolume>,
    pub storage_classes: Cache<StorageClass>,
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
            node_leases: in_namespace(client, tasks, Some(NODE_LEASE_NAMESPACE)),
            persistent_volume_claims: one(client, tasks),
            persistent_volumes: one(client, tasks),
            storage_classes: one(client, tasks),
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
        self.persistent_volume_claims.wait_synced().await;
        self.persistent_volumes.wait_synced().await;
        self.storage_classes.wait_synced().await;
    }
}
