//! Label and field selectors of LIST, WATCH and DELETE collection requests, and the
//! field values a field selector reads (which fields each kind offers is its
//! strategy's).

use serde_json::{Value, json};
use skiff_api::selector::{FieldSelector, LabelSelector};

use super::request::Ctx;
use super::resource_def::ResourceDef;
use super::status::{ApiError, ApiResult};

/// The value of a selectable field; `Err` for fields this kind cannot be selected by.
pub(crate) fn field_value(def: &ResourceDef, obj: &Value, field: &str) -> Result<Option<String>, ()> {
    if field != "metadata.name" && field != "metadata.namespace" && !def.strategy.selectable_fields().contains(&field) {
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
