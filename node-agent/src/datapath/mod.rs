//! The datapath loader: loads the embedded BPF objects, pins maps, programs and links
//! under the node's bpffs directory, and attaches programs to interfaces.
//!
//! Everything it creates is pinned, so traffic keeps flowing while the agent is down,
//! and a restarted agent adopts what it finds: maps by name (their contents, conntrack
//! included, survive), links by atomic program replacement. It never writes Service
//! state: that is the proxy reconciler's job (`crate::proxy`).

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
    },
    sys::SyscallError,
};
use skiff_ebpf_common::{LbConfig, OverlayConfig, pin, stat};
use tracing::{debug, info};

/// One BPF program of the datapath: its object (one per attach point), program name,
/// pinned name, and where it attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    /// tc ingress on each pod's host-side veth: load balancing, then the overlay.
    FromPod,
    /// tc ingress on the VXLAN device: reverse NAT and delivery to local pods.
    FromOverlay,
    /// tc egress on the VXLAN device: tunnel keys for traffic the node's stack sends.
    ToOverlay,
}

impl Prog {
    pub const ALL: [Prog; 3] = [Prog::FromPod, Prog::FromOverlay, Prog::ToOverlay];

    /// The function name in the object.
    pub fn name(self) -> &'static str {
        match self {
            Prog::FromPod => "from_pod",
            Prog::FromOverlay => "from_overlay",
            Prog::ToOverlay => "to_overlay",
        }
    }

    fn pin_name(self) -> &'static str {
        match self {
            Prog::FromPod => pin::PROG_FROM_POD,
            Prog::FromOverlay => pin::PROG_FROM_OVERLAY,
            Prog::ToOverlay => pin::PROG_TO_OVERLAY,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Prog::ToOverlay => TcAttachType::Egress,
            _ => TcAttachType::Ingress,
        }
    }

    fn object(self) -> &'static [u8] {
        static FROM_POD: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_FROM_POD"));
        static FROM_OVERLAY: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_FROM_OVERLAY"));
        static TO_OVERLAY: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_TO_OVERLAY"));
        match self {
            Prog::FromPod => FROM_POD,
            Prog::FromOverlay => FROM_OVERLAY,
            Prog::ToOverlay => TO_OVERLAY,
        }
    }

    /// A developer may point at a freshly built object instead of the embedded one
    /// (`SKIFF_FROM_POD_OBJECT=target/bpfel-unknown-none/release/from-pod`, ...).
    fn override_var(self) -> &'static str {
        match self {
            Prog::FromPod => "SKIFF_FROM_POD_OBJECT",
            Prog::FromOverlay => "SKIFF_FROM_OVERLAY_OBJECT",
            Prog::ToOverlay => "SKIFF_TO_OVERLAY_OBJECT",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot create the bpffs directory {path}: {source} (is bpffs mounted at /sys/fs/bpf? `cargo xtask setup` mounts it)"
    )]
    PinDir { path: PathBuf, source: io::Error },
    #[error("loading the BPF object {object} failed: {source}")]
    Load { object: &'static str, source: Box<aya::EbpfError> },
    #[error("program {program}: {source}")]
    Program { program: &'static str, source: Box<aya::programs::ProgramError> },
    #[error("pinning {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("attaching {program} to interface {interface}: {reason}")]
    Attach { program: &'static str, interface: String, reason: String },
    #[error("map {map} under {dir}: {source}")]
    Map { map: &'static str, dir: PathBuf, source: Box<aya::maps::MapError> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Sizes of the maps when they are first created (an existing pinned map keeps its size).
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub ct: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        use skiff_ebpf_common::capacity;
        Self { services: capacity::SERVICES, backends: capacity::BACKENDS, ct: capacity::CT }
    }
}

/// Whether an attach created a new link or adopted a pinned one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    New,
    Adopted,
}

/// The loaded datapath of one node: one loaded object per program, all sharing the
/// pinned maps.
pub struct Datapath {
    pin_dir: PathBuf,
    objects: Vec<(Prog, Ebpf)>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath").field("pin_dir", &self.pin_dir).finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs, creating or adopting the pinned maps in `pin_dir`, and pins
    /// each program (so that skiff-cni can attach "from pod" to new pods).
    pub fn load(pin_dir: &Path, sizes: MapSizes) -> Result<Self> {
        for dir in [pin_dir.to_path_buf(), pin_dir.join(pin::LINKS_DIR)] {
            std::fs::create_dir_all(&dir).map_err(|source| Error::PinDir { path: dir.clone(), source })?;
        }
        let mut objects = Vec::new();
        for prog in Prog::ALL {
            let override_obj = std::env::var_os(prog.override_var())
                .map(std::fs::read)
                .transpose()
                .map_err(|source| Error::PinDir { path: PathBuf::from(prog.override_var()), source })?;
            let mut ebpf = EbpfLoader::new()
                .default_map_pin_directory(pin_dir)
                .map_max_entries(pin::SERVICES, sizes.services)
                .map_max_entries(pin::BACKENDS, sizes.backends)
                .map_max_entries(pin::CT, sizes.ct)
                .load(override_obj.as_deref().unwrap_or(prog.object()))
                .map_err(|source| Error::Load { object: prog.name(), source: Box::new(source) })?;
            let program = program_of(&mut ebpf, prog)?;
            program.load().map_err(|source| Error::Program { program: prog.name(), source: Box::new(source) })?;
            let prog_pin = pin_dir.join(prog.pin_name());
            let _ = std::fs::remove_file(&prog_pin);
            program.pin(&prog_pin).map_err(|e| Error::Pin { path: prog_pin.clone(), reason: e.to_string() })?;
            objects.push((prog, ebpf));
        }
        info!(pin_dir = %pin_dir.display(), "datapath loaded");
        Ok(Self { pin_dir: pin_dir.to_path_buf(), objects })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn link_pin(&self, prog: Prog, interface: &str) -> PathBuf {
        self.pin_dir.join(pin::LINKS_DIR).join(format!("{}_{interface}", prog.name()))
    }

    /// The loaded program, for BPF_PROG_TEST_RUN in tests and benchmarks.
    pub fn program(&mut self, prog: Prog) -> Result<&mut SchedClassifier> {
        let ebpf = &mut self.objects.iter_mut().find(|(p, _)| *p == prog).expect("every program is loaded").1;
        program_of(ebpf, prog)
    }

    /// The loaded "from pod" program, for BPF_PROG_TEST_RUN in tests and benchmarks.
    pub fn from_pod_program(&mut self) -> Result<&mut SchedClassifier> {
        self.program(Prog::FromPod)
    }

    /// Attaches "from pod" at tc ingress of a pod's host-side interface.
    pub fn attach_from_pod(&mut self, interface: &str) -> Result<Attached> {
        self.attach(Prog::FromPod, interface)
    }

    /// Attaches a program to an interface at its attach point. If a pinned link exists
    /// (an earlier agent attached it), the program in it is replaced atomically, so no
    /// packet meets an interface without a program.
    pub fn attach(&mut self, prog: Prog, interface: &str) -> Result<Attached> {
        let link_pin = self.link_pin(prog, interface);
        let attach_err =
            |reason: String| Error::Attach { program: prog.name(), interface: interface.to_owned(), reason };
        let program = self.program(prog)?;
        match PinnedLink::from_pin(&link_pin) {
            Ok(old) => {
                let link = FdLink::from(old).try_into().map_err(|e: LinkError| attach_err(e.to_string()))?;
                let id = program.attach_to_link(link).map_err(|e| attach_err(e.to_string()))?;
                // The pin keeps the link; this process's descriptor may go.
                drop(program.take_link(id));
                debug!(interface, program = prog.name(), "adopted pinned link");
                Ok(Attached::Adopted)
            }
            Err(LinkError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::NotFound =>
            {
                let id = program.attach(interface, prog.attach_type()).map_err(|e| attach_err(e.to_string()))?;
                let link = program.take_link(id).map_err(|e| attach_err(e.to_string()))?;
                let fd_link: FdLink = link.try_into().map_err(|e: LinkError| attach_err(e.to_string()))?;
                fd_link.pin(&link_pin).map_err(|e| Error::Pin { path: link_pin.clone(), reason: e.to_string() })?;
                debug!(interface, program = prog.name(), "attached new link");
                Ok(Attached::New)
            }
            Err(e) => Err(attach_err(e.to_string())),
        }
    }

    /// Detaches "from pod" from an interface by removing its link pin.
    pub fn detach_from_pod(&mut self, interface: &str) -> Result<()> {
        let link_pin = self.link_pin(Prog::FromPod, interface);
        match std::fs::remove_file(&link_pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Pin { path: link_pin, reason: e.to_string() }),
        }
    }

    /// Writes the load balancer's runtime settings.
    pub fn set_config(&self, config: LbConfig) -> Result<()> {
        set_config(&self.pin_dir, config)
    }
}

fn program_of(ebpf: &mut Ebpf, prog: Prog) -> Result<&mut SchedClassifier> {
    let program = ebpf
        .program_mut(prog.name())
        .ok_or_else(|| Error::Pin { path: PathBuf::from(prog.name()), reason: "program missing from object".into() })?;
    program.try_into().map_err(|source| Error::Program { program: prog.name(), source: Box::new(source) })
}

pub(crate) fn open_pinned(dir: &Path, map: &'static str) -> Result<MapData> {
    MapData::from_pin(dir.join(map)).map_err(|source| Error::Map {
        map,
        dir: dir.to_path_buf(),
        source: Box::new(source),
    })
}

/// Writes the load balancer's settings into the pinned config map under `pin_dir`.
pub fn set_config(pin_dir: &Path, config: LbConfig) -> Result<()> {
    let map_err = |source| Error::Map { map: pin::CONFIG, dir: pin_dir.to_path_buf(), source: Box::new(source) };
    let mut array: Array<MapData, LbConfig> =
        Array::try_from(Map::Array(open_pinned(pin_dir, pin::CONFIG)?)).map_err(map_err)?;
    array.set(0, config, 0).map_err(map_err)
}

/// Writes the overlay's settings into the pinned config map under `pin_dir`.
pub fn set_overlay_config(pin_dir: &Path, config: OverlayConfig) -> Result<()> {
    let map_err =
        |source| Error::Map { map: pin::OVERLAY_CONFIG, dir: pin_dir.to_path_buf(), source: Box::new(source) };
    let mut array: Array<MapData, OverlayConfig> =
        Array::try_from(Map::Array(open_pinned(pin_dir, pin::OVERLAY_CONFIG)?)).map_err(map_err)?;
    array.set(0, config, 0).map_err(map_err)
}

/// The datapath's counters, summed over CPUs, as (name, value).
pub fn read_stats(pin_dir: &Path) -> Result<Vec<(&'static str, u64)>> {
    let map_err = |source| Error::Map { map: pin::STATS, dir: pin_dir.to_path_buf(), source: Box::new(source) };
    let array: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open_pinned(pin_dir, pin::STATS)?)).map_err(map_err)?;
    let mut out = Vec::new();
    for (index, name) in stat::NAMES.iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        let values = array.get(&(index as u32), 0).map_err(map_err)?;
        out.push((*name, values.iter().sum()));
    }
    Ok(out)
}

/// Removes everything the datapath pinned under `pin_dir`: links (which detaches the
/// programs), programs and maps. For `skiff-node reset` and test clean-up.
pub fn remove_pins(pin_dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
