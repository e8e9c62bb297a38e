//! Attaching a datapath program at tc (TCX) and pinning its link, so the program stays
//! attached while no process holds it.
//!
//! Two policies, for two owners of a link pin:
//! - [`attach_or_adopt`] (the node agent): an existing pin is a link an earlier agent
//!   made on the same, still existing interface; the program in it is replaced
//!   atomically, so no packet meets the interface without a program;
//! - [`attach_replacing`] (the CNI plugin): an existing pin belongs to an earlier veth
//!   of the same name, which is gone; the pin is dropped and a new link made.
//!
//! This module never loads a program; callers pass a loaded or pinned one.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    pin::PinError,
    programs::{
        ProgramError, SchedClassifier,
        links::{FdLink, LinkError, PinnedLink},
    },
    sys::SyscallError,
};
use tracing::debug;

use crate::pins::Prog;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("attaching {program} to interface {interface}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("the link of {program} on interface {interface}: {source}")]
    Link {
        program: &'static str,
        interface: String,
        #[source]
        source: LinkError,
    },
    #[error("pinning the link {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("link pin {path}: {source}")]
    PinFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening the pinned program {path}: {source}")]
    Program {
        path: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether an attach created a new link or adopted a pinned one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    New,
    Adopted,
}

/// Opens a program pinned by the node agent (for attaching it elsewhere).
pub fn open_pinned(path: &Path) -> Result<SchedClassifier> {
    SchedClassifier::from_pin(path).map_err(|e| Error::Program { path: path.to_path_buf(), source: Box::new(e) })
}

/// Attaches `program` (as `prog`) to `interface`, adopting the link pinned at
/// `link_pin` if there is one, else making a new link and pinning it there.
pub fn attach_or_adopt(
    program: &mut SchedClassifier,
    prog: Prog,
    interface: &str,
    link_pin: &Path,
) -> Result<Attached> {
    let link_err = |source| Error::Link { program: prog.name(), interface: interface.to_owned(), source };
    match PinnedLink::from_pin(link_pin) {
        Ok(old) => {
            let link = FdLink::from(old).try_into().map_err(link_err)?;
            let id = program.attach_to_link(link).map_err(attach_err(prog, interface))?;
            // The pin keeps the link; this process's descriptor may go.
            drop(program.take_link(id));
            debug!(interface, program = prog.name(), "adopted pinned link");
            Ok(Attached::Adopted)
        }
        Err(LinkError::SyscallError(SyscallError { io_error, .. })) if io_error.kind() == io::ErrorKind::NotFound => {
            attach_and_pin(program, prog, interface, link_pin)?;
            debug!(interface, program = prog.name(), "attached new link");
            Ok(Attached::New)
        }
        Err(e) => Err(link_err(e)),
    }
}

/// Attaches `program` (as `prog`) to `interface` with a new link pinned at `link_pin`;
/// a stale pin there is removed first.
pub fn attach_replacing(program: &mut SchedClassifier, prog: Prog, interface: &str, link_pin: &Path) -> Result<()> {
    detach(link_pin)?;
    attach_and_pin(program, prog, interface, link_pin)
}

fn attach_and_pin(program: &mut SchedClassifier, prog: Prog, interface: &str, link_pin: &Path) -> Result<()> {
    let pin_file_err = |source| Error::PinFile { path: link_pin.to_path_buf(), source };
    if let Some(dir) = link_pin.parent() {
        std::fs::create_dir_all(dir).map_err(pin_file_err)?;
    }
    let id = program.attach(interface, prog.attach_type()).map_err(attach_err(prog, interface))?;
    let link = program.take_link(id).map_err(attach_err(prog, interface))?;
    let fd_link: FdLink = link.try_into().map_err(|source| Error::Link {
        program: prog.name(),
        interface: interface.to_owned(),
        source,
    })?;
    fd_link.pin(link_pin).map(drop).map_err(|source| Error::Pin { path: link_pin.to_path_buf(), source })
}

fn attach_err(prog: Prog, interface: &str) -> impl Fn(ProgramError) -> Error + '_ {
    move |source| Error::Attach { program: prog.name(), interface: interface.to_owned(), source: Box::new(source) }
}

/// Removes a link pin, which detaches the program (deleting the interface would too).
/// A missing pin is fine.
pub fn detach(link_pin: &Path) -> Result<()> {
    match std::fs::remove_file(link_pin) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::PinFile { path: link_pin.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}
