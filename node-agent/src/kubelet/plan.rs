//! What to do next for one pod: a pure function of the desired pod (or its absence),
//! what the runtime has for it, the restart back-off, the liveness verdicts and the time.
//! The worker carries the actions out, observes again and plans again, until the plan
//! is empty; so each plan only needs to be the next step, not the whole way.
//!
//! The rules follow upstream's kubelet: one sandbox per pod (a new one, with the next
//! attempt, when it died); init containers one at a time in order, each to success;
//! then every regular container, restarted by `restartPolicy` with back-off; a pod whose
//! containers are all done stops its sandbox; a deleted pod stops everything, then its
//! sandboxes are removed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::backoff::Backoff;
use super::observed::{ContainerObs, Observed, UnixNanos};

/// The pod's restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn of(pod: &Pod) -> Self {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("Never") => Self::Never,
            Some("OnFailure") => Self::OnFailure,
            _ => Self::Always,
        }
    }

    /// Whether a container that exited with `exit_code` runs again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// One step of work on the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop every container of the pod (each with `grace`), then its sandboxes.
    KillPod { grace: Duration },
    /// Run a new sandbox.
    CreateSandbox { attempt: u32 },
    /// Make sure the image is there, create the container in the latest sandbox, start it.
    StartContainer { name: String, init: bool, attempt: u32 },
    /// Stop one running container.
    KillContainer { id: String, name: String, grace: Duration, reason: KillReason },
    /// Remove an exited container instance nobody needs any more.
    RemoveContainer { id: String },
    /// Remove a stopped sandbox (with what is left in it).
    RemoveSandbox { id: String },
}

/// Why a single container is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// Its liveness probe failed.
    Unhealthy,
}

/// Where the pod stands after this plan's actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Starting or running.
    Active,
    /// Every container is done and none will run again: the pod's final phase.
    Terminal(Phase),
    /// The pod is gone or being deleted, and nothing of it is left in the runtime.
    Removed,
}

/// The terminal phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Succeeded,
    Failed,
}

/// Why a container is waiting (its status's `state.waiting`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: &'static str,
    pub message: String,
}

/// The next step for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub outcome: Outcome,
    /// Containers waiting, by name, and why.
    pub waiting: BTreeMap<String, Waiting>,
    /// When to plan again even if nothing happens (a back-off expiring).
    pub wake_after: Option<Duration>,
}

impl Plan {
    fn new() -> Self {
        Self { actions: Vec::new(), outcome: Outcome::Active, waiting: BTreeMap::new(), wake_after: None }
    }

    fn wake(&mut self, after: Duration) {
        self.wake_after = Some(self.wake_after.map_or(after, |w| w.min(after)));
    }
}

/// What the plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The pod as the API has it; `None` once it is gone from the API.
    pub pod: Option<&'a Pod>,
    pub observed: &'a Observed,
    pub backoff: &'a Backoff,
    /// Containers whose current instance failed its liveness probe.
    pub unhealthy: &'a BTreeSet<String>,
    pub now: UnixNanos,
}

