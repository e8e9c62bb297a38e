//! What probes found: each worker's [`ProbeUpdate`]s, and the latest [`ProbeResult`]
//! of every probe (`Results`, keyed by `ProbeKey`), written by the workers and
//! read by the manager. It imports neither.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::ProbeKind;

/// Which probe of which container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ProbeKey {
    pub pod_uid: String,
    pub container_name: String,
    pub kind: ProbeKind,
}

/// The latest state of one probe of the current container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub container_id: String,
    pub kind: ProbeKind,
    /// Alive / ready / started; `None` only for a startup probe not decided yet.
    pub result: Option<bool>,
    /// The message of the last reported attempt; empty before any.
    pub message: String,
}

/// What a worker tells the pod worker: after every change of state, and after every
/// failed or errored attempt (which deserves an Event even when it changes nothing yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUpdate {
    pub pod_uid: String,
    pub container_name: String,
    pub container_id: String,
    pub kind: ProbeKind,
    /// The state after this attempt: alive (liveness), ready (readiness), started
    /// (startup; false also while undecided).
    pub result: bool,
    /// The state changed with this attempt: act on it (liveness or startup false:
    /// restart the container; readiness: update the Ready condition).
    pub changed: bool,
    /// This attempt failed or could not run: record a Warning Event, reason
    /// "Unhealthy", with `message`.
    pub failed_attempt: bool,
    /// "Liveness probe failed: HTTP probe failed with statuscode: 503",
    /// "Readiness probe errored: ...", or "Startup probe succeeded".
    pub message: String,
    /// The probe's own terminationGracePeriodSeconds, for the kill it may cause.
    pub termination_grace_period_seconds: Option<i64>,
}

/// Shared between the manager and its workers.
pub(super) struct Results {
    entries: Mutex<HashMap<ProbeKey, ProbeResult>>,
    // Unbounded so that a worker never waits on a slow pod worker; there is at most one
    // update per probe attempt, and attempts are seconds apart.
    updates: mpsc::UnboundedSender<ProbeUpdate>,
}

impl Results {
    pub(super) fn new(updates: mpsc::UnboundedSender<ProbeUpdate>) -> Self {
        Self { entries: Mutex::new(HashMap::new()), updates }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<ProbeKey, ProbeResult>> {
        // A poisoned map is still a consistent map: every write is one assignment.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores the state and sends the update, if `key` still belongs to the update's
    /// container; returns whether it did. Sending under the lock means that once a
    /// container is removed, nothing about it comes out of the channel any more.
    pub(super) fn record(&self, key: &ProbeKey, state: Option<bool>, update: ProbeUpdate) -> bool {
        let mut entries = self.lock();
        match entries.get_mut(key) {
            Some(entry) if entry.container_id == update.container_id => {
                entry.result = state;
                entry.message.clone_from(&update.message);
                // The receiver gone means the agent is shutting down; nothing to do.
                let _ = self.updates.send(update);
                true
            }
            _ => false,
        }
    }
}
