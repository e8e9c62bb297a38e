//! The datapath loader: loads the embedded BPF objects, pins maps, programs and links
//! under the node's bpffs directory, and attaches programs to interfaces. The layout of
//! that directory and the attach policies are `skiff_datapath`'s (shared with
//! skiff-cni); what is here is what only the agent does: embedding and loading.
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
    pin::PinError,
    programs::SchedClassifier,
};
use skiff_datapath::Pins;
pub use skiff_datapath::{Prog, attach::Attached};

pub mod conntrack_gc;
mod socket_lb;
pub mod xdp;
use skiff_ebpf_common::{LbConfig, MasqConfig, NodePortConfig, OverlayConfig, pin, stat};
use tracing::info;

/// The embedded object of a program (one object per attach point).
fn object(prog: Prog) -> &'static [u8] {
    static FROM_POD: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_FROM_POD"));
    static TO_POD: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_TO_POD"));
    static FROM_OVERLAY: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_FROM_OVERLAY"));
    static TO_OVERLAY: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_TO_OVERLAY"));
    static TO_UNDERLAY: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_TO_UNDERLAY"));
    static FROM_UNDERLAY: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_FROM_UNDERLAY"));
    match prog {
        Prog::FromPod => FROM_POD,
        Prog::ToPod => TO_POD,
        Prog::FromOverlay => FROM_OVERLAY,
        Prog::ToOverlay => TO_OVERLAY,
        Prog::ToUnderlay => TO_UNDERLAY,
        Prog::FromUnderlay => FROM_UNDERLAY,
    }
}

