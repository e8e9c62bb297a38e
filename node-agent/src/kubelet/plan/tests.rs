//! The plan's table of cases: desired pod × observed runtime → next actions.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::*;
use crate::kubelet::observed::{ContainerState, SandboxObs};

const S: i64 = 1_000_000_000;
const NOW: i64 = 1_000 * S;

fn pod(init: &[&str], regular: &[&str], policy: &str) -> Pod {
    let c = |n: &&str| Container { name: (*n).to_owned(), image: Some("img".into()), ..Default::default() };
    Pod {
        metadata: ObjectMeta {
            name: Some("p".into()),
            namespace: Some("ns".into()),
            uid: Some("u1".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            init_containers: (!init.is_empty()).then(|| init.iter().map(c).collect()),
            containers: regular.iter().map(c).collect(),
            restart_policy: Some(policy.into()),
            termination_grace_period_seconds: Some(5),
            ..Default::default()
        }),
        status: None,
    }
}

fn sandbox(id: &str, attempt: u32, ready: bool) -> SandboxObs {
    SandboxObs { id: id.into(), attempt, ready, created_at: i64::from(attempt), ip: "10.244.1.5".into() }
}

fn container(sb: &str, name: &str, attempt: u32, state: ContainerState, exit_code: i32) -> ContainerObs {
    ContainerObs {
        id: format!("{name}-{attempt}"),
        sandbox_id: sb.into(),
        name: name.into(),
        attempt,
        state,
        created_at: i64::from(attempt),
        started_at: NOW - 60 * S,
        finished_at: if state == ContainerState::Exited { NOW - 2 * S } else { 0 },
        exit_code,
        reason: String::new(),
        message: String::new(),
        image_ref: "sha256:x".into(),
    }
}

use ContainerState::{Created, Exited, Running};

fn plan_of(pod: Option<&Pod>, observed: &Observed, backoff: &Backoff, unhealthy: &[&str]) -> Plan {
    let unhealthy: BTreeSet<String> = unhealthy.iter().map(|s| (*s).to_owned()).collect();
    plan(PlanInput { pod, observed, backoff, unhealthy: &unhealthy, now: NOW })
}

fn start(name: &str, init: bool, attempt: u32) -> Action {
    Action::StartContainer { name: name.into(), init, attempt }
}

const GRACE: Duration = Duration::from_secs(5);

