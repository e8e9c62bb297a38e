//! One request's way through the server: `serve` → authenticate → `route` →
//! authorize → read the body → dispatch to a handler (`handlers`, `watch`,
//! `authentication`). It owns the HTTP concerns (body limits, the non-resource paths,
//! Status errors) and must not hold per-kind behaviour or storage details.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use super::api_server::ApiServer;
use super::object::Named;
use super::request::{Ctx, Resp, Subresource, Verb, error_response, full, json_response};
use super::resource_def::ResourceDef;
use super::resources;
use super::status::{ApiError, ApiResult};
use super::{audit, authentication, discovery, openapi, views};
use crate::auth::authn::Outcome;
use crate::auth::authz::{Attributes, Decision};
use crate::tls::x509::Subject;

/// Request bodies above this are refused with 413, as the real API server does.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A non-resource path whose handler panics on purpose, set only by the hidden
/// `--debug-panic-path` flag, which only the tests of panic recovery pass; unset, no
/// request can reach such a handler.
static DEBUG_PANIC_PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes requests for `path` panic in their handler (`--debug-panic-path`), for
/// testing that a panic answers 500 and is audited at stage Panic.
pub fn debug_panic_on(path: String) {
    let _ = DEBUG_PANIC_PATH.set(path);
}

/// What the URL addresses.
#[derive(Debug)]
enum Target {
    NonResource,
    Resource(ResourceRequest),
}

#[derive(Debug)]
struct ResourceRequest {
    def: &'static ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
    /// As the URL says it (RBAC sees it so); `resource` turns it into a `Subresource`.
    subresource: Option<String>,
    verb: Verb,
}

