//! Pod template identity: the `pod-template-hash` that names a revision's ReplicaSet,
//! and template equality apart from that hash. Pure functions.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

use crate::helpers::hash::fnv1a_32;

/// The label that ties a ReplicaSet and its pods to one template revision.
pub const HASH_LABEL: &str = "pod-template-hash";

/// Sorts object keys so the JSON is the same whatever order a map iterated in.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for k in keys {
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for x in a {
                canonical(x, out);
                out.push(',');
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A stable, label-safe hash of a pod template (FNV-1a over its canonical JSON and the
/// collision count), spelled without vowels so it never forms words.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: i32) -> String {
    let mut text = String::new();
    canonical(&template_without_hash(template), &mut text);
    let collisions = if collision_count > 0 { collision_count.to_le_bytes().to_vec() } else { vec![] };
    let mut h = fnv1a_32(text.bytes().chain(collisions));
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut s = Vec::new();
    loop {
        s.push(ALPHABET[(h % ALPHABET.len() as u32) as usize]);
        h /= ALPHABET.len() as u32;
        if h == 0 {
            break;
        }
    }
    String::from_utf8(s).unwrap_or_default()
}

/// Drops nulls, empty objects and empty lists: clients that decode into typed structs
/// and encode again (kubectl's `rollout undo` does) add `resources: {}` and the like,
/// which must not make the same template look new.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for x in m.values_mut() {
                normalize(x);
            }
            m.retain(|_, x| !is_empty_value(x));
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The template as normalized JSON without the `pod-template-hash` label: what the hash
/// and the comparison of templates look at.
fn template_without_hash(t: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    if let Some(labels) = v.pointer_mut("/metadata/labels").and_then(|l| l.as_object_mut()) {
        labels.remove(HASH_LABEL);
    }
    normalize(&mut v);
    v
}

/// Same template apart from the hash label (how a ReplicaSet is matched to a revision).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    template_without_hash(a) == template_without_hash(b)
}
