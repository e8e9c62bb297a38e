//! Runs the `decode_request` fuzz target's code over its committed corpus — the seeds,
//! and the inputs that once crashed it (`crash-*`, none so far) — so CI (stable, no
//! libFuzzer) exercises the target and keeps fixed crashes fixed. The fuzz project
//! itself is `control/server/fuzz`.

use std::path::Path;

fn inputs(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn seed_corpus_runs_without_panics() {
    let seeds = inputs("fuzz/corpus/decode_request");
    assert!(seeds.len() >= 10, "the seed corpus has only {} inputs", seeds.len());
    for (name, data) in seeds {
        eprintln!("seed {name}");
        skiff_control::apiserver::fuzz::fuzz_one(&data);
    }
}

/// The body seeds must stay valid requests, or the fuzzer starts from rejected input
/// and rarely reaches the typed decode and validation behind the first checks.
#[test]
fn body_seeds_are_accepted() {
    use skiff_control::apiserver::{decode, fuzz, resources::RESOURCES};
    for (name, data) in inputs("fuzz/corpus/decode_request") {
        let ct = match data[0] & 0x07 {
            0 => "application/json",
            1 => "application/yaml",
            2 => "application/vnd.kubernetes.protobuf",
            _ => continue,
        };
        if name.contains("bad") || name.contains("anchors") || name.starts_with("crash-") {
            continue;
        }
        let def = &RESOURCES[usize::from(data[1]) % RESOURCES.len()];
        if let Err(e) = decode::decode_for_create(def, ct, &data[2..], &fuzz::new_object(data[0] & 0x80 != 0)) {
            panic!("seed {name} ({}) is rejected: {e}", def.kind);
        }
    }
}
