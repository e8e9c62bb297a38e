//! The probe manager: starts a worker for each probe of a started container, stops them
//! when the container stops, is replaced (new container id) or its pod goes, and keeps
//! the latest result of each for the pod worker to read.
//!
//! Keyed by (pod uid, container name, kind); every result carries the container id it
//! belongs to, and a worker whose container is no longer current can write nothing.
//! It must not act on results: the pod worker reads them (or the [`ProbeUpdate`]
//! channel) and decides.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ProbeKind;
use super::handler::{self, ExecRunner};
use super::results::{ProbeKey, ProbeResult, ProbeUpdate, Results};
use super::target::HandlerTarget;
use super::worker::{Worker, initial_state};

/// A container that has just started (or, after an agent restart, was found running).
#[derive(Debug, Clone, Copy)]
pub struct ContainerStart<'a> {
    pub pod_uid: &'a str,
    /// The default host of httpGet and tcpSocket probes.
    pub pod_ip: Option<IpAddr>,
    /// The spec: its probes and its ports (for named probe ports).
    pub container: &'a Container,
    /// The CRI id of the started container; exec probes run in it.
    pub container_id: &'a str,
    /// When it started, in tokio time: `Instant::now()` for a container just started,
    /// [`ContainerStart::instant_of`] its CRI `startedAt` for one adopted after an agent
    /// restart, so that initialDelaySeconds is not served twice.
    pub started_at: Instant,
    /// The pod's status in the API says this very instance is ready: a container adopted
    /// after an agent restart stays ready until its readiness probe says otherwise,
    /// instead of dropping out of its Services until the first probe (which would fail
    /// every request to a Service whose backends all run on the restarted node).
    pub was_ready: bool,
}

impl ContainerStart<'_> {
    /// The tokio instant of a wall-clock start time (the CRI's `startedAt`), for
    /// [`ContainerStart::started_at`]; a start in the future or beyond the clock's
    /// range is taken as now.
    pub fn instant_of(started: SystemTime) -> Instant {
        let now = Instant::now();
        SystemTime::now().duration_since(started).ok().and_then(|age| now.checked_sub(age)).unwrap_or(now)
    }

    /// The tokio instant of a CRI timestamp (nanoseconds since the epoch).
    pub fn instant_of_unix_nanos(nanos: i64) -> Instant {
        let since_epoch = Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
        Self::instant_of(SystemTime::UNIX_EPOCH + since_epoch)
    }
}

/// A container the runtime has running, for [`ProbeManager::sync_pod`].
#[derive(Debug, Clone, Copy)]
pub struct RunningContainer<'a> {
    pub name: &'a str,
    pub id: &'a str,
    /// See [`ContainerStart::started_at`].
    pub started_at: Instant,
}

/// The workers of one container.
struct ContainerWorkers {
    container_id: String,
    tasks: Vec<JoinHandle<()>>,
    /// Kept here too, so the gate stays open after the startup worker has finished.
    _startup_done: Option<watch::Sender<bool>>,
}

impl Drop for ContainerWorkers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

type ContainerKey = (String, String);

/// Probe workers of every container on the node, and their latest results.
pub struct ProbeManager<E> {
    exec: Arc<E>,
    results: Arc<Results>,
    containers: Mutex<HashMap<ContainerKey, ContainerWorkers>>,
}

