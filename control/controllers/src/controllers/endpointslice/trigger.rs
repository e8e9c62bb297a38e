//! The `endpoints.kubernetes.io/last-change-trigger-time` annotation on the slices the
//! controller writes: when the change that caused the write happened, so that the node
//! proxies can report how long a change took to reach their datapath (kube-proxy's
//! `network_programming_duration_seconds`).
//!
//! A Service's trigger times are its creation and, for each selected pod, the last
//! transition of its Ready condition (its creation before it has one). The annotation
//! carries the earliest of those that changed since the Service's previous sync, so a
//! write covering several changes reports the oldest one. When none changed (a pod
//! deleted: it has no time left to show), the annotation is left off, as upstream
//! does. The times are the API's, which have one-second resolution for conditions.
//!
//! This module must not decide what the slices hold; it only stamps a plan.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;
use skiff_api::ObjectKey;

use super::SlicePlan;

/// The annotation (upstream's name).
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The trigger times seen at each Service's last sync.
#[derive(Debug, Default)]
pub struct TriggerTimes {
    seen: Mutex<HashMap<ObjectKey, Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    service: Option<Timestamp>,
    pods: HashMap<String, Timestamp>,
}

impl TriggerTimes {
    /// The earliest trigger time of `svc` (keyed `key`) and its selected `pods` that
    /// changed since the last call for the same Service; remembers the current ones.
    pub fn compute(&self, key: &ObjectKey, svc: &Service, pods: &[&Pod]) -> Option<Timestamp> {
        let mut seen = self.seen.lock().unwrap();
        let before = seen.remove(key).unwrap_or_default();
        let mut now = Seen { service: svc.metadata.creation_timestamp.as_ref().map(|t| t.0), pods: HashMap::new() };
        let mut earliest: Option<Timestamp> = None;
        let mut changed = |t: Timestamp, previous: Option<&Timestamp>| {
            if previous.is_none_or(|p| t > *p) {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        };
        for pod in pods {
            if let (Some(name), Some(t)) = (pod.metadata.name.as_ref(), pod_trigger_time(pod)) {
                changed(t, before.pods.get(name));
                now.pods.insert(name.clone(), t);
            }
        }
        if let Some(t) = now.service {
            changed(t, before.service.as_ref());
        }
        seen.insert(key.clone(), now);
        earliest
    }

    /// The Service is gone (or has no selector): nothing to remember.
    pub fn forget(&self, key: &ObjectKey) {
        self.seen.lock().unwrap().remove(key);
    }
}

/// The Ready condition's last transition, else the pod's creation.
fn pod_trigger_time(pod: &Pod) -> Option<Timestamp> {
    let ready = pod.status.as_ref().and_then(|s| s.conditions.as_ref())?.iter().find(|c| c.type_ == "Ready");
    ready.and_then(|c| c.last_transition_time.as_ref()).or(pod.metadata.creation_timestamp.as_ref()).map(|t| t.0)
}

/// Sets (or, without a time, removes) the annotation on every slice the plan writes.
pub fn stamp(plan: &mut SlicePlan, at: Option<Timestamp>) {
    for slice in plan.create.iter_mut().chain(plan.update.iter_mut()) {
        let mut annotations = slice.metadata.annotations.take().unwrap_or_default();
        match at {
            Some(t) => annotations.insert(LAST_CHANGE_TRIGGER_TIME.to_owned(), t.to_string()),
            None => annotations.remove(LAST_CHANGE_TRIGGER_TIME),
        };
        slice.metadata.annotations = Some(annotations).filter(|a| !a.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;

    fn service(created: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": created},
            "spec": {"selector": {"app": "web"}}
        }))
        .unwrap()
    }

    fn pod(name: &str, created: &str, ready_at: Option<&str>) -> Pod {
        let conditions: Vec<_> = ready_at
            .map(|t| serde_json::json!({"type": "Ready", "status": "True", "lastTransitionTime": t}))
            .into_iter()
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    fn ts(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_earliest_change_since_the_last_sync() {
        let t = TriggerTimes::default();
        let key = ObjectKey::new(Some("default"), "web");
        let svc = service("2026-12-02T05:00:00Z");
        let a = pod("a", "2026-12-02T05:00:01Z", None);
        assert_eq!(t.compute(&key, &svc, &[&a]), ts("2026-12-02T05:00:00Z"), "first sync: the Service's creation");
        assert_eq!(t.compute(&key, &svc, &[&a]), None, "nothing changed");

        let a_ready = pod("a", "2026-12-02T05:00:01Z", Some("2026-12-02T05:00:07Z"));
        let b = pod("b", "2026-12-02T05:00:05Z", None);
        assert_eq!(t.compute(&key, &svc, &[&a_ready, &b]), ts("2026-12-02T05:00:05Z"), "b is new, a turned Ready");
        assert_eq!(t.compute(&key, &svc, &[&a_ready]), None, "b deleted: no time to show");

        t.forget(&key);
        assert_eq!(t.compute(&key, &svc, &[&a_ready]), ts("2026-12-02T05:00:00Z"), "forgotten: all new again");
    }

    #[test]
    fn stamps_what_the_plan_writes() {
        let slice = |annotations: serde_json::Value| -> EndpointSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web-1", "annotations": annotations}, "addressType": "IPv4", "endpoints": []
            }))
            .unwrap()
        };
        let mut plan = SlicePlan {
            create: vec![slice(serde_json::json!({}))],
            update: vec![slice(serde_json::json!({LAST_CHANGE_TRIGGER_TIME: "old", "other": "x"}))],
            delete: vec![],
        };
        stamp(&mut plan, ts("2026-12-02T05:00:01.5Z"));
        let stamped = |s: &EndpointSlice| s.metadata.annotations.as_ref().unwrap()[LAST_CHANGE_TRIGGER_TIME].clone();
        assert_eq!(stamped(&plan.create[0]), "2026-12-02T05:00:01.5Z");
        assert_eq!(stamped(&plan.update[0]), "2026-12-02T05:00:01.5Z");
        stamp(&mut plan, None);
        assert_eq!(plan.create[0].metadata.annotations, None);
        assert_eq!(plan.update[0].metadata.annotations.as_ref().unwrap().len(), 1, "others stay");
    }
}
