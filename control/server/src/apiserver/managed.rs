//! Field ownership and server-side apply, as upstream's structured merge: which
//! manager owns which field of an object (`metadata.managedFields`, FieldsV1), how an
//! applied configuration merges into the live object, which fields a manager that
//! stopped applying them gives up (and so are removed), and which writes conflict with
//! another manager's fields.
//!
//! A field's merge shape (granular object, atomic object, list keyed by fields, set,
//! atomic list) comes from a custom resource's schema (`x-kubernetes-list-type`,
//! `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`): a custom resource's CRD
//! schema, or a built-in kind's OpenAPI schema annotated by `merge_shape`. Lists that
//! neither names are atomic, as upstream's default.
//!
//! Pure functions over JSON values: this module must not touch the store or decide
//! what a request may do; the handlers (`handlers::write`, `handlers::update`,
//! `handlers::create`) call it on their way to the store.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::merge_shape;
use super::resource_def::ResourceDef;
use super::status::{ApiError, Cause};

/// One step of a field path, kept in upstream's FieldsV1 spelling without its prefix:
/// a field name, a list item's keys as canonical JSON, or a set item as JSON.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pe {
    Field(String),
    Key(String),
    Value(String),
}

impl Pe {
    fn encode(&self) -> String {
        match self {
            Pe::Field(f) => format!("f:{f}"),
            Pe::Key(k) => format!("k:{k}"),
            Pe::Value(v) => format!("v:{v}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let (kind, rest) = s.split_at_checked(2)?;
        Some(match kind {
            "f:" => Pe::Field(rest.to_string()),
            "k:" => Pe::Key(rest.to_string()),
            "v:" => Pe::Value(rest.to_string()),
            _ => return None,
        })
    }
}

/// A path as upstream prints it in conflicts: `.spec.containers[name="nginx"].image`.
pub fn path_string(path: &[Pe]) -> String {
    let mut out = String::new();
    for pe in path {
        match pe {
            Pe::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Pe::Key(k) => {
                let fields: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Pe::Value(v) => out.push_str(&format!("[={v}]")),
        }
    }
    out
}

/// A set of field paths as a tree; a node is a member when its path itself is owned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    member: bool,
    children: BTreeMap<Pe, Set>,
}

impl Set {
    pub fn insert(&mut self, path: &[Pe]) {
        match path.split_first() {
            None => self.member = true,
            Some((pe, rest)) => self.children.entry(pe.clone()).or_default().insert(rest),
        }
    }

    fn node_mut(&mut self, path: &[Pe]) -> &mut Set {
        match path.split_first() {
            None => self,
            Some((pe, rest)) => self.children.entry(pe.clone()).or_default().node_mut(rest),
        }
    }

    fn node(&self, path: &[Pe]) -> Option<&Set> {
        match path.split_first() {
            None => Some(self),
            Some((pe, rest)) => self.children.get(pe)?.node(rest),
        }
    }

    /// Whether no path is a member.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(Set::is_empty)
    }

    pub fn contains(&self, path: &[Pe]) -> bool {
        self.node(path).is_some_and(|n| n.member)
    }

    pub fn union(&mut self, other: &Set) {
        self.member |= other.member;
        for (pe, o) in &other.children {
            self.children.entry(pe.clone()).or_default().union(o);
        }
    }

    /// This set without the members of `other`.
    pub fn difference(&self, other: &Set) -> Set {
        self.subtract(other, false)
    }

    /// This set without the members of `other` and everything below them.
    fn without_subtrees(&self, other: &Set) -> Set {
        self.subtract(other, true)
    }

    fn subtract(&self, other: &Set, subtrees: bool) -> Set {
        if subtrees && other.member {
            return Set::default();
        }
        let mut out = Set { member: self.member && !other.member, children: BTreeMap::new() };
        for (pe, c) in &self.children {
            let d = match other.children.get(pe) {
                Some(o) => c.subtract(o, subtrees),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(pe.clone(), d);
            }
        }
        out
    }

    /// The member paths of both sets.
    pub fn intersection_paths(&self, other: &Set) -> Vec<Vec<Pe>> {
        let mut out = Vec::new();
        self.intersect_into(other, &mut Vec::new(), &mut out);
        out
    }

    fn intersect_into(&self, other: &Set, path: &mut Vec<Pe>, out: &mut Vec<Vec<Pe>>) {
        if self.member && other.member {
            out.push(path.clone());
        }
        for (pe, c) in &self.children {
            if let Some(o) = other.children.get(pe) {
                path.push(pe.clone());
                c.intersect_into(o, path, out);
                path.pop();
            }
        }
    }

    /// Upstream's FieldsV1 JSON: `{"f:spec":{"f:replicas":{}}}`, with `"."` for a
    /// member that has members below it.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (pe, c) in &self.children {
            if !c.is_empty() {
                m.insert(pe.encode(), c.to_fields_v1());
            }
        }
        Value::Object(m)
    }

    pub fn from_fields_v1(v: &Value) -> Option<Set> {
        let m = v.as_object()?;
        let mut s = Set { member: false, children: BTreeMap::new() };
        for (k, c) in m {
            if k == "." {
                s.member = true;
                continue;
            }
            let mut child = Set::from_fields_v1(c)?;
            if child.children.is_empty() {
                child.member = true;
            }
            s.children.insert(Pe::decode(k)?, child);
        }
        Some(s)
    }
}

