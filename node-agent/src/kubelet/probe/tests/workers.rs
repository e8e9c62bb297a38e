//! Workers through the manager: periods, delays, thresholds, startup gating, restarts.
//! Exec probes on a fake runner with paused time, so every instant is exact: probes run
//! on whole seconds and the tests look at half seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use super::support::{Answer, FakeExec, LOCALHOST, Step, TestServer, container, exec_probe, http_probe};
use crate::kubelet::probe::{ContainerStart, ProbeKind, ProbeManager, ProbeUpdate, RunningContainer};

const POD: &str = "pod-1";

struct Harness {
    manager: ProbeManager<FakeExec>,
    updates: UnboundedReceiver<ProbeUpdate>,
    exec: Arc<FakeExec>,
    t0: Instant,
}

impl Harness {
    fn new() -> Self {
        let exec = FakeExec::new();
        let (manager, updates) = ProbeManager::new(exec.clone());
        Self { manager, updates, exec, t0: Instant::now() }
    }

    fn start(&self, container: &Container, container_id: &str) -> bool {
        self.start_at(container, container_id, Instant::now())
    }

    fn start_at(&self, container: &Container, container_id: &str, started_at: Instant) -> bool {
        self.manager.add_container(ContainerStart {
            pod_uid: POD,
            pod_ip: Some(LOCALHOST),
            container,
            container_id,
            started_at,
            was_ready: false,
        })
    }

    /// A container adopted after an agent restart whose API status says it is ready.
    fn adopt_ready(&self, container: &Container, container_id: &str) -> bool {
        self.manager.add_container(ContainerStart {
            pod_uid: POD,
            pod_ip: Some(LOCALHOST),
            container,
            container_id,
            started_at: Instant::now(),
            was_ready: true,
        })
    }

    /// Lets time run to `seconds` after the start of the test.
    async fn at(&self, seconds: f64) {
        tokio::time::sleep_until(self.t0 + Duration::from_secs_f64(seconds)).await;
    }

    fn drain(&mut self) -> Vec<ProbeUpdate> {
        std::iter::from_fn(|| self.updates.try_recv().ok()).collect()
    }

    fn calls(&self, command: &str) -> Vec<u64> {
        self.exec.calls_of(command, self.t0).iter().map(Duration::as_secs).collect()
    }
}

fn timed(mut probe: Probe, period: i32, success: i32, failure: i32) -> Probe {
    probe.period_seconds = Some(period);
    probe.success_threshold = Some(success);
    probe.failure_threshold = Some(failure);
    probe
}

fn app(startup: Option<Probe>, liveness: Option<Probe>, readiness: Option<Probe>) -> Container {
    Container { startup_probe: startup, liveness_probe: liveness, readiness_probe: readiness, ..container("app", 8080) }
}

