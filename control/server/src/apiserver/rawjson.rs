//! Serving stored objects without re-encoding them: the store holds each object as
//! compact JSON without `metadata.resourceVersion` (the store revision is the truth), so
//! a LIST or WATCH can splice the revision into the stored bytes instead of parsing
//! every object into a `Value` and serialising it again. That is most of the cost of a
//! large unfiltered LIST.
//!
//! It must only be used on bytes this server stored (valid JSON objects); anything it
//! does not understand makes it return `None`, and the caller falls back to parsing.

/// Position just after the `{` that opens the top-level `metadata` object, found by
/// walking the top-level keys (nested `metadata` keys, as in pod templates, are skipped).
fn metadata_open(raw: &[u8]) -> Option<usize> {
    let mut i = skip_ws(raw, 0);
    if raw.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(raw, i);
        match raw.get(i)? {
            b'}' => return None,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_start = i + 1;
        let key_end = string_end(raw, i)?; // index of the closing quote
        let key = &raw[key_start..key_end];
        i = skip_ws(raw, key_end + 1);
        if raw.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(raw, i + 1);
        if key == b"metadata" {
            return (raw.get(i) == Some(&b'{')).then_some(i + 1);
        }
        i = value_end(raw, i)?;
    }
}

fn skip_ws(raw: &[u8], mut i: usize) -> usize {
    while raw.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// Index of the closing quote of the string whose opening quote is at `i`.
fn string_end(raw: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match raw.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j),
            _ => j += 1,
        }
    }
}

/// Index just past the value starting at `i`.
fn value_end(raw: &[u8], i: usize) -> Option<usize> {
    match raw.get(i)? {
        b'"' => string_end(raw, i).map(|e| e + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match raw.get(j)? {
                    b'"' => j = string_end(raw, j)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while raw.get(j).is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace()) {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Appends the stored object `raw` to `out` with `metadata.resourceVersion` set to
/// `revision`. Returns false (and appends nothing) when `raw` is not in the expected shape.
pub fn append_with_revision(out: &mut Vec<u8>, raw: &[u8], revision: u64) -> bool {
    let Some(at) = metadata_open(raw) else { return false };
    let empty = raw.get(skip_ws(raw, at)) == Some(&b'}');
    out.extend_from_slice(&raw[..at]);
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(revision.to_string().as_bytes());
    out.extend_from_slice(if empty { b"\"" } else { b"\"," });
    out.extend_from_slice(&raw[at..]);
    true
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn splice(v: &Value, rev: u64) -> Value {
        let raw = serde_json::to_vec(v).unwrap();
        let mut out = Vec::new();
        assert!(append_with_revision(&mut out, &raw, rev));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn sets_the_top_level_revision_only() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "data": {"x": "\"metadata\":{"},
            "metadata": {"name": "a", "labels": {"k": "v"}},
            "spec": {"template": {"metadata": {"name": "inner"}}}});
        let out = splice(&pod, 42);
        assert_eq!(out["metadata"]["resourceVersion"], "42");
        assert_eq!(out["metadata"]["name"], "a");
        assert!(out["spec"]["template"]["metadata"].get("resourceVersion").is_none());
        let mut expected = pod.clone();
        expected["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(out, expected);
    }

    #[test]
    fn empty_metadata_and_keys_before_it() {
        let v = json!({"aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"metadata": "x"}}]},
                       "a": [1, 2.5, true, null, "s\\\"q"], "metadata": {}});
        assert_eq!(splice(&v, 7)["metadata"], json!({"resourceVersion": "7"}));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [&b"[]"[..], b"{\"metadata\": 5}", b"{\"spec\": {}}", b"{\"a\": \"unterminated", b""] {
            let mut out = Vec::new();
            assert!(!append_with_revision(&mut out, bad, 1), "{}", String::from_utf8_lossy(bad));
            assert!(out.is_empty());
        }
    }
}