/// How a node merges and is owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// An object whose fields are owned one by one.
    Granular,
    /// Owned and replaced as a whole (scalars, atomic objects and lists).
    Atomic,
    /// A list whose items are identified by these fields.
    ListMap(Vec<String>),
    /// A list of distinct scalars, each owned on its own.
    ListSet,
}

/// Where a walk is in an object: the schema at this point (upstream's markers
/// `x-kubernetes-list-type`, `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`),
/// the definitions its `$ref`s name, and whether it is a custom resource's schema.
/// Without a schema, objects are granular and lists atomic, as upstream's default.
#[derive(Debug, Clone)]
pub struct Walk<'a> {
    schema: Option<&'a Value>,
    defs: Option<&'a Map<String, Value>>,
    custom: bool,
    root: bool,
}

impl<'a> Walk<'a> {
    /// The root of a built-in kind's object, by the kind's annotated schema.
    pub fn builtin(def: &ResourceDef) -> Walk<'static> {
        let s = merge_shape::of(def);
        Walk { schema: Some(&s.root), defs: Some(&s.defs), custom: false, root: true }
    }

    /// The root of a custom resource with this `openAPIV3Schema`.
    pub fn custom(schema: &'a Value) -> Self {
        Walk { schema: Some(schema), defs: None, custom: true, root: true }
    }

    /// The schema here with its `$ref` followed.
    fn resolved(&self) -> Option<&'a Value> {
        let s = self.schema?;
        Some(match self.defs {
            Some(d) => merge_shape::resolve(s, d),
            None => s,
        })
    }

    /// A marker on the field's schema or on the definition it refers to.
    fn marker(&self, name: &str) -> Option<&'a str> {
        let here = self.schema.and_then(|s| s.get(name));
        here.or_else(|| self.resolved().and_then(|s| s.get(name))).and_then(Value::as_str)
    }

    fn field(&self, k: &str) -> Walk<'a> {
        // A custom resource's metadata is ObjectMeta, a built-in type.
        if self.custom && self.root && k == "metadata" {
            let (schema, defs) = match merge_shape::object_meta() {
                Some((m, d)) => (Some(m), Some(d)),
                None => (None, None),
            };
            return Walk { schema, defs, custom: false, root: false };
        }
        let schema = self.resolved().and_then(|s| {
            s.get("properties")
                .and_then(|p| p.get(k))
                .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
        });
        Walk { schema, defs: self.defs, custom: self.custom, root: false }
    }

    fn item(&self) -> Walk<'a> {
        let schema = self.resolved().and_then(|s| s.get("items"));
        Walk { schema, defs: self.defs, custom: self.custom, root: false }
    }

    fn shape(&self, v: &Value) -> Shape {
        match v {
            Value::Object(_) if self.marker("x-kubernetes-map-type") == Some("atomic") => Shape::Atomic,
            Value::Object(_) => Shape::Granular,
            Value::Array(_) => match self.marker("x-kubernetes-list-type") {
                Some("set") => Shape::ListSet,
                Some("map") => {
                    let keys: Vec<String> = self
                        .schema
                        .and_then(|s| s.get("x-kubernetes-list-map-keys"))
                        .and_then(Value::as_array)
                        .map(|k| k.iter().filter_map(Value::as_str).map(String::from).collect())
                        .unwrap_or_default();
                    if keys.is_empty() { Shape::Atomic } else { Shape::ListMap(keys) }
                }
                _ => Shape::Atomic,
            },
            _ => Shape::Atomic,
        }
    }

    /// Default values of key fields that items may omit (a port's protocol).
    fn key_default(&self, key: &str) -> Option<Value> {
        if self.custom {
            return self.schema.and_then(|s| s.pointer(&format!("/items/properties/{key}/default"))).cloned();
        }
        // Built-in defaults are the server's defaulting, not in k8s-openapi's schema.
        (key == "protocol").then(|| json!("TCP"))
    }
}

/// The key of a list item (canonical JSON of its key fields, sorted by name), or
/// `None` when the item lacks one (the list is then treated as atomic).
fn item_key(walk: &Walk, keys: &[String], item: &Value) -> Option<String> {
    let obj = item.as_object()?;
    let mut m = BTreeMap::new();
    for k in keys {
        let v = obj.get(k).filter(|v| !v.is_null()).cloned().or_else(|| walk.key_default(k))?;
        m.insert(k.clone(), v);
    }
    Some(serde_json::to_string(&m).unwrap_or_default())
}

/// The keys of every item, if all have one and none repeats.
fn keyed(walk: &Walk, keys: &[String], items: &[Value]) -> Option<Vec<String>> {
    let out: Vec<String> = items.iter().map(|i| item_key(walk, keys, i)).collect::<Option<_>>()?;
    let mut sorted = out.clone();
    sorted.sort();
    sorted.dedup();
    (sorted.len() == out.len()).then_some(out)
}

