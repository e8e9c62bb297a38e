//! events.k8s.io/v1 Event over core/v1 Event: `regarding` = `involvedObject`, `note` =
//! `message`, `reportingController` = `reportingComponent`, `deprecated*` = the core
//! fields of the old event API; everything else has the same name.

use serde_json::{Map, Value, json};

use super::view::View;
use crate::apiserver::status::Cause;

pub(super) static VIEW: View = View {
    stored: ("", "v1", "events"),
    api_version: "events.k8s.io/v1",
    kind: "Event",
    to_stored: |v| renamed(v, true),
    from_stored: |v| renamed(v, false),
    validate,
    json_patch_path,
};

/// (events.k8s.io/v1 field, core/v1 field) for the fields whose names differ.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn renamed(mut v: Value, to_stored: bool) -> Value {
    if let Some(obj) = v.as_object_mut() {
        let mut moved: Map<String, Value> = Map::new();
        for &(view, stored) in RENAMED {
            let (from, to) = if to_stored { (view, stored) } else { (stored, view) };
            if let Some(x) = obj.remove(from) {
                moved.insert(to.into(), x);
            }
        }
        obj.extend(moved);
    }
    v
}

/// What upstream requires of an Event written through events.k8s.io/v1.
fn validate(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for f in ["eventTime", "reportingController", "reportingInstance", "action", "reason"] {
        if obj.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
            causes.push(Cause::required(f));
        }
    }
    for f in ["action", "reason"] {
        if let Some(s) = obj.get(f).and_then(Value::as_str)
            && s.len() > 128
        {
            causes.push(Cause::invalid(f, &json!(s), "can have at most 128 characters"));
        }
    }
    if let Some(t) = obj.get("type").and_then(Value::as_str)
        && !["Normal", "Warning"].contains(&t)
    {
        causes.push(Cause::not_supported("type", &json!(t), &["Normal", "Warning"]));
    }
    causes
}

/// A path whose first segment is renamed.
fn json_patch_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (first, tail) = rest.split_once('/').map_or((rest, None), |(f, t)| (f, Some(t)));
    let first = RENAMED.iter().find(|(v, _)| *v == first).map_or(first, |(_, s)| *s);
    Some(match tail {
        Some(t) => format!("/{first}/{t}"),
        None => format!("/{first}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_round_trip() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "pulled", "reason": "Pulled", "action": "Pull",
            "reportingController": "kubelet", "reportingInstance": "n1", "eventTime": "2026-01-01T00:00:00.000000Z",
            "deprecatedCount": 2});
        let core = renamed(v1.clone(), true);
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!((core["message"].clone(), core["count"].clone()), (json!("pulled"), json!(2)));
        let mut core_obj = core.clone();
        core_obj["apiVersion"] = json!("v1");
        assert_eq!(VIEW.convert_out(core_obj), v1);
        assert_eq!(json_patch_path("/series/count").as_deref(), Some("/series/count"));
        assert_eq!(json_patch_path("/note").as_deref(), Some("/message"));
        assert_eq!(validate(&json!({"type": "Odd"})).len(), 6);
    }
}
