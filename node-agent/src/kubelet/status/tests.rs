//! The status's cases: what `kubectl get pods` shows for each runtime state.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::kubelet::observed::{ContainerState, SandboxObs};

const S: i64 = 1_000_000_000;

fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta { name: Some("p".into()), namespace: Some("ns".into()), ..Default::default() },
        spec: Some(PodSpec {
            containers: vec![Container { name: "app".into(), image: Some("img:1".into()), ..Default::default() }],
            ..Default::default()
        }),
        status: None,
    }
}

fn observed(state: ContainerState, attempt: u32, exit_code: i32) -> Observed {
    let c = |attempt: u32, state: ContainerState| ContainerObs {
        id: format!("c{attempt}"),
        sandbox_id: "sb".into(),
        name: "app".into(),
        attempt,
        state,
        created_at: i64::from(attempt),
        started_at: 10 * S,
        finished_at: if state == ContainerState::Exited { 20 * S } else { 0 },
        exit_code,
        reason: String::new(),
        message: String::new(),
        image_ref: "sha256:abc".into(),
    };
    let mut containers = vec![c(attempt, state)];
    if attempt > 0 {
        containers.push(c(attempt - 1, ContainerState::Exited));
    }
    Observed {
        sandboxes: vec![SandboxObs {
            id: "sb".into(),
            attempt: 0,
            ready: true,
            created_at: 1,
            ip: "10.244.1.7".into(),
        }],
        containers,
    }
}

fn status_of(pod: &Pod, observed: &Observed, plan: &Plan, ready: bool) -> PodStatus {
    let probes = move |_: &str, _: &str| ProbeVerdict { ready, started: true };
    let errors = BTreeMap::new();
    pod_status(&StatusInput {
        pod,
        observed,
        plan,
        start_errors: &errors,
        probes: &probes,
        host_ip: "192.168.77.11",
        now: jiff::Timestamp::from_second(1_000).unwrap(),
    })
}

fn active() -> Plan {
    Plan { actions: vec![], outcome: Outcome::Active, waiting: BTreeMap::new(), wake_after: None }
}

fn condition(status: &PodStatus, kind: &str) -> String {
    status.conditions.iter().flatten().find(|c| c.type_ == kind).map(|c| c.status.clone()).unwrap_or_default()
}

#[test]
fn a_running_ready_container_makes_a_ready_running_pod() {
    let s = status_of(&pod(), &observed(ContainerState::Running, 0, 0), &active(), true);
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(s.pod_ip.as_deref(), Some("10.244.1.7"));
    assert_eq!(s.host_ip.as_deref(), Some("192.168.77.11"));
    assert_eq!(condition(&s, "Ready"), "True");
    assert_eq!(condition(&s, "ContainersReady"), "True");
    assert_eq!(condition(&s, "Initialized"), "True");
    let c = &s.container_statuses.as_ref().unwrap()[0];
    assert!(c.ready);
    assert_eq!(c.container_id.as_deref(), Some("containerd://c0"));
    assert_eq!(c.image_id, "sha256:abc");
    assert!(c.state.as_ref().unwrap().running.is_some());
}

#[test]
fn an_unready_container_makes_the_pod_unready() {
    let s = status_of(&pod(), &observed(ContainerState::Running, 0, 0), &active(), false);
    assert_eq!(condition(&s, "Ready"), "False");
    let ready = s.conditions.iter().flatten().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
    assert_eq!(ready.message.as_deref(), Some("containers with unready status: [app]"));
}

#[test]
fn a_crash_loop_shows_waiting_with_the_last_exit() {
    let mut plan = active();
    plan.waiting.insert("app".into(), Waiting { reason: "CrashLoopBackOff", message: "back-off 20s".into() });
    let s = status_of(&pod(), &observed(ContainerState::Exited, 2, 1), &plan, true);
    let c = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(c.restart_count, 2);
    assert_eq!(c.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert!(!c.ready);
    assert_eq!(s.phase.as_deref(), Some("Running"));
}

#[test]
fn a_finished_pod_is_succeeded_and_not_ready() {
    let plan = Plan { outcome: Outcome::Terminal(Phase::Succeeded), ..active() };
    let s = status_of(&pod(), &observed(ContainerState::Exited, 0, 0), &plan, true);
    assert_eq!(s.phase.as_deref(), Some("Succeeded"));
    assert_eq!(condition(&s, "Ready"), "False");
    let c = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(c.state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(), Some("Completed"));
}

#[test]
fn a_new_pod_is_pending_with_containers_creating() {
    let s = status_of(&pod(), &Observed::default(), &active(), true);
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    let c = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(c.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("ContainerCreating"));
}

#[test]
fn conditions_keep_their_transition_time_while_they_hold() {
    let mut p = pod();
    let first = status_of(&p, &observed(ContainerState::Running, 0, 0), &active(), true);
    p.status = Some(first.clone());
    let later = pod_status(&StatusInput {
        pod: &p,
        observed: &observed(ContainerState::Running, 0, 0),
        plan: &active(),
        start_errors: &BTreeMap::new(),
        probes: &|_: &str, _: &str| ProbeVerdict { ready: true, started: true },
        host_ip: "192.168.77.11",
        now: jiff::Timestamp::from_second(2_000).unwrap(),
    });
    assert_eq!(first.conditions, later.conditions);
    assert_eq!(first, later, "an unchanged pod gives an unchanged status (so no write)");
}

#[test]
fn an_oom_kill_shows_as_oom_killed_with_its_message() {
    // Restarted after the OOM kill: running now, the kill is the last state.
    let mut o = observed(ContainerState::Running, 1, 0);
    let killed = o.containers.iter_mut().find(|c| c.attempt == 0).unwrap();
    (killed.exit_code, killed.reason, killed.message) = (137, "OOMKilled".into(), "log tail".into());
    let s = status_of(&pod(), &o, &active(), true);
    let c = &s.container_statuses.as_ref().unwrap()[0];
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (137, Some("OOMKilled")));
    assert_eq!(last.message.as_deref(), Some("log tail"));
    assert_eq!(last.container_id.as_deref(), Some("containerd://c0"));
    assert_eq!(c.restart_count, 1);
}
