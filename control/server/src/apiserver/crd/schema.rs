//! Structural schemas (a CRD version's `openAPIV3Schema`, as JSON): whether a schema is
//! structural (`check_structural`, for CRD validation), and what it does to custom
//! objects as upstream's apiextensions server does: `prune` drops the fields the schema
//! does not specify (unless `x-kubernetes-preserve-unknown-fields`), `default` fills
//! `default`s and drops nulls that are not `nullable`, `validate` checks types,
//! `required`, `enum`, bounds, lengths, counts and patterns and names each failure by
//! its field path (`spec.engine.version`).
//!
//! Pure functions over JSON values: no store, no clock. CEL rules
//! (`x-kubernetes-validations`) and `format` are not checked.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use serde_json::{Map, Value, json};

use crate::apiserver::status::Cause;

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn ty(schema: &Value) -> Option<&str> {
    schema.get("type").and_then(Value::as_str).filter(|t| !t.is_empty())
}

fn props(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// `additionalProperties` as a schema (`true` is not one: it keeps anything).
fn additional(schema: &Value) -> Option<&Value> {
    schema.get("additionalProperties").filter(|a| a.is_object())
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// The schema of the field `key` of an object of `schema`.
fn field_schema<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    props(schema).and_then(|p| p.get(key)).or_else(|| additional(schema))
}

/// Whether `key` at this level is object metadata the schema does not govern: the
/// root's (and an embedded resource's) apiVersion, kind and metadata.
fn is_type_meta(schema: &Value, root: bool, key: &str) -> bool {
    (root || flag(schema, "x-kubernetes-embedded-resource")) && matches!(key, "apiVersion" | "kind" | "metadata")
}

/// Drops the fields of `v` that `schema` does not specify; their paths go to `out`.
pub fn prune(schema: &Value, v: &mut Value, out: &mut Vec<String>) {
    prune_at(schema, v, "", true, out);
}

fn prune_at(schema: &Value, v: &mut Value, path: &str, root: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if ty(schema).is_some_and(|t| t != "object") {
                return;
            }
            let keep_unknown = flag(schema, "x-kubernetes-preserve-unknown-fields")
                || schema.get("additionalProperties") == Some(&Value::Bool(true));
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if is_type_meta(schema, root, &k) {
                    continue;
                }
                let p = child(path, &k);
                match field_schema(schema, &k) {
                    Some(s) => {
                        if let Some(c) = map.get_mut(&k) {
                            prune_at(s, c, &p, false, out);
                        }
                    }
                    None if keep_unknown => {}
                    None => {
                        map.remove(&k);
                        out.push(p);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(s, item, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        _ => {}
    }
}

/// Fills absent fields that have a `default`, and drops null fields that are not
/// `nullable` (a default then fills them), as upstream's structural defaulting.
pub fn default(schema: &Value, v: &mut Value) {
    default_at(schema, v, true);
}

fn default_at(schema: &Value, v: &mut Value, root: bool) {
    match v {
        Value::Object(map) => {
            if let Some(p) = props(schema) {
                for (k, s) in p {
                    if root && k == "metadata" {
                        continue;
                    }
                    let is_null = map.get(k).is_some_and(Value::is_null);
                    if is_null && !flag(s, "nullable") {
                        map.remove(k);
                    }
                    if !map.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        map.insert(k.clone(), d.clone());
                    }
                }
            }
            for (k, c) in map.iter_mut() {
                if is_type_meta(schema, root, k) {
                    continue;
                }
                if let Some(s) = field_schema(schema, k) {
                    default_at(s, c, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                items.iter_mut().for_each(|i| default_at(s, i, false));
            }
        }
        _ => {}
    }
}

/// The JSON type name of a value, as upstream's messages say it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        _ => true,
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) | Value::Array(_) => format!("\"{}\"", type_name(v)),
        v => v.to_string(),
    }
}

fn type_invalid(path: &str, v: &Value, expected: &str) -> Cause {
    let actual = type_name(v);
    Cause {
        reason: "FieldValueTypeInvalid",
        field: path.to_string(),
        message: format!("Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""),
    }
}

fn invalid(path: &str, v: &Value, detail: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: path.to_string(),
        message: format!("Invalid value: {}: {detail}", shown(v)),
    }
}

static PATTERNS: LazyLock<Mutex<HashMap<String, Option<regex::Regex>>>> = LazyLock::new(Mutex::default);

/// `pattern` compiled once (`None` if it is not a valid regular expression).
fn pattern_matches(pattern: &str, s: &str) -> Option<bool> {
    let mut cache = PATTERNS.lock().unwrap_or_else(|e| e.into_inner());
    let re = cache.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).ok());
    re.as_ref().map(|re| re.is_match(s))
}

