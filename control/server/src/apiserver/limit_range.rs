//! LimitRanger admission, as upstream's plugin, on the create of a pod or a
//! PersistentVolumeClaim, against every LimitRange of its namespace:
//! - mutating (pods): a container's missing limits come from a `type: Container` item's
//!   `default`, its missing requests from `defaultRequest`, which falls back to
//!   `default`, then `min`, and `default` to `max` (upstream's LimitRange defaulting).
//!   Before that, a request the container lacks takes its own limit (upstream's pod
//!   defaulting, which runs before admission there). What was set is noted in the
//!   annotation `kubernetes.io/limit-ranger`;
//! - validating: `type: Container` `min`/`max`/`maxLimitRequestRatio` per container
//!   and init container, `type: Pod` over the pod's sum, `type: PersistentVolumeClaim`
//!   `min`/`max` of the requested storage. A violation is Forbidden with upstream's
//!   message (several are listed in brackets, as upstream's aggregate error).
//!
//! The same defaulting of the LimitRange itself (`default_items`) runs when one is
//! stored, from its strategy, as upstream's API defaulting does.
//!
//! It only reads the store (the LimitRanges); updates are not admitted, as upstream.

use serde_json::{Map, Value, json};
use skiff_controllers::controllers::resourcequota::usage::{self, Amount, ResourceList};

use super::api_server::ApiServer;
use super::object::{str_at, to_obj};
use super::resource_def::ResourceDef;
use super::resources::by_kind;
use super::status::{ApiError, ApiResult};

/// The annotation upstream's plugin leaves on a pod it defaulted.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

impl ApiServer {
    /// Defaults and checks a new pod or claim in `ns` against the namespace's LimitRanges.
    pub(super) async fn admit_limit_range(&self, def: &ResourceDef, ns: &str, obj: &mut Value) -> ApiResult<()> {
        let pod = match def.kind {
            "Pod" => true,
            "PersistentVolumeClaim" => false,
            _ => return Ok(()),
        };
        let lr = by_kind("LimitRange").ok_or_else(|| ApiError::internal("LimitRange is not served"))?;
        let mut ranges = Vec::new();
        for kv in self.store.list(&lr.ns_prefix(Some(ns)), None, 0).await?.kvs {
            ranges.push(to_obj(&kv)?);
        }
        if ranges.is_empty() {
            return Ok(());
        }
        let errors = if pod {
            default_pod(obj, &ranges);
            validate_pod(obj, &ranges)
        } else {
            validate_claim(obj, &ranges)
        };
        if errors.is_empty() {
            return Ok(());
        }
        let why = if errors.len() == 1 { errors[0].clone() } else { format!("[{}]", errors.join(", ")) };
        let name = str_at(obj, "/metadata/name").unwrap_or("");
        Err(ApiError::forbidden_object(def.plural, def.group, name, &why))
    }
}

/// The items of `ranges` of one type.
fn items<'a>(ranges: &'a [Value], ty: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    ranges
        .iter()
        .flat_map(|r| r.pointer("/spec/limits").and_then(Value::as_array).into_iter().flatten())
        .filter(move |l| l.get("type").and_then(Value::as_str) == Some(ty))
}

/// A `type: Container` item's (defaultRequest, default) with upstream's LimitRange
/// defaulting applied: `default` falls back to `max`, `defaultRequest` to `default`,
/// then to `min`.
fn container_defaults(item: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let field = |f: &str| item.get(f).and_then(Value::as_object).cloned().unwrap_or_default();
    let mut limits = field("default");
    for (k, v) in field("max") {
        limits.entry(k).or_insert(v);
    }
    let mut requests = field("defaultRequest");
    for (k, v) in limits.iter().chain(field("min").iter()) {
        requests.entry(k.clone()).or_insert(v.clone());
    }
    (requests, limits)
}

