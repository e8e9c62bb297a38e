//! What objects cost against a ResourceQuota, as upstream's quota evaluators count it:
//! which quota resource names count which kind (`pods`, `requests.cpu`,
//! `count/deployments.apps`, ...), what one object adds to each (a pod its requests and
//! limits unless it has finished or is stuck terminating, a Service its node ports, a
//! claim its storage), whether a quota's scopes select a pod, the sum over a namespace,
//! and the admission check of one new object with upstream's messages.
//!
//! Shared by the resource quota controller (which recomputes `status.used`) and the API
//! server's quota admission (which charges one object against it), so both count alike.
//! Pure code over JSON objects: no I/O, no logging.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;
use skiff_api::quantity;

/// An amount of a resource, exact in thousandths; `binary` says whether it reads best
/// with a power-of-two suffix (`Mi`, `Gi`), as the quantity it came from was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub milli: i64,
    pub binary: bool,
}

impl Amount {
    /// A count (pods, services, ...).
    pub fn count(n: i64) -> Self {
        Self { milli: n.saturating_mul(1000), binary: false }
    }

    /// A quantity string; `None` when it does not parse (validation refused those).
    pub fn parse(s: &str) -> Option<Self> {
        let milli = quantity::parse_milli(s).ok()?;
        Some(Self { milli, binary: s.ends_with('i') })
    }

    /// The sum; it reads as `self` did unless `self` is a zero that was never written.
    pub fn plus(self, other: Self) -> Self {
        let binary = if self == Self::default() { other.binary } else { self.binary };
        Self { milli: self.milli.saturating_add(other.milli), binary }
    }

    pub fn max(self, other: Self) -> Self {
        if other.milli > self.milli { other } else { self }
    }
}

/// The canonical form upstream's `Quantity.String()` prints: the largest suffix that
/// keeps the amount whole (`1500m`, `2`, `5k`, `512Mi`, `1Gi`); a binary amount that is
/// not a whole number of KiB prints in decimal, as upstream does.
impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.milli;
        if m % 1000 != 0 {
            return write!(f, "{m}m");
        }
        let v = m / 1000;
        if v == 0 {
            return f.write_str("0");
        }
        let (v, suffix) = if self.binary && v % 1024 == 0 {
            largest_suffix(v, 1024, &["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])
        } else {
            largest_suffix(v, 1000, &["k", "M", "G", "T", "P", "E"])
        };
        write!(f, "{v}{suffix}")
    }
}

/// `v` divided by `base` as often as it stays whole (once per suffix at most), and the
/// suffix that says so.
fn largest_suffix(mut v: i64, base: i64, suffixes: &[&'static str]) -> (i64, &'static str) {
    let mut suffix = "";
    for s in suffixes {
        if v % base != 0 {
            break;
        }
        v /= base;
        suffix = s;
    }
    (v, suffix)
}

/// Quota resource names and their amounts, sorted by name as upstream prints them.
pub type ResourceList = BTreeMap<String, Amount>;

/// A JSON map of quantities (`spec.hard`, `resources.requests`); unparsable entries are
/// skipped (the API server's validation refused them).
pub fn resource_list(v: Option<&Value>) -> ResourceList {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Some((k.clone(), Amount::parse(q.as_str()?)?)))
        .collect()
}

/// The JSON form of `list`, canonical quantity strings.
pub fn to_json(list: &ResourceList) -> Value {
    Value::Object(list.iter().map(|(k, a)| (k.clone(), Value::String(a.to_string()))).collect())
}

/// `name=amount,...`, upstream's `prettyPrint` of a ResourceList.
pub fn pretty(list: &ResourceList) -> String {
    list.iter().map(|(k, a)| format!("{k}={a}")).collect::<Vec<_>>().join(",")
}

/// A (group, plural) pair naming a resource.
pub type GroupResource = (String, String);

fn core(plural: &str) -> GroupResource {
    (String::new(), plural.to_string())
}