/// Checks `v` against `schema`; failures go to `causes` with their field paths.
pub fn validate(schema: &Value, v: &Value, causes: &mut Vec<Cause>) {
    validate_at(schema, v, "", true, causes);
}

fn validate_at(schema: &Value, v: &Value, path: &str, root: bool, causes: &mut Vec<Cause>) {
    if v.is_null() {
        if !flag(schema, "nullable")
            && let Some(t) = ty(schema)
        {
            causes.push(type_invalid(path, v, t));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(v.is_string() || type_matches("integer", v)) {
            causes.push(type_invalid(path, v, "integer,string"));
            return;
        }
    } else if let Some(t) = ty(schema)
        && !type_matches(t, v)
    {
        causes.push(type_invalid(path, v, t));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: path.to_string(),
            message: format!("Unsupported value: {v}: supported values: {}", list.join(", ")),
        });
    }
    for sub in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        validate_at(sub, v, path, root, causes);
    }
    for (key, how) in [("anyOf", "at least one"), ("oneOf", "exactly one")] {
        let Some(subs) = schema.get(key).and_then(Value::as_array) else { continue };
        let passing = subs
            .iter()
            .filter(|s| {
                let mut c = Vec::new();
                validate_at(s, v, path, root, &mut c);
                c.is_empty()
            })
            .count();
        let ok = if key == "anyOf" { passing > 0 } else { passing == 1 };
        if !ok {
            causes.push(invalid(path, v, format!("{path} in body must validate {how} schema ({key})")));
        }
    }
    match v {
        Value::Number(n) => validate_number(schema, v, n.as_f64().unwrap_or(0.0), path, causes),
        Value::String(s) => validate_string(schema, v, s, path, causes),
        Value::Array(items) => {
            let n = items.len() as i64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_i64)
                && n < min
            {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: path.to_string(),
                    message: format!("Invalid value: {n}: {path} in body should have at least {min} items"),
                });
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_i64)
                && n > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooMany",
                    field: path.to_string(),
                    message: format!("Too many: {n}: must have at most {max} items"),
                });
            }
            if flag(schema, "uniqueItems") {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            field: format!("{path}[{i}]"),
                            message: format!("Duplicate value: {item}"),
                        });
                    }
                }
            }
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter().enumerate() {
                    validate_at(s, item, &format!("{path}[{i}]"), false, causes);
                }
            }
        }
        Value::Object(map) => {
            for r in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !map.contains_key(r) {
                    causes.push(Cause::required(child(path, r)));
                }
            }
            let n = map.len() as i64;
            if let Some(min) = schema.get("minProperties").and_then(Value::as_i64)
                && n < min
            {
                causes.push(invalid(path, v, format!("{path} in body should have at least {min} properties")));
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_i64)
                && n > max
            {
                causes.push(invalid(path, v, format!("{path} in body should have at most {max} properties")));
            }
            for (k, c) in map {
                if is_type_meta(schema, root, k) {
                    continue;
                }
                if let Some(s) = field_schema(schema, k) {
                    validate_at(s, c, &child(path, k), false, causes);
                }
            }
        }
        _ => {}
    }
}

