//! The protobuf wire format itself: fields of a message, strings, map entries and
//! `ObjectMeta`, shared by the per-kind decoders. It knows no kind.

use base64::Engine;
use serde_json::{Map, Value, json};

pub(crate) type Res<T> = Result<T, String>;

struct Reader<'a> {
    buf: &'a [u8],
}

pub(crate) enum Field<'a> {
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

pub(crate) fn fields(buf: &[u8]) -> Res<Vec<(u64, Field<'_>)>> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

pub(crate) fn string(b: &[u8]) -> Res<String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in string field".to_string())
}

/// A `map<string, string|bytes>` entry: key=1, value=2.
pub(crate) fn map_entry(b: &[u8], bytes_value: bool) -> Res<(String, Value)> {
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

pub(crate) fn insert_map(obj: &mut Map<String, Value>, key: &str, entry: (String, Value)) {
    obj.entry(key).or_insert_with(|| json!({}))[&entry.0] = entry.1;
}

/// A metav1.OwnerReference (kind 1, name 3, uid 4, apiVersion 5, controller 6,
/// blockOwnerDeletion 7).
fn owner_reference(b: &[u8]) -> Res<Value> {
    let mut m = Map::new();
    for (n, f) in fields(b)? {
        let key = match n {
            1 => "kind",
            3 => "name",
            4 => "uid",
            5 => "apiVersion",
            6 => "controller",
            7 => "blockOwnerDeletion",
            _ => continue,
        };
        match f {
            Field::Bytes(x) => m.insert(key.into(), json!(string(x)?)),
            Field::Varint(v) => m.insert(key.into(), json!(v != 0)),
        };
    }
    Ok(Value::Object(m))
}

pub(crate) fn object_meta(b: &[u8]) -> Res<Value> {
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
            // Sent by `kubectl create job --from=cronjob/NAME`.
            (13, Field::Bytes(x)) => {
                let r = owner_reference(x)?;
                m.entry("ownerReferences").or_insert_with(|| json!([])).as_array_mut().unwrap().push(r);
            }
            // uid, timestamps, managed fields: server-owned or not sent by `kubectl
            // create`; ignored.
            _ => {}
        }
    }
    Ok(Value::Object(m))
}
