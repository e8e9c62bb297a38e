//! The merge shape of the built-in kinds' fields, for server-side apply (`managed`):
//! each kind's OpenAPI schema (k8s-openapi's, through `schemars`, the one `/openapi/v3`
//! serves) annotated the way upstream's is, with `x-kubernetes-list-type`,
//! `x-kubernetes-list-map-keys` and `x-kubernetes-map-type`, so that one walker reads
//! built-in kinds and custom resources alike.
//!
//! k8s-openapi's schemas carry no such markers, but its generated merge
//! (`DeepMerge`) follows them: lists merged by key, as sets or atomically, maps merged
//! granularly or atomically. So each list and map field is found in the schema and its
//! shape is learned by merging two small objects of the kind that differ there (which
//! fields make two list items distinct are the list's keys). Two things that merge does
//! not know are added from upstream's API types: the second key of the lists whose
//! `x-kubernetes-patch-merge-key` names only one (`EXTRA_KEYS`), and the structs marked
//! `+structType=atomic` (`ATOMIC_STRUCTS`).
//!
//! Built once per kind on first use and kept for the life of the process. It must not
//! decide how fields merge or who owns them; that is `managed`'s.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::resource_def::ResourceDef;
use super::resources::RESOURCES;

/// A kind's annotated schema: the root (a `$ref`) and the definitions it reaches.
#[derive(Debug)]
pub struct Structure {
    pub root: Value,
    pub defs: Map<String, Value>,
}

/// Keys upstream's `x-kubernetes-list-map-keys` names beyond the one of
/// `x-kubernetes-patch-merge-key`, which is the one k8s-openapi's merge uses.
const EXTRA_KEYS: &[(&str, &str, &[&str])] = &[
    ("io.k8s.api.core.v1.Container", "ports", &["containerPort", "protocol"]),
    ("io.k8s.api.core.v1.EphemeralContainer", "ports", &["containerPort", "protocol"]),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", &["port", "protocol"]),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", &["topologyKey", "whenUnsatisfiable"]),
];

/// Structs upstream marks `+structType=atomic` (owned and replaced as a whole).
const ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.NodeSelectorTerm",
    "io.k8s.api.core.v1.TopologySelectorTerm",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.TypedLocalObjectReference",
    "io.k8s.api.core.v1.SecretReference",
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ResourceFieldSelector",
];

type Cache = Mutex<HashMap<(&'static str, &'static str), &'static Structure>>;
static CACHE: LazyLock<Cache> = LazyLock::new(Default::default);

/// The annotated schema of a built-in kind, built on first use.
pub fn of(def: &ResourceDef) -> &'static Structure {
    let key = (def.group, def.kind);
    if let Some(s) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return s;
    }
    // Built outside the lock (it takes a while); a racing builder's copy is dropped.
    let (built, _) = build(def);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache.entry(key).or_insert_with(|| Box::leak(Box::new(built)))
}

/// ObjectMeta's annotated schema (a custom resource's metadata is the built-in type),
/// with the definitions it refers to.
pub fn object_meta() -> Option<(&'static Value, &'static Map<String, Value>)> {
    let cm = RESOURCES.iter().find(|r| r.group.is_empty() && r.kind == "ConfigMap")?;
    let s = of(cm);
    Some((s.defs.get("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")?, &s.defs))
}

/// The definition a `$ref` (possibly inside `allOf`) names, or the schema itself.
pub fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> &'a Value {
    match ref_name(schema) {
        Some(n) => defs.get(n).unwrap_or(schema),
        None => schema,
    }
}

fn ref_name(schema: &Value) -> Option<&str> {
    let r = schema.get("$ref").or_else(|| schema.pointer("/allOf/0/$ref"))?;
    r.as_str()?.rsplit('/').next()
}

