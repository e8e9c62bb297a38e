//! Finds the BPF objects that `cargo xtask build-ebpf` built, for `include_bytes!`.
//! The node agent cannot work without them, so a missing object is a build error that
//! says which command makes it.

use std::{env, path::PathBuf};

/// The BPF binaries the agent embeds (one per attach point, `sock` with the cgroup
/// hooks, `xdp-underlay` the NodePort fast path; `noop` and `bench-gen` are for the
/// benchmarks).
const OBJECTS: &[(&str, &str)] = &[
    ("from-pod", "SKIFF_EBPF_FROM_POD"),
    ("to-pod", "SKIFF_EBPF_TO_POD"),
    ("from-overlay", "SKIFF_EBPF_FROM_OVERLAY"),
    ("to-overlay", "SKIFF_EBPF_TO_OVERLAY"),
    ("to-underlay", "SKIFF_EBPF_TO_UNDERLAY"),
    ("from-underlay", "SKIFF_EBPF_FROM_UNDERLAY"),
    ("sock", "SKIFF_EBPF_SOCK"),
    ("xdp-underlay", "SKIFF_EBPF_XDP_UNDERLAY"),
    ("noop", "SKIFF_EBPF_NOOP"),
    ("bench-gen", "SKIFF_EBPF_BENCH_GEN"),
];

fn main() {
    println!("cargo:rerun-if-env-changed=SKIFF_EBPF_DIR");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let dir = match env::var_os("SKIFF_EBPF_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let target = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../target"));
            target.join("bpfel-unknown-none/release")
        }
    };
    let mut missing = Vec::new();
    for (bin, var) in OBJECTS {
        let path = dir.join(bin);
        println!("cargo:rerun-if-changed={}", path.display());
        if !path.is_file() {
            missing.push(*bin);
        }
        println!("cargo:rustc-env={var}={}", path.display());
    }
    if !missing.is_empty() {
        // One line, no panic backtrace: cargo prints `error: ...` and stops the build.
        println!(
            "cargo::error=the BPF objects ({}) are not in {}: run `cargo xtask build-ebpf` first \
             (it installs the toolchain it needs), or set SKIFF_EBPF_DIR to a directory holding them",
            missing.join(", "),
            dir.display()
        );
    }
}
