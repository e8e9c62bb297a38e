//! The CustomResourceDefinition kind's strategy (what a CRD object must be: its name,
//! names, scope, versions with exactly one storage version, structural schemas,
//! subresources and printer columns) and, for an Established CRD, the served
//! definitions of its versions with the custom resources' own strategy (prune by the
//! schema when decoding, then default and validate by it).
//!
//! It must not touch the store: the controller decides when a CRD is served.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::columns::Column;
use super::schema;
use super::served_version::{ScalePaths, Served};
use crate::apiserver::meta::{dns_label_error, dns_subdomain_error};
use crate::apiserver::resource_def::ResourceDef;
use crate::apiserver::status::Cause;
use crate::apiserver::strategy::Strategy;
use crate::apiserver::views::view::View;

/// Keeps a deleted CRD until its objects are gone (the controller removes it).
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

const COLUMN_TYPES: &[&str] = &["integer", "number", "string", "boolean", "date"];

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// CustomResourceDefinition objects.
#[derive(Debug)]
pub struct DefinitionStrategy;

impl Strategy for DefinitionStrategy {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
        add_cleanup_finalizer(obj);
    }

    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
        // A live CRD keeps its cleanup finalizer whatever a PUT says, so that deleting it
        // always deletes its objects.
        if new.pointer("/metadata/deletionTimestamp").is_none() {
            add_cleanup_finalizer(new);
        }
        let mut causes = Vec::new();
        if s(cur, "/spec/scope") != s(new, "/spec/scope") && !s(new, "/spec/scope").is_empty() {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: "spec.scope".into(),
                message: format!("Invalid value: {:?}: field is immutable", s(new, "/spec/scope")),
            });
        }
        if causes.is_empty() { Ok(()) } else { Err(causes) }
    }

    fn default(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else { return };
        if spec.get("conversion").is_none_or(Value::is_null) {
            spec.insert("conversion".into(), json!({"strategy": "None"}));
        }
        if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
            let kind = names.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
            if names.get("listKind").and_then(Value::as_str).is_none_or(str::is_empty) && !kind.is_empty() {
                names.insert("listKind".into(), json!(format!("{kind}List")));
            }
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        validate_definition(obj, causes);
    }
}

fn add_cleanup_finalizer(obj: &mut Value) {
    let fs = obj["metadata"].as_object_mut().map(|m| m.entry("finalizers").or_insert(json!([])));
    if let Some(Value::Array(fs)) = fs
        && !fs.iter().any(|f| f == CLEANUP_FINALIZER)
    {
        fs.push(json!(CLEANUP_FINALIZER));
    }
}

fn label(field: &str, v: &str, causes: &mut Vec<Cause>) {
    if let Some(e) = dns_label_error(v) {
        causes.push(Cause::invalid(field, &json!(v), e));
    }
}

