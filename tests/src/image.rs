//! OCI images made by hand from static binaries, for a containerd with no registry.
//!
//! An image here is one layer holding a few files. [`build_image`] writes the OCI
//! image-layout tarball (`oci-layout`, `index.json` whose entry carries the
//! `io.containerd.image.name` annotation, and `blobs/sha256/` with the config, the
//! manifest and the gzip layer) that `ctr -n k8s.io images import` accepts; the CRI then
//! lists and runs the image under that name. [`read_image_tarball`] checks such a
//! tarball (every digest and size against its blob).
//!
//! Skiff's images are the [`ImageSpec`]s in [`ALL`]: [`PAUSE`], [`ECHO`] and [`NODE`].
//! Their binaries must be static, since an image has no libc: [`build_static`] builds
//! them with `+crt-static` (glibc's static `libc.a`, from `libc6-dev`) into
//! `target/static-PROFILE`; [`ensure_image`] writes a tarball to `target/images/` unless the one
//! there was made from the same binaries. `cargo xtask images` drives both, with
//! progress and an optional import; tests call [`pause_image`] and [`echo_image`], which
//! build those two once per process.
//!
//! Everything is deterministic (mtime 0, uid 0, sorted entries), so the same binaries
//! give the same digests. Errors are `anyhow` with context: this module serves tests and
//! tools, and every failure ends in a message a person reads. It never talks to
//! containerd: importing is the caller's (`ctr images import`).

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    os::unix::fs::MetadataExt,
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
/// The node agent as an image: `/skiff-node` (the entrypoint) and `/skiff-cni`.
pub const NODE_IMAGE: &str = concat!("localhost/skiff/node:", env!("CARGO_PKG_VERSION"));

/// One of Skiff's images: its name, its tarball's file name, and which binaries of which
/// packages it holds where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// The image reference containerd lists (`localhost/skiff/...:TAG`).
    pub name: &'static str,
    /// The tarball's file name in [`images_dir`].
    pub file: &'static str,
    /// The workspace packages that own the binaries (one static build for all of them).
    pub packages: &'static [&'static str],
    /// `(binary, absolute path in the image)` pairs.
    pub files: &'static [(&'static str, &'static str)],
    pub entrypoint: &'static [&'static str],
    /// The cargo profile of its static build: `release` for the small test images;
    /// [`IMAGE_PROFILE`] for the node agent, whose many dependencies take minutes to
    /// optimise (the test suite's time limit matters more there than its speed).
    pub profile: &'static str,
}

/// The profile of the node image's build (`[profile.image]` in the workspace: the dev
/// profile without debug info).
pub const IMAGE_PROFILE: &str = "image";

/// The pause image ([`PAUSE_IMAGE`]): `/pause`, which sleeps until SIGTERM.
pub const PAUSE: ImageSpec = ImageSpec {
    name: PAUSE_IMAGE,
    file: "pause.tar",
    packages: &["skiff-tests"],
    files: &[("skiff-pause", "/pause")],
    entrypoint: &["/pause"],
    profile: "release",
};

/// The demo app ([`ECHO_IMAGE`]): `/skiff-echo`, which serves when given no arguments.
pub const ECHO: ImageSpec = ImageSpec {
    name: ECHO_IMAGE,
    file: "echo.tar",
    packages: &["skiff-tests"],
    files: &[("skiff-echo", "/skiff-echo")],
    entrypoint: &["/skiff-echo"],
    profile: "release",
};

/// The node agent ([`NODE_IMAGE`]). Its build needs the BPF objects skiff-node embeds
/// (`SKIFF_EBPF_DIR`, see node-agent/build.rs).
pub const NODE: ImageSpec = ImageSpec {
    name: NODE_IMAGE,
    file: "node.tar",
    packages: &["skiff-node", "skiff-cni"],
    files: &[("skiff-node", "/skiff-node"), ("skiff-cni", "/skiff-cni")],
    entrypoint: &["/skiff-node"],
    profile: IMAGE_PROFILE,
};

