//! The verbs: get, list, create, update (PUT), patch, delete, deletecollection, and the
//! status and scale subresources. Every write goes through `write_update` or
//! `create`, which decode, default, validate and only then touch the store, so bad
//! input never changes stored state.

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use skiff_api::finalizers;
use skiff_api::selector::{FieldSelector, LabelSelector};

use super::resources::{RESOURCES, ResourceDef, by_kind};
use super::status::{ApiError, ApiResult};
use super::{ApiServer, Ctx, Resp, decode, json_response, meta, table, validation};
use crate::store::{self, KeyValue};

/// The message of a 409 caused by a concurrent write rather than by a client's
/// precondition; `delete` retries these.
const RACED: &str = "the object has been modified; please retry";

/// Namespaces that always exist and may not be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

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
fn to_bytes(obj: &Value) -> Bytes {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("resourceVersion");
    }
    Bytes::from(serde_json::to_vec(&o).unwrap_or_default())
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(|x| x.as_str()).filter(|s| !s.is_empty())
}

/// The request body, decoded by its Content-Type (see `decode::decode_body`).
pub(crate) fn decode_body(ctx: &Ctx) -> ApiResult<Value> {
    decode::decode_body(&ctx.content_type, &ctx.body)
}

/// The typed decode, strict when the client asked for `fieldValidation=Strict`.
fn typed_decode(def: &ResourceDef, obj: Value, ctx: &Ctx) -> ApiResult<Value> {
    decode::typed_decode(def, obj, ctx.q("fieldValidation") == Some("Strict"))
}

fn rv_of(v: &Value) -> ApiResult<Option<u64>> {
    match str_at(v, "/metadata/resourceVersion") {
        None => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}: must be an unsigned integer"))),
    }
}

fn invalid(def: &ResourceDef, obj: &Value, causes: Vec<super::status::Cause>) -> ApiError {
    let name = str_at(obj, "/metadata/name").unwrap_or("");
    ApiError::invalid(def.kind, def.group, name, causes)
}

/// Everything except metadata and status: what `metadata.generation` tracks.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// A Service keeps its ClusterIP (and node ports a client did not set) across updates;
/// changing the ClusterIP is refused, as in Kubernetes.
fn keep_allocations(cur: &Value, new: &mut Value) -> Result<(), Vec<super::status::Cause>> {
    let old_ip = cur.pointer("/spec/clusterIP").cloned().unwrap_or(Value::Null);
    match new.pointer("/spec/clusterIP").and_then(|v| v.as_str()) {
        None | Some("") => {
            if let Some(spec) = new.get_mut("spec").and_then(|s| s.as_object_mut()) {
                spec.insert("clusterIP".into(), old_ip);
                spec.insert("clusterIPs".into(), cur.pointer("/spec/clusterIPs").cloned().unwrap_or(Value::Null));
            }
        }
        Some(ip) if Some(ip) != old_ip.as_str() => {
            return Err(vec![super::status::Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(ip),
                "may not change once set",
            )]);
        }
        _ => {}
    }
    for k in ["ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy", "clusterIPs"] {
        if new.pointer(&format!("/spec/{k}")).is_none_or(Value::is_null)
            && let (Some(v), Some(spec)) =
                (cur.pointer(&format!("/spec/{k}")), new.get_mut("spec").and_then(|s| s.as_object_mut()))
        {
            spec.insert(k.into(), v.clone());
        }
    }
    let old_ports = cur.pointer("/spec/ports").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    if let Some(Value::Array(ports)) = new.pointer_mut("/spec/ports") {
        for p in ports.iter_mut() {
            if p.get("nodePort").is_none()
                && let Some(old) =
                    old_ports.iter().find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"))
                && let Some(np) = old.get("nodePort")
            {
                p["nodePort"] = np.clone();
            }
        }
    }
    Ok(())
}

/// Resets the status a client may not set at creation (the controllers own it).
fn reset_status_on_create(def: &ResourceDef, obj: &mut Value) {
    if matches!(def.kind, "Pod" | "Deployment" | "ReplicaSet" | "Service" | "Namespace")
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
}

/// Continue tokens: the revision the listing started at and the last key returned.
fn encode_continue(rv: u64, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"rv": rv, "start": key}).to_string())
}

fn decode_continue(tok: &str) -> ApiResult<(u64, String)> {
    let bad = || ApiError::bad_request("continue key is not valid: please restart the list without a continue token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tok).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v.get("rv").and_then(|r| r.as_u64()).ok_or_else(bad)?,
        v.get("start").and_then(|s| s.as_str()).ok_or_else(bad)?.to_string(),
    ))
}

/// The value of a selectable field; `Err` for fields this kind cannot be selected by.
pub(crate) fn field_value(def: &ResourceDef, obj: &Value, field: &str) -> Result<Option<String>, ()> {
    let allowed: &[&str] = match def.kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Secret" => &["type"],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        "ReplicaSet" => &["status.replicas"],
        _ => &[],
    };
    if field != "metadata.name" && field != "metadata.namespace" && !allowed.contains(&field) {
        return Err(());
    }
    let ptr = format!("/{}", field.replace('.', "/"));
    Ok(obj.pointer(&ptr).and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }))
}

