//! The kubelet's view of its probes: which containers failed liveness (for the plan),
//! whether each is ready and started (for the status), and the preStop hook.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::observed::Observed;
use super::status::ProbeVerdict;

/// Probe state of every pod on the node.
#[derive(Debug, Default)]
pub struct Probes {}

impl Probes {
    /// Containers of pod `uid` whose current instance failed its liveness probe.
    pub fn unhealthy(&self, _uid: &str, _observed: &Observed) -> BTreeSet<String> {
        BTreeSet::new()
    }

    /// The verdict on container `name`'s instance `id`.
    pub fn verdict(&self, _uid: &str, _name: &str, _id: &str) -> ProbeVerdict {
        ProbeVerdict { ready: true, started: true }
    }

    /// Runs the container's preStop hook, within `grace`.
    pub async fn pre_stop(&self, _pod: &Pod, _container: &str, _id: &str, _grace: Duration) {}

    /// Drops everything about pod `uid`.
    pub fn forget_pod(&self, _uid: &str) {}
}
