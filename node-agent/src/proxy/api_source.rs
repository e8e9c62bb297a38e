//! Services and EndpointSlices from the API server: two `skiff-api` reflectors (LIST,
//! then WATCH, relisting after a 410) whose changes become [`SourceEvent`]s.
//!
//! The work is split in two:
//! - [`Tracker`], pure: the objects as last reported, and the latest state of each object
//!   seen since. [`Tracker::take`] reports only real differences: an object whose content
//!   (everything but the bookkeeping the server changes on its own — resourceVersion,
//!   uid, managedFields, creationTimestamp, generation) is what was reported before
//!   yields nothing. So a relist after a 410, or an API server that restarted (even with
//!   a fresh store that re-created every object), rewrites nothing in the maps; objects
//!   that vanished meanwhile are reported as deleted (the reflector's relist says so).
//! - [`ApiServiceSource`], thin: subscribes to the two caches, feeds their changes to the
//!   tracker at each poll, and is [`ready`](ServiceSource::ready) once both LISTs are in,
//!   so that its first poll is the complete snapshot.
//!
//! This module must not interpret the objects (the model does) nor talk to the API
//! server itself (the reflectors do, on tasks the agent spawns).

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_api::Client;
use skiff_api::reflector::{Cache, Change, reflector};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::mpsc::error::TryRecvError;

use super::model::ObjectRef;
use super::source::{Object, ObjectKind, Result, ServiceSource, SourceEvent, deletion};

type Key = (ObjectKind, ObjectRef);

/// What has been reported, and what changed since. See the module docs.
#[derive(Debug, Default)]
pub struct Tracker {
    /// The objects as last reported, normalised.
    reported: BTreeMap<Key, Object>,
    /// The latest state of each object changed since the last `take` (`None`: deleted).
    /// Only the latest counts: a delete and re-create in between is one comparison.
    pending: BTreeMap<Key, Option<Object>>,
}

impl Tracker {
    /// An object was created or updated (or listed again).
    pub fn applied(&mut self, mut object: Object) {
        let Some(key) = object.try_key() else {
            tracing::warn!(kind = ?object.kind(), "ignoring object without metadata.name");
            return;
        };
        normalise(&mut object);
        self.pending.insert(key, Some(object));
    }

    /// An object was deleted (or vanished across a relist).
    pub fn deleted(&mut self, object: &Object) {
        if let Some(key) = object.try_key() {
            self.pending.insert(key, None);
        }
    }

    /// Whether changes wait for [`Self::take`] (they may still turn out to be no-ops).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The differences between what was reported and the latest state, deletions
    /// first; afterwards the latest state counts as reported. Costs one comparison per
    /// object changed since the last call.
    pub fn take(&mut self) -> Vec<SourceEvent> {
        let mut deletions = Vec::new();
        let mut upserts = Vec::new();
        for (key, latest) in std::mem::take(&mut self.pending) {
            match latest {
                Some(object) => {
                    if self.reported.get(&key) != Some(&object) {
                        upserts.push(object.clone().into_upsert());
                        self.reported.insert(key, object);
                    }
                }
                None => {
                    if self.reported.remove(&key).is_some() {
                        deletions.push(deletion(key.0, key.1));
                    }
                }
            }
        }
        deletions.append(&mut upserts);
        deletions
    }
}

/// Clears what the server changes without the object's content changing, so that an
/// object re-created with the same content compares equal.
fn normalise(object: &mut Object) {
    let meta = object.meta_mut();
    meta.resource_version = None;
    meta.uid = None;
    meta.managed_fields = None;
    meta.creation_timestamp = None;
    meta.generation = None;
}

/// The Services and EndpointSlices of every namespace, from the API server's reflectors.
pub struct ApiServiceSource {
    services: Cache<Service>,
    slices: Cache<EndpointSlice>,
    service_changes: UnboundedReceiver<Change<Service>>,
    slice_changes: UnboundedReceiver<Change<EndpointSlice>>,
    tracker: Tracker,
}

impl std::fmt::Debug for ApiServiceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServiceSource")
            .field("services", &self.services)
            .field("slices", &self.slices)
            .field("tracker", &self.tracker)
            .finish_non_exhaustive()
    }
}

impl ApiServiceSource {
    /// A source over two reflectors' caches (subscribed to here, so nothing is missed).
    pub fn new(services: Cache<Service>, slices: Cache<EndpointSlice>) -> Self {
        let service_changes = services.subscribe();
        let slice_changes = slices.subscribe();
        Self { services, slices, service_changes, slice_changes, tracker: Tracker::default() }
    }

    /// The source and the future that runs both reflectors against `client`; spawn the
    /// future (it runs until dropped).
    pub fn start(client: Client) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (services, run_services) = reflector::<Service>(client.clone(), None, Default::default());
        let (slices, run_slices) = reflector::<EndpointSlice>(client, None, Default::default());
        let run = async move {
            tokio::join!(run_services, run_slices);
        };
        (Self::new(services, slices), run)
    }

    /// The Services' cache (for looking up a Service by name, e.g. to report on it).
    pub fn services(&self) -> &Cache<Service> {
        &self.services
    }

    /// The EndpointSlices' cache (shared with the node's DNS server).
    pub fn slices(&self) -> &Cache<EndpointSlice> {
        &self.slices
    }

    fn drain(&mut self) {
        drain_into(&mut self.service_changes, &mut self.tracker, |s| Object::Service(Box::new(s)));
        drain_into(&mut self.slice_changes, &mut self.tracker, |s| Object::EndpointSlice(Box::new(s)));
    }
}