/// Parsed `labelSelector` / `fieldSelector`.
pub(crate) struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn from_ctx(def: &ResourceDef, ctx: &Ctx) -> ApiResult<Self> {
        let labels = LabelSelector::parse(ctx.q("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        for r in &fields.requirements {
            if field_value(def, &json!({}), &r.field).is_err() {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {} (for {} in {})",
                    r.field,
                    def.kind,
                    def.api_version()
                )));
            }
        }
        Ok(Self { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, def: &ResourceDef, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(|f| field_value(def, obj, f).ok().flatten())
    }
}

/// What a completed DELETE returns. As in Kubernetes, pods, services and namespaces
/// return the deleted object and every other kind a Success Status naming it: typed
/// clients (the Python client's `V1Status`, client-go's) decode the response by kind.
fn deleted_response(def: &ResourceDef, obj: Value) -> Value {
    if matches!(def.kind, "Pod" | "Service" | "Namespace") {
        return obj;
    }
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": obj["metadata"]["name"], "group": def.group, "kind": def.plural,
                    "uid": obj["metadata"]["uid"]},
    })
}

fn ok(v: &Value) -> ApiResult<Resp> {
    Ok(json_response(StatusCode::OK, v))
}

/// The autoscaling/v1 Scale view of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector")
        .and_then(|s| LabelSelector::from_json(s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let m = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// Applies a Scale (as the client sent it) to the object.
fn apply_scale(def: &ResourceDef, obj: &Value, scale: &Value) -> ApiResult<Value> {
    if let Some(k) = scale.get("kind").and_then(|k| k.as_str())
        && k != "Scale"
    {
        return Err(ApiError::bad_request(format!("expected kind Scale, got {k}")));
    }
    let replicas = match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => json!(0),
        Some(Value::Number(n)) if n.as_i64().is_some() => Value::Number(n.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(format!("Scale.spec.replicas must be an integer, got {other}")));
        }
    };
    if replicas.as_i64().unwrap_or(0) < 0 {
        return Err(invalid(
            def,
            obj,
            vec![super::status::Cause::invalid("spec.replicas", &replicas, "must be greater than or equal to 0")],
        ));
    }
    let mut o = obj.clone();
    o["spec"]["replicas"] = replicas;
    if let Some(rv) = scale.pointer("/metadata/resourceVersion") {
        o["metadata"]["resourceVersion"] = rv.clone();
    }
    Ok(o)
}

impl ApiServer {
    async fn get_kv(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> ApiResult<KeyValue> {
        self.store.get(&def.key(ns, name)).await?.ok_or_else(|| ApiError::not_found(def.plural, def.group, name))
    }

    pub(crate) async fn get(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        ctx: &Ctx,
    ) -> ApiResult<Resp> {
        let obj = to_obj(&self.get_kv(def, ns, name).await?)?;
        if sub == Some("scale") {
            return ok(&scale_of(&obj));
        }
        if ctx.wants_table() {
            let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
            return ok(&table::table(def.kind, &[obj], meta, table::Include::parse(ctx.q("includeObject"))));
        }
        ok(&obj)
    }

    pub(crate) async fn list(&self, def: &ResourceDef, ns: Option<&str>, ctx: &Ctx) -> ApiResult<Resp> {
        let sel = Selectors::from_ctx(def, ctx)?;
        let limit: usize = match ctx.q("limit") {
            None => 0,
            Some(l) => l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        };
        let prefix = def.ns_prefix(ns);
        let (mut start, mut first_rv) = match ctx.q("continue") {
            Some(tok) => {
                let (rv, key) = decode_continue(tok)?;
                if !key.starts_with(&prefix) {
                    return Err(ApiError::bad_request("continue key is not valid for this list"));
                }
                (Some(key), Some(rv))
            }
            None => (None, None),
        };
        if sel.is_empty()
            && !ctx.wants_table()
            && let Some(resp) = self.list_raw(def, &prefix, start.as_deref(), first_rv, limit).await?
        {
            return Ok(resp);
        }
        let mut items = Vec::new();
        let mut cont = None;
        // Page through the store until `limit` matching items or the end; filtering
        // happens here, so a selective LIST may read several store pages.
        let page_size = if limit == 0 { 0 } else { limit.max(100) };
        'outer: loop {
            let page = self.store.list(&prefix, start.as_deref(), page_size).await?;
            let rv = *first_rv.get_or_insert(page.revision);
            let n = page.kvs.len();
            for (i, kv) in page.kvs.iter().enumerate() {
                let obj = to_obj(kv)?;
                if !sel.matches(def, &obj) {
                    continue;
                }
                items.push(obj);
                if limit > 0 && items.len() == limit {
                    if i + 1 < n || page.more {
                        cont = Some(encode_continue(rv, &kv.key));
                    }
                    break 'outer;
                }
            }
            if !page.more || n == 0 {
                break;
            }
            start = page.kvs.last().map(|k| k.key.clone());
        }
        let rv = first_rv.unwrap_or(0).to_string();
        let mut list_meta = json!({"resourceVersion": rv});
        if let Some(c) = cont {
            list_meta["continue"] = json!(c);
        }
        if ctx.wants_table() {
            return ok(&table::table(def.kind, &items, list_meta, table::Include::parse(ctx.q("includeObject"))));
        }
        ok(&json!({
            "kind": format!("{}List", def.kind),
            "apiVersion": def.api_version(),
            "metadata": list_meta,
            "items": items,
        }))
    }

