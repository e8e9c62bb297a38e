//! One pod's worker: observe the runtime, plan, act, report; again after every change of
//! the pod, every change the relist sees in the runtime, a back-off expiring, or the
//! periodic resync. Pods are worked on independently: each worker is a task of its own
//! and a slow or failing pod holds up no other.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use skiff_api::ObjectKey;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::config;
use super::events::EventType::{Normal, Warning};
use super::observed::{ContainerObs, Observed, SandboxObs, UnixNanos};
use super::plan::{self, Action, KillReason, Outcome, PlanInput, Waiting};
use super::status::{self, ProbeVerdict, StatusInput};
use super::status_writer::StatusWriter;
use super::{Shared, now_nanos, static_pods};
use crate::cri::{self, api, labels};

/// How often a worker looks at its pod even when nothing woke it.
const RESYNC: Duration = Duration::from_secs(10);
/// The longest a failed step (a sandbox that cannot be made, an API write) waits before
/// it is tried again.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How often a stopping pod's status is computed again (it is written only when it changed).
const STOPPING_REPORT_EVERY: Duration = Duration::from_millis(200);

/// Why an action failed; the reason is what the container's waiting state shows.
#[derive(Debug, thiserror::Error)]
enum ActionError {
    #[error(transparent)]
    Cri(#[from] cri::Error),
    #[error("{message}")]
    Container { reason: &'static str, message: String },
}

impl ActionError {
    fn waiting(&self) -> Waiting {
        match self {
            Self::Container { reason, message } => Waiting { reason, message: message.clone() },
            Self::Cri(e) => Waiting { reason: "RunContainerError", message: e.to_string() },
        }
    }
}

struct PodWorker {
    shared: Arc<Shared>,
    key: ObjectKey,
    uid: String,
    backoff: super::backoff::Backoff,
    start_errors: BTreeMap<String, Waiting>,
    /// Writes the pod's status to the API beside this worker (locked only to hand a
    /// status over: it is also reported while the pod's containers stop).
    status: std::sync::Mutex<StatusWriter>,
    retry: Duration,
    /// When the pod's volumes were last rewritten.
    volumes_refreshed: Option<std::time::Instant>,
    /// Container instances whose back-off was announced in an event.
    backoff_announced: std::collections::BTreeSet<String>,
    /// Container instances whose OOM kill was announced in an event.
    oom_announced: std::collections::BTreeSet<String>,
}

/// Works on the pod `key` with uid `uid` until it is gone from the API and the runtime.
pub(super) async fn run(shared: Arc<Shared>, key: ObjectKey, uid: String, mut wake: mpsc::UnboundedReceiver<()>) {
    let mut w = PodWorker {
        status: std::sync::Mutex::new(StatusWriter::new(shared.api.clone(), key.clone())),
        shared,
        key,
        uid,
        backoff: Default::default(),
        start_errors: BTreeMap::new(),
        retry: Duration::from_secs(1),
        volumes_refreshed: None,
        backoff_announced: Default::default(),
        oom_announced: Default::default(),
    };
    debug!(pod = %w.key, uid = %w.uid, "pod worker started");
    loop {
        let started = std::time::Instant::now();
        let step = w.step().await;
        crate::metrics::pod_worker_pass(started.elapsed());
        let wait = match step {
            Step::Done => break,
            Step::Again => continue,
            Step::Wait(d) => d,
        };
        tokio::select! {
            woken = wake.recv() => if woken.is_none() { break },
            () = tokio::time::sleep(wait) => {}
        }
        // Several wakes in a row need one look.
        while wake.try_recv().is_ok() {}
    }
    w.shared.forget(&w.uid);
    debug!(pod = %w.key, uid = %w.uid, "pod worker done");
}

enum Step {
    /// Act again at once (the plan had actions).
    Again,
    /// Nothing to do until woken or this long has passed.
    Wait(Duration),
    /// The pod is gone and nothing of it is left.
    Done,
}

impl PodWorker {
    /// The pod from its manifest (a static pod) or from the API; `None` once it is gone.
    fn pod(&self) -> Option<Arc<Pod>> {
        self.shared.pod_by_uid(&self.uid, &self.key)
    }

    /// The pod whose status the API holds: the pod itself, or a static pod's mirror
    /// (with the mirror's status), or `None` while a static pod has no mirror.
    fn status_holder(&self, pod: &Pod) -> Option<Pod> {
        if pod.metadata.uid.as_deref() == Some(self.uid.as_str())
            && !self.shared.statics.lock().unwrap().contains_key(&self.uid)
        {
            return Some(pod.clone());
        }
        let mirror = self.shared.pods.get(&self.key)?;
        if static_pods::mirrored_uid(&mirror) != Some(self.uid.as_str()) {
            return None;
        }
        let mut holder = pod.clone();
        holder.status = mirror.status.clone();
        Some(holder)
    }

    async fn step(&mut self) -> Step {
        let pod = self.pod();
        let observed = match observe(&self.shared, &self.uid).await {
            Ok(o) => o,
            Err(e) => {
                warn!(pod = %self.key, error = %e, "cannot read the pod's state from the runtime; retrying");
                return Step::Wait(self.backoff_retry());
            }
        };
        self.shared.remember(&self.uid, &self.key, &observed);
        // A terminating pod keeps its probes while its containers run: its readiness is
        // reported while they stop (see `report_while_stopping`).
        match pod.as_deref() {
            Some(p) => self.shared.probes.sync(&self.uid, p, &observed),
            None => self.shared.probes.forget_pod(&self.uid),
        }
        let unhealthy = self.shared.probes.unhealthy(&self.uid, &observed);
        let now = now_nanos();
        let mut plan = plan::plan(PlanInput {
            pod: pod.as_deref(),
            observed: &observed,
            backoff: &self.backoff,
            unhealthy: &unhealthy,
            now,
        });
        if let Some(pod) = pod.as_deref()
            && pod.metadata.deletion_timestamp.is_none()
        {
            self.announce_back_off(pod, &observed, &plan);
            self.shared.events.oom_kills(pod, &observed, &mut self.oom_announced);
            self.report(pod, &observed, &plan);
        }
        if plan.actions.is_empty() {
            return match (plan.outcome, pod.clone()) {
                (Outcome::Removed, None) => {
                    self.clean_up_host();
                    Step::Done
                }
                (Outcome::Removed, Some(pod)) => self.finish_deletion(&pod).await,
                _ => {
                    if let Some(pod) = pod.as_deref() {
                        self.refresh_volumes(pod, &observed).await;
                    }
                    Step::Wait(plan.wake_after.map_or(RESYNC, |w| w.min(RESYNC)))
                }
            };
        }
        for action in std::mem::take(&mut plan.actions) {
            debug!(pod = %self.key, ?action, "acting");
            if let Err(e) = self.act(pod.as_deref(), &observed, &plan, action.clone(), now).await {
                warn!(pod = %self.key, ?action, error = %e, "action failed");
                return Step::Wait(self.backoff_retry());
            }
        }
        self.retry = Duration::from_secs(1);
        Step::Again
    }

    /// One BackOff event per crashed instance held back by its back-off.
    fn announce_back_off(&mut self, pod: &Pod, observed: &Observed, plan: &plan::Plan) {
        for (name, waiting) in &plan.waiting {
            let Some(last) = observed.latest_any(name) else { continue };
            if waiting.reason == "CrashLoopBackOff"
                && !self.start_errors.contains_key(name)
                && self.backoff_announced.insert(last.id.clone())
            {
                let (pod_name, namespace, _) = config::identity(pod);
                let message = format!("Back-off restarting failed container {name} in pod {pod_name}_{namespace}");
                self.shared.events.pod(pod, Warning, "BackOff", Some(name), message);
            }
        }
    }

    /// Rewrites the pod's ConfigMap, Secret, downward API and token volumes at most
    /// every resync, so that mounted files follow their sources.
    async fn refresh_volumes(&mut self, pod: &Pod, observed: &Observed) {
        let Some(sandbox) = observed.latest_sandbox().filter(|s| s.ready) else { return };
        if self.volumes_refreshed.is_some_and(|t| t.elapsed() < RESYNC) || pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        self.volumes_refreshed = Some(std::time::Instant::now());
        let dir = self.shared.settings.pod_dir(&self.uid);
        if let Err(e) = self.shared.volumes.prepare(pod, &dir, Some(&sandbox.ip)).await {
            debug!(pod = %self.key, error = %e, "refreshing the pod's volumes failed");
        }
    }

    fn backoff_retry(&mut self) -> Duration {
        let d = self.retry;
        self.retry = (self.retry * 2).min(MAX_RETRY);
        d
    }

    /// Removes what the pod left on the host: its directory (volumes, termination
    /// logs), its container logs and its cgroup.
    fn clean_up_host(&self) {
        let s = &self.shared.settings;
        let (namespace, name, uid) = (self.key.ns().unwrap_or("default"), self.key.name.as_str(), self.uid.as_str());
        if let Err(e) = self.shared.volumes.clean_up(uid, &s.pod_dir(uid)) {
            warn!(pod = %self.key, error = %e, "cannot unmount the pod's volumes");
        }
        for dir in [s.pod_dir(uid), s.pod_log_dir(namespace, name, uid)] {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(pod = %self.key, dir = %dir.display(), error = %e, "cannot remove the pod's directory");
            }
        }
        if let Err(e) = super::cgroups::remove(&config::pod_cgroup_of(uid, s)) {
            warn!(pod = %self.key, error = %e, "cannot remove the pod's cgroup");
        }
    }

    /// The final DELETE of a pod whose deletion the API server left to this node.
    async fn finish_deletion(&mut self, pod: &Pod) -> Step {
        let (name, namespace, uid) = config::identity(pod);
        self.clean_up_host();
        let options = serde_json::json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
        match self.shared.api.delete::<Pod>(Some(namespace), name, Some(&options)).await {
            Ok(_) => {
                info!(pod = %self.key, "pod stopped and deleted");
                Step::Wait(RESYNC)
            }
            Err(e) if e.is_conflict() || e.is_not_found() => Step::Wait(RESYNC),
            Err(e) => {
                warn!(pod = %self.key, error = %e, "cannot finish the pod's deletion; retrying");
                Step::Wait(self.backoff_retry())
            }
        }
    }

    /// Sends the pod's status when it changed.
    fn report(&self, pod: &Pod, observed: &Observed, plan: &plan::Plan) {
        let Some(pod) = self.status_holder(pod) else { return };
        let pod = &pod;
        let probes = |name: &str, id: &str| self.shared.probes.verdict(&self.uid, name, id);
        let status = status::pod_status(&StatusInput {
            pod,
            observed,
            plan,
            start_errors: &self.start_errors,
            probes: &probes as &dyn Fn(&str, &str) -> ProbeVerdict,
            host_ip: &self.shared.settings.node_ip.to_string(),
            now: jiff::Timestamp::now(),
        });
        let new = serde_json::to_value(&status).unwrap_or_default();
        let current = serde_json::to_value(pod.status.clone().unwrap_or_default()).unwrap_or_default();
        self.status.lock().unwrap().send(new, &current);
    }

    /// Reports the status of a pod whose containers are stopping, as its readiness
    /// probes see it, until cancelled: as upstream's kubelet, so that a pod that fails
    /// readiness during its grace period (a preStop hook or its SIGTERM handler turning
    /// it unready) stops serving its Services before its server exits.
    async fn report_while_stopping(&self, pod: Option<&Pod>, observed: &Observed, plan: &plan::Plan) {
        let Some(pod) = pod.filter(|p| p.metadata.deletion_timestamp.is_some()) else {
            return std::future::pending().await;
        };
        loop {
            self.report(pod, observed, plan);
            tokio::time::sleep(STOPPING_REPORT_EVERY).await;
        }
    }

    async fn act(
        &mut self,
        pod: Option<&Pod>,
        observed: &Observed,
        plan: &plan::Plan,
        action: Action,
        now: UnixNanos,
    ) -> Result<(), ActionError> {
        let cri = &self.shared.cri;
        match action {
            Action::KillPod { grace } => tokio::select! {
                stopped = self.kill_pod(pod, observed, grace) => stopped?,
                () = self.report_while_stopping(pod, observed, plan) => {}
            },
            Action::CreateSandbox { attempt } => {
                let Some(pod) = pod else { return Ok(()) };
                self.create_sandbox(pod, attempt).await?;
            }
            Action::StartContainer { name, init, attempt } => {
                let Some(pod) = pod else { return Ok(()) };
                let Some(spec) = container_spec(pod, &name, init) else { return Ok(()) };
                match self.start_container(pod, observed, &spec, attempt).await {
                    Ok(()) => {
                        self.start_errors.remove(&name);
                        if let Some(prev) = observed.latest_any(&name).filter(|p| attempt > 0 && p.has_exited()) {
                            let ran = u64::try_from(prev.finished_at - prev.started_at).unwrap_or(0);
                            self.backoff.restarted(&name, Duration::from_nanos(ran));
                        }
                        self.backoff.started(&name);
                    }
                    Err(e) => {
                        let waiting = e.waiting();
                        self.shared.events.pod(pod, Warning, "Failed", Some(&name), waiting.message.clone());
                        if waiting.reason == "ErrImagePull" || waiting.reason == "ErrImageNeverPull" {
                            self.shared.events.pod(
                                pod,
                                Normal,
                                "BackOff",
                                Some(&name),
                                format!("Back-off pulling image {:?}", spec.image.clone().unwrap_or_default()),
                            );
                        }
                        self.start_errors.insert(name.clone(), waiting);
                        self.backoff.start_failed(&name, now);
                    }
                }
            }
            Action::KillContainer { id, name, grace, reason } => {
                if let Some(pod) = pod {
                    let why = match reason {
                        KillReason::Unhealthy => format!("Container {name} failed liveness probe, will be restarted"),
                    };
                    self.shared.events.pod(pod, Normal, "Killing", Some(&name), why);
                }
                self.stop_container(pod, observed, &id, grace).await?;
            }
            Action::RemoveContainer { id } => ignore_not_found(cri.remove_container(&id).await)?,
            Action::RemoveSandbox { id } => {
                ignore_not_found(cri.remove_pod_sandbox(&id).await)?;
                if pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some()) {
                    self.shared.probes.forget_pod(&self.uid);
                }
            }
        }
        Ok(())
    }