/// The compute resources whose bare name (`cpu`) means the request, as upstream.
const BARE_COMPUTE: &[&str] = &["cpu", "memory", "ephemeral-storage"];
/// The resources that, once quota'd, every container must state (upstream's
/// backward-compatibility rule, `validationSet`).
const MUST_SPECIFY: &[&str] = &["cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"];
const STORAGE_CLASS_INFIX: &str = ".storageclass.storage.k8s.io/";

/// Which resource's objects a quota resource name counts; `None` for a name no
/// evaluator knows (it is then never used, as upstream).
pub fn counted_by(name: &str) -> Option<GroupResource> {
    match name {
        "pods" | "count/pods" => return Some(core("pods")),
        "services" | "services.nodeports" | "services.loadbalancers" | "count/services" => {
            return Some(core("services"));
        }
        "persistentvolumeclaims" | "requests.storage" | "count/persistentvolumeclaims" => {
            return Some(core("persistentvolumeclaims"));
        }
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => return Some(core(name)),
        _ => {}
    }
    if name.contains(STORAGE_CLASS_INFIX) {
        return Some(core("persistentvolumeclaims"));
    }
    if BARE_COMPUTE.contains(&name)
        || name.starts_with("requests.")
        || name.starts_with("limits.")
        || name.starts_with("hugepages-")
    {
        return Some(core("pods"));
    }
    let counted = name.strip_prefix("count/")?;
    Some(match counted.split_once('.') {
        Some((plural, group)) => (group.to_string(), plural.to_string()),
        None => core(counted),
    })
}

/// Whether a pod has finished: it holds nothing any more.
pub fn is_terminal(pod: &Value) -> bool {
    matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

fn containers<'a>(pod: &'a Value, list: &str) -> impl Iterator<Item = &'a Value> {
    pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).into_iter().flatten()
}

/// A container's requests, a request it lacks taking its limit (upstream's pod
/// defaulting, which runs before any quota sees the pod), and its limits.
pub fn container_resources(c: &Value) -> (ResourceList, ResourceList) {
    let mut requests = resource_list(c.pointer("/resources/requests"));
    let limits = resource_list(c.pointer("/resources/limits"));
    for (k, v) in &limits {
        requests.entry(k.clone()).or_insert(*v);
    }
    (requests, limits)
}

fn add_all(to: &mut ResourceList, from: &ResourceList) {
    for (k, v) in from {
        let e = to.entry(k.clone()).or_default();
        *e = e.plus(*v);
    }
}

fn max_all(to: &mut ResourceList, from: &ResourceList) {
    for (k, v) in from {
        let e = to.entry(k.clone()).or_default();
        *e = e.max(*v);
    }
}

/// The pod's effective requests and limits (upstream's `PodRequests`/`PodLimits`): the
/// containers and sidecars (init containers that keep running) summed, at least the
/// largest ordinary init container plus the sidecars started before it, plus overhead.
pub fn pod_resources(pod: &Value) -> (ResourceList, ResourceList) {
    let (mut requests, mut limits) = (ResourceList::new(), ResourceList::new());
    for c in containers(pod, "containers") {
        let (r, l) = container_resources(c);
        add_all(&mut requests, &r);
        add_all(&mut limits, &l);
    }
    let (mut sidecar_r, mut sidecar_l) = (ResourceList::new(), ResourceList::new());
    let (mut init_r, mut init_l) = (ResourceList::new(), ResourceList::new());
    for c in containers(pod, "initContainers") {
        let (r, l) = container_resources(c);
        if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            add_all(&mut sidecar_r, &r);
            add_all(&mut sidecar_l, &l);
        } else {
            let (mut r2, mut l2) = (sidecar_r.clone(), sidecar_l.clone());
            add_all(&mut r2, &r);
            add_all(&mut l2, &l);
            max_all(&mut init_r, &r2);
            max_all(&mut init_l, &l2);
        }
    }
    add_all(&mut requests, &sidecar_r);
    add_all(&mut limits, &sidecar_l);
    max_all(&mut requests, &init_r);
    max_all(&mut limits, &init_l);
    let overhead = resource_list(pod.pointer("/spec/overhead"));
    add_all(&mut requests, &overhead);
    add_all(&mut limits, &overhead);
    (requests, limits)
}

fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/")
}

/// What a pod adds (upstream's `podComputeUsageHelper`); nothing once it is terminal.
pub fn pod_usage(pod: &Value) -> ResourceList {
    let mut out = ResourceList::new();
    if is_terminal(pod) {
        return out;
    }
    out.insert("pods".into(), Amount::count(1));
    out.insert("count/pods".into(), Amount::count(1));
    let (requests, limits) = pod_resources(pod);
    for (k, v) in requests {
        if BARE_COMPUTE.contains(&k.as_str()) {
            out.insert(k.clone(), v);
        }
        if BARE_COMPUTE.contains(&k.as_str()) || k.starts_with("hugepages-") || is_extended(&k) {
            out.insert(format!("requests.{k}"), v);
        }
    }
    for (k, v) in limits {
        if BARE_COMPUTE.contains(&k.as_str()) || k.starts_with("hugepages-") {
            out.insert(format!("limits.{k}"), v);
        }
    }
    out
}

fn service_usage(svc: &Value) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("services".into(), Amount::count(1));
    out.insert("count/services".into(), Amount::count(1));
    let ports = svc.pointer("/spec/ports").and_then(Value::as_array).map_or(0, Vec::len) as i64;
    let (node_ports, lbs) = match svc.pointer("/spec/type").and_then(Value::as_str) {
        Some("NodePort") => (ports, 0),
        Some("LoadBalancer") => {
            let allocates = svc.pointer("/spec/allocateLoadBalancerNodePorts").and_then(Value::as_bool) != Some(false);
            (if allocates { ports } else { 0 }, 1)
        }
        _ => (0, 0),
    };
    out.insert("services.nodeports".into(), Amount::count(node_ports));
    out.insert("services.loadbalancers".into(), Amount::count(lbs));
    out
}

fn claim_usage(pvc: &Value) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("persistentvolumeclaims".into(), Amount::count(1));
    out.insert("count/persistentvolumeclaims".into(), Amount::count(1));
    let storage = pvc.pointer("/spec/resources/requests/storage").and_then(Value::as_str).and_then(Amount::parse);
    if let Some(s) = storage {
        out.insert("requests.storage".into(), s);
    }
    if let Some(class) = pvc.pointer("/spec/storageClassName").and_then(Value::as_str).filter(|c| !c.is_empty()) {
        out.insert(format!("{class}{STORAGE_CLASS_INFIX}persistentvolumeclaims"), Amount::count(1));
        if let Some(s) = storage {
            out.insert(format!("{class}{STORAGE_CLASS_INFIX}requests.storage"), s);
        }
    }
    out
}

/// What one object of `resource` adds, under every name that counts it.
pub fn object_usage(resource: &GroupResource, obj: &Value) -> ResourceList {
    let (group, plural) = (resource.0.as_str(), resource.1.as_str());
    match (group, plural) {
        ("", "pods") => pod_usage(obj),
        ("", "services") => service_usage(obj),
        ("", "persistentvolumeclaims") => claim_usage(obj),
        _ => {
            let mut out = ResourceList::new();
            let name = if group.is_empty() { format!("count/{plural}") } else { format!("count/{plural}.{group}") };
            out.insert(name, Amount::count(1));
            if group.is_empty() {
                out.insert(plural.to_string(), Amount::count(1));
            }
            out
        }
    }
}

fn is_best_effort(pod: &Value) -> bool {
    containers(pod, "containers").chain(containers(pod, "initContainers")).all(|c| {
        let (r, l) = container_resources(c);
        !r.keys().chain(l.keys()).any(|k| BARE_COMPUTE[..2].contains(&k.as_str()))
    })
}

