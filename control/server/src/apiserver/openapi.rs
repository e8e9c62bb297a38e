//! A minimal OpenAPI v3 surface, enough for kubectl: the root index (`/openapi/v3`)
//! and one document per group-version listing each resource's PATCH operation with
//! its `x-kubernetes-group-version-kind` and the `fieldValidation` parameter. kubectl
//! reads exactly that to decide it may leave validation to the server
//! (`fieldValidation=Strict`) instead of downloading schemas.
//!
//! Schemas are not published yet, so `kubectl explain` does not work; it must not
//! claim anything the server does not do.

use serde_json::{Value, json};

use super::resources::{RESOURCES, groups};

/// Changes whenever the served documents change, so clients' caches refresh.
const HASH: &str = concat!("skiff-", env!("CARGO_PKG_VERSION"), "-1");

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

pub fn root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![("", "v1")];
    gvs.extend(groups());
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={HASH}")}));
    }
    json!({"paths": paths})
}

pub fn group_version(path: &str) -> Option<Value> {
    let segs: Vec<&str> = path.split('/').collect();
    let (group, version) = match segs.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let mut paths = serde_json::Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let base = format!("/{}", gv_path(group, version));
        let p = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
        ]);
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", r.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            })
        };
        if r.create_only() {
            let collection = p.trim_end_matches("/{name}").to_string();
            paths.insert(collection, json!({"post": op("post")}));
        } else {
            paths.insert(p, json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
        }
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