/// Every image `cargo xtask images` builds, in build order.
pub const ALL: &[ImageSpec] = &[PAUSE, ECHO, NODE];

impl ImageSpec {
    /// The binaries this image holds, in [`Self::files`] order.
    pub fn bins(&self) -> Vec<&'static str> {
        self.files.iter().map(|(bin, _)| *bin).collect()
    }

    /// Where [`ensure_image`] writes this image's tarball.
    pub fn tarball(&self) -> PathBuf {
        images_dir().join(self.file)
    }
}

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The target triple of static builds: naming it makes cargo apply `RUSTFLAGS` to the
/// binaries only, not to build scripts and proc macros (which must stay dynamic).
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// The workspace root (parent of this package's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The workspace's target directory: `$CARGO_TARGET_DIR` (relative to the workspace
/// root if relative, as cargo reads it there), else `target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Where static builds of cargo profile `profile` go (`target/static-PROFILE`). One
/// directory per profile, because cargo locks a whole target directory while it builds:
/// the node image's long build (`image` profile) must not hold up the test images'
/// (`release`), which nearly every cluster test asks for.
pub fn static_dir(profile: &str) -> PathBuf {
    target_dir().join(format!("static-{profile}"))
}

/// Where image tarballs go (`target/images`), one `FILE.tar` per [`ImageSpec`].
pub fn images_dir() -> PathBuf {
    target_dir().join("images")
}

/// Builds this package's binaries `bins` statically linked, release, and returns their
/// paths in the same order (see [`build_static`]).
pub fn build_static_binaries(bins: &[&str]) -> Result<Vec<PathBuf>> {
    build_static(&["skiff-tests"], bins, "release", &[])
}

