//! What a handler gets from the HTTP request and gives back: the request context
//! (`Ctx`), the verbs and subresources as enums, and the response helpers.
//!
//! A leaf: it must not know the store, the resource table or any handler.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use serde_json::Value;

use super::status::{ApiError, ApiResult};
use crate::auth::UserInfo;

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

/// 200 with `v`.
pub(crate) fn ok(v: &Value) -> ApiResult<Resp> {
    Ok(json_response(StatusCode::OK, v))
}

pub(crate) fn error_response(e: &ApiError) -> Resp {
    json_response(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.to_status())
}

/// The Kubernetes verb of a resource request (what RBAC rules name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
        }
    }
}

/// The subresources the server knows; any other path segment is a 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subresource {
    /// `/status`: writes change only `.status`.
    Status,
    /// `/scale`: the autoscaling/v1 Scale view of `spec.replicas`.
    Scale,
    /// `pods/<name>/binding`: the scheduler sets `spec.nodeName` once.
    Binding,
    /// `serviceaccounts/<name>/token`: the TokenRequest API.
    Token,
    /// `certificatesigningrequests/<name>/approval`: writes change only the conditions.
    Approval,
    /// `pods/<name>/eviction`: the policy/v1 Eviction API (`kubectl drain`).
    Eviction,
    /// `namespaces/<name>/finalize`: writes change only `spec.finalizers`.
    Finalize,
}

impl Subresource {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "status" => Self::Status,
            "scale" => Self::Scale,
            "binding" => Self::Binding,
            "token" => Self::Token,
            "approval" => Self::Approval,
            "finalize" => Self::Finalize,
            "eviction" => Self::Eviction,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Scale => "scale",
            Self::Binding => "binding",
            Self::Token => "token",
            Self::Approval => "approval",
            Self::Finalize => "finalize",
            Self::Eviction => "eviction",
        }
    }
}

/// Everything a handler needs from the request besides the target.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub query: HashMap<String, String>,
    pub accept: String,
    pub content_type: String,
    pub body: Bytes,
    pub user: UserInfo,
    /// The User-Agent header: its first part names the field manager of a write that
    /// does not name one.
    pub user_agent: String,
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
    /// `fieldValidation=Strict`: unknown fields are an error instead of being dropped.
    pub fn strict(&self) -> bool {
        self.q("fieldValidation") == Some("Strict")
    }
    /// Who a write's fields are recorded for: `fieldManager`, else the User-Agent's
    /// program name (`kubectl/v1.32.0 (linux/amd64)…` → `kubectl`), as upstream.
    pub fn field_manager(&self) -> &str {
        self.q("fieldManager")
            .or_else(|| self.user_agent.split('/').next().filter(|m| !m.is_empty()))
            .unwrap_or("unknown")
    }
}
