//! Request body decoding as pure functions: bytes and a Content-Type in, a JSON value
//! (or an `ApiError` with the status a client should see) out. Handlers call these;
//! the fuzz target in `control/server/fuzz` calls them too, which is why they take
//! plain bytes and strings instead of the request context.
//!
//! This module must not touch the store, the clock or anything random: the same input
//! must always give the same result, so a fuzzer's crash input reproduces.

use serde_json::{Value, json};

use super::patch;
use super::resources::ResourceDef;
use super::status::{ApiError, ApiResult};

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
        serde_yaml::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
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
}

/// Picks the patch format from the Content-Type (parameters ignored) and parses the
/// body; 415 for any other type, including server-side apply, which is not served yet.
pub fn decode_patch(content_type: &str, body: &[u8]) -> ApiResult<(PatchKind, Value)> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let kind = match ct {
        "application/merge-patch+json" => PatchKind::Merge,
        "application/strategic-merge-patch+json" => PatchKind::StrategicMerge,
        "application/json-patch+json" => PatchKind::Json,
        "application/apply-patch+yaml" => {
            return Err(ApiError::unsupported_media_type(
                "application/apply-patch+yaml (server-side apply is not supported yet; use client-side kubectl apply)",
            ));
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
        PatchKind::StrategicMerge => {
            patch::strategic_merge(&mut t, patch_doc).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        PatchKind::Json => patch::json_patch(&mut t, patch_doc).map_err(|e| match e {
            patch::Error::TestFailed(_) => ApiError::invalid(def.kind, def.group, name, vec![]),
            e => ApiError::bad_request(e.to_string()),
        })?,
    }
    Ok(t)
}

/// Everything a create does to a body that does not need the store: decode, check the
/// type, take the namespace from the URL (`namespace`) when the body has none, decode
/// through the typed model, default and validate. The fuzz target's main entry;
/// handlers run the same steps with store-dependent work in between.
pub fn decode_and_validate(
    def: &ResourceDef,
    namespace: Option<&str>,
    content_type: &str,
    body: &[u8],
    strict: bool,
) -> ApiResult<Value> {
    let mut obj = decode_object(def, content_type, body)?;
    if def.namespaced
        && let (Some(ns), Some(m)) = (namespace, obj["metadata"].as_object_mut())
        && m.get("namespace").is_none_or(|n| n.as_str().is_none_or(str::is_empty))
    {
        m.insert("namespace".into(), json!(ns));
    }
    let mut obj = typed_decode(def, obj, strict)?;
    super::validation::default(def.kind, &mut obj);
    let causes = super::validation::validate(def.kind, def.namespaced, &obj);
    if !causes.is_empty() {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        return Err(ApiError::invalid(def.kind, def.group, name, causes));
    }
    Ok(obj)
}

/// The fuzz harness's body, here rather than in the fuzz crate so that the seed-corpus
/// unit test (stable, no libFuzzer) and `cargo fuzz` run exactly the same code.
///
/// Input layout: byte 0 picks what to exercise (low 3 bits) and strict field
/// validation (bit 7), byte 1 picks the resource kind, the rest is the request body (or
/// selector string). Errors are expected; only panics and broken invariants are bugs.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let [mode, kind, body @ ..] = data else { return };
    let resources = super::resources::RESOURCES;
    let def = &resources[usize::from(*kind) % resources.len()];
    let strict = mode & 0x80 != 0;
    match mode & 0x07 {
        m @ 0..=2 => {
            let ct = ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"][usize::from(m)];
            if let Ok(obj) = decode_and_validate(def, Some("default"), ct, body, strict) {
                // What passed validation is what gets stored: it must be an object of
                // this kind that serialises, and decoding it again must accept it.
                assert_eq!(obj["kind"], def.kind);
                let again = serde_json::to_vec(&obj).expect("a decoded object serialises");
                decode_object(def, "application/json", &again).expect("a decoded object decodes again");
            }
        }
        m @ 3..=5 => {
            let ct = [
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/json-patch+json",
            ][usize::from(m - 3)];
            if let Ok((kind, p)) = decode_patch(ct, body)
                && let Ok(patched) = apply_patch(kind, &p, &fuzz_target_object(def), def, "x")
            {
                // The patch handler's next steps: type check, typed decode, validation.
                let mut patched = patched;
                if check_type(def, &mut patched).is_ok()
                    && let Ok(mut obj) = typed_decode(def, patched, strict)
                {
                    super::validation::default(def.kind, &mut obj);
                    let _ = super::validation::validate(def.kind, def.namespaced, &obj);
                }
            }
        }
        6 => {
            let s = String::from_utf8_lossy(body);
            if let Ok(sel) = skiff_api::selector::LabelSelector::parse(&s) {
                let _ = sel.matches_object(&fuzz_target_object(def));
                // A parsed selector prints as a string that parses to the same selector.
                let shown = sel.to_string();
                let back = skiff_api::selector::LabelSelector::parse(&shown)
                    .unwrap_or_else(|e| panic!("{s:?} parsed, but its display {shown:?} does not: {e}"));
                assert_eq!(back, sel, "{s:?} -> {shown:?}");
            }
        }
        _ => {
            let s = String::from_utf8_lossy(body);
            if let Ok(sel) = skiff_api::selector::FieldSelector::parse(&s) {
                let obj = fuzz_target_object(def);
                let _ = sel.matches(|f| super::handlers::field_value(def, &obj, f).ok().flatten());
            }
        }
    }
}

/// A small valid-looking object of `def`'s kind for patches and selectors to work on.
fn fuzz_target_object(def: &ResourceDef) -> Value {
    json!({
        "apiVersion": def.api_version(),
        "kind": def.kind,
        "metadata": {"name": "x", "namespace": "default", "labels": {"app": "x", "tier": "db"},
                     "finalizers": ["a", "b"]},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}],
                 "ports": [{"port": 80, "protocol": "TCP"}], "replicas": 1},
        "data": {"k": "v"},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_kind;

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
        let e = decode_and_validate(cm, Some("ns"), "application/json", body, true).unwrap_err();
        assert!(e.message.contains("unknown field \"bogus\""), "{e}");
        assert!(decode_and_validate(cm, Some("ns"), "application/json", body, false).is_ok());
    }

    #[test]
    fn invalid_names_are_422() {
        let cm = by_kind("ConfigMap").unwrap();
        let e = decode_and_validate(cm, Some("ns"), "application/json", br#"{"metadata":{"name":"Not_Valid"}}"#, false);
        assert_eq!(e.unwrap_err().code, 422);
    }

    #[test]
    fn patch_content_types() {
        assert_eq!(decode_patch("application/merge-patch+json; charset=utf-8", b"{}").unwrap().0, PatchKind::Merge);
        assert_eq!(decode_patch("application/json-patch+json", b"[]").unwrap().0, PatchKind::Json);
        assert_eq!(decode_patch("application/apply-patch+yaml", b"{}").unwrap_err().code, 415);
        assert_eq!(decode_patch("text/plain", b"{}").unwrap_err().code, 415);
        assert_eq!(decode_patch("application/merge-patch+json", b"{").unwrap_err().code, 400);
    }
}