/// Builds the binaries `bins` of the workspace packages `packages` statically linked,
/// with cargo profile `profile`, into [`static_dir`], with `env` added to cargo's environment, and returns
/// their paths in the order of `bins`. `--no-default-features` leaves out skiff-tests'
/// `cri` feature, so that its binaries compile only the few crates they use (the other
/// packages have no features). Cargo's own lock on the target directory serialises
/// concurrent callers; a second call with nothing changed costs about a second.
pub fn build_static(packages: &[&str], bins: &[&str], profile: &str, env: &[(&str, &Path)]) -> Result<Vec<PathBuf>> {
    let mut cmd = static_build_command(packages, bins, profile, env);
    let out = cmd.output().with_context(|| format!("running {}", Path::new(cmd.get_program()).display()))?;
    if !out.status.success() {
        bail!(
            "static build of {bins:?} ({packages:?}) failed ({}); is libc6-dev installed (glibc's static libc.a)?\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let target_dir = static_dir(profile);
    bins.iter()
        .map(|bin| {
            let path = target_dir.join(TRIPLE).join(profile).join(bin);
            ensure!(
                is_static_elf(&path)?,
                "{} is not statically linked (it has a program interpreter)",
                path.display()
            );
            Ok(path)
        })
        .collect()
}

/// The `cargo build` command of [`build_static`], to run elsewhere: `cargo xtask test`
/// starts the node image's build early with it, so that the test which needs that image
/// finds it built (the same command, so cargo finds the build fresh).
pub fn static_build_command(packages: &[&str], bins: &[&str], profile: &str, env: &[(&str, &Path)]) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--profile", profile, "--no-default-features", "--target", TRIPLE])
        .arg("--target-dir")
        .arg(static_dir(profile))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    for package in packages {
        cmd.args(["-p", package]);
    }
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

/// Builds the binary `bin` of workspace package `package` (dev profile, not static) into
/// `target/harness`, and returns its path. For binaries a test runs but does not depend
/// on, such as the CNI plugin containerd executes: cargo builds a package's own binaries
/// before its tests, never other packages' binaries, and the `cargo test` that runs
/// the test holds the lock on `target/debug`, so they are built here in a directory of
/// their own. Cargo decides freshness; an up-to-date build costs about a second.
pub fn build_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let target_dir = target_dir().join("harness");
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

/// Bump when the tarball layout changes, so that [`ensure_image`] rewrites old ones.
const LAYOUT_VERSION: u32 = 1;

/// Writes `spec`'s tarball from `binaries` (in [`ImageSpec::files`] order) unless the
/// one in [`images_dir`] was written from the same files (same paths, sizes and mtimes,
/// recorded beside it in `FILE.inputs`). Returns the tarball's path and whether it was
/// written now.
pub fn ensure_image(spec: &ImageSpec, binaries: &[PathBuf]) -> Result<(PathBuf, bool)> {
    ensure!(
        binaries.len() == spec.files.len(),
        "{}: {} binaries for {} files",
        spec.name,
        binaries.len(),
        spec.files.len()
    );
    let out = spec.tarball();
    let stamp = out.with_extension("inputs");
    let mut key = format!("layout {LAYOUT_VERSION}\nname {}\nentrypoint {:?}\n", spec.name, spec.entrypoint);
    for (src, (_, dest)) in binaries.iter().zip(spec.files) {
        let meta = std::fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
        key.push_str(&format!("{dest} {} {} {}.{}\n", src.display(), meta.len(), meta.mtime(), meta.mtime_nsec()));
    }
    if out.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|k| k == key) {
        return Ok((out, false));
    }
    let files: Vec<(&Path, &str)> =
        binaries.iter().zip(spec.files).map(|(src, (_, dest))| (src.as_path(), *dest)).collect();
    build_image(spec.name, &files, spec.entrypoint, &out)?;
    std::fs::write(&stamp, key).with_context(|| format!("writing {}", stamp.display()))?;
    Ok((out, true))
}

/// What [`read_image_tarball`] found in a valid image tarball.
#[derive(Clone, Debug)]
pub struct ImageLayout {
    /// The `io.containerd.image.name` annotation.
    pub name: String,
    /// `sha256:...` of the manifest.
    pub manifest_digest: String,
    /// The image config's `config` object (Entrypoint, Env, WorkingDir).
    pub config: serde_json::Value,
    /// The layer's entries, in order (directories end in `/`), with their modes.
    pub layer: Vec<(String, u32)>,
}

/// Reads an image-layout tarball and checks it the way an importer would: `oci-layout`
/// present, one manifest in `index.json`, every digest and size equal to its blob's, the
/// config's `diff_id` equal to the uncompressed layer's digest.
pub fn read_image_tarball(path: &Path) -> Result<ImageLayout> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut files = HashMap::new();
    for entry in tar::Archive::new(file).entries().with_context(|| format!("reading {}", path.display()))? {
        let mut entry = entry?;
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.insert(entry.path()?.to_string_lossy().into_owned(), data);
    }
    let json = |name: &str| -> Result<serde_json::Value> {
        let data = files.get(name).with_context(|| format!("{} has no {name}", path.display()))?;
        serde_json::from_slice(data).with_context(|| format!("{name} in {} is not JSON", path.display()))
    };
    ensure!(json("oci-layout")?["imageLayoutVersion"] == "1.0.0", "{}: bad oci-layout", path.display());
    // A descriptor's blob, checked against the descriptor's digest and size.
    let blob = |desc: &serde_json::Value| -> Result<&Vec<u8>> {
        let digest = desc["digest"].as_str().context("descriptor without a digest")?;
        let hex = digest.strip_prefix("sha256:").with_context(|| format!("digest {digest} is not sha256"))?;
        let data = files.get(&format!("blobs/sha256/{hex}")).with_context(|| format!("no blob for {digest}"))?;
        ensure!(sha256_hex(data) == hex, "blob {digest} has digest sha256:{}", sha256_hex(data));
        ensure!(
            desc["size"] == data.len(),
            "blob {digest} has {} bytes, its descriptor says {}",
            data.len(),
            desc["size"]
        );
        Ok(data)
    };
    let index = json("index.json")?;
    let entries = index["manifests"].as_array().context("index.json without manifests")?;
    ensure!(entries.len() == 1, "{}: {} manifests in index.json, expected 1", path.display(), entries.len());
    let name = entries[0]["annotations"]["io.containerd.image.name"].as_str().context("no image name")?.to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(blob(&entries[0])?)?;
    ensure!(manifest["mediaType"] == MEDIA_MANIFEST, "manifest media type is {}", manifest["mediaType"]);
    let config: serde_json::Value = serde_json::from_slice(blob(&manifest["config"])?)?;
    let layers = manifest["layers"].as_array().context("manifest without layers")?;
    ensure!(layers.len() == 1, "{} layers, expected 1", layers.len());
    let mut layer_tar = Vec::new();
    flate2::read::GzDecoder::new(&blob(&layers[0])?[..]).read_to_end(&mut layer_tar).context("gunzipping the layer")?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer_tar));
    ensure!(config["rootfs"]["diff_ids"][0] == diff_id.as_str(), "config diff_id is not the layer's {diff_id}");
    let mut layer = Vec::new();
    for entry in tar::Archive::new(&layer_tar[..]).entries()? {
        let entry = entry?;
        layer.push((entry.path()?.to_string_lossy().into_owned(), entry.header().mode()?));
    }
    Ok(ImageLayout {
        name,
        manifest_digest: entries[0]["digest"].as_str().unwrap_or_default().to_owned(),
        config: config["config"].clone(),
        layer,
    })
}

