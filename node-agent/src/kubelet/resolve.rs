//! What a container needs from the API and the disk before it can be created: its
//! environment and its mounts (volumes), and the pod's volumes made on the host first.
//! Errors are messages for the container's waiting state (CreateContainerConfigError).

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod};
use skiff_api::Client;

use super::config::Resolved;
use super::observed::SandboxObs;
use crate::cri::api;

/// Resolves env and volumes through the API.
#[derive(Clone)]
pub struct Resolver {
    #[expect(dead_code, reason = "ConfigMap, Secret and token lookups come with env.rs and volumes.rs")]
    api: Client,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    pub fn new(api: Client) -> Self {
        Self { api }
    }

    /// Makes the pod's volumes on the host (idempotent).
    pub async fn prepare(&self, _pod: &Pod, _pod_dir: &Path) -> Result<(), String> {
        Ok(())
    }

    /// The environment and mounts of one container instance.
    pub async fn resolve(
        &self,
        _pod: &Pod,
        c: &Container,
        _sandbox: &SandboxObs,
        _pod_dir: &Path,
    ) -> Result<Resolved, String> {
        let envs = c
            .env
            .iter()
            .flatten()
            .map(|e| api::KeyValue { key: e.name.clone(), value: e.value.clone().unwrap_or_default() })
            .collect();
        Ok(Resolved { envs, mounts: Vec::new(), resources: None })
    }
}
