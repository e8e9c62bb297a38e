//! Protobuf decoding of the workload kinds that kubectl's generators send as protobuf
//! (`kubectl create deployment|job|service ...`), by a table per message: field number →
//! JSON name and shape. Only the fields those generators set, and their common
//! neighbours, are listed; anything else in the message is ignored, as for the kinds in
//! `protobuf.rs`. Field numbers are those of Kubernetes' `generated.proto` files.
//!
//! It must only turn bytes into JSON; validation happens on the normal create path.

use serde_json::{Map, Value, json};

use super::wire::{Field, Res, fields, insert_map, map_entry, object_meta, string};

/// How one field is turned into JSON.
#[derive(Clone, Copy)]
pub(super) enum Shape {
    /// Non-pointer scalars: Go's protobuf encoder always writes them, so the zero value
    /// ("", 0, false) means "not set" and is left out of the JSON.
    Str,
    Int,
    Bool,
    /// Pointer fields (`*int32`, `*bool`): present only when set, so zero is a value.
    IntPtr,
    BoolPtr,
    Strs,
    StrMap,
    Meta,
    /// A `map<string, Quantity>` (resource lists).
    Quantities,
    IntOrString,
    Msg(&'static [F]),
    Msgs(&'static [F]),
    /// An embedded Go struct: its own message on the wire, its fields inlined in JSON
    /// (an Ingress rule's `IngressRuleValue`).
    Inline(&'static [F]),
}

/// One field of a message: number, JSON name, shape.
pub(super) type F = (u64, &'static str, Shape);

use Shape::*;

pub(super) const LABEL_SELECTOR_REQ: &[F] = &[(1, "key", Str), (2, "operator", Str), (3, "values", Strs)];
pub(super) const LABEL_SELECTOR: &[F] =
    &[(1, "matchLabels", StrMap), (2, "matchExpressions", Msgs(LABEL_SELECTOR_REQ))];
const CONTAINER_PORT: &[F] =
    &[(1, "name", Str), (2, "hostPort", Int), (3, "containerPort", Int), (4, "protocol", Str), (5, "hostIP", Str)];
const ENV_VAR: &[F] = &[(1, "name", Str), (2, "value", Str)];
const RESOURCES: &[F] = &[(1, "limits", Quantities), (2, "requests", Quantities)];
const CONTAINER: &[F] = &[
    (1, "name", Str),
    (2, "image", Str),
    (3, "command", Strs),
    (4, "args", Strs),
    (5, "workingDir", Str),
    (6, "ports", Msgs(CONTAINER_PORT)),
    (7, "env", Msgs(ENV_VAR)),
    (8, "resources", Msg(RESOURCES)),
    (13, "terminationMessagePath", Str),
    (14, "imagePullPolicy", Str),
    (16, "stdin", Bool),
    (17, "stdinOnce", Bool),
    (18, "tty", Bool),
    (20, "terminationMessagePolicy", Str),
];
const POD_SPEC: &[F] = &[
    (2, "containers", Msgs(CONTAINER)),
    (3, "restartPolicy", Str),
    (4, "terminationGracePeriodSeconds", IntPtr),
    (5, "activeDeadlineSeconds", IntPtr),
    (6, "dnsPolicy", Str),
    (7, "nodeSelector", StrMap),
    (8, "serviceAccountName", Str),
    (10, "nodeName", Str),
    (11, "hostNetwork", Bool),
    (19, "schedulerName", Str),
    (20, "initContainers", Msgs(CONTAINER)),
];
const POD_TEMPLATE: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(POD_SPEC))];
const ROLLING_UPDATE: &[F] = &[(1, "maxUnavailable", IntOrString), (2, "maxSurge", IntOrString)];
const STRATEGY: &[F] = &[(1, "type", Str), (2, "rollingUpdate", Msg(ROLLING_UPDATE))];
const DEPLOYMENT_SPEC: &[F] = &[
    (1, "replicas", IntPtr),
    (2, "selector", Msg(LABEL_SELECTOR)),
    (3, "template", Msg(POD_TEMPLATE)),
    (4, "strategy", Msg(STRATEGY)),
    (5, "minReadySeconds", Int),
    (6, "revisionHistoryLimit", IntPtr),
    (7, "paused", Bool),
    (9, "progressDeadlineSeconds", IntPtr),
];
pub(super) const JOB_SPEC: &[F] = &[
    (1, "parallelism", IntPtr),
    (2, "completions", IntPtr),
    (3, "activeDeadlineSeconds", IntPtr),
    (4, "selector", Msg(LABEL_SELECTOR)),
    (5, "manualSelector", BoolPtr),
    (6, "template", Msg(POD_TEMPLATE)),
    (7, "backoffLimit", IntPtr),
    (8, "ttlSecondsAfterFinished", IntPtr),
    (9, "completionMode", Str),
    (10, "suspend", BoolPtr),
];
const SERVICE_PORT: &[F] = &[
    (1, "name", Str),
    (2, "protocol", Str),
    (3, "port", Int),
    (4, "targetPort", IntOrString),
    (5, "nodePort", Int),
    (6, "appProtocol", Str),
];
const SERVICE_SPEC: &[F] = &[
    (1, "ports", Msgs(SERVICE_PORT)),
    (2, "selector", StrMap),
    (3, "clusterIP", Str),
    (4, "type", Str),
    (5, "externalIPs", Strs),
    (7, "sessionAffinity", Str),
    (10, "externalName", Str),
    (11, "externalTrafficPolicy", Str),
    (13, "publishNotReadyAddresses", Bool),
];
const DEPLOYMENT: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(DEPLOYMENT_SPEC))];
const JOB: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(JOB_SPEC))];
const SERVICE: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(SERVICE_SPEC))];

