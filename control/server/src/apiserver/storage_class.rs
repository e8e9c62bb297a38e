//! The cluster's default StorageClass: `local-path` (a directory per volume on the node
//! the pod runs on, provisioned by the controllers' `volume::provisioner` and mounted by
//! the node agent), created on first start as k3s does, and DefaultStorageClass
//! admission, as upstream's plugin: a new PersistentVolumeClaim without
//! `spec.storageClassName` gets the default class (the newest, if several are marked);
//! `storageClassName: ""` asks for no class and is kept. StorageObjectInUseProtection
//! admission gives every new claim the `kubernetes.io/pvc-protection` finalizer, which
//! the controllers' `volume::protection` removes once no pod uses the claim.
//!
//! It only reads the store during admission. The bootstrap creates the class whenever it
//! is missing at start (as k3s re-applies its manifests) but never changes an existing
//! one, so an administrator may take its default mark away.

use serde_json::{Value, json};

use super::api_server::ApiServer;
use super::meta;
use super::object::{str_at, to_obj};
use super::resource_def::ResourceDef;
use super::resources::by_kind;
use super::status::{ApiError, ApiResult};
use crate::store;

/// The annotation that marks the default StorageClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The deprecated annotation that named a claim's class before `spec.storageClassName`.
const BETA_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";
/// The finalizer that keeps a claim while pods use it.
pub const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";
/// The built-in class and its provisioner (`skiff_controllers::controllers::volume`).
pub const LOCAL_PATH_CLASS: &str = "local-path";
pub const LOCAL_PATH_PROVISIONER: &str = "skiff.io/local-path";

