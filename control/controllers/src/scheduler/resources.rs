//! What a pod asks for and what a node already carries, in integer units (cpu in
//! milli-cpu, memory in bytes).
//!
//! Implements Kubernetes' effective-request rule: app containers are summed; each init
//! container runs alone (next to the sidecars started before it), so the pod needs the
//! larger of the two; pod overhead is added on top. Pod-level `spec.resources.requests`,
//! when set, replace the container aggregate for that resource.
//!
//! Only cpu and memory are accounted. Extended resources and ephemeral-storage are not
//! (yet) considered by the scheduler; the kubelet still rejects a pod that does not fit.
//!
//! Pure code: no I/O, no logging.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use thiserror::Error;

use super::quantity::{self, QuantityError};

/// Requests Kubernetes assumes for a container that sets none, when *scoring* (never
/// when filtering): without them, request-less pods would all pile onto one node.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// A pod whose requests cannot be read. Names the container (or overhead) and value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{location}.{resource} is invalid: {source}")]
pub struct RequestError {
    /// e.g. `container "app" resources.requests`, `spec.overhead`.
    pub location: String,
    pub resource: String,
    #[source]
    pub source: QuantityError,
}

pub type Result<T, E = RequestError> = std::result::Result<T, E>;

/// cpu and memory amounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
}

impl Resources {
    // Saturating: a sum beyond i64 is "more than any node has", which is what matters.
    fn add(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.saturating_add(other.milli_cpu),
            memory: self.memory.saturating_add(other.memory),
        }
    }

    fn max(self, other: Resources) -> Resources {
        Resources { milli_cpu: self.milli_cpu.max(other.milli_cpu), memory: self.memory.max(other.memory) }
    }
}

/// The requests of one pod, both as declared and with scoring defaults filled in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// Used by the resource-fit filter.
    pub requested: Resources,
    /// Same, but containers without a cpu/memory request count as 100m / 200Mi. Used
    /// only for scoring.
    pub non_zero: Resources,
}

fn parse_one(
    requests: Option<&BTreeMap<String, Quantity>>,
    name: &str,
    location: &dyn Fn() -> String,
    parse: fn(&str) -> quantity::Result<i64>,
) -> Result<Option<i64>> {
    let Some(q) = requests.and_then(|r| r.get(name)) else {
        return Ok(None);
    };
    let value =
        parse(&q.0).map_err(|source| RequestError { location: location(), resource: name.to_string(), source })?;
    if value < 0 {
        return Err(RequestError {
            location: location(),
            resource: name.to_string(),
            source: QuantityError::Negative(q.0.clone()),
        });
    }
    Ok(Some(value))
}

/// (declared, with defaults) from one requests map. A request that is present but zero
/// stays zero even with defaults, as in Kubernetes: only a missing request is defaulted.
fn read_requests(
    requests: Option<&BTreeMap<String, Quantity>>,
    location: &dyn Fn() -> String,
    defaults: Resources,
) -> Result<PodRequests> {
    let cpu = parse_one(requests, "cpu", location, quantity::parse_milli)?;
    let memory = parse_one(requests, "memory", location, quantity::parse_value)?;
    Ok(PodRequests {
        requested: Resources { milli_cpu: cpu.unwrap_or(0), memory: memory.unwrap_or(0) },
        non_zero: Resources { milli_cpu: cpu.unwrap_or(defaults.milli_cpu), memory: memory.unwrap_or(defaults.memory) },
    })
}

fn container_requests(c: &Container, kind: &str) -> Result<PodRequests> {
    let location = || format!("{kind} {:?} resources.requests", c.name);
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    read_requests(
        requests,
        &location,
        Resources { milli_cpu: DEFAULT_MILLI_CPU_REQUEST, memory: DEFAULT_MEMORY_REQUEST },
    )
}

fn combine(a: PodRequests, b: PodRequests, f: fn(Resources, Resources) -> Resources) -> PodRequests {
    PodRequests { requested: f(a.requested, b.requested), non_zero: f(a.non_zero, b.non_zero) }
}

