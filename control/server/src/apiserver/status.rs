//! API errors and their wire form: every failure leaves the server as a `metav1.Status`
//! with the code, reason and (for validation) field causes Kubernetes clients expect.
//!
//! Handlers return `ApiError`; this module must not decide *whether* something fails.

use serde_json::{Value, json};

/// One field-level cause of a 422 Invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// FieldValueRequired, FieldValueInvalid, FieldValueNotSupported, FieldValueDuplicate…
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Self { reason: "FieldValueRequired", field: field.into(), message: "Required value".into() }
    }
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl std::fmt::Display) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            v => v.to_string(),
        };
        Self { reason: "FieldValueInvalid", field: field.into(), message: format!("Invalid value: {shown}: {detail}") }
    }
    pub fn not_supported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Self {
        let quoted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: {value}: supported values: {}", quoted.join(", ")),
        }
    }
}

/// A failed request, ready to become a Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// (kind = resource plural or Kind, name, group); boxed to keep errors small.
    pub details: Option<Box<(String, String, Option<String>)>>,
    pub causes: Vec<Cause>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

pub type ApiResult<T> = Result<T, ApiError>;

fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None, causes: Vec::new() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }
    /// A 403 about one object: `<resource> "<name>" is forbidden: <why>`.
    pub fn forbidden_object(resource: &str, group: &str, name: &str, why: &str) -> Self {
        let mut e =
            Self::new(403, "Forbidden", format!("{} \"{name}\" is forbidden: {why}", qualified(resource, group)));
        e.details = Some(Box::new((resource.into(), name.into(), Some(group.into()))));
        e
    }
    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{} \"{name}\" not found", qualified(resource, group)));
        e.details = Some(Box::new((resource.into(), name.into(), Some(group.into()))));
        e
    }
    pub fn path_not_found() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }
    pub fn method_not_allowed(verb: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({verb})"),
        )
    }
    pub fn already_exists(resource: &str, group: &str, name: &str) -> Self {
        let mut e =
            Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", qualified(resource, group)));
        e.details = Some(Box::new((resource.into(), name.into(), Some(group.into()))));
        e
    }
    pub fn conflict(resource: &str, group: &str, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": {why}", qualified(resource, group)),
        );
        e.details = Some(Box::new((resource.into(), name.into(), Some(group.into()))));
        e
    }
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "TooManyRequests", message)
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn too_large() -> Self {
        Self::new(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728")
    }
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/strategic-merge-patch+json, application/json-patch+json, application/apply-patch+yaml (got {ct:?})"
            ),
        )
    }
    pub fn not_acceptable(accept: &str) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!("only the following media types are accepted: application/json, application/yaml (got {accept:?})"),
        )
    }
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let msg = if summary.len() == 1 { summary[0].clone() } else { format!("[{}]", summary.join(", ")) };
        let mut e = Self::new(422, "Invalid", format!("{} \"{name}\" is invalid: {msg}", qualified(kind, group)));
        e.details = Some(Box::new((kind.into(), name.into(), Some(group.into()))));
        e.causes = causes;
        e
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// The `metav1.Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.details.is_some() || !self.causes.is_empty() {
            // Apply conflicts name no object, only their causes, as upstream's.
            let mut d = json!({});
            if let Some(d0) = &self.details {
                let (kind, name, group) = &**d0;
                d = json!({ "name": name, "kind": kind });
                if let Some(g) = group.as_ref().filter(|g| !g.is_empty()) {
                    d["group"] = json!(g);
                }
            }
            if !self.causes.is_empty() {
                d["causes"] = Value::Array(
                    self.causes
                        .iter()
                        .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                        .collect(),
                );
            }
            s["details"] = d;
        }
        s
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        match e {
            crate::store::Error::Compacted { requested, compacted } => {
                ApiError::gone(format!("too old resource version: {requested} ({compacted})"))
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}
