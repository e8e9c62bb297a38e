//! The Kubernetes REST API over the store: authenticate, route, authorize, then hand
//! to a handler. The request path is kept short and visible here:
//! `serve` → `authenticate` → `route` → `authorize` → `handlers::*` → store.
//! (A ServiceAccount token is authenticated in two steps: `auth` checks the signature,
//! then `authentication` checks the store that its ServiceAccount still exists.)
//!
//! This module owns HTTP concerns (body limits, content negotiation, Status errors);
//! it must not hold per-kind behaviour (see `validation`, `table`, `resources`) or
//! storage details (see `store`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use serde_json::Value;

use crate::auth::UserInfo;
use crate::auth::authn::{Authenticator, Outcome};
use crate::auth::authz::{Attributes, Authorizer, Decision};
use crate::auth::serviceaccount::Keys;
use crate::store::Store;
use crate::tls::x509::Subject;

pub mod allocator;
mod authentication;
pub mod decode;
pub mod discovery;
mod handlers;
pub mod local;
pub mod meta;
mod openapi;
pub mod patch;
mod protobuf;
mod protobuf_workloads;
mod rawjson;
pub mod resources;
#[cfg(test)]
mod robustness;
pub mod status;
pub mod table;
pub mod validation;
mod watch;

use resources::ResourceDef;
use status::{ApiError, ApiResult};

/// Request bodies above this are refused with 413, as the real API server does.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub type Body = BoxBody<Bytes, Infallible>;
pub type Resp = Response<Body>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

pub fn json_response(code: StatusCode, v: &Value) -> Resp {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(serde_json::to_vec(v).unwrap_or_default()))
        .unwrap()
}

fn error_response(e: &ApiError) -> Resp {
    json_response(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.to_status())
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
    subresource: Option<String>,
    verb: &'static str,
}

/// Everything a handler needs from the request besides the target.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub query: HashMap<String, String>,
    pub accept: String,
    pub content_type: String,
    pub body: Bytes,
    pub user: UserInfo,
}

impl Ctx {
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }
    pub fn wants_table(&self) -> bool {
        self.accept.contains("as=Table")
    }
    pub fn dry_run(&self) -> bool {
        self.query.contains_key("dryRun")
    }
}

pub struct ApiServer {
    pub(crate) store: Arc<dyn Store>,
    authn: Authenticator,
    authz: Box<dyn Authorizer>,
    pub(crate) service_cidr: allocator::ServiceCidr,
    /// Serialises Service creation so two Services never get the same ClusterIP.
    pub(crate) alloc_lock: tokio::sync::Mutex<()>,
    /// Signs the tokens the TokenRequest subresource hands out.
    pub(crate) sa_keys: Arc<Keys>,
}

impl ApiServer {
    pub fn new(
        store: Arc<dyn Store>,
        authn: Authenticator,
        authz: Box<dyn Authorizer>,
        service_cidr: allocator::ServiceCidr,
        sa_keys: Arc<Keys>,
    ) -> Self {
        Self { store, authn, authz, service_cidr, alloc_lock: tokio::sync::Mutex::new(()), sa_keys }
    }

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
        let (resp, user) = self.serve_inner(req, subject).await;
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

