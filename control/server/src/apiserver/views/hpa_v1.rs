//! autoscaling/v1 HorizontalPodAutoscaler over autoscaling/v2: v1's
//! `targetCPUUtilizationPercentage` is v2's CPU `Utilization` resource metric (and
//! `currentCPUUtilizationPercentage` its current value). What v1 cannot say (other
//! metrics, `behavior`, conditions) is left out of v1 answers; unlike upstream it is not
//! kept in annotations, so a v1 update of a v2 object with other metrics drops them.

use serde_json::{Map, Value, json};

use super::view::View;
use crate::apiserver::status::Cause;

pub(super) static VIEW: View = View {
    stored: ("autoscaling", "v2", "horizontalpodautoscalers"),
    api_version: "autoscaling/v1",
    kind: "HorizontalPodAutoscaler",
    to_stored,
    from_stored,
    validate,
    json_patch_path,
};

fn cpu_metric(percent: &Value) -> Value {
    json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}}}])
}

/// A v1 object, or a merge patch of one, in the v2 shape.
fn to_stored(mut v: Value) -> Value {
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut)
        && let Some(p) = spec.remove("targetCPUUtilizationPercentage")
    {
        spec.insert("metrics".into(), if p.is_null() { Value::Null } else { cpu_metric(&p) });
    }
    if let Some(status) = v.get_mut("status").and_then(Value::as_object_mut)
        && let Some(p) = status.remove("currentCPUUtilizationPercentage")
    {
        let current = json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": p}}}]);
        status.insert("currentMetrics".into(), current);
    }
    v
}

/// The CPU utilization among `metrics` at `field` (`target` or `current`).
fn cpu_utilization(metrics: Option<&Value>, field: &str) -> Option<Value> {
    metrics?.as_array()?.iter().find_map(|m| {
        let r = m.get("resource")?;
        (m.get("type")? == "Resource" && r.get("name")? == "cpu")
            .then(|| r.pointer(&format!("/{field}/averageUtilization")).cloned())
            .flatten()
    })
}

fn from_stored(mut v: Value) -> Value {
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(p) = cpu_utilization(spec.get("metrics"), "target") {
            spec.insert("targetCPUUtilizationPercentage".into(), p);
        }
        spec.remove("metrics");
        spec.remove("behavior");
    }
    if let Some(status) = v.get_mut("status").and_then(Value::as_object_mut) {
        let mut out = Map::new();
        for f in ["observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"] {
            if let Some(x) = status.get(f) {
                out.insert(f.into(), x.clone());
            }
        }
        if let Some(p) = cpu_utilization(status.get("currentMetrics"), "current") {
            out.insert("currentCPUUtilizationPercentage".into(), p);
        }
        out.entry("currentReplicas").or_insert(json!(0));
        out.entry("desiredReplicas").or_insert(json!(0));
        *status = out;
    }
    v
}

fn validate(obj: &Value) -> Vec<Cause> {
    match obj.pointer("/spec/targetCPUUtilizationPercentage").and_then(Value::as_i64) {
        Some(p) if p < 1 => {
            vec![Cause::invalid("spec.targetCPUUtilizationPercentage", &json!(p), "must be greater than or equal to 1")]
        }
        _ => Vec::new(),
    }
}

/// Paths that have the same place in both versions; the CPU target does not.
fn json_patch_path(path: &str) -> Option<String> {
    (!path.contains("CPUUtilizationPercentage")).then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_target_maps_both_ways() {
        let v1 = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3,
            "targetCPUUtilizationPercentage": 70}});
        let v2 = to_stored(v1.clone());
        assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 70);
        assert_eq!(from_stored(v2)["spec"], v1["spec"]);
        assert_eq!(validate(&json!({"spec": {"targetCPUUtilizationPercentage": 0}})).len(), 1);
    }
}