/// Upstream's LimitRange defaulting, applied when one is stored (so `kubectl describe
/// limits` shows the defaults that apply): `container_defaults` written into each
/// `type: Container` item.
pub fn default_items(lr: &mut Value) {
    let Some(Value::Array(items)) = lr.pointer_mut("/spec/limits") else { return };
    for item in items.iter_mut().filter(|i| i.get("type").and_then(Value::as_str) == Some("Container")) {
        let (requests, limits) = container_defaults(item);
        let Some(item) = item.as_object_mut() else { continue };
        if !limits.is_empty() {
            item.insert("default".into(), Value::Object(limits));
        }
        if !requests.is_empty() {
            item.insert("defaultRequest".into(), Value::Object(requests));
        }
    }
}

/// Sets what `defaults` has and `have` lacks; returns the names set, sorted.
fn fill(have: &mut Map<String, Value>, defaults: &Map<String, Value>) -> Vec<String> {
    let mut set: Vec<String> = Vec::new();
    for (k, v) in defaults {
        if !have.contains_key(k) {
            have.insert(k.clone(), v.clone());
            set.push(k.clone());
        }
    }
    set.sort();
    set
}

/// Applies the Container items' defaults to every container and init container of
/// `pod`, and notes what was set in the `kubernetes.io/limit-ranger` annotation.
pub fn default_pod(pod: &mut Value, ranges: &[Value]) {
    let (mut requests, mut limits) = (Map::new(), Map::new());
    // Later items win, as upstream's loop overwrites.
    for item in items(ranges, "Container") {
        let (r, l) = container_defaults(item);
        requests.extend(r);
        limits.extend(l);
    }
    let mut notes = Vec::new();
    for (list, what) in [("containers", "container"), ("initContainers", "init container")] {
        let Some(Value::Array(cs)) = pod.pointer_mut(&format!("/spec/{list}")) else { continue };
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            let res = c.entry("resources").or_insert_with(|| json!({}));
            let Some(res) = res.as_object_mut() else { continue };
            let own_limits = res.get("limits").and_then(Value::as_object).cloned().unwrap_or_default();
            let mut own_requests = res.get("requests").and_then(Value::as_object).cloned().unwrap_or_default();
            // Upstream's pod defaulting: a limit without a request is also the request.
            for (k, v) in &own_limits {
                own_requests.entry(k.clone()).or_insert(v.clone());
            }
            let mut new_limits = own_limits;
            let set_requests = fill(&mut own_requests, &requests);
            let set_limits = fill(&mut new_limits, &limits);
            if !own_requests.is_empty() {
                res.insert("requests".into(), Value::Object(own_requests));
            }
            if !new_limits.is_empty() {
                res.insert("limits".into(), Value::Object(new_limits));
            }
            if !set_requests.is_empty() {
                notes.push(format!("{} request for {what} {name}", set_requests.join(", ")));
            }
            if !set_limits.is_empty() {
                notes.push(format!("{} limit for {what} {name}", set_limits.join(", ")));
            }
        }
    }
    if notes.is_empty() {
        return;
    }
    let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if let Some(a) = annotations.as_object_mut() {
        a.insert(ANNOTATION.into(), json!(format!("LimitRanger plugin set: {}", notes.join("; "))));
    }
}

fn amounts(item: &Value, field: &str) -> ResourceList {
    usage::resource_list(item.get(field))
}

/// Upstream's `minConstraint`.
fn min_constraint(ty: &str, r: &str, min: Amount, req: &ResourceList, lim: &ResourceList, out: &mut Vec<String>) {
    match req.get(r) {
        None => out.push(format!("minimum {r} usage per {ty} is {min}.  No request is specified")),
        Some(q) if q.milli < min.milli => {
            out.push(format!("minimum {r} usage per {ty} is {min}, but request is {q}"));
        }
        _ => match lim.get(r) {
            Some(l) if l.milli < min.milli => {
                out.push(format!("minimum {r} usage per {ty} is {min}, but limit is {l}"))
            }
            _ => {}
        },
    }
}

