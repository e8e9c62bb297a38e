//! Fuzz target for the node's DNS server: any bytes as a query over UDP or TCP, through
//! decoding, the zone's answer, EDNS and truncation. The input layout and the
//! invariants are in `skiff_node::dns::fuzz::fuzz_one`, shared with the seed-corpus test
//! that runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skiff_node::dns::fuzz::fuzz_one(data);
});
