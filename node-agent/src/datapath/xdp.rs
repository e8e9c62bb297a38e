//! The NodePort fast path's loader: the `xdp-underlay` object's `xdp_underlay` program
//! (see `ebpf/programs/src/pipeline/xdp_underlay.rs`) attached to the underlay
//! interface, its link pinned as `links/xdp_underlay_<interface>` so that it stays while
//! the agent is down. It shares the pinned maps with the tc programs, which stay
//! attached: XDP only takes the NodePort packets it can finish.
//!
//! A restarted agent replaces the program inside the pinned link (one atomic update):
//! no packet meets the interface without it. The kernel runs it in the driver where the
//! driver supports XDP (veth does) and in generic mode elsewhere.
//!
//! On a veth, frames the program sends back out are refused by the peer unless the peer
//! has NAPI on (`ethtool -K <peer> gro on`), and a sender across a veth leaves TCP
//! checksums for the kernel to finish, which a frame sent back out at XDP loses: such
//! an underlay needs its senders' transmit checksum offload off (`ethtool -K <if> tx
//! off`), as `skiff_tests::cluster` sets up. A physical network needs neither.

use std::io;
use std::path::{Path, PathBuf};

use aya::{
    EbpfLoader,
    pin::PinError,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
    sys::SyscallError,
};
use skiff_datapath::Pins;
use tracing::{debug, info};

use super::{Attached, Error, Result};

/// The object's name in errors.
const OBJECT: &str = "xdp-underlay";
/// The NodePort program, also the prefix of its link pin.
const PROGRAM: &str = "xdp_underlay";

fn object() -> &'static [u8] {
    static XDP_UNDERLAY: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_XDP_UNDERLAY"));
    XDP_UNDERLAY
}

fn link_pin(pins: &Pins, interface: &str) -> PathBuf {
    pins.links_dir().join(format!("{PROGRAM}_{interface}"))
}

fn load(pin_dir: &Path) -> Result<aya::Ebpf> {
    EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(object())
        .map_err(|source| Error::Load { object: OBJECT, source: Box::new(source) })
}

/// Attaches the NodePort fast path to `interface`, or replaces the program in the link
/// an earlier agent pinned.
pub fn attach(pins: &Pins, interface: &str) -> Result<Attached> {
    let mut ebpf = load(pins.dir())?;
    let program_err = |source| Error::Program { program: PROGRAM, source: Box::new(source) };
    let program: &mut Xdp =
        ebpf.program_mut(PROGRAM).ok_or(Error::MissingProgram { object: OBJECT })?.try_into().map_err(program_err)?;
    program.load().map_err(program_err)?;
    let pin = link_pin(pins, interface);
    match PinnedLink::from_pin(&pin) {
        Ok(old) => {
            let link =
                XdpLink::try_from(FdLink::from(old)).map_err(|source| Error::Link { program: PROGRAM, source })?;
            let id = program.attach_to_link(link).map_err(program_err)?;
            // The pin keeps the link; this process's descriptor may go.
            drop(program.take_link(id));
            debug!(interface, "adopted the pinned XDP link");
            Ok(Attached::Adopted)
        }
        Err(LinkError::SyscallError(SyscallError { io_error, .. })) if io_error.kind() == io::ErrorKind::NotFound => {
            let id = program.attach(interface, XdpMode::Default).map_err(program_err)?;
            let link: FdLink = program
                .take_link(id)
                .map_err(program_err)?
                .try_into()
                .map_err(|source| Error::Link { program: PROGRAM, source })?;
            link.pin(&pin).map_err(|source: PinError| Error::Pin { path: pin.clone(), source })?;
            info!(interface, "NodePort fast path attached at XDP");
            Ok(Attached::New)
        }
        Err(source) => Err(Error::Link { program: PROGRAM, source }),
    }
}

/// Detaches the NodePort fast path from `interface` (a missing link is fine).
pub fn detach(pins: &Pins, interface: &str) -> Result<()> {
    let pin = link_pin(pins, interface);
    match std::fs::remove_file(&pin) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::PinDir { path: pin, source: e }),
        _ => Ok(()),
    }
}