fn is_terminating(pod: &Value) -> bool {
    pod.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_i64).is_some_and(|s| s >= 0)
}

/// Whether `pod` is in one scope (`spec.scopes` entry or a scopeSelector term).
fn in_scope(scope: &str, pod: &Value) -> bool {
    match scope {
        "Terminating" => is_terminating(pod),
        "NotTerminating" => !is_terminating(pod),
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        // Exists with no values: any pod names a class once priority admission ran.
        "PriorityClass" => true,
        "CrossNamespacePodAffinity" => cross_namespace_affinity(pod),
        _ => false,
    }
}

/// Whether a pod (anti-)affinity term of `pod` looks beyond its namespace (names
/// namespaces or has a namespace selector, even an empty one).
fn cross_namespace_affinity(pod: &Value) -> bool {
    let crosses = |t: &Value| {
        t.get("namespaces").and_then(Value::as_array).is_some_and(|n| !n.is_empty())
            || t.get("namespaceSelector").is_some_and(|s| !s.is_null())
    };
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let Some(a) = pod.pointer(&format!("/spec/affinity/{kind}")) else { return false };
        let required = a.get("requiredDuringSchedulingIgnoredDuringExecution").and_then(Value::as_array);
        let preferred = a.get("preferredDuringSchedulingIgnoredDuringExecution").and_then(Value::as_array);
        required.into_iter().flatten().any(crosses)
            || preferred.into_iter().flatten().filter_map(|w| w.get("podAffinityTerm")).any(crosses)
    })
}

fn matches_term(term: &Value, pod: &Value) -> bool {
    let scope = term.get("scopeName").and_then(Value::as_str).unwrap_or("");
    let values: Vec<&str> =
        term.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let op = term.get("operator").and_then(Value::as_str).unwrap_or("");
    if scope == "PriorityClass" {
        let class = pod.pointer("/spec/priorityClassName").and_then(Value::as_str).unwrap_or("");
        return match op {
            "In" => values.contains(&class),
            "NotIn" => !values.contains(&class),
            "Exists" => true,
            "DoesNotExist" => false,
            _ => false,
        };
    }
    match op {
        "Exists" => in_scope(scope, pod),
        "DoesNotExist" => !in_scope(scope, pod),
        _ => false,
    }
}

/// The quota's scopes: `spec.scopes` and the terms of `spec.scopeSelector`.
fn has_scopes(quota: &Value) -> bool {
    quota.pointer("/spec/scopes").and_then(Value::as_array).is_some_and(|s| !s.is_empty())
        || quota
            .pointer("/spec/scopeSelector/matchExpressions")
            .and_then(Value::as_array)
            .is_some_and(|s| !s.is_empty())
}

/// Whether the quota's scopes select `obj`: all of them must; only pods have scopes, so
/// a scoped quota selects no other kind (as upstream).
pub fn selects(quota: &Value, resource: &GroupResource, obj: &Value) -> bool {
    if !has_scopes(quota) {
        return true;
    }
    if resource != &core("pods") {
        return false;
    }
    let scopes = quota.pointer("/spec/scopes").and_then(Value::as_array).into_iter().flatten();
    let terms = quota.pointer("/spec/scopeSelector/matchExpressions").and_then(Value::as_array).into_iter().flatten();
    scopes.filter_map(Value::as_str).all(|s| in_scope(s, obj)) && terms.into_iter().all(|t| matches_term(t, obj))
}

/// `spec.hard` of a quota.
pub fn spec_hard(quota: &Value) -> ResourceList {
    resource_list(quota.pointer("/spec/hard"))
}

/// The resources (group, plural) whose objects the quota counts.
pub fn counted_resources(hard: &ResourceList) -> BTreeSet<GroupResource> {
    hard.keys().filter_map(|k| counted_by(k)).collect()
}