/// A developer may point at a freshly built object instead of the embedded one
/// (`SKIFF_FROM_POD_OBJECT=target/bpfel-unknown-none/release/from-pod`, ...).
fn override_var(prog: Prog) -> &'static str {
    match prog {
        Prog::FromPod => "SKIFF_FROM_POD_OBJECT",
        Prog::ToPod => "SKIFF_TO_POD_OBJECT",
        Prog::FromOverlay => "SKIFF_FROM_OVERLAY_OBJECT",
        Prog::ToOverlay => "SKIFF_TO_OVERLAY_OBJECT",
        Prog::ToUnderlay => "SKIFF_TO_UNDERLAY_OBJECT",
        Prog::FromUnderlay => "SKIFF_FROM_UNDERLAY_OBJECT",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot create the bpffs directory {path}: {source} (is bpffs mounted at /sys/fs/bpf? `cargo xtask setup` mounts it)"
    )]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the BPF object {path} (named by {var}): {source}")]
    ReadObject {
        var: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the BPF object {object} failed: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("the BPF object {object} has no program {object}")]
    MissingProgram { object: &'static str },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error(transparent)]
    Attach(#[from] skiff_datapath::attach::Error),
    #[error("the cgroup directory {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attaching {program} to the cgroup {path} (it must be a cgroup v2 directory): {source}")]
    CgroupAttach {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("the link of {program}: {source}")]
    Link {
        program: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("map {map} under {dir}: {source}")]
    Map {
        map: &'static str,
        dir: PathBuf,
        #[source]
        source: Box<aya::maps::MapError>,
    },
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

/// The loaded datapath of one node: one loaded object per program, all sharing the
/// pinned maps.
pub struct Datapath {
    pins: Pins,
    objects: Vec<(Prog, Ebpf)>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath").field("pin_dir", &self.pins.dir()).finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs, creating or adopting the pinned maps in `pin_dir`, and pins
    /// each program (so that skiff-cni can attach "from pod" to new pods).
    pub fn load(pin_dir: &Path, sizes: MapSizes) -> Result<Self> {
        let pins = Pins::new(pin_dir);
        for dir in [pin_dir.to_path_buf(), pins.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| Error::PinDir { path: dir.clone(), source })?;
        }
        // The counters' first layout, left by an agent before V2: nothing reads it.
        let _ = std::fs::remove_file(pin_dir.join(pin::STATS_V1));
        let mut objects = Vec::new();
        for prog in Prog::ALL {
            let var = override_var(prog);
            let override_obj = match std::env::var_os(var).map(PathBuf::from) {
                Some(path) => Some(std::fs::read(&path).map_err(|source| Error::ReadObject { var, path, source })?),
                None => None,
            };
            let mut ebpf = EbpfLoader::new()
                .default_map_pin_directory(pin_dir)
                .map_max_entries(pin::SERVICES, sizes.services)
                .map_max_entries(pin::BACKENDS, sizes.backends)
                .map_max_entries(pin::CT, sizes.ct)
                .load(override_obj.as_deref().unwrap_or(object(prog)))
                .map_err(|source| Error::Load { object: prog.name(), source: Box::new(source) })?;
            let program = program_of(&mut ebpf, prog)?;
            program.load().map_err(|source| Error::Program { program: prog.name(), source: Box::new(source) })?;
            let prog_pin = pins.prog(prog);
            let _ = std::fs::remove_file(&prog_pin);
            program.pin(&prog_pin).map_err(|source| Error::Pin { path: prog_pin.clone(), source })?;
            objects.push((prog, ebpf));
        }
        migrate_conntrack(pin_dir)?;
        info!(pin_dir = %pin_dir.display(), "datapath loaded");
        Ok(Self { pins, objects })
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.dir()
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

    /// Attaches "from pod" at tc ingress and "to pod" at tc egress of a pod's host-side
    /// interface; returns how "from pod" was attached.
    pub fn attach_pod_programs(&mut self, interface: &str) -> Result<Attached> {
        self.attach(Prog::ToPod, interface)?;
        self.attach(Prog::FromPod, interface)
    }

    /// Attaches a program to an interface at its attach point. If a pinned link exists
    /// (an earlier agent attached it), the program in it is replaced atomically, so no
    /// packet meets an interface without a program.
    pub fn attach(&mut self, prog: Prog, interface: &str) -> Result<Attached> {
        let link_pin = self.pins.link(prog, interface);
        let program = self.program(prog)?;
        Ok(skiff_datapath::attach::attach_or_adopt(program, prog, interface, &link_pin)?)
    }

    /// Detaches both pod programs from an interface by removing their link pins.
    pub fn detach_pod_programs(&mut self, interface: &str) -> Result<()> {
        skiff_datapath::attach::detach(&self.pins.link(Prog::ToPod, interface))?;
        Ok(skiff_datapath::attach::detach(&self.pins.link(Prog::FromPod, interface))?)
    }

    /// Attaches the NodePort fast path (XDP) to the underlay interface.
    pub fn attach_xdp(&self, interface: &str) -> Result<Attached> {
        xdp::attach(&self.pins, interface)
    }

    /// Detaches the NodePort fast path from the underlay interface.
    pub fn detach_xdp(&self, interface: &str) -> Result<()> {
        xdp::detach(&self.pins, interface)
    }

    /// Attaches the socket-level load balancer to the cgroup v2 directory `cgroup`.
    pub fn attach_socket_lb(&self, cgroup: &Path) -> Result<()> {
        socket_lb::attach(&self.pins, cgroup)
    }

    /// Writes the load balancer's runtime settings.
    pub fn set_config(&self, config: LbConfig) -> Result<()> {
        set_config(self.pins.dir(), config)
    }
}

fn program_of(ebpf: &mut Ebpf, prog: Prog) -> Result<&mut SchedClassifier> {
    let program = ebpf.program_mut(prog.name()).ok_or(Error::MissingProgram { object: prog.name() })?;
    program.try_into().map_err(|source| Error::Program { program: prog.name(), source: Box::new(source) })
}

pub(crate) fn open_pinned(dir: &Path, map: &'static str) -> Result<MapData> {
    MapData::from_pin(dir.join(map)).map_err(|source| Error::Map {
        map,
        dir: dir.to_path_buf(),
        source: Box::new(source),
    })
}

/// Copies the entries of an older agent's conntrack (`CT4_V1`, 32-byte values without
/// ports) into the current one and removes it, so that flows keep their backends across
/// the upgrade. V1 never translated ports: a flow's client port is its forward key's
/// source port or its reply key's destination port, and its translated port the same.
fn migrate_conntrack(pin_dir: &Path) -> Result<()> {
    use skiff_ebpf_common::{CT_DIR_FORWARD, Ct4Entry, Ct4Key};
    let old_pin = pin_dir.join(pin::CT_V1);
    if !old_pin.exists() {
        return Ok(());
    }
    let map_err = |map, source| Error::Map { map, dir: pin_dir.to_path_buf(), source: Box::new(source) };
    // V1's values as bytes: the same fields as `Ct4Entry` up to `snat_addr`.
    let old: aya::maps::HashMap<MapData, Ct4Key, [u8; 32]> =
        aya::maps::HashMap::try_from(Map::LruHashMap(open_pinned(pin_dir, pin::CT_V1)?))
            .map_err(|e| map_err(pin::CT_V1, e))?;
    let mut new: aya::maps::HashMap<MapData, Ct4Key, Ct4Entry> =
        aya::maps::HashMap::try_from(Map::LruHashMap(open_pinned(pin_dir, pin::CT)?))
            .map_err(|e| map_err(pin::CT, e))?;
    let mut copied = 0usize;
    for (key, v) in old.iter().flatten() {
        let port = if key.dir == CT_DIR_FORWARD { key.sport } else { key.dport };
        let u32_at = |i: usize| u32::from_ne_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
        let u16_at = |i: usize| u16::from_ne_bytes([v[i], v[i + 1]]);
        let entry = Ct4Entry {
            last_seen_ns: u64::from_ne_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]),
            backend_id: u32_at(8),
            backend_addr: u32_at(12),
            rev_nat_index: u32_at(16),
            backend_port: u16_at(20),
            flags: u16_at(22),
            client_addr: u32_at(24),
            snat_addr: u32_at(28),
            client_port: port,
            snat_port: port,
            _pad: 0,
        };
        if new.insert(key, entry, 0).is_ok() {
            copied += 1;
        }
    }
    let _ = std::fs::remove_file(&old_pin);
    info!(copied, "conntrack entries carried over from the V1 layout");
    Ok(())
}