/// Upstream's `maxConstraint`.
fn max_constraint(ty: &str, r: &str, max: Amount, req: &ResourceList, lim: &ResourceList, out: &mut Vec<String>) {
    match lim.get(r) {
        None => out.push(format!("maximum {r} usage per {ty} is {max}.  No limit is specified")),
        Some(l) if l.milli > max.milli => out.push(format!("maximum {r} usage per {ty} is {max}, but limit is {l}")),
        _ => match req.get(r) {
            Some(q) if q.milli > max.milli => {
                out.push(format!("maximum {r} usage per {ty} is {max}, but request is {q}"));
            }
            _ => {}
        },
    }
}

/// Upstream's `limitRequestRatioConstraint`.
fn ratio_constraint(ty: &str, r: &str, max: Amount, req: &ResourceList, lim: &ResourceList, out: &mut Vec<String>) {
    let (Some(q), Some(l)) = (req.get(r).filter(|q| q.milli != 0), lim.get(r).filter(|l| l.milli != 0)) else {
        let missing = if req.get(r).is_none_or(|q| q.milli == 0) { "request" } else { "limit" };
        out.push(format!(
            "{r} max limit to request ratio per {ty} is {max}, but no {missing} is specified or {missing} is 0"
        ));
        return;
    };
    let ratio = l.milli as f64 / q.milli as f64;
    if ratio * 1000.0 > max.milli as f64 {
        out.push(format!("{r} max limit to request ratio per {ty} is {max}, but provided ratio is {ratio:.6}"));
    }
}

/// Checks one item's `min`, `max` and `maxLimitRequestRatio` against requests and limits.
fn check(ty: &str, item: &Value, req: &ResourceList, lim: &ResourceList, out: &mut Vec<String>) {
    for (r, v) in amounts(item, "min") {
        min_constraint(ty, &r, v, req, lim, out);
    }
    for (r, v) in amounts(item, "max") {
        max_constraint(ty, &r, v, req, lim, out);
    }
    for (r, v) in amounts(item, "maxLimitRequestRatio") {
        ratio_constraint(ty, &r, v, req, lim, out);
    }
}

/// The violations of a (defaulted) pod: Container items per container and init
/// container, Pod items over the pod's effective requests and limits.
pub fn validate_pod(pod: &Value, ranges: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for r in ranges {
        for item in r.pointer("/spec/limits").and_then(Value::as_array).into_iter().flatten() {
            match item.get("type").and_then(Value::as_str) {
                Some("Container") => {
                    for list in ["containers", "initContainers"] {
                        for c in pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).into_iter().flatten() {
                            let (req, lim) = usage::container_resources(c);
                            check("Container", item, &req, &lim, &mut out);
                        }
                    }
                }
                Some("Pod") => {
                    let (req, lim) = usage::pod_resources(pod);
                    check("Pod", item, &req, &lim, &mut out);
                }
                _ => {}
            }
        }
    }
    out
}

