//! Discovery documents (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/<g>`,
//! `/apis/<g>/<v>`) built from the resource table. Plain (legacy) discovery only: when
//! kubectl asks for aggregated discovery in its Accept header, the plain documents with
//! `Content-Type: application/json` make it fall back, which it does silently.
//! The virtual `metrics.k8s.io` group is listed too (`metrics_api`).

use serde_json::{Value, json};

use super::resource_def::ResourceDef;
use super::resources::{all, groups};
use super::{crd, metrics_api};

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-skiff",
        "gitCommit": "skiff",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// A group with all its versions, the first preferred.
fn group_doc(group: &str) -> Value {
    let versions: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "preferredVersion": versions[0].clone(), "versions": versions})
}

/// The group names, in order.
fn group_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = Vec::new();
    for (g, _) in groups() {
        if !names.contains(&g) {
            names.push(g);
        }
    }
    names
}

pub fn group_list() -> Value {
    let mut groups: Vec<Value> = group_names().into_iter().map(group_doc).collect();
    groups.push(metrics_api::group_doc());
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(name: &str) -> Option<Value> {
    let doc = match name {
        metrics_api::GROUP => Some(metrics_api::group_doc()),
        _ => group_names().into_iter().find(|g| *g == name).map(group_doc),
    };
    doc.map(|mut d| {
        d["kind"] = json!("APIGroup");
        d["apiVersion"] = json!("v1");
        d
    })
}

fn entries(r: &ResourceDef) -> Vec<Value> {
    let mut main = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": if r.create_only() { json!(["create"]) } else {
            json!(["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"])
        },
    });
    if !r.short_names.is_empty() {
        main["shortNames"] = json!(r.short_names);
    }
    if let Some(categories) = crd::categories(r) {
        if !categories.is_empty() {
            main["categories"] = json!(categories);
        }
    } else if r.all {
        main["categories"] = json!(["all"]);
    }
    let mut out = vec![main];
    if r.scale {
        out.push(json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced,
            "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
    }
    if r.status {
        out.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
            "kind": r.kind, "verbs": ["get", "patch", "update"]}));
    }
    if r.kind == "Pod" {
        // The Eviction API; `kubectl drain` evicts (rather than deletes) when it is here.
        out.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true,
            "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
    }
    if r.kind == "ServiceAccount" {
        // The TokenRequest API; `kubectl create token` looks for it here.
        out.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true,
            "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
    }
    out
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if (group, version) == (metrics_api::GROUP, metrics_api::VERSION) {
        return Some(metrics_api::resource_list());
    }
    let rs: Vec<&ResourceDef> = all().into_iter().filter(|r| r.group == group && r.version == version).collect();
    if rs.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    let resources: Vec<Value> = rs.iter().flat_map(|r| entries(r)).collect();
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}