/// Whether a pod is stuck terminating at `now`: deleted and past its grace period (its
/// node lost, say). Upstream's `QuotaV1Pod` stops charging for it, so it does not block
/// its own replacement.
pub fn stuck_terminating(pod: &Value, now: jiff::Timestamp) -> bool {
    let at = pod.pointer("/metadata/deletionTimestamp").and_then(Value::as_str);
    let grace = pod.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
    let (Some(at), Some(grace)) = (at.and_then(|a| a.parse::<jiff::Timestamp>().ok()), grace) else { return false };
    now.as_second() > at.as_second().saturating_add(grace)
}

/// The usage of `quota` at `now` given the objects of its namespace for each resource
/// it counts (a resource missing from `objects` counts as none): every name in
/// `spec.hard`, zero when nothing uses it.
pub fn used(quota: &Value, objects: &BTreeMap<GroupResource, Vec<Value>>, now: jiff::Timestamp) -> ResourceList {
    let hard = spec_hard(quota);
    let mut out: ResourceList = hard.keys().map(|k| (k.clone(), Amount::default())).collect();
    for (resource, objs) in objects {
        let pods = resource == &core("pods");
        for o in objs.iter().filter(|o| selects(quota, resource, o) && !(pods && stuck_terminating(o, now))) {
            for (k, v) in object_usage(resource, o) {
                if let Some(e) = out.get_mut(&k)
                    && counted_by(&k).as_ref() == Some(resource)
                {
                    *e = e.plus(v);
                }
            }
        }
    }
    out
}