/// The effective requests of a pod (see the module docs for the rule).
pub fn pod_requests(pod: &Pod) -> Result<PodRequests> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(PodRequests::default());
    };
    let mut total = PodRequests::default();
    for c in &spec.containers {
        total = combine(total, container_requests(c, "container")?, Resources::add);
    }

    // Sidecars (init containers with restartPolicy Always) keep running, so they add to
    // the steady state and to every init container started after them.
    let mut sidecars = PodRequests::default();
    let mut init_peak = PodRequests::default();
    for c in spec.init_containers.iter().flatten() {
        let own = container_requests(c, "init container")?;
        let during = if c.restart_policy.as_deref() == Some("Always") {
            total = combine(total, own, Resources::add);
            sidecars = combine(sidecars, own, Resources::add);
            sidecars
        } else {
            combine(own, sidecars, Resources::add)
        };
        init_peak = combine(init_peak, during, Resources::max);
    }
    total = combine(total, init_peak, Resources::max);

    // Pod-level requests (PodLevelResources) override the aggregate per resource.
    let pod_level = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
    let location = || "spec.resources.requests".to_string();
    if let Some(cpu) = parse_one(pod_level, "cpu", &location, quantity::parse_milli)? {
        total.requested.milli_cpu = cpu;
        total.non_zero.milli_cpu = cpu;
    }
    if let Some(memory) = parse_one(pod_level, "memory", &location, quantity::parse_value)? {
        total.requested.memory = memory;
        total.non_zero.memory = memory;
    }

    // Overhead (RuntimeClass) is real usage on the node, never defaulted.
    let overhead = read_requests(spec.overhead.as_ref(), &|| "spec.overhead".to_string(), Resources::default())?;
    Ok(combine(total, overhead, Resources::add))
}

/// A pod in phase Succeeded or Failed holds no resources on its node any more.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// What is already placed on one node: the sum of its non-terminal pods' requests and
/// their count.
///
/// Build one per node with [`NodeUsage::add_pod`] (or [`usage_by_node`]) and keep it
/// up to date incrementally when pods are bound or finish; [`super::schedule`] only
/// reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub requested: PodRequests,
    pub pod_count: i64,
}

impl NodeUsage {
    /// Adds `pod` unless it is terminal. A pod already on the node with unreadable
    /// requests still takes a pod slot but counts as requesting nothing: it is running
    /// regardless, and refusing to schedule anywhere near it would help nobody.
    pub fn add_pod(&mut self, pod: &Pod) {
        if is_terminal(pod) {
            return;
        }
        let req = pod_requests(pod).unwrap_or_default();
        self.requested = combine(self.requested, req, Resources::add);
        self.pod_count += 1;
    }

    /// Undoes [`NodeUsage::add_pod`] for the same pod, for callers that maintain usage
    /// incrementally from a watch. Pass the version that was added (the old object
    /// when a pod turns Succeeded/Failed or is deleted): requests are immutable for
    /// the fields counted here, but the phase is not, and a terminal version is
    /// ignored just as `add_pod` ignores it. Never goes below zero.
    pub fn remove_pod(&mut self, pod: &Pod) {
        if is_terminal(pod) {
            return;
        }
        let req = pod_requests(pod).unwrap_or_default();
        let sub = |a: Resources, b: Resources| Resources {
            milli_cpu: a.milli_cpu.saturating_sub(b.milli_cpu).max(0),
            memory: a.memory.saturating_sub(b.memory).max(0),
        };
        self.requested = combine(self.requested, req, sub);
        self.pod_count = (self.pod_count - 1).max(0);
    }
}

