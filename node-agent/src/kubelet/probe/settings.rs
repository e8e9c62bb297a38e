//! A probe's timing and thresholds ([`ProbeSettings`]), read from its spec with
//! upstream's defaults: the worker paces itself by them, a handler takes its timeout.

use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;

/// A probe's timing and thresholds with upstream's defaults filled in (period 10 s,
/// timeout 1 s, success 1, failure 3, no initial delay). Zero or negative values mean
/// the default, as the API server's defaulting would have made them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The probe-level grace period for a kill after a failed liveness or startup
    /// probe; carried to the pod worker in each
    /// [`ProbeUpdate`](super::ProbeUpdate).
    pub termination_grace_period_seconds: Option<i64>,
}

impl ProbeSettings {
    pub fn from_probe(probe: &Probe) -> Self {
        let seconds = |value: Option<i32>, default: u64| {
            Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default))
        };
        let count = |value: Option<i32>, default: u32| {
            value.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default)
        };
        Self {
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, 10),
            timeout: seconds(probe.timeout_seconds, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
            termination_grace_period_seconds: probe.termination_grace_period_seconds,
        }
    }
}
