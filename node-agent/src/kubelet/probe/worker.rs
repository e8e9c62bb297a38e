//! One probe of one container, run as a tokio task: wait initialDelaySeconds (from the
//! container's start) and, for liveness and readiness, until the startup probe has
//! succeeded; then probe every periodSeconds, count consecutive results against
//! successThreshold and failureThreshold, and report through the manager's results.
//!
//! A worker never outlives its container id: a restarted container gets new workers.
//! It stops by itself once its answer is final: startup after success or failure,
//! liveness after failure (the container is to be restarted); readiness runs until
//! removed. All waiting uses tokio time, so tests run with paused time.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Probe;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::handler::{ExecRunner, run_probe};
use super::results::{ProbeKey, ProbeUpdate, Results};
use super::settings::ProbeSettings;
use super::target::HandlerTarget;
use super::{ProbeKind, ProbeOutcome};

/// Everything one worker needs; built by the manager.
pub(super) struct Worker<E> {
    pub key: ProbeKey,
    pub container_id: String,
    pub probe: Probe,
    pub target: HandlerTarget,
    pub exec: Arc<E>,
    /// When the container started; initialDelaySeconds counts from here, so that a
    /// container adopted after an agent restart is not delayed again.
    pub started_at: Instant,
    /// For liveness and readiness of a container with a startup probe: opens when the
    /// startup probe succeeds.
    pub startup_gate: Option<watch::Receiver<bool>>,
    /// For the startup worker: the sending side of that gate.
    pub startup_done: Option<watch::Sender<bool>>,
    /// The state before the first probe: upstream's [`initial_state`], or ready for a
    /// container the API already had ready.
    pub initial: Option<bool>,
    pub results: Arc<Results>,
}

impl<E: ExecRunner> Worker<E> {
    pub(super) async fn run(mut self) {
        let settings = ProbeSettings::from_probe(&self.probe);
        let kind = self.key.kind;
        tokio::time::sleep_until(self.started_at + settings.initial_delay).await;
        if let Some(gate) = &mut self.startup_gate
            && gate.wait_for(|started| *started).await.is_err()
        {
            // The container's workers are gone.
            return;
        }
        let mut state = self.initial;
        // The last observed result and how many attempts in a row gave it.
        let mut last: Option<bool> = None;
        let mut run: u32 = 0;
        let mut ticker = tokio::time::interval(settings.period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let outcome = run_probe(&self.probe, &self.target, &*self.exec).await;
            let observed = match &outcome {
                ProbeOutcome::Success => true,
                ProbeOutcome::Failure(_) => false,
                ProbeOutcome::Unknown(why) => {
                    // Says nothing about the container: keep the state, but tell.
                    tracing::debug!(pod_uid = %self.key.pod_uid, container = %self.key.container_name, %kind, %why, "probe errored");
                    let message = format!("{kind} probe errored: {why}");
                    if !self.report(state, false, true, message, &settings) {
                        return;
                    }
                    continue;
                }
            };
            if last == Some(observed) {
                run = run.saturating_add(1);
            } else {
                last = Some(observed);
                run = 1;
            }
            let threshold = if observed { settings.success_threshold } else { settings.failure_threshold };
            let changed = state != Some(observed) && run >= threshold;
            if changed {
                state = Some(observed);
            }
            let message = match &outcome {
                ProbeOutcome::Success => format!("{kind} probe succeeded"),
                _ => format!("{kind} probe failed: {}", outcome.message()),
            };
            if changed || !observed {
                tracing::debug!(pod_uid = %self.key.pod_uid, container = %self.key.container_name, %kind, observed, changed, %message, "probe result");
                if !self.report(state, changed, !observed, message, &settings) {
                    return;
                }
            }
            if changed && is_final(kind, observed) {
                if kind == ProbeKind::Startup
                    && observed
                    && let Some(done) = &self.startup_done
                {
                    done.send_replace(true);
                }
                return;
            }
        }
    }

    /// Records and publishes; false when this worker's container is no longer the
    /// current one (the worker should stop).
    fn report(
        &self,
        state: Option<bool>,
        changed: bool,
        failed_attempt: bool,
        message: String,
        settings: &ProbeSettings,
    ) -> bool {
        let update = ProbeUpdate {
            pod_uid: self.key.pod_uid.clone(),
            container_name: self.key.container_name.clone(),
            container_id: self.container_id.clone(),
            kind: self.key.kind,
            result: state.unwrap_or(false),
            changed,
            failed_attempt,
            message,
            termination_grace_period_seconds: settings.termination_grace_period_seconds,
        };
        self.results.record(&self.key, state, update)
    }
}

/// Upstream's initial results: alive, not ready, startup undecided.
pub(super) fn initial_state(kind: ProbeKind) -> Option<bool> {
    match kind {
        ProbeKind::Liveness => Some(true),
        ProbeKind::Readiness => Some(false),
        ProbeKind::Startup => None,
    }
}

/// Whether a worker has nothing left to say after this change: a started container is
/// not probed for startup again, and a failed liveness or startup probe waits for the
/// restart, which brings new workers.
fn is_final(kind: ProbeKind, result: bool) -> bool {
    match kind {
        ProbeKind::Startup => true,
        ProbeKind::Liveness => !result,
        ProbeKind::Readiness => false,
    }
}