fn set_value(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The fields a value sets, as upstream's ToFieldSet: leaves, atomic nodes, list items
/// (with their fields), and objects that are empty or null.
pub fn field_set(v: &Value, walk: &Walk) -> Set {
    let mut s = Set::default();
    fill(v, walk, &mut s);
    s
}

fn fill(v: &Value, walk: &Walk, s: &mut Set) {
    match (walk.shape(v), v) {
        (Shape::Granular, Value::Object(m)) => {
            for (k, c) in m {
                let child = s.children.entry(Pe::Field(k.clone())).or_default();
                fill(c, &walk.field(k), child);
                if c.is_null() || c.as_object().is_some_and(Map::is_empty) {
                    child.member = true;
                }
            }
        }
        (Shape::ListMap(keys), Value::Array(items)) => match keyed(walk, &keys, items) {
            Some(ks) => {
                let iw = walk.item();
                for (k, item) in ks.into_iter().zip(items) {
                    let child = s.children.entry(Pe::Key(k)).or_default();
                    fill(item, &iw, child);
                    child.member = true;
                }
            }
            None => s.member = true,
        },
        (Shape::ListSet, Value::Array(items)) => {
            for i in items {
                s.children.entry(Pe::Value(set_value(i))).or_default().member = true;
            }
        }
        _ => s.member = true,
    }
}

/// What changed between two versions of an object.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

impl Comparison {
    fn changed(&self) -> Set {
        let mut s = self.added.clone();
        s.union(&self.modified);
        s
    }
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

pub fn compare(old: &Value, new: &Value, walk: &Walk) -> Comparison {
    let mut c = Comparison::default();
    cmp(Some(old), Some(new), walk, &mut Vec::new(), &mut c);
    c
}

fn cmp(old: Option<&Value>, new: Option<&Value>, walk: &Walk, path: &mut Vec<Pe>, out: &mut Comparison) {
    let (o, n) = match (old, new) {
        (None, None) => return,
        (Some(_), None) => return out.removed.insert(path),
        (None, Some(n)) => {
            out.added.insert(path);
            let added = field_set(n, walk);
            out.added.node_mut(path).union(&added);
            return;
        }
        (Some(o), Some(n)) => (o, n),
    };
    if o == n {
        return;
    }
    match (walk.shape(n), o, n) {
        (Shape::Granular, Value::Object(om), Value::Object(nm)) if walk.shape(o) == Shape::Granular => {
            let mut keys: Vec<&String> = om.keys().chain(nm.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                path.push(Pe::Field(k.clone()));
                cmp(om.get(k), nm.get(k), &walk.field(k), path, out);
                path.pop();
            }
        }
        (Shape::ListMap(keys), Value::Array(oi), Value::Array(ni)) => {
            match (keyed(walk, &keys, oi), keyed(walk, &keys, ni)) {
                (Some(ok), Some(nk)) => {
                    let iw = walk.item();
                    let old_items: BTreeMap<&String, &Value> = ok.iter().zip(oi).collect();
                    let new_items: BTreeMap<&String, &Value> = nk.iter().zip(ni).collect();
                    let mut all: Vec<&String> = old_items.keys().chain(new_items.keys()).copied().collect();
                    all.sort();
                    all.dedup();
                    for k in all {
                        path.push(Pe::Key(k.clone()));
                        cmp(old_items.get(k).copied(), new_items.get(k).copied(), &iw, path, out);
                        path.pop();
                    }
                }
                _ => out.modified.insert(path),
            }
        }
        (Shape::ListSet, Value::Array(oi), Value::Array(ni)) => {
            for i in ni.iter().filter(|i| !oi.contains(i)) {
                path.push(Pe::Value(set_value(i)));
                out.added.insert(path);
                path.pop();
            }
            for i in oi.iter().filter(|i| !ni.contains(i)) {
                path.push(Pe::Value(set_value(i)));
                out.removed.insert(path);
                path.pop();
            }
        }
        _ => out.modified.insert(path),
    }
}

/// The applied configuration merged into the live object: named fields set, keyed
/// list items merged by key, set lists united, everything else replaced.
pub fn merge(live: &Value, config: &Value, walk: &Walk) -> Value {
    match (walk.shape(config), live, config) {
        (Shape::Granular, Value::Object(lm), Value::Object(cm)) => {
            let mut out = lm.clone();
            for (k, c) in cm {
                if c.is_null() {
                    out.remove(k);
                    continue;
                }
                let merged = match lm.get(k) {
                    Some(l) => merge(l, c, &walk.field(k)),
                    None => c.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Shape::ListMap(keys), Value::Array(li), Value::Array(ci)) => {
            match (keyed(walk, &keys, li), keyed(walk, &keys, ci)) {
                (Some(lk), Some(ck)) => Value::Array(interleave(li, &lk, ci, &ck, &walk.item())),
                _ => config.clone(),
            }
        }
        (Shape::ListSet, Value::Array(li), Value::Array(ci)) => {
            let mut out = li.clone();
            out.extend(ci.iter().filter(|c| !li.contains(c)).cloned());
            Value::Array(out)
        }
        _ => config.clone(),
    }
}

/// The items of a keyed list after an apply, ordered as upstream orders them: the
/// configuration's items in its order, merged with the live ones of the same key, and
/// live items it does not name kept where they were relative to their neighbours.
fn interleave(li: &[Value], lk: &[String], ci: &[Value], ck: &[String], iw: &Walk) -> Vec<Value> {
    let live_of = |k: &String| lk.iter().position(|l| l == k).map(|i| &li[i]);
    let item = |k: &String, c: &Value| live_of(k).map_or_else(|| c.clone(), |l| merge(l, c, iw));
    // Configuration keys that are live too, in the configuration's order.
    let shared: Vec<&String> = ck.iter().filter(|k| lk.contains(k)).collect();
    let mut next_shared = 0;
    let mut merged: Vec<&String> = Vec::new();
    let mut out = Vec::with_capacity(li.len() + ci.len());
    let (mut l, mut r) = (0, 0);
    while l < li.len() || r < ci.len() {
        if l < li.len() && r < ci.len() {
            if lk[l] == ck[r] {
                out.push(item(&ck[r], &ci[r]));
                merged.push(&ck[r]);
                if shared.get(next_shared) == Some(&&ck[r]) {
                    next_shared += 1;
                }
                l += 1;
                r += 1;
                continue;
            }
            // A shared item out of the configuration's order waits for its turn there.
            if ck.contains(&lk[l]) && shared.get(next_shared) != Some(&&lk[l]) {
                l += 1;
                continue;
            }
        }
        if l < li.len() {
            if !ck.contains(&lk[l]) {
                out.push(li[l].clone());
                l += 1;
                continue;
            }
            if merged.contains(&&lk[l]) {
                l += 1;
                continue;
            }
        }
        if r < ci.len() {
            out.push(item(&ck[r], &ci[r]));
            merged.push(&ck[r]);
            if shared.get(next_shared) == Some(&&ck[r]) {
                next_shared += 1;
            }
            r += 1;
        } else {
            // Only shared live items the configuration already placed can be left.
            l += 1;
        }
    }
    out
}

/// Removes from `obj` the fields of `remove` that nobody in `keep` owns (nor anything
/// below them); objects emptied this way go too. A keyed item's key fields stay while
/// the item does.
pub fn prune(obj: &mut Value, remove: &Set, keep: Option<&Set>, walk: &Walk) {
    prune_at(obj, remove, keep, walk, &[]);
}

fn prune_at(v: &mut Value, remove: &Set, keep: Option<&Set>, walk: &Walk, item_keys: &[String]) {
    let shape = walk.shape(v);
    for (pe, r) in &remove.children {
        let k = keep.and_then(|k| k.children.get(pe));
        let kept_below = k.is_some_and(|k| !k.is_empty());
        match (pe, &shape, &mut *v) {
            (Pe::Field(f), _, Value::Object(m)) => {
                if item_keys.contains(f) {
                    continue;
                }
                let Some(c) = m.get_mut(f) else { continue };
                if r.member && !kept_below {
                    m.remove(f);
                    continue;
                }
                let was_empty = c.as_object().is_some_and(Map::is_empty);
                prune_at(c, r, k, &walk.field(f), &[]);
                if !was_empty && c.as_object().is_some_and(Map::is_empty) && !kept_below {
                    m.remove(f);
                }
            }
            (Pe::Key(key), Shape::ListMap(keys), Value::Array(items)) => {
                let Some(ks) = keyed(walk, keys, items) else { continue };
                let Some(i) = ks.iter().position(|x| x == key) else { continue };
                if r.member && !kept_below {
                    items.remove(i);
                    continue;
                }
                prune_at(&mut items[i], r, k, &walk.item(), keys);
            }
            (Pe::Value(sv), _, Value::Array(items)) if r.member && !kept_below => {
                items.retain(|i| set_value(i) != *sv);
            }
            _ => {}
        }
    }
}

/// `Apply` or `Update`, as in `metadata.managedFields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: Option<String>,
    pub set: Set,
}

impl Entry {
    /// Upstream's manager identity: appliers are one manager whatever the version.
    fn same_manager(&self, manager: &str, op: Operation, api_version: &str, sub: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == op
            && self.subresource.as_deref() == sub
            && (op == Operation::Apply || self.api_version == api_version)
    }

    /// How conflicts name this manager, as upstream's.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// The entries of `obj`'s `metadata.managedFields`; `None` when they are not valid.
pub fn decode(obj: &Value) -> Option<Vec<Entry>> {
    let Some(list) = obj.pointer("/metadata/managedFields") else { return Some(Vec::new()) };
    if list.is_null() {
        return Some(Vec::new());
    }
    list.as_array()?
        .iter()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(String::from);
            let operation = match s("operation")?.as_str() {
                "Apply" => Operation::Apply,
                "Update" => Operation::Update,
                _ => return None,
            };
            Some(Entry {
                manager: s("manager").unwrap_or_default(),
                operation,
                api_version: s("apiVersion").unwrap_or_default(),
                time: s("time"),
                subresource: s("subresource").filter(|x| !x.is_empty()),
                set: match e.get("fieldsV1") {
                    Some(f) => Set::from_fields_v1(f)?,
                    None => Set::default(),
                },
            })
        })
        .collect()
}

/// Writes `entries` (appliers first, then oldest first) as `metadata.managedFields`.
pub fn encode(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| (a.operation, &a.time, &a.manager).cmp(&(b.operation, &b.time, &b.manager)));
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    if entries.is_empty() {
        meta.remove("managedFields");
        return;
    }
    let list: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation.as_str(),
                "apiVersion": e.api_version,
                "fieldsType": "FieldsV1",
                "fieldsV1": e.set.to_fields_v1(),
            });
            if let Some(t) = e.time {
                v["time"] = json!(t);
            }
            if let Some(s) = e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    meta.insert("managedFields".into(), Value::Array(list));
}

