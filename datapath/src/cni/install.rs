//! What the node agent calls to set a node up for skiff-cni: the CNI configuration list
//! and the plugin binaries, all written atomically (containerd watches the conf dir and
//! would read a half-written file; a runtime may exec a binary at any moment).

use std::{
    fs::{self, File},
    io::{self, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use super::config::{ConfigError, NodeNetConfig};

/// File name of the configuration list in the CNI conf dir. `10-` sorts it before
/// other lists, since containerd uses the first one.
pub const CONFLIST_NAME: &str = "10-skiff.conflist";
/// The network name in the list.
pub const NETWORK_NAME: &str = "skiff";
/// The plugin's `type`, which is also its binary name in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "skiff-cni";
/// Where Debian's `containernetworking-plugins` and the upstream tarball put the
/// reference `loopback` plugin, which containerd runs for the pod's `lo`.
pub const LOOPBACK_SOURCES: [&str; 2] = ["/usr/lib/cni/loopback", "/opt/cni/bin/loopback"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("skiff-cni configuration: {0}")]
    Invalid(#[from] ConfigError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("installing {name} into {dir}: {source}")]
    Install {
        name: String,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is missing: build it with `cargo build -p skiff-cni`")]
    PluginMissing { path: PathBuf },
    #[error("cannot find the running executable: {0}")]
    CurrentExe(#[source] io::Error),
    #[error(
        "the CNI loopback plugin is not installed (looked in {}): install containernetworking-plugins",
        LOOPBACK_SOURCES.join(", ")
    )]
    LoopbackMissing,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The configuration list for a node: one plugin (containerd configures `lo` itself).
pub fn conflist(cfg: &NodeNetConfig) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [{
            "type": PLUGIN_TYPE,
            "podCIDR": cfg.pod_cidr,
            "mtu": cfg.mtu,
            "bpffsDir": cfg.bpffs_dir,
            "dataDir": cfg.data_dir,
        }],
    })
}

/// Writes `<conf_dir>/10-skiff.conflist` through a temporary file and a rename, and
/// returns its path. An unchanged file is left alone (no spurious reload).
pub fn write_conflist(conf_dir: &Path, cfg: &NodeNetConfig) -> Result<PathBuf> {
    cfg.validate()?;
    let path = conf_dir.join(CONFLIST_NAME);
    let mut bytes = serde_json::to_vec_pretty(&conflist(cfg)).expect("a JSON value serializes");
    bytes.push(b'\n');
    if fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(path);
    }
    // libcni loads only *.conf, *.conflist and *.json, so the temporary name is ignored.
    let tmp = conf_dir.join(format!(".{CONFLIST_NAME}.{}.tmp", std::process::id()));
    let written = (|| {
        fs::create_dir_all(conf_dir)?;
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| path.clone()).map_err(|source| Error::Write { path, source })
}

/// The `skiff-cni` binary beside the running executable (cargo builds skiff-node and
/// skiff-cni into the same directory, and a node image ships them together): what the
/// node agent passes to [`install_binary`].
pub fn plugin_beside_current_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(Error::CurrentExe)?;
    let path = exe.with_file_name(PLUGIN_TYPE);
    if path.is_file() { Ok(path) } else { Err(Error::PluginMissing { path }) }
}

/// Copies the plugin binary `src` to `<bin_dir>/skiff-cni` through a temporary file and
/// a rename, mode 0755. A runtime that executes the plugin meanwhile gets either the
/// old or the new binary, never a partial one (and never ETXTBSY).
pub fn install_binary(src: &Path, bin_dir: &Path) -> Result<()> {
    install_as(src, bin_dir, PLUGIN_TYPE)
}

/// Installs the `loopback` plugin from the first of [`LOOPBACK_SOURCES`] that exists
/// into `bin_dir` (unless `bin_dir` already holds it), and returns its path there.
pub fn install_loopback(bin_dir: &Path) -> Result<PathBuf> {
    let dest = bin_dir.join("loopback");
    if dest.is_file() {
        return Ok(dest);
    }
    let src = LOOPBACK_SOURCES.iter().map(Path::new).find(|p| p.is_file()).ok_or(Error::LoopbackMissing)?;
    install_as(src, bin_dir, "loopback")?;
    Ok(dest)
}

/// Copies `src` to `<bin_dir>/<name>` atomically, mode 0755.
pub fn install_as(src: &Path, bin_dir: &Path, name: &str) -> Result<()> {
    let dest = bin_dir.join(name);
    let tmp = bin_dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let copied = (|| {
        fs::create_dir_all(bin_dir)?;
        fs::copy(src, &tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &dest)
    })();
    if copied.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    copied.map_err(|source| Error::Install { name: name.to_owned(), dir: bin_dir.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NodeNetConfig {
        NodeNetConfig {
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            mtu: 1450,
            bpffs_dir: "/sys/fs/bpf/skiff/n1".into(),
            data_dir: "/var/lib/skiff/n1/cni".into(),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-datapath-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn conflist_is_written_once_and_validated() {
        let dir = scratch("conf");
        let path = write_conflist(&dir, &cfg()).unwrap();
        assert_eq!(path, dir.join("10-skiff.conflist"));
        let list: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(list["name"], "skiff");
        assert_eq!(list["plugins"][0]["type"], "skiff-cni");
        let plugin: NodeNetConfig = serde_json::from_value(list["plugins"][0].clone()).unwrap();
        assert_eq!(plugin, cfg());
        // Rewriting is idempotent and leaves no temporary files.
        write_conflist(&dir, &cfg()).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let mut bad = cfg();
        bad.mtu = 1;
        assert!(matches!(write_conflist(&dir, &bad).unwrap_err(), Error::Invalid(ConfigError::Mtu(1))));
        bad = cfg();
        bad.pod_cidr = "10.244.1.5/24".parse().unwrap();
        assert!(write_conflist(&dir, &bad).unwrap_err().to_string().contains("host bits"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn installs_an_executable() {
        let dir = scratch("bin");
        let src = scratch("src-file");
        fs::write(&src, b"#!/bin/sh\n").unwrap();
        install_binary(&src, &dir).unwrap();
        install_binary(&src, &dir).unwrap();
        let meta = fs::metadata(dir.join("skiff-cni")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_file(&src).unwrap();
    }
}
