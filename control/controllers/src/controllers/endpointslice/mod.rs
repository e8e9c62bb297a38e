//! The EndpointSlice and Endpoints controller: for every Service with a selector, it
//! keeps EndpointSlices (discovery.k8s.io/v1) and the legacy `Endpoints` object listing
//! the pods that match the selector and have an IP, with their readiness and the
//! Service's target ports resolved per pod. The node agents' proxies program the
//! datapath from the slices; `kubectl get endpoints` and older clients read Endpoints.
//!
//! The work is split as the kubelet's pod sync is: pure functions compute what the
//! objects should hold (`desired_endpoints`, `plan_slices`, `desired_subsets`), and
//! `reconcile` only executes the plan. Endpoints stay in the slice they are in as long
//! as possible, so a change to one pod rewrites one slice, and nothing is written when
//! nothing changed.
//!
//! Every slice it writes carries the time of the change that caused the write
//! (`endpoints.kubernetes.io/last-change-trigger-time`, see `trigger`), from which the
//! node proxies measure network programming latency.
//!
//! It must not touch Services without a selector (their slices and Endpoints belong to
//! whoever wrote them), slices it does not manage (label `managed-by`), or the
//! `default/kubernetes` Endpoints, which the API server maintains.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as LegacyPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_api::ObjectKey;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};

use super::Context;
use crate::helpers::expectations::{Expect, Seen};

/// The label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label saying who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of `MANAGED_BY_LABEL` (the one upstream's controller uses, so tools that
/// look for it recognise our slices).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Set on the Endpoints objects this controller manages (upstream sets it too, so the
/// mirroring controller leaves them alone); we also use it to know which Endpoints are
/// ours to delete when their Service goes away.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// The most endpoints one slice holds (upstream's default `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// How long we wait for the cache to show our own writes before trusting it anyway.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {kind} {namespace}/{name} failed: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn api_err(
    action: &'static str,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(skiff_api::client::Error) -> Error {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    move |source| Error::Api { action, kind, namespace, name, source }
}

/// One port of a slice, orderable so slices can be grouped by their port set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub name: String,
    pub port: i32,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

impl PortSpec {
    fn to_slice_port(&self) -> EndpointPort {
        EndpointPort {
            name: Some(self.name.clone()),
            port: Some(self.port),
            protocol: Some(self.protocol.clone()),
            app_protocol: self.app_protocol.clone(),
        }
    }

    fn from_slice_port(p: &EndpointPort) -> Option<Self> {
        Some(Self {
            name: p.name.clone().unwrap_or_default(),
            port: p.port?,
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            app_protocol: p.app_protocol.clone(),
        })
    }

    fn to_legacy_port(&self) -> LegacyPort {
        LegacyPort {
            name: Some(self.name.clone()).filter(|n| !n.is_empty()),
            port: self.port,
            protocol: Some(self.protocol.clone()),
            app_protocol: self.app_protocol.clone(),
        }
    }
}

/// What makes endpoints share a slice: the address family and the resolved ports
/// (sorted). Pods resolving a named port to different numbers get different keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SliceKey {
    pub address_type: String,
    pub ports: Vec<PortSpec>,
}

impl SliceKey {
    fn of(slice: &EndpointSlice) -> Self {
        let mut ports: Vec<PortSpec> = slice.ports.iter().flatten().filter_map(PortSpec::from_slice_port).collect();
        ports.sort();
        Self { address_type: slice.address_type.clone(), ports }
    }
}

fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec.as_ref()?.selector.as_ref().filter(|s| !s.is_empty())
}

fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn family(ip: &str) -> Option<&'static str> {
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => Some("IPv4"),
        IpAddr::V6(_) => Some("IPv6"),
    }
}

/// The Service's address families (`spec.ipFamilies`, IPv4 when unset).
fn families(svc: &Service) -> Vec<String> {
    let f = svc.spec.as_ref().and_then(|s| s.ip_families.clone()).unwrap_or_default();
    if f.is_empty() { vec!["IPv4".into()] } else { f }
}