/// What one write is, for recording its fields.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// `status` for the status subresource: only `.status` is tracked there; elsewhere
    /// `.status` is not tracked when the kind has a status subresource.
    pub subresource: Option<&'a str>,
    pub has_status: bool,
    pub now: &'a str,
}

impl Write<'_> {
    /// The set without the fields nobody owns: type and identity fields, and status
    /// or everything but status, by subresource.
    pub fn tracked(&self, mut s: Set) -> Set {
        if self.subresource == Some("status") {
            let status = s.children.remove(&Pe::Field("status".into()));
            let mut out = Set::default();
            if let Some(st) = status {
                out.children.insert(Pe::Field("status".into()), st);
            }
            return out;
        }
        for f in ["apiVersion", "kind"] {
            s.children.remove(&Pe::Field(f.into()));
        }
        if self.has_status {
            s.children.remove(&Pe::Field("status".into()));
        }
        if let Some(m) = s.children.get_mut(&Pe::Field("metadata".into())) {
            for f in [
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
            ] {
                m.children.remove(&Pe::Field(f.into()));
            }
        }
        s
    }

    fn tracked_comparison(&self, c: Comparison) -> Comparison {
        Comparison {
            added: self.tracked(c.added),
            modified: self.tracked(c.modified),
            removed: self.tracked(c.removed),
        }
    }
}