    async fn create_sandbox(&mut self, pod: &Pod, attempt: u32) -> Result<(), ActionError> {
        let s = &self.shared.settings;
        let (name, namespace, uid) = config::identity(pod);
        let dirs = [s.pod_dir(uid), s.pod_log_dir(namespace, name, uid)];
        for dir in &dirs {
            std::fs::create_dir_all(dir).map_err(|e| ActionError::Container {
                reason: "ContainerCreating",
                message: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        // The sandbox does not need the volumes, only its containers do: both are made
        // at once, so the API round trips of tokens and ConfigMaps overlap the
        // runtime's work (a failed volume fails the step; the sandbox is kept).
        let started = std::time::Instant::now();
        let pod_dir = s.pod_dir(uid);
        let (volumes, sandbox) = tokio::join!(
            self.shared.volumes.prepare(pod, &pod_dir, None),
            self.shared.cri.run_pod_sandbox(config::sandbox_config(pod, attempt, s)),
        );
        volumes.map_err(|message| ActionError::Container { reason: "ContainerCreating", message })?;
        match sandbox {
            Ok(id) => {
                info!(pod = %self.key, sandbox = %id, attempt, took_ms = started.elapsed().as_millis() as u64, "sandbox running");
                Ok(())
            }
            Err(e) => {
                self.shared.events.pod(
                    pod,
                    Warning,
                    "FailedCreatePodSandBox",
                    None,
                    format!("Failed to create pod sandbox: {e}"),
                );
                Err(e.into())
            }
        }
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        observed: &Observed,
        c: &Container,
        attempt: u32,
    ) -> Result<(), ActionError> {
        let s = &self.shared.settings;
        let Some(sandbox) = observed.latest_sandbox().filter(|sb| sb.ready) else {
            return Ok(());
        };
        let sandbox_config = config::sandbox_config(pod, sandbox.attempt, s);
        self.ensure_image(pod, c, &sandbox_config).await?;
        let resolved = self
            .shared
            .volumes
            .resolve(pod, c, sandbox, &s.pod_dir(config::identity(pod).2))
            .await
            .map_err(|message| ActionError::Container { reason: "CreateContainerConfigError", message })?;
        config::prepare_container_files(pod, c, attempt, s).map_err(|e| ActionError::Container {
            reason: "CreateContainerError",
            message: format!("cannot create the termination-log file: {e}"),
        })?;
        let cfg = config::container_config(pod, c, attempt, resolved, s);
        let id = self
            .shared
            .cri
            .create_container(&sandbox.id, cfg, sandbox_config)
            .await
            .map_err(|e| ActionError::Container { reason: "CreateContainerError", message: e.to_string() })?;
        self.shared.events.pod(pod, Normal, "Created", Some(&c.name), format!("Created container {}", c.name));
        self.shared
            .cri
            .start_container(&id)
            .await
            .map_err(|e| ActionError::Container { reason: "RunContainerError", message: e.to_string() })?;
        self.shared.events.pod(pod, Normal, "Started", Some(&c.name), format!("Started container {}", c.name));
        info!(pod = %self.key, container = %c.name, attempt, id = %id, "container started");
        Ok(())
    }

    /// The image must be on the node; without a registry, a pull can only fail, so
    /// `Always` uses the local image when there is one.
    async fn ensure_image(
        &self,
        pod: &Pod,
        c: &Container,
        sandbox_config: &api::PodSandboxConfig,
    ) -> Result<(), ActionError> {
        let image = c.image.clone().unwrap_or_default();
        let present = self.shared.cri.image_status(&image).await?.is_some();
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| default_pull_policy(&image).to_owned());
        match (present, policy.as_str()) {
            (true, _) => {
                let message = format!("Container image {image:?} already present on machine");
                self.shared.events.pod(pod, Normal, "Pulled", Some(&c.name), message);
                Ok(())
            }
            (false, "Never") => Err(ActionError::Container {
                reason: "ErrImageNeverPull",
                message: format!("Container image {image:?} is not present with pull policy of Never"),
            }),
            (false, _) => {
                self.shared.events.pod(pod, Normal, "Pulling", Some(&c.name), format!("Pulling image {image:?}"));
                match self.shared.cri.pull_image(&image, sandbox_config.clone()).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(ActionError::Container {
                        reason: "ErrImagePull",
                        message: format!("Failed to pull image {image:?}: {e}"),
                    }),
                }
            }
        }
    }

    async fn stop_container(
        &self,
        pod: Option<&Pod>,
        observed: &Observed,
        id: &str,
        grace: Duration,
    ) -> Result<(), ActionError> {
        let started = std::time::Instant::now();
        if let (Some(pod), Some(c)) = (pod, observed.containers.iter().find(|c| c.id == id && c.is_running()))
            && let Some(failure) = self.shared.probes.pre_stop(pod, &c.name, id, grace).await
        {
            self.shared.events.pod(pod, Warning, "FailedPreStopHook", Some(&c.name), failure);
        }
        // The hook's time comes out of the grace period.
        let remaining = grace.saturating_sub(started.elapsed());
        ignore_not_found(self.shared.cri.stop_container(id, remaining).await)?;
        Ok(())
    }

    /// Stops every live container (in parallel, each with the grace period), then the
    /// sandboxes.
    async fn kill_pod(&self, pod: Option<&Pod>, observed: &Observed, grace: Duration) -> Result<(), ActionError> {
        let live: Vec<&ContainerObs> = observed.containers.iter().filter(|c| !c.has_exited()).collect();
        if let Some(pod) = pod {
            for c in &live {
                self.shared.events.pod(pod, Normal, "Killing", Some(&c.name), format!("Stopping container {}", c.name));
            }
        }
        let stops = live.iter().map(|c| self.stop_container(pod, observed, &c.id, grace));
        for result in futures_util::future::join_all(stops).await {
            result?;
        }
        for sb in observed.sandboxes.iter().filter(|s| s.ready) {
            ignore_not_found(self.shared.cri.stop_pod_sandbox(&sb.id).await)?;
        }
        info!(pod = %self.key, containers = live.len(), "pod stopped");
        Ok(())
    }
}

fn ignore_not_found(r: cri::Result<()>) -> cri::Result<()> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    }
}