fn validate_number(schema: &Value, v: &Value, x: f64, path: &str, causes: &mut Vec<Cause>) {
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMinimum");
        if x < min || (exclusive && x == min) {
            let rel = if exclusive { "greater than" } else { "greater than or equal to" };
            causes.push(invalid(path, v, format!("{path} in body should be {rel} {}", num(min))));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMaximum");
        if x > max || (exclusive && x == max) {
            let rel = if exclusive { "less than" } else { "less than or equal to" };
            causes.push(invalid(path, v, format!("{path} in body should be {rel} {}", num(max))));
        }
    }
    if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64)
        && m > 0.0
        && (x / m).fract() != 0.0
    {
        causes.push(invalid(path, v, format!("{path} in body should be a multiple of {}", num(m))));
    }
}

/// A bound as upstream prints it: integers without a fraction.
fn num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 { format!("{}", f as i64) } else { f.to_string() }
}

fn validate_string(schema: &Value, v: &Value, s: &str, path: &str, causes: &mut Vec<Cause>) {
    let len = s.chars().count() as i64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_i64)
        && len < min
    {
        causes.push(invalid(path, v, format!("{path} in body should be at least {min} chars long")));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_i64)
        && len > max
    {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: path.to_string(),
            message: format!("Too long: may not be more than {max} bytes"),
        });
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str)
        && pattern_matches(p, s) == Some(false)
    {
        causes.push(invalid(path, v, format!("{path} in body should match '{p}'")));
    }
}

/// Checks that `schema` (at `path` of the CRD) is structural, as apiextensions/v1
/// requires: every specified field has a type (or is int-or-string, or preserves
/// unknown fields), arrays have items, `properties` and `additionalProperties` are not
/// both given, patterns compile and defaults are valid.
pub fn check_structural(schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    match ty(schema) {
        Some("object") => {}
        Some(t) => causes.push(Cause::invalid(format!("{path}.type"), &json!(t), "must be object at the root")),
        None => causes.push(Cause::required(format!("{path}.type"))),
    }
    check_node(schema, path, true, causes);
}

