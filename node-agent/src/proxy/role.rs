//! The proxy as a role of the agent: Service and EndpointSlice changes from a source go
//! into the reconciler as they come; a sync writes the Service maps (see `runner` for
//! when). This is the only place the agent calls the reconciler from.

use tracing::info;

use super::maps::AyaLbMaps;
use super::reconciler::LbReconciler;
use super::source::SourceEvent;
use crate::runner::{Role, SyncReason};

/// The proxy role: owns the reconciler, and so the Service maps.
pub struct ProxyRole {
    reconciler: LbReconciler<AyaLbMaps>,
}

impl ProxyRole {
    pub fn new(reconciler: LbReconciler<AyaLbMaps>) -> Self {
        Self { reconciler }
    }
}

impl Role for ProxyRole {
    /// One poll's worth of changes (the first is the source's whole snapshot).
    type Change = Vec<SourceEvent>;

    fn apply(&mut self, events: Vec<SourceEvent>) {
        for event in events {
            self.reconciler.apply(event);
        }
    }

    fn sync(&mut self, reason: SyncReason) -> bool {
        let summary = self.reconciler.sync();
        if summary.changed() {
            info!(%summary, ?reason, "service maps synced");
        }
        self.reconciler.has_pending()
    }
}
