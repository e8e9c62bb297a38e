//! The kubelet role: runs this node's pods on the container runtime through the CRI.
//!
//! ```text
//! Pod reflector (spec.nodeName=<node>) ─┐
//! runtime relist (every second)        ─┼─ wake ─> one worker per pod: observe → plan → act → status
//! ```
//! - `plan` decides, purely, what to do next for a pod; `status` computes, purely,
//!   what to report; `config` turns the spec into CRI configs; `worker` carries it out.
//! - The relist notices containers that exited and sandboxes that died (containerd 1.6
//!   has no event stream for the CRI) and pods the runtime has but the API does not
//!   (orphans, e.g. after the agent was down): their workers tear them down.
//! - A restarted agent finds its pods' sandboxes and containers by their labels and
//!   restarts nothing that is healthy. The API being away stops nothing: workers keep
//!   the last pod they saw and retry their writes.

pub mod backoff;
pub mod cgroups;
pub mod config;
pub mod env;
pub mod events;
pub mod locator;
pub mod lookup;
mod mirrors;
pub mod observed;
pub mod plan;
pub mod probe;
pub mod probes;
pub mod resolve;
pub mod resources;
pub mod static_pods;
pub mod stats;
pub mod status;
mod status_writer;
pub mod volumes;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use skiff_api::reflector::{self, Cache, Change};
use skiff_api::{Client, ListParams, ObjectKey};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use config::KubeletSettings;

use crate::cri::{CriClient, labels};
use observed::{Observed, UnixNanos};

/// How often the runtime is listed for changes nobody announced.
const RELIST: Duration = Duration::from_secs(1);
/// How often the static pod directory is read.
const STATIC_POLL: Duration = Duration::from_secs(2);
/// How often the directories of deleted local-path volumes are looked for.
const LOCAL_PATH_SWEEP: Duration = Duration::from_secs(10);

/// Now, in nanoseconds since the epoch (the CRI's unit).
pub fn now_nanos() -> UnixNanos {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

/// What every pod worker shares.
struct Shared {
    settings: KubeletSettings,
    cri: CriClient,
    api: Client,
    pods: Cache<Pod>,
    events: events::Recorder,
    probes: probes::Probes,
    volumes: resolve::Resolver,
    /// The last observed runtime state of each pod, by uid (for the node's server).
    view: Mutex<HashMap<String, (ObjectKey, Observed)>>,
    /// The static pods from the manifest directory, by uid.
    statics: Mutex<BTreeMap<String, Arc<Pod>>>,
}

impl Shared {
    fn remember(&self, uid: &str, key: &ObjectKey, observed: &Observed) {
        self.view.lock().unwrap().insert(uid.to_owned(), (key.clone(), observed.clone()));
    }

    fn forget(&self, uid: &str) {
        self.view.lock().unwrap().remove(uid);
    }

    /// The pod with uid `uid` at `key`: a static pod, or one from the API.
    fn pod_by_uid(&self, uid: &str, key: &ObjectKey) -> Option<Arc<Pod>> {
        if let Some(pod) = self.statics.lock().unwrap().get(uid) {
            return Some(pod.clone());
        }
        self.pods.get(key).filter(|p| p.metadata.uid.as_deref() == Some(uid))
    }
}

/// The kubelet, made but not yet running.
pub struct Kubelet {
    shared: Arc<Shared>,
    reflectors: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    probe_updates: mpsc::UnboundedReceiver<probe::ProbeUpdate>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet").field("node", &self.shared.settings.node_name).finish_non_exhaustive()
    }
}

impl Kubelet {
    /// The kubelet of this node, and the locator the node's server finds containers with.
    pub fn new(api: Client, cri: CriClient, settings: KubeletSettings) -> (Self, locator::Locator) {
        let params = ListParams::default().fields(format!("spec.nodeName={}", settings.node_name));
        let (pods, reflect_pods) = reflector::reflector::<Pod>(api.clone(), None, params);
        // Services, for the containers' Service environment variables.
        let (services, reflect_services) = reflector::reflector::<Service>(api.clone(), None, ListParams::default());
        let (probes, probe_updates) = probes::Probes::new(cri.clone());
        let host_ip = settings.node_ip.to_string();
        let shared = Arc::new(Shared {
            events: events::Recorder::new(api.clone(), &settings.node_name),
            volumes: resolve::Resolver::new(api.clone(), services, &settings.node_name, &host_ip),
            probes,
            settings,
            cri,
            api,
            pods,
            view: Mutex::new(HashMap::new()),
            statics: Mutex::new(BTreeMap::new()),
        });
        let locator = locator::Locator::new(shared.clone());
        (Self { shared, reflectors: vec![Box::pin(reflect_pods), Box::pin(reflect_services)], probe_updates }, locator)
    }

