//! postStart / preStop handlers.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Lifecycle, LifecycleHandler, Pod, PodSpec, PodStatus, SleepAction, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

use super::support::{Answer, FakeExec, Step, TestServer, container, exec_probe, http_probe, target};
use crate::kubelet::probe::{Hook, ProbeOutcome, run_hook, run_lifecycle_handler};

fn exec_hook(command: &str) -> LifecycleHandler {
    LifecycleHandler { exec: exec_probe(command).exec, ..LifecycleHandler::default() }
}

fn sleep_hook(seconds: i64) -> LifecycleHandler {
    LifecycleHandler { sleep: Some(SleepAction { seconds }), ..LifecycleHandler::default() }
}

#[tokio::test]
async fn exec_hook_passes_timeout_and_reports_output() {
    let exec = FakeExec::new();
    exec.script("drain", &[Step::Exit(0, "")], Step::Exit(3, "still busy"));
    let hook = exec_hook("drain");
    let timeout = Duration::from_secs(25);
    assert_eq!(run_lifecycle_handler(&hook, &target(80), &*exec, timeout).await, ProbeOutcome::Success);
    assert_eq!(
        run_lifecycle_handler(&hook, &target(80), &*exec, timeout).await,
        ProbeOutcome::Failure("still busy".to_owned())
    );
    assert_eq!(exec.calls()[0].timeout, timeout);
}

#[tokio::test]
async fn http_hook_counts_any_answer() {
    let server = TestServer::http(|_| Answer::status(500)).await;
    let hook = LifecycleHandler {
        http_get: http_probe(IntOrString::String("http".to_owned()), "/shutdown").http_get,
        ..LifecycleHandler::default()
    };
    let outcome = run_lifecycle_handler(&hook, &target(server.port), &*FakeExec::new(), Duration::from_secs(2)).await;
    assert_eq!(outcome, ProbeOutcome::Success);
    assert_eq!(server.seen()[0].path, "/shutdown");
}

#[tokio::test]
async fn http_hook_that_gets_no_answer_fails_at_the_timeout() {
    let server = TestServer::http(|_| Answer::Hang).await;
    let hook = LifecycleHandler {
        http_get: http_probe(IntOrString::Int(server.port.into()), "/").http_get,
        ..LifecycleHandler::default()
    };
    let outcome = run_lifecycle_handler(&hook, &target(80), &*FakeExec::new(), Duration::from_millis(300)).await;
    assert!(matches!(&outcome, ProbeOutcome::Failure(m) if m.contains("timed out")), "{outcome:?}");
}

#[tokio::test(start_paused = true)]
async fn sleep_hook_sleeps_within_the_timeout() {
    let exec = FakeExec::new();
    let start = Instant::now();
    let outcome = run_lifecycle_handler(&sleep_hook(5), &target(80), &*exec, Duration::from_secs(30)).await;
    assert_eq!(outcome, ProbeOutcome::Success);
    assert_eq!(start.elapsed(), Duration::from_secs(5));

    let start = Instant::now();
    let outcome = run_lifecycle_handler(&sleep_hook(60), &target(80), &*exec, Duration::from_secs(30)).await;
    assert!(matches!(outcome, ProbeOutcome::Failure(_)), "{outcome:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(30));
}

#[tokio::test]
async fn tcp_and_empty_hooks_fail() {
    let hook = LifecycleHandler {
        tcp_socket: Some(TCPSocketAction { host: None, port: IntOrString::Int(80) }),
        ..LifecycleHandler::default()
    };
    let exec = FakeExec::new();
    let timeout = Duration::from_secs(1);
    assert!(matches!(
        run_lifecycle_handler(&hook, &target(80), &*exec, timeout).await,
        ProbeOutcome::Failure(m) if m.contains("tcpSocket")
    ));
    assert!(matches!(
        run_lifecycle_handler(&LifecycleHandler::default(), &target(80), &*exec, timeout).await,
        ProbeOutcome::Failure(_)
    ));
}

#[tokio::test]
async fn hooks_are_found_in_the_pod_and_use_its_ip() {
    let server = TestServer::http(|_| Answer::status(200)).await;
    let mut app = container("app", server.port);
    app.lifecycle = Some(Lifecycle {
        post_start: Some(LifecycleHandler {
            http_get: http_probe(IntOrString::String("http".to_owned()), "/started").http_get,
            ..LifecycleHandler::default()
        }),
        pre_stop: Some(exec_hook("drain")),
        ..Lifecycle::default()
    });
    let pod = Pod {
        spec: Some(PodSpec { containers: vec![app, container("side", 1)], ..PodSpec::default() }),
        status: Some(PodStatus { pod_ip: Some("127.0.0.1".to_owned()), ..PodStatus::default() }),
        ..Pod::default()
    };
    let exec = FakeExec::new();
    let timeout = Duration::from_secs(5);
    let run = |name, hook| run_hook(&pod, name, "c9", hook, &*exec, timeout);
    assert_eq!(run("app", Hook::PostStart).await, Some(ProbeOutcome::Success));
    assert_eq!(server.seen()[0].path, "/started");
    assert_eq!(run("app", Hook::PreStop).await, Some(ProbeOutcome::Success));
    assert_eq!(exec.calls()[0].container_id, "c9");
    assert_eq!(run("side", Hook::PreStop).await, None);
    assert_eq!(run("missing", Hook::PreStop).await, None);
    assert_eq!(Hook::PreStop.failure_reason(), "FailedPreStopHook");
}