/// The pod's IP of one family, from `status.podIPs` (or `podIP`).
fn pod_ip(pod: &Pod, fam: &str) -> Option<String> {
    let st = pod.status.as_ref()?;
    let ips = st.pod_ips.iter().flatten().map(|p| p.ip.clone()).chain(st.pod_ip.clone());
    ips.into_iter().find(|ip| !ip.is_empty() && family(ip) == Some(fam))
}

/// The container port a Service port sends to on this pod: a number as is, a name
/// looked up among the pod's container ports of the same protocol. `None` when the pod
/// has no port of that name (the pod then gets no endpoint for that Service port).
pub fn resolve_target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    let proto = sp.protocol.as_deref().unwrap_or("TCP");
    match &sp.target_port {
        None | Some(IntOrString::Int(0)) => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == proto)
                .map(|p| p.container_port)
        }
    }
}

/// The Service's ports as this pod serves them (sorted).
fn pod_ports(svc: &Service, pod: &Pod) -> Vec<PortSpec> {
    let mut out: Vec<PortSpec> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            Some(PortSpec {
                name: sp.name.clone().unwrap_or_default(),
                port: resolve_target_port(sp, pod)?,
                protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    out.sort();
    out
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The DNS hostname of a pod behind a headless-style Service (`hostname` + matching `subdomain`).
fn pod_hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let h = spec.hostname.clone().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()).then_some(h)
}

/// The endpoints each slice key should hold, sorted by address. `zone_of` gives a
/// node's zone label. Pods without an IP, in a terminal phase, or not selected are left
/// out; terminating pods stay, marked so, as long as they have an IP.
pub fn desired_endpoints(
    svc: &Service,
    pods: &[Arc<Pod>],
    zone_of: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<SliceKey, Vec<Endpoint>> {
    let mut out: BTreeMap<SliceKey, Vec<Endpoint>> = BTreeMap::new();
    let Some(sel) = selector(svc) else { return out };
    let publish_not_ready = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    for pod in pods.iter().filter(|p| selects(sel, p) && !terminal(p)) {
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = pod_ready(pod);
        // As upstream: a terminating pod is never `ready` (so new connections avoid it)
        // unless the Service asks for every address regardless of readiness.
        let ready = publish_not_ready || (serving && !terminating);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let ports = pod_ports(svc, pod);
        for fam in families(svc) {
            let Some(ip) = pod_ip(pod, &fam) else { continue };
            let ep = Endpoint {
                addresses: vec![ip],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                hostname: pod_hostname(svc, pod),
                zone: node.as_deref().and_then(zone_of),
                node_name: node.clone(),
                target_ref: Some(pod_ref(pod)),
                ..Default::default()
            };
            out.entry(SliceKey { address_type: fam, ports: ports.clone() }).or_default().push(ep);
        }
    }
    for eps in out.values_mut() {
        eps.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    }
    out
}

/// What to write so the Service's slices hold `desired`.
#[derive(Debug, Default, PartialEq)]
pub struct SlicePlan {
    /// New slices (with `generateName`).
    pub create: Vec<EndpointSlice>,
    /// Changed slices (with the resourceVersion they were read at).
    pub update: Vec<EndpointSlice>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

impl SlicePlan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut l = svc.metadata.labels.clone().unwrap_or_default();
    l.insert(SERVICE_NAME_LABEL.into(), svc.metadata.name.clone().unwrap_or_default());
    l.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    l
}

fn endpoint_id(ep: &Endpoint) -> Option<&str> {
    ep.addresses.first().map(String::as_str)
}

/// Turns `desired` into writes against the Service's `existing` managed slices,
/// touching as few slices as it can: an endpoint stays in the slice it is in, new ones
/// fill slices with room before new slices are created, slices left empty are deleted,
/// and a slice is updated only if its content differs. A Service with no endpoints at
/// all keeps one empty slice, so consumers can tell "no endpoints" from "not synced".
pub fn plan_slices(
    svc: &Service,
    mut desired: BTreeMap<SliceKey, Vec<Endpoint>>,
    existing: &[&EndpointSlice],
) -> SlicePlan {
    let mut plan = SlicePlan::default();
    let labels = slice_labels(svc);
    let owners = vec![super::owned_pods::controller_ref(svc)];
    let placeholder = desired.is_empty();
    if placeholder {
        let fam = families(svc).into_iter().next().unwrap_or_else(|| "IPv4".into());
        desired.insert(SliceKey { address_type: fam, ports: Vec::new() }, Vec::new());
    }
    let mut existing: Vec<&EndpointSlice> = existing.to_vec();
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let build = |base: Option<&EndpointSlice>, key: &SliceKey, endpoints: Vec<Endpoint>| -> EndpointSlice {
        let mut metadata = base.map(|b| b.metadata.clone()).unwrap_or_else(|| ObjectMeta {
            generate_name: Some(format!("{}-", svc.metadata.name.as_deref().unwrap_or("service"))),
            namespace: svc.metadata.namespace.clone(),
            ..Default::default()
        });
        metadata.labels = Some(labels.clone());
        metadata.owner_references = Some(owners.clone());
        EndpointSlice {
            metadata,
            address_type: key.address_type.clone(),
            endpoints,
            ports: Some(key.ports.iter().map(PortSpec::to_slice_port).collect()),
        }
    };

    let mut handled: BTreeSet<String> = BTreeSet::new();
    for (key, eps) in desired {
        let mut remaining: BTreeMap<String, Endpoint> =
            eps.into_iter().filter_map(|e| Some((endpoint_id(&e)?.to_string(), e))).collect();
        // Keep what is still wanted where it is (dropping duplicates of a stale view).
        let mut kept: Vec<(&EndpointSlice, Vec<Endpoint>)> = Vec::new();
        for slice in existing.iter().copied().filter(|s| SliceKey::of(s) == key) {
            handled.insert(slice.metadata.name.clone().unwrap_or_default());
            let eps: Vec<Endpoint> = slice.endpoints.iter().filter_map(|e| remaining.remove(endpoint_id(e)?)).collect();
            kept.push((slice, eps));
        }
        // Fill slices that have room, then open new ones.
        let mut rest = remaining.into_values();
        for (_, eps) in kept.iter_mut() {
            while eps.len() < MAX_ENDPOINTS_PER_SLICE {
                match rest.next() {
                    Some(e) => eps.push(e),
                    None => break,
                }
            }
        }
        let rest: Vec<Endpoint> = rest.collect();
        let mut have_slice = false;
        for (slice, eps) in kept {
            // The first empty slice stays as the placeholder of a Service without endpoints.
            if eps.is_empty() && (have_slice || !placeholder) {
                plan.delete.push(slice.metadata.name.clone().unwrap_or_default());
                continue;
            }
            have_slice = true;
            let want = build(Some(slice), &key, eps);
            if !same_slice(slice, &want) {
                plan.update.push(want);
            }
        }
        for chunk in rest.chunks(MAX_ENDPOINTS_PER_SLICE) {
            have_slice = true;
            plan.create.push(build(None, &key, chunk.to_vec()));
        }
        if placeholder && !have_slice {
            plan.create.push(build(None, &key, Vec::new()));
        }
    }
    // Slices whose key is no longer wanted (ports or family changed) go.
    for slice in &existing {
        let name = slice.metadata.name.clone().unwrap_or_default();
        if !handled.contains(&name) {
            plan.delete.push(name);
        }
    }
    // A slice about to be deleted is rewritten instead of creating a new one (one write
    // instead of two); only within an address family, which is immutable.
    for mut want in std::mem::take(&mut plan.create) {
        let reusable = plan.delete.iter().position(|name| {
            existing.iter().any(|s| s.metadata.name.as_ref() == Some(name) && s.address_type == want.address_type)
        });
        match reusable {
            Some(i) => {
                let name = plan.delete.remove(i);
                let old = existing.iter().find(|s| s.metadata.name.as_ref() == Some(&name)).expect("listed above");
                let mut metadata = old.metadata.clone();
                metadata.labels = want.metadata.labels.take();
                metadata.owner_references = want.metadata.owner_references.take();
                want.metadata = metadata;
                plan.update.push(want);
            }
            None => plan.create.push(want),
        }
    }
    plan
}

fn same_slice(cur: &EndpointSlice, want: &EndpointSlice) -> bool {
    cur.address_type == want.address_type
        && cur.endpoints == want.endpoints
        && cur.ports.as_deref().unwrap_or_default() == want.ports.as_deref().unwrap_or_default()
        && cur.metadata.labels == want.metadata.labels
        && cur.metadata.owner_references == want.metadata.owner_references
}

/// The legacy Endpoints subsets: one subset per distinct resolved port set, ready
/// pods in `addresses`, the others in `notReadyAddresses`. Terminating pods are left
/// out (as upstream), unless the Service publishes not-ready addresses.
pub fn desired_subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let Some(sel) = selector(svc) else { return Vec::new() };
    let publish_not_ready = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let fam = families(svc).into_iter().next().unwrap_or_else(|| "IPv4".into());
    type Addrs = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut by_ports: BTreeMap<Vec<PortSpec>, Addrs> = BTreeMap::new();
    for pod in pods.iter().filter(|p| selects(sel, p) && !terminal(p)) {
        if pod.metadata.deletion_timestamp.is_some() && !publish_not_ready {
            continue;
        }
        let Some(ip) = pod_ip(pod, &fam) else { continue };
        let addr = EndpointAddress {
            ip,
            hostname: pod_hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_ref(pod)),
        };
        let entry = by_ports.entry(pod_ports(svc, pod)).or_default();
        if publish_not_ready || pod_ready(pod) { entry.0.push(addr) } else { entry.1.push(addr) }
    }
    by_ports
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: Some(ready).filter(|a| !a.is_empty()),
                not_ready_addresses: Some(not_ready).filter(|a| !a.is_empty()),
                ports: Some(ports.iter().map(PortSpec::to_legacy_port).collect()).filter(|p: &Vec<_>| !p.is_empty()),
            }
        })
        .collect()
}