/// The tarballs and static binaries of the pause and echo images, once per process.
#[derive(Clone, Debug)]
struct TestImages {
    pause: PathBuf,
    echo: PathBuf,
    /// Static binaries by name (`skiff-pause`, `skiff-echo`).
    bins: BTreeMap<&'static str, PathBuf>,
}

/// Builds (once per process) the static binaries and the pause and echo image tarballs.
fn test_images() -> Result<TestImages> {
    static CACHE: Mutex<Option<TestImages>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(images) = cache.as_ref() {
        return Ok(images.clone());
    }
    let names: Vec<&'static str> = PAUSE.bins().into_iter().chain(ECHO.bins()).collect();
    let paths = build_static(PAUSE.packages, &names, PAUSE.profile, &[])?;
    let bins: BTreeMap<&'static str, PathBuf> = names.into_iter().zip(paths).collect();
    let of = |spec: &ImageSpec| -> Result<PathBuf> {
        let binaries: Vec<PathBuf> = spec.bins().iter().map(|b| bins[b].clone()).collect();
        Ok(ensure_image(spec, &binaries)?.0)
    };
    let images = TestImages { pause: of(&PAUSE)?, echo: of(&ECHO)?, bins: bins.clone() };
    *cache = Some(images.clone());
    Ok(images)
}

/// The pause image tarball ([`PAUSE_IMAGE`], entrypoint `/pause`), built if needed.
pub fn pause_image() -> Result<PathBuf> {
    Ok(test_images()?.pause)
}

/// The echo app image tarball ([`ECHO_IMAGE`], entrypoint `/skiff-echo`), built if needed.
pub fn echo_image() -> Result<PathBuf> {
    Ok(test_images()?.echo)
}

/// The node agent image tarball ([`NODE_IMAGE`]: `/skiff-node` and `/skiff-cni`), built
/// if needed. skiff-node embeds the BPF objects, so `SKIFF_EBPF_DIR` must name them
/// (`cargo xtask test` sets it; `cargo xtask build-ebpf` builds them).
pub fn node_image() -> Result<PathBuf> {
    let ebpf = std::env::var_os("SKIFF_EBPF_DIR").filter(|d| !d.is_empty()).context(
        "SKIFF_EBPF_DIR is not set: the node image's skiff-node embeds the BPF objects of `cargo xtask build-ebpf`",
    )?;
    let bins = build_static(NODE.packages, &NODE.bins(), NODE.profile, &node_build_env(Path::new(&ebpf)))?;
    Ok(ensure_image(&NODE, &bins)?.0)
}

