//! The OpenAPI v3 document of a group-version of custom resources
//! (`/openapi/v3/apis/<group>/<version>`): each resource's operations, as for built-in
//! kinds, and its schema (the CRD's `openAPIV3Schema` with `metadata` referring to
//! ObjectMeta), marked with its group, version and kind. `kubectl explain` renders it,
//! and kubectl reads from it that the server validates fields.
//!
//! Built on request from the registry; the hash in the root index changes with the
//! CRDs' specs, so clients' caches refresh.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::served;
use super::served_version::Served;
use crate::apiserver::openapi::{add_paths, gv_path};

fn of_gv(group: &str, version: &str) -> Vec<&'static Served> {
    served().into_iter().filter(|s| s.def.group == group && s.def.version == version).collect()
}

/// The hash of a custom group-version's document: its CRDs and their spec generations.
pub fn hash(group: &str, version: &str) -> String {
    // FNV-1a: stable across processes, so every API server gives the same hash.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for s in of_gv(group, version) {
        for b in format!("{}/{};", s.crd, s.revision).bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("crd-{h:016x}")
}

/// `<reversed group>.<version>.<Kind>`, as upstream names a custom resource's schema.
fn schema_name(s: &Served) -> String {
    let mut parts: Vec<&str> = s.def.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), s.def.version, s.def.kind)
}

/// The document at `path` (`apis/<group>/<version>`) if custom resources are served there.
pub fn document(path: &str) -> Option<Value> {
    let mut segs = path.split('/');
    let (Some("apis"), Some(group), Some(version), None) = (segs.next(), segs.next(), segs.next(), segs.next()) else {
        return None;
    };
    let served = of_gv(group, version);
    if served.is_empty() {
        return None;
    }
    debug_assert_eq!(gv_path(group, version), path);
    let mut generator = SchemaSettings::openapi3().into_generator();
    let meta_ref = generator.subschema_for::<ObjectMeta>();
    let mut schemas: Map<String, Value> = generator.take_definitions(true);
    let mut paths = Map::new();
    for s in served {
        add_paths(&s.def, &mut paths);
        let mut schema = (*s.schema).clone();
        if !schema.is_object() {
            schema = json!({"type": "object"});
        }
        let props = schema.as_object_mut().and_then(|m| {
            m.entry("properties").or_insert(json!({}));
            m.get_mut("properties").and_then(Value::as_object_mut)
        });
        if let Some(props) = props {
            props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values."}));
            props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. In CamelCase."}));
            let mut meta = serde_json::to_value(&meta_ref).unwrap_or(json!({}));
            meta["description"] = json!(
                "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
            );
            props.insert("metadata".into(), json!({"allOf": [meta], "description": meta["description"]}));
        }
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": s.def.group, "version": s.def.version, "kind": s.def.kind}]);
        schemas.insert(schema_name(s), schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
