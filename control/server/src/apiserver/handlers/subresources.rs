//! The `scale` view (autoscaling/v1 Scale) and `pods/binding`. The `status`
//! subresource needs no code of its own: `write` keeps everything but the status.

use http::StatusCode;
use serde_json::{Value, json};
use skiff_api::selector::LabelSelector;

use super::super::api_server::ApiServer;
use super::super::crd::{self, ScalePaths};
use super::super::decode;
use super::super::meta;
use super::super::object::{Named, invalid, str_at};
use super::super::request::{Ctx, Resp, Subresource, json_response};
use super::super::resource_def::ResourceDef;
use super::super::status::{ApiError, ApiResult, Cause};

/// Where a kind keeps what its Scale shows: the built-in kinds' fixed places, or a
/// custom resource's `scale` subresource paths (`crd`).
fn scale_paths(def: &ResourceDef) -> ScalePaths {
    crd::scale_paths(def).unwrap_or_else(|| ScalePaths {
        spec_replicas: "/spec/replicas".into(),
        status_replicas: "/status/replicas".into(),
        label_selector: None,
    })
}

/// The autoscaling/v1 Scale view of a Deployment, ReplicaSet, StatefulSet or custom
/// resource.
pub(super) fn scale_of(def: &ResourceDef, obj: &Value) -> Value {
    let paths = scale_paths(def);
    let selector = match &paths.label_selector {
        // A custom resource keeps its selector as a string, ready for the Scale.
        Some(p) => str_at(obj, p).unwrap_or("").to_string(),
        None => obj
            .pointer("/spec/selector")
            .and_then(|s| LabelSelector::from_json(s).ok())
            .map(|s| s.to_string())
            .unwrap_or_default(),
    };
    let m = &obj["metadata"];
    let mut metadata = json!({
        "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
        "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
    });
    let fields = scale_fields(&obj["metadata"]["managedFields"], &paths.spec_replicas);
    if !fields.is_empty() {
        metadata["managedFields"] = Value::Array(fields);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": obj.pointer(&paths.spec_replicas).cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer(&paths.status_replicas).cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// The object's managedFields entries that own its replicas, as upstream shows them
/// on a Scale: the same managers owning the Scale's `spec.replicas`.
fn scale_fields(entries: &Value, replicas: &str) -> Vec<Value> {
    let owned: String = replicas.split('/').skip(1).map(|p| format!("/f:{}", p.replace('~', "~0"))).collect();
    let Some(list) = entries.as_array() else { return Vec::new() };
    list.iter()
        .filter(|e| e.get("fieldsV1").and_then(|f| f.pointer(&owned)).is_some())
        .map(|e| {
            let mut e = e.clone();
            e["apiVersion"] = json!("autoscaling/v1");
            e["fieldsV1"] = json!({"f:spec": {"f:replicas": {}}});
            e
        })
        .collect()
}

/// Sets the value at a JSON pointer, making the objects on the way.
fn set_at(obj: &mut Value, ptr: &str, v: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = ptr.split('/').skip(1).collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let m = cur.as_object_mut().expect("made an object above");
        if i + 1 == parts.len() {
            m.insert((*p).to_string(), v);
            return;
        }
        cur = m.entry((*p).to_string()).or_insert(json!({}));
    }
}

/// A Scale's `spec.replicas` (`None` when it has none), checked.
fn scale_replicas(def: &ResourceDef, obj: &Value, scale: &Value) -> ApiResult<Option<Value>> {
    if let Some(k) = scale.get("kind").and_then(|k| k.as_str())
        && k != "Scale"
    {
        return Err(ApiError::bad_request(format!("expected kind Scale, got {k}")));
    }
    let replicas = match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) if n.as_i64().is_some() => Value::Number(n.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(format!("Scale.spec.replicas must be an integer, got {other}")));
        }
    };
    if replicas.as_i64().unwrap_or(0) < 0 {
        return Err(invalid(
            def,
            obj,
            vec![Cause::invalid("spec.replicas", &replicas, "must be greater than or equal to 0")],
        ));
    }
    Ok(Some(replicas))
}

/// An applied Scale as the configuration of its object: only the replicas (at the
/// kind's replicas path), so the applier's fields on the object are just those, as
/// upstream's scale field manager records them.
pub(super) fn scale_as_config(def: &ResourceDef, scale: &Value) -> ApiResult<Value> {
    // As upstream, the configuration must be of the Scale's version (so applying a
    // Deployment's manifest to its scale is refused rather than half-applied).
    let version = scale.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if version != "autoscaling/v1" {
        return Err(ApiError::bad_request(format!(
            "Incorrect version specified in apply patch. Specified patch version: {version}, expected: autoscaling/v1"
        )));
    }
    let mut config = json!({"apiVersion": def.api_version(), "kind": def.kind, "metadata": {}});
    for k in ["name", "resourceVersion"] {
        if let Some(v) = scale["metadata"].get(k) {
            config["metadata"][k] = v.clone();
        }
    }
    if let Some(r) = scale_replicas(def, &config, scale)? {
        set_at(&mut config, &scale_paths(def).spec_replicas, r);
    }
    Ok(config)
}

/// Applies a Scale (as the client sent it) to the object.
pub(super) fn apply_scale(def: &ResourceDef, obj: &Value, scale: &Value) -> ApiResult<Value> {
    let replicas = scale_replicas(def, obj, scale)?.unwrap_or(json!(0));
    let mut o = obj.clone();
    set_at(&mut o, &scale_paths(def).spec_replicas, replicas);
    if let Some(rv) = scale.pointer("/metadata/resourceVersion") {
        o["metadata"]["resourceVersion"] = rv.clone();
    }
    Ok(o)
}

impl ApiServer {
    /// `POST pods/<name>/binding`: sets `spec.nodeName` of an unbound pod; binding an
    /// already bound pod is a 409, as in Kubernetes.
    pub(crate) async fn bind(&self, def: &ResourceDef, ns: Option<&str>, name: &str, ctx: &Ctx) -> ApiResult<Resp> {
        let b = decode::decode_body(&ctx.content_type, &ctx.body)?;
        if let Some(k) = b.get("kind").and_then(|k| k.as_str())
            && k != "Binding"
        {
            return Err(ApiError::bad_request(format!("expected kind Binding, got {k}")));
        }
        let node = str_at(&b, "/target/name")
            .ok_or_else(|| ApiError::invalid("Binding", "", name, vec![Cause::required("target.name")]))?
            .to_string();
        let mutate = |cur: &Value| -> ApiResult<Value> {
            if let Some(existing) = str_at(cur, "/spec/nodeName") {
                return Err(ApiError::conflict(
                    def.plural,
                    def.group,
                    name,
                    &format!("pod {name} is already assigned to node \"{existing}\""),
                ));
            }
            let mut o = cur.clone();
            o["spec"]["nodeName"] = json!(node);
            // As upstream's binding storage: the pod now says it is scheduled.
            let cond = json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": meta::now()});
            let conds = o["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
            conds.push(cond);
            o["status"]["conditions"] = Value::Array(conds);
            Ok(o)
        };
        self.write_update(
            Named { def, ns, name, sub: Some(Subresource::Binding) },
            ctx,
            &mutate,
            super::write::Ownership::Record,
        )
        .await?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }
}
