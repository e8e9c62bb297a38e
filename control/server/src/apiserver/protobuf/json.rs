//! A decoded Kubernetes message as the JSON the same object has: field names are the
//! descriptor's `json_name`s, embedded Go structs are inlined, and the types whose JSON
//! is not their message's shape (IntOrString, Quantity, Time, MicroTime, Duration,
//! RawExtension, FieldsV1, the apiextensions JSON types, ExtraValue) are mapped by
//! message name.
//!
//! Go's protobuf encoder writes a non-pointer field even when it is zero, so zero ("",
//! 0, false) means "not set" and is left out, as Go's `omitempty` JSON leaves it out;
//! it is kept for required fields (the descriptor's `LABEL_REQUIRED`) and for the
//! pointer fields of [`ZERO_IS_A_VALUE`], whose zero a client sends on purpose.

use base64::Engine;
use prost_reflect::{Cardinality, DynamicMessage, FieldDescriptor, MapKey, ReflectMessage, Value as PValue};
use serde_json::{Map, Value, json};

use super::{INLINE, Res};

/// JSON names of Go pointer fields (`*int32`, `*int64`, `*bool`, `*string`) whose zero
/// differs from unset: replicas 0 scales to nothing, backoffLimit 0 never retries,
/// automountServiceAccountToken false mounts no token, a claim's storageClassName ""
/// asks for no class, and so on. (Where a field of the same name is not a pointer, Go
/// writes a zero that means the same as unset there.)
const ZERO_IS_A_VALUE: &[&str] = &[
    "replicas",
    "minReplicas",
    "revisionHistoryLimit",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "startingDeadlineSeconds",
    "backoffLimit",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
    "parallelism",
    "completions",
    "ttlSecondsAfterFinished",
    "terminationGracePeriodSeconds",
    "gracePeriodSeconds",
    "deletionGracePeriodSeconds",
    "expirationSeconds",
    "tolerationSeconds",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "priority",
    "defaultMode",
    "mode",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "allowPrivilegeEscalation",
    "privileged",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "hostUsers",
    "shareProcessNamespace",
    "setHostnameAsFQDN",
    "allocateLoadBalancerNodePorts",
    "immutable",
    "suspend",
    "manualSelector",
    "optional",
    "orphanDependents",
    "blockOwnerDeletion",
    "controller",
    "storageClassName",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-preserve-unknown-fields",
];

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
const APIEXTENSIONS: &[&str] = &[
    "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1",
    "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1beta1",
];
/// `time.Time{}` as Unix seconds.
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// Whether a Time or MicroTime holds a time: Go writes the zero time (an unset
/// non-pointer Time, a pod template's creationTimestamp) as an empty message, which is
/// JSON's `null`, not the Unix epoch.
fn time_set(m: &DynamicMessage) -> bool {
    (m.has_field_by_name("seconds") || m.has_field_by_name("nanos")) && int(m, "seconds") > GO_ZERO_TIME
}

fn b64(b: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(b))
}

fn field<'a>(m: &'a DynamicMessage, name: &str) -> Option<std::borrow::Cow<'a, PValue>> {
    m.has_field_by_name(name).then(|| m.get_field_by_name(name)).flatten()
}

fn int(m: &DynamicMessage, name: &str) -> i64 {
    match field(m, name).as_deref() {
        Some(PValue::I64(v)) => *v,
        Some(PValue::I32(v)) => i64::from(*v),
        _ => 0,
    }
}

