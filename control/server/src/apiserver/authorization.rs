//! The authorization.k8s.io reviews, answered from the server's own authorizer chain
//! (node authorizer, bootstrap policy, RBAC) and never stored: SelfSubjectAccessReview
//! ("may I", `kubectl auth can-i`), SubjectAccessReview and LocalSubjectAccessReview
//! ("may they", for callers RBAC lets create them, as upstream), and
//! SelfSubjectRulesReview (`kubectl auth can-i --list`).
//!
//! It must not decide anything itself: every answer is the authorizer's.

use http::StatusCode;
use serde_json::{Value, json};

use super::api_server::ApiServer;
use super::decode::{decode_body, typed_decode};
use super::meta;
use super::request::{Ctx, Resp, json_response};
use super::resource_def::ResourceDef;
use super::status::{ApiError, ApiResult, Cause};
use crate::auth::UserInfo;
use crate::auth::authz::{Attributes, Decision};

const GROUP: &str = "authorization.k8s.io";

fn s(v: &Value, ptr: &str) -> Option<String> {
    v.pointer(ptr).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from)
}

/// The attributes a review's spec asks about.
fn attributes(spec: &Value) -> Result<Attributes, Cause> {
    let res = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let non = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    match (res, non) {
        (Some(r), None) => Ok(Attributes::Resource {
            verb: s(r, "/verb").unwrap_or_default(),
            group: s(r, "/group").unwrap_or_default(),
            resource: s(r, "/resource").unwrap_or_default(),
            subresource: s(r, "/subresource"),
            namespace: s(r, "/namespace"),
            name: s(r, "/name"),
        }),
        (None, Some(n)) => Ok(Attributes::NonResource {
            verb: s(n, "/verb").unwrap_or_default(),
            path: s(n, "/path").unwrap_or_default(),
        }),
        _ => Err(Cause::invalid(
            "spec.resourceAttributes",
            res.unwrap_or(&Value::Null),
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// The user a (Local)SubjectAccessReview asks about: its `user` and `groups`.
fn subject(spec: &Value) -> Result<UserInfo, Cause> {
    let user = s(spec, "/user").unwrap_or_default();
    let groups: Vec<String> = spec
        .get("groups")
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).map(String::from).collect())
        .unwrap_or_default();
    if user.is_empty() && groups.is_empty() {
        return Err(Cause::invalid("spec.user", &json!(""), "at least one of user or group must be specified"));
    }
    Ok(UserInfo { name: user, groups })
}

/// Drops duplicate rules and splits the rest into the review's resource and
/// non-resource rules; `incomplete` when the authorizer grants more than it can list.
fn rules_status(rules: Vec<Value>, incomplete: bool) -> Value {
    let list = |r: &Value, f: &str| r.get(f).cloned().filter(|v| v.is_array()).unwrap_or(json!([]));
    let (mut resource, mut non_resource) = (Vec::new(), Vec::new());
    for r in &rules {
        if r.get("nonResourceURLs").and_then(Value::as_array).is_some_and(|u| !u.is_empty()) {
            let v = json!({"verbs": list(r, "verbs"), "nonResourceURLs": list(r, "nonResourceURLs")});
            if !non_resource.contains(&v) {
                non_resource.push(v);
            }
        } else {
            let v = json!({"verbs": list(r, "verbs"), "apiGroups": list(r, "apiGroups"),
                "resources": list(r, "resources"), "resourceNames": list(r, "resourceNames")});
            if !resource.contains(&v) {
                resource.push(v);
            }
        }
    }
    let mut status = json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": incomplete});
    if incomplete {
        status["evaluationError"] = json!("node authorizer does not support user rule resolution");
    }
    status
}

impl ApiServer {
    /// `POST` of one of the reviews: decode and check the request, ask the authorizer,
    /// answer with the request and its status (201, as upstream).
    pub(crate) fn review(&self, def: &ResourceDef, ns: Option<&str>, ctx: &Ctx) -> ApiResult<Resp> {
        let body = decode_body(&ctx.content_type, &ctx.body)?;
        if let Some(k) = body.get("kind").and_then(Value::as_str)
            && k != def.kind
        {
            return Err(ApiError::bad_request(format!("expected kind {}, got {k}", def.kind)));
        }
        let mut obj = typed_decode(def, body, ctx.strict())?;
        let name = s(&obj, "/metadata/name").unwrap_or_default();
        let spec = obj.get("spec").cloned().unwrap_or(json!({}));
        let status = match def.kind {
            "SelfSubjectRulesReview" => {
                let Some(target) = s(&spec, "/namespace") else {
                    return Err(ApiError::bad_request("no namespace on request"));
                };
                rules_status(self.authz.rules_for(&ctx.user, Some(&target)), self.authz.rules_incomplete(&ctx.user))
            }
            kind => {
                let attrs = attributes(&spec);
                let user = if kind == "SelfSubjectAccessReview" { Ok(ctx.user.clone()) } else { subject(&spec) };
                let (attrs, user) = match (attrs, user) {
                    (Ok(a), Ok(u)) => (a, u),
                    (a, u) => {
                        let causes = [a.err(), u.err()].into_iter().flatten().collect();
                        return Err(ApiError::invalid(def.kind, GROUP, &name, causes));
                    }
                };
                if kind == "LocalSubjectAccessReview" {
                    let ns = ns.unwrap_or("");
                    match &attrs {
                        Attributes::Resource { namespace, .. } if namespace.as_deref() == Some(ns) => {}
                        Attributes::Resource { .. } => {
                            return Err(ApiError::bad_request(format!(
                                "spec.resourceAttributes.namespace must match namespace: {ns}"
                            )));
                        }
                        Attributes::NonResource { .. } => {
                            return Err(ApiError::invalid(
                                def.kind,
                                GROUP,
                                &name,
                                vec![Cause::invalid(
                                    "spec.nonResourceAttributes",
                                    spec.get("nonResourceAttributes").unwrap_or(&Value::Null),
                                    "disallowed on this kind of request",
                                )],
                            ));
                        }
                    }
                }
                let decision = self.authz.authorize(&user, &attrs);
                tracing::debug!(kind, requester = %ctx.user.name, subject = %user.name, ?attrs, ?decision, "access review");
                match decision {
                    Decision::Allow => json!({"allowed": true}),
                    Decision::Deny(_) => json!({"allowed": false}),
                }
            }
        };
        obj["status"] = status;
        obj["kind"] = json!(def.kind);
        obj["apiVersion"] = json!(def.api_version());
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("creationTimestamp".into(), json!(meta::now()));
        } else {
            obj["metadata"] = json!({"creationTimestamp": meta::now()});
        }
        Ok(json_response(StatusCode::CREATED, &obj))
    }
}
