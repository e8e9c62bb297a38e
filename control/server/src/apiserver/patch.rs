//! The three PATCH formats on JSON values: JSON merge patch (RFC 7386) and JSON patch
//! (RFC 6902), both from the `json-patch` crate, and strategic merge patch (lists merged by key, `$patch` /
//! `$setElementOrder` / `$retainKeys` / `$deleteFromPrimitiveList` directives), which
//! `kubectl apply`, `label`, `annotate` and `scale` send.
//!
//! Strategic merge keys come from a small table of the list fields that the served
//! kinds have (`merge_key`), not from OpenAPI. This module must not validate the
//! result: the caller runs the patched object through the normal update path.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid patch: {0}")]
    Invalid(String),
    #[error("invalid patch: not a JSON patch (an array of operations)")]
    NotJsonPatch(#[source] serde_json::Error),
    /// A path (or a `from`) that the document does not have.
    #[error("invalid patch: path {path} does not exist")]
    Missing {
        path: String,
        #[source]
        source: json_patch::PatchError,
    },
    #[error("invalid patch: operation {} at {} failed", .0.operation, .0.path)]
    Failed(#[source] json_patch::PatchError),
    #[error("the test operation at {0} failed")]
    TestFailed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902: all operations apply or none.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<()> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(Error::NotJsonPatch)?;
    json_patch::patch(doc, &ops).map_err(|source| match source.kind {
        json_patch::PatchErrorKind::TestFailed => Error::TestFailed(source.path.to_string()),
        json_patch::PatchErrorKind::InvalidPointer | json_patch::PatchErrorKind::InvalidFromPointer => {
            Error::Missing { path: source.path.to_string(), source }
        }
        _ => Error::Failed(source),
    })
}

/// The merge key of a list field, from the Kubernetes types' `patchMergeKey` tags.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => {
            // Container ports merge by containerPort, Service ports by port.
            if items.iter().any(|i| i.get("containerPort").is_some()) { "containerPort" } else { "port" }
        }
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "taints" => "key",
        "topologySpreadConstraints" => "topologyKey",
        "readinessGates" => "conditionType",
        _ => return None,
    })
}

/// Primitive lists whose patch strategy is merge (union) instead of replace.
fn merges_primitives(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        o => o.clone(),
    }
}

/// Strategic merge patch.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<()> {
    let Value::Object(p) = patch else {
        return Err(Error::Invalid("a strategic merge patch must be a JSON object".into()));
    };
    smp_map(target, p)
}