    /// An unfiltered LIST as one store page spliced into the response without decoding
    /// each object (see `rawjson`); `None` if a stored object is not in the expected
    /// shape, and the caller takes the decoding path.
    async fn list_raw(
        &self,
        def: &ResourceDef,
        prefix: &str,
        start: Option<&str>,
        continued_rv: Option<u64>,
        limit: usize,
    ) -> ApiResult<Option<Resp>> {
        let page = self.store.list(prefix, start, limit).await?;
        let rv = continued_rv.unwrap_or(page.revision);
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if page.more
            && let Some(last) = page.kvs.last()
        {
            meta["continue"] = json!(encode_continue(rv, &last.key));
        }
        let head = format!(
            "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
            def.kind,
            def.api_version(),
            meta
        );
        let mut out = Vec::with_capacity(head.len() + page.kvs.iter().map(|kv| kv.value.len() + 40).sum::<usize>() + 2);
        out.extend_from_slice(head.as_bytes());
        for (i, kv) in page.kvs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if !super::rawjson::append_with_revision(&mut out, &kv.value, kv.mod_revision) {
                return Ok(None);
            }
        }
        out.extend_from_slice(b"]}");
        Ok(Some(
            http::Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(super::full(out))
                .unwrap(),
        ))
    }

    pub(crate) async fn create(&self, def: &ResourceDef, ns: Option<&str>, ctx: &Ctx) -> ApiResult<Resp> {
        let mut obj = decode::decode_object(def, &ctx.content_type, &ctx.body)?;
        let m = obj["metadata"].as_object_mut().unwrap();
        if def.namespaced {
            let url_ns =
                ns.ok_or_else(|| ApiError::bad_request(format!("{} must be created in a namespace", def.plural)))?;
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
        let name = m.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string();
        if name.is_empty()
            && let Some(g) = m.get("generateName").and_then(|g| g.as_str()).filter(|g| !g.is_empty())
        {
            let g = g.to_string();
            m.insert("name".into(), json!(format!("{g}{}", meta::name_suffix())));
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
        let mut obj = typed_decode(def, obj, ctx)?;
        reset_status_on_create(def, &mut obj);
        validation::default(def.kind, &mut obj);
        let uid = meta::new_uid();
        if def.kind == "Job" {
            validation::default_job_selector(&mut obj, &uid);
        }
        let causes = validation::validate(def.kind, def.namespaced, &obj);
        if !causes.is_empty() {
            return Err(invalid(def, &obj, causes));
        }
        let m = obj["metadata"].as_object_mut().unwrap();
        m.insert("uid".into(), json!(uid));
        m.insert("creationTimestamp".into(), json!(meta::now()));
        if def.has_spec() {
            m.insert("generation".into(), json!(1));
        }
        let name = str_at(&obj, "/metadata/name").unwrap_or("").to_string();
        if def.namespaced {
            let nsdef = by_kind("Namespace").unwrap();
            let ns = ns.unwrap_or("");
            if self.store.get(&nsdef.key(None, ns)).await?.is_none() {
                return Err(ApiError::not_found("namespaces", "", ns));
            }
        }
        // Held until the Service is stored, so concurrent creates see each other's IPs.
        let _alloc = if def.kind == "Service" { Some(self.alloc_lock.lock().await) } else { None };
        if def.kind == "Service" {
            let mut used = super::allocator::InUse::default();
            for kv in self.store.list(&def.prefix(), None, 0).await?.kvs {
                used.add(&to_obj(&kv)?);
            }
            super::allocator::allocate(self.service_cidr, &used, &mut obj).map_err(|c| invalid(def, &obj, c))?;
        }
        if ctx.dry_run() {
            return Ok(json_response(StatusCode::CREATED, &obj));
        }
        let kv = match self.store.create(&def.key(ns, &name), to_bytes(&obj)).await {
            Ok(kv) => kv,
            Err(store::Error::AlreadyExists { .. }) => {
                return Err(ApiError::already_exists(def.plural, def.group, &name));
            }
            Err(e) => return Err(e.into()),
        };
        tracing::debug!(kind = def.kind, namespace = ns.unwrap_or(""), name = %name, rv = kv.mod_revision, user = %ctx.user.name, "created");
        Ok(json_response(StatusCode::CREATED, &to_obj(&kv)?))
    }

    /// The update pipeline shared by PUT and PATCH (and their subresources): read the
    /// current object, let `mutate` produce the desired one, enforce immutable fields and
    /// preconditions, decode, default, validate, then compare-and-swap on the revision.
    /// Races with other writers retry unless the client pinned a resourceVersion.
    async fn write_update(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        ctx: &Ctx,
        mutate: &(dyn Fn(&Value) -> ApiResult<Value> + Send + Sync),
    ) -> ApiResult<Value> {
        for _attempt in 0..16 {
            let kv = self.get_kv(def, ns, name).await?;
            let cur = to_obj(&kv)?;
            let mut desired = mutate(&cur)?;
            let scale = sub == Some("scale");
            if !scale {
                decode::check_type(def, &mut desired)?;
            }
            let client_rv = rv_of(&desired)?;
            if let Some(rv) = client_rv
                && rv != kv.mod_revision
            {
                return Err(ApiError::conflict(
                    def.plural,
                    def.group,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            if let Some(n) = str_at(&desired, "/metadata/name")
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            if def.namespaced
                && let Some(n) = str_at(&desired, "/metadata/namespace")
                && Some(n) != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let mut new = match sub {
                // pods/binding sets spec.nodeName and the PodScheduled condition together.
                Some("binding") => desired,
                Some("status") => {
                    let mut n = cur.clone();
                    n["status"] = desired.get("status").cloned().unwrap_or(Value::Null);
                    n
                }
                _ => {
                    let mut n = desired;
                    if def.status && !scale {
                        match cur.get("status") {
                            Some(s) => n["status"] = s.clone(),
                            None => {
                                n.as_object_mut().map(|m| m.remove("status"));
                            }
                        }
                    }
                    n
                }
            };
            // Identity and system fields are the server's, whatever the client sent.
            for k in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "name",
                "namespace",
            ] {
                match cur["metadata"].get(k) {
                    Some(v) => new["metadata"][k] = v.clone(),
                    None => {
                        new["metadata"].as_object_mut().map(|m| m.remove(k));
                    }
                }
            }
            new["metadata"].as_object_mut().map(|m| m.remove("managedFields"));
            if def.kind == "Service" {
                keep_allocations(&cur, &mut new).map_err(|c| invalid(def, &cur, c))?;
            }
            let mut new = typed_decode(def, new, ctx)?;
            validation::default(def.kind, &mut new);
            let causes = validation::validate(def.kind, def.namespaced, &new);
            if !causes.is_empty() {
                return Err(invalid(def, &new, causes));
            }
            if def.has_spec() && spec_part(&new) != spec_part(&cur) {
                let g = cur.pointer("/metadata/generation").and_then(|g| g.as_i64()).unwrap_or(0);
                new["metadata"]["generation"] = json!(g + 1);
            }
            let terminating = new.pointer("/metadata/deletionTimestamp").is_some();
            let finalizers_left =
                new.pointer("/metadata/finalizers").and_then(|f| f.as_array()).is_some_and(|f| !f.is_empty());
            let grace_left =
                new.pointer("/metadata/deletionGracePeriodSeconds").and_then(|g| g.as_i64()).unwrap_or(0) > 0;
            if terminating && !finalizers_left && !grace_left && !ctx.dry_run() {
                // The last finalizer is gone: the deletion that was asked for completes now.
                match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok(d) => {
                        tracing::debug!(
                            kind = def.kind,
                            namespace = ns.unwrap_or(""),
                            name,
                            rv = d.mod_revision,
                            "deleted after finalizers"
                        );
                        return Ok(new);
                    }
                    Err(store::Error::Conflict { .. }) if client_rv.is_none() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let bytes = to_bytes(&new);
            if bytes == to_bytes(&cur) || ctx.dry_run() {
                // Unchanged objects are not rewritten, so watchers see no empty MODIFIED.
                new["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                return Ok(new);
            }
            match self.store.update(&kv.key, bytes, Some(kv.mod_revision)).await {
                Ok(kv) => {
                    tracing::debug!(kind = def.kind, namespace = ns.unwrap_or(""), name, subresource = sub.unwrap_or(""), rv = kv.mod_revision, user = %ctx.user.name, "updated");
                    return to_obj(&kv);
                }
                Err(store::Error::Conflict { .. }) if client_rv.is_none() => continue,
                Err(store::Error::Conflict { .. }) => {
                    return Err(ApiError::conflict(
                        def.plural,
                        def.group,
                        name,
                        "the object has been modified; please apply your changes to the latest version and try again",
                    ));
                }
                Err(store::Error::NotFound { .. }) => return Err(ApiError::not_found(def.plural, def.group, name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(def.plural, def.group, name, "too many concurrent writers; try again"))
    }

    fn finish_write(def: &ResourceDef, sub: Option<&str>, obj: Value) -> ApiResult<Resp> {
        let _ = def;
        if sub == Some("scale") { ok(&scale_of(&obj)) } else { ok(&obj) }
    }

    pub(crate) async fn update(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        ctx: &Ctx,
    ) -> ApiResult<Resp> {
        let body = decode_body(ctx)?;
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let mutate = |cur: &Value| -> ApiResult<Value> {
            if sub == Some("scale") { apply_scale(def, cur, &body) } else { Ok(body.clone()) }
        };
        let obj = self.write_update(def, ns, name, sub, ctx, &mutate).await?;
        Self::finish_write(def, sub, obj)
    }

    pub(crate) async fn patch(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        ctx: &Ctx,
    ) -> ApiResult<Resp> {
        let (kind, p) = decode::decode_patch(&ctx.content_type, &ctx.body)?;
        let apply = |target: &Value| decode::apply_patch(kind, &p, target, def, name);
        let mutate = |cur: &Value| -> ApiResult<Value> {
            if sub == Some("scale") {
                let patched = apply(&scale_of(cur))?;
                // The Scale carries the object's resourceVersion; an unchanged one is no precondition.
                apply_scale(def, cur, &patched)
            } else {
                let mut patched = apply(cur)?;
                // The resourceVersion the patch was applied to is no precondition: only one
                // the patch itself sets is. Otherwise a patch racing a controller's write
                // would fail with 409 instead of being applied to the newer object.
                if patched.pointer("/metadata/resourceVersion") == cur.pointer("/metadata/resourceVersion")
                    && let Some(m) = patched.get_mut("metadata").and_then(|m| m.as_object_mut())
                {
                    m.remove("resourceVersion");
                }
                Ok(patched)
            }
        };
        let obj = self.write_update(def, ns, name, sub, ctx, &mutate).await?;
        Self::finish_write(def, sub, obj)
    }

    /// Adds `finalizer` to the stored object (compare-and-swap on its revision) so the
    /// deletion that follows waits for the garbage collector.
    async fn add_finalizer(
        &self,
        def: &ResourceDef,
        kv: &KeyValue,
        cur: &Value,
        finalizer: &str,
    ) -> ApiResult<(KeyValue, Value)> {
        let mut o = cur.clone();
        let list = o["metadata"].as_object_mut().map(|m| m.entry("finalizers").or_insert(json!([])));
        if let Some(Value::Array(fs)) = list {
            fs.push(json!(finalizer));
        }
        let name = str_at(cur, "/metadata/name").unwrap_or("");
        match self.store.update(&kv.key, to_bytes(&o), Some(kv.mod_revision)).await {
            Ok(kv) => {
                let obj = to_obj(&kv)?;
                Ok((kv, obj))
            }
            Err(store::Error::Conflict { .. }) => Err(ApiError::conflict(def.plural, def.group, name, RACED)),
            Err(e) => Err(e.into()),
        }
    }

    /// Finalizers and graceful pod deletion: instead of removing the object, stamp
    /// `deletionTimestamp` and let the finalizer owners (or the kubelet, for pods bound to
    /// a node) finish. `None` means delete now.
    async fn begin_graceful_delete(
        &self,
        def: &ResourceDef,
        kv: &KeyValue,
        cur: &Value,
        grace: Option<i64>,
    ) -> ApiResult<Option<Value>> {
        let has_finalizers =
            cur.pointer("/metadata/finalizers").and_then(|f| f.as_array()).is_some_and(|f| !f.is_empty());
        let pod_grace = if def.kind == "Pod" && str_at(cur, "/spec/nodeName").is_some() {
            let g = grace
                .or_else(|| cur.pointer("/spec/terminationGracePeriodSeconds").and_then(|g| g.as_i64()))
                .unwrap_or(30);
            (g > 0).then_some(g)
        } else {
            None
        };
        if cur.pointer("/metadata/deletionTimestamp").is_some() {
            // Already terminating: the kubelet's final DELETE (grace 0) removes the object
            // once no finalizers remain; any other DELETE changes nothing.
            return Ok(if grace == Some(0) && !has_finalizers { None } else { Some(cur.clone()) });
        }
        if !has_finalizers && pod_grace.is_none() {
            return Ok(None);
        }
        let mut o = cur.clone();
        let g = pod_grace.unwrap_or(0);
        o["metadata"]["deletionTimestamp"] = json!(meta::format_time(meta::unix_now() + g));
        o["metadata"]["deletionGracePeriodSeconds"] = json!(g);
        let name = str_at(cur, "/metadata/name").unwrap_or("");
        match self.store.update(&kv.key, to_bytes(&o), Some(kv.mod_revision)).await {
            Ok(kv) => {
                tracing::debug!(kind = def.kind, name, grace = g, finalizers = has_finalizers, "deletion started");
                Ok(Some(to_obj(&kv)?))
            }
            Err(store::Error::Conflict { .. }) => Err(ApiError::conflict(def.plural, def.group, name, RACED)),
            Err(e) => Err(e.into()),
        }
    }

    /// `POST pods/<name>/binding`: sets `spec.nodeName` of an unbound pod; binding an
    /// already bound pod is a 409, as in Kubernetes.
    pub(crate) async fn bind(&self, def: &ResourceDef, ns: Option<&str>, name: &str, ctx: &Ctx) -> ApiResult<Resp> {
        let b = decode_body(ctx)?;
        if let Some(k) = b.get("kind").and_then(|k| k.as_str())
            && k != "Binding"
        {
            return Err(ApiError::bad_request(format!("expected kind Binding, got {k}")));
        }
        let node = str_at(&b, "/target/name")
            .ok_or_else(|| ApiError::invalid("Binding", "", name, vec![super::status::Cause::required("target.name")]))?
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
        self.write_update(def, ns, name, Some("binding"), ctx, &mutate).await?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    /// DELETE. A concurrent write by someone else (a controller updating status, say) is
    /// no reason to fail a delete that named no precondition: like the real API server's
    /// update loop, it is tried again on the newer object. A stated precondition that
    /// fails is still a 409.
    pub(crate) async fn delete(&self, def: &ResourceDef, ns: Option<&str>, name: &str, ctx: &Ctx) -> ApiResult<Resp> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.delete_attempt(def, ns, name, ctx).await {
                Err(e) if attempts < 16 && e.code == 409 && e.message.ends_with(RACED) => continue,
                r => return r,
            }
        }
    }

    async fn delete_attempt(&self, def: &ResourceDef, ns: Option<&str>, name: &str, ctx: &Ctx) -> ApiResult<Resp> {
        let opts: Value = if ctx.body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&ctx.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
        };
        if def.kind == "Namespace" && SYSTEM_NAMESPACES[..3].contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let kv = self.get_kv(def, ns, name).await?;
        let cur = to_obj(&kv)?;
        if let Some(uid) = str_at(&opts, "/preconditions/uid")
            && Some(uid) != str_at(&cur, "/metadata/uid")
        {
            return Err(ApiError::conflict(
                def.plural,
                def.group,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    str_at(&cur, "/metadata/uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = str_at(&opts, "/preconditions/resourceVersion")
            && rv != kv.mod_revision.to_string()
        {
            return Err(ApiError::conflict(
                def.plural,
                def.group,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    kv.mod_revision
                ),
            ));
        }
        if ctx.dry_run() {
            return ok(&cur);
        }
        let grace: Option<i64> = match ctx.q("gracePeriodSeconds") {
            Some(g) => Some(g.parse().map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?),
            None => opts.get("gracePeriodSeconds").and_then(|g| g.as_i64()),
        };
        let policy = propagation_policy(ctx, &opts)?;
        let (kv, cur) = match policy_finalizer(def, &cur, policy) {
            Some(f) => self.add_finalizer(def, &kv, &cur, f).await?,
            None => (kv, cur),
        };
        if let Some(obj) = self.begin_graceful_delete(def, &kv, &cur, grace).await? {
            return ok(&obj);
        }
        if def.kind == "Namespace" {
            // No namespace controller yet: remove the contents synchronously, so a deleted
            // namespace never leaves orphans behind.
            for r in RESOURCES.iter().filter(|r| r.namespaced) {
                let page = self.store.list(&r.ns_prefix(Some(name)), None, 0).await?;
                for kv in page.kvs {
                    match self.store.delete(&kv.key, None).await {
                        Ok(_) | Err(store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
            Ok(d) => {
                tracing::debug!(kind = def.kind, namespace = ns.unwrap_or(""), name, rv = d.mod_revision, user = %ctx.user.name, "deleted");
                ok(&deleted_response(def, cur))
            }
            Err(store::Error::Conflict { .. }) => Err(ApiError::conflict(def.plural, def.group, name, RACED)),
            Err(store::Error::NotFound { .. }) => Err(ApiError::not_found(def.plural, def.group, name)),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn delete_collection(&self, def: &ResourceDef, ns: Option<&str>, ctx: &Ctx) -> ApiResult<Resp> {
        let sel = Selectors::from_ctx(def, ctx)?;
        let page = self.store.list(&def.ns_prefix(ns), None, 0).await?;
        let mut items = Vec::new();
        for kv in &page.kvs {
            let obj = to_obj(kv)?;
            if !sel.matches(def, &obj) {
                continue;
            }
            if !ctx.dry_run() {
                match self.store.delete(&kv.key, None).await {
                    Ok(_) | Err(store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            items.push(obj);
        }
        ok(&json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(),
                   "metadata": {"resourceVersion": page.revision.to_string()}, "items": items}))
    }
}

/// How a DELETE treats the object's dependents (DeleteOptions.propagationPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// Delete the owner now; the garbage collector removes dependents afterwards.
    Background,
    /// The owner stays (terminating) until dependents that block it are gone.
    Foreground,
    /// Dependents lose their ownerReference and stay.
    Orphan,
}

/// The policy from the query (`propagationPolicy`, legacy `orphanDependents`) or the
/// DeleteOptions body; Background when neither says, as for every kind kubectl deletes.
fn propagation_policy(ctx: &Ctx, opts: &Value) -> ApiResult<Propagation> {
    let named = ctx.q("propagationPolicy").or_else(|| opts.get("propagationPolicy").and_then(|p| p.as_str()));
    let orphan = match ctx.q("orphanDependents") {
        Some(v) => Some(v == "true"),
        None => opts.get("orphanDependents").and_then(|o| o.as_bool()),
    };
    match (named, orphan) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "orphanDependents and propagationPolicy may not both be set; use propagationPolicy",
        )),
        (Some("Background"), None) | (None, None | Some(false)) => Ok(Propagation::Background),
        (Some("Foreground"), None) => Ok(Propagation::Foreground),
        (Some("Orphan"), None) | (None, Some(true)) => Ok(Propagation::Orphan),
        (Some(other), None) => Err(ApiError::bad_request(format!(
            "unsupported propagationPolicy {other:?}: must be Background, Foreground or Orphan"
        ))),
    }
}

/// The finalizer a Foreground or Orphan delete must add before the object can go,
/// or `None` when nothing needs adding. Only kinds the garbage collector watches get
/// one (anything else would wait forever), and an object already being deleted keeps
/// the policy it was deleted with.
fn policy_finalizer(def: &ResourceDef, cur: &Value, policy: Propagation) -> Option<&'static str> {
    let f = match policy {
        Propagation::Background => return None,
        Propagation::Foreground => finalizers::FOREGROUND_DELETION,
        Propagation::Orphan => finalizers::ORPHAN,
    };
    if !finalizers::GARBAGE_COLLECTED_KINDS.contains(&def.kind) || cur.pointer("/metadata/deletionTimestamp").is_some()
    {
        return None;
    }
    let present = cur
        .pointer("/metadata/finalizers")
        .and_then(|f| f.as_array())
        .is_some_and(|fs| fs.iter().any(|x| x.as_str() == Some(f)));
    (!present).then_some(f)
}

/// What the bootstrap objects need to know about this server.
#[derive(Debug, Clone)]
pub struct BootstrapInfo {
    /// The `kubernetes` Service's ClusterIP (first address of the service CIDR).
    pub service_ip: std::net::Ipv4Addr,
    /// Where clients reach the API server (the `kubernetes` endpoints).
    pub advertise: std::net::IpAddr,
    pub port: u16,
}

async fn put(store: &dyn store::Store, key: &str, obj: &Value) -> ApiResult<()> {
    match store.create(key, to_bytes(obj)).await {
        Ok(_) => Ok(()),
        Err(store::Error::AlreadyExists { .. }) => {
            // Keep identity (uid, creationTimestamp) and only refresh the rest.
            let cur = store.get(key).await?.map(|kv| to_obj(&kv)).transpose()?;
            let mut o = obj.clone();
            if let Some(c) = cur {
                if spec_part(&c) == spec_part(obj) {
                    return Ok(());
                }
                o["metadata"] = c["metadata"].clone();
            }
            store.update(key, to_bytes(&o), None).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates the system namespaces if they are missing (first start), and the `default/kubernetes`
/// Service with endpoints pointing at this server (refreshed on every start).
pub async fn bootstrap(store: &dyn store::Store, info: &BootstrapInfo) -> ApiResult<()> {
    let def = by_kind("Namespace").unwrap();
    for ns in SYSTEM_NAMESPACES {
        let mut obj = json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {
            "name": ns, "uid": meta::new_uid(), "creationTimestamp": meta::now(),
            "labels": {"kubernetes.io/metadata.name": ns}}});
        validation::default("Namespace", &mut obj);
        match store.create(&def.key(None, ns), to_bytes(&obj)).await {
            Ok(_) => tracing::info!(namespace = ns, "created system namespace"),
            Err(store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let meta = |labels: Value| {
        json!({"name": "kubernetes", "namespace": "default", "uid": meta::new_uid(),
        "creationTimestamp": meta::now(), "labels": labels})
    };
    let ip = info.service_ip.to_string();
    let svc = json!({"kind": "Service", "apiVersion": "v1",
        "metadata": meta(json!({"component": "apiserver", "provider": "kubernetes"})),
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                 "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": info.port}]},
        "status": {"loadBalancer": {}}});
    let svc_def = by_kind("Service").unwrap();
    if store.get(&svc_def.key(Some("default"), "kubernetes")).await?.is_none() {
        put(store, &svc_def.key(Some("default"), "kubernetes"), &svc).await?;
    }
    let addr = info.advertise.to_string();
    let eps = json!({"kind": "Endpoints", "apiVersion": "v1", "metadata": meta(json!({"endpointslice.kubernetes.io/skip-mirror": "true"})),
        "subsets": [{"addresses": [{"ip": addr}], "ports": [{"name": "https", "port": info.port, "protocol": "TCP"}]}]});
    put(store, &by_kind("Endpoints").unwrap().key(Some("default"), "kubernetes"), &eps).await?;
    let slice = json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": meta(json!({"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "skiff-control"})),
        "addressType": if info.advertise.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": info.port, "protocol": "TCP"}]});
    put(store, &by_kind("EndpointSlice").unwrap().key(Some("default"), "kubernetes"), &slice).await?;
    bootstrap_rbac(store).await
}

/// Bootstrap RBAC policy, reconciled on every start: `cluster-admin` for
/// `system:masters`, `view` for read-only users to bind, `system:node` for the node
/// agents (group `system:nodes`; their client certificates carry `O=system:nodes`), and
/// `system:basic-user` (ask "who am I") for every authenticated user.
async fn bootstrap_rbac(store: &dyn store::Store) -> ApiResult<()> {
    const G: &str = "rbac.authorization.k8s.io";
    let read = json!(["get", "list", "watch"]);
    let meta = |name: &str| {
        json!({"name": name, "uid": meta::new_uid(), "creationTimestamp": meta::now(),
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}})
    };
    let roles = [
        (
            "cluster-admin",
            json!([
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        ),
        (
            "view",
            json!([{"apiGroups": ["", "apps", "discovery.k8s.io", "coordination.k8s.io"],
            "resources": ["pods", "pods/status", "services", "endpoints", "endpointslices", "configmaps", "deployments",
                          "deployments/scale", "replicasets", "replicasets/scale", "events", "namespaces", "serviceaccounts", "leases"],
            "verbs": read}]),
        ),
        (
            "system:node",
            json!([
            {"apiGroups": [""], "resources": ["pods", "services", "endpoints", "nodes", "configmaps", "secrets", "namespaces"], "verbs": read},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
            {"apiGroups": [""], "resources": ["nodes", "nodes/status", "pods/status"], "verbs": ["create", "update", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "update", "patch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "patch"]}]),
        ),
        (
            "system:basic-user",
            json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]),
        ),
    ];
    let role_def = by_kind("ClusterRole").unwrap();
    for (name, rules) in roles {
        let obj =
            json!({"kind": "ClusterRole", "apiVersion": format!("{G}/v1"), "metadata": meta(name), "rules": rules});
        put(store, &role_def.key(None, name), &obj).await?;
    }
    let binding_def = by_kind("ClusterRoleBinding").unwrap();
    let subject = |kind: &str, name: &str| json!([{"apiGroup": G, "kind": kind, "name": name}]);
    let controllers = json!([
        {"apiGroup": G, "kind": "User", "name": crate::auth::CONTROLLER_USER},
        {"apiGroup": G, "kind": "User", "name": crate::auth::SCHEDULER_USER}]);
    for (name, role, subjects) in [
        ("cluster-admin", "cluster-admin", subject("Group", "system:masters")),
        ("system:node", "system:node", subject("Group", "system:nodes")),
        ("system:basic-user", "system:basic-user", subject("Group", crate::auth::AUTHENTICATED)),
        // The in-process scheduler and controllers own most kinds; rather than one role
        // per controller (as upstream), one binding to cluster-admin, named for them.
        ("system:skiff-controllers", "cluster-admin", controllers),
    ] {
        let obj = json!({"kind": "ClusterRoleBinding", "apiVersion": format!("{G}/v1"), "metadata": meta(name),
            "roleRef": {"apiGroup": G, "kind": "ClusterRole", "name": role},
            "subjects": subjects});
        put(store, &binding_def.key(None, name), &obj).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(query: &[(&str, &str)]) -> Ctx {
        Ctx {
            query: query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            accept: String::new(),
            content_type: String::new(),
            body: Bytes::new(),
            user: crate::auth::UserInfo { name: "test".into(), groups: vec![] },
        }
    }

    #[test]
    fn propagation_policy_from_query_or_body() {
        let none = json!({});
        assert_eq!(propagation_policy(&ctx(&[]), &none).unwrap(), Propagation::Background);
        let fg = json!({"propagationPolicy": "Foreground"});
        assert_eq!(propagation_policy(&ctx(&[]), &fg).unwrap(), Propagation::Foreground);
        let q = ctx(&[("propagationPolicy", "Orphan")]);
        assert_eq!(propagation_policy(&q, &none).unwrap(), Propagation::Orphan);
        let legacy = json!({"orphanDependents": true});
        assert_eq!(propagation_policy(&ctx(&[]), &legacy).unwrap(), Propagation::Orphan);
        assert!(propagation_policy(&ctx(&[("propagationPolicy", "Sideways")]), &none).is_err());
        assert!(propagation_policy(&q, &legacy).is_err());
    }

    #[test]
    fn finalizers_only_for_collected_kinds_and_live_objects() {
        let rs = by_kind("ReplicaSet").unwrap();
        let live = json!({"metadata": {"name": "x"}});
        assert_eq!(policy_finalizer(rs, &live, Propagation::Foreground), Some("foregroundDeletion"));
        assert_eq!(policy_finalizer(rs, &live, Propagation::Orphan), Some("orphan"));
        assert_eq!(policy_finalizer(rs, &live, Propagation::Background), None);
        let has = json!({"metadata": {"name": "x", "finalizers": ["orphan"]}});
        assert_eq!(policy_finalizer(rs, &has, Propagation::Orphan), None);
        let terminating = json!({"metadata": {"name": "x", "deletionTimestamp": "2020-01-01T00:00:00Z"}});
        assert_eq!(policy_finalizer(rs, &terminating, Propagation::Foreground), None);
        // The collector does not watch ConfigMaps or Namespaces: their deletes stay Background.
        assert_eq!(policy_finalizer(by_kind("ConfigMap").unwrap(), &live, Propagation::Orphan), None);
        assert_eq!(policy_finalizer(by_kind("Namespace").unwrap(), &live, Propagation::Foreground), None);
    }
}
