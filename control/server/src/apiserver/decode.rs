//! Request body decoding as pure functions: bytes and a Content-Type in, a JSON value
//! (or an `ApiError` with the status a client should see) out. Handlers call these;
//! the fuzz target in `control/server/fuzz` (through `fuzz`) calls them too, which is
//! why they take plain bytes and strings instead of the request context.
//!
//! This module must not touch the store, the clock or anything random: the same input
//! must always give the same result, so a fuzzer's crash input reproduces.

use serde_json::{Value, json};

use super::patch;
use super::resource_def::ResourceDef;
use super::status::{ApiError, ApiResult};
use super::strategy;

/// Decodes a request body as protobuf, YAML or JSON, chosen by the Content-Type
/// (JSON when it names neither of the others).
pub fn decode_body(content_type: &str, body: &[u8]) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if content_type.contains("protobuf") {
        return super::protobuf::decode(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding protobuf: {e}")));
    }
    if content_type.contains("yaml") {
        serde_norway::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
    }
}

/// The body must be an object of this resource's kind and apiVersion (both may be
/// omitted); afterwards both are set and `metadata` is an object.
pub fn check_type(def: &ResourceDef, obj: &mut Value) -> ApiResult<()> {
    let Some(m) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(format!("the body must be a JSON object of kind {}", def.kind)));
    };
    let av = def.api_version();
    if let Some(kind) = m.get("kind").and_then(|k| k.as_str())
        && kind != def.kind
    {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {}: the kind of the object does not match the resource",
            m.get("apiVersion").and_then(|a| a.as_str()).unwrap_or(""),
            def.kind
        )));
    }
    if let Some(a) = m.get("apiVersion").and_then(|k| k.as_str())
        && a != av
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({a}) does not match the expected API version ({av})"
        )));
    }
    m.insert("kind".into(), json!(def.kind));
    m.insert("apiVersion".into(), json!(av));
    if !m.get("metadata").is_some_and(Value::is_object) {
        if m.get("metadata").is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        m.insert("metadata".into(), json!({}));
    }
    Ok(())
}

/// Decodes a body and checks it is an object of `def`'s kind: what every create and
/// update does first.
pub fn decode_object(def: &ResourceDef, content_type: &str, body: &[u8]) -> ApiResult<Value> {
    let mut obj = decode_body(content_type, body)?;
    check_type(def, &mut obj)?;
    Ok(obj)
}