/// The entries of a new object created by `w.manager` (an Update of every field it set).
pub fn record_create(obj: &Value, walk: &Walk, w: &Write) -> Vec<Entry> {
    vec![Entry {
        manager: w.manager.to_string(),
        operation: Operation::Update,
        api_version: w.api_version.to_string(),
        time: Some(w.now.to_string()),
        subresource: w.subresource.map(String::from),
        set: w.tracked(field_set(obj, walk)),
    }]
}

/// Whether client-sent entries ask for managedFields to be reset (upstream: a list
/// with one empty entry).
pub fn is_reset(entries: &Value) -> bool {
    entries.as_array().is_some_and(|l| !l.is_empty() && l.iter().all(|e| e.as_object().is_some_and(Map::is_empty)))
}

/// Records an Update (create, PUT, a non-apply PATCH) by `w.manager` from `old` to
/// `new`: it owns what it added or changed, others lose those fields, and removed
/// fields are nobody's. `base` are the entries to start from.
pub fn record_update(base: Vec<Entry>, old: &Value, new: &Value, walk: &Walk, w: &Write) -> Vec<Entry> {
    let c = w.tracked_comparison(compare(old, new, walk));
    if c.is_empty() {
        return base;
    }
    let changed = c.changed();
    let mut entries: Vec<Entry> = base
        .into_iter()
        .map(|mut e| {
            e.set = e.set.difference(&changed).without_subtrees(&c.removed);
            e
        })
        .collect();
    let sub = w.subresource;
    match entries.iter_mut().find(|e| e.same_manager(w.manager, Operation::Update, w.api_version, sub)) {
        Some(e) => {
            e.set.union(&changed);
            e.time = Some(w.now.to_string());
        }
        None => entries.push(Entry {
            manager: w.manager.to_string(),
            operation: Operation::Update,
            api_version: w.api_version.to_string(),
            time: Some(w.now.to_string()),
            subresource: sub.map(String::from),
            set: changed,
        }),
    }
    cap_updates(entries)
}

/// At most this many Update entries are kept, as upstream's (`capManagers`).
const MAX_UPDATE_MANAGERS: usize = 10;

/// The Update entry the oldest ones beyond the cap are merged into, per apiVersion.
pub const ANCIENT_CHANGES: &str = "ancient-changes";

/// Keeps the Update entries at `MAX_UPDATE_MANAGERS` as upstream does: from the
/// oldest on, a second entry of an apiVersion merges with the first into that
/// version's `ancient-changes` entry (which takes the newer time), until few enough
/// are left. Apply entries are never merged.
pub fn cap_updates(mut entries: Vec<Entry>) -> Vec<Entry> {
    let mut updaters: Vec<usize> = (0..entries.len()).filter(|&i| entries[i].operation == Operation::Update).collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return entries;
    }
    updaters.sort_by(|&a, &b| (&entries[a].time, &entries[a].manager).cmp(&(&entries[b].time, &entries[b].manager)));
    let mut left = updaters.len();
    let mut first_of_version: BTreeMap<String, usize> = BTreeMap::new();
    let mut merged = vec![false; entries.len()];
    for i in updaters {
        if left <= MAX_UPDATE_MANAGERS {
            break;
        }
        let version = entries[i].api_version.clone();
        let Some(&first) = first_of_version.get(&version) else {
            first_of_version.insert(version, i);
            continue;
        };
        let bucket = match (0..entries.len())
            .find(|&b| !merged[b] && entries[b].same_manager(ANCIENT_CHANGES, Operation::Update, &version, None))
        {
            Some(b) => b,
            None => {
                entries[first].manager = ANCIENT_CHANGES.to_string();
                entries[first].subresource = None;
                first
            }
        };
        if bucket == i {
            continue;
        }
        let set = std::mem::take(&mut entries[i].set);
        entries[bucket].set.union(&set);
        entries[bucket].time = entries[i].time.clone();
        merged[i] = true;
        left -= 1;
    }
    entries.into_iter().zip(merged).filter(|(_, m)| !m).map(|(e, _)| e).collect()
}

