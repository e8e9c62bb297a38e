//! Removing a pod's cgroup once nothing of the pod runs. runc makes the pod's cgroup
//! (the sandbox's `cgroup_parent`) in every hierarchy and removes only the containers'
//! own; the pod level is the kubelet's to remove, as upstream's does.

use std::io;
use std::path::{Path, PathBuf};

/// The mount points of the cgroup hierarchies (v1 controllers and the v2 tree).
fn hierarchies() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return Vec::new() };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "cgroup" | "cgroup2").then(|| PathBuf::from(dir))
        })
        .collect()
}

/// Removes the cgroup `path` (a cgroupfs path such as `/skiff/n1/pod<uid>`) and the
/// empty cgroups below it from every hierarchy. A cgroup that still has processes
/// stays (the kernel refuses), and so does its parent.
pub fn remove(path: &str) -> io::Result<()> {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        return Ok(());
    }
    let mut first_error = None;
    for root in hierarchies() {
        let dir = root.join(relative);
        if dir.is_dir()
            && let Err(e) = remove_depth_first(&dir)
        {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn remove_depth_first(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_depth_first(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
