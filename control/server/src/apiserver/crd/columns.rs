//! A custom resource's Table (what `kubectl get` prints): Name, then the version's
//! `additionalPrinterColumns` (Age alone when it declares none), each cell found by
//! a simple JSONPath: fields (`.spec.replicas`), indexes (`[0]`), all items (`[*]`)
//! and equality filters (`[?(@.type=="Ready")]`); the first match is shown, as
//! upstream shows it. Read-only: it must not change objects.

use serde_json::{Value, json};

use crate::apiserver::meta::{human_age, parse_time, unix_now};
use crate::apiserver::table_object::{self, Include};

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub path: Vec<Step>,
}

impl Column {
    /// The printer columns of a CRD version (Age when it names none).
    pub fn of_version(v: &Value) -> Vec<Column> {
        let declared = v.get("additionalPrinterColumns").and_then(Value::as_array);
        let Some(declared) = declared.filter(|d| !d.is_empty()) else {
            return vec![Column {
                name: "Age".into(),
                ty: "date".into(),
                format: String::new(),
                description: String::new(),
                priority: 0,
                path: parse_path(".metadata.creationTimestamp").unwrap_or_default(),
            }];
        };
        let s = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        declared
            .iter()
            .filter_map(|c| {
                Some(Column {
                    name: s(c, "name"),
                    ty: s(c, "type"),
                    format: s(c, "format"),
                    description: s(c, "description"),
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    path: parse_path(c.get("jsonPath")?.as_str()?)?,
                })
            })
            .collect()
    }

    fn cell(&self, obj: &Value) -> Value {
        let Some(v) = eval(&self.path, obj).into_iter().next() else { return Value::Null };
        match self.ty.as_str() {
            "date" => match v.as_str().and_then(parse_time) {
                Some(t) => json!(human_age(unix_now() - t)),
                None => Value::Null,
            },
            "integer" => v.as_i64().map_or(Value::Null, |i| json!(i)),
            "number" => v.as_f64().map_or(Value::Null, |f| json!(f)),
            "boolean" => v.as_bool().map_or(Value::Null, |b| json!(b)),
            _ => match v {
                Value::String(s) => json!(s),
                other => json!(other.to_string()),
            },
        }
    }
}

/// One step of a JSONPath.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.a.b=="v")]`: the items whose field at the path equals the value.
    Filter(Vec<String>, Value),
}

/// Parses the JSONPaths printer columns use (`None` if it is not one of those).
pub fn parse_path(p: &str) -> Option<Vec<Step>> {
    let p = p.trim();
    let p = p.strip_prefix('{').and_then(|q| q.strip_suffix('}')).unwrap_or(p);
    let mut rest = p.strip_prefix('$').unwrap_or(p);
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            steps.push(Step::Field(r[..end].to_string()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = r[..end].trim();
            steps.push(if inner == "*" {
                Step::All
            } else if let Ok(i) = inner.parse() {
                Step::Index(i)
            } else {
                let cond = inner.strip_prefix("?(")?.strip_suffix(')')?;
                let (lhs, rhs) = cond.split_once("==")?;
                let field: Vec<String> = lhs.trim().strip_prefix("@.")?.split('.').map(String::from).collect();
                let rhs = rhs.trim();
                let value = match rhs.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                    Some(s) => json!(s),
                    None => match rhs.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
                        Some(s) => json!(s),
                        None => serde_json::from_str(rhs).ok()?,
                    },
                };
                Step::Filter(field, value)
            });
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(steps)
}

/// The values `path` finds in `obj`.
pub fn eval<'a>(path: &[Step], obj: &'a Value) -> Vec<&'a Value> {
    let mut cur = vec![obj];
    for step in path {
        cur = cur
            .into_iter()
            .flat_map(|v| -> Vec<&Value> {
                match step {
                    Step::Field(f) => v.get(f).into_iter().collect(),
                    Step::Index(i) => v.get(i).into_iter().collect(),
                    Step::All => v.as_array().map(|a| a.iter().collect()).unwrap_or_default(),
                    Step::Filter(field, want) => v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter(|item| field.iter().try_fold(*item, |x, f| x.get(f)) == Some(want))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
    }
    cur
}

/// The Table of custom objects: Name, then `columns` (a version's printer columns).
pub fn table(columns: &[Column], objects: &[Value], list_meta: Value, include: Include) -> Value {
    let mut defs = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    defs.extend(columns.iter().map(|c| {
        json!({"name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    let cells = |o: &Value| {
        let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
        cells.extend(columns.iter().map(|c| c.cell(o)));
        cells
    };
    table_object::build(defs, objects, cells, list_meta, include)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_paths_and_filters() {
        let o = json!({"spec": {"replicas": 3, "ports": [{"port": 80}, {"port": 443}]},
            "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        let get = |p: &str| eval(&parse_path(p).unwrap(), &o).into_iter().cloned().collect::<Vec<_>>();
        assert_eq!(get(".spec.replicas"), vec![json!(3)]);
        assert_eq!(get(".spec.ports[1].port"), vec![json!(443)]);
        assert_eq!(get(".spec.ports[*].port"), vec![json!(80), json!(443)]);
        assert_eq!(get(r#".status.conditions[?(@.type=="Ready")].status"#), vec![json!("True")]);
        assert_eq!(get(".status.missing"), Vec::<Value>::new());
        assert!(parse_path("spec").is_none());
        assert!(parse_path(".a[?(@.x)]").is_none());
    }
}
