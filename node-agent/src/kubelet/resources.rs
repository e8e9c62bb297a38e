//! Requests and limits as cgroup settings for the CRI (`LinuxContainerResources`), and
//! the pod's QoS class, which decides the OOM score adjustment.
//!
//! Upstream's rules: cpu shares from the request (the limit when only that is set),
//! CFS quota from the limit over a 100 ms period, the memory limit as is, and
//! oom_score_adj -997 for Guaranteed pods, 1000 for BestEffort and, for Burstable,
//! `1000 - 1000 * memory request / node memory`, kept within 3..=999.
//!
//! Pure code: no I/O. It must not decide anything about the pod's sandbox (pod-level
//! cgroups are the sandbox config's business).

use std::collections::BTreeMap;

use k8s_cri::v1::LinuxContainerResources;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_api::quantity::{self, QuantityError};

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("container {container}: {kind} {resource}: {source}")]
    Quantity {
        container: String,
        kind: &'static str,
        resource: String,
        #[source]
        source: QuantityError,
    },
}

pub type Result<T, E = ResourceError> = std::result::Result<T, E>;

pub const GUARANTEED: &str = "Guaranteed";
pub const BURSTABLE: &str = "Burstable";
pub const BEST_EFFORT: &str = "BestEffort";

/// The CFS period: 100 ms, in microseconds.
const CPU_PERIOD_US: i64 = 100_000;
const MIN_SHARES: i64 = 2;
const MAX_SHARES: i64 = 262_144;
const SHARES_PER_CPU: i64 = 1024;
/// The kernel refuses a quota below 1 ms.
const MIN_QUOTA_US: i64 = 1000;
const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
const BEST_EFFORT_OOM_SCORE_ADJ: i64 = 1000;

/// One container's requests and limits, parsed: cpu in millicores, memory in bytes;
/// `None` when unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Amounts {
    cpu_request: Option<i64>,
    cpu_limit: Option<i64>,
    memory_request: Option<i64>,
    memory_limit: Option<i64>,
}

fn get(
    map: Option<&BTreeMap<String, Quantity>>,
    container: &str,
    kind: &'static str,
    name: &str,
) -> Result<Option<i64>> {
    let Some(q) = map.and_then(|m| m.get(name)) else { return Ok(None) };
    let parse = if name == "cpu" { quantity::parse_milli } else { quantity::parse_value };
    parse(&q.0).map(Some).map_err(|source| ResourceError::Quantity {
        container: container.into(),
        kind,
        resource: name.into(),
        source,
    })
}

fn amounts(c: &Container) -> Result<Amounts> {
    let r = c.resources.as_ref();
    let req = r.and_then(|r| r.requests.as_ref());
    let lim = r.and_then(|r| r.limits.as_ref());
    let cpu_limit = get(lim, &c.name, "limit", "cpu")?;
    let memory_limit = get(lim, &c.name, "limit", "memory")?;
    // An unset request is the limit: the API server defaults it so, and a kubelet
    // repeats the rule for objects that were stored without it.
    Ok(Amounts {
        cpu_request: get(req, &c.name, "request", "cpu")?.or(cpu_limit),
        cpu_limit,
        memory_request: get(req, &c.name, "request", "memory")?.or(memory_limit),
        memory_limit,
    })
}

/// The pod's QoS class: Guaranteed when every container (init containers included)
/// has cpu and memory limits equal to its requests, BestEffort when none has any cpu
/// or memory request or limit, Burstable otherwise. A quantity that does not parse
/// counts as unset here; `linux_resources` reports it.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else { return BEST_EFFORT };
    let mut any = false;
    let mut guaranteed = true;
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let r = c.resources.as_ref();
        let positive = |m: Option<&BTreeMap<String, Quantity>>, kind, name| {
            get(m, &c.name, kind, name).ok().flatten().filter(|v| *v > 0)
        };
        let lim = r.and_then(|r| r.limits.as_ref());
        let req = r.and_then(|r| r.requests.as_ref());
        for name in ["cpu", "memory"] {
            let limit = positive(lim, "limit", name);
            let request = positive(req, "request", name).or(limit);
            any |= limit.is_some() || request.is_some();
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => BEST_EFFORT,
        (true, true) => GUARANTEED,
        (true, false) => BURSTABLE,
    }
}

