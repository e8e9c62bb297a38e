//! The kubelet's side of its probes (the probing itself is `probe`): keeps each pod's
//! probe workers in line with its running containers, tells the plan which containers
//! failed liveness or startup, tells the status which are ready and started, and runs
//! preStop hooks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::mpsc;

use super::observed::Observed;
use super::probe::lifecycle::{Hook, run_hook};
use super::probe::{ContainerStart, ProbeManager, ProbeUpdate, RunningContainer};
use super::probe::{ProbeKind, ProbeOutcome};
use super::status::ProbeVerdict;
use crate::cri::CriClient;

/// Probe state of every pod on the node.
pub struct Probes {
    manager: ProbeManager<CriClient>,
    cri: Arc<CriClient>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

impl Probes {
    /// The probes and the channel of their results (the kubelet wakes pod workers and
    /// records Unhealthy events from it).
    pub fn new(cri: CriClient) -> (Self, mpsc::UnboundedReceiver<ProbeUpdate>) {
        let cri = Arc::new(cri);
        let (manager, updates) = ProbeManager::new(cri.clone());
        (Self { manager, cri }, updates)
    }

    /// Starts and stops probe workers for what runs of pod `uid` now.
    pub fn sync(&self, uid: &str, pod: &Pod, observed: &Observed) {
        let Some(sandbox) = observed.latest_sandbox().filter(|s| s.ready) else {
            self.manager.remove_pod(uid);
            return;
        };
        // The probes' default host is the pod IP, which the API may not have yet.
        let mut pod = pod.clone();
        if !sandbox.ip.is_empty() {
            pod.status.get_or_insert_with(PodStatus::default).pod_ip = Some(sandbox.ip.clone());
        }
        let running: Vec<RunningContainer<'_>> = observed
            .containers
            .iter()
            .filter(|c| c.is_running() && c.sandbox_id == sandbox.id)
            .map(|c| RunningContainer {
                name: &c.name,
                id: &c.id,
                started_at: ContainerStart::instant_of_unix_nanos(c.started_at),
            })
            .collect();
        self.manager.sync_pod(uid, &pod, &running);
    }

    /// Containers of pod `uid` whose current instance failed its liveness (or startup)
    /// probe.
    pub fn unhealthy(&self, uid: &str, observed: &Observed) -> BTreeSet<String> {
        self.manager
            .failed_containers(uid)
            .into_iter()
            .filter(|(_, id, kind)| {
                matches!(kind, ProbeKind::Liveness | ProbeKind::Startup)
                    && observed.containers.iter().any(|c| &c.id == id && c.is_running())
            })
            .map(|(name, ..)| name)
            .collect()
    }

    /// The verdict on container `name`'s instance `id`.
    pub fn verdict(&self, uid: &str, name: &str, id: &str) -> ProbeVerdict {
        ProbeVerdict { ready: self.manager.ready_for(uid, name, id), started: self.manager.started_for(uid, name, id) }
    }

    /// Runs the container's preStop hook, within `grace`; the failure, if any, for an event.
    pub async fn pre_stop(&self, pod: &Pod, container: &str, id: &str, grace: Duration) -> Option<String> {
        match run_hook(pod, container, id, Hook::PreStop, self.cri.as_ref(), grace).await? {
            ProbeOutcome::Success => None,
            ProbeOutcome::Failure(m) | ProbeOutcome::Unknown(m) => Some(m),
        }
    }

    /// Drops everything about pod `uid`.
    pub fn forget_pod(&self, uid: &str) {
        self.manager.remove_pod(uid);
    }
}
