//! Writing a volume's files so that a container never sees half of an update: every
//! version goes into a fresh timestamped directory (`..2026_12_01_23_00_00.N`), a
//! `..data` symlink is swapped to it with one rename, and each user-visible name is a
//! symlink through `..data` (`key -> ..data/key`). A file mounted from such a volume
//! therefore changes in place, all keys at once. This is the layout upstream's
//! AtomicWriter uses, so tools that watch `..data` work.
//!
//! With a group (the pod's `fsGroup`), every file and directory of a version is owned by
//! it, files get group read and directories the setgid bit, as upstream's volume
//! ownership has it.
//!
//! It must not write anywhere outside the volume's directory: payload paths are
//! checked before anything is written.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU32, Ordering};

/// One file of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    /// Permission bits (e.g. 0o644).
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileProjection>;

const DATA_LINK: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Why a payload path is refused, or `None` when it is fine.
pub fn check_path(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("must not be empty");
    }
    if path.len() > 4096 {
        return Some("must be at most 4096 characters");
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Some("must be relative");
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Some("must not contain '..'");
    }
    if path.starts_with("..") {
        return Some("must not start with '..'");
    }
    None
}

/// The first component of a payload path: what the volume's root shows.
fn top_level(path: &str) -> &str {
    path.split('/').find(|c| !c.is_empty() && *c != ".").unwrap_or(path)
}

/// Writes `payload` into `dir` atomically. Returns whether anything changed (an
/// unchanged payload writes nothing, so a periodic refresh costs reads only).
pub fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    write_owned(dir, payload, None)
}

/// The mode a file of `mode` gets in a volume owned by a group: group (and owner) read.
pub fn group_mode(mode: u32) -> u32 {
    mode | 0o440
}

/// Gives `path` to group `gid` and adds `extra` to its mode (no-op when both hold).
fn own(path: &Path, gid: u32, extra: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.gid() != gid {
        std::os::unix::fs::lchown(path, None, Some(gid))?;
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode | extra != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | extra))?;
    }
    Ok(())
}

/// Gives a directory to group `gid`: group read and search, and the setgid bit so that
/// what is made in it later belongs to the group too.
pub fn own_dir(path: &Path, gid: u32) -> io::Result<()> {
    own(path, gid, 0o2550)
}

/// [`write`], with every file and directory of the new version owned by group `gid`
/// when there is one (and file modes with [`group_mode`]).
pub fn write_owned(dir: &Path, payload: &Payload, gid: Option<u32>) -> io::Result<bool> {
    for path in payload.keys() {
        if let Some(why) = check_path(path) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("path {path:?} {why}")));
        }
    }
    std::fs::create_dir_all(dir)?;
    if let Some(gid) = gid {
        own_dir(dir, gid)?;
    }
    let old = std::fs::read_link(dir.join(DATA_LINK)).ok().and_then(|t| t.to_str().map(String::from));
    let visible: BTreeSet<&str> = payload.keys().map(|p| top_level(p)).collect();
    if let Some(old) = &old
        && same_contents(&dir.join(old), payload, gid)?
    {
        link_visible(dir, &visible)?;
        return Ok(false);
    }

    let ts = new_ts_dir_name();
    let ts_dir = dir.join(&ts);
    std::fs::create_dir(&ts_dir)?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))?;
    for (path, file) in payload {
        let target = ts_dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &file.data)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file_mode(file.mode, gid)))?;
        if let Some(gid) = gid {
            std::os::unix::fs::lchown(&target, None, Some(gid))?;
            // The directories between the version's root and the file.
            for d in target.ancestors().skip(1).take_while(|d| d.starts_with(&ts_dir)) {
                own_dir(d, gid)?;
            }
        }
    }
    if let Some(gid) = gid {
        own_dir(&ts_dir, gid)?;
    }
    let tmp = dir.join(DATA_TMP);
    remove_if_present(&tmp)?;
    symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA_LINK))?;

    link_visible(dir, &visible)?;
    // What the new version no longer has, and older versions (ours, or left by a crash).
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_link = entry.file_type()?.is_symlink();
        if name.starts_with("..") {
            if name != DATA_LINK && name != ts && !is_link {
                std::fs::remove_dir_all(entry.path())?;
            }
        } else if is_link && !visible.contains(name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(true)
}

