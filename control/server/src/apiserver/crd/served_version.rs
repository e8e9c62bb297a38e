//! What the registry holds for one served version of a custom resource. A leaf: the
//! registry (`crd`), the definition that builds these (`definition`) and the readers
//! (`openapi`, handlers) all import it, and it imports none of them.

use std::sync::Arc;

use serde_json::Value;

use super::columns::Column;
use crate::apiserver::resource_def::ResourceDef;
use crate::apiserver::views::view::View;

/// One served version of a custom resource.
pub struct Served {
    pub def: ResourceDef,
    /// The CRD's name (`<plural>.<group>`).
    pub crd: String,
    /// This version's `openAPIV3Schema`.
    pub schema: Arc<Value>,
    pub columns: Vec<Column>,
    pub scale: Option<ScalePaths>,
    pub categories: Vec<String>,
    /// For versions other than the storage version: the view that rewrites apiVersion.
    pub view: Option<&'static View>,
    /// Changes whenever the CRD's spec does (for OpenAPI document hashes).
    pub revision: u64,
}

/// The scale subresource's paths, as JSON pointers.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}