/// Our writes the cache has not shown yet, per Service, by object name. Acting on a
/// cache that lags our own creates would create the same endpoints twice in new slices
/// (and on one that lags our updates, fail with conflicts), so a Service with unmet
/// expectations waits (briefly) for its cache to catch up.
type Expectations = crate::helpers::expectations::Expectations<ObjectKey>;

/// What the controller remembers of each Service between syncs: expectations for the
/// two kinds it writes, and the trigger times it last saw.
#[derive(Debug)]
struct Tracker {
    slices: Expectations,
    endpoints: Expectations,
    triggers: trigger::TriggerTimes,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            slices: Expectations::new(EXPECTATION_TIMEOUT),
            endpoints: Expectations::new(EXPECTATION_TIMEOUT),
            triggers: trigger::TriggerTimes::default(),
        }
    }
}

fn rv_number(meta: &ObjectMeta) -> Option<u64> {
    // Our API server's resourceVersions are store revisions, so they order; an
    // unparsable one counts as "seen" rather than blocking forever.
    meta.resource_version.as_deref().and_then(|r| r.parse().ok())
}

/// What a write leaves in the cache: the object at (at least) the revision the server
/// answered with, or (`None`) no object.
fn written(meta: Option<&ObjectMeta>) -> Expect {
    match meta {
        Some(m) => Expect::Present { min_rv: rv_number(m).unwrap_or(0) },
        None => Expect::Gone,
    }
}