/// Each user-visible name is a symlink through `..data`.
fn link_visible(dir: &Path, visible: &BTreeSet<&str>) -> io::Result<()> {
    for name in visible {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_LINK).join(name), &link)?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn new_ts_dir_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let now = jiff::Timestamp::now();
    // Two writes in one second get distinct names from the counter and the nanos.
    format!(
        "..{}.{}{}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A file's mode as written: its own, with group read when a group owns the volume.
fn file_mode(mode: u32, gid: Option<u32>) -> u32 {
    if gid.is_some() { group_mode(mode & 0o7777) } else { mode & 0o7777 }
}

/// Whether `ts_dir` holds exactly `payload` (files, bytes, modes and group).
fn same_contents(ts_dir: &Path, payload: &Payload, gid: Option<u32>) -> io::Result<bool> {
    if !ts_dir.is_dir() {
        return Ok(false);
    }
    for (path, file) in payload {
        let p = ts_dir.join(path);
        let Ok(meta) = std::fs::symlink_metadata(&p) else { return Ok(false) };
        if !meta.is_file() || meta.permissions().mode() & 0o7777 != file_mode(file.mode, gid) {
            return Ok(false);
        }
        if gid.is_some_and(|g| meta.gid() != g) {
            return Ok(false);
        }
        if meta.len() != file.data.len() as u64 || std::fs::read(&p)? != file.data {
            return Ok(false);
        }
    }
    Ok(count_files(ts_dir)? == payload.len())
}

fn count_files(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let t = entry.file_type()?;
        n += if t.is_dir() { count_files(&entry.path())? } else { 1 };
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| (p.to_string(), FileProjection { data: d.as_bytes().to_vec(), mode: *m }))
            .collect()
    }

    fn read(dir: &Path, p: &str) -> String {
        std::fs::read_to_string(dir.join(p)).unwrap()
    }

    #[test]
    fn writes_updates_and_removes_through_the_data_link() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        assert!(write(&dir, &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o600)])).unwrap());
        assert_eq!(read(&dir, "a"), "1");
        assert_eq!(read(&dir, "sub/b"), "2");
        assert_eq!(std::fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
        let mode = std::fs::metadata(dir.join("sub/b")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = std::fs::read_link(dir.join("..data")).unwrap();

        // Same payload: nothing is rewritten.
        assert!(!write(&dir, &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o600)])).unwrap());
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), first);

        // A file opened by its visible path sees the update (the path, not the inode).
        assert!(write(&dir, &payload(&[("a", "changed", 0o644), ("c", "3", 0o644)])).unwrap());
        assert_eq!(read(&dir, "a"), "changed");
        assert_eq!(read(&dir, "c"), "3");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err(), "a key that went away stays visible");
        assert!(!dir.join(&first).exists(), "the old version is left behind");
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 4, "{names:?}");

        // A mode change alone is an update.
        assert!(write(&dir, &payload(&[("a", "changed", 0o400), ("c", "3", 0o644)])).unwrap());
        // Empty payload: an empty volume.
        assert!(write(&dir, &Payload::new()).unwrap());
        assert!(std::fs::symlink_metadata(dir.join("a")).is_err());
    }

    #[test]
    fn refuses_paths_that_leave_the_volume() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..data", "..x/y"] {
            let err = write(tmp.path(), &payload(&[(bad, "x", 0o644)])).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert_eq!(check_path("a/b.c"), None);
        assert_eq!(check_path("a..b"), None);
    }
}