/// How an apply treats fields other managers set to other values.
#[derive(Debug, Clone, Copy)]
pub enum Force<'a> {
    /// Conflicts are refused.
    No,
    /// The applier takes the fields over (`force=true`).
    Yes,
    /// Taken over if every conflicting field is in this set, else refused: kubectl's
    /// upgrade from client-side apply may change what its last-applied configuration set.
    Within(&'a Set),
}

/// Server-side apply of `config` by `w.manager` onto `live` (without its
/// managedFields, as `entries`): the merged object with the new entries set, or a 409
/// naming each field another manager set to a different value, as `force` says.
pub fn apply(
    live: &Value,
    entries: Vec<Entry>,
    config: &Value,
    walk: &Walk,
    w: &Write,
    force: Force,
) -> Result<Value, ApiError> {
    let sub = w.subresource;
    let mine = |e: &Entry| e.same_manager(w.manager, Operation::Apply, w.api_version, sub);
    let last = entries.iter().find(|e| mine(e)).map(|e| e.set.clone()).unwrap_or_default();
    let applied = w.tracked(field_set(config, walk));
    let mut merged = merge(live, config, walk);
    let mut keep = applied.clone();
    for e in entries.iter().filter(|e| !mine(e)) {
        keep.union(&e.set);
    }
    prune(&mut merged, &last.difference(&applied), Some(&keep), walk);
    let c = w.tracked_comparison(compare(live, &merged, walk));
    let changed = c.changed();
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| !mine(e)) {
        for p in e.set.intersection_paths(&changed) {
            conflicts.push((e.describe(), p));
        }
    }
    let refused: Vec<(String, Vec<Pe>)> = match force {
        Force::No => conflicts,
        Force::Yes => Vec::new(),
        Force::Within(allowed) => conflicts.into_iter().filter(|(_, p)| !allowed.contains(p)).collect(),
    };
    if !refused.is_empty() {
        return Err(conflict_error(&refused));
    }
    let previous_time = entries.iter().find(|e| mine(e)).and_then(|e| e.time.clone());
    let mut out: Vec<Entry> = entries
        .into_iter()
        .filter(|e| !mine(e))
        .map(|mut e| {
            e.set = e.set.difference(&changed).without_subtrees(&c.removed);
            e
        })
        .collect();
    let time = if c.is_empty() { previous_time.unwrap_or_else(|| w.now.to_string()) } else { w.now.to_string() };
    out.push(Entry {
        manager: w.manager.to_string(),
        operation: Operation::Apply,
        api_version: w.api_version.to_string(),
        time: Some(time),
        subresource: sub.map(String::from),
        set: applied,
    });
    encode(&mut merged, cap_updates(out));
    Ok(merged)
}