/// The grace period for stopping a deleted pod: what the deletion asked for, else the
/// pod's own, else 30 s (upstream's default); at least 1 s... never more than asked.
pub fn grace_period(pod: Option<&Pod>) -> Duration {
    let Some(pod) = pod else { return Duration::from_secs(2) };
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// The next step for one pod.
pub fn plan(input: PlanInput<'_>) -> Plan {
    let observed = input.observed;
    match input.pod {
        Some(pod) if pod.metadata.deletion_timestamp.is_none() && !is_terminal_in_api(pod) => run(pod, input),
        Some(pod) if pod.metadata.deletion_timestamp.is_none() => {
            // Finished earlier (by this agent or before a restart): keep it stopped,
            // keep its containers for logs until the pod is deleted.
            let mut plan = Plan::new();
            if observed.anything_running() {
                plan.actions.push(Action::KillPod { grace: grace_period(Some(pod)) });
            }
            plan.outcome = Outcome::Terminal(api_phase(pod));
            plan
        }
        pod => teardown(pod, observed),
    }
}

fn is_terminal_in_api(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn api_phase(pod: &Pod) -> Phase {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => Phase::Succeeded,
        _ => Phase::Failed,
    }
}

/// A deleted pod: stop everything, then remove the sandboxes.
fn teardown(pod: Option<&Pod>, observed: &Observed) -> Plan {
    let mut plan = Plan::new();
    if observed.anything_running() {
        plan.actions.push(Action::KillPod { grace: grace_period(pod) });
    } else if !observed.sandboxes.is_empty() {
        plan.actions.extend(observed.sandboxes.iter().map(|s| Action::RemoveSandbox { id: s.id.clone() }));
    } else {
        plan.actions.extend(observed.containers.iter().map(|c| Action::RemoveContainer { id: c.id.clone() }));
        if plan.actions.is_empty() {
            plan.outcome = Outcome::Removed;
        }
    }
    plan
}

fn containers(pod: &Pod) -> (&[Container], &[Container]) {
    let spec = pod.spec.as_ref();
    let init = spec.and_then(|s| s.init_containers.as_deref()).unwrap_or_default();
    let regular = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    (init, regular)
}

/// A pod that should run.
fn run(pod: &Pod, input: PlanInput<'_>) -> Plan {
    let observed = input.observed;
    let policy = RestartPolicy::of(pod);
    let mut plan = Plan::new();
    let sandbox = observed.latest_sandbox().filter(|s| s.ready);
    let Some(sandbox) = sandbox else {
        // No live sandbox. A pod whose containers already ran and will not run again is
        // finished; otherwise (re)create the sandbox, starting over with init containers.
        if let Some(phase) = finished_without_sandbox(pod, observed, policy) {
            plan.outcome = Outcome::Terminal(phase);
            if observed.anything_running() {
                plan.actions.push(Action::KillPod { grace: grace_period(Some(pod)) });
            }
            return plan;
        }
        if observed.anything_running() {
            plan.actions.push(Action::KillPod { grace: grace_period(Some(pod)) });
        }
        let attempt = observed.latest_sandbox().map_or(0, |s| s.attempt + 1);
        plan.actions.push(Action::CreateSandbox { attempt });
        let (init, regular) = containers(pod);
        for c in init.iter().chain(regular) {
            plan.waiting.insert(c.name.clone(), Waiting { reason: "ContainerCreating", message: String::new() });
        }
        return plan;
    };

    let (init, regular) = containers(pod);
    for (i, c) in init.iter().enumerate() {
        let latest = observed.latest_container(&sandbox.id, &c.name);
        match latest {
            Some(obs) if obs.has_exited() && obs.exit_code == 0 => continue,
            Some(obs) if obs.is_running() => {}
            Some(obs) if obs.has_exited() && policy == RestartPolicy::Never => {
                plan.outcome = Outcome::Terminal(Phase::Failed);
                plan.actions.push(Action::KillPod { grace: grace_period(Some(pod)) });
                return plan;
            }
            _ => start_or_wait(&mut plan, pod, c, true, latest.or_else(|| observed.latest_any(&c.name)), input),
        }
        for later in init.iter().skip(i + 1).chain(regular) {
            plan.waiting
                .entry(later.name.clone())
                .or_insert(Waiting { reason: "PodInitializing", message: String::new() });
        }
        return plan;
    }

    let mut done = Vec::new();
    for c in regular {
        match observed.latest_container(&sandbox.id, &c.name) {
            Some(obs) if obs.is_running() => {
                if input.unhealthy.contains(&c.name) {
                    plan.actions.push(Action::KillContainer {
                        id: obs.id.clone(),
                        name: c.name.clone(),
                        grace: probe_kill_grace(pod),
                        reason: KillReason::Unhealthy,
                    });
                }
            }
            Some(obs) if obs.has_exited() && !policy.restarts(obs.exit_code) => done.push(obs.exit_code),
            // Created but never started (a failed start) or exited to be restarted.
            Some(obs) => start_or_wait(&mut plan, pod, c, false, Some(obs), input),
            None => match observed.latest_any(&c.name) {
                // Ran in an earlier sandbox and is done for good.
                Some(prev) if prev.has_exited() && !policy.restarts(prev.exit_code) => done.push(prev.exit_code),
                prev => start_or_wait(&mut plan, pod, c, false, prev, input),
            },
        }
    }
    if !regular.is_empty() && done.len() == regular.len() {
        let phase = if done.iter().all(|&code| code == 0) { Phase::Succeeded } else { Phase::Failed };
        plan.outcome = Outcome::Terminal(phase);
        plan.actions.push(Action::KillPod { grace: grace_period(Some(pod)) });
    }
    collect_garbage(&mut plan, observed, &sandbox.id);
    plan
}

/// The grace period for a liveness kill (the probe's own, else the pod's).
fn probe_kill_grace(pod: &Pod) -> Duration {
    let secs = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Starts container `c` (the next attempt after `last`) unless its back-off holds it.
fn start_or_wait(
    plan: &mut Plan,
    pod: &Pod,
    c: &Container,
    init: bool,
    last: Option<&ContainerObs>,
    input: PlanInput<'_>,
) {
    let attempt = last.map_or(0, |l| l.attempt + 1);
    let finished_at = last.map_or(0, |l| l.finished_at);
    // A never-started instance has no exit time: its failed start set the back-off.
    let held = if last.is_some() || input.backoff.remaining(&c.name, 0, input.now).is_some() {
        input.backoff.remaining(&c.name, finished_at, input.now)
    } else {
        None
    };
    match held {
        Some(remaining) => {
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            let delay = input.backoff.delay(&c.name);
            plan.waiting.insert(
                c.name.clone(),
                Waiting {
                    reason: "CrashLoopBackOff",
                    message: format!(
                        "back-off {}s restarting failed container={} pod={name}_{namespace}",
                        delay.as_secs(),
                        c.name
                    ),
                },
            );
            plan.wake(remaining);
        }
        None => plan.actions.push(Action::StartContainer { name: c.name.clone(), init, attempt }),
    }
}

/// Old instances: keep the newest two of each name (the current one and the one
/// `logs --previous` shows); remove older ones and those of earlier sandboxes beyond that.
fn collect_garbage(plan: &mut Plan, observed: &Observed, sandbox_id: &str) {
    let mut by_name: BTreeMap<&str, Vec<&ContainerObs>> = BTreeMap::new();
    for c in &observed.containers {
        by_name.entry(c.name.as_str()).or_default().push(c);
    }
    for instances in by_name.values_mut() {
        instances.sort_by_key(|c| std::cmp::Reverse((c.attempt, c.created_at)));
        for old in instances.iter().skip(2).filter(|c| c.has_exited()) {
            plan.actions.push(Action::RemoveContainer { id: old.id.clone() });
        }
    }
    for sb in observed.sandboxes.iter().filter(|s| s.id != sandbox_id && !s.ready) {
        let in_use = observed.containers.iter().any(|c| c.sandbox_id == sb.id && !c.has_exited());
        let keeps_previous = observed.containers.iter().any(|c| c.sandbox_id == sb.id);
        if !in_use && !keeps_previous {
            plan.actions.push(Action::RemoveSandbox { id: sb.id.clone() });
        }
    }
}

/// Without a live sandbox: whether the pod is finished (its regular containers all ran
/// and none restarts, or an init container failed under `Never`).
fn finished_without_sandbox(pod: &Pod, observed: &Observed, policy: RestartPolicy) -> Option<Phase> {
    let (init, regular) = containers(pod);
    if observed.containers.is_empty() || policy == RestartPolicy::Always {
        return None;
    }
    if policy == RestartPolicy::Never
        && init.iter().any(|c| observed.latest_any(&c.name).is_some_and(|o| o.has_exited() && o.exit_code != 0))
    {
        return Some(Phase::Failed);
    }
    let mut codes = Vec::new();
    for c in regular {
        match observed.latest_any(&c.name) {
            Some(o) if o.has_exited() && !policy.restarts(o.exit_code) => codes.push(o.exit_code),
            // A sandbox that died under Never ends the pod: its unfinished containers failed.
            _ if policy == RestartPolicy::Never => codes.push(1),
            _ => return None,
        }
    }
    Some(if codes.iter().all(|&c| c == 0) { Phase::Succeeded } else { Phase::Failed })
}

#[cfg(test)]
mod tests;
