//! `cargo xtask images`: builds Skiff's OCI image tarballs from static binaries of its
//! own (`skiff_tests::image::ALL`: pause, the echo demo app, the node agent) into
//! `target/images/`, prints their paths on stdout, and with `--import-into SOCKET`
//! imports them into that containerd's `k8s.io` namespace (`ctr images import`), where
//! the CRI finds them. There is no registry: this is how images reach a node.
//!
//! Cargo decides which binaries are stale, and a tarball is rewritten only when its
//! binaries changed (`skiff_tests::image::ensure_image`), so a second run costs a few
//! seconds. The image layout itself lives in `skiff_tests::image`, which the tests use
//! directly; this module adds the choice of images, the BPF objects the node image
//! needs, progress and the import. It never starts or configures a containerd.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use skiff_tests::image::{self, ImageSpec};

use crate::{
    build_ebpf::{EBPF_DIR_ENV, objects_dir},
    util::{display, progress},
};

/// The containerd namespace the CRI uses, which `--import-into` imports into.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// One image tarball that [`build`] made or found up to date.
#[derive(Clone, Debug)]
pub struct Built {
    pub spec: ImageSpec,
    pub tarball: PathBuf,
    /// Whether the tarball was written by this run (false: its binaries were unchanged).
    pub written: bool,
}

/// `cargo xtask images [NAME...] [--import-into SOCKET]`.
pub fn run(names: &[String], import_into: Option<&Path>) -> Result<()> {
    let started = Instant::now();
    let specs = select(names)?;
    if let Some(socket) = import_into
        && !socket.exists()
    {
        bail!("--import-into {}: no such socket; is that containerd running?", socket.display());
    }
    let built = build(&specs)?;
    for b in &built {
        println!("{}", b.tarball.display());
    }
    if let Some(socket) = import_into {
        for b in &built {
            import(socket, &b.tarball)?;
            progress("images", &format!("imported {} into {} ({CRI_NAMESPACE})", b.spec.name, socket.display()));
        }
    }
    let written = built.iter().filter(|b| b.written).count();
    progress(
        "images",
        &format!(
            "{} images in {} ({written} written, {} unchanged) in {:.1} s",
            built.len(),
            image::images_dir().display(),
            built.len() - written,
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// The images named `names` (`pause`, `echo`, `node`: the tarball's stem, or the full
/// image name), or all of them when `names` is empty.
pub fn select(names: &[String]) -> Result<Vec<ImageSpec>> {
    if names.is_empty() {
        return Ok(image::ALL.to_vec());
    }
    names
        .iter()
        .map(|name| {
            image::ALL
                .iter()
                .find(|s| s.name == name || s.file.strip_suffix(".tar") == Some(name.as_str()))
                .copied()
                .with_context(|| {
                    let known: Vec<&str> = image::ALL.iter().filter_map(|s| s.file.strip_suffix(".tar")).collect();
                    format!("no image {name:?}; the images are {}", known.join(", "))
                })
        })
        .collect()
}

/// Builds the binaries of `specs` statically (one cargo call per set of packages) and
/// writes their tarballs, printing progress.
pub fn build(specs: &[ImageSpec]) -> Result<Vec<Built>> {
    // Images whose binaries come from the same packages share one cargo call. Packages
    // are not mixed across calls: one call unifies the features of all its packages,
    // and the tests build the pause and echo binaries alone.
    let mut groups: Vec<(&[&str], Vec<ImageSpec>)> = Vec::new();
    for spec in specs {
        match groups.iter_mut().find(|(packages, _)| *packages == spec.packages) {
            Some((_, group)) => group.push(*spec),
            None => groups.push((spec.packages, vec![*spec])),
        }
    }
    let mut built = Vec::new();
    for (packages, group) in groups {
        let env = if packages.contains(&"skiff-node") { vec![(EBPF_DIR_ENV, objects_dir()?)] } else { Vec::new() };
        let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
        let mut bins: Vec<&str> = group.iter().flat_map(ImageSpec::bins).collect();
        bins.dedup();
        progress(
            "images",
            &format!(
                "building {} statically linked ({} profile, {})...",
                bins.join(", "),
                group[0].profile,
                packages.join(", ")
            ),
        );
        let step = Instant::now();
        let paths = image::build_static(packages, &bins, group[0].profile, &env)?;
        progress("images", &format!("binaries ready in {:.1} s", step.elapsed().as_secs_f64()));
        let by_name: BTreeMap<&str, PathBuf> = bins.into_iter().zip(paths).collect();
        for spec in group {
            let binaries: Vec<PathBuf> = spec.bins().iter().map(|b| by_name[b].clone()).collect();
            let (tarball, written) = image::ensure_image(&spec, &binaries)?;
            let size = std::fs::metadata(&tarball).map(|m| m.len()).unwrap_or(0);
            progress(
                "images",
                &format!(
                    "{}: {} ({:.1} MB, {})",
                    spec.name,
                    tarball.display(),
                    size as f64 / 1e6,
                    if written { "written" } else { "unchanged" }
                ),
            );
            built.push(Built { spec, tarball, written });
        }
    }
    Ok(built)
}

/// Imports one tarball into the CRI's namespace of the containerd at `socket`. `ctr`'s
/// own output is kept off stdout, which lists the tarballs.
pub fn import(socket: &Path, tarball: &Path) -> Result<()> {
    let mut cmd = Command::new("ctr");
    cmd.arg("-a").arg(socket).args(["-n", CRI_NAMESPACE, "images", "import"]).arg(tarball);
    let shown = display(&cmd);
    let out = cmd.output().with_context(|| format!("could not start `{shown}`: is containerd installed?"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}{}; is the containerd at {} running and yours?",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim(),
            socket.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::select;

    #[test]
    fn select_finds_images_by_short_or_full_name() {
        let all = select(&[]).unwrap();
        assert_eq!(all.len(), skiff_tests::image::ALL.len());
        let some = select(&["echo".into(), "localhost/skiff/pause:1".into()]).unwrap();
        assert_eq!(
            some.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["localhost/skiff/echo:1", "localhost/skiff/pause:1"]
        );
        let err = select(&["nope".into()]).unwrap_err().to_string();
        assert!(err.contains("pause, echo, node"), "{err}");
    }
}
