//! Defaulting and validation per kind, on JSON objects that have already passed the
//! typed decode (so field *types* are right; this checks values and required fields).
//!
//! Defaulting fills what the real API server fills so that `kubectl get -o yaml` and
//! controllers see the same shape; validation returns field causes for a 422. Neither
//! may touch the store (uniqueness checks such as ClusterIP allocation belong elsewhere).

use serde_json::{Value, json};

use super::meta::{dns_label_error, dns_subdomain_error};
use super::status::Cause;

fn set_default(obj: &mut Value, ptr: &str, v: Value) {
    // Like Kubernetes defaulting, an empty string counts as unset (protobuf clients
    // always send scalar fields).
    if obj.pointer(ptr).is_none_or(|v| v.is_null() || v.as_str() == Some("")) {
        let (parent, key) = ptr.rsplit_once('/').unwrap();
        if let Some(Value::Object(m)) = obj.pointer_mut(parent) {
            m.insert(key.to_string(), v);
        }
    }
}

fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "/restartPolicy", json!("Always"));
    set_default(spec, "/dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "/schedulerName", json!("default-scheduler"));
    set_default(spec, "/terminationGracePeriodSeconds", json!(30));
    set_default(spec, "/securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            for c in cs.iter_mut().filter(|c| c.is_object()) {
                let image = c.get("image").and_then(|i| i.as_str()).unwrap_or("").to_string();
                let tag = image.rsplit('/').next().unwrap_or("");
                let latest = !tag.contains(':') || tag.ends_with(":latest");
                if !image.contains('@') {
                    set_default(c, "/imagePullPolicy", json!(if latest { "Always" } else { "IfNotPresent" }));
                } else {
                    set_default(c, "/imagePullPolicy", json!("IfNotPresent"));
                }
                set_default(c, "/terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "/terminationMessagePolicy", json!("File"));
                set_default(c, "/resources", json!({}));
                if let Some(Value::Array(ports)) = c.get_mut("ports") {
                    for p in ports.iter_mut().filter(|p| p.is_object()) {
                        set_default(p, "/protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

/// A new Job's selector, as the real API server sets it: unless `spec.manualSelector`,
/// the selector is the Job's own uid, and the pod template carries the labels that
/// match it (so `kubectl describe job` and `kubectl logs job/NAME` find the pods).
/// User labels on the template are kept.
pub fn default_job_selector(obj: &mut Value, uid: &str) {
    if obj.pointer("/spec/manualSelector") == Some(&json!(true))
        || obj.pointer("/spec/selector").is_some_and(|s| !s.is_null())
    {
        return;
    }
    let name = obj.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
    set_default(obj, "/spec/selector", json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
    set_default(obj, "/spec/template/metadata", json!({}));
    set_default(obj, "/spec/template/metadata/labels", json!({}));
    if let Some(labels) = obj.pointer_mut("/spec/template/metadata/labels").and_then(|l| l.as_object_mut()) {
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", uid),
            ("controller-uid", uid),
            ("batch.kubernetes.io/job-name", name.as_str()),
            ("job-name", name.as_str()),
        ] {
            labels.entry(k).or_insert_with(|| json!(v));
        }
    }
}

/// Pod defaults (also the template of every workload).
pub fn default_pod(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec") {
        default_pod_spec(spec);
    }
    set_default(obj, "/status", json!({}));
    set_default(obj, "/status/phase", json!("Pending"));
}

pub fn default_daemon_set(obj: &mut Value) {
    set_default(
        obj,
        "/spec/updateStrategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
    );
    set_default(obj, "/spec/revisionHistoryLimit", json!(10));
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
}

pub fn default_job(obj: &mut Value) {
    // The template must say OnFailure or Never itself; only counters default.
    set_default(obj, "/spec/backoffLimit", json!(6));
    set_default(obj, "/spec/completions", json!(1));
    set_default(obj, "/spec/parallelism", json!(1));
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        let explicit = spec.get("restartPolicy").is_some();
        default_pod_spec(spec);
        if !explicit {
            // Leave restartPolicy unset so validation asks for it, as Kubernetes does.
            spec.as_object_mut().map(|m| m.remove("restartPolicy"));
        }
    }
}

pub fn default_replica_set(obj: &mut Value) {
    set_default(obj, "/spec/replicas", json!(1));
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
}

pub fn default_deployment(obj: &mut Value) {
    set_default(obj, "/spec/replicas", json!(1));
    set_default(obj, "/spec/strategy", json!({}));
    set_default(obj, "/spec/strategy/type", json!("RollingUpdate"));
    if obj.pointer("/spec/strategy/type") == Some(&json!("RollingUpdate")) {
        set_default(obj, "/spec/strategy/rollingUpdate", json!({}));
        set_default(obj, "/spec/strategy/rollingUpdate/maxUnavailable", json!("25%"));
        set_default(obj, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
    }
    set_default(obj, "/spec/revisionHistoryLimit", json!(10));
    set_default(obj, "/spec/progressDeadlineSeconds", json!(600));
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
}

pub fn default_service(obj: &mut Value) {
    set_default(obj, "/spec/type", json!("ClusterIP"));
    set_default(obj, "/spec/sessionAffinity", json!("None"));
    if let Some(Value::Array(ports)) = obj.pointer_mut("/spec/ports") {
        for p in ports.iter_mut().filter(|p| p.is_object()) {
            set_default(p, "/protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, "/targetPort", port);
            }
        }
    }
    set_default(obj, "/status", json!({"loadBalancer": {}}));
}

pub fn default_namespace(obj: &mut Value) {
    // The immutable name label lets selectors (e.g. NetworkPolicy) pick namespaces.
    if let Some(name) = obj.pointer("/metadata/name").and_then(|n| n.as_str()).map(String::from)
        && let Some(meta) = obj.get_mut("metadata").and_then(|m| m.as_object_mut())
    {
        let labels = meta.entry("labels").or_insert(json!({}));
        if let Some(l) = labels.as_object_mut() {
            l.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
    set_default(obj, "/spec", json!({"finalizers": ["kubernetes"]}));
    set_default(obj, "/status", json!({"phase": "Active"}));
}

pub fn default_secret(obj: &mut Value) {
    set_default(obj, "/type", json!("Opaque"));
}

fn validate_containers(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    match spec.get("containers").and_then(|c| c.as_array()) {
        Some(cs) if !cs.is_empty() => {
            let mut seen = Vec::new();
            for (i, c) in cs.iter().enumerate() {
                let p = format!("{path}.containers[{i}]");
                match c.get("name").and_then(|n| n.as_str()) {
                    None | Some("") => causes.push(Cause::required(format!("{p}.name"))),
                    Some(n) => {
                        if let Some(e) = dns_label_error(n) {
                            causes.push(Cause::invalid(format!("{p}.name"), &json!(n), e));
                        }
                        if seen.contains(&n) {
                            causes.push(Cause {
                                reason: "FieldValueDuplicate",
                                field: format!("{p}.name"),
                                message: format!("Duplicate value: {n:?}"),
                            });
                        }
                        seen.push(n);
                    }
                }
                if c.get("image").and_then(|n| n.as_str()).is_none_or(str::is_empty) {
                    causes.push(Cause::required(format!("{p}.image")));
                }
                for (j, port) in c.get("ports").and_then(|p| p.as_array()).into_iter().flatten().enumerate() {
                    let cp = port.get("containerPort").and_then(|v| v.as_i64()).unwrap_or(0);
                    if !(1..=65535).contains(&cp) {
                        causes.push(Cause::invalid(
                            format!("{p}.ports[{j}].containerPort"),
                            &json!(cp),
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                }
            }
        }
        _ => causes.push(Cause::required(format!("{path}.containers"))),
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(|r| r.as_str())
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        causes.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            &json!(rp),
            &["Always", "OnFailure", "Never"],
        ));
    }
}

pub fn validate_replicated(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(r) = obj.pointer("/spec/replicas").and_then(|r| r.as_i64())
        && r < 0
    {
        causes.push(Cause::invalid("spec.replicas", &json!(r), "must be greater than or equal to 0"));
    }
    let selector = obj.pointer("/spec/selector");
    let sel = match selector {
        None | Some(Value::Null) => {
            causes.push(Cause::required("spec.selector"));
            return;
        }
        Some(s) => match skiff_api::selector::LabelSelector::from_json(s) {
            Ok(sel) => sel,
            Err(e) => {
                causes.push(Cause::invalid("spec.selector", s, e));
                return;
            }
        },
    };
    if sel.is_empty() {
        causes.push(Cause::invalid("spec.selector", selector.unwrap(), "empty selector is invalid for deployment"));
    }
    let template = obj.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    if !sel.matches_object(&template) {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            template.pointer("/metadata/labels").unwrap_or(&Value::Null),
            "`selector` does not match template `labels`",
        ));
    }
    match template.get("spec") {
        Some(spec) => validate_containers(spec, "spec.template.spec", causes),
        None => causes.push(Cause::required("spec.template.spec.containers")),
    }
}

pub fn validate_service(obj: &Value, causes: &mut Vec<Cause>) {
    let ty = obj.pointer("/spec/type").and_then(|t| t.as_str()).unwrap_or("ClusterIP");
    const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !TYPES.contains(&ty) {
        causes.push(Cause::not_supported("spec.type", &json!(ty), TYPES));
    }
    let ports = obj.pointer("/spec/ports").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    let headless = obj.pointer("/spec/clusterIP").and_then(|c| c.as_str()) == Some("None");
    if ports.is_empty() && ty != "ExternalName" && !headless {
        causes.push(Cause::required("spec.ports"));
    }
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(|v| v.as_i64()).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                &json!(port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(proto) = p.get("protocol").and_then(|v| v.as_str())
            && !["TCP", "UDP", "SCTP"].contains(&proto)
        {
            causes.push(Cause::not_supported(
                format!("spec.ports[{i}].protocol"),
                &json!(proto),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if ports.len() > 1 && p.get("name").and_then(|n| n.as_str()).is_none_or(str::is_empty) {
            causes.push(Cause::required(format!("spec.ports[{i}].name")));
        }
    }
}

fn validate_data_keys(obj: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(m) = obj.get(field).and_then(|d| d.as_object()) {
        for k in m.keys() {
            let ok = !k.is_empty()
                && k.len() <= 253
                && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                causes.push(Cause::invalid(
                    format!("{field}[{k}]"),
                    &json!(k),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
        }
    }
}

/// Validates what every kind has: name (a DNS label when `name_is_label`, else a DNS
/// subdomain), namespace and labels. Kind-specific checks are the strategies'.
pub fn validate_meta(obj: &Value, namespaced: bool, name_is_label: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = obj.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("");
    let name_err = if name_is_label { dns_label_error(name) } else { dns_subdomain_error(name) };
    if name.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
        });
    } else if let Some(e) = name_err {
        causes.push(Cause::invalid("metadata.name", &json!(name), e));
    }
    if namespaced && obj.pointer("/metadata/namespace").and_then(|n| n.as_str()).is_none_or(str::is_empty) {
        causes.push(Cause::required("metadata.namespace"));
    }
    for field in ["labels"] {
        if let Some(m) = obj.pointer(&format!("/metadata/{field}")).and_then(|m| m.as_object()) {
            for (k, v) in m {
                let key_name = k.rsplit('/').next().unwrap_or("");
                let key_ok = !key_name.is_empty()
                    && key_name.len() <= 63
                    && key_name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !key_ok {
                    causes.push(Cause::invalid(
                        format!("metadata.{field}"),
                        &json!(k),
                        "name part must consist of alphanumeric characters, '-', '_' or '.'",
                    ));
                }
                let vs = v.as_str().unwrap_or("");
                let val_ok =
                    vs.len() <= 63 && vs.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !val_ok {
                    causes.push(Cause::invalid(
                        format!("metadata.{field}"),
                        v,
                        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'",
                    ));
                }
            }
        }
    }
    causes
}

pub fn validate_pod(obj: &Value, causes: &mut Vec<Cause>) {
    match obj.get("spec") {
        Some(spec) => validate_containers(spec, "spec", causes),
        None => causes.push(Cause::required("spec.containers")),
    }
}

pub fn validate_job(obj: &Value, causes: &mut Vec<Cause>) {
    match obj.pointer("/spec/template/spec") {
        Some(spec) => {
            validate_containers(spec, "spec.template.spec", causes);
            let rp = spec.get("restartPolicy").and_then(|r| r.as_str()).unwrap_or("");
            if !["OnFailure", "Never"].contains(&rp) {
                causes.push(Cause::not_supported(
                    "spec.template.spec.restartPolicy",
                    &json!(rp),
                    &["OnFailure", "Never"],
                ));
            }
        }
        None => causes.push(Cause::required("spec.template.spec.containers")),
    }
}

pub fn validate_config_map(obj: &Value, causes: &mut Vec<Cause>) {
    validate_data_keys(obj, "data", causes);
    validate_data_keys(obj, "binaryData", causes);
}

pub fn validate_secret(obj: &Value, causes: &mut Vec<Cause>) {
    validate_data_keys(obj, "data", causes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_get_a_selector_on_their_uid() {
        let mut job = json!({"metadata": {"name": "pi"}, "spec": {"template": {
            "metadata": {"labels": {"app": "pi", "job-name": "mine"}}, "spec": {"containers": []}}}});
        default_job_selector(&mut job, "u-1");
        assert_eq!(job["spec"]["selector"], json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}}));
        let labels = &job["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], "u-1");
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["app"], "pi");
        assert_eq!(labels["job-name"], "mine", "user labels win");
        let mut manual = json!({"spec": {"manualSelector": true, "template": {"spec": {}}}});
        default_job_selector(&mut manual, "u-2");
        assert!(manual["spec"].get("selector").is_none());
    }
}
