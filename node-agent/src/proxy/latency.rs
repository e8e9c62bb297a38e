//! Network programming latency, as kube-proxy measures it: the endpointslice controller
//! stamps each slice it writes with the time of the change that caused the write (the
//! `endpoints.kubernetes.io/last-change-trigger-time` annotation); once a sync has
//! written the maps, the age of each stamp applied since the previous sync is how long
//! that change took to reach this node's datapath.
//!
//! [`TriggerTimes`] is the pure bookkeeping: it reads the stamps off the changes and
//! turns them into ages when asked. Stamps older than the tracker (the initial
//! snapshot after an agent restart) are not counted, as upstream does not: their age
//! is the agent's downtime, not programming latency.
//!
//! It must not record metrics nor look at the maps: the proxy role does both.

use std::time::Duration;

use jiff::Timestamp;

use super::source::SourceEvent;

/// The annotation the endpointslice controller stamps (upstream's name).
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The trigger times of the EndpointSlice changes applied since the last sync.
#[derive(Debug)]
pub struct TriggerTimes {
    started: Timestamp,
    pending: Vec<Timestamp>,
}

impl TriggerTimes {
    /// A tracker that counts changes triggered after `started`.
    pub fn new(started: Timestamp) -> Self {
        Self { started, pending: Vec::new() }
    }

    /// Notes the trigger time of a change, if it has one worth counting.
    pub fn note(&mut self, event: &SourceEvent) {
        let SourceEvent::EndpointSliceUpserted(slice) = event else { return };
        let stamp = slice.metadata.annotations.as_ref().and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME));
        let Some(stamp) = stamp else { return };
        match stamp.parse::<Timestamp>() {
            Ok(t) if t > self.started => self.pending.push(t),
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, stamp, "unreadable last-change-trigger-time; not counted"),
        }
    }

    /// The age at `now` of every trigger noted since the last call (a stamp from a
    /// clock ahead of ours counts as zero).
    pub fn take_ages(&mut self, now: Timestamp) -> Vec<Duration> {
        self.pending.drain(..).map(|t| Duration::try_from(now.duration_since(t)).unwrap_or(Duration::ZERO)).collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;

    fn slice(stamp: Option<&str>) -> SourceEvent {
        let mut slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.2"]}]
        }))
        .unwrap();
        if let Some(stamp) = stamp {
            slice.metadata.annotations = Some([(LAST_CHANGE_TRIGGER_TIME.to_owned(), stamp.to_owned())].into());
        }
        SourceEvent::EndpointSliceUpserted(Box::new(slice))
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn ages_of_the_stamps_applied_since_the_last_sync() {
        let mut t = TriggerTimes::new(ts("2026-12-02T05:00:00Z"));
        t.note(&slice(Some("2026-12-02T05:00:01.250Z")));
        t.note(&slice(Some("2026-12-02T05:00:01.900000000Z")));
        let ages = t.take_ages(ts("2026-12-02T05:00:02Z"));
        assert_eq!(ages, [Duration::from_millis(750), Duration::from_millis(100)]);
        assert!(t.take_ages(ts("2026-12-02T05:00:03Z")).is_empty(), "each stamp counts once");
    }

    #[test]
    fn stamps_before_the_start_missing_or_unreadable_do_not_count() {
        let mut t = TriggerTimes::new(ts("2026-12-02T05:00:00Z"));
        t.note(&slice(Some("2026-12-02T04:59:59Z")));
        t.note(&slice(None));
        t.note(&slice(Some("yesterday")));
        t.note(&SourceEvent::ServiceDeleted(crate::proxy::model::ObjectRef::new("default", "web")));
        assert!(t.take_ages(ts("2026-12-02T05:00:02Z")).is_empty());
    }

    #[test]
    fn a_clock_ahead_of_ours_counts_as_zero() {
        let mut t = TriggerTimes::new(ts("2026-12-02T05:00:00Z"));
        t.note(&slice(Some("2026-12-02T05:00:05Z")));
        assert_eq!(t.take_ages(ts("2026-12-02T05:00:02Z")), [Duration::ZERO]);
    }
}