/// Paths of fields in `input` that the typed decode dropped: the unknown fields.
fn unknown_fields(input: &Value, decoded: &Value, path: &str, out: &mut Vec<String>) {
    match (input, decoded) {
        (Value::Object(i), Value::Object(d)) => {
            for (k, v) in i {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match d.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(dv) => unknown_fields(v, dv, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(d)) => {
            for (n, (iv, dv)) in i.iter().zip(d).enumerate() {
                unknown_fields(iv, dv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes through the typed model; with `strict` (`fieldValidation=Strict`, what
/// kubectl sends by default) unknown fields are an error instead of being dropped.
pub fn typed_decode(def: &ResourceDef, obj: Value, strict: bool) -> ApiResult<Value> {
    let input = if strict { Some(obj.clone()) } else { None };
    let decoded = (def.decode)(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            def.kind, def.version, def.kind
        ))
    })?;
    if let Some(input) = input {
        let mut unknown = Vec::new();
        unknown_fields(&input, &decoded, "", &mut unknown);
        if !unknown.is_empty() {
            let list: Vec<String> = unknown.iter().map(|u| format!("unknown field \"{u}\"")).collect();
            return Err(ApiError::bad_request(format!("strict decoding error: {}", list.join(", "))));
        }
    }
    Ok(decoded)
}

/// The three patch formats the server accepts, chosen by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    StrategicMerge,
    Json,
    /// Server-side apply: the body is an applied configuration (YAML or JSON).
    Apply,
}

/// Picks the patch format from the Content-Type (parameters ignored) and parses the
/// body; 415 for any other type.
pub fn decode_patch(content_type: &str, body: &[u8]) -> ApiResult<(PatchKind, Value)> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let kind = match ct {
        "application/merge-patch+json" => PatchKind::Merge,
        "application/strategic-merge-patch+json" => PatchKind::StrategicMerge,
        "application/json-patch+json" => PatchKind::Json,
        "application/apply-patch+yaml" => {
            let p: Value = serde_norway::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            if !p.is_object() {
                return Err(ApiError::bad_request("an applied configuration must be an object"));
            }
            return Ok((PatchKind::Apply, p));
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let p: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    Ok((kind, p))
}

/// Applies a decoded patch to a copy of `target`. A failed JSON Patch `test` is a 422
/// on `kind`/`name`, as in Kubernetes; other patch errors are 400.
pub fn apply_patch(
    kind: PatchKind,
    patch_doc: &Value,
    target: &Value,
    def: &ResourceDef,
    name: &str,
) -> ApiResult<Value> {
    let mut t = target.clone();
    match kind {
        PatchKind::Merge => {
            if !patch_doc.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            patch::merge_patch(&mut t, patch_doc);
        }
        PatchKind::Apply => return Err(ApiError::internal("server-side apply is not a patch to apply")),
        PatchKind::StrategicMerge => {
            patch::strategic_merge(&mut t, patch_doc).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        PatchKind::Json => patch::json_patch(&mut t, patch_doc).map_err(|e| match e {
            patch::Error::TestFailed(_) => ApiError::invalid(def.kind, def.group, name, vec![]),
            e => ApiError::bad_request(with_causes(&e)),
        })?,
    }
    Ok(t)
}

/// What a create knows besides the body. The uid and the generated name's suffix are
/// handed in, so that this path stays deterministic (the fuzz target passes fixed ones).
#[derive(Debug, Clone, Copy)]
pub struct NewObject<'a> {
    /// The namespace in the URL.
    pub namespace: Option<&'a str>,
    /// `fieldValidation=Strict`: unknown fields are an error.
    pub strict: bool,
    /// The new object's uid (a Job's selector is made of it).
    pub uid: &'a str,
    /// Appended to `metadata.generateName` when the body names no object.
    pub name_suffix: &'a str,
}

/// An error's message followed by its sources' (a client sees only the message).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

/// Everything a create does to a body that does not need the store: decode, check the
/// type, reconcile the namespace with the URL's, drop the fields the server owns, fill
/// a generated name, decode through the typed model, let the kind's strategy prepare
/// the object, default and validate. `create` runs exactly this, and so does the fuzz
/// target; what follows in `create` (uid and timestamp, namespace existence, ClusterIP
/// allocation, the store) needs the store or the clock.
pub fn decode_for_create(def: &ResourceDef, content_type: &str, body: &[u8], new: &NewObject) -> ApiResult<Value> {
    let mut obj = decode_object(def, content_type, body)?;
    prepare_metadata(def, &mut obj, new)?;
    let mut obj = typed_decode(def, obj, new.strict)?;
    def.strategy.prepare_for_create(&mut obj, new.uid);
    default_and_validate(def, obj)
}

/// The metadata rules of a create, on a body that passed `check_type`.
fn prepare_metadata(def: &ResourceDef, obj: &mut Value, new: &NewObject) -> ApiResult<()> {
    let Some(m) = obj["metadata"].as_object_mut() else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    if def.namespaced {
        let url_ns = new
            .namespace
            .ok_or_else(|| ApiError::bad_request(format!("{} must be created in a namespace", def.plural)))?;
        match m.get("namespace").and_then(|n| n.as_str()).filter(|n| !n.is_empty()) {
            Some(n) if n != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                m.insert("namespace".into(), json!(url_ns));
            }
        }
    } else {
        m.remove("namespace");
    }
    if m.get("resourceVersion").and_then(|r| r.as_str()).is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
    }
    let unnamed = m.get("name").and_then(|n| n.as_str()).is_none_or(str::is_empty);
    if unnamed && let Some(g) = m.get("generateName").and_then(|g| g.as_str()).filter(|g| !g.is_empty()) {
        let name = format!("{g}{}", new.name_suffix);
        m.insert("name".into(), json!(name));
    }
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "managedFields",
        "selfLink",
    ] {
        m.remove(k);
    }
    Ok(())
}

/// The end of every write's decoding: the typed decode, then defaults and validation
/// by the kind's strategy (422 with the causes when invalid).
pub fn decode_update(def: &ResourceDef, obj: Value, strict: bool) -> ApiResult<Value> {
    default_and_validate(def, typed_decode(def, obj, strict)?)
}

fn default_and_validate(def: &ResourceDef, mut obj: Value) -> ApiResult<Value> {
    def.strategy.default(&mut obj);
    let causes = strategy::validate(def.strategy, def.namespaced, &obj);
    if !causes.is_empty() {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        return Err(ApiError::invalid(def.kind, def.group, name, causes));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_kind;

    fn new_object(namespace: Option<&str>, strict: bool) -> NewObject<'_> {
        NewObject { namespace, strict, uid: "u", name_suffix: "x" }
    }

    #[test]
    fn json_yaml_and_empty_bodies() {
        let cm = by_kind("ConfigMap").unwrap();
        let v = decode_object(cm, "application/json", br#"{"metadata":{"name":"a"}}"#).unwrap();
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(v["apiVersion"], "v1");
        let v = decode_object(cm, "application/yaml", b"metadata: {name: a}\ndata: {k: v}\n").unwrap();
        assert_eq!(v["data"]["k"], "v");
        assert_eq!(decode_object(cm, "application/json", b"").unwrap_err().code, 400);
        assert_eq!(decode_object(cm, "application/json", b"[1]").unwrap_err().code, 400);
        assert_eq!(decode_object(cm, "", br#"{"kind":"Pod"}"#).unwrap_err().code, 400);
        assert_eq!(decode_object(cm, "", br#"{"apiVersion":"apps/v1"}"#).unwrap_err().code, 400);
        assert_eq!(decode_object(cm, "", br#"{"metadata":3}"#).unwrap_err().code, 400);
    }

    #[test]
    fn strict_decoding_names_unknown_fields() {
        let cm = by_kind("ConfigMap").unwrap();
        let body = br#"{"metadata":{"name":"a"},"bogus":1}"#;
        let e = decode_for_create(cm, "application/json", body, &new_object(Some("ns"), true)).unwrap_err();
        assert!(e.message.contains("unknown field \"bogus\""), "{e}");
        assert!(decode_for_create(cm, "application/json", body, &new_object(Some("ns"), false)).is_ok());
    }

    #[test]
    fn invalid_names_are_422() {
        let cm = by_kind("ConfigMap").unwrap();
        let body = br#"{"metadata":{"name":"Not_Valid"}}"#;
        let e = decode_for_create(cm, "application/json", body, &new_object(Some("ns"), false));
        assert_eq!(e.unwrap_err().code, 422);
    }

    #[test]
    fn patch_content_types() {
        assert_eq!(decode_patch("application/merge-patch+json; charset=utf-8", b"{}").unwrap().0, PatchKind::Merge);
        assert_eq!(decode_patch("application/json-patch+json", b"[]").unwrap().0, PatchKind::Json);
        assert_eq!(decode_patch("application/apply-patch+yaml", b"a: 1").unwrap().0, PatchKind::Apply);
        assert_eq!(decode_patch("application/apply-patch+yaml", b"[1]").unwrap_err().code, 400);
        assert_eq!(decode_patch("text/plain", b"{}").unwrap_err().code, 415);
        assert_eq!(decode_patch("application/merge-patch+json", b"{").unwrap_err().code, 400);
    }
}
