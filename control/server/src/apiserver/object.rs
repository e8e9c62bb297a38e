//! Stored objects and JSON values: the stored form (no resourceVersion: the store's
//! revision is the truth) and back, and small readers of an object's fields.
//!
//! Pure functions; they must not touch the store or know any kind.

use bytes::Bytes;
use serde_json::{Value, json};

use super::request::Subresource;
use super::resource_def::ResourceDef;
use super::status::{ApiError, ApiResult, Cause};
use crate::store::KeyValue;

/// The object a request names: its resource, namespace, name and subresource.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Named<'a> {
    pub def: &'a ResourceDef,
    pub ns: Option<&'a str>,
    pub name: &'a str,
    pub sub: Option<Subresource>,
}

/// Parses a stored value and stamps its resourceVersion (= the store revision).
pub(crate) fn to_obj(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    }
    Ok(v)
}

/// The stored form: no resourceVersion (the store's revision is the truth).
pub(crate) fn to_bytes(obj: &Value) -> Bytes {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("resourceVersion");
    }
    Bytes::from(serde_json::to_vec(&o).unwrap_or_default())
}

/// A non-empty string at a JSON pointer.
pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(|x| x.as_str()).filter(|s| !s.is_empty())
}

/// The resourceVersion a client sent, as the store revision it must match.
pub(crate) fn rv_of(v: &Value) -> ApiResult<Option<u64>> {
    match str_at(v, "/metadata/resourceVersion") {
        None => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}: must be an unsigned integer"))),
    }
}

/// Everything except metadata and status: what `metadata.generation` tracks.
pub(crate) fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// Whether the object has a non-empty `metadata.finalizers`.
pub(crate) fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers").and_then(|f| f.as_array()).is_some_and(|f| !f.is_empty())
}

/// The 422 for `obj` of kind `def` with these causes.
pub(crate) fn invalid(def: &ResourceDef, obj: &Value, causes: Vec<Cause>) -> ApiError {
    let name = str_at(obj, "/metadata/name").unwrap_or("");
    ApiError::invalid(def.kind, def.group, name, causes)
}