fn validate_definition(obj: &Value, causes: &mut Vec<Cause>) {
    let group = s(obj, "/spec/group");
    let plural = s(obj, "/spec/names/plural");
    let name = s(obj, "/metadata/name");
    if name != format!("{plural}.{group}") {
        causes.push(Cause::invalid("metadata.name", &json!(name), "must be spec.names.plural+\".\"+spec.group"));
    }
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        causes.push(Cause::invalid("spec.group", &json!(group), "should be a domain with at least one dot"));
    } else if let Some(e) = dns_subdomain_error(group) {
        causes.push(Cause::invalid("spec.group", &json!(group), e));
    }
    let protected = [".k8s.io", ".kubernetes.io"].iter().any(|p| group.ends_with(p) || group == &p[1..]);
    if protected && obj.pointer("/metadata/annotations/api-approved.kubernetes.io").is_none() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "metadata.annotations[api-approved.kubernetes.io]".into(),
            message: "Required value: protected groups must have approval annotation \"api-approved.kubernetes.io\", see https://github.com/kubernetes/enhancements/pull/1111".into(),
        });
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    } else {
        label("spec.names.plural", plural, causes);
    }
    let singular = s(obj, "/spec/names/singular");
    if !singular.is_empty() {
        label("spec.names.singular", singular, causes);
    }
    for (i, short) in arr(obj, "/spec/names/shortNames").iter().enumerate() {
        label(&format!("spec.names.shortNames[{i}]"), short.as_str().unwrap_or(""), causes);
    }
    for (i, c) in arr(obj, "/spec/names/categories").iter().enumerate() {
        label(&format!("spec.names.categories[{i}]"), c.as_str().unwrap_or(""), causes);
    }
    let kind = s(obj, "/spec/names/kind");
    if kind.is_empty() {
        causes.push(Cause::required("spec.names.kind"));
    } else if !kind.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        || !kind.chars().all(|c| c.is_ascii_alphanumeric())
    {
        causes.push(Cause::invalid(
            "spec.names.kind",
            &json!(kind),
            "must be an alphanumeric name starting with a letter",
        ));
    }
    let scope = s(obj, "/spec/scope");
    if !matches!(scope, "Namespaced" | "Cluster") {
        causes.push(Cause::not_supported("spec.scope", &json!(scope), &["Cluster", "Namespaced"]));
    }
    if !matches!(s(obj, "/spec/conversion/strategy"), "" | "None") {
        causes.push(Cause::not_supported(
            "spec.conversion.strategy",
            &json!(s(obj, "/spec/conversion/strategy")),
            &["None"],
        ));
    }
    let versions = arr(obj, "/spec/versions");
    if versions.is_empty() {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!([]),
            "must have exactly one version marked as storage version",
        ));
        return;
    }
    if versions.iter().filter(|v| v.get("storage") == Some(&json!(true))).count() != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &Value::Array(versions.to_vec()),
            "must have exactly one version marked as storage version",
        ));
    }
    if !versions.iter().any(|v| v.get("served") == Some(&json!(true))) {
        causes.push(Cause::invalid(
            "spec.versions",
            &Value::Array(versions.to_vec()),
            "must have at least one version marked as served",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        validate_version(i, v, versions, causes);
    }
}

fn validate_version(i: usize, v: &Value, versions: &[Value], causes: &mut Vec<Cause>) {
    let at = format!("spec.versions[{i}]");
    let name = s(v, "/name");
    if name.is_empty() {
        causes.push(Cause::required(format!("{at}.name")));
    } else {
        label(&format!("{at}.name"), name, causes);
    }
    if versions[..i].iter().any(|o| s(o, "/name") == name) {
        causes.push(Cause {
            reason: "FieldValueDuplicate",
            field: format!("{at}.name"),
            message: format!("Duplicate value: {name:?}"),
        });
    }
    match v.pointer("/schema/openAPIV3Schema") {
        Some(sch) if sch.is_object() => schema::check_structural(sch, &format!("{at}.schema.openAPIV3Schema"), causes),
        _ => causes.push(Cause {
            reason: "FieldValueRequired",
            field: format!("{at}.schema.openAPIV3Schema"),
            message: "Required value: schemas are required".into(),
        }),
    }
    if let Some(scale) = v.pointer("/subresources/scale").filter(|s| s.is_object()) {
        // (field, whether it may be absent, the prefixes it must have, what it should be)
        let paths: [(&str, bool, &[&str], &str); 3] = [
            ("specReplicasPath", false, &[".spec."], "should be a json path under .spec"),
            ("statusReplicasPath", false, &[".status."], "should be a json path under .status"),
            ("labelSelectorPath", true, &[".spec.", ".status."], "should be a json path under either .spec or .status"),
        ];
        for (field, optional, prefixes, should) in paths {
            let p = s(scale, &format!("/{field}"));
            let fine = (optional && p.is_empty()) || prefixes.iter().any(|pre| p.starts_with(pre));
            if !fine {
                causes.push(Cause::invalid(format!("{at}.subresources.scale.{field}"), &json!(p), should));
            }
        }
    }
    for (j, c) in arr(v, "/additionalPrinterColumns").iter().enumerate() {
        let cat = format!("{at}.additionalPrinterColumns[{j}]");
        if s(c, "/name").is_empty() {
            causes.push(Cause::required(format!("{cat}.name")));
        }
        let t = s(c, "/type");
        if !COLUMN_TYPES.contains(&t) {
            causes.push(Cause::not_supported(format!("{cat}.type"), &json!(t), COLUMN_TYPES));
        }
        let p = s(c, "/jsonPath");
        if p.is_empty() {
            causes.push(Cause::required(format!("{cat}.jsonPath")));
        } else if super::columns::parse_path(p).is_none() {
            causes.push(Cause::invalid(format!("{cat}.jsonPath"), &json!(p), "must be a simple json path"));
        }
    }
}

/// Kubernetes version priority: GA before beta before alpha, higher numbers first,
/// anything else last in name order.
pub fn version_order(v: &str) -> (u8, i64, i64, String) {
    let parse = |rest: &str| -> Option<(u8, i64, i64)> {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: i64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((0, -major, 0));
        }
        for (class, label) in [(1, "beta"), (2, "alpha")] {
            if let Some(n) = tail.strip_prefix(label)
                && let Ok(minor) = n.parse::<i64>()
            {
                return Some((class, -major, -minor));
            }
        }
        None
    };
    match v.strip_prefix('v').and_then(parse) {
        Some((c, a, b)) => (c, a, b, String::new()),
        None => (3, 0, 0, v.to_string()),
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn no_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::Schema::from(true)
}

/// A custom resource's decode: metadata through the typed ObjectMeta, the rest pruned
/// by the schema (the pruned fields are what strict field validation reports).
fn decode(schema: &Value, mut v: Value) -> Result<Value, String> {
    if let Some(m) = v.get_mut("metadata") {
        let meta: ObjectMeta = serde_json::from_value(m.take()).map_err(|e| format!("metadata: {e}"))?;
        *m = serde_json::to_value(meta).map_err(|e| e.to_string())?;
    }
    let mut pruned = Vec::new();
    schema::prune(schema, &mut v, &mut pruned);
    Ok(v)
}

/// Custom resources of one version.
#[derive(Debug)]
struct CustomStrategy {
    schema: Arc<Value>,
    status: bool,
}

impl Strategy for CustomStrategy {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        if self.status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
    }

    fn default(&self, obj: &mut Value) {
        schema::default(&self.schema, obj);
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        schema::validate(&self.schema, obj, causes);
    }
}

