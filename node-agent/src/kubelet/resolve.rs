//! What a container needs from the API and the disk before it can be created: its
//! environment, its mounts (the pod's volumes, made on the host first) and its cgroup
//! settings. The work is in `env`, `volumes` and `resources`; this module gives them
//! the node's context (its name, address, capacity, the Services for the Service
//! variables) and the API lookups (ConfigMaps, Secrets, ServiceAccount tokens, cached).
//! Errors are messages for the container's waiting state (CreateContainerConfigError).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_api::Client;
use skiff_api::reflector::Cache;

use super::config::Resolved;
use super::env::{self, EnvContext};
use super::lookup::TokenCache;
use super::observed::SandboxObs;
use super::volumes::{self, VolumeContext};

/// Resolves env, volumes and resources for the node's pods.
pub struct Resolver {
    lookup: TokenCache<Client>,
    services: Cache<Service>,
    node_name: String,
    host_ip: String,
    /// The node's capacity (cpu, memory), which unset limits read as.
    capacity: BTreeMap<String, Quantity>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("node_name", &self.node_name).finish_non_exhaustive()
    }
}

impl Resolver {
    pub fn new(api: Client, services: Cache<Service>, node_name: &str, host_ip: &str) -> Self {
        let facts = crate::node::facts::MachineFacts::read();
        let capacity = BTreeMap::from([
            ("cpu".to_owned(), Quantity(facts.cpus.to_string())),
            ("memory".to_owned(), Quantity(format!("{}Ki", facts.memory_kib))),
        ]);
        Self {
            lookup: TokenCache::new(api),
            services,
            node_name: node_name.to_owned(),
            host_ip: host_ip.to_owned(),
            capacity,
        }
    }

    fn context(&self, pod: &Pod, pod_ip: Option<&str>) -> EnvContext {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
        let pod_ip = if host_network { Some(self.host_ip.as_str()) } else { pod_ip.filter(|ip| !ip.is_empty()) };
        let mut services = self.services.list_namespace(namespace);
        if namespace != "default"
            && let Some(kubernetes) = self.services.get_named(Some("default"), "kubernetes")
        {
            services.push(kubernetes);
        }
        EnvContext {
            node_name: self.node_name.clone(),
            host_ip: self.host_ip.clone(),
            pod_ips: pod_ip.map(str::to_owned).into_iter().collect(),
            node_allocatable: self.capacity.clone(),
            services: services.iter().map(|s| Service::clone(s)).collect(),
        }
    }

    /// Makes (or refreshes) the pod's volumes on the host; idempotent, and cheap when
    /// nothing changed.
    pub async fn prepare(&self, pod: &Pod, pod_dir: &Path, pod_ip: Option<&str>) -> Result<(), String> {
        let ctx = self.context(pod, pod_ip);
        let vctx = VolumeContext { env: &ctx, secrets_on_tmpfs: true };
        volumes::prepare_volumes(pod, pod_dir, &vctx, &self.lookup).await.map(drop).map_err(|e| e.to_string())
    }

    /// The environment, mounts and cgroup settings of one container instance.
    pub async fn resolve(
        &self,
        pod: &Pod,
        c: &Container,
        sandbox: &SandboxObs,
        pod_dir: &Path,
    ) -> Result<Resolved, String> {
        let ctx = self.context(pod, Some(&sandbox.ip));
        let envs = env::container_env(pod, c, &ctx, &self.lookup).await.map_err(|e| e.to_string())?;
        let vctx = VolumeContext { env: &ctx, secrets_on_tmpfs: true };
        let prepared = volumes::prepare_volumes(pod, pod_dir, &vctx, &self.lookup).await.map_err(|e| e.to_string())?;
        let mounts = volumes::container_mounts(pod, c, &prepared, &envs).map_err(|e| e.to_string())?;
        let resources = super::resources::linux_resources(pod, c, &self.capacity).map_err(|e| e.to_string())?;
        Ok(Resolved { envs, mounts, resources: Some(resources) })
    }

    /// Unmounts and removes the pod's volumes, and forgets its tokens.
    pub fn clean_up(&self, uid: &str, pod_dir: &Path) -> Result<(), String> {
        self.lookup.forget_pod(uid);
        volumes::cleanup_volumes(pod_dir).map_err(|e| e.to_string())
    }
}
