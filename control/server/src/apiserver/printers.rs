//! Table columns and cells of the storage, networking, policy, StatefulSet and CronJob
//! kinds, as upstream's printers show them (`table` asks here for kinds it does not
//! know itself). Read-only: it must not change objects.

use serde_json::{Value, json};

use super::meta::{age_of, human_age, parse_time, unix_now};
use super::table_object::Col;

pub(super) fn columns(kind: &str) -> Option<Vec<Col>> {
    Some(match kind {
        "CustomResourceDefinition" => vec![Col("Created At", "date", 0)],
        "StorageClass" => vec![
            Col("Provisioner", "string", 0),
            Col("ReclaimPolicy", "string", 0),
            Col("VolumeBindingMode", "string", 0),
            Col("AllowVolumeExpansion", "string", 0),
            Col("Age", "string", 0),
        ],
        "PersistentVolume" => vec![
            Col("Capacity", "string", 0),
            Col("Access Modes", "string", 0),
            Col("Reclaim Policy", "string", 0),
            Col("Status", "string", 0),
            Col("Claim", "string", 0),
            Col("StorageClass", "string", 0),
            Col("VolumeAttributesClass", "string", 0),
            Col("Reason", "string", 0),
            Col("Age", "string", 0),
            Col("VolumeMode", "string", 1),
        ],
        "PersistentVolumeClaim" => vec![
            Col("Status", "string", 0),
            Col("Volume", "string", 0),
            Col("Capacity", "string", 0),
            Col("Access Modes", "string", 0),
            Col("StorageClass", "string", 0),
            Col("VolumeAttributesClass", "string", 0),
            Col("Age", "string", 0),
            Col("VolumeMode", "string", 1),
        ],
        "Ingress" => vec![
            Col("Class", "string", 0),
            Col("Hosts", "string", 0),
            Col("Address", "string", 0),
            Col("Ports", "string", 0),
            Col("Age", "string", 0),
        ],
        "IngressClass" => vec![Col("Controller", "string", 0), Col("Parameters", "string", 0), Col("Age", "string", 0)],
        "NetworkPolicy" => vec![Col("Pod-Selector", "string", 0), Col("Age", "string", 0)],
        "PodDisruptionBudget" => vec![
            Col("Min Available", "string", 0),
            Col("Max Unavailable", "string", 0),
            Col("Allowed Disruptions", "integer", 0),
            Col("Age", "string", 0),
        ],
        "PriorityClass" => vec![
            Col("Value", "integer", 0),
            Col("Global-Default", "boolean", 0),
            Col("Age", "string", 0),
            Col("PreemptionPolicy", "string", 0),
        ],
        "ResourceQuota" => vec![Col("Request", "string", 0), Col("Limit", "string", 0), Col("Age", "string", 0)],
        "LimitRange" => vec![Col("Created At", "date", 0)],
        "HorizontalPodAutoscaler" => vec![
            Col("Reference", "string", 0),
            Col("Targets", "string", 0),
            Col("MinPods", "string", 0),
            Col("MaxPods", "string", 0),
            Col("Replicas", "string", 0),
            Col("Age", "string", 0),
        ],
        "StatefulSet" => vec![
            Col("Ready", "string", 0),
            Col("Age", "string", 0),
            Col("Containers", "string", 1),
            Col("Images", "string", 1),
        ],
        "ControllerRevision" => {
            vec![Col("Controller", "string", 0), Col("Revision", "string", 0), Col("Age", "string", 0)]
        }
        "CronJob" => vec![
            Col("Schedule", "string", 0),
            Col("Timezone", "string", 0),
            Col("Suspend", "boolean", 0),
            Col("Active", "integer", 0),
            Col("Last Schedule", "string", 0),
            Col("Age", "string", 0),
            Col("Containers", "string", 1),
            Col("Images", "string", 1),
            Col("Selector", "string", 1),
        ],
        _ => return None,
    })
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn arr<'a>(obj: &'a Value, ptr: &str) -> &'a [Value] {
    obj.pointer(ptr).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn or(v: &str, dflt: &str) -> String {
    if v.is_empty() { dflt.into() } else { v.into() }
}

/// An IntOrString as printed: the number or the string, `N/A` when unset.
fn int_or_str(obj: &Value, ptr: &str) -> String {
    match obj.pointer(ptr) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "N/A".into(),
    }
}

fn access_modes(modes: &[Value]) -> String {
    let short = |m: &str| match m {
        "ReadWriteOnce" => "RWO",
        "ReadOnlyMany" => "ROX",
        "ReadWriteMany" => "RWX",
        "ReadWriteOncePod" => "RWOP",
        _ => "",
    };
    modes.iter().filter_map(Value::as_str).map(short).filter(|m| !m.is_empty()).collect::<Vec<_>>().join(",")
}

fn phase(o: &Value) -> String {
    if o.pointer("/metadata/deletionTimestamp").is_some() { "Terminating".into() } else { s(o, "/status/phase").into() }
}