#[tokio::test(start_paused = true)]
async fn readiness_starts_false_and_follows_the_probe_every_period() {
    let mut h = Harness::new();
    assert!(h.start(&app(None, None, Some(exec_probe("ready"))), "c1"));
    assert_eq!(h.manager.readiness(POD, "app"), Some(false));
    assert_eq!(h.manager.liveness(POD, "app"), None);
    assert_eq!(h.manager.started(POD, "app"), None);

    h.at(0.5).await;
    assert_eq!(h.manager.readiness(POD, "app"), Some(true));
    let updates = h.drain();
    assert_eq!(
        updates,
        [ProbeUpdate {
            pod_uid: POD.to_owned(),
            container_name: "app".to_owned(),
            container_id: "c1".to_owned(),
            kind: ProbeKind::Readiness,
            result: true,
            changed: true,
            failed_attempt: false,
            message: "Readiness probe succeeded".to_owned(),
            termination_grace_period_seconds: None,
        }]
    );
    h.at(20.5).await;
    // Default period 10 s; successes that change nothing are not sent.
    assert_eq!(h.calls("ready"), [0, 10, 20]);
    assert!(h.drain().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_adopted_ready_container_stays_ready_until_its_probe_fails_enough() {
    let mut h = Harness::new();
    h.exec.script("ready", &[], Step::Exit(1, "not ready"));
    h.adopt_ready(&app(None, None, Some(timed(exec_probe("ready"), 1, 1, 3))), "c1");
    assert_eq!(h.manager.readiness(POD, "app"), Some(true), "ready as the API had it, before any probe");
    h.at(1.5).await;
    assert_eq!(h.manager.readiness(POD, "app"), Some(true), "two failures are under the threshold of 3");
    h.at(2.5).await;
    assert_eq!(h.manager.readiness(POD, "app"), Some(false));
    assert!(h.drain().iter().any(|u| u.changed && !u.result));
}

#[tokio::test(start_paused = true)]
async fn liveness_fails_after_the_failure_threshold_then_stops() {
    let mut h = Harness::new();
    h.exec.script("live", &[], Step::Exit(1, "boom"));
    let mut probe = timed(exec_probe("live"), 5, 1, 3);
    probe.termination_grace_period_seconds = Some(7);
    h.start(&app(None, Some(probe), None), "c1");

    h.at(5.5).await;
    assert_eq!(h.manager.liveness(POD, "app"), Some(true));
    assert_eq!(h.manager.failed(POD, "app"), None);
    h.at(10.5).await;
    let updates = h.drain();
    let summary: Vec<(bool, bool, bool)> = updates.iter().map(|u| (u.result, u.changed, u.failed_attempt)).collect();
    // Two failures change nothing yet; every failure is an Event.
    assert_eq!(summary, [(true, false, true), (true, false, true), (false, true, true)]);
    assert!(updates.iter().all(|u| u.message == "Liveness probe failed: boom"));
    assert!(updates.iter().all(|u| u.termination_grace_period_seconds == Some(7)));
    assert_eq!(h.manager.liveness(POD, "app"), Some(false));
    assert_eq!(h.manager.failed(POD, "app"), Some(ProbeKind::Liveness));

    // On hold until the container is replaced.
    h.at(60.0).await;
    assert_eq!(h.calls("live"), [0, 5, 10]);
}

#[tokio::test(start_paused = true)]
async fn readiness_success_threshold_and_recovery() {
    let mut h = Harness::new();
    h.exec.script(
        "ready",
        &[Step::Exit(0, ""), Step::Exit(0, ""), Step::Exit(1, "down"), Step::Exit(0, "")],
        Step::Exit(0, ""),
    );
    h.start(&app(None, None, Some(timed(exec_probe("ready"), 1, 2, 1))), "c1");
    let mut states = Vec::new();
    for at in [0.5, 1.5, 2.5, 3.5, 4.5] {
        h.at(at).await;
        states.push(h.manager.readiness(POD, "app").unwrap());
    }
    assert_eq!(states, [false, true, false, false, true]);
    let changes: Vec<bool> = h.drain().iter().filter(|u| u.changed).map(|u| u.result).collect();
    assert_eq!(changes, [true, false, true]);
}

#[tokio::test(start_paused = true)]
async fn initial_delay_counts_from_the_container_start() {
    let h = Harness::new();
    let mut probe = exec_probe("ready");
    probe.initial_delay_seconds = Some(15);
    h.start(&app(None, None, Some(probe.clone())), "c1");
    // A container found running for 100 s (agent restart) is not delayed again.
    let mut adopted = app(None, None, Some(probe));
    adopted.name = "adopted".to_owned();
    adopted.readiness_probe.as_mut().unwrap().exec.as_mut().unwrap().command = Some(vec!["adopted".to_owned()]);
    let long_ago = ContainerStart::instant_of(SystemTime::now() - Duration::from_secs(100));
    assert_eq!((Instant::now() - long_ago).as_secs(), 100);
    h.start_at(&adopted, "c2", long_ago);

    h.at(25.5).await;
    assert_eq!(h.calls("ready"), [15, 25]);
    assert_eq!(h.calls("adopted"), [0, 10, 20]);
}

#[tokio::test(start_paused = true)]
async fn startup_probe_gates_liveness_and_readiness() {
    let mut h = Harness::new();
    h.exec.script("boot", &[Step::Exit(1, ""), Step::Exit(1, "")], Step::Exit(0, ""));
    let container = app(
        Some(timed(exec_probe("boot"), 10, 1, 5)),
        Some(timed(exec_probe("live"), 3, 1, 3)),
        Some(timed(exec_probe("ready"), 3, 1, 3)),
    );
    h.start(&container, "c1");
    assert_eq!(h.manager.started(POD, "app"), Some(false));

    h.at(19.5).await;
    assert!(h.calls("live").is_empty() && h.calls("ready").is_empty());
    assert_eq!(h.manager.started(POD, "app"), Some(false));
    assert_eq!(h.manager.failed(POD, "app"), None);

    h.at(26.5).await;
    assert_eq!(h.manager.started(POD, "app"), Some(true));
    assert_eq!(h.manager.readiness(POD, "app"), Some(true));
    assert_eq!(h.calls("live"), [20, 23, 26]);
    assert_eq!(h.calls("ready"), [20, 23, 26]);
    // A started container is not probed for startup again.
    h.at(60.5).await;
    assert_eq!(h.calls("boot"), [0, 10, 20]);
    let startup: Vec<(bool, bool)> =
        h.drain().iter().filter(|u| u.kind == ProbeKind::Startup).map(|u| (u.result, u.changed)).collect();
    assert_eq!(startup, [(false, false), (false, false), (true, true)]);
}

#[tokio::test(start_paused = true)]
async fn startup_failure_asks_for_a_restart_and_never_runs_liveness() {
    let mut h = Harness::new();
    h.exec.script("boot", &[], Step::Exit(1, "not up"));
    let container = app(Some(timed(exec_probe("boot"), 10, 1, 2)), Some(exec_probe("live")), None);
    h.start(&container, "c1");
    h.at(60.5).await;
    assert_eq!(h.calls("boot"), [0, 10]);
    assert!(h.calls("live").is_empty());
    assert_eq!(h.manager.failed(POD, "app"), Some(ProbeKind::Startup));
    let last = h.drain().pop().unwrap();
    assert_eq!((last.kind, last.result, last.changed), (ProbeKind::Startup, false, true));
    assert_eq!(last.message, "Startup probe failed: not up");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_container_starts_fresh_and_removal_stops_workers() {
    let mut h = Harness::new();
    let container = app(None, None, Some(timed(exec_probe("ready"), 5, 1, 3)));
    assert!(h.start(&container, "c-old"));
    h.at(0.5).await;
    assert_eq!(h.manager.readiness(POD, "app"), Some(true));
    // Idempotent for the same container.
    assert!(!h.start(&container, "c-old"));
    h.at(2.0).await;
    assert!(h.start(&container, "c-new"));
    assert_eq!(h.manager.readiness(POD, "app"), Some(false));
    assert_eq!(h.manager.container_id(POD, "app").as_deref(), Some("c-new"));
    // A late stop of the old container changes nothing.
    assert!(!h.manager.remove_container(POD, "app", "c-old"));

    h.at(12.5).await;
    assert_eq!(h.manager.readiness(POD, "app"), Some(true));
    let ids: Vec<(String, u64)> =
        h.exec.calls().iter().map(|c| (c.container_id.clone(), (c.at - h.t0).as_secs())).collect();
    let expected = [("c-old", 0), ("c-new", 2), ("c-new", 7), ("c-new", 12)];
    assert_eq!(ids, expected.map(|(id, at)| (id.to_owned(), at)));
    let updates = h.drain();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[1].container_id, "c-new");

    h.manager.remove_pod(POD);
    assert_eq!(h.manager.readiness(POD, "app"), None);
    assert_eq!(h.manager.container_id(POD, "app"), None);
    h.at(40.0).await;
    assert_eq!(h.exec.calls().len(), 4);
    assert!(h.drain().is_empty());
}

#[tokio::test(start_paused = true)]
async fn remove_container_stops_its_workers() {
    let h = Harness::new();
    h.start(&app(None, Some(exec_probe("live")), None), "c1");
    h.at(0.5).await;
    assert!(h.manager.remove_container(POD, "app", "c1"));
    assert_eq!(h.manager.liveness(POD, "app"), None);
    h.at(30.0).await;
    assert_eq!(h.calls("live"), [0]);
}

#[tokio::test(start_paused = true)]
async fn errors_of_the_runtime_keep_the_state_but_are_reported() {
    let mut h = Harness::new();
    h.exec.script("live", &[], Step::Error("runtime down"));
    h.start(&app(None, Some(timed(exec_probe("live"), 10, 1, 1)), None), "c1");
    h.at(20.5).await;
    let updates = h.drain();
    assert_eq!(updates.len(), 3);
    assert!(updates.iter().all(|u| u.result && !u.changed && u.failed_attempt));
    assert!(updates[0].message.starts_with("Liveness probe errored: "));
    assert!(updates[0].message.contains("runtime down"));
    assert_eq!(h.manager.liveness(POD, "app"), Some(true));
}

#[tokio::test(start_paused = true)]
async fn a_container_without_probes_has_no_workers() {
    let h = Harness::new();
    assert!(!h.start(&app(None, None, None), "c1"));
    assert_eq!(h.manager.readiness(POD, "app"), None);
    assert_eq!(h.manager.container_id(POD, "app"), None);
}

/// The whole path in real time: an HTTP readiness probe against a server that turns
/// unhealthy.
#[tokio::test]
async fn http_readiness_follows_a_real_server() {
    let status = Arc::new(AtomicU16::new(200));
    let server = TestServer::http({
        let status = status.clone();
        move |_| Answer::status(status.load(Ordering::SeqCst))
    })
    .await;
    let exec = FakeExec::new();
    let (manager, mut updates) = ProbeManager::new(exec);
    let probe = timed(http_probe(IntOrString::String("http".to_owned()), "/ready"), 1, 1, 1);
    let container = Container { readiness_probe: Some(probe), ..container("app", server.port) };
    manager.add_container(ContainerStart {
        pod_uid: POD,
        pod_ip: Some(LOCALHOST),
        container: &container,
        container_id: "c1",
        started_at: Instant::now(),
        was_ready: false,
    });
    let next = async |updates: &mut UnboundedReceiver<ProbeUpdate>| {
        tokio::time::timeout(Duration::from_secs(5), updates.recv()).await.expect("a probe update within 5 s").unwrap()
    };
    let first = next(&mut updates).await;
    assert!(first.result && first.changed);
    status.store(503, Ordering::SeqCst);
    let second = next(&mut updates).await;
    assert!(!second.result && second.changed);
    assert_eq!(second.message, "Readiness probe failed: HTTP probe failed with statuscode: 503");
    assert_eq!(manager.readiness(POD, "app"), Some(false));
}

fn pod_of(containers: Vec<Container>) -> Pod {
    Pod {
        spec: Some(PodSpec { containers, ..PodSpec::default() }),
        status: Some(PodStatus { pod_ip: Some("127.0.0.1".to_owned()), ..PodStatus::default() }),
        ..Pod::default()
    }
}

#[tokio::test(start_paused = true)]
async fn sync_pod_follows_what_runs_and_verdicts_follow_the_instance() {
    let mut h = Harness::new();
    h.exec.script("live", &[], Step::Exit(1, "dead"));
    let probed = app(None, Some(timed(exec_probe("live"), 1, 1, 1)), Some(exec_probe("ready")));
    let plain = container("side", 9000);
    let pod = pod_of(vec![probed, plain]);
    let now = Instant::now();
    let running = |id| {
        [
            RunningContainer { name: "app", id, started_at: now },
            RunningContainer { name: "side", id: "s1", started_at: now },
        ]
    };
    h.manager.sync_pod(POD, &pod, &running("c1"));
    assert!(!h.manager.ready_for(POD, "app", "c1"));
    assert!(h.manager.ready_for(POD, "side", "s1"));
    assert!(h.manager.started_for(POD, "app", "c1"));
    h.at(0.5).await;
    assert!(h.manager.ready_for(POD, "app", "c1"));
    // Another instance of the container is not what the workers probe.
    assert!(!h.manager.ready_for(POD, "app", "c0"));
    assert_eq!(h.manager.failed_containers(POD), [("app".to_owned(), "c1".to_owned(), ProbeKind::Liveness)]);
    assert_eq!(h.manager.container_id(POD, "side"), None);

    // Restarted: new workers, fresh results.
    h.manager.sync_pod(POD, &pod, &running("c2"));
    assert!(h.manager.failed_containers(POD).is_empty());
    assert!(!h.manager.ready_for(POD, "app", "c2"));
    h.drain();
    // Nothing runs any more.
    h.manager.sync_pod(POD, &pod, &[]);
    assert_eq!(h.manager.container_id(POD, "app"), None);
    assert_eq!(h.manager.readiness(POD, "app"), None);
    h.at(30.0).await;
    assert!(h.exec.calls().iter().all(|c| c.at - h.t0 < Duration::from_secs(1)));
    assert!(h.drain().is_empty());
}

#[test]
fn cri_timestamps_become_tokio_instants() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let ten_s_ago = SystemTime::now() - Duration::from_secs(10);
        let nanos = i64::try_from(ten_s_ago.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()).unwrap();
        let age = Instant::now() - ContainerStart::instant_of_unix_nanos(nanos);
        assert!(age >= Duration::from_secs(10) && age < Duration::from_secs(11), "{age:?}");
        // Not started (0) or in the future: now.
        let future = ContainerStart::instant_of(SystemTime::now() + Duration::from_secs(60));
        assert!(future >= Instant::now() - Duration::from_secs(1));
    });
}
