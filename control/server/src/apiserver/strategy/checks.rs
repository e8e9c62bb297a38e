//! Small value checks the newer kinds share (enums, required strings, quantities,
//! int-or-percent, label selectors, immutable fields), each adding the field cause
//! upstream's validation gives. Pure functions over JSON; no store, no clock.

use serde_json::{Value, json};

use super::super::status::Cause;

pub(super) fn str_at<'a>(obj: &'a Value, ptr: &str) -> Option<&'a str> {
    obj.pointer(ptr).and_then(Value::as_str)
}

/// `field` (dotted, as the cause names it) at `ptr` must be a non-empty string.
pub(super) fn required_str(obj: &Value, ptr: &str, field: &str, causes: &mut Vec<Cause>) -> bool {
    if str_at(obj, ptr).is_none_or(str::is_empty) {
        causes.push(Cause::required(field));
        return false;
    }
    true
}

/// A required value with upstream's own wording after "Required value: ".
pub(super) fn required_because(field: impl Into<String>, why: &str) -> Cause {
    Cause { reason: "FieldValueRequired", field: field.into(), message: format!("Required value: {why}") }
}

/// A forbidden value or change, with upstream's wording after "Forbidden: ".
pub(super) fn forbidden(field: impl Into<String>, why: &str) -> Cause {
    Cause { reason: "FieldValueForbidden", field: field.into(), message: format!("Forbidden: {why}") }
}

/// An optional string that, when set, must be one of `allowed`.
pub(super) fn one_of(obj: &Value, ptr: &str, field: &str, allowed: &[&str], causes: &mut Vec<Cause>) {
    if let Some(v) = str_at(obj, ptr)
        && !allowed.contains(&v)
    {
        causes.push(Cause::not_supported(field, &json!(v), allowed));
    }
}

/// A non-negative integer if set.
pub(super) fn non_negative(obj: &Value, ptr: &str, field: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = obj.pointer(ptr).and_then(Value::as_i64)
        && n < 0
    {
        causes.push(Cause::invalid(field, &json!(n), "must be greater than or equal to 0"));
    }
}

/// A resource quantity as Kubernetes writes them: a signed decimal number with an
/// optional binary (Ki…Ei), decimal (n, u, m, k, M…E) or exponent suffix.
pub(super) fn quantity_ok(q: &str) -> bool {
    let q = q.strip_prefix(['+', '-']).unwrap_or(q);
    let digits_end = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(digits_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return false;
    }
    const SUFFIXES: &[&str] = &["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E"];
    if SUFFIXES.contains(&suffix) {
        return true;
    }
    let exp = suffix.strip_prefix(['e', 'E']).map(|e| e.strip_prefix(['+', '-']).unwrap_or(e));
    exp.is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))
}

/// Every value of the map at `ptr` must be a quantity (resource lists: capacity,
/// requests, hard limits).
pub(super) fn quantities(obj: &Value, ptr: &str, field: &str, causes: &mut Vec<Cause>) {
    for (k, v) in obj.pointer(ptr).and_then(Value::as_object).into_iter().flatten() {
        let s = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !quantity_ok(&s) {
            causes.push(Cause::invalid(
                format!("{field}[{k}]"),
                v,
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            ));
        }
    }
}

/// An IntOrString that counts pods: a non-negative integer or a percentage 0–100%.
pub(super) fn int_or_percent(obj: &Value, ptr: &str, field: &str, causes: &mut Vec<Cause>) {
    match obj.pointer(ptr) {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n < 0) => {
            causes.push(Cause::invalid(field, &json!(n), "must be greater than or equal to 0"));
        }
        Some(Value::String(s)) => {
            let pct = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok());
            match pct {
                None => causes.push(Cause::invalid(field, &json!(s), "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")),
                Some(p) if p > 100 => causes.push(Cause::invalid(field, &json!(s), "must not be greater than 100%")),
                Some(_) => {}
            }
        }
        _ => {}
    }
}

/// A label selector, if present, must parse.
pub(super) fn selector(obj: &Value, ptr: &str, field: &str, causes: &mut Vec<Cause>) {
    if let Some(s) = obj.pointer(ptr).filter(|s| !s.is_null())
        && let Err(e) = skiff_api::selector::LabelSelector::from_json(s)
    {
        causes.push(Cause::invalid(field, s, e));
    }
}

/// The value at `ptr` may not change between `cur` and `new`.
pub(super) fn immutable(cur: &Value, new: &Value, ptr: &str, field: &str, causes: &mut Vec<Cause>) {
    let (a, b) = (cur.pointer(ptr), new.pointer(ptr));
    if a.unwrap_or(&Value::Null) != b.unwrap_or(&Value::Null) {
        causes.push(Cause::invalid(field, b.unwrap_or(&Value::Null), "field is immutable"));
    }
}

/// Fills `v` at `ptr` when it is missing (the parent must exist).
pub(super) fn default_at(obj: &mut Value, ptr: &str, v: Value) {
    if obj.pointer(ptr).is_none_or(Value::is_null) {
        let (parent, key) = ptr.rsplit_once('/').unwrap_or(("", ptr));
        if let Some(Value::Object(m)) = obj.pointer_mut(parent) {
            m.insert(key.to_string(), v);
        }
    }
}

/// `v` with `s`'s defaults filled, for comparing an update with the stored object
/// (updates are checked before they are defaulted, and stored objects are defaulted).
pub(super) fn defaulted(s: &dyn super::Strategy, v: &Value) -> Value {
    let mut d = v.clone();
    s.default(&mut d);
    d
}

/// `Ok` when there are no causes, for `prepare_for_update`.
pub(super) fn ok_if_empty(causes: Vec<Cause>) -> Result<(), Vec<Cause>> {
    if causes.is_empty() { Ok(()) } else { Err(causes) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_kubernetes_parses_them() {
        for ok in ["1", "10Gi", "500m", "1.5", "2e3", "+1k", ".5", "100Mi"] {
            assert!(quantity_ok(ok), "{ok}");
        }
        for bad in ["", "Gi", "ten", "1GB", "1..2", "1e", "1 Gi"] {
            assert!(!quantity_ok(bad), "{bad}");
        }
    }
}
