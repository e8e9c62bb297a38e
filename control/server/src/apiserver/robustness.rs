//! Randomised robustness checks for request decoding: arbitrary bytes and mutated
//! valid inputs must produce errors, never panics. Deterministic and quick, so every
//! `cargo test` runs them; the coverage-guided search is the cargo-fuzz target in
//! `control/server/fuzz` (nightly only).

use serde_json::{Value, json};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, so a failure reproduces.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % max;
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn mutate(&mut self, base: &[u8]) -> Vec<u8> {
        let mut v = base.to_vec();
        for _ in 0..(self.next() % 4 + 1) {
            if v.is_empty() {
                break;
            }
            let i = (self.next() as usize) % v.len();
            match self.next() % 3 {
                0 => v[i] = self.next() as u8,
                1 => {
                    v.remove(i);
                }
                _ => v.truncate(i),
            }
        }
        v
    }
}

fn random_json(r: &mut Rng, depth: u32) -> Value {
    match r.next() % if depth > 3 { 4 } else { 6 } {
        0 => Value::Null,
        1 => json!(r.next().is_multiple_of(3)),
        2 => json!((r.next() % 100) as i64 - 50),
        3 => json!(["name", "a", "$patch", "delete", "containers", "-", "/x"][(r.next() % 7) as usize]),
        4 => Value::Array((0..r.next() % 4).map(|_| random_json(r, depth + 1)).collect()),
        _ => {
            let keys = [
                "name",
                "op",
                "path",
                "value",
                "from",
                "$patch",
                "containers",
                "$retainKeys",
                "$setElementOrder/containers",
                "metadata",
                "labels",
                "$deleteFromPrimitiveList/finalizers",
                "finalizers",
                "ports",
                "port",
            ];
            Value::Object(
                (0..r.next() % 5)
                    .map(|_| (keys[(r.next() % keys.len() as u64) as usize].to_string(), random_json(r, depth + 1)))
                    .collect(),
            )
        }
    }
}

#[test]
fn decoders_never_panic_on_garbage() {
    let mut r = Rng(0x5eed_1234_abcd_0001);
    let valid_pb: Vec<u8> = {
        let ld = |n: u8, b: &[u8]| [vec![(n << 3) | 2, b.len() as u8], b.to_vec()].concat();
        let tm = [ld(1, b"v1"), ld(2, b"Secret")].concat();
        let sec = [ld(1, &ld(1, b"s")), ld(2, &[ld(1, b"k"), ld(2, b"v")].concat()), ld(3, b"Opaque")].concat();
        [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &sec)].concat()
    };
    assert!(super::protobuf::decode(&valid_pb).is_ok());
    for _ in 0..20_000 {
        let garbage = r.bytes(64);
        let _ = super::protobuf::decode(&garbage);
        let _ = super::protobuf::decode(&[b"k8s\0".as_slice(), &garbage].concat());
        let _ = super::protobuf::decode(&r.mutate(&valid_pb));
        let _ = crate::tls::x509::subject(&garbage);
        let s = String::from_utf8_lossy(&garbage);
        let _ = skiff_api::selector::LabelSelector::parse(&s);
        let _ = skiff_api::selector::FieldSelector::parse(&s);
    }
}

#[test]
fn patches_never_panic_on_random_documents() {
    let mut r = Rng(0x0dd_ba11_cafe_f00d);
    for _ in 0..20_000 {
        let mut target = random_json(&mut r, 0);
        let patch = random_json(&mut r, 0);
        let _ = super::patch::strategic_merge(&mut target, &patch);
        let _ = super::patch::json_patch(&mut target, &patch);
        super::patch::merge_patch(&mut target, &patch);
    }
}