/// Feeds every change waiting in `rx` to the tracker.
fn drain_into<K: Clone>(rx: &mut UnboundedReceiver<Change<K>>, tracker: &mut Tracker, wrap: impl Fn(K) -> Object) {
    loop {
        match rx.try_recv() {
            Ok(Change::Applied(obj)) => tracker.applied(wrap(obj.as_ref().clone())),
            Ok(Change::Deleted(obj)) => tracker.deleted(&wrap(obj.as_ref().clone())),
            // A closed channel means the cache is gone, which the owner of the source
            // does not let happen while polling; nothing more will come either way.
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
        }
    }
}

impl ServiceSource for ApiServiceSource {
    fn poll(&mut self) -> Result<Vec<SourceEvent>> {
        self.drain();
        if !self.ready() {
            return Ok(Vec::new());
        }
        let events = self.tracker.take();
        for event in &events {
            tracing::debug!(%event, "service source change");
        }
        Ok(events)
    }

    fn ready(&self) -> bool {
        self.services.is_synced() && self.slices.is_synced()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn service(name: &str, ip: &str, rv: &str) -> Object {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv, "uid": format!("uid-{rv}")},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
        }))
        .unwrap();
        Object::Service(Box::new(svc))
    }

    fn slice(name: &str, addr: &str, rv: &str) -> Object {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv,
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [addr]}]
        }))
        .unwrap();
        Object::EndpointSlice(Box::new(slice))
    }

    fn names(events: &[SourceEvent]) -> Vec<String> {
        events.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn first_take_is_the_snapshot_then_only_changes() {
        let mut t = Tracker::default();
        t.applied(service("web", "10.96.0.10", "1"));
        t.applied(slice("web-1", "10.244.1.2", "2"));
        t.applied(service("api", "10.96.0.11", "3"));
        assert_eq!(
            names(&t.take()),
            ["upsert Service default/api", "upsert Service default/web", "upsert EndpointSlice default/web-1"]
        );
        assert_eq!(t.take(), []);

        t.applied(slice("web-1", "10.244.1.3", "4"));
        assert_eq!(names(&t.take()), ["upsert EndpointSlice default/web-1"]);
        t.deleted(&service("api", "10.96.0.11", "5"));
        assert_eq!(names(&t.take()), ["delete Service default/api"]);
        // Deleting what was never reported (or twice) says nothing.
        t.deleted(&service("api", "10.96.0.11", "5"));
        t.deleted(&service("never", "10.96.0.12", "6"));
        assert_eq!(t.take(), []);
    }

    #[test]
    fn a_relist_or_a_recreated_store_reports_only_real_differences() {
        let mut t = Tracker::default();
        t.applied(service("web", "10.96.0.10", "1"));
        t.applied(slice("web-1", "10.244.1.2", "2"));
        t.applied(service("gone", "10.96.0.11", "3"));
        assert_eq!(t.take().len(), 3);

        // The API server came back with a fresh store: every object re-created (new
        // resourceVersion and uid, same content), one changed, one missing. The
        // reflector's relist sends the vanished one as deleted.
        t.deleted(&service("gone", "10.96.0.11", "3"));
        t.deleted(&service("web", "10.96.0.10", "1"));
        t.applied(service("web", "10.96.0.10", "101"));
        t.applied(slice("web-1", "10.244.1.9", "102"));
        assert_eq!(names(&t.take()), ["delete Service default/gone", "upsert EndpointSlice default/web-1"]);

        // A relist after a 410 repeating everything as it is: nothing.
        t.applied(service("web", "10.96.0.10", "201"));
        t.applied(slice("web-1", "10.244.1.9", "202"));
        assert!(t.has_pending());
        assert_eq!(t.take(), []);
        assert!(!t.has_pending());
    }

    #[test]
    fn only_the_latest_state_between_takes_counts() {
        let mut t = Tracker::default();
        t.applied(service("web", "10.96.0.10", "1"));
        t.deleted(&service("web", "10.96.0.10", "1"));
        assert_eq!(t.take(), [], "created and deleted before anyone looked");
        t.applied(service("web", "10.96.0.10", "2"));
        t.applied(service("web", "10.96.0.20", "3"));
        let events = t.take();
        let SourceEvent::ServiceUpserted(svc) = &events[0] else { panic!("{events:?}") };
        assert_eq!(svc.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.20"));
        assert_eq!(svc.metadata.resource_version, None, "reported normalised");
    }

    #[test]
    fn objects_without_a_name_are_ignored() {
        let mut t = Tracker::default();
        t.applied(Object::Service(Box::new(Service { metadata: ObjectMeta::default(), ..Default::default() })));
        assert_eq!(t.take(), []);
    }
}