/// Upstream's 409 for apply conflicts, a `FieldManagerConflict` cause per field.
fn conflict_error(conflicts: &[(String, Vec<Pe>)]) -> ApiError {
    let causes: Vec<Cause> = conflicts
        .iter()
        .map(|(m, p)| Cause {
            reason: "FieldManagerConflict",
            field: path_string(p),
            message: format!("conflict with {m}"),
        })
        .collect();
    let message = if let [(m, p)] = conflicts {
        format!("Apply failed with 1 conflict: conflict with {m}: {}", path_string(p))
    } else {
        let mut by_manager: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (m, p) in conflicts {
            by_manager.entry(m).or_default().push(path_string(p));
        }
        let mut lines = Vec::new();
        for (m, paths) in by_manager {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(paths.into_iter().map(|p| format!("- {p}")));
        }
        format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
    };
    ApiError { code: 409, reason: "Conflict", message, details: None, causes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::RESOURCES;

    /// A Deployment's walk (by its schema's derived merge shapes).
    fn dw() -> Walk<'static> {
        Walk::builtin(RESOURCES.iter().find(|r| r.kind == "Deployment").unwrap())
    }

    fn w<'a>(manager: &'a str) -> Write<'a> {
        Write { manager, api_version: "apps/v1", subresource: None, has_status: true, now: "2026-01-01T00:00:00Z" }
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "nginx", "image": image,
                    "ports": [{"containerPort": 80}]}]}}}})
    }

    fn fields(obj: &Value) -> Value {
        obj["metadata"]["managedFields"][0]["fieldsV1"].clone()
    }

    #[test]
    fn field_sets_use_upstream_fields_v1() {
        let s = w("m").tracked(field_set(&deployment(2, "nginx:1"), &dw()));
        assert_eq!(
            s.to_fields_v1(),
            json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:replicas": {}, "f:selector": {},
                "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {},
                    "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}}}}}}})
        );
        assert_eq!(Set::from_fields_v1(&s.to_fields_v1()).unwrap(), s);
        let fin = field_set(&json!({"metadata": {"finalizers": ["a"]}}), &dw());
        assert_eq!(fin.to_fields_v1(), json!({"f:metadata": {"f:finalizers": {"v:\"a\"": {}}}}));
    }

    #[test]
    fn apply_creates_and_is_idempotent() {
        let cfg = deployment(2, "nginx:1");
        let live = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
        let once = apply(&live, vec![], &cfg, &dw(), &w("a"), Force::No).unwrap();
        assert_eq!(once["spec"]["replicas"], 2);
        assert_eq!(once["metadata"]["managedFields"][0]["operation"], "Apply");
        let entries = decode(&once).unwrap();
        let mut bare = once.clone();
        bare["metadata"].as_object_mut().unwrap().remove("managedFields");
        let mut later = w("a");
        later.now = "2030-01-01T00:00:00Z";
        let twice = apply(&bare, entries, &cfg, &dw(), &later, Force::No).unwrap();
        assert_eq!(once, twice, "an unchanged apply changes nothing, not even the time");
    }

    fn applied(live: &Value, cfg: &Value, m: &str, force: bool) -> Result<Value, ApiError> {
        let entries = decode(live).unwrap();
        let mut bare = live.clone();
        bare["metadata"].as_object_mut().unwrap().remove("managedFields");
        apply(&bare, entries, cfg, &dw(), &w(m), if force { Force::Yes } else { Force::No })
    }

    #[test]
    fn conflicts_name_field_and_manager_and_force_takes_over() {
        let empty = json!({"metadata": {"name": "web"}});
        let a = applied(&empty, &deployment(2, "nginx:1"), "a", false).unwrap();
        // The same value is shared ownership, not a conflict.
        let same = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let shared = applied(&a, &same, "b", false).unwrap();
        assert_eq!(shared["metadata"]["managedFields"].as_array().unwrap().len(), 2);
        let other = json!({"metadata": {"name": "web"}, "spec": {"replicas": 5}});
        let e = applied(&a, &other, "b", false).unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(e.message, "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas");
        assert_eq!(e.causes[0].reason, "FieldManagerConflict");
        assert_eq!(e.causes[0].field, ".spec.replicas");
        let forced = applied(&a, &other, "b", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        let a_set = decode(&forced).unwrap().into_iter().find(|e| e.manager == "a").unwrap().set;
        assert!(!a_set.contains(&[Pe::Field("spec".into()), Pe::Field("replicas".into())]));
    }

    #[test]
    fn omitted_fields_go_unless_another_manager_owns_them() {
        let empty = json!({"metadata": {"name": "web"}});
        let mut cfg = deployment(2, "nginx:1");
        cfg["metadata"]["labels"]["tier"] = json!("front");
        cfg["metadata"]["annotations"] = json!({"note": "x"});
        let a = applied(&empty, &cfg, "a", false).unwrap();
        let b = applied(&a, &json!({"metadata": {"name": "web", "annotations": {"note": "x"}}}), "b", false).unwrap();
        let smaller = deployment(2, "nginx:1");
        let out = applied(&b, &smaller, "a", false).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(out["metadata"]["annotations"], json!({"note": "x"}), "b still owns it");
    }

    #[test]
    fn keyed_lists_merge_by_key() {
        let live = deployment(2, "nginx:1");
        let cfg = json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}}}});
        let out = merge(&live, &cfg, &dw());
        let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["nginx", "sidecar"]);
        let cfg = json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:2"}]}}}});
        let out = merge(&live, &cfg, &dw());
        assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:2");
        assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80);
    }

    #[test]
    fn custom_lists_follow_the_schema() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "members": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"],
                "items": {"type": "object", "properties": {"id": {"type": "string"}, "role": {"type": "string"}}}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "args": {"type": "array", "items": {"type": "string"}}}}}});
        let walk = Walk::custom(&schema);
        let live = json!({"spec": {"members": [{"id": "a", "role": "x"}], "tags": ["t1"], "args": ["1", "2"]}});
        let cfg = json!({"spec": {"members": [{"id": "b", "role": "y"}], "tags": ["t2"], "args": ["3"]}});
        let out = merge(&live, &cfg, &walk);
        assert_eq!(out["spec"]["members"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["tags"], json!(["t1", "t2"]));
        assert_eq!(out["spec"]["args"], json!(["3"]));
        let fs = field_set(&cfg, &walk).to_fields_v1();
        assert_eq!(fs["f:spec"]["f:members"], json!({"k:{\"id\":\"b\"}": {".": {}, "f:id": {}, "f:role": {}}}));
        assert_eq!(fs["f:spec"]["f:args"], json!({}));
    }

    #[test]
    fn updates_take_fields_from_appliers() {
        let a = applied(&json!({"metadata": {"name": "web"}}), &deployment(2, "nginx:1"), "a", false).unwrap();
        let mut scaled = a.clone();
        scaled["spec"]["replicas"] = json!(3);
        let entries = record_update(decode(&a).unwrap(), &a, &scaled, &dw(), &w("kubectl-scale"));
        let mut obj = scaled.clone();
        encode(&mut obj, entries);
        assert_eq!(fields(&obj)["f:spec"].get("f:replicas"), None, "the applier no longer owns replicas");
        let e = applied(&obj, &deployment(2, "nginx:1"), "a", false).unwrap_err();
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
    }

    #[test]
    fn status_writes_track_only_status_and_main_writes_not_status() {
        let old = json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}, "status": {"replicas": 0}});
        let new = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2}, "status": {"replicas": 1}});
        let mut status = w("kubelet");
        status.subresource = Some("status");
        let e = record_update(vec![], &old, &new, &dw(), &status);
        assert_eq!(e[0].set.to_fields_v1(), json!({"f:status": {"f:replicas": {}}}));
        assert_eq!(e[0].subresource.as_deref(), Some("status"));
        let e = record_update(vec![], &old, &new, &dw(), &w("editor"));
        assert_eq!(e[0].set.to_fields_v1(), json!({"f:spec": {"f:replicas": {}}}));
        // Nothing changed: nothing recorded, not even a time.
        assert!(record_update(vec![], &new, &new, &dw(), &w("editor")).is_empty());
        assert!(is_reset(&json!([{}])));
        assert!(!is_reset(&json!([])));
    }

    #[test]
    fn odd_shapes_neither_panic_nor_merge_by_key() {
        let odd = [
            json!({"spec": {"template": {"spec": {"containers": {"name": "x"}}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"image": "no-name"}, 3, null]}}}}),
            json!({"spec": "text", "metadata": {"finalizers": [1, {"a": 1}, 1]}}),
            json!({"metadata": {"managedFields": [{"operation": "Apply", "fieldsV1": {"x:": {}}}]}}),
            json!([1, 2]),
            json!(null),
        ];
        for live in &odd {
            for cfg in &odd {
                let entries = decode(live).unwrap_or_default();
                let _ = apply(live, entries.clone(), cfg, &dw(), &w("a"), Force::No);
                let _ = record_update(entries, live, cfg, &dw(), &w("b"));
            }
        }
        // Duplicate keys make a keyed list atomic: the configuration replaces it.
        let live = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "1"}]}}}});
        let out = merge(&live, &odd[1], &dw());
        assert_eq!(out["spec"]["template"]["spec"]["containers"], odd[1]["spec"]["template"]["spec"]["containers"]);
    }

    #[test]
    fn update_managers_beyond_ten_collapse_into_ancient_changes() {
        let mut obj = json!({"metadata": {"name": "web"}, "spec": {}});
        let mut entries = Vec::new();
        for i in 0..12 {
            let mut new = obj.clone();
            new["spec"][format!("f{i}")] = json!(i);
            let mut w = w("");
            let (manager, now) = (format!("m{i:02}"), format!("2026-01-01T00:00:{i:02}Z"));
            w.manager = &manager;
            w.now = &now;
            entries = record_update(entries, &obj, &new, &dw(), &w);
            obj = new;
        }
        let mut names: Vec<&str> = entries.iter().map(|e| e.manager.as_str()).collect();
        names.sort();
        assert_eq!(names.len(), 10);
        assert_eq!(names[0], ANCIENT_CHANGES);
        assert!(!names.contains(&"m00") && !names.contains(&"m01") && !names.contains(&"m02"), "{names:?}");
        let ancient = entries.iter().find(|e| e.manager == ANCIENT_CHANGES).unwrap();
        let want = json!({"f:spec": {"f:f0": {}, "f:f1": {}, "f:f2": {}}});
        assert_eq!(ancient.set.to_fields_v1(), want);
        assert_eq!(ancient.time.as_deref(), Some("2026-01-01T00:00:02Z"), "the newest merged entry's time");
        assert_eq!(ancient.operation, Operation::Update);
        // Appliers are never merged, and another version has its own bucket.
        let mut more = entries.clone();
        more.push(Entry { manager: "a".into(), operation: Operation::Apply, ..ancient.clone() });
        let mut v2 = ancient.clone();
        v2.manager = "old-v2".into();
        v2.api_version = "apps/v2".into();
        v2.time = Some("2025-01-01T00:00:00Z".into());
        more.push(v2);
        let capped = cap_updates(more);
        assert!(capped.iter().any(|e| e.manager == "a"));
        assert!(capped.iter().any(|e| e.manager == "old-v2"), "first of its version stays");
        assert_eq!(capped.iter().filter(|e| e.operation == Operation::Update).count(), 10);
    }

    #[test]
    fn keyed_items_keep_the_configurations_order() {
        let names = |v: &Value| -> Vec<String> {
            v["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        let list = |n: &[&str]| {
            let items: Vec<Value> = n.iter().map(|n| json!({"name": n})).collect();
            json!({"spec": {"template": {"spec": {"containers": items}}}})
        };
        let cases: [(&[&str], &[&str], &[&str]); 5] = [
            (&["a", "b"], &["a", "new", "b"], &["a", "new", "b"]),
            (&["a", "x", "b"], &["a", "b"], &["a", "x", "b"]),
            (&["a", "b"], &["b", "a"], &["b", "a"]),
            (&["x", "a", "y", "b"], &["b", "a"], &["x", "y", "b", "a"]),
            (&[], &["a"], &["a"]),
        ];
        for (live, cfg, want) in cases {
            let out = merge(&list(live), &list(cfg), &dw());
            assert_eq!(names(&out), want, "live {live:?}, applied {cfg:?}");
        }
    }
}
