//! `cargo xtask images` end to end, through the xtask binary: it writes a valid OCI
//! image-layout tarball for every image (each digest and size checked against its blob,
//! the binaries where the image says), a second run rewrites none of them, and
//! `--import-into` puts them into a real containerd where the CRI lists them.
//!
//! The node image needs the BPF objects: `cargo xtask test` sets `SKIFF_EBPF_DIR`;
//! without it the test names `target/bpfel-unknown-none/release` (`cargo xtask
//! build-ebpf` fills it). The first run builds skiff-node statically in release, which
//! takes minutes on a cold `target/static-image` (`cargo xtask test` starts that build early).
//!
//! The import test is privileged (root, a network namespace, containerd): skipped
//! locally without root, failed under `CI=true`.

use std::{path::PathBuf, process::Command, time::SystemTime};

use skiff_tests::{
    containerd::{ContainerdNode, ContainerdOptions},
    image::{self, ALL},
    netns::Netns,
    ok, require_privileges, unique_tag,
};

/// Runs `xtask images ARGS` and returns its stdout and stderr; panics if it fails.
fn xtask_images(args: &[&str]) -> (String, String) {
    // Never let the command run `build-ebpf`: that cargo would wait for the lock on the
    // target directory that the `cargo test` running this test holds.
    let ebpf_dir = std::env::var_os("SKIFF_EBPF_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| image::target_dir().join("bpfel-unknown-none/release"), PathBuf::from);
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("images")
        .args(args)
        .env("SKIFF_EBPF_DIR", ebpf_dir)
        .output()
        .expect("starting the xtask binary");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "xtask images {args:?} failed ({}):\n{stderr}", out.status);
    (stdout, stderr)
}

fn mtime(path: &PathBuf) -> SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn images_writes_valid_tarballs_and_a_second_run_writes_none() {
    let (stdout, _) = xtask_images(&[]);
    let listed: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    let expected: Vec<PathBuf> = ALL.iter().map(|s| s.tarball()).collect();
    assert_eq!(listed, expected, "stdout must list the tarballs, one a line");
    for spec in ALL {
        let layout = image::read_image_tarball(&spec.tarball())
            .unwrap_or_else(|e| panic!("{} is not a valid image tarball: {e:#}", spec.tarball().display()));
        assert_eq!(layout.name, spec.name);
        assert_eq!(layout.config["Entrypoint"], serde_json::json!(spec.entrypoint), "{}", spec.name);
        for (bin, dest) in spec.files {
            let entry = layout.layer.iter().find(|(p, _)| *p == dest.trim_start_matches('/'));
            assert_eq!(entry.map(|e| e.1), Some(0o755), "{}: {bin} is not at {dest} with mode 0755", spec.name);
        }
    }
    let before: Vec<SystemTime> = expected.iter().map(mtime).collect();

    let (stdout, stderr) = xtask_images(&[]);
    assert_eq!(stdout.lines().count(), ALL.len(), "{stdout}");
    assert!(stderr.contains(&format!("0 written, {} unchanged", ALL.len())), "a second run rewrote images:\n{stderr}");
    let after: Vec<SystemTime> = expected.iter().map(mtime).collect();
    assert_eq!(before, after, "a second run touched the tarballs");
}

#[test]
fn images_import_into_a_containerd_the_cri_lists() {
    if !require_privileges("images_import_into_a_containerd_the_cri_lists") {
        return;
    }
    let tag = unique_tag("img");
    let ns = Netns::new(&format!("sk{tag}"));
    let node = ok("starting containerd", ContainerdNode::start(&tag, &ns.path(), &ContainerdOptions::default()));
    let socket = node.socket.to_str().expect("UTF-8 socket path");
    let (stdout, stderr) = xtask_images(&["pause", "echo", "--import-into", socket]);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stderr.contains(&format!("imported {} into {socket}", image::ECHO_IMAGE)), "{stderr}");
    let images = ok("ListImages", node.cri().and_then(|mut c| c.list_image_tags()));
    for name in [image::PAUSE_IMAGE, image::ECHO_IMAGE] {
        assert!(images.iter().any(|t| t == name), "the CRI does not list {name}: {images:?}");
    }
}