fn container_spec(pod: &Pod, name: &str, init: bool) -> Option<Container> {
    let spec = pod.spec.as_ref()?;
    let list = if init { spec.init_containers.as_deref().unwrap_or_default() } else { &spec.containers };
    list.iter().find(|c| c.name == name).cloned()
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent`, as the API defaults.
fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        "IfNotPresent"
    } else {
        match last.split_once(':') {
            Some((_, "latest")) | None => "Always",
            Some(_) => "IfNotPresent",
        }
    }
}

/// The runtime's state for pod `uid`: sandboxes with their IPs, containers with their
/// exit codes and termination messages.
pub(super) async fn observe(shared: &Shared, uid: &str) -> cri::Result<Observed> {
    let selector = HashMap::from([(labels::POD_UID.to_owned(), uid.to_owned())]);
    let sandboxes = shared.cri.list_pod_sandboxes(selector.clone()).await?;
    let containers = shared.cri.list_containers(selector).await?;
    let mut observed = Observed::default();
    for sb in sandboxes {
        let ready = sb.state == api::PodSandboxState::SandboxReady as i32;
        let ip = if ready {
            match shared.cri.pod_sandbox_status(&sb.id).await {
                Ok(st) => st.network.map(|n| n.ip).unwrap_or_default(),
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        } else {
            String::new()
        };
        let attempt = sb.metadata.as_ref().map_or(0, |m| m.attempt);
        observed.sandboxes.push(SandboxObs { id: sb.id, attempt, ready, created_at: sb.created_at, ip });
    }
    for c in containers {
        match shared.cri.container_status(&c.id).await {
            Ok(st) => {
                let mut obs = ContainerObs::from_cri(&c.pod_sandbox_id, &st);
                if obs.has_exited() && obs.message.is_empty() {
                    obs.message = config::exit_message(&shared.settings, uid, &st);
                }
                observed.containers.push(obs);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(observed)
}