impl ApiServer {
    /// Serves one request from a connection whose verified client certificate (if any)
    /// has `subject`.
    pub async fn serve<B>(self: Arc<Self>, req: http::Request<B>, subject: Option<Subject>) -> Resp
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let started = std::time::Instant::now();
        let mut record = self.audit.get().map(|a| {
            let mut r = a.new_record();
            r.request_uri = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let h = |n: header::HeaderName| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
            r.user_agent = h(header::USER_AGENT).unwrap_or_default();
            let remote = req.extensions().get::<audit::RemoteAddr>().map(|a| a.0.ip());
            r.source_ips = audit::source_ips(req.headers(), remote);
            r
        });
        let served = audit::CatchPanic::new(self.serve_inner(req, subject, record.as_mut())).await;
        let (mut resp, user, labels) = served.unwrap_or_else(|message| {
            tracing::error!(method = %method, path = %path, panic = %message, "a request's handler panicked");
            if let (Some(auditor), Some(r)) = (self.audit.get(), record.take()) {
                auditor.panicked(&r, &message);
            }
            (audit::panic_response(), None, None)
        });
        if let (Some(auditor), Some(record)) = (self.audit.get(), record) {
            resp = audit_response(auditor, &record, resp).await;
            if record.watch && auditor.level(&record).0 != audit::Level::None {
                // The watch's ResponseComplete, when its stream ends (or the client goes).
                let code = resp.status().as_u16();
                let server = self.clone();
                let (parts, body) = resp.into_parts();
                let on_end = move || {
                    if let Some(a) = server.audit.get() {
                        a.watch_complete(&record, code);
                    }
                };
                resp = Response::from_parts(parts, audit::OnEnd::wrap(body, Box::new(on_end)));
            }
        }
        if let Some(labels) = labels {
            crate::metrics::request_done(&labels, resp.status().as_u16(), started.elapsed());
        }
        tracing::debug!(
            method = %method,
            path = %path,
            user = user.as_deref().unwrap_or("-"),
            code = resp.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "request"
        );
        resp
    }

    /// The response, the user's name once known, and the request's metric labels once it
    /// is known what it addressed.
    async fn serve_inner<B>(
        &self,
        req: http::Request<B>,
        subject: Option<Subject>,
        mut audit: Option<&mut audit::Record>,
    ) -> (Resp, Option<String>, Option<crate::metrics::RequestLabels>)
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let header = |h: header::HeaderName| req.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
        let user = match self.authn.authenticate(subject.as_ref(), header(header::AUTHORIZATION).as_deref()) {
            Outcome::User(u) => u,
            Outcome::Anonymous => return (error_response(&ApiError::unauthorized()), None, None),
            Outcome::Invalid(why) => {
                tracing::info!(reason = why, "rejected credentials");
                return (error_response(&ApiError::unauthorized()), None, None);
            }
            Outcome::BootstrapToken(token) => match self.bootstrap_token_user(&token).await {
                Ok(u) => u,
                Err(why) => {
                    tracing::info!(reason = why, token_id = %token.id, "rejected bootstrap token");
                    return (error_response(&ApiError::unauthorized()), None, None);
                }
            },
            Outcome::ServiceAccount(claims) => match self.service_account_user(&claims).await {
                Ok(u) => u,
                Err(why) => {
                    tracing::info!(reason = why, user = %claims.username(), "rejected ServiceAccount token");
                    return (error_response(&ApiError::unauthorized()), None, None);
                }
            },
        };
        let user = match super::impersonation::impersonate(self.authz.as_ref(), user, req.headers()) {
            Ok(u) => u,
            Err(e) => return (error_response(&e), None, None),
        };
        let name = Some(user.name.clone());
        if let Some(a) = audit.as_deref_mut() {
            a.user = Some(user.clone());
        }
        if let Some(target) = super::node_proxy::ProxyTarget::parse(req.uri().path()) {
            let labels = target.metric_labels();
            return (self.node_proxy(req, target, &user).await, name, Some(labels));
        }
        if let Some(target) = super::metrics_api::Target::parse(req.uri().path()) {
            let labels = target.metric_labels();
            let resp = self.metrics_api(req.method(), req.uri().query(), target, &user).await;
            return (resp, name, Some(labels));
        }
        let (parts, body) = req.into_parts();
        let query: HashMap<String, String> =
            parts.uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        let target = match route(&parts.method, parts.uri.path(), &query) {
            Ok(t) => t,
            Err(e) => return (error_response(&e), name, None),
        };
        let labels = match &target {
            Target::NonResource => None,
            Target::Resource(r) => Some(r.metric_labels()),
        };
        let attrs = match &target {
            Target::NonResource => Attributes::NonResource {
                verb: parts.method.as_str().to_lowercase(),
                path: parts.uri.path().to_string(),
            },
            Target::Resource(r) => Attributes::Resource {
                verb: r.verb.as_str().to_string(),
                group: r.def.group.to_string(),
                resource: r.def.plural.to_string(),
                subresource: r.subresource.clone(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            },
        };
        let decision = self.authz.authorize(&user, &attrs);
        if let Some(a) = audit.as_deref_mut() {
            a.request = Some(audit_request(&attrs, &target));
            a.watch = matches!(&target, Target::Resource(r) if r.verb == Verb::Watch);
            a.decision = Some(match &decision {
                Decision::Allow => ("allow", String::new()),
                Decision::Deny(why) => ("forbid", why.clone()),
            });
        }
        if let Decision::Deny(why) = decision {
            let msg = match &target {
                Target::Resource(r) => {
                    let res = if r.def.group.is_empty() {
                        r.def.plural.to_string()
                    } else {
                        format!("{}.{}", r.def.plural, r.def.group)
                    };
                    match &r.name {
                        Some(n) => format!("{res} \"{n}\" is forbidden: {why}"),
                        None => format!("{res} is forbidden: {why}"),
                    }
                }
                Target::NonResource => format!("forbidden: {why}"),
            };
            return (error_response(&ApiError::forbidden(msg)), name, labels);
        }
        // Bodies are read only after authorization, so strangers cannot make us buffer 3 MiB.
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let err = if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    ApiError::too_large()
                } else {
                    ApiError::bad_request(format!("cannot read request body: {e}"))
                };
                return (error_response(&err), name, labels);
            }
        };
        let h = |n: header::HeaderName| parts.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if let Some(a) = audit
            && !body.is_empty()
        {
            a.request_object = super::decode::decode_body(&h(header::CONTENT_TYPE), &body).ok();
        }
        let ctx = Ctx {
            query,
            accept: h(header::ACCEPT),
            content_type: h(header::CONTENT_TYPE),
            body,
            user,
            user_agent: h(header::USER_AGENT),
        };
        let result = match target {
            Target::NonResource => self.non_resource(parts.uri.path()),
            Target::Resource(r) => self.resource(r, ctx).await,
        };
        (result.unwrap_or_else(|e| error_response(&e)), name, labels)
    }

    fn non_resource(&self, path: &str) -> ApiResult<Resp> {
        let path = path.trim_end_matches('/');
        if DEBUG_PANIC_PATH.get().is_some_and(|p| p.trim_end_matches('/') == path) {
            panic!("deliberate panic at {path} (--debug-panic-path)");
        }
        let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match segs.as_slice() {
            ["version"] => ok(discovery::version()),
            ["metrics"] => Ok(Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(full(crate::metrics::render()))
                .unwrap()),
            ["healthz"] | ["livez"] | ["readyz"] => {
                Ok(Response::builder().header(header::CONTENT_TYPE, "text/plain").body(full("ok")).unwrap())
            }
            ["api"] => ok(discovery::core_versions()),
            ["api", v] => discovery::resource_list("", v).map_or_else(|| Err(ApiError::path_not_found()), ok),
            ["apis"] => ok(discovery::group_list()),
            ["apis", g] => discovery::group(g).map_or_else(|| Err(ApiError::path_not_found()), ok),
            ["apis", g, v] => discovery::resource_list(g, v).map_or_else(|| Err(ApiError::path_not_found()), ok),
            ["openapi", "v3"] => ok(openapi::root()),
            ["openapi", "v3", rest @ ..] => {
                openapi::group_version(&rest.join("/")).map_or_else(|| Err(ApiError::path_not_found()), ok)
            }
            _ => Err(ApiError::path_not_found()),
        }
    }

    async fn resource(&self, r: ResourceRequest, ctx: Ctx) -> ApiResult<Resp> {
        if let Some(view) = views::of(r.def) {
            return self.view(view, r, ctx).await;
        }
        let ns = r.namespace.as_deref();
        let name = r.name.as_deref();
        let sub = match r.subresource.as_deref() {
            None => None,
            Some(s) => {
                let sub = Subresource::parse(s).ok_or_else(ApiError::path_not_found)?;
                let allowed = match sub {
                    Subresource::Status => r.def.status,
                    Subresource::Scale => r.def.scale,
                    Subresource::Approval => r.def.strategy.has_approval(),
                    Subresource::Finalize => r.def.strategy.finalized_by_spec() && r.verb == Verb::Update,
                    Subresource::Binding | Subresource::Token | Subresource::Eviction => {
                        r.verb == Verb::Create && r.def.strategy.create_subresources().contains(&sub)
                    }
                };
                if !allowed {
                    return Err(ApiError::path_not_found());
                }
                Some(sub)
            }
        };
        if r.def.create_only() {
            return match (r.verb, name, sub) {
                (Verb::Create, None, None) if r.def.kind == "SelfSubjectReview" => {
                    authentication::self_subject_review(&ctx.user)
                }
                (Verb::Create, None, None) => self.review(r.def, ns, &ctx),
                (verb, _, _) => Err(ApiError::method_not_allowed(verb.as_str())),
            };
        }
        match (r.verb, name, sub) {
            (Verb::Get, Some(n), _) => self.get(Named { def: r.def, ns, name: n, sub }, &ctx).await,
            (Verb::List, _, _) => self.list(r.def, ns, &ctx).await,
            (Verb::Watch, _, _) => {
                let open = crate::metrics::watch_opened(r.metric_labels());
                self.watch(r.def, ns, name, &ctx, open).await
            }
            (Verb::Create, None, _) => self.create(r.def, ns, &ctx).await,
            (Verb::Create, Some(n), Some(Subresource::Binding)) => self.bind(r.def, ns, n, &ctx).await,
            (Verb::Create, Some(n), Some(Subresource::Eviction)) => match ns {
                Some(ns) => self.evict(r.def, ns, n, &ctx).await,
                None => Err(ApiError::path_not_found()),
            },
            (Verb::Create, Some(n), Some(Subresource::Token)) => match ns {
                Some(ns) => self.create_token(ns, n, &ctx).await,
                None => Err(ApiError::path_not_found()),
            },
            (Verb::Update, Some(n), _) => self.update(Named { def: r.def, ns, name: n, sub }, &ctx).await,
            (Verb::Patch, Some(n), _) => self.patch(Named { def: r.def, ns, name: n, sub }, &ctx).await,
            (Verb::Delete, Some(n), _) => self.delete(r.def, ns, n, &ctx).await,
            (Verb::DeleteCollection, None, _) => self.delete_collection(r.def, ns, &ctx).await,
            (verb, _, _) => Err(ApiError::method_not_allowed(verb.as_str())),
        }
    }
}

