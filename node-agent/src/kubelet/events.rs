//! Events about pods (`kubectl describe pod`, `kubectl get events`), as the kubelet
//! reports them: Pulled, Created, Started, Killing, BackOff, Failed, Unhealthy,
//! OOMKilled…
//! Sending is best effort and never holds up the pod's work: each event is sent on a
//! task of its own, and a failure is only logged. Which events are due is decided by
//! pure functions here ([`new_oom_kills`]); this module must not act on the runtime.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use skiff_api::Client;

use super::observed::{ContainerObs, Observed};
use super::status::RUNTIME_SCHEME;

/// The reason the runtime gives a container the kernel's OOM killer ended.
pub const OOM_KILLED: &str = "OOMKilled";

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Sends pod events as component `kubelet` of this node.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    node: String,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(client: Client, node: &str) -> Self {
        Self { client, node: node.to_owned() }
    }

    /// Records an event about `pod` (and its container, if `container` is given).
    pub fn pod(&self, pod: &Pod, kind: EventType, reason: &str, container: Option<&str>, message: String) {
        let event = event_for(pod, &self.node, kind, reason, container, message);
        match kind {
            EventType::Normal => tracing::debug!(pod = ?pod.metadata.name, reason, message = ?event.message, "event"),
            EventType::Warning => {
                tracing::info!(pod = ?pod.metadata.name, reason, message = ?event.message, "warning event")
            }
        }
        let client = self.client.clone();
        tokio::spawn(async move {
            let ns = event.metadata.namespace.clone();
            if let Err(e) = client.create(ns.as_deref(), &event).await {
                tracing::debug!(error = %e, "cannot record an event");
            }
        });
    }

    /// One Warning `OOMKilled` event per container instance the OOM killer ended (see
    /// [`new_oom_kills`]); the announced instances are added to `announced`.
    pub fn oom_kills(&self, pod: &Pod, observed: &Observed, announced: &mut BTreeSet<String>) {
        for c in new_oom_kills(pod, observed, announced) {
            self.pod(pod, EventType::Warning, OOM_KILLED, Some(&c.name), oom_message(pod, &c.name));
            announced.insert(c.id.clone());
        }
    }
}

/// The container instances the OOM killer ended that were not announced yet: not in
/// `announced` (this worker's memory) and not already shown as OOM-killed in the pod's
/// status (so that a restarted agent does not announce them again). Only each
/// container's newest instance counts: the worker announces kills before it acts on
/// them, so an instance with a successor was announced by the agent that started the
/// successor. (It may be shown nowhere in the status, which holds only the newest
/// instance while a restart is held back: counting it made a restarted agent announce
/// it twice.)
pub fn new_oom_kills<'a>(pod: &Pod, observed: &'a Observed, announced: &BTreeSet<String>) -> Vec<&'a ContainerObs> {
    let status = pod.status.as_ref();
    let shown: BTreeSet<&str> = status
        .into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten()))
        .flat_map(|cs| [cs.state.as_ref(), cs.last_state.as_ref()])
        .filter_map(|st| st?.terminated.as_ref())
        .filter(|t| t.reason.as_deref() == Some(OOM_KILLED))
        .filter_map(|t| t.container_id.as_deref()?.strip_prefix(RUNTIME_SCHEME))
        .collect();
    let mut names: Vec<&str> = observed.containers.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| observed.latest_any(name))
        .filter(|c| c.has_exited() && c.reason == OOM_KILLED)
        .filter(|c| !announced.contains(&c.id) && !shown.contains(c.id.as_str()))
        .collect()
}

/// The message of a container's OOMKilled event, with its memory limit when it has one.
pub fn oom_message(pod: &Pod, container: &str) -> String {
    let spec = pod.spec.as_ref();
    let limit = spec
        .into_iter()
        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
        .find(|c| c.name == container)
        .and_then(|c| c.resources.as_ref()?.limits.as_ref()?.get("memory").map(|q| q.0.clone()));
    match limit {
        Some(limit) => format!("Container {container} was killed by the OOM killer (memory limit {limit})"),
        None => format!("Container {container} was killed by the OOM killer"),
    }
}

fn event_for(pod: &Pod, node: &str, kind: EventType, reason: &str, container: Option<&str>, message: String) -> Event {
    let now = jiff::Timestamp::now();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(namespace),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
        },
        reason: Some(reason.to_owned()),
        message: Some(message),
        type_: Some(match kind {
            EventType::Normal => "Normal".into(),
            EventType::Warning => "Warning".into(),
        }),
        source: Some(EventSource { component: Some("kubelet".into()), host: Some(node.to_owned()) }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(node.to_owned()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};
    use serde_json::json;

    use super::*;
    use crate::kubelet::observed::ContainerState as State;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "hog", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [
                {"name": "app", "resources": {"limits": {"memory": "16Mi"}}},
                {"name": "side"},
            ]},
        }))
        .unwrap()
    }

    fn instance(id: &str, name: &str, attempt: u32, state: State, reason: &str) -> ContainerObs {
        ContainerObs {
            id: id.into(),
            sandbox_id: "sb".into(),
            name: name.into(),
            attempt,
            state,
            created_at: i64::from(attempt),
            started_at: 1,
            finished_at: if state == State::Exited { 2 } else { 0 },
            exit_code: if state == State::Exited { 137 } else { 0 },
            reason: reason.into(),
            message: String::new(),
            image_ref: String::new(),
        }
    }

    fn ids(found: Vec<&ContainerObs>) -> Vec<&str> {
        found.into_iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn each_oom_killed_instance_is_announced_once() {
        let observed = Observed {
            sandboxes: Vec::new(),
            containers: vec![
                instance("a0", "app", 0, State::Exited, OOM_KILLED),
                instance("a1", "app", 1, State::Exited, OOM_KILLED),
                instance("a2", "app", 2, State::Exited, OOM_KILLED),
                instance("s0", "side", 0, State::Exited, "Error"),
                instance("s1", "side", 1, State::Running, ""),
            ],
        };
        let mut announced = BTreeSet::new();
        // The newest instance only: the older ones were announced before their
        // successors were started.
        assert_eq!(ids(new_oom_kills(&pod(), &observed, &announced)), ["a2"]);
        announced.insert("a2".to_owned());
        assert!(new_oom_kills(&pod(), &observed, &announced).is_empty());

        // What the pod's status already shows (a restarted agent) is not announced again.
        let terminated = |id: &str| ContainerState {
            terminated: Some(ContainerStateTerminated {
                reason: Some(OOM_KILLED.into()),
                container_id: Some(format!("{RUNTIME_SCHEME}{id}")),
                exit_code: 137,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut shown = pod();
        shown.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                state: Some(terminated("a2")),
                last_state: Some(terminated("a1")),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(new_oom_kills(&shown, &observed, &BTreeSet::new()).is_empty());

        // While the restart is held back the status shows the newest instance alone (in
        // lastState): the one before it is not announced again either.
        shown.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                last_state: Some(terminated("a2")),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(new_oom_kills(&shown, &observed, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn running_or_otherwise_failed_containers_are_no_oom_kills() {
        let observed = Observed {
            sandboxes: Vec::new(),
            containers: vec![
                instance("a0", "app", 0, State::Running, ""),
                instance("s0", "side", 0, State::Exited, "Error"),
            ],
        };
        assert!(new_oom_kills(&pod(), &observed, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn the_message_names_the_container_and_its_limit() {
        assert_eq!(oom_message(&pod(), "app"), "Container app was killed by the OOM killer (memory limit 16Mi)");
        assert_eq!(oom_message(&pod(), "side"), "Container side was killed by the OOM killer");
    }
}