impl<E: ExecRunner> ProbeManager<E> {
    /// A manager whose exec probes go through `exec`, and the receiving end of its
    /// updates (see [`ProbeUpdate`] for when one is sent).
    pub fn new(exec: Arc<E>) -> (Self, mpsc::UnboundedReceiver<ProbeUpdate>) {
        let (updates, receiver) = mpsc::unbounded_channel();
        let manager = Self { exec, results: Arc::new(Results::new(updates)), containers: Mutex::new(HashMap::new()) };
        (manager, receiver)
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<ContainerKey, ContainerWorkers>> {
        self.containers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the workers of a started container. Idempotent for the same container id
    /// (call it on every sync); a new id for the same container replaces the old
    /// workers and results (a restart starts fresh). A container without probes has no
    /// workers and its results read `None`. Returns whether workers were started.
    /// Must be called inside a tokio runtime (workers are spawned tasks).
    pub fn add_container(&self, start: ContainerStart<'_>) -> bool {
        let key: ContainerKey = (start.pod_uid.to_owned(), start.container.name.clone());
        let mut containers = self.containers();
        if containers.get(&key).is_some_and(|current| current.container_id == start.container_id) {
            return false;
        }
        self.forget(&mut containers, &key);
        let probes: Vec<(ProbeKind, &Probe)> = ProbeKind::ALL
            .into_iter()
            .filter_map(|kind| probe_of(start.container, kind).map(|probe| (kind, probe)))
            .collect();
        if probes.is_empty() {
            return false;
        }
        let has_startup = probes.iter().any(|(kind, _)| *kind == ProbeKind::Startup);
        let (startup_done, gate) = watch::channel(false);
        let target = HandlerTarget::new(start.container_id, start.pod_ip, start.container);
        let mut tasks = Vec::with_capacity(probes.len());
        let mut entries = self.results.lock();
        for (kind, probe) in probes {
            let probe_key =
                ProbeKey { pod_uid: start.pod_uid.to_owned(), container_name: start.container.name.clone(), kind };
            // With a startup probe, readiness waits for it anyway: nothing to carry over.
            let initial = if kind == ProbeKind::Readiness && start.was_ready && !has_startup {
                Some(true)
            } else {
                initial_state(kind)
            };
            entries.insert(
                probe_key.clone(),
                ProbeResult {
                    container_id: start.container_id.to_owned(),
                    kind,
                    result: initial,
                    message: String::new(),
                },
            );
            let worker = Worker {
                key: probe_key,
                container_id: start.container_id.to_owned(),
                probe: probe.clone(),
                target: target.clone(),
                exec: self.exec.clone(),
                started_at: start.started_at,
                startup_gate: (kind != ProbeKind::Startup && has_startup).then(|| gate.clone()),
                startup_done: (kind == ProbeKind::Startup).then(|| startup_done.clone()),
                initial,
                results: self.results.clone(),
            };
            tasks.push(tokio::spawn(worker.run()));
        }
        drop(entries);
        tracing::debug!(pod_uid = %start.pod_uid, container = %start.container.name, container_id = %start.container_id, workers = tasks.len(), "probe workers started");
        containers.insert(
            key,
            ContainerWorkers {
                container_id: start.container_id.to_owned(),
                tasks,
                _startup_done: has_startup.then_some(startup_done),
            },
        );
        true
    }

    /// Stops the workers of a container that stopped, and forgets its results; does
    /// nothing when `container_id` is not the current one (a late stop of a replaced
    /// container). Returns whether something was removed.
    pub fn remove_container(&self, pod_uid: &str, container_name: &str, container_id: &str) -> bool {
        let key: ContainerKey = (pod_uid.to_owned(), container_name.to_owned());
        let mut containers = self.containers();
        if containers.get(&key).is_some_and(|current| current.container_id == container_id) {
            self.forget(&mut containers, &key);
            true
        } else {
            false
        }
    }

    /// Stops the workers of every container of a pod that is gone.
    pub fn remove_pod(&self, pod_uid: &str) {
        let mut containers = self.containers();
        let keys: Vec<ContainerKey> = containers.keys().filter(|(uid, _)| uid == pod_uid).cloned().collect();
        for key in keys {
            self.forget(&mut containers, &key);
        }
    }

    fn forget(&self, containers: &mut HashMap<ContainerKey, ContainerWorkers>, key: &ContainerKey) {
        if containers.remove(key).is_some() {
            self.results.lock().retain(|probe, _| (&probe.pod_uid, &probe.container_name) != (&key.0, &key.1));
        }
    }

    /// Brings a pod's workers in line with what runs now (call it on every sync, before
    /// reading results): starts workers for each running container of `pod` that has
    /// probes and none yet for that id, and stops those of containers no longer running.
    /// Containers are looked up by name among the pod's containers and init containers
    /// (restartable init containers may have probes). Must run inside a tokio runtime.
    pub fn sync_pod(&self, pod_uid: &str, pod: &Pod, running: &[RunningContainer<'_>]) {
        let pod_ip = handler::pod_ip(pod);
        for instance in running {
            if let Some(container) = handler::containers_of(pod).find(|c| c.name == instance.name) {
                self.add_container(ContainerStart {
                    pod_uid,
                    pod_ip,
                    container,
                    container_id: instance.id,
                    started_at: instance.started_at,
                    was_ready: ready_in_api(pod, instance.name, instance.id),
                });
            }
        }
        let mut containers = self.containers();
        let gone: Vec<ContainerKey> = containers
            .iter()
            .filter(|((uid, name), workers)| {
                uid == pod_uid && !running.iter().any(|r| r.name == name && r.id == workers.container_id)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            self.forget(&mut containers, &key);
        }
    }

    /// For the Ready condition of container instance `container_id`: its readiness
    /// probe's result; true without a readiness probe; false while the probe's workers
    /// are for another instance (not synced yet).
    pub fn ready_for(&self, pod_uid: &str, container_name: &str, container_id: &str) -> bool {
        self.verdict_for(pod_uid, container_name, container_id, ProbeKind::Readiness)
    }

    /// Like [`ProbeManager::ready_for`], for the `started` field: the startup probe's
    /// result, true without one.
    pub fn started_for(&self, pod_uid: &str, container_name: &str, container_id: &str) -> bool {
        self.verdict_for(pod_uid, container_name, container_id, ProbeKind::Startup)
    }

    fn verdict_for(&self, pod_uid: &str, name: &str, container_id: &str, kind: ProbeKind) -> bool {
        self.result(pod_uid, name, kind).is_none_or(|r| r.container_id == container_id && r.result == Some(true))
    }

    /// Containers of the pod whose current instance must be restarted, with that
    /// instance's id and the probe that failed (liveness, or startup).
    pub fn failed_containers(&self, pod_uid: &str) -> Vec<(String, String, ProbeKind)> {
        let mut failed: Vec<(String, String, ProbeKind)> = self
            .results
            .lock()
            .iter()
            .filter(|(key, r)| {
                key.pod_uid == pod_uid
                    && matches!(key.kind, ProbeKind::Liveness | ProbeKind::Startup)
                    && r.result == Some(false)
            })
            .map(|(key, r)| (key.container_name.clone(), r.container_id.clone(), key.kind))
            .collect();
        failed.sort();
        failed
    }

    /// The latest state of one probe, with the container id it is about.
    pub fn result(&self, pod_uid: &str, container_name: &str, kind: ProbeKind) -> Option<ProbeResult> {
        self.results
            .lock()
            .get(&ProbeKey { pod_uid: pod_uid.to_owned(), container_name: container_name.to_owned(), kind })
            .cloned()
    }

    /// Whether the readiness probe passes; `None` when the container has no readiness
    /// probe (or no workers), where the caller applies the default: a running container
    /// without a readiness probe is ready.
    pub fn readiness(&self, pod_uid: &str, container_name: &str) -> Option<bool> {
        self.state(pod_uid, container_name, ProbeKind::Readiness)
    }

    /// Whether the startup probe has succeeded (false while undecided or failed);
    /// `None` without a startup probe, where a running container counts as started.
    pub fn started(&self, pod_uid: &str, container_name: &str) -> Option<bool> {
        self.state(pod_uid, container_name, ProbeKind::Startup)
    }

    /// Whether the liveness probe passes (true until failureThreshold failures);
    /// `None` without a liveness probe.
    pub fn liveness(&self, pod_uid: &str, container_name: &str) -> Option<bool> {
        self.state(pod_uid, container_name, ProbeKind::Liveness)
    }

    /// The probe whose failure means the current container must be restarted: liveness
    /// failed, or startup failed.
    pub fn failed(&self, pod_uid: &str, container_name: &str) -> Option<ProbeKind> {
        [ProbeKind::Startup, ProbeKind::Liveness]
            .into_iter()
            .find(|kind| self.result(pod_uid, container_name, *kind).is_some_and(|r| r.result == Some(false)))
    }

    /// The container id the workers of this container run for.
    pub fn container_id(&self, pod_uid: &str, container_name: &str) -> Option<String> {
        self.containers()
            .get(&(pod_uid.to_owned(), container_name.to_owned()))
            .map(|workers| workers.container_id.clone())
    }

    fn state(&self, pod_uid: &str, container_name: &str, kind: ProbeKind) -> Option<bool> {
        self.result(pod_uid, container_name, kind).map(|r| r.result.unwrap_or(false))
    }
}

fn probe_of(container: &Container, kind: ProbeKind) -> Option<&Probe> {
    match kind {
        ProbeKind::Liveness => container.liveness_probe.as_ref(),
        ProbeKind::Readiness => container.readiness_probe.as_ref(),
        ProbeKind::Startup => container.startup_probe.as_ref(),
    }
}

/// Whether the pod's status in the API has container instance `id` (CRI id) of
/// `name` ready.
fn ready_in_api(pod: &Pod, name: &str, id: &str) -> bool {
    let Some(status) = &pod.status else { return false };
    let api_id = format!("{}{id}", crate::kubelet::status::RUNTIME_SCHEME);
    (status.container_statuses.iter().flatten())
        .chain(status.init_container_statuses.iter().flatten())
        .any(|c| c.name == name && c.ready && c.container_id.as_deref() == Some(api_id.as_str()))
}
