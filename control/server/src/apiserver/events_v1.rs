//! events.k8s.io/v1 Events: the same stored objects as core/v1 Events in another
//! shape, as upstream serves them (`regarding` = `involvedObject`, `note` = `message`,
//! `reportingController` = `reportingComponent`, `deprecated*` = the core fields of
//! the old event API). The router hands such requests to the core Event handlers with
//! the body turned into the core shape (`request_to_core`) and turns the answer back
//! (`response_from_core`), watch streams line by line.
//!
//! It must not store anything itself, and it owns only the field mapping and the
//! checks upstream adds for events created through this API.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header;
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::{Map, Value, json};

use super::decode::{PatchKind, decode_body, decode_patch, typed_decode};
use super::request::{Body, Ctx, Resp, Verb};
use super::resources::ResourceDef;
use super::status::{ApiError, ApiResult, Cause};

pub const GROUP: &str = "events.k8s.io";
const API_VERSION: &str = "events.k8s.io/v1";

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

fn rename(obj: &mut Map<String, Value>, to_core: bool) {
    let pairs: Vec<(&str, &str)> = RENAMED.iter().map(|&(e, c)| if to_core { (e, c) } else { (c, e) }).collect();
    let mut moved = Vec::new();
    for (from, to) in pairs {
        if let Some(v) = obj.remove(from) {
            moved.push((to, v));
        }
    }
    for (to, v) in moved {
        obj.insert(to.into(), v);
    }
}

/// An events.k8s.io/v1 Event (or a patch of one) in the core/v1 shape.
pub fn to_core(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        rename(m, true);
        if m.contains_key("apiVersion") {
            m.insert("apiVersion".into(), json!("v1"));
        }
    }
    v
}

/// A core/v1 Event, EventList or watch event in the events.k8s.io/v1 shape; Tables
/// and Status objects pass unchanged.
pub fn from_core(mut v: Value) -> Value {
    match v.get("kind").and_then(Value::as_str) {
        Some("Event") => {
            if let Some(m) = v.as_object_mut() {
                rename(m, false);
                m.insert("apiVersion".into(), json!(API_VERSION));
            }
        }
        Some("EventList") => {
            v["apiVersion"] = json!(API_VERSION);
            if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
                for item in items.iter_mut() {
                    *item = from_core(std::mem::take(item));
                    if let Some(m) = item.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                }
            }
        }
        None if v.get("type").is_some() && v.get("object").is_some() => {
            let object = v["object"].take();
            v["object"] = from_core(object);
        }
        _ => {}
    }
    v
}

/// What upstream requires of an Event created through events.k8s.io/v1.
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

/// Turns the request's body into the core shape (creates and updates are checked as
/// events.k8s.io objects first, so unknown fields and missing ones are named in this
/// API's terms).
pub fn request_to_core(def: &ResourceDef, verb: Verb, mut ctx: Ctx) -> ApiResult<Ctx> {
    match verb {
        Verb::Create | Verb::Update => {
            let body = decode_body(&ctx.content_type, &ctx.body)?;
            if let Some(k) = body.get("kind").and_then(Value::as_str)
                && k != "Event"
            {
                return Err(ApiError::bad_request(format!("expected kind Event, got {k}")));
            }
            let obj = typed_decode(def, body, ctx.strict())?;
            let causes = validate(&obj);
            if !causes.is_empty() {
                let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                return Err(ApiError::invalid("Event", GROUP, name, causes));
            }
            ctx.body = Bytes::from(serde_json::to_vec(&to_core(obj)).unwrap_or_default());
            ctx.content_type = "application/json".into();
        }
        Verb::Patch => {
            let (kind, patch) = decode_patch(&ctx.content_type, &ctx.body)?;
            let core = match (kind, patch) {
                (PatchKind::Json, Value::Array(ops)) => Value::Array(ops.into_iter().map(json_patch_op).collect()),
                (_, p) => to_core(p),
            };
            ctx.body = Bytes::from(serde_json::to_vec(&core).unwrap_or_default());
        }
        _ => {}
    }
    Ok(ctx)
}

/// One JSON Patch operation with its paths' first segment renamed.
fn json_patch_op(mut op: Value) -> Value {
    for key in ["path", "from"] {
        let Some(path) = op.get(key).and_then(Value::as_str) else { continue };
        let rest = path.strip_prefix('/').unwrap_or(path);
        let (first, tail) = rest.split_once('/').map_or((rest, None), |(f, t)| (f, Some(t)));
        if let Some((_, core)) = RENAMED.iter().find(|(e, _)| *e == first) {
            op[key] = json!(match tail {
                Some(t) => format!("/{core}/{t}"),
                None => format!("/{core}"),
            });
        }
    }
    op
}

/// A watch body whose lines are turned into the events.k8s.io shape.
struct ConvertedLines(Body);

impl hyper::body::Body for ConvertedLines {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx).map(|f| {
            f.map(|r| {
                r.map(|frame| {
                    frame.map_data(|data| {
                        let mut out = Vec::with_capacity(data.len());
                        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                            match serde_json::from_slice::<Value>(line) {
                                Ok(v) => out.extend(serde_json::to_vec(&from_core(v)).unwrap_or_default()),
                                Err(_) => out.extend_from_slice(line),
                            }
                            out.push(b'\n');
                        }
                        Bytes::from(out)
                    })
                })
            })
        })
    }
}

/// The core handlers' answer in the events.k8s.io shape.
pub async fn response_from_core(resp: Resp, watch: bool) -> Resp {
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    if watch {
        return Resp::from_parts(parts, ConvertedLines(body).boxed());
    }
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(never) => match never {},
    };
    let out = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => Bytes::from(serde_json::to_vec(&from_core(v)).unwrap_or_default()),
        Err(_) => bytes,
    };
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Resp::from_parts(parts, super::request::full(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_round_trip() {
        let v1 = json!({"apiVersion": API_VERSION, "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "pulled", "reason": "Pulled", "action": "Pull",
            "reportingController": "kubelet", "reportingInstance": "n1", "eventTime": "2026-01-01T00:00:00.000000Z",
            "deprecatedCount": 2});
        let core = to_core(v1.clone());
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!((core["message"].clone(), core["count"].clone()), (json!("pulled"), json!(2)));
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(from_core(core), v1);
        let op = json_patch_op(json!({"op": "replace", "path": "/series/count", "value": 3}));
        assert_eq!(op["path"], "/series/count");
        let op = json_patch_op(json!({"op": "replace", "path": "/note", "value": "x"}));
        assert_eq!(op["path"], "/message");
        assert!(validate(&json!({"type": "Odd"})).len() == 6);
    }
}