/// Why a new object may not be charged to a quota: upstream's admission messages
/// (without the `pods "x" is forbidden: ` the caller adds).
pub fn constraint_violations(quota_name: &str, required: &BTreeSet<String>, pod: &Value) -> Option<String> {
    let required: BTreeSet<&str> = required.iter().map(String::as_str).filter(|r| MUST_SPECIFY.contains(r)).collect();
    if required.is_empty() {
        return None;
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for c in containers(pod, "containers").chain(containers(pod, "initContainers")) {
        let (r, l) = container_resources(c);
        let mut has = BTreeSet::new();
        for k in r.keys() {
            has.insert(k.clone());
            has.insert(format!("requests.{k}"));
        }
        for k in l.keys() {
            has.insert(format!("limits.{k}"));
        }
        let name = c.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        for r in required.iter().filter(|r| !has.contains(**r)) {
            missing.entry(r).or_default().insert(name.clone());
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| format!("{r} for: {}", names.iter().cloned().collect::<Vec<_>>().join(",")))
        .collect();
    Some(format!("failed quota: {quota_name}: must specify {}", parts.join("; ")))
}

/// What charging one new object to a quota comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// The quota does not count the object (other kinds, out of scope, nothing used).
    NotCounted,
    /// It fits: the quota's `status.used` becomes this.
    Fits(ResourceList),
    /// It is refused, with upstream's reason.
    Refused(String),
}

/// Charges a new object of `resource` to `quota` (upstream's `checkRequest`), or, with
/// `old`, what an update adds to what the object used (a claim grown, a Service turned
/// NodePort; nothing for what shrank): against `status.hard` and `status.used`, which
/// the controller keeps. A quota not counted yet refuses, as upstream, rather than
/// guess (the API server counts such a quota itself before it charges).
pub fn charge(quota: &Value, resource: &GroupResource, obj: &Value, old: Option<&Value>) -> Charge {
    let name = quota.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let hard = resource_list(quota.pointer("/status/hard"));
    let spec = spec_hard(quota);
    // The names this kind is counted under, whether or not the status has them yet.
    let relevant: BTreeSet<String> =
        spec.keys().chain(hard.keys()).filter(|k| counted_by(k).as_ref() == Some(resource)).cloned().collect();
    if relevant.is_empty() || !selects(quota, resource, obj) {
        return Charge::NotCounted;
    }
    if resource == &core("pods")
        && old.is_none()
        && let Some(why) = constraint_violations(name, &relevant, obj)
    {
        return Charge::Refused(why);
    }
    let mut delta = object_usage(resource, obj);
    if let Some(old) = old.filter(|o| selects(quota, resource, o)) {
        let before = object_usage(resource, old);
        for (k, d) in delta.iter_mut() {
            let was = before.get(k).map_or(0, |a| a.milli);
            d.milli = (d.milli - was).max(0);
        }
    }
    if relevant.iter().all(|k| delta.get(k).is_none_or(|a| a.milli == 0)) {
        return Charge::NotCounted;
    }
    let mut used = resource_list(quota.pointer("/status/used"));
    let unknown: Vec<&str> =
        relevant.iter().filter(|k| !hard.contains_key(*k) || !used.contains_key(*k)).map(String::as_str).collect();
    if !unknown.is_empty() {
        return Charge::Refused(format!("status unknown for quota: {name}, resources: {}", unknown.join(",")));
    }
    let (mut requested, mut was, mut limited) = (ResourceList::new(), ResourceList::new(), ResourceList::new());
    for k in &relevant {
        let Some(d) = delta.get(k).filter(|d| d.milli != 0) else { continue };
        let now = used[k];
        let new = now.plus(*d);
        if new.milli > hard[k].milli {
            requested.insert(k.clone(), *d);
            was.insert(k.clone(), now);
            limited.insert(k.clone(), hard[k]);
        }
        used.insert(k.clone(), new);
    }
    if !requested.is_empty() {
        return Charge::Refused(format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            pretty(&requested),
            pretty(&was),
            pretty(&limited)
        ));
    }
    Charge::Fits(used)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn amounts(v: Value) -> ResourceList {
        resource_list(Some(&v))
    }

    #[test]
    fn amounts_print_as_upstream() {
        let s = |q: &str| Amount::parse(q).unwrap().to_string();
        assert_eq!(s("500m"), "500m");
        assert_eq!(s("1000m"), "1");
        assert_eq!(s("0.5"), "500m");
        assert_eq!(s("2000"), "2k");
        assert_eq!(s("1024Mi"), "1Gi");
        assert_eq!(s("1536Mi"), "1536Mi");
        assert_eq!(s("1G"), "1G");
        assert_eq!(s("0"), "0");
        let sum = Amount::parse("512Mi").unwrap().plus(Amount::parse("512Mi").unwrap());
        assert_eq!(sum.to_string(), "1Gi");
        assert_eq!(Amount::default().plus(Amount::parse("256Mi").unwrap()).to_string(), "256Mi");
    }

    #[test]
    fn names_count_the_right_kind() {
        assert_eq!(counted_by("pods"), Some(core("pods")));
        assert_eq!(counted_by("requests.cpu"), Some(core("pods")));
        assert_eq!(counted_by("memory"), Some(core("pods")));
        assert_eq!(counted_by("requests.storage"), Some(core("persistentvolumeclaims")));
        assert_eq!(
            counted_by("gold.storageclass.storage.k8s.io/requests.storage"),
            Some(core("persistentvolumeclaims"))
        );
        assert_eq!(counted_by("services.nodeports"), Some(core("services")));
        assert_eq!(counted_by("count/deployments.apps"), Some(("apps".into(), "deployments".into())));
        assert_eq!(counted_by("count/widgets.example.com"), Some(("example.com".into(), "widgets".into())));
        assert_eq!(counted_by("count/configmaps"), Some(core("configmaps")));
        assert_eq!(counted_by("secrets"), Some(core("secrets")));
        assert_eq!(counted_by("nonsense"), None);
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn a_pod_costs_its_requests_and_limits() {
        let p = pod(json!([
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m"}}},
            {"name": "b", "resources": {"limits": {"cpu": "300m", "memory": "128Mi"}}},
        ]));
        let u = pod_usage(&p);
        let get = |k: &str| u.get(k).map(Amount::to_string);
        assert_eq!(get("pods").as_deref(), Some("1"));
        assert_eq!(get("requests.cpu").as_deref(), Some("400m"), "b's request defaults to its limit");
        assert_eq!(get("cpu").as_deref(), Some("400m"));
        assert_eq!(get("requests.memory").as_deref(), Some("192Mi"));
        assert_eq!(get("limits.cpu").as_deref(), Some("500m"));
        assert_eq!(get("limits.memory").as_deref(), Some("128Mi"));

        // An init container bigger than the rest sets the pod's request.
        let mut p = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "100m"}}}]));
        p["spec"]["initContainers"] = json!([{"name": "i", "resources": {"requests": {"cpu": "1"}}}]);
        assert_eq!(pod_usage(&p)["requests.cpu"].to_string(), "1");

        // Finished pods cost nothing.
        p["status"] = json!({"phase": "Succeeded"});
        assert!(pod_usage(&p).is_empty());
    }

    #[test]
    fn services_and_claims_cost_what_upstream_counts() {
        let u = object_usage(&core("services"), &json!({"spec": {"type": "NodePort", "ports": [{}, {}]}}));
        assert_eq!((u["services"].to_string(), u["services.nodeports"].to_string()), ("1".into(), "2".into()));
        assert_eq!(u["services.loadbalancers"].milli, 0);
        let u = object_usage(&core("services"), &json!({"spec": {"type": "LoadBalancer", "ports": [{}]}}));
        assert_eq!(u["services.loadbalancers"].to_string(), "1");
        let u = object_usage(
            &core("persistentvolumeclaims"),
            &json!({"spec": {"storageClassName": "gold", "resources": {"requests": {"storage": "5Gi"}}}}),
        );
        assert_eq!(u["requests.storage"].to_string(), "5Gi");
        assert_eq!(u["gold.storageclass.storage.k8s.io/requests.storage"].to_string(), "5Gi");
        let u = object_usage(&("apps".into(), "deployments".into()), &json!({}));
        assert_eq!(u.keys().collect::<Vec<_>>(), ["count/deployments.apps"]);
    }

    #[test]
    fn scopes_select_pods() {
        let quota = |scopes: Value| json!({"spec": {"hard": {"pods": "1"}, "scopes": scopes}});
        let best_effort = pod(json!([{"name": "a"}]));
        let mut sized = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        sized["spec"]["activeDeadlineSeconds"] = json!(30);
        let pods = core("pods");
        assert!(selects(&quota(json!(["BestEffort"])), &pods, &best_effort));
        assert!(!selects(&quota(json!(["BestEffort"])), &pods, &sized));
        assert!(selects(&quota(json!(["NotBestEffort", "Terminating"])), &pods, &sized));
        assert!(!selects(&quota(json!(["NotTerminating"])), &pods, &sized));
        assert!(!selects(&quota(json!(["BestEffort"])), &core("services"), &json!({})));
        let mut reaching = best_effort.clone();
        reaching["spec"]["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "podAffinityTerm": {"topologyKey": "k", "namespaceSelector": {}}}]}});
        assert!(selects(&quota(json!(["CrossNamespacePodAffinity"])), &pods, &reaching));
        assert!(!selects(&quota(json!(["CrossNamespacePodAffinity"])), &pods, &best_effort));
        let mut high = best_effort.clone();
        high["spec"]["priorityClassName"] = json!("high");
        let by_class = json!({"spec": {"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        assert!(selects(&by_class, &pods, &high));
        assert!(!selects(&by_class, &pods, &best_effort));
    }

    #[test]
    fn namespace_usage_sums_what_counts() {
        let quota = json!({"spec": {"hard": {"pods": "5", "requests.cpu": "2", "count/deployments.apps": "1"}}});
        let mut done = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        done["status"] = json!({"phase": "Failed"});
        let objects = BTreeMap::from([
            (
                core("pods"),
                vec![
                    pod(json!([{"name": "a", "resources": {"requests": {"cpu": "250m"}}}])),
                    pod(json!([{"name": "b"}])),
                    done,
                ],
            ),
            (("apps".into(), "deployments".into()), vec![json!({})]),
        ]);
        let now = jiff::Timestamp::now();
        let u = used(&quota, &objects, now);
        assert_eq!(to_json(&u), json!({"pods": "2", "requests.cpu": "250m", "count/deployments.apps": "1"}));

        // A pod deleted long past its grace period (its node gone) stops counting.
        let mut objects = objects;
        let deleted = (now - jiff::SignedDuration::from_secs(60)).to_string();
        let pods = objects.get_mut(&core("pods")).unwrap();
        pods[0]["metadata"]["deletionTimestamp"] = json!(deleted);
        pods[0]["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        pods[1]["metadata"]["deletionTimestamp"] = json!(deleted);
        pods[1]["metadata"]["deletionGracePeriodSeconds"] = json!(120);
        assert_eq!(used(&quota, &objects, now)["pods"].to_string(), "1");
    }

    fn counted(hard: Value, used: Value) -> Value {
        json!({"metadata": {"name": "q"}, "spec": {"hard": hard.clone()}, "status": {"hard": hard, "used": used}})
    }

    #[test]
    fn charging_refuses_with_upstream_messages() {
        let pods = core("pods");
        let p = pod(json!([{"name": "app"}]));
        let q = counted(json!({"pods": "2"}), json!({"pods": "2"}));
        assert_eq!(
            charge(&q, &pods, &p, None),
            Charge::Refused("exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2".into())
        );
        let q = counted(json!({"pods": "2"}), json!({"pods": "1"}));
        assert_eq!(charge(&q, &pods, &p, None), Charge::Fits(amounts(json!({"pods": "2"}))));

        let q =
            counted(json!({"requests.cpu": "1", "limits.cpu": "2"}), json!({"requests.cpu": "0", "limits.cpu": "0"}));
        assert_eq!(
            charge(&q, &pods, &p, None),
            Charge::Refused("failed quota: q: must specify limits.cpu for: app; requests.cpu for: app".into())
        );
        let sized = pod(json!([{"name": "app", "resources": {"requests": {"cpu": "600m"}, "limits": {"cpu": "1"}}}]));
        let q = counted(
            json!({"requests.cpu": "1", "limits.cpu": "2"}),
            json!({"requests.cpu": "500m", "limits.cpu": "0"}),
        );
        assert_eq!(
            charge(&q, &pods, &sized, None),
            Charge::Refused(
                "exceeded quota: q, requested: requests.cpu=600m, used: requests.cpu=500m, limited: requests.cpu=1"
                    .into()
            )
        );

        // An update is charged what it adds.
        let services = core("services");
        let q = counted(json!({"services.nodeports": "1"}), json!({"services.nodeports": "0"}));
        let plain = json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP", "ports": [{}, {}]}});
        let node_port = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{}, {}]}});
        assert_eq!(charge(&q, &services, &plain, Some(&plain)), Charge::NotCounted);
        assert_eq!(
            charge(&q, &services, &node_port, Some(&plain)),
            Charge::Refused(
                "exceeded quota: q, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1"
                    .into()
            )
        );
        assert_eq!(charge(&q, &services, &plain, Some(&node_port)), Charge::NotCounted, "shrinking costs nothing");

        // A quota the controller has not counted yet refuses rather than guesses.
        let fresh = json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "2"}}});
        assert_eq!(
            charge(&fresh, &pods, &p, None),
            Charge::Refused("status unknown for quota: q, resources: pods".into())
        );
        // Other kinds are not counted by a pods quota.
        assert_eq!(charge(&q, &core("configmaps"), &json!({}), None), Charge::NotCounted);
        let q = counted(json!({"configmaps": "1"}), json!({"configmaps": "1"}));
        assert_eq!(
            charge(&q, &core("configmaps"), &json!({}), None),
            Charge::Refused(
                "exceeded quota: q, requested: configmaps=1, used: configmaps=1, limited: configmaps=1".into()
            )
        );
    }
}
