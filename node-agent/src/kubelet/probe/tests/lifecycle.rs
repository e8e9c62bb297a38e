//! postStart / preStop handlers.

use std::time::Duration;

use k8s_openapi::api::core::v1::{LifecycleHandler, SleepAction, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

use super::support::{Answer, FakeExec, Step, TestServer, exec_probe, http_probe, target};
use crate::kubelet::probe::{ProbeOutcome, run_lifecycle_handler};

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
