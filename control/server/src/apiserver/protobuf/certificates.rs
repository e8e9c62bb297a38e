//! certificates.k8s.io/v1 CertificateSigningRequest, which `kubectl certificate
//! approve|deny` PUTs to the `approval` subresource as protobuf. Fields: metadata=1,
//! spec=2 (request=1 bytes, username=2, uid=3, groups=4, usages=5, signerName=7,
//! expirationSeconds=8), status=3 (conditions=1, certificate=2 bytes); a condition is
//! type=1, reason=2, message=3, lastUpdateTime=4, lastTransitionTime=5, status=6.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::wire::{Field, Res, fields, object_meta, string};

fn push(o: &mut Map<String, Value>, key: &str, v: Value) {
    o.entry(key).or_insert_with(|| json!([])).as_array_mut().unwrap().push(v);
}

fn b64(b: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(b))
}

/// A `metav1.Time` (seconds=1, nanos=2) as RFC 3339.
fn time(b: &[u8]) -> Res<Value> {
    let mut secs = 0i64;
    for (n, f) in fields(b)? {
        if let (1, Field::Varint(v)) = (n, f) {
            secs = v as i64;
        }
    }
    Ok(json!(crate::apiserver::meta::format_time(secs)))
}

fn spec(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                o.insert("request".into(), b64(x));
            }
            (2, Field::Bytes(x)) => {
                o.insert("username".into(), json!(string(x)?));
            }
            (3, Field::Bytes(x)) => {
                o.insert("uid".into(), json!(string(x)?));
            }
            (4, Field::Bytes(x)) => push(&mut o, "groups", json!(string(x)?)),
            (5, Field::Bytes(x)) => push(&mut o, "usages", json!(string(x)?)),
            (7, Field::Bytes(x)) => {
                o.insert("signerName".into(), json!(string(x)?));
            }
            (8, Field::Varint(v)) => {
                o.insert("expirationSeconds".into(), json!(v as i32));
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

fn condition(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        let key = match n {
            1 => "type",
            2 => "reason",
            3 => "message",
            4 => "lastUpdateTime",
            5 => "lastTransitionTime",
            6 => "status",
            _ => continue,
        };
        if let Field::Bytes(x) = f {
            let v = if n == 4 || n == 5 { time(x)? } else { json!(string(x)?) };
            o.insert(key.into(), v);
        }
    }
    Ok(Value::Object(o))
}

fn status(b: &[u8]) -> Res<Value> {
    let mut status = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(c)) => push(&mut status, "conditions", condition(c)?),
            (2, Field::Bytes(c)) if !c.is_empty() => {
                status.insert("certificate".into(), b64(c));
            }
            _ => {}
        }
    }
    Ok(Value::Object(status))
}

pub(super) fn certificate_signing_request(b: &[u8]) -> Res<Value> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        let Field::Bytes(x) = f else { continue };
        let (key, value) = match n {
            1 => ("metadata", object_meta(x)?),
            2 => ("spec", spec(x)?),
            3 => ("status", status(x)?),
            _ => continue,
        };
        o.insert(key.into(), value);
    }
    Ok(Value::Object(o))
}

#[cfg(test)]
mod tests {
    use super::super::tests::ld;
    use super::*;

    #[test]
    fn approval_body() {
        let cond = [ld(1, b"Approved"), ld(6, b"True"), ld(2, b"KubectlApprove"), ld(4, &[8, 100])].concat();
        let status = ld(1, &cond);
        let spec = [ld(1, b"PEM"), ld(5, b"client auth"), ld(7, b"kubernetes.io/kube-apiserver-client")].concat();
        let body = [ld(1, &ld(1, b"csr-1")), ld(2, &spec), ld(3, &status)].concat();
        let o = certificate_signing_request(&body).unwrap();
        assert_eq!(o["metadata"]["name"], "csr-1");
        assert_eq!(o["spec"]["usages"], json!(["client auth"]));
        assert_eq!(o["spec"]["request"], "UEVN");
        let c = &o["status"]["conditions"][0];
        assert_eq!((c["type"].as_str(), c["status"].as_str()), (Some("Approved"), Some("True")));
        assert_eq!(c["lastUpdateTime"], "1970-01-01T00:01:40Z");
    }
}