fn smp_map(target: &mut Value, p: &Map<String, Value>) -> Result<()> {
    match p.get("$patch").and_then(|v| v.as_str()) {
        Some("replace") => {
            *target = strip_directives(&Value::Object(p.clone()));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(Error::Invalid(format!("unknown $patch directive {other:?}"))),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (t.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match v {
            Value::Object(pm) => {
                smp_map(t.entry(k.clone()).or_insert(Value::Null), pm)?;
            }
            Value::Array(items) => {
                let cur = t.get_mut(k);
                match (cur, merge_key(k, items)) {
                    (Some(Value::Array(orig)), Some(key)) if items.iter().all(Value::is_object) => {
                        merge_list(orig, items, key)?;
                    }
                    (Some(Value::Array(orig)), _) if merges_primitives(k) => {
                        for i in items {
                            if !orig.contains(i) {
                                orig.push(i.clone());
                            }
                        }
                    }
                    _ => {
                        let kept: Vec<Value> = items
                            .iter()
                            .filter(|i| i.get("$patch").and_then(|x| x.as_str()) != Some("delete"))
                            .map(strip_directives)
                            .collect();
                        t.insert(k.clone(), Value::Array(kept));
                    }
                }
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    for (k, order) in p {
        if let Some(field) = k.strip_prefix("$setElementOrder/")
            && let (Some(Value::Array(list)), Value::Array(order)) = (t.get_mut(field), order)
        {
            reorder(list, order, field);
        }
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(|k| k.as_str()).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(orig: &mut Vec<Value>, items: &[Value], key: &str) -> Result<()> {
    for item in items {
        let id = item.get(key).cloned().unwrap_or(Value::Null);
        let pos = orig.iter().position(|o| o.get(key) == Some(&id) && !id.is_null());
        match item.get("$patch").and_then(|x| x.as_str()) {
            Some("delete") => {
                if let Some(i) = pos {
                    orig.remove(i);
                }
            }
            Some("replace") => {
                let v = strip_directives(item);
                match pos {
                    Some(i) => orig[i] = v,
                    None => orig.push(v),
                }
            }
            _ => match pos {
                Some(i) => smp_map(&mut orig[i], item.as_object().unwrap())?,
                None => {
                    let mut fresh = Value::Object(Map::new());
                    smp_map(&mut fresh, item.as_object().unwrap())?;
                    orig.push(fresh);
                }
            },
        }
    }
    Ok(())
}

/// Orders `list` as `order` says (items `order` does not name keep their relative
/// order after the named ones).
fn reorder(list: &mut Vec<Value>, order: &[Value], field: &str) {
    let key_of = |v: &Value| -> Option<Value> {
        match v {
            Value::Object(m) => merge_key(field, std::slice::from_ref(v)).and_then(|k| m.get(k).cloned()),
            other => Some(other.clone()),
        }
    };
    let wanted: Vec<Option<Value>> = order.iter().map(key_of).collect();
    let mut named: Vec<(usize, Value)> = Vec::new();
    let mut rest = Vec::new();
    for item in list.drain(..) {
        let k = key_of(&item);
        match wanted.iter().position(|w| w.is_some() && *w == k) {
            Some(i) => named.push((i, item)),
            None => rest.push(item),
        }
    }
    named.sort_by_key(|(i, _)| *i);
    list.extend(named.into_iter().map(|(_, v)| v));
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"list": [1, 2]}});
        json_patch(
            &mut d,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "add", "path": "/spec/list/-", "value": 3},
                {"op": "replace", "path": "/spec/list/0", "value": 0},
                {"op": "test", "path": "/spec/list/2", "value": 3},
                {"op": "copy", "from": "/spec/list", "path": "/spec/copy"},
                {"op": "move", "from": "/spec/copy", "path": "/spec/moved"}
            ]),
        )
        .unwrap();
        assert_eq!(d, json!({"metadata": {"labels": {"b": "2"}}, "spec": {"list": [0, 2, 3], "moved": [0, 2, 3]}}));
        assert!(json_patch(&mut d, &json!([{"op": "test", "path": "/spec/list/0", "value": 9}])).is_err());
        assert!(json_patch(&mut d, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&mut d, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn strategic_merge_by_key_and_directives() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "b", "image": "b:1"}
        ]}}}, "metadata": {"finalizers": ["x"]}});
        strategic_merge(
            &mut d,
            &json!({
                "metadata": {"finalizers": ["y"]},
                "spec": {"template": {"spec": {
                    "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                    "containers": [
                        {"name": "a", "image": "a:2"},
                        {"name": "b", "$patch": "delete"},
                        {"name": "c", "image": "c:1"}
                    ]}}}
            }),
        )
        .unwrap();
        assert_eq!(
            d,
            json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "c:1"},
            {"name": "a", "image": "a:2", "ports": [{"containerPort": 80, "protocol": "TCP"}]}
        ]}}}, "metadata": {"finalizers": ["x", "y"]}})
        );
        let mut s = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        strategic_merge(
            &mut s,
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
        )
        .unwrap();
        assert_eq!(s, json!({"spec": {"strategy": {"type": "Recreate"}}}));
        let mut l = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        strategic_merge(&mut l, &json!({"metadata": {"labels": {"a": null, "c": "3"}}})).unwrap();
        assert_eq!(l, json!({"metadata": {"labels": {"b": "2", "c": "3"}}}));
    }
}
