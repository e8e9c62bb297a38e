//! Fuzz target for request decoding: JSON/YAML/protobuf bodies through type checks,
//! typed decoding, defaulting and validation; the three patch formats applied to an
//! object; label and field selector parsing. The input layout and the invariants are
//! in `skiff_control::apiserver::fuzz::fuzz_one`, shared with the seed-corpus test
//! that runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skiff_control::apiserver::fuzz::fuzz_one(data);
});