#[test]
fn table() {
    let held = {
        let mut b = Backoff::default();
        b.restarted("app", Duration::from_secs(1));
        b
    };
    let none = Backoff::default();
    let ready = || vec![sandbox("sb1", 0, true)];
    // (case, pod, observed, backoff, unhealthy, expected actions, expected outcome)
    type Case<'a> = (&'a str, Option<Pod>, Observed, &'a Backoff, Vec<&'a str>, Vec<Action>, Outcome);
    let cases: Vec<Case<'_>> = vec![
        (
            "a new pod gets a sandbox",
            Some(pod(&[], &["app"], "Always")),
            Observed::default(),
            &none,
            vec![],
            vec![Action::CreateSandbox { attempt: 0 }],
            Outcome::Active,
        ),
        (
            "init containers start first, one at a time",
            Some(pod(&["i1", "i2"], &["app"], "Always")),
            Observed { sandboxes: ready(), containers: vec![] },
            &none,
            vec![],
            vec![start("i1", true, 0)],
            Outcome::Active,
        ),
        (
            "a running init container is waited for",
            Some(pod(&["i1", "i2"], &["app"], "Always")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "i1", 0, Running, 0)] },
            &none,
            vec![],
            vec![],
            Outcome::Active,
        ),
        (
            "the next init container follows a successful one",
            Some(pod(&["i1", "i2"], &["app"], "Always")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "i1", 0, Exited, 0)] },
            &none,
            vec![],
            vec![start("i2", true, 0)],
            Outcome::Active,
        ),
        (
            "a failed init container is restarted under Always",
            Some(pod(&["i1"], &["app"], "Always")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "i1", 0, Exited, 1)] },
            &none,
            vec![],
            vec![start("i1", true, 1)],
            Outcome::Active,
        ),
        (
            "a failed init container fails the pod under Never",
            Some(pod(&["i1"], &["app"], "Never")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "i1", 0, Exited, 1)] },
            &none,
            vec![],
            vec![Action::KillPod { grace: GRACE }],
            Outcome::Terminal(Phase::Failed),
        ),
        (
            "after init, every regular container starts",
            Some(pod(&["i1"], &["app", "side"], "Always")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "i1", 0, Exited, 0)] },
            &none,
            vec![],
            vec![start("app", false, 0), start("side", false, 0)],
            Outcome::Active,
        ),
        (
            "a running healthy pod needs nothing",
            Some(pod(&[], &["app"], "Always")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "app", 3, Running, 0)] },
            &none,
            vec![],
            vec![],
            Outcome::Active,
        ),
        (
            "a failed liveness probe kills the container",
            Some(pod(&[], &["app"], "Always")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "app", 0, Running, 0)] },
            &none,
            vec!["app"],
            vec![Action::KillContainer {
                id: "app-0".into(),
                name: "app".into(),
                grace: GRACE,
                reason: KillReason::Unhealthy,
            }],
            Outcome::Active,
        ),
        (
            "the first crash restarts at once",
            Some(pod(&[], &["app"], "Always")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "app", 0, Exited, 0)] },
            &none,
            vec![],
            vec![start("app", false, 1)],
            Outcome::Active,
        ),
        (
            "a crash inside its back-off waits",
            Some(pod(&[], &["app"], "Always")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "app", 1, Exited, 2)] },
            &held,
            vec![],
            vec![],
            Outcome::Active,
        ),
        (
            "OnFailure leaves a successful container done, and the pod Succeeded",
            Some(pod(&[], &["app"], "OnFailure")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "app", 0, Exited, 0)] },
            &none,
            vec![],
            vec![Action::KillPod { grace: GRACE }],
            Outcome::Terminal(Phase::Succeeded),
        ),
        (
            "Never with a failed container: the pod Failed",
            Some(pod(&[], &["app", "side"], "Never")),
            Observed {
                sandboxes: ready(),
                containers: vec![container("sb1", "app", 0, Exited, 0), container("sb1", "side", 0, Exited, 3)],
            },
            &none,
            vec![],
            vec![Action::KillPod { grace: GRACE }],
            Outcome::Terminal(Phase::Failed),
        ),
        (
            "a dead sandbox is replaced with the next attempt",
            Some(pod(&[], &["app"], "Always")),
            Observed {
                sandboxes: vec![sandbox("sb1", 0, false)],
                containers: vec![container("sb1", "app", 0, Exited, 137)],
            },
            &none,
            vec![],
            vec![Action::CreateSandbox { attempt: 1 }],
            Outcome::Active,
        ),
        (
            "a container in a new sandbox keeps counting restarts",
            Some(pod(&[], &["app"], "Always")),
            Observed {
                sandboxes: vec![sandbox("sb1", 0, false), sandbox("sb2", 1, true)],
                containers: vec![container("sb1", "app", 4, Exited, 137)],
            },
            &none,
            vec![],
            vec![start("app", false, 5)],
            Outcome::Active,
        ),
        (
            "a finished pod whose sandbox is gone stays finished",
            Some(pod(&[], &["app"], "Never")),
            Observed {
                sandboxes: vec![sandbox("sb1", 0, false)],
                containers: vec![container("sb1", "app", 0, Exited, 0)],
            },
            &none,
            vec![],
            vec![],
            Outcome::Terminal(Phase::Succeeded),
        ),
        (
            "a container created but never started is started again",
            Some(pod(&[], &["app"], "Always")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "app", 0, Created, 0)] },
            &none,
            vec![],
            vec![start("app", false, 1)],
            Outcome::Active,
        ),
        (
            "old instances beyond the previous one are removed",
            Some(pod(&[], &["app"], "Always")),
            Observed {
                sandboxes: ready(),
                containers: vec![
                    container("sb1", "app", 0, Exited, 1),
                    container("sb1", "app", 1, Exited, 1),
                    container("sb1", "app", 2, Exited, 1),
                    container("sb1", "app", 3, Running, 0),
                ],
            },
            &none,
            vec![],
            vec![Action::RemoveContainer { id: "app-1".into() }, Action::RemoveContainer { id: "app-0".into() }],
            Outcome::Active,
        ),
        (
            "a deleted pod is stopped with its grace period",
            Some(deleting(pod(&[], &["app"], "Always"), 7)),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "app", 0, Running, 0)] },
            &none,
            vec![],
            vec![Action::KillPod { grace: Duration::from_secs(7) }],
            Outcome::Active,
        ),
        (
            "then its sandboxes are removed",
            Some(deleting(pod(&[], &["app"], "Always"), 7)),
            Observed {
                sandboxes: vec![sandbox("sb1", 0, false)],
                containers: vec![container("sb1", "app", 0, Exited, 0)],
            },
            &none,
            vec![],
            vec![Action::RemoveSandbox { id: "sb1".into() }],
            Outcome::Active,
        ),
        (
            "then it is gone",
            Some(deleting(pod(&[], &["app"], "Always"), 7)),
            Observed::default(),
            &none,
            vec![],
            vec![],
            Outcome::Removed,
        ),
        (
            "a pod gone from the API is stopped too",
            None,
            Observed { sandboxes: ready(), containers: vec![container("sb1", "app", 0, Running, 0)] },
            &none,
            vec![],
            vec![Action::KillPod { grace: Duration::from_secs(2) }],
            Outcome::Active,
        ),
        (
            "a pod the API has as Succeeded is kept stopped",
            Some(finished(pod(&[], &["app"], "Always"), "Succeeded")),
            Observed { sandboxes: ready(), containers: vec![container("sb1", "app", 0, Running, 0)] },
            &none,
            vec![],
            vec![Action::KillPod { grace: GRACE }],
            Outcome::Terminal(Phase::Succeeded),
        ),
    ];
    for (case, pod, observed, backoff, unhealthy, actions, outcome) in cases {
        let plan = plan_of(pod.as_ref(), &observed, backoff, &unhealthy);
        assert_eq!(plan.actions, actions, "{case}");
        assert_eq!(plan.outcome, outcome, "{case}");
    }
}