    async fn serve_inner<B>(&self, req: http::Request<B>, subject: Option<Subject>) -> (Resp, Option<String>)
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let header = |h: header::HeaderName| req.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
        let user = match self.authn.authenticate(subject.as_ref(), header(header::AUTHORIZATION).as_deref()) {
            Outcome::User(u) => u,
            Outcome::Anonymous => return (error_response(&ApiError::unauthorized()), None),
            Outcome::Invalid(why) => {
                tracing::info!(reason = why, "rejected credentials");
                return (error_response(&ApiError::unauthorized()), None);
            }
            Outcome::ServiceAccount(claims) => match self.service_account_user(&claims).await {
                Ok(u) => u,
                Err(why) => {
                    tracing::info!(reason = why, user = %claims.username(), "rejected ServiceAccount token");
                    return (error_response(&ApiError::unauthorized()), None);
                }
            },
        };
        let name = Some(user.name.clone());
        let (parts, body) = req.into_parts();
        let query: HashMap<String, String> =
            parts.uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        let target = match route(&parts.method, parts.uri.path(), &query) {
            Ok(t) => t,
            Err(e) => return (error_response(&e), name),
        };
        let attrs = match &target {
            Target::NonResource => Attributes::NonResource {
                verb: parts.method.as_str().to_lowercase(),
                path: parts.uri.path().to_string(),
            },
            Target::Resource(r) => Attributes::Resource {
                verb: r.verb.to_string(),
                group: r.def.group.to_string(),
                resource: r.def.plural.to_string(),
                subresource: r.subresource.clone(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            },
        };
        if let Decision::Deny(why) = self.authz.authorize(&user, &attrs) {
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
            return (error_response(&ApiError::forbidden(msg)), name);
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
                return (error_response(&err), name);
            }
        };
        let h = |n: header::HeaderName| parts.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let ctx = Ctx { query, accept: h(header::ACCEPT), content_type: h(header::CONTENT_TYPE), body, user };
        let result = match target {
            Target::NonResource => self.non_resource(parts.uri.path()),
            Target::Resource(r) => self.resource(r, ctx).await,
        };
        (result.unwrap_or_else(|e| error_response(&e)), name)
    }

    fn non_resource(&self, path: &str) -> ApiResult<Resp> {
        let path = path.trim_end_matches('/');
        let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match segs.as_slice() {
            ["version"] => ok(discovery::version()),
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
        let ns = r.namespace.as_deref();
        let name = r.name.as_deref();
        let sub = r.subresource.as_deref();
        if let Some(s) = sub {
            let allowed = (s == "status" && r.def.status)
                || (s == "scale" && r.def.scale)
                || (s == "binding" && r.def.kind == "Pod" && r.verb == "create")
                || (s == "token" && r.def.kind == "ServiceAccount" && r.verb == "create");
            if !allowed {
                return Err(ApiError::path_not_found());
            }
        }
        if r.def.create_only() {
            return match (r.verb, name, sub) {
                ("create", None, None) => authentication::self_subject_review(&ctx.user),
                (verb, _, _) => Err(ApiError::method_not_allowed(verb)),
            };
        }
        match (r.verb, name) {
            ("get", Some(n)) => self.get(r.def, ns, n, sub, &ctx).await,
            ("list", _) => self.list(r.def, ns, &ctx).await,
            ("watch", _) => self.watch(r.def, ns, name, &ctx).await,
            ("create", None) => self.create(r.def, ns, &ctx).await,
            ("create", Some(n)) if sub == Some("binding") => self.bind(r.def, ns, n, &ctx).await,
            ("create", Some(n)) if sub == Some("token") => match ns {
                Some(ns) => self.create_token(ns, n, &ctx).await,
                None => Err(ApiError::path_not_found()),
            },
            ("update", Some(n)) => self.update(r.def, ns, n, sub, &ctx).await,
            ("patch", Some(n)) => self.patch(r.def, ns, n, sub, &ctx).await,
            ("delete", Some(n)) => self.delete(r.def, ns, n, &ctx).await,
            ("deletecollection", None) => self.delete_collection(r.def, ns, &ctx).await,
            (verb, _) => Err(ApiError::method_not_allowed(verb)),
        }
    }
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
    let verb = match (method, name) {
        (&Method::GET, _) if is_watch => "watch",
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) => "list",
        (&Method::POST, None) => "create",
        // pods/binding: the scheduler's way to set spec.nodeName exactly once.
        (&Method::POST, Some(_)) if sub == Some("binding") && def.kind == "Pod" => "create",
        // serviceaccounts/token: the TokenRequest API (`kubectl create token`).
        (&Method::POST, Some(_)) if sub == Some("token") && def.kind == "ServiceAccount" => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
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

pub use handlers::{BootstrapInfo, bootstrap};
