//! Kinds served a second time, in another group or version, on the same stored
//! objects, as upstream serves them: events.k8s.io/v1 Events are the core Events
//! (`events`), autoscaling/v1 HorizontalPodAutoscalers are the autoscaling/v2 ones
//! (`hpa_v1`). The router hands such a request to the stored kind's handlers with the
//! body in the stored shape (`request_to_stored`) and turns the answer back
//! (`response_from_stored`), watch streams line by line.
//!
//! It must not store anything itself; each view owns only its field mapping and the
//! checks upstream adds for objects written through it.

mod events;
mod hpa_v1;
pub(crate) mod view;

pub use view::View;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header;
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::{Value, json};

use super::decode::{PatchKind, decode_body, decode_patch, typed_decode};
use super::request::{Body, Ctx, Resp, Verb};
use super::resource_def::ResourceDef;
use super::status::{ApiError, ApiResult};

/// The view a resource is, if it is one.
pub fn of(def: &ResourceDef) -> Option<&'static View> {
    match (def.group, def.version, def.plural) {
        ("events.k8s.io", "v1", "events") => Some(&events::VIEW),
        ("autoscaling", "v1", "horizontalpodautoscalers") => Some(&hpa_v1::VIEW),
        _ => super::crd::view_of(def),
    }
}

/// Turns the request's body into the stored shape (creates and updates are checked as
/// objects of the view first, so unknown and missing fields are named in its terms).
pub fn request_to_stored(view: &View, def: &ResourceDef, verb: Verb, mut ctx: Ctx) -> ApiResult<Ctx> {
    match verb {
        Verb::Create | Verb::Update => {
            let body = decode_body(&ctx.content_type, &ctx.body)?;
            if let Some(k) = body.get("kind").and_then(Value::as_str)
                && k != view.kind
            {
                return Err(ApiError::bad_request(format!("expected kind {}, got {k}", view.kind)));
            }
            let obj = typed_decode(def, body, ctx.strict())?;
            let causes = (view.validate)(&obj);
            if !causes.is_empty() {
                let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                return Err(ApiError::invalid(view.kind, def.group, name, causes));
            }
            let mut stored = (view.to_stored)(obj);
            stored["apiVersion"] = json!(stored_api_version(view));
            ctx.body = Bytes::from(serde_json::to_vec(&stored).unwrap_or_default());
            ctx.content_type = "application/json".into();
        }
        Verb::Patch => {
            let (kind, patch) = decode_patch(&ctx.content_type, &ctx.body)?;
            let stored = match (kind, patch) {
                (PatchKind::Json, Value::Array(ops)) => {
                    Value::Array(ops.into_iter().map(|op| json_patch_op(view, op)).collect::<ApiResult<_>>()?)
                }
                (_, p) => (view.to_stored)(p),
            };
            ctx.body = Bytes::from(serde_json::to_vec(&stored).unwrap_or_default());
        }
        _ => {}
    }
    Ok(ctx)
}

fn stored_api_version(view: &View) -> String {
    let (group, version, _) = view.stored;
    if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }
}

/// One JSON Patch operation with its paths in the stored shape.
fn json_patch_op(view: &View, mut op: Value) -> ApiResult<Value> {
    for key in ["path", "from"] {
        let Some(path) = op.get(key).and_then(Value::as_str) else { continue };
        let stored = (view.json_patch_path)(path).ok_or_else(|| {
            ApiError::unsupported_media_type(&format!(
                "application/json-patch+json of {path:?} through {}; use a merge patch",
                view.api_version
            ))
        })?;
        op[key] = json!(stored);
    }
    Ok(op)
}

/// A watch body whose lines are turned into a view's shape.
struct ConvertedLines(Body, &'static View);

impl hyper::body::Body for ConvertedLines {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let view = self.1;
        Pin::new(&mut self.0).poll_frame(cx).map(|f| {
            f.map(|r| {
                r.map(|frame| {
                    frame.map_data(|data| {
                        let mut out = Vec::with_capacity(data.len());
                        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                            match serde_json::from_slice::<Value>(line) {
                                Ok(v) => out.extend(serde_json::to_vec(&view.convert_out(v)).unwrap_or_default()),
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

/// The stored kind's answer in the view's shape.
pub async fn response_from_stored(view: &'static View, resp: Resp, watch: bool) -> Resp {
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
        return Resp::from_parts(parts, ConvertedLines(body, view).boxed());
    }
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(never) => match never {},
    };
    let out = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => Bytes::from(serde_json::to_vec(&view.convert_out(v)).unwrap_or_default()),
        Err(_) => bytes,
    };
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Resp::from_parts(parts, super::request::full(out))
}
