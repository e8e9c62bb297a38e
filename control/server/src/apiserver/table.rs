//! Server-side printing: `meta.k8s.io/v1` Table responses with the columns `kubectl get`
//! shows for each kind (priority 1 columns appear with `-o wide`).
//!
//! It must not change objects; it only reads them.

use serde_json::{Value, json};

use super::meta::age_of;
use super::resource_def::ResourceDef;
use super::table_object::{self, Col, Include};

fn columns(kind: &str) -> Vec<Col> {
    let mut c = vec![Col("Name", "name", 0)];
    c.extend(match kind {
        "Pod" => vec![
            Col("Ready", "string", 0),
            Col("Status", "string", 0),
            Col("Restarts", "string", 0),
            Col("Age", "string", 0),
            Col("IP", "string", 1),
            Col("Node", "string", 1),
        ],
        "Deployment" => vec![
            Col("Ready", "string", 0),
            Col("Up-to-date", "integer", 0),
            Col("Available", "integer", 0),
            Col("Age", "string", 0),
            Col("Containers", "string", 1),
            Col("Images", "string", 1),
            Col("Selector", "string", 1),
        ],
        "ReplicaSet" => vec![
            Col("Desired", "integer", 0),
            Col("Current", "integer", 0),
            Col("Ready", "integer", 0),
            Col("Age", "string", 0),
        ],
        "Service" => vec![
            Col("Type", "string", 0),
            Col("Cluster-IP", "string", 0),
            Col("External-IP", "string", 0),
            Col("Port(s)", "string", 0),
            Col("Age", "string", 0),
            Col("Selector", "string", 1),
        ],
        "ConfigMap" => vec![Col("Data", "integer", 0), Col("Age", "string", 0)],
        "Secret" => vec![Col("Type", "string", 0), Col("Data", "integer", 0), Col("Age", "string", 0)],
        "Namespace" => vec![Col("Status", "string", 0), Col("Age", "string", 0)],
        "Node" => vec![
            Col("Status", "string", 0),
            Col("Roles", "string", 0),
            Col("Age", "string", 0),
            Col("Version", "string", 0),
            Col("Internal-IP", "string", 1),
        ],
        "Endpoints" => vec![Col("Endpoints", "string", 0), Col("Age", "string", 0)],
        "EndpointSlice" => vec![
            Col("AddressType", "string", 0),
            Col("Ports", "string", 0),
            Col("Endpoints", "string", 0),
            Col("Age", "string", 0),
        ],
        "Lease" => vec![Col("Holder", "string", 0), Col("Age", "string", 0)],
        "CertificateSigningRequest" => vec![
            Col("Age", "string", 0),
            Col("SignerName", "string", 0),
            Col("Requestor", "string", 0),
            Col("RequestedDuration", "string", 0),
            Col("Condition", "string", 0),
        ],
        "ServiceAccount" => vec![Col("Secrets", "integer", 0), Col("Age", "string", 0)],
        "Event" => vec![
            Col("Type", "string", 0),
            Col("Reason", "string", 0),
            Col("Object", "string", 0),
            Col("Message", "string", 0),
        ],
        _ => super::printers::columns(kind).unwrap_or_else(|| vec![Col("Age", "string", 0)]),
    });
    c
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(|v| v.as_str()).unwrap_or("")
}

fn i(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(|v| v.as_i64()).unwrap_or(0)
}

fn arr<'a>(obj: &'a Value, ptr: &str) -> &'a [Value] {
    obj.pointer(ptr).and_then(|v| v.as_array()).map(Vec::as_slice).unwrap_or(&[])
}

fn or_none(v: &str) -> String {
    if v.is_empty() { "<none>".into() } else { v.to_string() }
}

fn joined(items: &[Value], f: impl Fn(&Value) -> String) -> String {
    items.iter().map(f).collect::<Vec<_>>().join(",")
}