/// What the cache shows of an object, given its cached revision (`None`: absent).
fn seen(cached: Option<Option<u64>>) -> Option<Seen> {
    Some(cached.map_or(Seen::Absent, Seen::Present))
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let feeder = feed(ctx.clone(), queue.clone());
    let expectations = Arc::new(Tracker::default());
    let workers = run_workers("endpointslice", queue, 2, move |key: ObjectKey| {
        let ctx = ctx.clone();
        let expectations = expectations.clone();
        async move { reconcile(&ctx, &expectations, &key).await }
    });
    tokio::join!(feeder, workers);
}

/// Turns cache changes into Service keys. Pods are mapped to the Services selecting
/// them now and the ones that selected them before (remembered here), so a pod whose
/// labels changed leaves the slices of the Service it left.
async fn feed(ctx: Arc<Context>, queue: WorkQueue<ObjectKey>) {
    let inf = &ctx.informers;
    let mut services = inf.services.subscribe();
    let mut pods = inf.pods.subscribe();
    let mut slices = inf.endpoint_slices.subscribe();
    let mut endpoints = inf.endpoints.subscribe();
    let mut pod_services: HashMap<ObjectKey, BTreeSet<ObjectKey>> = HashMap::new();
    let selecting = |pod: &Pod| -> BTreeSet<ObjectKey> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        inf.services
            .list_namespace(ns)
            .iter()
            .filter(|s| selector(s).is_some_and(|sel| selects(sel, pod)))
            .map(|s| ObjectKey::of(s.as_ref()))
            .collect()
    };
    loop {
        tokio::select! {
            Some(c) = services.recv() => match c {
                Change::Applied(s) | Change::Deleted(s) => queue.add(ObjectKey::of(s.as_ref())),
            },
            Some(c) = pods.recv() => {
                let (pod, deleted) = match c {
                    Change::Applied(p) => (p, false),
                    Change::Deleted(p) => (p, true),
                };
                let key = ObjectKey::of(pod.as_ref());
                let now = selecting(&pod);
                let before = if deleted { pod_services.remove(&key) } else { pod_services.insert(key, now.clone()) };
                for s in now.iter().chain(before.iter().flatten()) {
                    queue.add(s.clone());
                }
            },
            Some(c) = slices.recv() => {
                let s = match c { Change::Applied(s) | Change::Deleted(s) => s };
                let labels = s.metadata.labels.as_ref();
                if labels.and_then(|l| l.get(MANAGED_BY_LABEL)).map(String::as_str) == Some(MANAGED_BY)
                    && let Some(svc) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL))
                {
                    queue.add(ObjectKey::new(s.metadata.namespace.as_deref(), svc));
                }
            },
            Some(c) = endpoints.recv() => {
                let e = match c { Change::Applied(e) | Change::Deleted(e) => e };
                queue.add(ObjectKey::of(e.as_ref()));
            },
            else => return,
        }
    }
}

