//! The host side of volumes: tmpfs mounts (emptyDir with medium Memory, secrets),
//! which of them exist (from `/proc/self/mountinfo`), and hostPath type checks.
//!
//! It must not unmount anything outside the directory it is given.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Mount points at or under `root`, deepest first (the order to unmount them in).
pub fn mounts_under(root: &Path) -> io::Result<Vec<PathBuf>> {
    // mountinfo has resolved paths; a root reached through a symlink must match them.
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let root = root.as_path();
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    Ok(mounts_under(&real)?.contains(&real))
}

/// Mounts a tmpfs on `dir` (created if missing) unless one is there already.
pub fn ensure_tmpfs(dir: &Path, size_bytes: Option<i64>, mode: u32) -> Result<(), nix::Error> {
    std::fs::create_dir_all(dir).map_err(io_to_nix)?;
    if is_mount_point(dir).map_err(io_to_nix)? {
        return Ok(());
    }
    let mut data = format!("mode={mode:o}");
    if let Some(size) = size_bytes.filter(|s| *s > 0) {
        data.push_str(&format!(",size={size}"));
    }
    nix::mount::mount(Some("tmpfs"), dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(data.as_str()))
}

fn io_to_nix(e: io::Error) -> nix::Error {
    e.raw_os_error().map(nix::Error::from_raw).unwrap_or(nix::Error::EIO)
}

/// Unmounts everything at or under `root`, deepest first.
pub fn unmount_all_under(root: &Path) -> Result<(), (PathBuf, nix::Error)> {
    for p in mounts_under(root).map_err(|e| (root.to_path_buf(), io_to_nix(e)))? {
        match nix::mount::umount2(&p, MntFlags::empty()) {
            // Busy (a process still has it open): detach it, the kernel finishes later.
            Err(nix::Error::EBUSY) => nix::mount::umount2(&p, MntFlags::MNT_DETACH).map_err(|e| (p.clone(), e))?,
            Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
            r => r.map_err(|e| (p.clone(), e))?,
        }
    }
    Ok(())
}

/// The emptyDir directory: world-writable, as upstream makes it, since the container
/// may run as any user.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Checks (and for the `...OrCreate` types, creates) a hostPath; `Err` is why not, in
/// upstream's words.
pub fn check_host_path(path: &Path, type_: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path);
    let p = path.display();
    let fail = |what: &str| Err(format!("hostPath type check failed: {p} is not {what}"));
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => fail("a directory"),
            Err(_) => std::fs::create_dir_all(path)
                .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)))
                .map_err(|e| format!("cannot create directory {p}: {e}")),
        },
        "FileOrCreate" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => fail("a file"),
            // As upstream: the parent directory must exist.
            Err(_) => std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o644)))
                .map_err(|e| format!("cannot create file {p}: {e}")),
        },
        "Directory" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            _ => fail("a directory"),
        },
        "File" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            _ => fail("a file"),
        },
        "Socket" => match meta {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => fail("a socket file"),
        },
        "CharDevice" => match meta {
            Ok(m) if m.file_type().is_char_device() => Ok(()),
            _ => fail("a character device"),
        },
        "BlockDevice" => match meta {
            Ok(m) if m.file_type().is_block_device() => Ok(()),
            _ => fail("a block device"),
        },
        other => Err(format!(
            "hostPath type {other:?} is not one of DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice, BlockDevice"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mountinfo("/plain\\04"), "/plain\\04");
    }

    #[test]
    fn host_path_types() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let file = dir.join("f");
        std::fs::write(&file, "x").unwrap();
        let sock_path = dir.join("s.sock");
        let _sock = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        let missing = dir.join("missing");
        let cases: Vec<(&Path, &str, Result<(), &str>)> = vec![
            (&missing, "", Ok(())),
            (dir, "Directory", Ok(())),
            (&file, "Directory", Err("is not a directory")),
            (&missing, "Directory", Err("is not a directory")),
            (&file, "File", Ok(())),
            (dir, "File", Err("is not a file")),
            (&sock_path, "Socket", Ok(())),
            (&file, "Socket", Err("is not a socket file")),
            (&file, "DirectoryOrCreate", Err("is not a directory")),
            (dir, "FileOrCreate", Err("is not a file")),
            (Path::new("/dev/null"), "CharDevice", Ok(())),
            (&file, "BlockDevice", Err("is not a block device")),
            (dir, "Bogus", Err("is not one of")),
        ];
        for (path, t, want) in cases {
            match (check_host_path(path, t), want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(w)) => assert!(e.contains(w), "{path:?} {t}: {e}"),
                (got, want) => panic!("{path:?} {t}: got {got:?}, want {want:?}"),
            }
        }
        let made = dir.join("new/deep");
        check_host_path(&made, "DirectoryOrCreate").unwrap();
        assert!(made.is_dir());
        let made_file = dir.join("new/file");
        check_host_path(&made_file, "FileOrCreate").unwrap();
        assert!(made_file.is_file());
        assert!(check_host_path(&dir.join("no/parent"), "FileOrCreate").is_err());
    }
}