/// The environment of the node image's static build: skiff-node embeds the BPF objects
/// in `ebpf_dir`.
pub fn node_build_env(ebpf_dir: &Path) -> [(&'static str, &Path); 1] {
    [("SKIFF_EBPF_DIR", ebpf_dir)]
}

/// The static `skiff-echo` binary the echo image holds, for use as a client inside a
/// node's network namespace (`skiff-echo get POD_IP:8080 /readyz`).
pub fn echo_binary() -> Result<PathBuf> {
    Ok(test_images()?.bins["skiff-echo"].clone())
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
        let layout = read_image_tarball(&out);
        let again = build_image("localhost/skiff/t:7", &[(&bin, "/usr/bin/hello")], &["/usr/bin/hello"], &out)
            .and_then(|p| read_image_tarball(&p));
        let _ = std::fs::remove_dir_all(&dir);
        let layout = layout.unwrap();
        assert_eq!(layout.name, "localhost/skiff/t:7");
        assert_eq!(layout.config["Entrypoint"], json!(["/usr/bin/hello"]));
        let paths: Vec<&str> = layout.layer.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["usr/", "usr/bin/", "usr/bin/hello"]);
        assert_eq!(layout.layer[2].1, 0o755);
        assert_eq!(again.unwrap().manifest_digest, layout.manifest_digest, "the same files gave another digest");
    }

    #[test]
    fn read_image_tarball_rejects_a_blob_that_does_not_match_its_digest() {
        let dir = std::env::temp_dir().join(crate::unique_tag("skiff-image-bad"));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("x");
        std::fs::write(&bin, b"x").unwrap();
        let good = build_image("localhost/skiff/x:1", &[(&bin, "/x")], &["/x"], &dir.join("x.tar")).unwrap();
        // Rewrite the tarball with one byte of the config blob changed.
        let mut builder = tar::Builder::new(Vec::new());
        for entry in tar::Archive::new(std::fs::File::open(&good).unwrap()).entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path.starts_with("blobs/sha256/") && data.starts_with(b"{\"architecture\"") {
                data[2] = b'A';
            }
            let mut header = entry.header().clone();
            builder.append_data(&mut header, &path, &data[..]).unwrap();
        }
        let bad = dir.join("bad.tar");
        std::fs::write(&bad, builder.into_inner().unwrap()).unwrap();
        let err = read_image_tarball(&bad);
        let _ = std::fs::remove_dir_all(&dir);
        let err = format!("{:#}", err.unwrap_err());
        assert!(err.contains("has digest"), "{err}");
    }

    #[test]
    fn ensure_image_skips_unchanged_inputs_and_rewrites_changed_ones() {
        // A private target dir would need CARGO_TARGET_DIR, which other tests read; the
        // spec's file name is unique instead.
        let dir = std::env::temp_dir().join(crate::unique_tag("skiff-image-ensure"));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("app");
        std::fs::write(&bin, b"one").unwrap();
        let file: &'static str = Box::leak(format!("{}.tar", crate::unique_tag("ensure-test")).into_boxed_str());
        let spec = ImageSpec {
            name: "localhost/skiff/ensure:1",
            file,
            packages: &[],
            files: &[("app", "/app")],
            entrypoint: &["/app"],
            profile: "release",
        };
        let first = ensure_image(&spec, std::slice::from_ref(&bin));
        let second = ensure_image(&spec, std::slice::from_ref(&bin));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&bin, b"two!").unwrap();
        let third = ensure_image(&spec, std::slice::from_ref(&bin));
        let _ = std::fs::remove_file(spec.tarball());
        let _ = std::fs::remove_file(spec.tarball().with_extension("inputs"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(first.unwrap().1, "the first call must write the tarball");
        assert!(!second.unwrap().1, "unchanged inputs must not rewrite the tarball");
        assert!(third.unwrap().1, "a changed binary must rewrite the tarball");
    }
}
