//! OCI images made by hand from static binaries, for a containerd with no registry.
//!
//! An image here is one layer holding a few files. [`build_image`] writes the OCI
//! image-layout tarball (`oci-layout`, `index.json` whose entry carries the
//! `io.containerd.image.name` annotation, and `blobs/sha256/` with the config, the
//! manifest and the gzip layer) that `ctr -n k8s.io images import` accepts; the CRI then
//! lists and runs the image under that name.
//!
//! The binaries must be static: an image has no libc. [`build_static_binaries`] builds
//! this package's binaries with `+crt-static` (glibc's static `libc.a`, from
//! `libc6-dev`) into `target/static`, without the `cri` feature so that the build
//! compiles only the few crates the binaries use. [`pause_image`] and [`echo_image`]
//! build the two images Skiff uses, once per process, cached under `target/static`.
//!
//! Everything is deterministic (mtime 0, uid 0, sorted entries), so the same binaries
//! give the same digests. Errors are `anyhow` with context: this module serves tests and
//! tools, and every failure ends in a panic message a person reads.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use anyhow::{Context, Result, bail, ensure};
use flate2::{Compression, write::GzEncoder};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The sandbox image every Skiff node's containerd uses (`sandbox_image`).
pub const PAUSE_IMAGE: &str = "localhost/skiff/pause:1";
/// The demo/test app (`skiff-echo`) as an image; its entrypoint is `/skiff-echo`.
pub const ECHO_IMAGE: &str = "localhost/skiff/echo:1";

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The workspace root (parent of this package's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Where static builds and cached image tarballs go (`target/static`, or
/// `$CARGO_TARGET_DIR/static`).
pub fn static_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    target.join("static")
}

/// Builds this package's binaries `bins` statically linked, release, and returns their
/// paths in the same order. Cargo's own lock on `target/static` serialises concurrent
/// callers; a second call with nothing changed costs about a second.
pub fn build_static_binaries(bins: &[&str]) -> Result<Vec<PathBuf>> {
    const TRIPLE: &str = "x86_64-unknown-linux-gnu";
    let target_dir = static_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--release", "-p", "skiff-tests", "--no-default-features", "--target", TRIPLE])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    let out = cmd.output().with_context(|| format!("running {}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        bail!(
            "static build of {bins:?} failed ({}); is libc6-dev installed (glibc's static libc.a)?\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bins.iter()
        .map(|bin| {
            let path = target_dir.join(TRIPLE).join("release").join(bin);
            ensure!(
                is_static_elf(&path)?,
                "{} is not statically linked (it has a program interpreter)",
                path.display()
            );
            Ok(path)
        })
        .collect()
}

/// Builds the binary `bin` of workspace package `package` (dev profile, not static) into
/// `target/harness`, and returns its path. For binaries a test runs but does not depend
/// on, such as the CNI plugin containerd executes: cargo builds a package's own binaries
/// before its tests, never other packages' binaries, and the `cargo test` that runs
/// the test holds the lock on `target/debug`, so they are built here in a directory of
/// their own. Cargo decides freshness; an up-to-date build costs about a second.
pub fn build_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let target_dir = static_dir().with_file_name("harness");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        bail!("building {bin} of {package} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(target_dir.join("debug").join(bin))
}

/// Whether `path` is an ELF64 executable without a program interpreter (`PT_INTERP`),
/// that is, one that needs no dynamic loader or shared libc.
pub fn is_static_elf(path: &Path) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        data.len() > 64 && data[..4] == *b"\x7fELF" && data[4] == 2 && data[5] == 1,
        "{} is not a little-endian ELF64 file",
        path.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        ensure!(at + 4 <= data.len(), "{}: program header {i} lies past the end", path.display());
        if u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes a one-layer OCI image-layout tarball named `name` (e.g.
/// `localhost/skiff/pause:1`) holding `files`, with the given entrypoint, to `out`
/// (written to a temporary file, then renamed). Each file is a `(file on disk, absolute
/// path in the image)` pair, stored mode 0755 and owned by root. Returns `out`.
pub fn build_image(name: &str, files: &[(&Path, &str)], entrypoint: &[&str], out: &Path) -> Result<PathBuf> {
    let layer_tar = layer_tar(files)?;
    let diff_id = sha256_hex(&layer_tar);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&layer_tar)?;
    let layer_gz = gz.finish()?;

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{ "created_by": "skiff-tests image::build_image" }],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": format!("sha256:{}", sha256_hex(&config)), "size": config.len() },
        "layers": [{ "mediaType": MEDIA_LAYER, "digest": format!("sha256:{}", sha256_hex(&layer_gz)), "size": layer_gz.len() }],
    }))?;
    let tag = name.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": format!("sha256:{}", sha256_hex(&manifest)),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))?;

    let mut outer = tar::Builder::new(Vec::new());
    append_bytes(&mut outer, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    append_bytes(&mut outer, "index.json", &index, 0o644)?;
    append_dir(&mut outer, "blobs/")?;
    append_dir(&mut outer, "blobs/sha256/")?;
    for blob in [&config, &manifest, &layer_gz] {
        append_bytes(&mut outer, &format!("blobs/sha256/{}", sha256_hex(blob)), blob, 0o644)?;
    }
    let bytes = outer.into_inner()?;

    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(out.to_path_buf())
}

