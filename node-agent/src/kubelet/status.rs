//! The pod's status as this node sees it: a pure function of the pod, what the runtime
//! has, the plan's verdicts (waiting reasons, terminal phase) and the probes. The worker
//! sends it to the API's status subresource when it differs from what the API has.
//!
//! Only the fields the kubelet owns are computed; `PodScheduled` (the scheduler's) is
//! carried over, and each condition keeps its transition time while its value holds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::observed::{ContainerObs, Observed, UnixNanos};
use super::plan::{Outcome, Phase, Plan, Waiting};

/// Prefix of container ids in the API (`containerd://<id>`).
pub const RUNTIME_SCHEME: &str = "containerd://";

/// What a container's probes say about its current instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeVerdict {
    /// The readiness probe passed (true without a readiness probe).
    pub ready: bool,
    /// The startup probe passed (true without a startup probe).
    pub started: bool,
}

/// What the status is made from.
pub struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub observed: &'a Observed,
    pub plan: &'a Plan,
    /// Containers that could not be started, and why (ErrImagePull, CreateContainerConfigError…).
    pub start_errors: &'a BTreeMap<String, Waiting>,
    /// The probes' verdict on a container's current instance (by name and id).
    pub probes: &'a dyn Fn(&str, &str) -> ProbeVerdict,
    /// The node's address.
    pub host_ip: &'a str,
    pub now: jiff::Timestamp,
}

fn time(nanos: UnixNanos) -> Option<Time> {
    (nanos > 0).then(|| jiff::Timestamp::from_nanosecond(i128::from(nanos)).ok().map(Time)).flatten()
}

fn is_host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

/// The pod's status.
pub fn pod_status(input: &StatusInput<'_>) -> PodStatus {
    let pod = input.pod;
    let old = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let sandbox = input.observed.latest_sandbox();
    let sandbox_ready = sandbox.is_some_and(|s| s.ready);

    let init_statuses: Vec<ContainerStatus> =
        spec.init_containers.iter().flatten().map(|c| container_status(c, input, true)).collect();
    let statuses: Vec<ContainerStatus> = spec.containers.iter().map(|c| container_status(c, input, false)).collect();

    let initialized = spec
        .init_containers
        .iter()
        .flatten()
        .all(|c| input.observed.latest_any(&c.name).is_some_and(|o| o.has_exited() && o.exit_code == 0));
    let unready: Vec<&str> = statuses.iter().filter(|s| !s.ready).map(|s| s.name.as_str()).collect();
    let containers_ready = unready.is_empty() && !statuses.is_empty();

    let phase = match input.plan.outcome {
        Outcome::Terminal(Phase::Succeeded) => "Succeeded",
        Outcome::Terminal(Phase::Failed) => "Failed",
        _ if sandbox_ready
            && initialized
            && statuses.iter().any(|s| {
                s.state.as_ref().is_some_and(|st| st.running.is_some() || st.terminated.is_some())
                    || s.restart_count > 0
            }) =>
        {
            "Running"
        }
        _ if old.phase.as_deref() == Some("Running") && input.plan.outcome == Outcome::Active && sandbox.is_some() => {
            "Running"
        }
        _ => "Pending",
    };
    let terminal = matches!(phase, "Succeeded" | "Failed");

    let not_ready_message = format!("containers with unready status: [{}]", unready.join(" "));
    let (ready_reason, ready_message) = if terminal {
        (Some("PodCompleted"), None)
    } else if containers_ready {
        (None, None)
    } else {
        (Some("ContainersNotReady"), Some(not_ready_message))
    };
    let init_unready: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| !input.observed.latest_any(&c.name).is_some_and(|o| o.has_exited() && o.exit_code == 0))
        .map(|c| c.name.as_str())
        .collect();
    let wanted = [
        ("PodReadyToStartContainers", sandbox_ready, None, None),
        (
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            (!initialized).then(|| format!("containers with incomplete status: [{}]", init_unready.join(" "))),
        ),
        ("Ready", containers_ready && !terminal, ready_reason, ready_message.clone()),
        ("ContainersReady", containers_ready && !terminal, ready_reason, ready_message),
    ];
    let mut conditions: Vec<PodCondition> =
        old.conditions.iter().flatten().filter(|c| c.type_ == "PodScheduled").cloned().collect();
    for (kind, value, reason, message) in wanted {
        let status = if value { "True" } else { "False" };
        let previous = old.conditions.iter().flatten().find(|c| c.type_ == kind);
        let since = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(Time(input.now)),
        };
        conditions.push(PodCondition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            reason: reason.map(str::to_owned),
            message,
            last_transition_time: since,
            last_probe_time: None,
            ..Default::default()
        });
    }

    let pod_ip = if is_host_network(pod) {
        Some(input.host_ip.to_owned())
    } else {
        sandbox.map(|s| s.ip.clone()).filter(|ip| !ip.is_empty()).or_else(|| old.pod_ip.clone())
    };
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: Some(input.host_ip.to_owned()),
        host_ips: Some(vec![HostIP { ip: input.host_ip.to_owned() }]),
        pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        pod_ip,
        start_time: old.start_time.clone().or(Some(Time(input.now))),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        qos_class: old.qos_class.clone(),
        ..old
    }
}