/// Groups pods by `spec.nodeName` into [`NodeUsage`]s. Pods without a node and terminal
/// pods are skipped.
pub fn usage_by_node<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> HashMap<String, NodeUsage> {
    let mut usage: HashMap<String, NodeUsage> = HashMap::new();
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        if node.is_empty() {
            continue;
        }
        usage.entry(node.to_string()).or_default().add_pod(pod);
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testutil::*;
    use serde_json::json;

    const MI: i64 = 1024 * 1024;

    #[test]
    fn sums_app_containers() {
        let p = pod(json!({"containers": [
            ctr("a", json!({"cpu": "100m", "memory": "64Mi"})),
            ctr("b", json!({"cpu": "0.5", "memory": "1Gi"})),
        ]}));
        let r = pod_requests(&p).unwrap();
        assert_eq!(r.requested, Resources { milli_cpu: 600, memory: 1088 * MI });
        assert_eq!(r.non_zero, r.requested);
    }

    #[test]
    fn init_containers_take_the_max() {
        let p = pod(json!({
            "containers": [ctr("a", json!({"cpu": "100m", "memory": "64Mi"}))],
            "initContainers": [
                ctr("i1", json!({"cpu": "2", "memory": "32Mi"})),
                ctr("i2", json!({"cpu": "50m", "memory": "128Mi"})),
            ],
        }));
        let r = pod_requests(&p).unwrap().requested;
        assert_eq!(r, Resources { milli_cpu: 2000, memory: 128 * MI });
    }

    #[test]
    fn sidecars_add_to_steady_state_and_later_init_containers() {
        let mut sidecar = ctr("side", json!({"cpu": "200m", "memory": "10Mi"}));
        sidecar["restartPolicy"] = json!("Always");
        let p = pod(json!({
            "containers": [ctr("a", json!({"cpu": "100m", "memory": "10Mi"}))],
            "initContainers": [
                sidecar,
                ctr("after", json!({"cpu": "1", "memory": "5Mi"})),
            ],
        }));
        let r = pod_requests(&p).unwrap().requested;
        // cpu: max(100+200, 1000+200); memory: max(10+10, 5+10).
        assert_eq!(r, Resources { milli_cpu: 1200, memory: 20 * MI });
    }

    #[test]
    fn overhead_is_added() {
        let p = pod(json!({
            "containers": [ctr("a", json!({"cpu": "100m"}))],
            "overhead": {"cpu": "250m", "memory": "120Mi"},
        }));
        let r = pod_requests(&p).unwrap();
        assert_eq!(r.requested, Resources { milli_cpu: 350, memory: 120 * MI });
        // The missing memory request is defaulted for scoring, then overhead added.
        assert_eq!(r.non_zero, Resources { milli_cpu: 350, memory: 320 * MI });
    }

    #[test]
    fn pod_level_requests_override_containers() {
        let p = pod(json!({
            "containers": [ctr("a", json!({"cpu": "100m", "memory": "1Gi"}))],
            "resources": {"requests": {"cpu": "3"}},
        }));
        let r = pod_requests(&p).unwrap().requested;
        assert_eq!(r, Resources { milli_cpu: 3000, memory: 1024 * MI });
    }

    #[test]
    fn non_zero_defaults_only_for_missing_requests() {
        let p = pod(json!({"containers": [
            ctr("none", json!(null)),
            ctr("zero", json!({"cpu": "0", "memory": "0"})),
        ]}));
        let r = pod_requests(&p).unwrap();
        assert_eq!(r.requested, Resources::default());
        assert_eq!(r.non_zero, Resources { milli_cpu: DEFAULT_MILLI_CPU_REQUEST, memory: DEFAULT_MEMORY_REQUEST });
    }

    #[test]
    fn bad_request_names_container_and_resource() {
        let p = pod(json!({"containers": [ctr("web", json!({"cpu": "lots"}))]}));
        let err = pod_requests(&p).unwrap_err();
        assert_eq!(err.location, "container \"web\" resources.requests");
        assert_eq!(err.resource, "cpu");
        let msg = err.to_string();
        assert!(msg.starts_with("container \"web\" resources.requests.cpu is invalid: quantity \"lots\""), "{msg}");

        let p = pod(json!({"containers": [ctr("web", json!({"memory": "-1Gi"}))]}));
        assert!(matches!(pod_requests(&p).unwrap_err().source, QuantityError::Negative(_)));
    }

    #[test]
    fn usage_skips_terminal_and_unassigned_pods() {
        let mut on_a = pod(json!({"nodeName": "a", "containers": [ctr("c", json!({"cpu": "1"}))]}));
        let mut done = on_a.clone();
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        let mut failed = on_a.clone();
        failed.status = Some(serde_json::from_value(json!({"phase": "Failed"})).unwrap());
        let pending = pod(json!({"containers": [ctr("c", json!({"cpu": "1"}))]}));
        let bad = pod(json!({"nodeName": "a", "containers": [ctr("c", json!({"cpu": "x"}))]}));
        on_a.status = Some(serde_json::from_value(json!({"phase": "Running"})).unwrap());
        let usage = usage_by_node([&on_a, &done, &failed, &pending, &bad]);
        assert_eq!(usage.len(), 1);
        let a = &usage["a"];
        assert_eq!(a.pod_count, 2);
        assert_eq!(a.requested.requested.milli_cpu, 1000);
    }

    #[test]
    fn remove_pod_undoes_add_pod() {
        let a = pod_req("1", "1Gi");
        let b = pod_req("250m", "64Mi");
        let mut usage = NodeUsage::default();
        usage.add_pod(&a);
        usage.add_pod(&b);
        usage.remove_pod(&a);
        let mut only_b = NodeUsage::default();
        only_b.add_pod(&b);
        assert_eq!(usage, only_b);
        usage.remove_pod(&b);
        usage.remove_pod(&b);
        assert_eq!(usage, NodeUsage::default());
    }
}