    /// Watches this node's pods and runs them until the task is dropped.
    pub async fn run(self) {
        let Self { shared, reflectors, probe_updates } = self;
        let mut reflectors: Vec<_> = reflectors.into_iter().map(tokio::spawn).collect();
        reflectors.push(tokio::spawn(sweep_local_path(shared.clone())));
        run(shared, probe_updates).await;
        for r in reflectors {
            r.abort();
        }
    }
}

async fn run(shared: Arc<Shared>, mut probe_updates: mpsc::UnboundedReceiver<probe::ProbeUpdate>) {
    let mut changes = shared.pods.subscribe();
    shared.pods.wait_synced().await;
    info!(node = %shared.settings.node_name, pods = shared.pods.len(), "kubelet: pods listed");
    let mut workers = Workers {
        shared: shared.clone(),
        running: HashMap::new(),
        next_generation: 0,
        done: mpsc::unbounded_channel(),
    };
    let mut relist = tokio::time::interval(RELIST);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fingerprints: BTreeMap<String, String> = BTreeMap::new();
    let mut static_tick = tokio::time::interval(STATIC_POLL);
    static_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mirrors = mirrors::Mirrors::default();
    loop {
        tokio::select! {
            _ = static_tick.tick(), if shared.settings.static_pod_dir.is_some() => {
                for (uid, key) in sync_static_pods(&shared) {
                    workers.wake(&uid, key);
                }
                mirrors.sync(&shared).await;
            }
            change = changes.recv() => {
                let Some(change) = change else { break };
                let pod = match change { Change::Applied(p) | Change::Deleted(p) => p };
                // A mirror is never run; its static pod's worker reports into it.
                let uid = static_pods::mirrored_uid(&pod).or(pod.metadata.uid.as_deref());
                if let Some(uid) = uid {
                    workers.wake(uid, ObjectKey::of(pod.as_ref()));
                }
            }
            Some(update) = probe_updates.recv() => {
                let key = shared.view.lock().unwrap().get(&update.pod_uid).map(|(k, _)| k.clone());
                let Some(key) = key else { continue };
                if update.failed_attempt
                    && let Some(pod) = shared.pod_by_uid(&update.pod_uid, &key)
                {
                    shared.events.pod(&pod, events::EventType::Warning, "Unhealthy", Some(&update.container_name), update.message.clone());
                }
                if update.changed {
                    workers.wake(&update.pod_uid, key);
                }
            }
            Some((uid, generation)) = workers.done.1.recv() => {
                if workers.running.get(&uid).is_some_and(|(g, _)| *g == generation) {
                    workers.running.remove(&uid);
                }
            }
            _ = relist.tick() => match relist_runtime(&shared.cri).await {
                Ok(seen) => {
                    for (uid, (key, fingerprint)) in seen.iter() {
                        if fingerprints.get(uid) != Some(fingerprint) || !workers.running.contains_key(uid) {
                            workers.wake(uid, key.clone());
                        }
                    }
                    fingerprints = seen.into_iter().map(|(uid, (_, f))| (uid, f)).collect();
                }
                Err(e) => warn!(error = %e, "cannot list the runtime's pods; retrying"),
            },
        }
    }
}

/// Removes the directories of deleted local-path volumes, now and then (see
/// `volumes::claim::sweep`).
async fn sweep_local_path(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(LOCAL_PATH_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        volumes::claim::sweep(&shared.settings.local_path_dir, &shared.api).await;
    }
}