/// The `local-path` StorageClass as bootstrap creates it.
pub fn local_path_class() -> Value {
    json!({"kind": "StorageClass", "apiVersion": "storage.k8s.io/v1",
        "metadata": {"name": LOCAL_PATH_CLASS, "uid": meta::new_uid(), "creationTimestamp": meta::now(),
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": LOCAL_PATH_PROVISIONER, "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer"})
}

/// Creates the `local-path` StorageClass unless it exists (see the module doc).
pub async fn bootstrap_local_path(store: &dyn store::Store) -> ApiResult<()> {
    let def = by_kind("StorageClass").ok_or_else(|| ApiError::internal("StorageClass is not served"))?;
    let mut obj = local_path_class();
    def.strategy.default(&mut obj);
    match store.create(&def.key(None, LOCAL_PATH_CLASS), super::object::to_bytes(&obj)).await {
        Ok(_) => {
            tracing::info!(class = LOCAL_PATH_CLASS, "created the default StorageClass");
            Ok(())
        }
        Err(store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a StorageClass is marked default (upstream accepts "true" only).
pub fn is_default_class(class: &Value) -> bool {
    class.pointer("/metadata/annotations").and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).and_then(Value::as_str)
        == Some("true")
}

/// The default class among `classes`: the newest marked one, ties by name (upstream's
/// rule since 1.26, so adding a second default does not break claims).
pub fn default_class(classes: &[Value]) -> Option<&str> {
    classes
        .iter()
        .filter(|c| is_default_class(c))
        .max_by(|a, b| {
            let key = |c: &Value| {
                (
                    str_at(c, "/metadata/creationTimestamp").unwrap_or("").to_string(),
                    str_at(c, "/metadata/name").map(String::from),
                )
            };
            // The same newest time: the lower name wins (max_by keeps the last maximum).
            let (ta, na) = key(a);
            let (tb, nb) = key(b);
            ta.cmp(&tb).then_with(|| nb.cmp(&na))
        })
        .and_then(|c| str_at(c, "/metadata/name"))
}

/// Gives `claim` the default class `class` when it names none (see the module doc).
pub fn set_default_class(claim: &mut Value, class: Option<&str>) {
    let has_beta = claim.pointer("/metadata/annotations").and_then(|a| a.get(BETA_CLASS_ANNOTATION)).is_some();
    let (Some(class), false) = (class, has_beta) else { return };
    if let Some(spec) = claim.get_mut("spec").and_then(Value::as_object_mut)
        && spec.get("storageClassName").is_none_or(Value::is_null)
    {
        spec.insert("storageClassName".into(), json!(class));
    }
}

/// Adds the protection finalizer to a new claim (once).
pub fn protect_claim(claim: &mut Value) {
    let Some(meta) = claim.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = finalizers.as_array_mut()
        && !list.iter().any(|f| f == PVC_PROTECTION_FINALIZER)
    {
        list.push(json!(PVC_PROTECTION_FINALIZER));
    }
}

impl ApiServer {
    /// The storage admission of a new object of `def`'s kind (claims only): the
    /// protection finalizer, and DefaultStorageClass.
    pub(super) async fn admit_storage(&self, def: &ResourceDef, obj: &mut Value) -> ApiResult<()> {
        if (def.group, def.kind) != ("", "PersistentVolumeClaim") {
            return Ok(());
        }
        protect_claim(obj);
        if obj.pointer("/spec/storageClassName").is_some_and(|c| !c.is_null()) {
            return Ok(());
        }
        let classes = by_kind("StorageClass").ok_or_else(|| ApiError::internal("StorageClass is not served"))?;
        let classes: Vec<Value> =
            self.store.list(&classes.prefix(), None, 0).await?.kvs.iter().map(to_obj).collect::<ApiResult<_>>()?;
        set_default_class(obj, default_class(&classes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, created: &str, default: Option<&str>) -> Value {
        let mut c = json!({"metadata": {"name": name, "creationTimestamp": created}});
        if let Some(d) = default {
            c["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATION: d});
        }
        c
    }

    #[test]
    fn the_newest_marked_class_is_the_default() {
        assert_eq!(default_class(&[]), None);
        let classes = [
            class("old", "2024-01-01T00:00:00Z", Some("true")),
            class("new", "2025-01-01T00:00:00Z", Some("true")),
            class("newer-unmarked", "2026-01-01T00:00:00Z", None),
            class("yes-is-not-true", "2026-01-01T00:00:00Z", Some("yes")),
        ];
        assert_eq!(default_class(&classes), Some("new"));
        let tie = [class("b", "2025-01-01T00:00:00Z", Some("true")), class("a", "2025-01-01T00:00:00Z", Some("true"))];
        assert_eq!(default_class(&tie), Some("a"));
    }

    #[test]
    fn only_claims_without_a_class_get_the_default() {
        let mut none = json!({"spec": {}});
        set_default_class(&mut none, Some("local-path"));
        assert_eq!(none["spec"]["storageClassName"], "local-path");
        let mut empty = json!({"spec": {"storageClassName": ""}});
        set_default_class(&mut empty, Some("local-path"));
        assert_eq!(empty["spec"]["storageClassName"], "", "\"\" asks for no class");
        let mut named = json!({"spec": {"storageClassName": "fast"}});
        set_default_class(&mut named, Some("local-path"));
        assert_eq!(named["spec"]["storageClassName"], "fast");
        let mut beta = json!({"metadata": {"annotations": {BETA_CLASS_ANNOTATION: "fast"}}, "spec": {}});
        set_default_class(&mut beta, Some("local-path"));
        assert!(beta["spec"].get("storageClassName").is_none());
        let mut no_default = json!({"spec": {}});
        set_default_class(&mut no_default, None);
        assert!(no_default["spec"].get("storageClassName").is_none());
        assert_eq!(local_path_class()["provisioner"], LOCAL_PATH_PROVISIONER);
        let mut claim = json!({"metadata": {"name": "c", "finalizers": ["example.com/keep"]}});
        protect_claim(&mut claim);
        protect_claim(&mut claim);
        assert_eq!(claim["metadata"]["finalizers"], json!(["example.com/keep", PVC_PROTECTION_FINALIZER]));
        assert!(is_default_class(&local_path_class()));
    }
}