fn terminated(obs: &ContainerObs) -> ContainerStateTerminated {
    let reason = if !obs.reason.is_empty() {
        obs.reason.clone()
    } else if obs.exit_code == 0 {
        "Completed".to_owned()
    } else {
        "Error".to_owned()
    };
    ContainerStateTerminated {
        exit_code: obs.exit_code,
        reason: Some(reason),
        message: (!obs.message.is_empty()).then(|| obs.message.clone()),
        started_at: time(obs.started_at),
        finished_at: time(obs.finished_at),
        container_id: Some(format!("{RUNTIME_SCHEME}{}", obs.id)),
        signal: None,
    }
}

fn waiting(w: &Waiting) -> K8sState {
    K8sState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(w.reason.to_owned()),
            message: (!w.message.is_empty()).then(|| w.message.clone()),
        }),
        ..Default::default()
    }
}

fn container_status(c: &Container, input: &StatusInput<'_>, init: bool) -> ContainerStatus {
    let observed = input.observed;
    let latest = observed.latest_any(&c.name);
    let image_back_off;
    let pending = match (input.start_errors.get(&c.name), input.plan.waiting.get(&c.name)) {
        // A failed pull waiting out its back-off shows as upstream's ImagePullBackOff.
        (Some(e), Some(w)) if e.reason == "ErrImagePull" && w.reason == "CrashLoopBackOff" => {
            image_back_off = Waiting {
                reason: "ImagePullBackOff",
                message: format!("Back-off pulling image {:?}", c.image.clone().unwrap_or_default()),
            };
            Some(&image_back_off)
        }
        (Some(e), _) => Some(e),
        (None, w) => w,
    };
    let (state, last) = match (latest, pending) {
        (Some(obs), _) if obs.is_running() => (
            K8sState {
                running: Some(ContainerStateRunning { started_at: time(obs.started_at) }),
                ..Default::default()
            },
            observed.previous_any(&c.name).filter(|p| p.has_exited()).map(terminated),
        ),
        // Exited and about to run again (or held back): waiting, the exit is the last state.
        (Some(obs), Some(w)) if obs.has_exited() => (waiting(w), Some(terminated(obs))),
        (Some(obs), None) if obs.has_exited() => (
            K8sState { terminated: Some(terminated(obs)), ..Default::default() },
            observed.previous_any(&c.name).filter(|p| p.has_exited()).map(terminated),
        ),
        (_, Some(w)) => (waiting(w), latest.filter(|o| o.has_exited()).map(terminated)),
        (_, None) => (
            waiting(&Waiting {
                reason: if init { "PodInitializing" } else { "ContainerCreating" },
                message: String::new(),
            }),
            None,
        ),
    };
    let running = state.running.is_some();
    let verdict = latest.map(|o| (input.probes)(&c.name, &o.id));
    let (ready, started) = match verdict {
        Some(v) if running => (v.ready && v.started, v.started),
        _ => (init && state.terminated.as_ref().is_some_and(|t| t.exit_code == 0), false),
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: latest.map(|o| o.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|o| format!("{RUNTIME_SCHEME}{}", o.id)),
        restart_count: latest.map_or(0, |o| i32::try_from(o.attempt).unwrap_or(i32::MAX)),
        ready,
        started: Some(started),
        state: Some(state),
        last_state: Some(K8sState { terminated: last, ..Default::default() }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