/// The kind's annotated schema, and how many probes its decoder refused (whose
/// fields are then taken as atomic).
fn build(def: &ResourceDef) -> (Structure, usize) {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let root: Value = (def.schema)(&mut generator).into();
    let defs = generator.take_definitions(true);
    let mut p = Prober { def, root: root.clone(), defs, seen: HashSet::new(), refused: Cell::new(0) };
    if let Some(name) = ref_name(&root) {
        p.visit(name.to_string(), &mut Vec::new());
    }
    let refused_probes = p.refused.get();
    if refused_probes > 0 {
        tracing::warn!(
            kind = def.kind,
            refused_probes,
            "some fields' merge shapes could not be learned; they are atomic"
        );
    }
    tracing::debug!(kind = def.kind, definitions = p.defs.len(), "built the merge shapes of a kind");
    (Structure { root, defs: p.defs }, refused_probes)
}

/// A step from the kind's root to a field: a property, or a list's (only) item.
#[derive(Debug, Clone)]
enum Step {
    Field(String),
    Item,
}

struct Prober<'d> {
    def: &'d ResourceDef,
    root: Value,
    defs: Map<String, Value>,
    seen: HashSet<String>,
    refused: Cell<usize>,
}

impl Prober<'_> {
    fn resolved(&self, schema: &Value) -> Value {
        resolve(schema, &self.defs).clone()
    }

    /// Annotates the list and map fields of the struct `name`, met at `path`, and
    /// descends into the structs it merges field by field.
    fn visit(&mut self, name: String, path: &mut Vec<Step>) {
        if !self.seen.insert(name.clone()) {
            return;
        }
        let Some(props) = self.defs.get(&name).and_then(|d| d.get("properties")).and_then(Value::as_object).cloned()
        else {
            return;
        };
        for (field, schema) in props {
            let r = self.resolved(&schema);
            path.push(Step::Field(field.clone()));
            let mut notes = Map::new();
            if r.get("type").and_then(Value::as_str) == Some("array") {
                let items = r.get("items").cloned().unwrap_or(Value::Null);
                let extra = EXTRA_KEYS.iter().find(|(d, f, _)| *d == name && *f == field).map(|e| e.2);
                match self.list_shape(path, &items) {
                    ListShape::Map(keys) => {
                        let keys: Vec<&str> =
                            extra.unwrap_or(&[]).iter().copied().chain(keys.iter().map(String::as_str)).collect();
                        let mut uniq: Vec<&str> = Vec::new();
                        for k in keys {
                            if !uniq.contains(&k) {
                                uniq.push(k);
                            }
                        }
                        notes.insert("x-kubernetes-list-type".into(), json!("map"));
                        notes.insert("x-kubernetes-list-map-keys".into(), json!(uniq));
                        if let Some(item) = ref_name(&items).map(String::from) {
                            path.push(Step::Item);
                            self.visit(item, path);
                            path.pop();
                        }
                    }
                    ListShape::Set => {
                        notes.insert("x-kubernetes-list-type".into(), json!("set"));
                    }
                    ListShape::Atomic => {
                        notes.insert("x-kubernetes-list-type".into(), json!("atomic"));
                    }
                }
            } else if r.get("properties").is_some() {
                if let Some(child) = ref_name(&schema).map(String::from) {
                    // As upstream's schema, the marker is on the struct's definition.
                    if ATOMIC_STRUCTS.contains(&child.as_str())
                        && let Some(Value::Object(d)) = self.defs.get_mut(&child)
                    {
                        d.insert("x-kubernetes-map-type".into(), json!("atomic"));
                    }
                    self.visit(child, path);
                }
            } else if let Some(values) = r.get("additionalProperties").filter(|a| a.is_object()) {
                let v = self.minimal(values, 0);
                let granular =
                    self.merged_at(path, &json!({"k1": v}), &json!({"k2": v})).is_some_and(|m| m.get("k1").is_some());
                let t = if granular { "granular" } else { "atomic" };
                notes.insert("x-kubernetes-map-type".into(), json!(t));
            }
            path.pop();
            if !notes.is_empty()
                && let Some(Value::Object(p)) = self.defs.get_mut(&name).and_then(|d| {
                    d.pointer_mut(&format!("/properties/{}", field.replace('~', "~0").replace('/', "~1")))
                })
            {
                p.extend(notes);
            }
        }
    }

    /// How the list at `path` with these items merges: the item fields that make two
    /// items distinct are its keys; scalars that both stay are a set.
    fn list_shape(&self, path: &[Step], items: &Value) -> ListShape {
        let item = self.resolved(items);
        if let Some(props) = item.get("properties").and_then(Value::as_object) {
            let base = self.minimal(items, 0);
            let mut keys = Vec::new();
            // An embedded object's type fields are checked by its decoder, never keys.
            for (q, qs) in props.iter().filter(|(q, _)| !matches!(q.as_str(), "apiVersion" | "kind")) {
                let Some((v1, v2)) = self.scalar_pair(qs) else { continue };
                let (mut a, mut b) = (base.clone(), base.clone());
                a[q] = v1;
                b[q] = v2;
                if self
                    .merged_at(path, &json!([a]), &json!([b]))
                    .is_some_and(|m| m.as_array().is_some_and(|l| l.len() == 2))
                {
                    keys.push(q.clone());
                }
            }
            return if keys.is_empty() { ListShape::Atomic } else { ListShape::Map(keys) };
        }
        match self.scalar_pair(items) {
            Some((a, b)) => match self.merged_at(path, &json!([a]), &json!([b])) {
                Some(Value::Array(l)) if l.len() == 2 => ListShape::Set,
                _ => ListShape::Atomic,
            },
            None => ListShape::Atomic,
        }
    }

    /// Two distinct valid values of a scalar schema.
    fn scalar_pair(&self, schema: &Value) -> Option<(Value, Value)> {
        let r = resolve(schema, &self.defs);
        if r.get("x-kubernetes-int-or-string").is_some() {
            return Some((json!("1"), json!("2")));
        }
        match r.get("type").and_then(Value::as_str)? {
            "string" => Some(match r.get("format").and_then(Value::as_str) {
                Some(f) if f.contains("date-time") => (json!("2000-01-01T00:00:00Z"), json!("2001-01-01T00:00:00Z")),
                Some("byte") => (json!("YQ=="), json!("Yg==")),
                _ => (json!("a"), json!("b")),
            }),
            "integer" | "number" => Some((json!(1), json!(2))),
            "boolean" => Some((json!(true), json!(false))),
            _ => None,
        }
    }

    /// The smallest value the typed decoder accepts: required fields only.
    fn minimal(&self, schema: &Value, depth: usize) -> Value {
        if let Some((v, _)) = self.scalar_pair(schema) {
            return v;
        }
        let r = resolve(schema, &self.defs);
        match r.get("type").and_then(Value::as_str) {
            Some("array") => json!([]),
            _ if depth > 8 => json!({}),
            _ => {
                let mut out = Map::new();
                let props = r.get("properties");
                for q in r.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                    if let Some(qs) = props.and_then(|p| p.get(q)) {
                        out.insert(q.to_string(), self.minimal(qs, depth + 1));
                    }
                }
                Value::Object(out)
            }
        }
    }

    /// An object of the kind holding `leaf` at `path`.
    fn instance(&self, schema: &Value, path: &[Step], leaf: &Value) -> Value {
        let Some((first, rest)) = path.split_first() else { return leaf.clone() };
        let r = resolve(schema, &self.defs);
        match first {
            Step::Field(f) => {
                let mut obj = self.minimal(schema, 0);
                let child = r.pointer("/properties").and_then(|p| p.get(f)).cloned().unwrap_or(Value::Null);
                obj[f.as_str()] = self.instance(&child, rest, leaf);
                obj
            }
            Step::Item => json!([self.instance(r.get("items").unwrap_or(&Value::Null), rest, leaf)]),
        }
    }

    /// Merges an object holding `b` at `path` into one holding `a` there, as
    /// k8s-openapi's merge of the kind does, and returns what is at `path` then.
    fn merged_at(&self, path: &[Step], a: &Value, b: &Value) -> Option<Value> {
        let stamp = |mut v: Value| {
            v["apiVersion"] = json!(self.def.api_version());
            v["kind"] = json!(self.def.kind);
            if v.get("metadata").is_none() {
                v["metadata"] = json!({});
            }
            v
        };
        let x = stamp(self.instance(&self.root, path, a));
        let y = stamp(self.instance(&self.root, path, b));
        let out = match (self.def.merge)(x, y) {
            Ok(out) => out,
            Err(e) => {
                tracing::debug!(kind = self.def.kind, error = %e, ?path, "merge probe was not accepted");
                self.refused.set(self.refused.get() + 1);
                return None;
            }
        };
        let mut at = &out;
        for s in path {
            at = match s {
                Step::Field(f) => at.get(f)?,
                Step::Item => at.get(0)?,
            };
        }
        Some(at.clone())
    }
}