fn text(m: &DynamicMessage, name: &str) -> String {
    field(m, name).and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Raw bytes that hold a JSON document (RawExtension, FieldsV1, apiextensions JSON).
fn raw_json(m: &DynamicMessage, name: &str) -> Res<Option<Value>> {
    match field(m, name).as_deref() {
        Some(PValue::Bytes(b)) if !b.is_empty() => {
            serde_json::from_slice(b).map(Some).map_err(|e| format!("{} holds no JSON: {e}", m.descriptor().name()))
        }
        _ => Ok(None),
    }
}

/// A Go `time.Duration` as Go prints it (`1h2m3.5s`, `300ms`, `0s`).
pub(super) fn go_duration(nanos: i64) -> String {
    fn frac(v: u64, unit: u64, width: usize) -> String {
        let (whole, rest) = (v / unit, v % unit);
        if rest == 0 {
            whole.to_string()
        } else {
            format!("{whole}.{:0width$}", rest).trim_end_matches('0').to_string()
        }
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    let body = match u {
        0 => "0s".to_string(),
        1..1_000 => format!("{u}ns"),
        1_000..1_000_000 => format!("{}µs", frac(u, 1_000, 3)),
        1_000_000..1_000_000_000 => format!("{}ms", frac(u, 1_000_000, 6)),
        _ => {
            let (h, m) = (u / 3_600_000_000_000, u / 60_000_000_000 % 60);
            let s = format!("{}s", frac(u % 60_000_000_000, 1_000_000_000, 9));
            match (h, m) {
                (0, 0) => s,
                (0, m) => format!("{m}m{s}"),
                (h, m) => format!("{h}h{m}m{s}"),
            }
        }
    };
    format!("{sign}{body}")
}

/// The JSON of a message whose JSON is not an object of its fields; `Ok(None)` leaves
/// the field out (a zero Time), `Err` is bad data; `None` for a message whose JSON is
/// an object of its fields.
fn special(m: &DynamicMessage) -> Option<Res<Option<Value>>> {
    let descriptor = m.descriptor();
    let (pkg, short) = (descriptor.package_name(), descriptor.name());
    let apiextensions = APIEXTENSIONS.contains(&pkg);
    Some(match (pkg, short) {
        ("k8s.io.apimachinery.pkg.util.intstr", "IntOrString") => {
            Ok(Some(if int(m, "type") == 1 { json!(text(m, "str_val")) } else { json!(int(m, "int_val")) }))
        }
        ("k8s.io.apimachinery.pkg.api.resource", "Quantity" | "QuantityValue") => Ok(Some(json!(text(m, "string")))),
        (META, "Time") => Ok(time_set(m).then(|| json!(crate::apiserver::meta::format_time(int(m, "seconds"))))),
        (META, "MicroTime") => Ok(time_set(m).then(|| {
            let base = crate::apiserver::meta::format_time(int(m, "seconds"));
            json!(format!("{}.{:06}Z", base.trim_end_matches('Z'), int(m, "nanos") / 1_000))
        })),
        (META, "Duration") => Ok(Some(json!(go_duration(int(m, "duration"))))),
        (META, "FieldsV1") | ("k8s.io.apimachinery.pkg.runtime", "RawExtension") => raw_json(m, "raw"),
        (_, "Json" | "JSON") if apiextensions => raw_json(m, "raw"),
        // Untagged unions: a schema, or a bool / list of schemas / list of strings.
        (_, "JsonSchemaPropsOrBool" | "JSONSchemaPropsOrBool") if apiextensions => {
            match field(m, "schema").as_deref() {
                Some(PValue::Message(s)) => message(s).map(Some),
                _ => Ok(Some(json!(matches!(field(m, "allows").as_deref(), Some(PValue::Bool(true)))))),
            }
        }
        (
            _,
            "JsonSchemaPropsOrArray"
            | "JSONSchemaPropsOrArray"
            | "JsonSchemaPropsOrStringArray"
            | "JSONSchemaPropsOrStringArray",
        ) if apiextensions => {
            let list = field(m, "j_son_schemas").or_else(|| field(m, "property"));
            match (list.as_deref(), field(m, "schema").as_deref()) {
                (Some(l), _) => list_json(l),
                (None, Some(PValue::Message(s))) => message(s).map(Some),
                _ => Ok(None),
            }
        }
        // Go's `type ExtraValue []string` (and its like): a message of `items` on the
        // wire, a list in JSON.
        _ if descriptor.fields().len() == 1 && descriptor.get_field_by_name("items").is_some() => {
            match field(m, "items").as_deref() {
                Some(l) => list_json(l),
                None => Ok(Some(json!([]))),
            }
        }
        _ => return None,
    })
}

fn list_json(v: &PValue) -> Res<Option<Value>> {
    match v {
        PValue::List(items) => items.iter().map(element).collect::<Res<Vec<_>>>().map(|v| Some(Value::Array(v))),
        _ => Ok(None),
    }
}

/// One value of a list or map: always kept, zero or not.
fn element(v: &PValue) -> Res<Value> {
    Ok(match v {
        PValue::Bool(b) => json!(b),
        PValue::I32(n) => json!(n),
        PValue::I64(n) => json!(n),
        PValue::U32(n) => json!(n),
        PValue::U64(n) => json!(n),
        PValue::F32(n) => json!(n),
        PValue::F64(n) => json!(n),
        PValue::String(s) => json!(s),
        PValue::Bytes(b) => b64(b),
        PValue::EnumNumber(n) => json!(n),
        PValue::Message(m) => message(m)?,
        PValue::List(_) => list_json(v)?.unwrap_or(Value::Null),
        PValue::Map(entries) => {
            let mut o = Map::new();
            for (k, v) in entries {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                o.insert(key, element(v)?);
            }
            Value::Object(o)
        }
    })
}

/// A present singular field's JSON, or `None` to leave it out (Go's zero of a
/// non-pointer field).
fn singular(fd: &FieldDescriptor, v: &PValue) -> Res<Option<Value>> {
    let keep_zero = fd.cardinality() == Cardinality::Required || ZERO_IS_A_VALUE.contains(&fd.json_name());
    let zero = match v {
        PValue::Message(m) => return special(m).unwrap_or_else(|| message(m).map(Some)),
        PValue::Bool(b) => !b,
        PValue::I32(n) => *n == 0,
        PValue::I64(n) => *n == 0,
        PValue::F64(n) => *n == 0.0,
        PValue::String(s) => s.is_empty(),
        PValue::Bytes(b) => b.is_empty(),
        _ => false,
    };
    if zero && !keep_zero { Ok(None) } else { element(v).map(Some) }
}

/// Adds a message's present fields to `out` (an inlined embedded struct adds its own).
fn fields_into(m: &DynamicMessage, out: &mut Map<String, Value>) -> Res<()> {
    for fd in m.descriptor().fields() {
        if !m.has_field(&fd) {
            continue;
        }
        let v = m.get_field(&fd);
        if fd.json_name() == INLINE {
            if let PValue::Message(inner) = &*v {
                fields_into(inner, out)?;
            }
            continue;
        }
        let json = if fd.is_list() || fd.is_map() { Some(element(&v)?) } else { singular(&fd, &v)? };
        // Go writes every object's `spec` and `status` structs, empty when the client set
        // nothing in them; the server's defaulting (a Namespace's finalizers and phase)
        // takes a missing one as unset, as for a JSON client that leaves them out.
        let empty_spec_or_status =
            matches!(fd.json_name(), "spec" | "status") && json.as_ref().is_some_and(|j| *j == json!({}));
        if let Some(json) = json.filter(|_| !empty_spec_or_status) {
            out.insert(fd.json_name().to_string(), json);
        }
    }
    Ok(())
}

/// A message as a JSON object (or, for the special types, their JSON).
pub(super) fn message(m: &DynamicMessage) -> Res<Value> {
    if let Some(v) = special(m) {
        return Ok(v?.unwrap_or(Value::Null));
    }
    let mut out = Map::new();
    fields_into(m, &mut out)?;
    Ok(Value::Object(out))
}

/// A Secret's `stringData` is write-only: folded into `data` (base64), as the real API
/// server does, a key in both taking `stringData`'s value.
pub(super) fn fold_string_data(secret: &mut Value) {
    let Some(o) = secret.as_object_mut() else { return };
    let Some(Value::Object(sd)) = o.remove("stringData") else { return };
    let data = o.entry("data").or_insert_with(|| json!({}));
    for (k, v) in sd {
        data[k.as_str()] = json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or("").as_bytes()));
    }
}