fn deleting(mut pod: Pod, grace: i64) -> Pod {
    pod.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::from_second(1).unwrap()));
    pod.metadata.deletion_grace_period_seconds = Some(grace);
    pod
}

fn finished(mut pod: Pod, phase: &str) -> Pod {
    pod.status = Some(PodStatus { phase: Some(phase.into()), ..Default::default() });
    pod
}

#[test]
fn back_off_shows_as_crash_loop_and_wakes_when_it_ends() {
    let mut backoff = Backoff::default();
    backoff.restarted("app", Duration::from_secs(1));
    let observed =
        Observed { sandboxes: vec![sandbox("sb1", 0, true)], containers: vec![container("sb1", "app", 1, Exited, 2)] };
    let plan = plan_of(Some(&pod(&[], &["app"], "Always")), &observed, &backoff, &[]);
    let waiting = &plan.waiting["app"];
    assert_eq!(waiting.reason, "CrashLoopBackOff");
    assert!(
        waiting.message.starts_with("back-off 10s restarting failed container=app pod=p_ns"),
        "{}",
        waiting.message
    );
    assert_eq!(plan.wake_after, Some(Duration::from_secs(8)));
}

#[test]
fn containers_after_a_running_init_container_are_initializing() {
    let observed =
        Observed { sandboxes: vec![sandbox("sb1", 0, true)], containers: vec![container("sb1", "i1", 0, Running, 0)] };
    let plan = plan_of(Some(&pod(&["i1"], &["app"], "Always")), &observed, &Backoff::default(), &[]);
    assert_eq!(plan.waiting["app"].reason, "PodInitializing");
}
