//! Decoding of the Kubernetes protobuf wire format for the kinds `kubectl create`
//! sends as protobuf (ConfigMap, Secret, Namespace, ServiceAccount, RoleBinding,
//! ClusterRoleBinding, and the TokenRequest of `kubectl create token`; Deployment, Job
//! and Service by table in `protobuf_workloads`): client-go prefers protobuf for built-in
//! types and does not fall back to JSON on 415. Other kinds get 415.
//!
//! Envelope: the magic `k8s\0`, then `runtime.Unknown{typeMeta=1, raw=2}` whose `raw`
//! is the object's message. This module only turns bytes into JSON; it must not
//! validate (the normal create path does).

use base64::Engine;
use serde_json::{Map, Value, json};

pub(super) type Res<T> = Result<T, String>;

struct Reader<'a> {
    buf: &'a [u8],
}

pub(super) enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Res<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn next(&mut self) -> Res<Option<(u64, Field<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            2 => {
                let len = self.varint()? as usize;
                if len > self.buf.len() {
                    return Err("truncated length-delimited field".into());
                }
                let (b, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(b)
            }
            1 => {
                self.buf = self.buf.get(8..).ok_or("truncated fixed64")?;
                Field::Varint(0)
            }
            5 => {
                self.buf = self.buf.get(4..).ok_or("truncated fixed32")?;
                Field::Varint(0)
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok(Some((key >> 3, field)))
    }
}

pub(super) fn fields(buf: &[u8]) -> Res<Vec<(u64, Field<'_>)>> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

pub(super) fn string(b: &[u8]) -> Res<String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in string field".to_string())
}

/// A `map<string, string|bytes>` entry: key=1, value=2.
pub(super) fn map_entry(b: &[u8], bytes_value: bool) -> Res<(String, Value)> {
    let mut k = String::new();
    let mut v = Value::String(String::new());
    for (n, f) in fields(b)? {
        if let Field::Bytes(x) = f {
            match n {
                1 => k = string(x)?,
                2 if bytes_value => v = json!(base64::engine::general_purpose::STANDARD.encode(x)),
                2 => v = json!(string(x)?),
                _ => {}
            }
        }
    }
    Ok((k, v))
}

pub(super) fn insert_map(obj: &mut Map<String, Value>, key: &str, entry: (String, Value)) {
    obj.entry(key).or_insert_with(|| json!({}))[&entry.0] = entry.1;
}

pub(super) fn object_meta(b: &[u8]) -> Res<Value> {
    let mut m = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) if !x.is_empty() => {
                m.insert("name".into(), json!(string(x)?));
            }
            (2, Field::Bytes(x)) if !x.is_empty() => {
                m.insert("generateName".into(), json!(string(x)?));
            }
            (3, Field::Bytes(x)) if !x.is_empty() => {
                m.insert("namespace".into(), json!(string(x)?));
            }
            (6, Field::Bytes(x)) if !x.is_empty() => {
                m.insert("resourceVersion".into(), json!(string(x)?));
            }
            (11, Field::Bytes(x)) => insert_map(&mut m, "labels", map_entry(x, false)?),
            (12, Field::Bytes(x)) => insert_map(&mut m, "annotations", map_entry(x, false)?),
            (14, Field::Bytes(x)) => {
                m.entry("finalizers").or_insert_with(|| json!([])).as_array_mut().unwrap().push(json!(string(x)?));
            }
            // uid, timestamps, owner references, managed fields: server-owned or not
            // sent by `kubectl create`; ignored.
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

fn config_map(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                o.insert("metadata".into(), object_meta(x)?);
            }
            (2, Field::Bytes(x)) => insert_map(&mut o, "data", map_entry(x, false)?),
            (3, Field::Bytes(x)) => insert_map(&mut o, "binaryData", map_entry(x, true)?),
            (4, Field::Varint(v)) => {
                o.insert("immutable".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

fn secret(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                o.insert("metadata".into(), object_meta(x)?);
            }
            (2, Field::Bytes(x)) => insert_map(&mut o, "data", map_entry(x, true)?),
            (3, Field::Bytes(x)) => {
                o.insert("type".into(), json!(string(x)?));
            }
            (4, Field::Bytes(x)) => insert_map(&mut o, "stringData", map_entry(x, false)?),
            (5, Field::Varint(v)) => {
                o.insert("immutable".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    // stringData is write-only: fold it into data, as the real API server does.
    if let Some(Value::Object(sd)) = o.remove("stringData") {
        for (k, v) in sd {
            let enc = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or("").as_bytes());
            insert_map(&mut o, "data", (k, json!(enc)));
        }
    }
    Ok(Value::Object(o))
}

fn namespace(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        if let (1, Field::Bytes(x)) = (n, f) {
            o.insert("metadata".into(), object_meta(x)?);
        }
    }
    Ok(Value::Object(o))
}

fn service_account(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                o.insert("metadata".into(), object_meta(x)?);
            }
            (4, Field::Varint(v)) => {
                o.insert("automountServiceAccountToken".into(), json!(v != 0));
            }
            // secrets and imagePullSecrets: not sent by `kubectl create serviceaccount`.
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

/// A message of string fields only, by field number.
fn strings(b: &[u8], names: &[(u64, &str)]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        if let (Some((_, key)), Field::Bytes(x)) = (names.iter().find(|(m, _)| *m == n), f)
            && !x.is_empty()
        {
            o.insert((*key).into(), json!(string(x)?));
        }
    }
    Ok(Value::Object(o))
}

/// rbac/v1 RoleBinding and ClusterRoleBinding: metadata=1, subjects=2
/// (kind=1, apiGroup=2, name=3, namespace=4), roleRef=3 (apiGroup=1, kind=2, name=3).
fn role_binding(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                o.insert("metadata".into(), object_meta(x)?);
            }
            (2, Field::Bytes(x)) => {
                let s = strings(x, &[(1, "kind"), (2, "apiGroup"), (3, "name"), (4, "namespace")])?;
                o.entry("subjects").or_insert_with(|| json!([])).as_array_mut().unwrap().push(s);
            }
            (3, Field::Bytes(x)) => {
                o.insert("roleRef".into(), strings(x, &[(1, "apiGroup"), (2, "kind"), (3, "name")])?);
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

/// authentication.k8s.io/v1 BoundObjectReference: kind=1, apiVersion=2, name=3, uid=4.
fn bound_object_ref(b: &[u8]) -> Res<Value> {
    strings(b, &[(1, "kind"), (2, "apiVersion"), (3, "name"), (4, "uid")])
}

/// TokenRequest: metadata=1, spec=2 (audiences=1, boundObjectRef=3,
/// expirationSeconds=4); the status (3) is the server's to fill.
fn token_request(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    let mut spec = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                o.insert("metadata".into(), object_meta(x)?);
            }
            (2, Field::Bytes(x)) => {
                for (m, g) in fields(x)? {
                    match (m, g) {
                        (1, Field::Bytes(a)) => {
                            spec.entry("audiences")
                                .or_insert_with(|| json!([]))
                                .as_array_mut()
                                .unwrap()
                                .push(json!(string(a)?));
                        }
                        (3, Field::Bytes(r)) => {
                            spec.insert("boundObjectRef".into(), bound_object_ref(r)?);
                        }
                        // int64 on the wire: a negative value arrives as its two's complement.
                        (4, Field::Varint(v)) => {
                            spec.insert("expirationSeconds".into(), json!(v as i64));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    o.insert("spec".into(), Value::Object(spec));
    Ok(Value::Object(o))
}

/// Decodes an enveloped protobuf object into JSON (with kind and apiVersion set).
pub fn decode(body: &[u8]) -> Res<Value> {
    let rest = body.strip_prefix(b"k8s\0").ok_or("missing the k8s protobuf magic prefix")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for (n, f) in fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (m, g) in fields(tm)? {
                    match (m, g) {
                        (1, Field::Bytes(x)) => api_version = string(x)?,
                        (2, Field::Bytes(x)) => kind = string(x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = Some(x),
            _ => {}
        }
    }
    let raw = raw.ok_or("protobuf envelope without raw object")?;
    let mut obj = match kind.as_str() {
        "ConfigMap" => config_map(raw)?,
        "Secret" => secret(raw)?,
        "Namespace" => namespace(raw)?,
        "ServiceAccount" => service_account(raw)?,
        "TokenRequest" => token_request(raw)?,
        "RoleBinding" | "ClusterRoleBinding" => role_binding(raw)?,
        other => match super::protobuf_workloads::decode(other, raw) {
            Some(obj) => obj?,
            None => return Err(format!("protobuf is not supported for kind {other:?}; send JSON")),
        },
    };
    obj["kind"] = json!(kind);
    obj["apiVersion"] = json!(api_version);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(n: u64, b: &[u8]) -> Vec<u8> {
        let mut v = vec![((n << 3) | 2) as u8, b.len() as u8];
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn decodes_configmap_envelope() {
        let meta = [ld(1, b"cfg"), ld(11, &[ld(1, b"app"), ld(2, b"x")].concat())].concat();
        let cm = [ld(1, &meta), ld(2, &[ld(1, b"a"), ld(2, b"1")].concat())].concat();
        let tm = [ld(1, b"v1"), ld(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &cm)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "cfg", "labels": {"app": "x"}}, "data": {"a": "1"}})
        );
        assert!(decode(b"nope").is_err());
        assert!(decode(&body[..body.len() - 3]).is_err());
    }

    #[test]
    fn decodes_role_binding_envelope() {
        let subject = [ld(1, b"ServiceAccount"), ld(3, b"bot"), ld(4, b"team")].concat();
        let role_ref = [ld(1, b"rbac.authorization.k8s.io"), ld(2, b"ClusterRole"), ld(3, b"view")].concat();
        let rb = [ld(1, &ld(1, b"bot-view")), ld(2, &subject), ld(3, &role_ref)].concat();
        let tm = [ld(1, b"rbac.authorization.k8s.io/v1"), ld(2, b"RoleBinding")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &rb)].concat();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"kind": "RoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {"name": "bot-view"},
                "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": "team"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}})
        );
    }

    #[test]
    fn decodes_token_request_envelope() {
        let bound = [ld(1, b"Pod"), ld(2, b"v1"), ld(3, b"p")].concat();
        // expirationSeconds = 7200: field 4, varint 0xa0 0x38.
        let spec = [ld(1, b"vault"), ld(1, b"api"), ld(3, &bound), vec![4 << 3, 0xa0, 0x38]].concat();
        let tr = [ld(1, &ld(1, b"bot")), ld(2, &spec)].concat();
        let tm = [ld(1, b"authentication.k8s.io/v1"), ld(2, b"TokenRequest")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &tr)].concat();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {"name": "bot"},
                "spec": {"audiences": ["vault", "api"], "expirationSeconds": 7200,
                         "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p"}}})
        );
    }
}