/// Writes the load balancer's settings into the pinned config map under `pin_dir`.
pub fn set_config(pin_dir: &Path, config: LbConfig) -> Result<()> {
    set_settings(pin_dir, pin::CONFIG, config)
}

/// Writes the overlay's settings into the pinned config map under `pin_dir`.
pub fn set_overlay_config(pin_dir: &Path, config: OverlayConfig) -> Result<()> {
    set_settings(pin_dir, pin::OVERLAY_CONFIG, config)
}

/// Writes the masquerade's settings into the pinned config map under `pin_dir`.
pub fn set_masq_config(pin_dir: &Path, config: MasqConfig) -> Result<()> {
    set_settings(pin_dir, pin::MASQ_CONFIG, config)
}

/// Writes NodePort's settings into the pinned config map under `pin_dir`.
pub fn set_nodeport_config(pin_dir: &Path, config: NodePortConfig) -> Result<()> {
    set_settings(pin_dir, pin::NODEPORT_CONFIG, config)
}

/// Writes slot 0 of one of the one-entry settings arrays.
fn set_settings<T: aya::Pod>(pin_dir: &Path, map: &'static str, value: T) -> Result<()> {
    let map_err = |source| Error::Map { map, dir: pin_dir.to_path_buf(), source: Box::new(source) };
    let mut array: Array<MapData, T> = Array::try_from(Map::Array(open_pinned(pin_dir, map)?)).map_err(map_err)?;
    array.set(0, value, 0).map_err(map_err)
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