async fn reconcile(ctx: &Context, expectations: &Tracker, key: &ObjectKey) -> Result<Action> {
    let ns = key.ns().unwrap_or("default");
    let slices_cache = &ctx.informers.endpoint_slices;
    let cached_rv = |name: &str| slices_cache.get_named(Some(ns), name).map(|s| rv_number(&s.metadata));
    let eps_cache = &ctx.informers.endpoints;
    let cached_eps_rv = |name: &str| eps_cache.get_named(Some(ns), name).map(|e| rv_number(&e.metadata));
    if !expectations.slices.satisfied_in(key, |name, _| seen(cached_rv(name)))
        || !expectations.endpoints.satisfied_in(key, |name, _| seen(cached_eps_rv(name)))
    {
        tracing::debug!(service = %key, "waiting for the cache to show our writes");
        return Ok(Action::RequeueAfter(Duration::from_millis(100)));
    }
    let svc = ctx.informers.services.get(key);
    let managed: Vec<Arc<EndpointSlice>> = slices_cache
        .list_namespace(ns)
        .into_iter()
        .filter(|s| {
            let l = s.metadata.labels.as_ref();
            l.and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(&key.name)
                && l.and_then(|l| l.get(MANAGED_BY_LABEL)).map(String::as_str) == Some(MANAGED_BY)
        })
        .collect();
    let pods = ctx.informers.pods.list_namespace(ns);
    let nodes = &ctx.informers.nodes;
    let zone_of = |node: &str| nodes.get_named(None, node)?.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned();

    let plan = match svc.as_deref().and_then(|s| Some((s, selector(s)?))) {
        Some((s, sel)) => {
            let refs: Vec<&EndpointSlice> = managed.iter().map(|s| s.as_ref()).collect();
            let mut plan = plan_slices(s, desired_endpoints(s, &pods, &zone_of), &refs);
            let selected: Vec<&Pod> = pods.iter().filter(|p| selects(sel, p)).map(AsRef::as_ref).collect();
            trigger::stamp(&mut plan, expectations.triggers.compute(key, s, &selected));
            plan
        }
        // Gone, or no selector (any more): our slices are stale; others' are not ours.
        _ => {
            expectations.triggers.forget(key);
            SlicePlan { delete: managed.iter().filter_map(|s| s.metadata.name.clone()).collect(), ..Default::default() }
        }
    };
    apply_slice_plan(ctx, &expectations.slices, key, plan).await?;
    sync_endpoints(ctx, &expectations.endpoints, key, svc.as_deref(), &pods).await?;
    Ok(Action::Done)
}