/// The violations of a claim: PersistentVolumeClaim items' `min` and `max` of what it
/// requests (its limits are not the user's ask, as upstream).
pub fn validate_claim(pvc: &Value, ranges: &[Value]) -> Vec<String> {
    let req = usage::resource_list(pvc.pointer("/spec/resources/requests"));
    let mut out = Vec::new();
    for item in items(ranges, "PersistentVolumeClaim") {
        for (r, min) in amounts(item, "min") {
            min_constraint("PersistentVolumeClaim", &r, min, &req, &ResourceList::new(), &mut out);
        }
        for (r, max) in amounts(item, "max") {
            match req.get(&r) {
                None => {
                    out.push(format!("maximum {r} usage per PersistentVolumeClaim is {max}.  No request is specified"))
                }
                Some(q) if q.milli > max.milli => {
                    out.push(format!("maximum {r} usage per PersistentVolumeClaim is {max}, but request is {q}"));
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(limits: Value) -> Vec<Value> {
        vec![json!({"metadata": {"name": "lr"}, "spec": {"limits": limits}})]
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn defaults_fill_what_containers_lack_and_say_so() {
        let ranges = range(json!([{"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "100m"}}]));
        let mut p = pod(json!([{"name": "app"}, {"name": "side", "resources": {"limits": {"cpu": "200m"}}}]));
        default_pod(&mut p, &ranges);
        let c = &p["spec"]["containers"];
        assert_eq!(
            c[0]["resources"],
            json!({"requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"}})
        );
        // A container's own limit is its request; only memory is filled in.
        assert_eq!(
            c[1]["resources"],
            json!({"requests": {"cpu": "200m", "memory": "256Mi"},
            "limits": {"cpu": "200m", "memory": "256Mi"}})
        );
        assert_eq!(
            p["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app; \
             memory request for container side; memory limit for container side"
        );
    }

    #[test]
    fn default_request_falls_back_to_default_then_min_and_default_to_max() {
        let ranges = range(json!([{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}}]));
        let mut p = pod(json!([{"name": "app"}]));
        default_pod(&mut p, &ranges);
        assert_eq!(
            p["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "1", "memory": "64Mi"},
            "limits": {"cpu": "1"}})
        );
    }

    #[test]
    fn stored_limit_ranges_get_upstreams_defaults() {
        let mut lr = range(json!([{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}},
            {"type": "Pod", "max": {"cpu": "2"}}]))
        .remove(0);
        default_items(&mut lr);
        assert_eq!(lr["spec"]["limits"][0]["default"], json!({"cpu": "1"}));
        assert_eq!(lr["spec"]["limits"][0]["defaultRequest"], json!({"cpu": "1", "memory": "64Mi"}));
        assert!(lr["spec"]["limits"][1].get("default").is_none(), "only Container items have defaults");
    }

    #[test]
    fn violations_read_as_upstream() {
        let ranges = range(json!([{"type": "Container", "max": {"cpu": "500m"}, "min": {"cpu": "50m"}}]));
        let p = pod(json!([{"name": "app", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "100m"}}}]));
        assert_eq!(validate_pod(&p, &ranges), ["maximum cpu usage per Container is 500m, but limit is 1"]);
        let p = pod(json!([{"name": "app", "resources": {"limits": {"cpu": "200m"}, "requests": {"cpu": "10m"}}}]));
        assert_eq!(validate_pod(&p, &ranges), ["minimum cpu usage per Container is 50m, but request is 10m"]);
        let p = pod(json!([{"name": "app", "resources": {"requests": {"cpu": "100m"}}}]));
        assert_eq!(validate_pod(&p, &ranges), ["maximum cpu usage per Container is 500m.  No limit is specified"]);

        let ranges = range(json!([{"type": "Container", "maxLimitRequestRatio": {"memory": "2"}}]));
        let p =
            pod(json!([{"name": "app", "resources": {"limits": {"memory": "1Gi"}, "requests": {"memory": "256Mi"}}}]));
        assert_eq!(
            validate_pod(&p, &ranges),
            ["memory max limit to request ratio per Container is 2, but provided ratio is 4.000000"]
        );

        let ranges = range(json!([{"type": "Pod", "max": {"memory": "1Gi"}}]));
        let p = pod(json!([
            {"name": "a", "resources": {"limits": {"memory": "768Mi"}}},
            {"name": "b", "resources": {"limits": {"memory": "768Mi"}}},
        ]));
        assert_eq!(validate_pod(&p, &ranges), ["maximum memory usage per Pod is 1Gi, but limit is 1536Mi"]);
    }

    #[test]
    fn claims_are_held_to_storage_bounds() {
        let ranges =
            range(json!([{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "2Gi"}}]));
        let claim = |s: &str| json!({"spec": {"resources": {"requests": {"storage": s}}}});
        assert!(validate_claim(&claim("1Gi"), &ranges).is_empty());
        assert_eq!(
            validate_claim(&claim("5Gi"), &ranges),
            ["maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"]
        );
        assert_eq!(
            validate_claim(&claim("500Mi"), &ranges),
            ["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]
        );
    }
}
