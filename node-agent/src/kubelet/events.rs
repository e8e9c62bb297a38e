//! Events about pods (`kubectl describe pod`, `kubectl get events`), as the kubelet
//! reports them: Pulled, Created, Started, Killing, BackOff, Failed, Unhealthy…
//! Sending is best effort and never holds up the pod's work: each event is sent on a
//! task of its own, and a failure is only logged.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use skiff_api::Client;

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
