//! The `meta.k8s.io/v1` Table object that server-side printing answers with: its rows,
//! how much of each object a row carries (`?includeObject=`), and a built-in kind's
//! column. The built-in printers (`table`, `printers`) and custom resources' printer
//! columns (`crd`) fill it alike; it imports none of them.
//!
//! It must not change objects; it only reads them.

use serde_json::{Value, json};

/// A built-in kind's column: name, type and priority (priority 1 columns appear with
/// `-o wide`).
pub(super) struct Col(pub(super) &'static str, pub(super) &'static str, pub(super) u8);

/// How much of each object rides along in a row (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// A Table of `objects`: `column_definitions` name its columns, `cells` gives each
/// object's row.
pub(super) fn build(
    column_definitions: Vec<Value>,
    objects: &[Value],
    cells: impl Fn(&Value) -> Vec<Value>,
    list_meta: Value,
    include: Include,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut r = json!({"cells": cells(o)});
            let obj = row_object(o, include);
            if !obj.is_null() {
                r["object"] = obj;
            }
            r
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

fn row_object(o: &Value, include: Include) -> Value {
    match include {
        Include::None => Value::Null,
        Include::Object => o.clone(),
        Include::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
        }),
    }
}
