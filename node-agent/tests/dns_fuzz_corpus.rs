//! Runs the `dns_query` fuzz target's code over its committed corpus and over
//! deterministic mutations of it (bit flips, truncations, splices), so CI (stable, no
//! libFuzzer) exercises the DNS server's decoding and keeps fixed crashes fixed. The
//! fuzz project itself is `node-agent/fuzz`.

use std::path::Path;

use skiff_node::dns::fuzz::fuzz_one;

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dns_query");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn seed_corpus_runs_without_panics() {
    let seeds = seeds();
    assert!(seeds.len() >= 10, "the seed corpus has only {} inputs", seeds.len());
    for (name, data) in seeds {
        eprintln!("seed {name}");
        fuzz_one(&data);
    }
}

#[test]
fn mutated_seeds_run_without_panics() {
    let seeds: Vec<Vec<u8>> = seeds().into_iter().map(|(_, d)| d).collect();
    // xorshift: the same inputs every run, so a failure reproduces.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut data = seeds[(next() % seeds.len() as u64) as usize].clone();
        match next() % 4 {
            0 => {
                let flips = 1 + next() % 4;
                for _ in 0..flips {
                    let at = (next() % data.len() as u64) as usize;
                    data[at] ^= 1 << (next() % 8);
                }
            }
            1 => data.truncate((next() % data.len() as u64) as usize),
            2 => {
                let other = &seeds[(next() % seeds.len() as u64) as usize];
                let cut = (next() % other.len() as u64) as usize;
                data.extend_from_slice(&other[cut..]);
            }
            _ => {
                let at = (next() % data.len() as u64) as usize;
                data[at] = next() as u8;
            }
        }
        fuzz_one(&data);
    }
}
