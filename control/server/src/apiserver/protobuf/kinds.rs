//! The kinds `kubectl create` sends as protobuf with hand-written decoders: ConfigMap,
//! Secret, Namespace, ServiceAccount, RoleBinding, ClusterRoleBinding and the
//! TokenRequest of `kubectl create token`.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::wire::{Field, Res, fields, insert_map, map_entry, object_meta, string};

pub(super) fn config_map(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                o.insert("metadata".into(), object_meta(x)?);
            }
            (2, Field::Bytes(x)) => insert_map(&mut o, "data", map_entry(x, false)?),
            (3, Field::Bytes(x)) => insert_map(&mut o, "binaryData", map_entry(x, true)?),
            (4, Field::Varint(v)) => {
                o.insert("immutable".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

pub(super) fn secret(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                o.insert("metadata".into(), object_meta(x)?);
            }
            (2, Field::Bytes(x)) => insert_map(&mut o, "data", map_entry(x, true)?),
            (3, Field::Bytes(x)) => {
                o.insert("type".into(), json!(string(x)?));
            }
            (4, Field::Bytes(x)) => insert_map(&mut o, "stringData", map_entry(x, false)?),
            (5, Field::Varint(v)) => {
                o.insert("immutable".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    // stringData is write-only: fold it into data, as the real API server does.
    if let Some(Value::Object(sd)) = o.remove("stringData") {
        for (k, v) in sd {
            let enc = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or("").as_bytes());
            insert_map(&mut o, "data", (k, json!(enc)));
        }
    }
    Ok(Value::Object(o))
}

pub(super) fn namespace(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        if let (1, Field::Bytes(x)) = (n, f) {
            o.insert("metadata".into(), object_meta(x)?);
        }
    }
    Ok(Value::Object(o))
}

pub(super) fn service_account(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                o.insert("metadata".into(), object_meta(x)?);
            }
            (4, Field::Varint(v)) => {
                o.insert("automountServiceAccountToken".into(), json!(v != 0));
            }
            // secrets and imagePullSecrets: not sent by `kubectl create serviceaccount`.
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

/// A message of string fields only, by field number.
fn strings(b: &[u8], names: &[(u64, &str)]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        if let (Some((_, key)), Field::Bytes(x)) = (names.iter().find(|(m, _)| *m == n), f)
            && !x.is_empty()
        {
            o.insert((*key).into(), json!(string(x)?));
        }
    }
    Ok(Value::Object(o))
}

/// rbac/v1 RoleBinding and ClusterRoleBinding: metadata=1, subjects=2
/// (kind=1, apiGroup=2, name=3, namespace=4), roleRef=3 (apiGroup=1, kind=2, name=3).
pub(super) fn role_binding(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                o.insert("metadata".into(), object_meta(x)?);
            }
            (2, Field::Bytes(x)) => {
                let s = strings(x, &[(1, "kind"), (2, "apiGroup"), (3, "name"), (4, "namespace")])?;
                o.entry("subjects").or_insert_with(|| json!([])).as_array_mut().unwrap().push(s);
            }
            (3, Field::Bytes(x)) => {
                o.insert("roleRef".into(), strings(x, &[(1, "apiGroup"), (2, "kind"), (3, "name")])?);
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

/// authentication.k8s.io/v1 BoundObjectReference: kind=1, apiVersion=2, name=3, uid=4.
fn bound_object_ref(b: &[u8]) -> Res<Value> {
    strings(b, &[(1, "kind"), (2, "apiVersion"), (3, "name"), (4, "uid")])
}

/// TokenRequest: metadata=1, spec=2 (audiences=1, boundObjectRef=3,
/// expirationSeconds=4); the status (3) is the server's to fill.
pub(super) fn token_request(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    let mut spec = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                o.insert("metadata".into(), object_meta(x)?);
            }
            (2, Field::Bytes(x)) => {
                for (m, g) in fields(x)? {
                    match (m, g) {
                        (1, Field::Bytes(a)) => {
                            spec.entry("audiences")
                                .or_insert_with(|| json!([]))
                                .as_array_mut()
                                .unwrap()
                                .push(json!(string(a)?));
                        }
                        (3, Field::Bytes(r)) => {
                            spec.insert("boundObjectRef".into(), bound_object_ref(r)?);
                        }
                        // int64 on the wire: a negative value arrives as its two's complement.
                        (4, Field::Varint(v)) => {
                            spec.insert("expirationSeconds".into(), json!(v as i64));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    o.insert("spec".into(), Value::Object(spec));
    Ok(Value::Object(o))
}