impl ApiServer {
    /// A request to a kind served a second time (events.k8s.io/v1 Events,
    /// autoscaling/v1 HorizontalPodAutoscalers), served by the stored kind's handlers on
    /// the same objects (RBAC has already judged it under its own group and version).
    async fn view(&self, view: &'static views::View, r: ResourceRequest, ctx: Ctx) -> ApiResult<Resp> {
        let (group, version, plural) = view.stored;
        let stored =
            resources::find(group, version, plural).ok_or_else(|| ApiError::internal("stored kind not served"))?;
        let ctx = views::request_to_stored(view, r.def, r.verb, ctx)?;
        let watch = r.verb == Verb::Watch;
        let resp = Box::pin(self.resource(ResourceRequest { def: stored, ..r }, ctx)).await?;
        Ok(views::response_from_stored(view, resp, watch).await)
    }
}

impl ResourceRequest {
    fn metric_labels(&self) -> crate::metrics::RequestLabels {
        let verb = match self.verb {
            Verb::Get => "GET",
            Verb::List => "LIST",
            Verb::Watch => "WATCH",
            Verb::Create => "POST",
            Verb::Update => "PUT",
            Verb::Patch => "PATCH",
            Verb::Delete => "DELETE",
            Verb::DeleteCollection => "DELETECOLLECTION",
        };
        let scope = match (&self.name, &self.namespace) {
            (Some(_), _) => "resource",
            (None, Some(_)) => "namespace",
            (None, None) => "cluster",
        };
        crate::metrics::RequestLabels {
            verb,
            group: self.def.group.into(),
            version: self.def.version.into(),
            resource: self.def.plural.into(),
            subresource: self.subresource.clone().unwrap_or_default(),
            scope,
        }
    }
}

