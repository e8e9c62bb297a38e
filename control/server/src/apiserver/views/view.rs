//! What a view is: the stored kind it shows, and how its objects change shape on the
//! way in and out. The built-in views (`events`, `hpa_v1`) and custom resources'
//! non-storage versions (`crd`) are all `View`s; it imports neither, so `crd` can
//! build views while `views` asks `crd` for them.

use serde_json::{Value, json};

use crate::apiserver::status::Cause;

/// One view: where its objects are stored, and how they change shape on the way.
pub struct View {
    /// The stored kind's group, version and plural.
    pub stored: (&'static str, &'static str, &'static str),
    /// The view's apiVersion and kind (its lists are `<kind>List`).
    pub(super) api_version: &'static str,
    pub(super) kind: &'static str,
    /// A view object, or a merge patch of one, in the stored shape.
    pub(super) to_stored: fn(Value) -> Value,
    /// A stored object in the view's shape.
    pub(super) from_stored: fn(Value) -> Value,
    /// What upstream checks of objects written through the view.
    pub(super) validate: fn(&Value) -> Vec<Cause>,
    /// A JSON Patch path in the view's shape, in the stored shape; `None` refuses it.
    pub(super) json_patch_path: fn(&str) -> Option<String>,
}

impl View {
    /// A custom resource's version other than its storage version: the same objects
    /// under another apiVersion (a CRD's `None` conversion).
    pub fn custom_version(
        stored: (&'static str, &'static str, &'static str),
        api_version: &'static str,
        kind: &'static str,
    ) -> Self {
        fn to_stored(mut v: Value) -> Value {
            // The stored apiVersion is set afterwards; a patch must not change it.
            if let Some(m) = v.as_object_mut() {
                m.remove("apiVersion");
            }
            v
        }
        View {
            stored,
            api_version,
            kind,
            to_stored,
            from_stored: |v| v,
            validate: |_| Vec::new(),
            json_patch_path: |p| Some(p.to_string()),
        }
    }

    /// A stored object, list or watch event in the view's shape; Tables and Status
    /// objects pass unchanged.
    pub(super) fn convert_out(&self, mut v: Value) -> Value {
        let stored_kind = v.get("kind").and_then(Value::as_str).map(String::from);
        match stored_kind.as_deref() {
            Some(k) if k == self.kind => {
                v = (self.from_stored)(v);
                v["apiVersion"] = json!(self.api_version);
            }
            Some(k) if k.strip_suffix("List") == Some(self.kind) => {
                v["apiVersion"] = json!(self.api_version);
                if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
                    for item in items.iter_mut() {
                        *item = (self.from_stored)(std::mem::take(item));
                        if let Some(m) = item.as_object_mut() {
                            m.remove("kind");
                            m.remove("apiVersion");
                        }
                    }
                }
            }
            None if v.get("type").is_some() && v.get("object").is_some() => {
                let object = v["object"].take();
                v["object"] = self.convert_out(object);
            }
            _ => {}
        }
        v
    }
}
