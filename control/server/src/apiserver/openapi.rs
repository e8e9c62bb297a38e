//! The OpenAPI v3 surface kubectl reads: the root index (`/openapi/v3`) and one
//! document per group-version listing each resource's operations with its
//! `x-kubernetes-group-version-kind` and the `fieldValidation` parameter (kubectl then
//! leaves validation to the server, `fieldValidation=Strict`), and the schemas of its
//! kinds with their descriptions (k8s-openapi's, through `schemars`), which is what
//! `kubectl explain` renders.
//!
//! PATCH operations declare no request body, so client-side apply keeps computing its
//! patches from kubectl's built-in types (the schemas carry no patch strategies). It
//! must not claim anything the server does not do, with one marker: create-only kinds
//! list a PATCH operation too, which is how kubectl learns that field validation is the
//! server's.

use std::collections::HashMap;
use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::crd;
use super::resource_def::ResourceDef;
use super::resources::{RESOURCES, groups};

/// Changes whenever the served documents change, so clients' caches refresh.
const HASH: &str = concat!("skiff-", env!("CARGO_PKG_VERSION"), "-2");

/// Every group-version's document, built once (the schemas do not change at run time).
static DOCUMENTS: LazyLock<HashMap<String, Value>> = LazyLock::new(|| {
    let mut gvs = vec![("", "v1")];
    gvs.extend(groups());
    gvs.into_iter().filter_map(|(g, v)| Some((gv_path(g, v), build(g, v)?))).collect()
});

/// The schemas of a group-version's kinds and of everything they refer to, each
/// kind's marked with its group, version and kind as upstream does.
fn schemas(group: &str, version: &str) -> serde_json::Map<String, Value> {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut kinds = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let reference = (r.schema)(&mut generator);
        let name = reference.get("$ref").and_then(Value::as_str).and_then(|p| p.rsplit('/').next()).map(String::from);
        if let Some(name) = name {
            kinds.push((name, json!([{"group": r.group, "version": r.version, "kind": r.kind}])));
        }
    }
    let mut defs = generator.take_definitions(true);
    for (name, gvk) in kinds {
        if let Some(Value::Object(schema)) = defs.get_mut(&name) {
            schema.insert("x-kubernetes-group-version-kind".into(), gvk);
        }
    }
    defs
}

pub(super) fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

pub fn root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![("", "v1")];
    gvs.extend(groups());
    for (g, v) in gvs {
        let p = gv_path(g, v);
        let hash = if DOCUMENTS.contains_key(&p) { HASH.to_string() } else { crd::hash(g, v) };
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}));
    }
    json!({"paths": paths})
}

/// The document of `api/v1` or `apis/<group>/<version>`.
pub fn group_version(path: &str) -> Option<Value> {
    DOCUMENTS.get(path).cloned().or_else(|| crd::document(path))
}

/// The operations of one resource, added to `paths`.
pub(super) fn add_paths(r: &ResourceDef, paths: &mut serde_json::Map<String, Value>) {
    let base = format!("/{}", gv_path(r.group, r.version));
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
        // kubectl looks only at PATCH operations to learn that the server validates
        // fields; without one, `kubectl create -f` of a review would download the
        // v2 schemas instead. The PATCH itself is answered 405, as upstream.
        paths.insert(collection, json!({"post": op("post"), "patch": op("patch")}));
    } else {
        paths.insert(p, json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
    }
}

fn build(group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        add_paths(r, &mut paths);
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas(group, version)},
    }))
}