/// What the audit policy matches of a request.
fn audit_request(attrs: &Attributes, target: &Target) -> audit::Request {
    match attrs {
        Attributes::Resource { verb, group, resource, subresource, namespace, name } => audit::Request {
            verb: verb.clone(),
            path: String::new(),
            resource: Some(audit::ObjectRef {
                group: group.clone(),
                version: match target {
                    Target::Resource(r) => r.def.version.to_string(),
                    Target::NonResource => String::new(),
                },
                resource: resource.clone(),
                subresource: subresource.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
            }),
        },
        Attributes::NonResource { verb, path } => {
            audit::Request { verb: verb.clone(), path: path.clone(), resource: None }
        }
    }
}

/// Writes the audit events of a served request. A failure's Status and, at level
/// RequestResponse, the response object need the body, so it is read (never that of a
/// watch, which streams) and put back.
async fn audit_response(auditor: &audit::Auditor, record: &audit::Record, resp: Resp) -> Resp {
    let (level, _) = auditor.level(record);
    if level == audit::Level::None {
        return resp;
    }
    let code = resp.status().as_u16();
    if record.watch || (code < 400 && level < audit::Level::RequestResponse) {
        auditor.finish(record, code, None, None);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::warn!(error = %e, "reading a response for the audit log failed");
            auditor.finish(record, code, None, None);
            return Response::from_parts(parts, full(Bytes::new()));
        }
    };
    let obj: Option<Value> = serde_json::from_slice(&bytes).ok();
    let failure = obj.as_ref().filter(|_| code >= 400);
    auditor.finish(record, code, failure, obj.clone().filter(|_| code < 400));
    Response::from_parts(parts, full(bytes))
}

/// Maps method + path to a target. Non-resource paths (discovery, version, health)
/// are everything that is not `/api/v1/...` or `/apis/<g>/<v>/...` with a resource.
fn route(method: &Method, path: &str, query: &HashMap<String, String>) -> ApiResult<Target> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(Target::NonResource),
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            (Some(ns.to_string()), *plural, tail.first().copied(), tail.get(1).copied())
        }
        [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
        [] => return Ok(Target::NonResource),
    };
    if rest.len() > 5 {
        return Err(ApiError::path_not_found());
    }
    let def = resources::find(group, version, plural).ok_or_else(ApiError::path_not_found)?;
    if namespace.is_some() && !def.namespaced {
        return Err(ApiError::path_not_found());
    }
    let is_watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    // pods/binding (the scheduler's way to set spec.nodeName exactly once) and
    // serviceaccounts/token (the TokenRequest API) are created on a named object.
    let creates_sub = sub.and_then(Subresource::parse).is_some_and(|s| def.strategy.create_subresources().contains(&s));
    let verb = match (method, name) {
        (&Method::GET, _) if is_watch => Verb::Watch,
        (&Method::GET, Some(_)) => Verb::Get,
        (&Method::GET, None) => Verb::List,
        (&Method::POST, None) => Verb::Create,
        (&Method::POST, Some(_)) if creates_sub => Verb::Create,
        (&Method::PUT, Some(_)) => Verb::Update,
        (&Method::PATCH, Some(_)) => Verb::Patch,
        (&Method::DELETE, Some(_)) => Verb::Delete,
        (&Method::DELETE, None) => Verb::DeleteCollection,
        (m, _) => return Err(ApiError::method_not_allowed(m.as_str())),
    };
    Ok(Target::Resource(ResourceRequest {
        def,
        namespace,
        name: name.map(str::to_string),
        subresource: sub.map(str::to_string),
        verb,
    }))
}