fn check_node(schema: &Value, path: &str, root: bool, causes: &mut Vec<Cause>) {
    if !schema.is_object() {
        causes.push(Cause::invalid(path.to_string(), schema, "must be a schema object"));
        return;
    }
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    match ty(schema) {
        Some(t) if !TYPES.contains(&t) => causes.push(Cause::not_supported(format!("{path}.type"), &json!(t), TYPES)),
        Some(t) if int_or_string => causes.push(Cause::invalid(
            format!("{path}.type"),
            &json!(t),
            "must be empty if x-kubernetes-int-or-string is true",
        )),
        Some("array") if schema.get("items").is_none() => causes.push(Cause {
            reason: "FieldValueRequired",
            field: format!("{path}.items"),
            message: "Required value: must be specified".into(),
        }),
        None if !int_or_string && !preserve && !root => causes.push(Cause {
            reason: "FieldValueRequired",
            field: format!("{path}.type"),
            message: "Required value: must not be empty for specified object fields".into(),
        }),
        _ => {}
    }
    if schema.get("$ref").is_some() {
        causes.push(Cause {
            reason: "FieldValueForbidden",
            field: format!("{path}.$ref"),
            message: "Forbidden: $ref is not supported".into(),
        });
    }
    if props(schema).is_some() && additional(schema).is_some() {
        causes.push(Cause {
            reason: "FieldValueForbidden",
            field: format!("{path}.additionalProperties"),
            message: "Forbidden: additionalProperties and properties are mutual exclusive".into(),
        });
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str)
        && regex::Regex::new(p).is_err()
    {
        causes.push(Cause::invalid(format!("{path}.pattern"), &json!(p), "must be a valid regular expression"));
    }
    if let Some(d) = schema.get("default") {
        if root {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                field: format!("{path}.default"),
                message: "Forbidden: must not be set at the root".into(),
            });
        } else {
            let mut c = Vec::new();
            validate_at(schema, d, &format!("{path}.default"), false, &mut c);
            causes.extend(c);
        }
    }
    for (k, s) in props(schema).into_iter().flatten() {
        if root && k == "metadata" {
            continue;
        }
        check_node(s, &format!("{path}.properties[{k}]"), false, causes);
    }
    if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
        check_node(s, &format!("{path}.items"), false, causes);
    }
    if let Some(s) = additional(schema) {
        check_node(s, &format!("{path}.additionalProperties"), false, causes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["engine"], "properties": {
                "replicas": {"type": "integer", "minimum": 1, "maximum": 9, "default": 1},
                "engine": {"type": "string", "enum": ["postgres", "mysql"]},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "port": {"x-kubernetes-int-or-string": true},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "backup": {"type": "object", "default": {}, "properties": {
                    "schedule": {"type": "string", "default": "@daily"},
                }},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "note": {"type": "string", "nullable": true},
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        }})
    }

    fn causes(v: &Value) -> Vec<(String, &'static str)> {
        let mut c = Vec::new();
        validate(&schema(), v, &mut c);
        c.into_iter().map(|c| (c.field, c.reason)).collect()
    }

    #[test]
    fn prunes_unknown_fields_but_not_preserved_ones() {
        let mut v = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"}, "junk": 1,
            "spec": {"engine": "mysql", "bogus": {"x": 1}, "extra": {"any": {"thing": 1}},
                     "labels": {"a": "b"}, "tags": ["a"]}});
        let mut out = Vec::new();
        prune(&schema(), &mut v, &mut out);
        assert_eq!(out, vec!["junk".to_string(), "spec.bogus".to_string()]);
        assert_eq!(v["spec"]["extra"]["any"]["thing"], 1);
        assert_eq!(v["spec"]["labels"]["a"], "b");
        assert_eq!(v["metadata"]["name"], "a");
    }

    #[test]
    fn fills_defaults_recursively_and_drops_non_nullable_nulls() {
        let mut v = json!({"spec": {"engine": "mysql", "replicas": null, "note": null}});
        default(&schema(), &mut v);
        assert_eq!(v["spec"]["replicas"], 1);
        assert_eq!(v["spec"]["backup"]["schedule"], "@daily");
        assert!(v["spec"].as_object().unwrap().contains_key("note"));
    }

    #[test]
    fn names_each_failure_by_its_path() {
        let v = json!({"spec": {"replicas": 10, "engine": "oracle", "name": "ABCDEFG", "port": true,
            "tags": ["a", "b", "c"], "labels": {"a": 1}}, "status": {"ready": "yes"}});
        let got = causes(&v);
        for want in [
            ("spec.replicas", "FieldValueInvalid"),
            ("spec.engine", "FieldValueNotSupported"),
            ("spec.name", "FieldValueTooLong"),
            ("spec.name", "FieldValueInvalid"),
            ("spec.port", "FieldValueTypeInvalid"),
            ("spec.tags", "FieldValueTooMany"),
            ("spec.labels.a", "FieldValueTypeInvalid"),
            ("status.ready", "FieldValueTypeInvalid"),
        ] {
            assert!(got.contains(&(want.0.to_string(), want.1)), "{want:?} not in {got:?}");
        }
        assert_eq!(causes(&json!({"spec": {}})), vec![("spec.engine".to_string(), "FieldValueRequired")]);
        assert!(causes(&json!({"spec": {"engine": "mysql", "port": 80}})).is_empty());
        assert!(causes(&json!({"spec": {"engine": "mysql", "port": "http"}})).is_empty());
    }

    #[test]
    fn structural_schemas_need_types() {
        let mut c = Vec::new();
        check_structural(&schema(), "s", &mut c);
        assert!(c.is_empty(), "{c:?}");
        let bad = json!({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "array"}}}}});
        let mut c = Vec::new();
        check_structural(&bad, "s", &mut c);
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["s.properties[spec].type", "s.properties[spec].properties[a].items"]);
    }
}