enum ListShape {
    Map(Vec<String>),
    Set,
    Atomic,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(group: &str, kind: &str) -> &'static Structure {
        of(RESOURCES.iter().find(|r| r.group == group && r.kind == kind).expect("served kind"))
    }

    fn prop<'a>(s: &'a Structure, def: &str, field: &str) -> &'a Value {
        &s.defs[def]["properties"][field]
    }

    #[test]
    fn derived_shapes_match_upstreams() {
        let d = kind("apps", "Deployment");
        let pod = "io.k8s.api.core.v1.PodSpec";
        let c = "io.k8s.api.core.v1.Container";
        assert_eq!(prop(d, pod, "containers")["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(prop(d, pod, "initContainers")["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(prop(d, pod, "volumes")["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(prop(d, pod, "tolerations")["x-kubernetes-list-type"], json!("atomic"));
        assert_eq!(prop(d, pod, "nodeSelector")["x-kubernetes-map-type"], json!("atomic"));
        assert_eq!(prop(d, c, "env")["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(prop(d, c, "volumeMounts")["x-kubernetes-list-map-keys"], json!(["mountPath"]));
        assert_eq!(prop(d, c, "ports")["x-kubernetes-list-map-keys"], json!(["containerPort", "protocol"]));
        assert_eq!(prop(d, c, "args")["x-kubernetes-list-type"], json!("atomic"));
        let meta = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
        assert_eq!(prop(d, meta, "finalizers")["x-kubernetes-list-type"], json!("set"));
        assert_eq!(prop(d, meta, "labels")["x-kubernetes-map-type"], json!("granular"));
        assert_eq!(prop(d, meta, "ownerReferences")["x-kubernetes-list-map-keys"], json!(["uid"]));
        assert_eq!(
            d.defs["io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"]["x-kubernetes-map-type"],
            json!("atomic")
        );
        assert_eq!(
            prop(d, "io.k8s.api.apps.v1.DeploymentStatus", "conditions")["x-kubernetes-list-map-keys"],
            json!(["type"])
        );

        let s = kind("", "Service");
        assert_eq!(
            prop(s, "io.k8s.api.core.v1.ServiceSpec", "ports")["x-kubernetes-list-map-keys"],
            json!(["port", "protocol"])
        );
        assert_eq!(prop(s, "io.k8s.api.core.v1.ServiceSpec", "selector")["x-kubernetes-map-type"], json!("atomic"));

        let cm = kind("", "ConfigMap");
        assert_eq!(prop(cm, "io.k8s.api.core.v1.ConfigMap", "data")["x-kubernetes-map-type"], json!("granular"));

        let np = kind("networking.k8s.io", "NetworkPolicy");
        let ls = "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector";
        assert_eq!(np.defs[ls]["x-kubernetes-map-type"], json!("atomic"));
        // Inside the atomic selector its labels are a granular map, as in upstream's schema.
        assert_eq!(prop(np, ls, "matchLabels")["x-kubernetes-map-type"], json!("granular"));
        assert_eq!(prop(np, ls, "matchExpressions")["x-kubernetes-list-type"], json!("atomic"));
    }

    #[test]
    fn every_kind_builds() {
        for r in RESOURCES.iter() {
            let (s, refused) = build(r);
            assert!(ref_name(&s.root).is_some_and(|n| s.defs.contains_key(n)), "{}", r.kind);
            assert_eq!(refused, 0, "{}: every probe decodes", r.kind);
        }
    }
}
