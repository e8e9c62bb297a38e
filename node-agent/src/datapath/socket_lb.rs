//! The socket-level load balancer's loader: the `sock` object's four cgroup hooks
//! (`connect4`, `sendmsg4`, `recvmsg4`, `getpeername4`; see `ebpf/programs/src/sock.rs`)
//! attached to the node's cgroup, their links pinned as `links/<hook>` so that they stay
//! while the agent is down. They share the pinned Service maps with the tc programs.
//!
//! A restarted agent attaches its hooks beside the old ones (the cgroup allows several
//! programs) and only then swaps the pins, which detaches the old ones: no `connect()`
//! meets the cgroup without a hook. While both run, the second sees a backend address
//! and leaves it alone.

use std::path::{Path, PathBuf};

use aya::{
    EbpfLoader,
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use skiff_datapath::Pins;
use tracing::info;

use super::{Error, Result};

/// The hooks: program names in the object, also their link pins' names.
const HOOKS: [&str; 4] = ["sock_connect4", "sock_sendmsg4", "sock_recvmsg4", "sock_getpeername4"];
/// The object's name in errors.
const OBJECT: &str = "sock";

fn object() -> &'static [u8] {
    static SOCK: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_SOCK"));
    SOCK
}

/// Loads the hooks and attaches them to the cgroup v2 directory `cgroup` (made if
/// missing), for every process in it and below.
pub fn attach(pins: &Pins, cgroup: &Path) -> Result<()> {
    let cgroup_err = |source| Error::Cgroup { path: cgroup.to_path_buf(), source };
    std::fs::create_dir_all(cgroup).map_err(cgroup_err)?;
    let cgroup_dir = std::fs::File::open(cgroup).map_err(cgroup_err)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.dir())
        .load(object())
        .map_err(|source| Error::Load { object: OBJECT, source: Box::new(source) })?;
    for hook in HOOKS {
        let program_err = |source| Error::Program { program: hook, source: Box::new(source) };
        let program: &mut CgroupSockAddr =
            ebpf.program_mut(hook).ok_or(Error::MissingProgram { object: OBJECT })?.try_into().map_err(program_err)?;
        program.load().map_err(program_err)?;
        // A BPF link to a cgroup takes no attach flags (the kernel refuses any): links
        // always share the cgroup with other programs, as `AllowMultiple` would.
        let id = program.attach(&cgroup_dir, CgroupAttachMode::Single).map_err(|source| Error::CgroupAttach {
            program: hook,
            path: cgroup.to_path_buf(),
            source: Box::new(source),
        })?;
        let link: FdLink = program
            .take_link(id)
            .map_err(program_err)?
            .try_into()
            .map_err(|source| Error::Link { program: hook, source })?;
        let pin = link_pin(pins, hook);
        // bpffs refuses names with a dot.
        let fresh = pins.links_dir().join(format!("{hook}_new"));
        let _ = std::fs::remove_file(&fresh);
        link.pin(&fresh).map_err(|source| Error::Pin { path: fresh.clone(), source })?;
        // Replacing the pin drops an earlier agent's link, which detaches its hook.
        std::fs::rename(&fresh, &pin).map_err(|source| Error::PinDir { path: pin.clone(), source })?;
    }
    info!(cgroup = %cgroup.display(), "socket-level load balancing attached");
    Ok(())
}

fn link_pin(pins: &Pins, hook: &str) -> PathBuf {
    pins.links_dir().join(hook)
}
