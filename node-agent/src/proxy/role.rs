//! The proxy as a role of the agent: Service and EndpointSlice changes from a source go
//! into the reconciler as they come; a sync writes the Service maps (see `runner` for
//! when). This is the only place the agent calls the reconciler from. What a sync could
//! not program goes to the Service's Events when the agent talks to the API. Each sync
//! is timed into kube-proxy's two histograms (see `metrics` and `latency`).

use tracing::info;

use super::events::ServiceEvents;
use super::latency::TriggerTimes;
use super::maps::AyaLbMaps;
use super::reconciler::LbReconciler;
use super::source::SourceEvent;
use crate::runner::{Role, SyncReason};

/// The proxy role: owns the reconciler, and so the Service maps.
pub struct ProxyRole {
    reconciler: LbReconciler<AyaLbMaps>,
    events: Option<ServiceEvents>,
    triggers: TriggerTimes,
}

impl ProxyRole {
    pub fn new(reconciler: LbReconciler<AyaLbMaps>) -> Self {
        crate::metrics::proxy_enabled();
        Self { reconciler, events: None, triggers: TriggerTimes::new(jiff::Timestamp::now()) }
    }

    /// Reports the Services a sync cannot program as Warning Events on them.
    pub fn set_events(&mut self, events: ServiceEvents) {
        self.events = Some(events);
    }
}

impl Role for ProxyRole {
    /// One poll's worth of changes (the first is the source's whole snapshot).
    type Change = Vec<SourceEvent>;

    fn apply(&mut self, events: Vec<SourceEvent>) {
        for event in events {
            self.triggers.note(&event);
            self.reconciler.apply(event);
        }
    }

    fn sync(&mut self, reason: SyncReason) -> bool {
        let started = std::time::Instant::now();
        let summary = self.reconciler.sync();
        crate::metrics::proxy_synced(started.elapsed(), &self.triggers.take_ages(jiff::Timestamp::now()));
        if summary.changed() {
            info!(%summary, ?reason, "service maps synced");
        }
        // Taken even without a reporter, so they do not pile up.
        let problems = self.reconciler.take_problems();
        if let Some(events) = &mut self.events {
            events.report(problems);
        }
        self.reconciler.has_pending()
    }
}
