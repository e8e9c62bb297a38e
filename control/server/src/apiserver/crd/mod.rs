//! CustomResourceDefinitions (apiextensions.k8s.io/v1) and the custom resources they
//! define. The CRD objects themselves are an ordinary kind of the resource table (with
//! `DefinitionStrategy`); a controller (`controller`) follows them in the store, sets
//! their `NamesAccepted`/`Established` conditions, cleans up after deleted ones, and
//! keeps the registry here of what is served. Every served version of an Established
//! CRD becomes a `ResourceDef` like a built-in one, so routing, RBAC, the verbs,
//! watch, discovery and the store treat custom resources as they treat built-ins.
//!
//! What differs per custom resource lives here: its structural schema (`schema`:
//! pruning, defaulting, validation), its printer columns (`columns`), its scale paths
//! and categories, its OpenAPI document (`openapi`). Versions other than the storage
//! version are served as views of it (`views`) whose only conversion is the
//! apiVersion, as upstream's `None` conversion strategy.
//!
//! The registry is process-wide: the served definitions are leaked (`&'static`), as the
//! resource table's are, and rebuilt only when a CRD's spec changes, so the leak is
//! bounded by the number of spec changes. It must not store anything itself; only the
//! controller writes (CRD status, migrated and deleted objects). While a CRD is being
//! deleted its resources stay served, but creates are refused (`refuse_create`).

mod columns;
mod controller;
mod definition;
mod openapi;
mod schema;
mod served_version;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use serde_json::Value;

pub use columns::table;
pub use controller::spawn;
pub use definition::DefinitionStrategy;
pub use openapi::{document, hash};
pub use served_version::{ScalePaths, Served};

use super::resource_def::ResourceDef;
use super::status::ApiError;
use super::views::view::View;

/// What is served, by CRD name: the spec it was built from and its versions (the
/// preferred version first).
#[derive(Default)]
struct Registry {
    by_crd: BTreeMap<String, (Value, Vec<&'static Served>)>,
    /// CRDs being deleted: their objects are still served, but none may be created.
    terminating: BTreeSet<String>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry { by_crd: BTreeMap::new(), terminating: BTreeSet::new() });

fn served() -> Vec<&'static Served> {
    let r = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    r.by_crd.values().flat_map(|(_, v)| v.iter().copied()).collect()
}

/// The first served version that `f` picks, looked up without copying the registry
/// (every request asks whether its resource is a custom one).
fn find_served(f: impl Fn(&Served) -> bool) -> Option<&'static Served> {
    let r = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    r.by_crd.values().flat_map(|(_, v)| v.iter().copied()).find(|s| f(s))
}

/// The custom resource served at a group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    find_served(|s| s.def.group == group && s.def.version == version && s.def.plural == plural).map(|s| &s.def)
}

/// Every served custom resource version, by group and then by version priority (so a
/// group's preferred version comes first whichever of its CRDs serves it).
pub fn all() -> Vec<&'static ResourceDef> {
    let mut defs: Vec<&'static ResourceDef> = served().into_iter().map(|s| &s.def).collect();
    defs.sort_by_cached_key(|d| (d.group, definition::version_order(d.version)));
    defs
}

/// What the registry knows of `def`, if it is a custom resource.
pub fn of(def: &ResourceDef) -> Option<&'static Served> {
    find_served(|s| std::ptr::eq(&s.def, def))
}

/// Whether `def` is a custom resource (strategic merge patches are refused for them).
pub fn is_custom(def: &ResourceDef) -> bool {
    of(def).is_some()
}

/// A custom resource's categories (`None` for built-in kinds).
pub fn categories(def: &ResourceDef) -> Option<Vec<String>> {
    of(def).map(|s| s.categories.clone())
}

/// The refusal of a create of `def` while its CRD is being deleted, as upstream's.
pub fn refuse_create(def: &ResourceDef) -> Option<ApiError> {
    let served = of(def)?;
    let r = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    r.terminating.contains(&served.crd).then(|| ApiError {
        code: 405,
        reason: "MethodNotAllowed",
        message: "create not allowed while custom resource definition is terminating".into(),
        details: None,
        causes: Vec::new(),
    })
}

/// Marks `crd` as being deleted.
fn set_terminating(crd: &str) {
    REGISTRY.write().unwrap_or_else(|e| e.into_inner()).terminating.insert(crd.to_string());
}

/// The view a non-storage version of a custom resource is served through.
pub fn view_of(def: &ResourceDef) -> Option<&'static View> {
    of(def).and_then(|s| s.view)
}

/// The scale subresource's paths of a custom resource.
pub fn scale_paths(def: &ResourceDef) -> Option<ScalePaths> {
    of(def).and_then(|s| s.scale.clone())
}

/// Serves `crd` (an Established CRD) as `spec` says, unless it already is; whether
/// it changed what is served.
fn register(crd: &str, spec: &Value, revision: u64) -> bool {
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if r.by_crd.get(crd).is_some_and(|(s, _)| s == spec) {
        return false;
    }
    let versions = definition::build(crd, spec, revision);
    tracing::info!(crd, versions = versions.len(), "serving custom resource");
    r.by_crd.insert(crd.to_string(), (spec.clone(), versions));
    true
}

/// Stops serving `crd`.
fn unregister(crd: &str) {
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    r.terminating.remove(crd);
    if r.by_crd.remove(crd).is_some() {
        tracing::info!(crd, "no longer serving custom resource");
    }
}