/// The uncompressed layer: parent directories, then the files, sorted by path.
fn layer_tar(files: &[(&Path, &str)]) -> Result<Vec<u8>> {
    let mut entries: Vec<(String, &Path)> = Vec::new();
    for (src, dest) in files {
        let rel = dest.trim_start_matches('/');
        ensure!(!rel.is_empty() && !rel.split('/').any(|c| c == ".." || c.is_empty()), "bad image path {dest:?}");
        entries.push((rel.to_owned(), src));
    }
    entries.sort();
    let mut dirs = std::collections::BTreeSet::new();
    for (rel, _) in &entries {
        let mut acc = String::new();
        for comp in rel.split('/').collect::<Vec<_>>().split_last().map_or(&[][..], |(_, d)| d) {
            acc.push_str(comp);
            acc.push('/');
            dirs.insert(acc.clone());
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    for dir in &dirs {
        append_dir(&mut b, dir)?;
    }
    for (rel, src) in &entries {
        let data = std::fs::read(src).with_context(|| format!("reading {} for the image", src.display()))?;
        append_bytes(&mut b, rel, &data, 0o755)?;
    }
    Ok(b.into_inner()?)
}

fn append_bytes(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, path, data).with_context(|| format!("adding {path} to a tar"))
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, path, std::io::empty()).with_context(|| format!("adding {path} to a tar"))
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds (once per process) the static binaries and the pause and echo image tarballs
/// under `target/static/images`, and returns their paths.
fn images() -> Result<(PathBuf, PathBuf)> {
    static CACHE: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(paths) = cache.as_ref() {
        return Ok(paths.clone());
    }
    let bins = build_static_binaries(&["skiff-pause", "skiff-echo"])?;
    let dir = static_dir().join("images");
    let pause = build_image(PAUSE_IMAGE, &[(&bins[0], "/pause")], &["/pause"], &dir.join("pause.tar"))?;
    let echo = build_image(ECHO_IMAGE, &[(&bins[1], "/skiff-echo")], &["/skiff-echo"], &dir.join("echo.tar"))?;
    *cache = Some((pause.clone(), echo.clone()));
    Ok((pause, echo))
}

/// The pause image tarball ([`PAUSE_IMAGE`], entrypoint `/pause`), built if needed.
pub fn pause_image() -> Result<PathBuf> {
    Ok(images()?.0)
}

/// The echo app image tarball ([`ECHO_IMAGE`], entrypoint `/skiff-echo`), built if needed.
pub fn echo_image() -> Result<PathBuf> {
    Ok(images()?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_layout_has_consistent_digests() {
        let dir = std::env::temp_dir().join(crate::unique_tag("skiff-image-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("hello");
        std::fs::write(&bin, b"#!/bin/true\n").unwrap();
        let out =
            build_image("localhost/skiff/t:7", &[(&bin, "/usr/bin/hello")], &["/usr/bin/hello"], &dir.join("t.tar"))
                .unwrap();
        let mut files = std::collections::HashMap::new();
        for e in tar::Archive::new(std::fs::File::open(&out).unwrap()).entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            files.insert(e.path().unwrap().to_string_lossy().into_owned(), data);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "localhost/skiff/t:7");
        let blob = |d: &serde_json::Value| {
            &files[&format!("blobs/sha256/{}", d.as_str().unwrap().strip_prefix("sha256:").unwrap())]
        };
        let manifest: serde_json::Value = serde_json::from_slice(blob(&index["manifests"][0]["digest"])).unwrap();
        let config: serde_json::Value = serde_json::from_slice(blob(&manifest["config"]["digest"])).unwrap();
        let layer_gz = blob(&manifest["layers"][0]["digest"]);
        assert_eq!(manifest["layers"][0]["size"], layer_gz.len());
        let mut layer = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&layer_gz[..]), &mut layer).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{}", sha256_hex(&layer)));
        let names: Vec<String> = tar::Archive::new(&layer[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["usr/", "usr/bin/", "usr/bin/hello"]);
    }
}