fn row(kind: &str, o: &Value) -> Vec<Value> {
    let name = s(o, "/metadata/name");
    let age = age_of(o);
    let mut cells = vec![json!(super::printers::name_cell(kind, o, name))];
    cells.extend(match kind {
        "Pod" => {
            let statuses = arr(o, "/status/containerStatuses");
            let total = arr(o, "/spec/containers").len();
            let ready = statuses.iter().filter(|c| c.get("ready") == Some(&json!(true))).count();
            let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
            let phase = if o.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                let waiting = statuses.iter().find_map(|c| c.pointer("/state/waiting/reason").and_then(|r| r.as_str()));
                waiting.map(String::from).unwrap_or_else(|| or_none(s(o, "/status/phase")).replace("<none>", "Pending"))
            };
            vec![
                json!(format!("{ready}/{total}")),
                json!(phase),
                json!(restarts.to_string()),
                json!(age),
                json!(or_none(s(o, "/status/podIP"))),
                json!(or_none(s(o, "/spec/nodeName"))),
            ]
        }
        "Deployment" => {
            let containers = arr(o, "/spec/template/spec/containers");
            let sel = o
                .pointer("/spec/selector")
                .and_then(|s| skiff_api::selector::LabelSelector::from_json(s).ok())
                .map(|s| s.to_string())
                .unwrap_or_default();
            vec![
                json!(format!("{}/{}", i(o, "/status/readyReplicas"), i(o, "/spec/replicas"))),
                json!(i(o, "/status/updatedReplicas")),
                json!(i(o, "/status/availableReplicas")),
                json!(age),
                json!(joined(containers, |c| s(c, "/name").to_string())),
                json!(joined(containers, |c| s(c, "/image").to_string())),
                json!(or_none(&sel)),
            ]
        }
        "ReplicaSet" => vec![
            json!(i(o, "/spec/replicas")),
            json!(i(o, "/status/replicas")),
            json!(i(o, "/status/readyReplicas")),
            json!(age),
        ],
        "Service" => {
            let ports = joined(arr(o, "/spec/ports"), |p| {
                let np = p.get("nodePort").and_then(|n| n.as_i64()).map(|n| format!(":{n}")).unwrap_or_default();
                format!("{}{np}/{}", i(p, "/port"), s(p, "/protocol"))
            });
            let mut ext = joined(arr(o, "/status/loadBalancer/ingress"), |i| s(i, "/ip").to_string());
            // As kubectl prints it: a LoadBalancer still waiting for its address.
            if ext.is_empty() && s(o, "/spec/type") == "LoadBalancer" {
                ext = "<pending>".into();
            }
            let selector = o
                .pointer("/spec/selector")
                .and_then(|s| s.as_object())
                .map(|m| {
                    m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
                })
                .unwrap_or_default();
            vec![
                json!(s(o, "/spec/type")),
                json!(or_none(s(o, "/spec/clusterIP"))),
                json!(or_none(&ext)),
                json!(or_none(&ports)),
                json!(age),
                json!(or_none(&selector)),
            ]
        }
        "ConfigMap" => {
            let n = o.get("data").and_then(|d| d.as_object()).map_or(0, |m| m.len())
                + o.get("binaryData").and_then(|d| d.as_object()).map_or(0, |m| m.len());
            vec![json!(n), json!(age)]
        }
        "Secret" => {
            let n = o.get("data").and_then(|d| d.as_object()).map_or(0, |m| m.len());
            vec![json!(s(o, "/type")), json!(n), json!(age)]
        }
        "Namespace" => vec![json!(s(o, "/status/phase")), json!(age)],
        "Node" => {
            let ready = arr(o, "/status/conditions")
                .iter()
                .find(|c| s(c, "/type") == "Ready")
                .map(|c| if s(c, "/status") == "True" { "Ready" } else { "NotReady" })
                .unwrap_or("Unknown");
            let status = if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let roles: Vec<&str> = o
                .pointer("/metadata/labels")
                .and_then(|l| l.as_object())
                .map(|m| m.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).collect())
                .unwrap_or_default();
            let ip = arr(o, "/status/addresses")
                .iter()
                .find(|a| s(a, "/type") == "InternalIP")
                .map(|a| s(a, "/address"))
                .unwrap_or("");
            vec![
                json!(status),
                json!(or_none(&roles.join(","))),
                json!(age),
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(or_none(ip)),
            ]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for sub in arr(o, "/subsets") {
                for a in arr(sub, "/addresses") {
                    for p in arr(sub, "/ports") {
                        eps.push(format!("{}:{}", s(a, "/ip"), i(p, "/port")));
                    }
                }
            }
            vec![json!(or_none(&eps.join(","))), json!(age)]
        }
        "EndpointSlice" => {
            let ports = joined(arr(o, "/ports"), |p| i(p, "/port").to_string());
            let eps = arr(o, "/endpoints")
                .iter()
                .flat_map(|e| arr(e, "/addresses").iter().map(|a| a.as_str().unwrap_or("").to_string()))
                .collect::<Vec<_>>()
                .join(",");
            vec![json!(s(o, "/addressType")), json!(or_none(&ports)), json!(or_none(&eps)), json!(age)]
        }
        "Lease" => vec![json!(or_none(s(o, "/spec/holderIdentity"))), json!(age)],
        "CertificateSigningRequest" => {
            let mut cond: Vec<&str> = arr(o, "/status/conditions").iter().map(|c| s(c, "/type")).collect();
            if !s(o, "/status/certificate").is_empty() {
                cond.push("Issued");
            }
            let duration = match o.pointer("/spec/expirationSeconds").and_then(|e| e.as_i64()) {
                Some(secs) => super::meta::human_age(secs),
                None => "<none>".into(),
            };
            let cond = if cond.is_empty() { "Pending".to_string() } else { cond.join(",") };
            vec![
                json!(age),
                json!(s(o, "/spec/signerName")),
                json!(s(o, "/spec/username")),
                json!(duration),
                json!(cond),
            ]
        }
        "ServiceAccount" => vec![json!(arr(o, "/secrets").len()), json!(age)],
        "Event" => vec![
            json!(s(o, "/type")),
            json!(s(o, "/reason")),
            json!(format!("{}/{}", s(o, "/involvedObject/kind").to_lowercase(), s(o, "/involvedObject/name"))),
            json!(s(o, "/message")),
        ],
        _ => super::printers::cells(kind, o).unwrap_or_else(|| vec![json!(age)]),
    });
    cells
}

/// A Table of `objects` of the resource `def`: a custom resource's columns come from
/// its CRD (`crd`), a built-in kind's from here and `printers`.
pub fn table_of(def: &ResourceDef, objects: &[Value], list_meta: Value, include: Include) -> Value {
    match super::crd::of(def) {
        Some(custom) => super::crd::table(&custom.columns, objects, list_meta, include),
        None => table(def.kind, objects, list_meta, include),
    }
}

/// A Table of `objects` of `kind`.
pub fn table(kind: &str, objects: &[Value], list_meta: Value, include: Include) -> Value {
    let defs: Vec<Value> = columns(kind)
        .iter()
        .map(|Col(name, ty, prio)| {
            let format = if *name == "Name" { "name" } else { "" };
            let desc = if *name == "Name" { "Name must be unique within a namespace." } else { "" };
            json!({"name": name, "type": ty, "format": format, "description": desc, "priority": prio})
        })
        .collect();
    table_object::build(defs, objects, |o| row(kind, o), list_meta, include)
}