/// Reads the static pod directory; returns the pods that appeared or went.
fn sync_static_pods(shared: &Shared) -> Vec<(String, ObjectKey)> {
    let Some(dir) = &shared.settings.static_pod_dir else { return Vec::new() };
    let (fresh, errors) = static_pods::read_dir(dir, &shared.settings.node_name);
    for e in errors {
        warn!(error = %e, "a static pod manifest is not taken");
    }
    let mut statics = shared.statics.lock().unwrap();
    let mut changed = Vec::new();
    for (uid, pod) in &fresh {
        if !statics.contains_key(uid) {
            info!(pod = ?pod.metadata.name, uid, "static pod added");
            changed.push((uid.clone(), ObjectKey::of(pod)));
        }
    }
    for (uid, pod) in statics.iter() {
        if !fresh.contains_key(uid) {
            info!(pod = ?pod.metadata.name, uid, "static pod removed");
            changed.push((uid.clone(), ObjectKey::of(pod.as_ref())));
        }
    }
    *statics = fresh.into_iter().map(|(uid, pod)| (uid, Arc::new(pod))).collect();
    changed
}

/// A worker that ended: its pod's uid and its generation.
type WorkerDone = (String, u64);

/// The pod workers by pod uid, each with a generation so that a worker that ended is
/// told apart from its successor.
struct Workers {
    shared: Arc<Shared>,
    running: HashMap<String, (u64, mpsc::UnboundedSender<()>)>,
    next_generation: u64,
    done: (mpsc::UnboundedSender<WorkerDone>, mpsc::UnboundedReceiver<WorkerDone>),
}

impl Workers {
    fn wake(&mut self, uid: &str, key: ObjectKey) {
        if let Some((_, tx)) = self.running.get(uid)
            && tx.send(()).is_ok()
        {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let generation = self.next_generation;
        self.next_generation += 1;
        self.running.insert(uid.to_owned(), (generation, tx));
        let (shared, done, uid) = (self.shared.clone(), self.done.0.clone(), uid.to_owned());
        tokio::spawn(async move {
            worker::run(shared, key, uid.clone(), rx).await;
            let _ = done.send((uid, generation));
        });
    }
}

/// What the relist saw, for `kubelet_running_pods` and `kubelet_running_containers`.
fn report_runtime_counts(sandboxes: &[crate::cri::api::PodSandbox], containers: &[crate::cri::api::Container]) {
    use crate::cri::api::{ContainerState, PodSandboxState};
    let running_pods: std::collections::BTreeSet<&String> = sandboxes
        .iter()
        .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
        .filter_map(|s| s.labels.get(labels::POD_UID))
        .collect();
    let mut by_state = BTreeMap::new();
    for c in containers {
        let state = match ContainerState::try_from(c.state) {
            Ok(ContainerState::ContainerCreated) => "created",
            Ok(ContainerState::ContainerRunning) => "running",
            Ok(ContainerState::ContainerExited) => "exited",
            _ => "unknown",
        };
        *by_state.entry(state).or_insert(0) += 1;
    }
    crate::metrics::set_runtime_counts(running_pods.len() as u64, by_state);
}

/// Every pod the runtime has of ours, by uid: its key (from the labels) and a
/// fingerprint of its sandboxes' and containers' states, which changes when one does.
async fn relist_runtime(cri: &CriClient) -> crate::cri::Result<BTreeMap<String, (ObjectKey, String)>> {
    let ours = HashMap::from([(labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned())]);
    let sandboxes = cri.list_pod_sandboxes(ours.clone()).await?;
    let containers = cri.list_containers(ours).await?;
    report_runtime_counts(&sandboxes, &containers);
    let mut seen: BTreeMap<String, (ObjectKey, Vec<String>)> = BTreeMap::new();
    let items = sandboxes
        .iter()
        .map(|s| (&s.labels, format!("s{}={}", s.id, s.state)))
        .chain(containers.iter().map(|c| (&c.labels, format!("c{}={}", c.id, c.state))));
    for (l, state) in items {
        let (Some(uid), Some(ns), Some(name)) =
            (l.get(labels::POD_UID), l.get(labels::POD_NAMESPACE), l.get(labels::POD_NAME))
        else {
            continue;
        };
        seen.entry(uid.clone()).or_insert_with(|| (ObjectKey::new(Some(ns), name), Vec::new())).1.push(state);
    }
    Ok(seen
        .into_iter()
        .map(|(uid, (key, mut states))| {
            states.sort();
            (uid, (key, states.join(",")))
        })
        .collect())
}
