//! What a served resource is: one line of the resource table (`resources`) or one
//! served version of a custom resource (`crd`), with the store keys it lives under.
//! Both build `ResourceDef`s; it knows neither, so each can import it without the
//! other.

use serde_json::Value;

use super::strategy::Strategy;

/// Checks an object's shape by decoding it into its k8s-openapi type and encoding it
/// back: wrong field types are rejected and unknown fields dropped, as the real API
/// server's decoder does. A custom resource's prunes by its CRD's schema (`crd`), so
/// this is a closure rather than a plain function.
pub type Decode = &'static (dyn Fn(Value) -> Result<Value, String> + Sync);

/// Adds the kind's OpenAPI schema (and those it refers to) to a generator and returns
/// the reference to it, for `/openapi/v3` (k8s-openapi's `schemars` descriptions).
pub type SchemaOf = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// Merges the second object into the first by the kind's k8s-openapi merge
/// (`DeepMerge`, which follows upstream's list and map types); `merge_shape` learns
/// the kind's field shapes from it.
pub type MergeOf = fn(Value, Value) -> Result<Value, String>;

/// One served resource: a group, version and plural, and its behaviour in the
/// generic verbs.
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    /// Has a `/status` subresource (the main resource then ignores status changes).
    pub status: bool,
    /// Has a `/scale` subresource over `spec.replicas`.
    pub scale: bool,
    /// In `kubectl get all`.
    pub all: bool,
    pub decode: Decode,
    pub schema: SchemaOf,
    pub merge: MergeOf,
    /// The kind's behaviour in the generic verbs.
    pub(crate) strategy: &'static dyn Strategy,
}

impl std::fmt::Debug for ResourceDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceDef")
            .field("group", &self.group)
            .field("version", &self.version)
            .field("plural", &self.plural)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The store key prefix of this resource (all namespaces).
    pub fn prefix(&self) -> String {
        prefix_of(self.group, self.plural)
    }

    pub fn ns_prefix(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.ns_prefix(ns))
    }

    /// Kinds that are never stored: the only verb is create, answered from the request
    /// itself (SelfSubjectReview = "who am I", `kubectl auth whoami`; the access and
    /// rules reviews of `kubectl auth can-i`).
    pub fn create_only(&self) -> bool {
        self.kind == "SelfSubjectReview" || self.group == "authorization.k8s.io"
    }

    /// Whether `metadata.generation` tracks spec changes (objects with a spec).
    pub fn has_spec(&self) -> bool {
        !matches!(
            self.kind,
            "ConfigMap"
                | "Secret"
                | "Event"
                | "Endpoints"
                | "EndpointSlice"
                | "ServiceAccount"
                | "StorageClass"
                | "PriorityClass"
                | "ControllerRevision"
        )
    }
}

/// The store key prefix of a group's resource (all namespaces, every version).
pub fn prefix_of(group: &str, plural: &str) -> String {
    if group.is_empty() { format!("/registry/{plural}/") } else { format!("/registry/{plural}.{group}/") }
}