/// Executes a slice plan: creates, then updates, then deletes, so a consumer reading
/// between the writes sees endpoints twice rather than missing.
async fn apply_slice_plan(ctx: &Context, expectations: &Expectations, key: &ObjectKey, plan: SlicePlan) -> Result<()> {
    let ns = key.ns().unwrap_or("default");
    if !plan.is_empty() {
        tracing::info!(
            service = %key,
            create = plan.create.len(),
            update = plan.update.len(),
            delete = plan.delete.len(),
            "syncing EndpointSlices"
        );
    }
    for s in &plan.create {
        let created =
            ctx.client.create(Some(ns), s).await.map_err(api_err("creating", "EndpointSlice", ns, &key.name))?;
        if let Some(name) = created.metadata.name.clone() {
            expectations.expect(key, &name, written(Some(&created.metadata)));
        }
    }
    for s in &plan.update {
        let name = s.metadata.name.clone().unwrap_or_default();
        let updated =
            ctx.client.replace(Some(ns), &name, s).await.map_err(api_err("updating", "EndpointSlice", ns, &name))?;
        expectations.expect(key, &name, written(Some(&updated.metadata)));
    }
    for name in &plan.delete {
        ctx.client.delete::<EndpointSlice>(Some(ns), name, None).await.map_err(api_err(
            "deleting",
            "EndpointSlice",
            ns,
            name,
        ))?;
        expectations.expect(key, name, written(None));
    }
    Ok(())
}

fn norm_subsets(s: &Option<Vec<EndpointSubset>>) -> &[EndpointSubset] {
    s.as_deref().unwrap_or_default()
}

/// Keeps the legacy Endpoints object of a Service with a selector, and deletes ours
/// (labelled skip-mirror) when the Service is gone or lost its selector.
async fn sync_endpoints(
    ctx: &Context,
    expectations: &Expectations,
    key: &ObjectKey,
    svc: Option<&Service>,
    pods: &[Arc<Pod>],
) -> Result<()> {
    let ns = key.ns().unwrap_or("default");
    if ns == "default" && key.name == "kubernetes" {
        return Ok(());
    }
    let cur = ctx.informers.endpoints.get(key);
    let Some(svc) = svc.filter(|s| selector(s).is_some()) else {
        let ours = cur.as_ref().and_then(|e| e.metadata.labels.as_ref()).and_then(|l| l.get(SKIP_MIRROR_LABEL))
            == Some(&"true".to_string());
        if ours && svc.is_none() {
            tracing::info!(service = %key, "deleting Endpoints of a deleted Service");
            ctx.client.delete::<Endpoints>(Some(ns), &key.name, None).await.map_err(api_err(
                "deleting",
                "Endpoints",
                ns,
                &key.name,
            ))?;
            expectations.expect(key, &key.name, written(None));
        }
        return Ok(());
    };
    let subsets = desired_subsets(svc, pods);
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SKIP_MIRROR_LABEL.into(), "true".into());
    match cur {
        Some(cur) => {
            if norm_subsets(&cur.subsets) == subsets.as_slice() && cur.metadata.labels.as_ref() == Some(&labels) {
                return Ok(());
            }
            let mut want = (*cur).clone();
            want.subsets = Some(subsets);
            want.metadata.labels = Some(labels);
            tracing::info!(service = %key, "updating Endpoints");
            let updated = ctx.client.replace(Some(ns), &key.name, &want).await.map_err(api_err(
                "updating",
                "Endpoints",
                ns,
                &key.name,
            ))?;
            expectations.expect(key, &key.name, written(Some(&updated.metadata)));
        }
        None => {
            let want = Endpoints {
                metadata: ObjectMeta {
                    name: Some(key.name.clone()),
                    namespace: Some(ns.to_string()),
                    labels: Some(labels),
                    ..Default::default()
                },
                subsets: Some(subsets),
            };
            tracing::info!(service = %key, "creating Endpoints");
            let created =
                ctx.client.create(Some(ns), &want).await.map_err(api_err("creating", "Endpoints", ns, &key.name))?;
            expectations.expect(key, &key.name, written(Some(&created.metadata)));
        }
    }
    Ok(())
}

mod trigger;

#[cfg(test)]
mod tests;
