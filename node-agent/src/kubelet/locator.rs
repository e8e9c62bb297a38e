//! Where a pod's containers are, for the node's server (`kubectl logs`, `exec`,
//! `port-forward`): read from what the pod workers last observed, never from the
//! runtime, so a lookup does not block.

use std::net::IpAddr;
use std::sync::Arc;

use super::Shared;
use super::config::container_log_path;
use crate::server::{ContainerLocation, ContainerLocator, LocateError};

/// The kubelet's [`ContainerLocator`].
pub struct Locator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locator").finish_non_exhaustive()
    }
}

impl Locator {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl ContainerLocator for Locator {
    fn locate(&self, namespace: &str, pod: &str, container: Option<&str>) -> Result<ContainerLocation, LocateError> {
        let not_found = || LocateError::PodNotFound { namespace: namespace.into(), pod: pod.into() };
        let (uid, key, observed) = {
            let view = self.shared.view.lock().unwrap();
            let (uid, (key, observed)) = view
                .iter()
                .filter(|(_, (k, _))| k.ns() == Some(namespace) && k.name == pod)
                .max_by_key(|(_, (_, o))| o.latest_sandbox().map(|s| s.created_at))
                .ok_or_else(not_found)?;
            (uid.clone(), key.clone(), observed.clone())
        };
        let spec = self.shared.pod_by_uid(&uid, &key).and_then(|p| p.spec.clone());
        let regular: Vec<String> = spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.clone())).collect();
        let init: Vec<String> =
            spec.iter().flat_map(|s| s.init_containers.iter().flatten().map(|c| c.name.clone())).collect();
        let name = match container {
            Some(c) if regular.iter().chain(&init).any(|n| n == c) => c.to_owned(),
            Some(c) => {
                return Err(LocateError::ContainerNotFound {
                    pod: pod.into(),
                    container: c.into(),
                    available: regular,
                });
            }
            None if regular.len() == 1 => regular[0].clone(),
            None => return Err(LocateError::ContainerNameRequired { pod: pod.into(), available: regular }),
        };
        let latest = observed
            .latest_any(&name)
            .ok_or_else(|| LocateError::NotCreated { pod: pod.into(), container: name.clone() })?;
        let log_dir = self.shared.settings.pod_log_dir(namespace, pod, &uid);
        let sandbox = observed.latest_sandbox();
        Ok(ContainerLocation {
            container_id: latest.id.clone(),
            running: latest.is_running(),
            log_path: log_dir.join(container_log_path(&name, latest.attempt)),
            previous_log_path: observed.previous_any(&name).map(|p| log_dir.join(container_log_path(&name, p.attempt))),
            sandbox_id: sandbox.map(|s| s.id.clone()).unwrap_or_default(),
            pod_ip: sandbox.and_then(|s| s.ip.parse::<IpAddr>().ok()),
        })
    }
}