/// `.spec.replicas` as a JSON pointer (`/spec/replicas`).
fn pointer(path: &str) -> String {
    path.split('.').filter(|p| !p.is_empty()).fold(String::new(), |acc, p| format!("{acc}/{p}"))
}

/// The served versions of a CRD with `spec`, the preferred version first.
pub(super) fn build(crd: &str, spec: &Value, revision: u64) -> Vec<&'static Served> {
    let group = leak(s(spec, "/group"));
    let kind = leak(s(spec, "/names/kind"));
    let plural = leak(s(spec, "/names/plural"));
    let singular = match s(spec, "/names/singular") {
        "" => leak(&kind.to_lowercase()),
        x => leak(x),
    };
    let short_names: Vec<&'static str> =
        arr(spec, "/names/shortNames").iter().filter_map(Value::as_str).map(leak).collect();
    let short_names: &'static [&'static str] = Box::leak(short_names.into_boxed_slice());
    let categories: Vec<String> =
        arr(spec, "/names/categories").iter().filter_map(Value::as_str).map(String::from).collect();
    let namespaced = s(spec, "/scope") != "Cluster";
    let versions = arr(spec, "/versions");
    let storage = leak(versions.iter().find(|v| v.get("storage") == Some(&json!(true))).map_or("", |v| s(v, "/name")));
    let mut served: Vec<&Value> = versions.iter().filter(|v| v.get("served") == Some(&json!(true))).collect();
    served.sort_by_key(|v| version_order(s(v, "/name")));
    served
        .into_iter()
        .map(|v| {
            let version = leak(s(v, "/name"));
            let schema = Arc::new(v.pointer("/schema/openAPIV3Schema").cloned().unwrap_or(json!({"type": "object"})));
            let status = v.pointer("/subresources/status").is_some_and(|s| !s.is_null());
            let scale = v.pointer("/subresources/scale").filter(|s| s.is_object()).map(|sc| ScalePaths {
                spec_replicas: pointer(s(sc, "/specReplicasPath")),
                status_replicas: pointer(s(sc, "/statusReplicasPath")),
                label_selector: Some(s(sc, "/labelSelectorPath")).filter(|p| !p.is_empty()).map(pointer),
            });
            let for_decode = schema.clone();
            let decode: &'static (dyn Fn(Value) -> Result<Value, String> + Sync + Send) =
                Box::leak(Box::new(move |v| decode(&for_decode, v)));
            let strategy: &'static CustomStrategy =
                Box::leak(Box::new(CustomStrategy { schema: schema.clone(), status }));
            let view = (version != storage).then(|| {
                let api_version = leak(&format!("{group}/{version}"));
                &*Box::leak(Box::new(View::custom_version((group, storage, plural), api_version, kind)))
            });
            let served: &'static Served = Box::leak(Box::new(Served {
                def: ResourceDef {
                    group,
                    version,
                    kind,
                    plural,
                    singular,
                    short_names,
                    namespaced,
                    status,
                    scale: scale.is_some(),
                    all: categories.iter().any(|c| c == "all"),
                    decode,
                    schema: no_schema,
                    merge: |_, _| Err("a custom resource merges by its CRD's schema".into()),
                    strategy,
                },
                crd: crd.to_string(),
                schema,
                columns: Column::of_version(v),
                scale,
                categories: categories.clone(),
                view,
                revision,
            }));
            served
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_kubernetes_priority() {
        let mut v = vec!["v1alpha1", "foo", "v1beta1", "v2", "v1", "v1beta2", "v10"];
        v.sort_by_key(|x| version_order(x));
        assert_eq!(v, vec!["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }

    #[test]
    fn a_definition_needs_one_storage_version_and_schemas() {
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": false},
                         {"name": "v2", "served": true, "storage": false,
                          "schema": {"openAPIV3Schema": {"type": "object"}}}]}});
        let mut causes = Vec::new();
        validate_definition(&crd, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.versions", "spec.versions[0].schema.openAPIV3Schema"]);
        let mut wrong_name = crd.clone();
        wrong_name["metadata"]["name"] = json!("widgets.other.com");
        let mut causes = Vec::new();
        validate_definition(&wrong_name, &mut causes);
        assert_eq!(causes[0].field, "metadata.name");
    }
}
