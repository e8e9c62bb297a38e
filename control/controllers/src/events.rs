//! Events (core/v1) that controllers and the scheduler record about the objects they
//! act on, so `kubectl describe` tells users what happened. Recording is best effort:
//! a failure is logged and never fails a reconcile.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::{Metadata, Resource};
use skiff_api::Client;

#[derive(Debug, Clone)]
pub struct Recorder {
    client: Client,
    component: String,
}

/// Normal or Warning, as Kubernetes spells them.
#[derive(Debug, Clone, Copy)]
pub enum EventType {
    Normal,
    Warning,
}

/// A reference to `obj` for events and owner lookups.
pub fn object_ref<K: Resource + Metadata<Ty = ObjectMeta>>(obj: &K) -> ObjectReference {
    let m = obj.metadata();
    ObjectReference {
        api_version: Some(K::API_VERSION.to_string()),
        kind: Some(K::KIND.to_string()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}

impl Recorder {
    pub fn new(client: Client, component: &str) -> Self {
        Self { client, component: component.to_string() }
    }

    /// Records an event about `obj`. Events go to the object's namespace (`default` for
    /// cluster-scoped objects, as Kubernetes does).
    pub async fn record<K: Resource + Metadata<Ty = ObjectMeta>>(
        &self,
        obj: &K,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let involved = object_ref(obj);
        let ns = involved.namespace.clone().unwrap_or_else(|| "default".into());
        let now = Time(jiff::Timestamp::now());
        let name =
            format!("{}.{:x}", involved.name.as_deref().unwrap_or("object"), uuid::Uuid::new_v4().as_u128() as u64);
        let ev = Event {
            metadata: ObjectMeta { name: Some(name), namespace: Some(ns.clone()), ..Default::default() },
            involved_object: involved,
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(match kind {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            source: Some(EventSource { component: Some(self.component.clone()), host: None }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some(self.component.clone()),
            ..Default::default()
        };
        if let Err(e) = self.client.create(Some(&ns), &ev).await {
            tracing::debug!(reason, error = %e, "recording an event failed");
        }
    }
}