fn selector_string(o: &Value, ptr: &str) -> String {
    o.pointer(ptr)
        .and_then(|s| skiff_api::selector::LabelSelector::from_json(s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn template_cells(o: &Value, ptr: &str) -> (String, String) {
    let cs = arr(o, ptr);
    let names = cs.iter().map(|c| s(c, "/name")).collect::<Vec<_>>().join(",");
    let images = cs.iter().map(|c| s(c, "/image")).collect::<Vec<_>>().join(",");
    (names, images)
}

/// `name: used/hard` for each resource of a quota whose name does (`limits`) or does
/// not start with `limits.`, sorted by name as upstream prints them.
fn quota_usage(o: &Value, limits: bool) -> String {
    let hard = o.pointer("/spec/hard").and_then(Value::as_object);
    let mut keys: Vec<&String> =
        hard.into_iter().flat_map(|h| h.keys()).filter(|k| k.starts_with("limits.") == limits).collect();
    keys.sort();
    keys.iter()
        .map(|k| {
            let used = o.pointer(&format!("/status/used/{k}")).and_then(Value::as_str).unwrap_or("0");
            let h = hard.and_then(|h| h.get(*k)).and_then(Value::as_str).unwrap_or("");
            format!("{k}: {used}/{h}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn hpa_targets(o: &Value) -> String {
    let current = arr(o, "/status/currentMetrics");
    let targets: Vec<String> = arr(o, "/spec/metrics")
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let ty = s(m, "/type");
            let key = match ty {
                "Resource" => "resource",
                "ContainerResource" => "containerResource",
                "Pods" => "pods",
                "Object" => "object",
                _ => "external",
            };
            let t = m.pointer(&format!("/{key}/target")).cloned().unwrap_or(Value::Null);
            let target = match (t.get("averageUtilization"), t.get("averageValue"), t.get("value")) {
                (Some(u), _, _) => format!("{u}%"),
                (_, Some(v), _) | (_, _, Some(v)) => v.as_str().map(String::from).unwrap_or_else(|| v.to_string()),
                _ => "<unset>".into(),
            };
            let name = s(m, &format!("/{key}/name"));
            let label =
                if matches!(ty, "Resource" | "ContainerResource") { format!("{name}: ") } else { String::new() };
            // The current value the same way as the target, from the status entry at the
            // same index (as upstream's printer pairs them).
            let cur = current.get(i).and_then(|c| c.pointer(&format!("/{key}/current")));
            let now = match (cur, t.get("averageUtilization"), t.get("averageValue")) {
                (Some(c), Some(_), _) => c.get("averageUtilization").map(|u| format!("{u}%")),
                (Some(c), _, Some(_)) => c.get("averageValue").and_then(Value::as_str).map(String::from),
                (Some(c), ..) => c.get("value").and_then(Value::as_str).map(String::from),
                _ => None,
            };
            format!("{label}{}/{target}", now.as_deref().unwrap_or("<unknown>"))
        })
        .collect();
    match targets.len() {
        0 => "<none>".into(),
        n if n > 2 => format!("{} + {} more...", targets[..2].join(", "), n - 2),
        _ => targets.join(", "),
    }
}

/// The Name cell: the name, marked ` (default)` for the default StorageClass as
/// upstream prints it.
pub(super) fn name_cell(kind: &str, o: &Value, name: &str) -> String {
    let default =
        o.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class").and_then(Value::as_str);
    if kind == "StorageClass" && default == Some("true") { format!("{name} (default)") } else { name.to_string() }
}

pub(super) fn cells(kind: &str, o: &Value) -> Option<Vec<Value>> {
    let age = age_of(o);
    Some(match kind {
        "CustomResourceDefinition" => vec![json!(s(o, "/metadata/creationTimestamp"))],
        "StorageClass" => vec![
            json!(s(o, "/provisioner")),
            json!(or(s(o, "/reclaimPolicy"), "Delete")),
            json!(or(s(o, "/volumeBindingMode"), "Immediate")),
            json!(o.get("allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false).to_string()),
            json!(age),
        ],
        "PersistentVolume" => {
            let claim = match o.pointer("/spec/claimRef") {
                Some(c) if !c.is_null() => format!("{}/{}", s(c, "/namespace"), s(c, "/name")),
                _ => String::new(),
            };
            vec![
                json!(s(o, "/spec/capacity/storage")),
                json!(access_modes(arr(o, "/spec/accessModes"))),
                json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                json!(phase(o)),
                json!(claim),
                json!(s(o, "/spec/storageClassName")),
                json!(or(s(o, "/spec/volumeAttributesClassName"), "<unset>")),
                json!(s(o, "/status/reason")),
                json!(age),
                json!(or(s(o, "/spec/volumeMode"), "<unset>")),
            ]
        }
        "PersistentVolumeClaim" => {
            let bound = s(o, "/status/phase") == "Bound";
            let (capacity, modes) = if bound {
                (s(o, "/status/capacity/storage").to_string(), access_modes(arr(o, "/status/accessModes")))
            } else {
                (String::new(), String::new())
            };
            vec![
                json!(phase(o)),
                json!(s(o, "/spec/volumeName")),
                json!(capacity),
                json!(modes),
                json!(or(s(o, "/spec/storageClassName"), "<unset>")),
                json!(or(s(o, "/spec/volumeAttributesClassName"), "<unset>")),
                json!(age),
                json!(or(s(o, "/spec/volumeMode"), "<unset>")),
            ]
        }
        "Ingress" => {
            let hosts: Vec<&str> =
                arr(o, "/spec/rules").iter().map(|r| s(r, "/host")).filter(|h| !h.is_empty()).collect();
            let hosts = match hosts.len() {
                0 => "*".to_string(),
                n if n > 3 => format!("{} + {} more...", hosts[..3].join(","), n - 3),
                _ => hosts.join(","),
            };
            let address: Vec<&str> = arr(o, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| if s(i, "/ip").is_empty() { s(i, "/hostname") } else { s(i, "/ip") })
                .collect();
            let ports = if arr(o, "/spec/tls").is_empty() { "80" } else { "80, 443" };
            vec![
                json!(or(s(o, "/spec/ingressClassName"), "<none>")),
                json!(hosts),
                json!(address.join(",")),
                json!(ports),
                json!(age),
            ]
        }
        "IngressClass" => {
            let params = match o.pointer("/spec/parameters") {
                Some(p) if !p.is_null() => match s(p, "/apiGroup") {
                    "" => format!("{}/{}", s(p, "/kind"), s(p, "/name")),
                    g => format!("{}.{g}/{}", s(p, "/kind"), s(p, "/name")),
                },
                _ => "<none>".into(),
            };
            vec![json!(s(o, "/spec/controller")), json!(params), json!(age)]
        }
        "NetworkPolicy" => vec![json!(or(&selector_string(o, "/spec/podSelector"), "<none>")), json!(age)],
        "PodDisruptionBudget" => vec![
            json!(int_or_str(o, "/spec/minAvailable")),
            json!(int_or_str(o, "/spec/maxUnavailable")),
            json!(o.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0)),
            json!(age),
        ],
        "PriorityClass" => vec![
            json!(o.get("value").and_then(Value::as_i64).unwrap_or(0)),
            json!(o.get("globalDefault").and_then(Value::as_bool).unwrap_or(false)),
            json!(age),
            json!(or(s(o, "/preemptionPolicy"), "<none>")),
        ],
        "ResourceQuota" => vec![json!(quota_usage(o, false)), json!(quota_usage(o, true)), json!(age)],
        "LimitRange" => vec![json!(s(o, "/metadata/creationTimestamp"))],
        "HorizontalPodAutoscaler" => vec![
            json!(format!("{}/{}", s(o, "/spec/scaleTargetRef/kind"), s(o, "/spec/scaleTargetRef/name"))),
            json!(hpa_targets(o)),
            json!(o.pointer("/spec/minReplicas").and_then(Value::as_i64).map_or("<unset>".into(), |n| n.to_string())),
            json!(o.pointer("/spec/maxReplicas").and_then(Value::as_i64).unwrap_or(0).to_string()),
            json!(o.pointer("/status/currentReplicas").and_then(Value::as_i64).unwrap_or(0).to_string()),
            json!(age),
        ],
        "StatefulSet" => {
            let (names, images) = template_cells(o, "/spec/template/spec/containers");
            let ready = o.pointer("/status/readyReplicas").and_then(Value::as_i64).unwrap_or(0);
            let want = o.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
            vec![json!(format!("{ready}/{want}")), json!(age), json!(names), json!(images)]
        }
        "ControllerRevision" => {
            let owner = arr(o, "/metadata/ownerReferences").iter().find(|r| r.get("controller") == Some(&json!(true)));
            let controller = owner.map_or("<none>".to_string(), |r| {
                let group = s(r, "/apiVersion").rsplit_once('/').map_or("", |(g, _)| g);
                let kind = s(r, "/kind").to_lowercase();
                let kind = if group.is_empty() { kind } else { format!("{kind}.{group}") };
                format!("{kind}/{}", s(r, "/name"))
            });
            vec![
                json!(controller),
                json!(o.get("revision").and_then(Value::as_i64).unwrap_or(0).to_string()),
                json!(age),
            ]
        }
        "CronJob" => {
            let (names, images) = template_cells(o, "/spec/jobTemplate/spec/template/spec/containers");
            let last = match s(o, "/status/lastScheduleTime") {
                "" => "<none>".to_string(),
                t => parse_time(t).map_or("<unknown>".into(), |t| human_age(unix_now() - t)),
            };
            vec![
                json!(s(o, "/spec/schedule")),
                json!(or(s(o, "/spec/timeZone"), "<none>")),
                // Upstream prints the pointer as "True"/"False".
                json!(if o.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) { "True" } else { "False" }),
                json!(arr(o, "/status/active").len()),
                json!(last),
                json!(age),
                json!(names),
                json!(images),
                json!(or(&selector_string(o, "/spec/jobTemplate/spec/selector"), "<none>")),
            ]
        }
        _ => return None,
    })
}
