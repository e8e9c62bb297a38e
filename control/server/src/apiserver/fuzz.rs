//! The fuzz target's body, here rather than in the fuzz crate so that the seed-corpus
//! test (stable, no libFuzzer) and `cargo fuzz` run exactly the same code. Compiled
//! only for tests and with the `fuzzing` feature (which `control/server/fuzz` enables):
//! it is no API of the server.

use serde_json::{Value, json};

use super::decode::{
    NewObject, apply_patch, check_type, decode_for_create, decode_object, decode_patch, decode_update,
};
use super::resource_def::ResourceDef;
use super::selectors::field_value;

/// The create request every body input is decoded as: namespace `default`, a fixed uid
/// and generated-name suffix (the decoding path must not depend on randomness).
pub fn new_object(strict: bool) -> NewObject<'static> {
    NewObject { namespace: Some("default"), strict, uid: "00000000-0000-0000-0000-000000000000", name_suffix: "fuzzz" }
}

/// Runs one fuzz input through the decoding paths the handlers use.
///
/// Input layout: byte 0 picks what to exercise (low 3 bits) and strict field
/// validation (bit 7), byte 1 picks the resource kind, the rest is the request body (or
/// selector string). Errors are expected; only panics and broken invariants are bugs.
pub fn fuzz_one(data: &[u8]) {
    let [mode, kind, body @ ..] = data else { return };
    let resources = super::resources::RESOURCES;
    let def = &resources[usize::from(*kind) % resources.len()];
    let strict = mode & 0x80 != 0;
    match mode & 0x07 {
        m @ 0..=2 => {
            let ct = ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"][usize::from(m)];
            if let Ok(obj) = decode_for_create(def, ct, body, &new_object(strict)) {
                // What passed validation is what gets stored: it must be an object of
                // this kind that serialises, and decoding it again must accept it.
                assert_eq!(obj["kind"], def.kind);
                let again = serde_json::to_vec(&obj).expect("a decoded object serialises");
                decode_object(def, "application/json", &again).expect("a decoded object decodes again");
            }
        }
        m @ 3..=5 => {
            let ct = [
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/json-patch+json",
            ][usize::from(m - 3)];
            if let Ok((kind, p)) = decode_patch(ct, body)
                && let Ok(patched) = apply_patch(kind, &p, &fuzz_target_object(def), def, "x")
            {
                // The patch handler's next steps: type check, typed decode, validation.
                let mut patched = patched;
                if check_type(def, &mut patched).is_ok() {
                    let _ = decode_update(def, patched, strict);
                }
            }
        }
        6 => {
            let s = String::from_utf8_lossy(body);
            if let Ok(sel) = skiff_api::selector::LabelSelector::parse(&s) {
                let _ = sel.matches_object(&fuzz_target_object(def));
                // A parsed selector prints as a string that parses to the same selector.
                let shown = sel.to_string();
                let back = skiff_api::selector::LabelSelector::parse(&shown)
                    .unwrap_or_else(|e| panic!("{s:?} parsed, but its display {shown:?} does not: {e}"));
                assert_eq!(back, sel, "{s:?} -> {shown:?}");
            }
        }
        _ => {
            let s = String::from_utf8_lossy(body);
            if let Ok(sel) = skiff_api::selector::FieldSelector::parse(&s) {
                let obj = fuzz_target_object(def);
                let _ = sel.matches(|f| field_value(def, &obj, f).ok().flatten());
            }
        }
    }
}

/// A small valid-looking object of `def`'s kind for patches and selectors to work on.
fn fuzz_target_object(def: &ResourceDef) -> Value {
    json!({
        "apiVersion": def.api_version(),
        "kind": def.kind,
        "metadata": {"name": "x", "namespace": "default", "labels": {"app": "x", "tier": "db"},
                     "finalizers": ["a", "b"]},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}],
                 "ports": [{"port": 80, "protocol": "TCP"}], "replicas": 1},
        "data": {"k": "v"},
    })
}
