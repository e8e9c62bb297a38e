//! Policy kinds: PodDisruptionBudget, PriorityClass, ResourceQuota, LimitRange and
//! HorizontalPodAutoscaler, stored and validated as upstream. What enforces them is
//! elsewhere (budgets: `handlers::eviction` and the disruption controller), not here.

use serde_json::{Value, json};

use super::super::status::Cause;
use super::checks::{
    default_at, defaulted, forbidden, int_or_percent, non_negative, one_of, quantities, required_str, selector, str_at,
};
use super::{Strategy, drop_status};

#[derive(Debug)]
pub struct PodDisruptionBudget;

impl Strategy for PodDisruptionBudget {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn default(&self, obj: &mut Value) {
        default_at(
            obj,
            "/status",
            json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0}),
        );
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        let set = |p: &str| obj.pointer(p).is_some_and(|v| !v.is_null());
        if set("/spec/minAvailable") && set("/spec/maxUnavailable") {
            causes.push(Cause::invalid(
                "spec",
                obj.get("spec").unwrap_or(&Value::Null),
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        int_or_percent(obj, "/spec/minAvailable", "spec.minAvailable", causes);
        int_or_percent(obj, "/spec/maxUnavailable", "spec.maxUnavailable", causes);
        selector(obj, "/spec/selector", "spec.selector", causes);
        one_of(
            obj,
            "/spec/unhealthyPodEvictionPolicy",
            "spec.unhealthyPodEvictionPolicy",
            &["AlwaysAllow", "IfHealthyBudget"],
            causes,
        );
    }
}

/// The built-in classes upstream bootstraps, the only names with the `system-` prefix.
pub const SYSTEM_PRIORITY_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];
const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

#[derive(Debug)]
pub struct PriorityClass;

impl Strategy for PriorityClass {
    fn default(&self, obj: &mut Value) {
        default_at(obj, "/preemptionPolicy", json!("PreemptLowerPriority"));
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        let name = str_at(obj, "/metadata/name").unwrap_or("");
        let value = obj.get("value").and_then(Value::as_i64);
        if name.starts_with("system-") {
            let known = SYSTEM_PRIORITY_CLASSES.iter().any(|(n, v, _)| *n == name && value == Some(*v));
            if !known {
                causes.push(forbidden(
                    "metadata.name",
                    "priority class names with 'system-' prefix are reserved for system use only",
                ));
            }
        } else if let Some(v) = value
            && v > HIGHEST_USER_PRIORITY
        {
            causes.push(forbidden("value", "maximum allowed value of a user defined priority is 1000000000"));
        }
        one_of(obj, "/preemptionPolicy", "preemptionPolicy", &["Never", "PreemptLowerPriority"], causes);
    }

    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
        let new = &defaulted(self, new);
        let mut causes = Vec::new();
        if cur.get("value") != new.get("value") {
            causes.push(forbidden("value", "may not be changed in an update."));
        }
        if cur.get("preemptionPolicy") != new.get("preemptionPolicy") && new.get("preemptionPolicy").is_some() {
            causes.push(Cause::invalid(
                "preemptionPolicy",
                new.get("preemptionPolicy").unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
        if causes.is_empty() { Ok(()) } else { Err(causes) }
    }

    fn undeletable(&self, name: &str) -> bool {
        SYSTEM_PRIORITY_CLASSES.iter().any(|(n, _, _)| *n == name)
    }
}

const QUOTA_SCOPES: &[&str] =
    &["BestEffort", "CrossNamespacePodAffinity", "NotBestEffort", "NotTerminating", "PriorityClass", "Terminating"];

#[derive(Debug)]
pub struct ResourceQuota;

impl Strategy for ResourceQuota {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        quantities(obj, "/spec/hard", "spec.hard", causes);
        quantities(obj, "/status/hard", "status.hard", causes);
        quantities(obj, "/status/used", "status.used", causes);
        for (i, s) in obj.pointer("/spec/scopes").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let s = s.as_str().unwrap_or("");
            if !QUOTA_SCOPES.contains(&s) {
                causes.push(Cause::not_supported(format!("spec.scopes[{i}]"), &json!(s), QUOTA_SCOPES));
            }
        }
    }
}

const LIMIT_TYPES: &[&str] = &["Container", "PersistentVolumeClaim", "Pod"];

#[derive(Debug)]
pub struct LimitRange;

impl Strategy for LimitRange {
    fn default(&self, obj: &mut Value) {
        super::super::limit_range::default_items(obj);
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        for (i, l) in obj.pointer("/spec/limits").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let p = format!("spec.limits[{i}]");
            match str_at(l, "/type").unwrap_or("") {
                "" => causes.push(Cause::required(format!("{p}.type"))),
                t if !LIMIT_TYPES.contains(&t) => {
                    causes.push(Cause::not_supported(format!("{p}.type"), &json!(t), LIMIT_TYPES));
                }
                _ => {}
            }
            for f in ["max", "min", "default", "defaultRequest", "maxLimitRequestRatio"] {
                quantities(l, &format!("/{f}"), &format!("{p}.{f}"), causes);
            }
        }
    }
}

const METRIC_TYPES: &[&str] = &["ContainerResource", "External", "Object", "Pods", "Resource"];

#[derive(Debug)]
pub struct HorizontalPodAutoscaler;

impl Strategy for HorizontalPodAutoscaler {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn default(&self, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        default_at(obj, "/spec/minReplicas", json!(1));
        if obj.pointer("/spec/metrics").and_then(Value::as_array).is_none_or(Vec::is_empty) {
            obj["spec"]["metrics"] = json!([{"type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        required_str(obj, "/spec/scaleTargetRef/kind", "spec.scaleTargetRef.kind", causes);
        required_str(obj, "/spec/scaleTargetRef/name", "spec.scaleTargetRef.name", causes);
        let max = obj.pointer("/spec/maxReplicas").and_then(Value::as_i64).unwrap_or(0);
        if max < 1 {
            causes.push(Cause::invalid("spec.maxReplicas", &json!(max), "must be greater than or equal to 1"));
        }
        if let Some(min) = obj.pointer("/spec/minReplicas").and_then(Value::as_i64) {
            if min < 1 {
                causes.push(Cause::invalid("spec.minReplicas", &json!(min), "must be greater than or equal to 1"));
            } else if min > max && max >= 1 {
                causes.push(Cause::invalid(
                    "spec.minReplicas",
                    &json!(min),
                    "must be less than or equal to maxReplicas",
                ));
            }
        }
        for (i, m) in obj.pointer("/spec/metrics").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let ty = str_at(m, "/type").unwrap_or("");
            if ty.is_empty() {
                causes.push(Cause::required(format!("spec.metrics[{i}].type")));
            } else if !METRIC_TYPES.contains(&ty) {
                causes.push(Cause::not_supported(format!("spec.metrics[{i}].type"), &json!(ty), METRIC_TYPES));
            }
        }
        non_negative(
            obj,
            "/spec/behavior/scaleUp/stabilizationWindowSeconds",
            "spec.behavior.scaleUp.stabilizationWindowSeconds",
            causes,
        );
        non_negative(
            obj,
            "/spec/behavior/scaleDown/stabilizationWindowSeconds",
            "spec.behavior.scaleDown.stabilizationWindowSeconds",
            causes,
        );
    }
}