fn cpu_shares(milli: i64) -> i64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    (milli.saturating_mul(SHARES_PER_CPU) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

fn cpu_quota(milli: i64, period: i64) -> i64 {
    if milli <= 0 {
        return 0;
    }
    (milli.saturating_mul(period) / 1000).max(MIN_QUOTA_US)
}

/// The OOM score adjustment of `container` in `pod`; `node_memory` is the node's
/// memory capacity in bytes.
pub fn oom_score_adj(pod: &Pod, container: &Container, node_memory: i64) -> i64 {
    match qos_class(pod) {
        GUARANTEED => GUARANTEED_OOM_SCORE_ADJ,
        BEST_EFFORT => BEST_EFFORT_OOM_SCORE_ADJ,
        _ => {
            let request = amounts(container).ok().and_then(|a| a.memory_request).unwrap_or(0);
            let adj = if node_memory > 0 {
                1000 - (1000i128 * i128::from(request) / i128::from(node_memory)) as i64
            } else {
                BEST_EFFORT_OOM_SCORE_ADJ
            };
            // Below every Guaranteed pod's score, and above no BestEffort one.
            adj.clamp(1000 + GUARANTEED_OOM_SCORE_ADJ, BEST_EFFORT_OOM_SCORE_ADJ - 1)
        }
    }
}

/// The cgroup settings of `container` in `pod`. `node_capacity` is the Node's
/// `status.capacity`; its memory scales the Burstable OOM score.
pub fn linux_resources(
    pod: &Pod,
    container: &Container,
    node_capacity: &BTreeMap<String, Quantity>,
) -> Result<LinuxContainerResources> {
    let a = amounts(container)?;
    let node_memory = node_capacity.get("memory").and_then(|q| quantity::parse_value(&q.0).ok()).unwrap_or(0);
    Ok(LinuxContainerResources {
        cpu_shares: cpu_shares(a.cpu_request.unwrap_or(0)),
        cpu_period: CPU_PERIOD_US,
        cpu_quota: cpu_quota(a.cpu_limit.unwrap_or(0), CPU_PERIOD_US),
        memory_limit_in_bytes: a.memory_limit.unwrap_or(0).max(0),
        oom_score_adj: oom_score_adj(pod, container, node_memory),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    use super::*;

    fn container(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| kv.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect())
        };
        Container {
            name: name.into(),
            resources: Some(ResourceRequirements {
                requests: map(requests),
                limits: map(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                init_containers: (!init.is_empty()).then_some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(memory: &str) -> BTreeMap<String, Quantity> {
        [("memory".to_string(), Quantity(memory.into())), ("cpu".to_string(), Quantity("4".into()))].into()
    }

    #[test]
    fn qos_classes() {
        let both = [("cpu", "500m"), ("memory", "128Mi")];
        let cases: Vec<(&str, Pod, &str)> = vec![
            ("nothing set", pod(vec![container("a", &[], &[])], vec![]), BEST_EFFORT),
            ("limits equal requests", pod(vec![container("a", &both, &both)], vec![]), GUARANTEED),
            ("limits only (requests default to them)", pod(vec![container("a", &[], &both)], vec![]), GUARANTEED),
            ("requests only", pod(vec![container("a", &both, &[])], vec![]), BURSTABLE),
            ("cpu limit only", pod(vec![container("a", &[], &[("cpu", "1")])], vec![]), BURSTABLE),
            (
                "requests below limits",
                pod(vec![container("a", &[("cpu", "100m"), ("memory", "64Mi")], &both)], vec![]),
                BURSTABLE,
            ),
            (
                "one best-effort container makes it burstable",
                pod(vec![container("a", &both, &both), container("b", &[], &[])], vec![]),
                BURSTABLE,
            ),
            (
                "init containers count",
                pod(vec![container("a", &both, &both)], vec![container("i", &[("cpu", "1")], &[])]),
                BURSTABLE,
            ),
            ("zero requests are unset", pod(vec![container("a", &[("cpu", "0")], &[])], vec![]), BEST_EFFORT),
            (
                "equal in other units, memory request from the limit",
                pod(vec![container("a", &[("cpu", "1")], &[("cpu", "1000m"), ("memory", "1Gi")])], vec![]),
                GUARANTEED,
            ),
        ];
        for (what, p, want) in cases {
            assert_eq!(qos_class(&p), want, "{what}");
        }
        let same = container("a", &[("cpu", "1"), ("memory", "1Gi")], &[("cpu", "1000m"), ("memory", "1024Mi")]);
        assert_eq!(qos_class(&pod(vec![same], vec![])), GUARANTEED);
    }

    #[test]
    fn cgroup_settings() {
        let cases: Vec<(&str, Container, i64, i64, i64)> = vec![
            // (what, container, shares, quota, memory limit)
            ("nothing set", container("a", &[], &[]), 2, 0, 0),
            ("requests", container("a", &[("cpu", "250m"), ("memory", "64Mi")], &[]), 256, 0, 0),
            ("limits", container("a", &[], &[("cpu", "1500m"), ("memory", "1Gi")]), 1536, 150_000, 1 << 30),
            ("tiny cpu", container("a", &[("cpu", "1m")], &[("cpu", "1m")]), 2, 1000, 0),
            ("huge cpu", container("a", &[("cpu", "1000")], &[]), 262_144, 0, 0),
            ("both", container("a", &[("cpu", "100m")], &[("cpu", "2")]), 102, 200_000, 0),
        ];
        for (what, c, shares, quota, mem) in cases {
            let p = pod(vec![c.clone()], vec![]);
            let r = linux_resources(&p, &c, &node("8Gi")).unwrap();
            assert_eq!((r.cpu_shares, r.cpu_quota, r.memory_limit_in_bytes), (shares, quota, mem), "{what}");
            assert_eq!(r.cpu_period, 100_000, "{what}");
        }
    }

    #[test]
    fn oom_score_adj_per_class() {
        let node_mem = node("1000Mi");
        let g = container("g", &[], &[("cpu", "1"), ("memory", "100Mi")]);
        assert_eq!(linux_resources(&pod(vec![g.clone()], vec![]), &g, &node_mem).unwrap().oom_score_adj, -997);
        let be = container("be", &[], &[]);
        assert_eq!(linux_resources(&pod(vec![be.clone()], vec![]), &be, &node_mem).unwrap().oom_score_adj, 1000);
        let cases = [
            // (memory request, expected): 1000 - 1000*req/node, within 3..=999.
            ("100Mi", 900),
            ("250Mi", 750),
            ("0", 999),
            ("1Mi", 999),
            ("999Mi", 3),
            ("2000Mi", 3),
        ];
        for (req, want) in cases {
            let b = container("b", &[("memory", req), ("cpu", "10m")], &[]);
            let r = linux_resources(&pod(vec![b.clone()], vec![]), &b, &node_mem).unwrap();
            assert_eq!(r.oom_score_adj, want, "memory request {req}");
        }
    }

    #[test]
    fn a_bad_quantity_names_the_container_and_resource() {
        let c = container("web", &[("memory", "lots")], &[]);
        let err = linux_resources(&pod(vec![c.clone()], vec![]), &c, &node("1Gi")).unwrap_err().to_string();
        assert!(err.contains("container web") && err.contains("request memory") && err.contains("\"lots\""), "{err}");
    }
}