/// Decodes the message of a `kind` this module knows; `None` for other kinds.
pub fn decode(kind: &str, raw: &[u8]) -> Option<Res<Value>> {
    let table = match kind {
        "Deployment" => DEPLOYMENT,
        "Job" => JOB,
        "Service" => SERVICE,
        _ => super::generators::table(kind)?,
    };
    Some(message(raw, table))
}

/// Decodes one message by its table.
pub(super) fn message(b: &[u8], table: &'static [F]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        let Some(&(_, name, shape)) = table.iter().find(|(num, _, _)| *num == n) else { continue };
        match (shape, f) {
            (Str, Field::Bytes(x)) => {
                if !x.is_empty() {
                    o.insert(name.into(), json!(string(x)?));
                }
            }
            // int64/int32/bool are varints; negative int32 arrive sign-extended to 64 bits.
            (Int, Field::Varint(v)) => {
                if v != 0 {
                    o.insert(name.into(), json!(v as i64));
                }
            }
            (IntPtr, Field::Varint(v)) => {
                o.insert(name.into(), json!(v as i64));
            }
            (Bool, Field::Varint(v)) => {
                if v != 0 {
                    o.insert(name.into(), json!(true));
                }
            }
            (BoolPtr, Field::Varint(v)) => {
                o.insert(name.into(), json!(v != 0));
            }
            (Strs, Field::Bytes(x)) => {
                push(&mut o, name, json!(string(x)?));
            }
            (StrMap, Field::Bytes(x)) => insert_map(&mut o, name, map_entry(x, false)?),
            (Meta, Field::Bytes(x)) => {
                o.insert(name.into(), object_meta(x)?);
            }
            (Quantities, Field::Bytes(x)) => {
                let (k, q) = quantity_entry(x)?;
                insert_map(&mut o, name, (k, json!(q)));
            }
            (IntOrString, Field::Bytes(x)) => {
                o.insert(name.into(), int_or_string(x)?);
            }
            (Msg(t), Field::Bytes(x)) => {
                o.insert(name.into(), message(x, t)?);
            }
            (Msgs(t), Field::Bytes(x)) => {
                push(&mut o, name, message(x, t)?);
            }
            (Inline(t), Field::Bytes(x)) => {
                if let Value::Object(inner) = message(x, t)? {
                    o.extend(inner);
                }
            }
            _ => return Err(format!("field {n} ({name}) has an unexpected wire type")),
        }
    }
    Ok(Value::Object(o))
}

/// Appends to the repeated field `name`.
fn push(o: &mut Map<String, Value>, name: &str, v: Value) {
    if let Some(a) = o.entry(name).or_insert_with(|| json!([])).as_array_mut() {
        a.push(v);
    }
}

/// A `map<string, Quantity>` entry; Quantity is `{string = 1}`.
fn quantity_entry(b: &[u8]) -> Res<(String, String)> {
    let (mut k, mut q) = (String::new(), String::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = string(x)?,
            (2, Field::Bytes(x)) => {
                for (m, g) in fields(x)? {
                    if let (1, Field::Bytes(s)) = (m, g) {
                        q = string(s)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok((k, q))
}

/// IntOrString: type = 1 (0 int, 1 string), intVal = 2, strVal = 3.
fn int_or_string(b: &[u8]) -> Res<Value> {
    let (mut ty, mut i, mut s) = (0u64, 0i64, String::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Varint(v)) => ty = v,
            (2, Field::Varint(v)) => i = v as i32 as i64,
            (3, Field::Bytes(x)) => s = string(x)?,
            _ => {}
        }
    }
    Ok(if ty == 1 { json!(s) } else { json!(i) })
}
