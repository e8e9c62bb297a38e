//! The three load-balancer maps (services, backends, reverse NAT) behind one small trait.
//!
//! [`LbMaps`] is the only way the proxy touches the kernel: [`AyaLbMaps`] opens the maps
//! the datapath loader pinned, [`FakeLbMaps`] keeps them in memory for tests (with an
//! optional capacity per map, to play "map full", and a log of every write, to check the
//! write order). [`render_dump`] prints any implementation as stable, sorted text; the
//! reconciler's golden files are such dumps.
//!
//! This module must not decide *what* to write or in which order: that is the
//! reconciler's job, and it is the only caller of the write methods.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use skiff_ebpf_common::{
    BACKEND_FLAG_TERMINATING, Backend4, PROTO_TCP, PROTO_UDP, RevNat4, SERVICE_FLAG_AFFINITY, Service4Key,
    Service4Value, addr_from_map, pin, port_from_map,
};

/// Which of the three maps an error or a write is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapKind {
    Services,
    Backends,
    RevNat,
}

impl MapKind {
    pub const fn pin_name(self) -> &'static str {
        match self {
            Self::Services => pin::SERVICES,
            Self::Backends => pin::BACKENDS,
            Self::RevNat => pin::REV_NAT,
        }
    }
}

impl std::fmt::Display for MapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.pin_name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The map has no room for another key. Distinct from other failures because the
    /// remedy differs: the entry is retried on a later sync, and an operator may have to
    /// raise the map's capacity.
    #[error("map {map} is full; cannot insert {key} (raise the map's capacity or remove Services)")]
    Full { map: MapKind, key: String },
    #[error("{op} on map {map} failed for {key}")]
    Syscall {
        map: MapKind,
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open pinned map {path} (is the datapath loaded and bpffs mounted?)")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("reading map {map} failed")]
    Dump {
        map: MapKind,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("{op} on map {map} failed for {key}")]
    Other {
        map: MapKind,
        op: &'static str,
        key: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

impl Error {
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Read and write access to the load-balancer maps.
///
/// Keys and values are the map types themselves (network byte order inside). Deleting a
/// key that is not there succeeds, so a retried deletion after a partial failure is
/// harmless.
pub trait LbMaps {
    fn upsert_backend(&mut self, id: u32, backend: &Backend4) -> Result<()>;
    fn delete_backend(&mut self, id: u32) -> Result<()>;
    fn upsert_service(&mut self, key: &Service4Key, value: &Service4Value) -> Result<()>;
    fn delete_service(&mut self, key: &Service4Key) -> Result<()>;
    fn upsert_rev_nat(&mut self, index: u32, rev_nat: &RevNat4) -> Result<()>;
    fn delete_rev_nat(&mut self, index: u32) -> Result<()>;

    /// Every entry of the services map, in no particular order.
    fn dump_services(&self) -> Result<Vec<(Service4Key, Service4Value)>>;
    /// Every entry of the backends map, in no particular order.
    fn dump_backends(&self) -> Result<Vec<(u32, Backend4)>>;
    /// Every entry of the reverse-NAT map, in no particular order.
    fn dump_rev_nat(&self) -> Result<Vec<(u32, RevNat4)>>;
}

impl<M: LbMaps + ?Sized> LbMaps for &mut M {
    fn upsert_backend(&mut self, id: u32, backend: &Backend4) -> Result<()> {
        (**self).upsert_backend(id, backend)
    }
    fn delete_backend(&mut self, id: u32) -> Result<()> {
        (**self).delete_backend(id)
    }
    fn upsert_service(&mut self, key: &Service4Key, value: &Service4Value) -> Result<()> {
        (**self).upsert_service(key, value)
    }
    fn delete_service(&mut self, key: &Service4Key) -> Result<()> {
        (**self).delete_service(key)
    }
    fn upsert_rev_nat(&mut self, index: u32, rev_nat: &RevNat4) -> Result<()> {
        (**self).upsert_rev_nat(index, rev_nat)
    }
    fn delete_rev_nat(&mut self, index: u32) -> Result<()> {
        (**self).delete_rev_nat(index)
    }
    fn dump_services(&self) -> Result<Vec<(Service4Key, Service4Value)>> {
        (**self).dump_services()
    }
    fn dump_backends(&self) -> Result<Vec<(u32, Backend4)>> {
        (**self).dump_backends()
    }
    fn dump_rev_nat(&self) -> Result<Vec<(u32, RevNat4)>> {
        (**self).dump_rev_nat()
    }
}

// ---------------------------------------------------------------------------------------
// Human-readable rendering (dumps, logs, error messages).

fn proto_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "TCP".to_owned(),
        PROTO_UDP => "UDP".to_owned(),
        other => format!("proto{other}"),
    }
}

fn ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr_from_map(addr))
}

/// `10.96.0.10:80/TCP slot 0` (scope shown only when set, which Skiff does not do yet).
pub fn display_service_key(key: &Service4Key) -> String {
    let mut s =
        format!("{}:{}/{} slot {}", ip(key.addr), port_from_map(key.dport), proto_name(key.proto), key.backend_slot);
    if key.scope != 0 {
        let _ = write!(s, " scope {}", key.scope);
    }
    s
}

/// `10.244.1.2:8080/TCP`.
pub fn display_backend(backend: &Backend4) -> String {
    format!("{}:{}/{}", ip(backend.addr), port_from_map(backend.port), proto_name(backend.proto))
}

/// One services-map entry: slot 0 with the frontend's count, flags and affinity, other
/// slots with their backend id.
fn display_service_entry(key: &Service4Key, value: &Service4Value) -> String {
    if key.backend_slot == 0 {
        format!(
            "service {} count={} rev_nat={} flags={} affinity={}s",
            display_service_key(key),
            value.count,
            value.rev_nat_index,
            service_flags(value.flags),
            value.affinity_timeout_s
        )
    } else {
        format!("service {} backend={} rev_nat={}", display_service_key(key), value.backend_id, value.rev_nat_index)
    }
}

fn service_flags(flags: u16) -> String {
    flag_names(flags.into(), &[(SERVICE_FLAG_AFFINITY.into(), "affinity")])
}

fn backend_flags(flags: u8) -> String {
    flag_names(flags.into(), &[(BACKEND_FLAG_TERMINATING.into(), "terminating")])
}

/// The names of the `known` bits set in `flags`, joined by `|`, then any other bits in
/// hex; "0" when none is set.
fn flag_names(flags: u32, known: &[(u32, &str)]) -> String {
    let mut names = Vec::new();
    let mut rest = flags;
    for (bit, name) in known {
        if flags & bit != 0 {
            names.push((*name).to_owned());
            rest &= !bit;
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    if names.is_empty() { "0".to_owned() } else { names.join("|") }
}

/// Prints all three maps as text, one entry per line, sorted by address, port, protocol
/// and slot (not by the raw network-byte-order key), so that the output is stable and
/// reads like a routing table:
///
/// ```text
/// service 10.96.0.10:80/TCP slot 0 count=2 rev_nat=1 flags=0 affinity=0s
/// service 10.96.0.10:80/TCP slot 1 backend=1 rev_nat=1
/// backend 1 10.244.1.2:8080/TCP flags=0
/// rev_nat 1 10.96.0.10:80
/// ```
pub fn render_dump<M: LbMaps + ?Sized>(maps: &M) -> Result<String> {
    let mut out = String::new();

    let mut services = maps.dump_services()?;
    services.sort_by_key(|(k, _)| (ip(k.addr), port_from_map(k.dport), k.proto, k.scope, k.backend_slot));
    for (key, value) in &services {
        let _ = writeln!(out, "{}", display_service_entry(key, value));
    }

    let mut backends = maps.dump_backends()?;
    backends.sort_by_key(|(id, _)| *id);
    for (id, backend) in &backends {
        let _ = writeln!(out, "backend {id} {} flags={}", display_backend(backend), backend_flags(backend.flags));
    }

    let mut rev_nat = maps.dump_rev_nat()?;
    rev_nat.sort_by_key(|(index, _)| *index);
    for (index, value) in &rev_nat {
        let _ = writeln!(out, "rev_nat {index} {}:{}", ip(value.addr), port_from_map(value.port));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// In-memory fake.

/// One write seen by [`FakeLbMaps`], rendered as text so tests can compare sequences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOp {
    pub map: MapKind,
    /// `true` for an upsert, `false` for a delete.
    pub upsert: bool,
    /// The key and (for upserts) the value, as `render_dump` prints them.
    pub text: String,
}

impl std::fmt::Display for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", if self.upsert { "upsert" } else { "delete" }, self.text)
    }
}

/// In-memory maps for tests: same semantics as the kernel's hash maps (an update of an
/// existing key always succeeds, a new key fails once `capacity` keys are present).
#[derive(Debug, Default, Clone)]
pub struct FakeLbMaps {
    pub services: BTreeMap<Service4Key, Service4Value>,
    pub backends: BTreeMap<u32, Backend4>,
    pub rev_nat: BTreeMap<u32, RevNat4>,
    services_capacity: Option<usize>,
    backends_capacity: Option<usize>,
    rev_nat_capacity: Option<usize>,
    log: Vec<WriteOp>,
}

impl FakeLbMaps {
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits how many keys a map holds; further inserts fail with [`Error::Full`].
    pub fn with_capacity(mut self, map: MapKind, capacity: usize) -> Self {
        self.set_capacity(map, Some(capacity));
        self
    }

    pub fn set_capacity(&mut self, map: MapKind, capacity: Option<usize>) {
        match map {
            MapKind::Services => self.services_capacity = capacity,
            MapKind::Backends => self.backends_capacity = capacity,
            MapKind::RevNat => self.rev_nat_capacity = capacity,
        }
    }

    /// The maps as [`render_dump`] prints them.
    pub fn dump(&self) -> String {
        render_dump(self).expect("the fake's dump cannot fail")
    }

    /// Every write since the last call, oldest first.
    pub fn take_log(&mut self) -> Vec<WriteOp> {
        std::mem::take(&mut self.log)
    }

    pub fn log(&self) -> &[WriteOp] {
        &self.log
    }

    fn check_room<K: Ord, V>(
        map: &BTreeMap<K, V>,
        capacity: Option<usize>,
        key: &K,
        kind: MapKind,
        key_text: impl FnOnce() -> String,
    ) -> Result<()> {
        match capacity {
            Some(cap) if !map.contains_key(key) && map.len() >= cap => Err(Error::Full { map: kind, key: key_text() }),
            _ => Ok(()),
        }
    }

    fn record(&mut self, map: MapKind, upsert: bool, text: String) {
        self.log.push(WriteOp { map, upsert, text });
    }
}

impl LbMaps for FakeLbMaps {
    fn upsert_backend(&mut self, id: u32, backend: &Backend4) -> Result<()> {
        Self::check_room(&self.backends, self.backends_capacity, &id, MapKind::Backends, || format!("backend {id}"))?;
        self.backends.insert(id, *backend);
        self.record(
            MapKind::Backends,
            true,
            format!("backend {id} {} flags={}", display_backend(backend), backend_flags(backend.flags)),
        );
        Ok(())
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        self.backends.remove(&id);
        self.record(MapKind::Backends, false, format!("backend {id}"));
        Ok(())
    }

    fn upsert_service(&mut self, key: &Service4Key, value: &Service4Value) -> Result<()> {
        Self::check_room(&self.services, self.services_capacity, key, MapKind::Services, || display_service_key(key))?;
        self.services.insert(*key, *value);
        self.record(MapKind::Services, true, display_service_entry(key, value));
        Ok(())
    }

    fn delete_service(&mut self, key: &Service4Key) -> Result<()> {
        self.services.remove(key);
        self.record(MapKind::Services, false, format!("service {}", display_service_key(key)));
        Ok(())
    }

    fn upsert_rev_nat(&mut self, index: u32, rev_nat: &RevNat4) -> Result<()> {
        Self::check_room(&self.rev_nat, self.rev_nat_capacity, &index, MapKind::RevNat, || format!("rev_nat {index}"))?;
        self.rev_nat.insert(index, *rev_nat);
        self.record(
            MapKind::RevNat,
            true,
            format!("rev_nat {index} {}:{}", ip(rev_nat.addr), port_from_map(rev_nat.port)),
        );
        Ok(())
    }

    fn delete_rev_nat(&mut self, index: u32) -> Result<()> {
        self.rev_nat.remove(&index);
        self.record(MapKind::RevNat, false, format!("rev_nat {index}"));
        Ok(())
    }

    fn dump_services(&self) -> Result<Vec<(Service4Key, Service4Value)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_backends(&self) -> Result<Vec<(u32, Backend4)>> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_rev_nat(&self) -> Result<Vec<(u32, RevNat4)>> {
        Ok(self.rev_nat.iter().map(|(k, v)| (*k, *v)).collect())
    }
}

// ---------------------------------------------------------------------------------------
// The real maps.

type AyaHashMap<K, V> = aya::maps::HashMap<aya::maps::MapData, K, V>;

/// The pinned maps of a loaded datapath.
#[derive(Debug)]
pub struct AyaLbMaps {
    services: AyaHashMap<Service4Key, Service4Value>,
    backends: AyaHashMap<u32, Backend4>,
    rev_nat: AyaHashMap<u32, RevNat4>,
}

impl AyaLbMaps {
    /// Opens the maps the datapath loader pinned in `bpffs_dir` (its per-node directory,
    /// e.g. `/sys/fs/bpf/skiff`). Needs CAP_BPF (or root).
    pub fn open(bpffs_dir: &Path) -> Result<Self> {
        Ok(Self {
            services: open_hash(bpffs_dir, MapKind::Services)?,
            backends: open_hash(bpffs_dir, MapKind::Backends)?,
            rev_nat: open_hash(bpffs_dir, MapKind::RevNat)?,
        })
    }
}

fn open_hash<K: aya::Pod, V: aya::Pod>(dir: &Path, kind: MapKind) -> Result<AyaHashMap<K, V>> {
    let path = dir.join(kind.pin_name());
    let open_err = |source: aya::maps::MapError| Error::Open { path: path.clone(), source: Box::new(source) };
    let data = aya::maps::MapData::from_pin(&path).map_err(open_err)?;
    // `from_map_data` checks the kernel's map type, and `try_from` the key and value
    // sizes, so a map pinned by an incompatible layout is refused here rather than
    // misread later.
    let map = aya::maps::Map::from_map_data(data).map_err(open_err)?;
    AyaHashMap::<K, V>::try_from(map).map_err(open_err)
}

/// Turns an aya error into ours, recognising "map full": a hash map answers an insert of
/// a new key beyond `max_entries` with E2BIG (ENOSPC on some map types and kernels).
fn classify(map: MapKind, op: &'static str, key: String, err: aya::maps::MapError) -> Error {
    match err {
        aya::maps::MapError::SyscallError(e) => match e.io_error.raw_os_error() {
            Some(libc::E2BIG) | Some(libc::ENOSPC) if op == "insert" => Error::Full { map, key },
            _ => Error::Syscall { map, op, key, source: e.io_error },
        },
        other => Error::Other { map, op, key, source: Box::new(other) },
    }
}

/// A deletion of a missing key is a success: the state we want is reached.
fn ignore_missing(
    result: std::result::Result<(), aya::maps::MapError>,
) -> std::result::Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(aya::maps::MapError::KeyNotFound | aya::maps::MapError::ElementNotFound) => Ok(()),
        other => other,
    }
}

fn collect<K: aya::Pod, V: aya::Pod>(map: &AyaHashMap<K, V>, kind: MapKind) -> Result<Vec<(K, V)>> {
    map.iter()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| Error::Dump { map: kind, source: Box::new(source) })
}

impl LbMaps for AyaLbMaps {
    fn upsert_backend(&mut self, id: u32, backend: &Backend4) -> Result<()> {
        self.backends
            .insert(id, backend, 0)
            .map_err(|e| classify(MapKind::Backends, "insert", format!("backend {id} {}", display_backend(backend)), e))
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.backends.remove(&id))
            .map_err(|e| classify(MapKind::Backends, "delete", format!("backend {id}"), e))
    }

    fn upsert_service(&mut self, key: &Service4Key, value: &Service4Value) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(|e| classify(MapKind::Services, "insert", display_service_key(key), e))
    }

    fn delete_service(&mut self, key: &Service4Key) -> Result<()> {
        ignore_missing(self.services.remove(key))
            .map_err(|e| classify(MapKind::Services, "delete", display_service_key(key), e))
    }

    fn upsert_rev_nat(&mut self, index: u32, rev_nat: &RevNat4) -> Result<()> {
        self.rev_nat
            .insert(index, rev_nat, 0)
            .map_err(|e| classify(MapKind::RevNat, "insert", format!("rev_nat {index}"), e))
    }

    fn delete_rev_nat(&mut self, index: u32) -> Result<()> {
        ignore_missing(self.rev_nat.remove(&index))
            .map_err(|e| classify(MapKind::RevNat, "delete", format!("rev_nat {index}"), e))
    }

    fn dump_services(&self) -> Result<Vec<(Service4Key, Service4Value)>> {
        collect(&self.services, MapKind::Services)
    }

    fn dump_backends(&self) -> Result<Vec<(u32, Backend4)>> {
        collect(&self.backends, MapKind::Backends)
    }

    fn dump_rev_nat(&self) -> Result<Vec<(u32, RevNat4)>> {
        collect(&self.rev_nat, MapKind::RevNat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_ebpf_common::{addr_to_map, port_to_map};

    #[test]
    fn fake_reports_full_only_for_new_keys() {
        let mut maps = FakeLbMaps::new().with_capacity(MapKind::Backends, 1);
        let b = Backend4 { addr: addr_to_map([10, 244, 1, 2]), port: port_to_map(8080), proto: PROTO_TCP, flags: 0 };
        maps.upsert_backend(1, &b).unwrap();
        // Updating the existing key must still work, like the kernel's hash map.
        maps.upsert_backend(1, &Backend4 { flags: BACKEND_FLAG_TERMINATING, ..b }).unwrap();
        let err = maps.upsert_backend(2, &b).unwrap_err();
        assert!(err.is_full(), "{err}");
        assert_eq!(maps.dump(), "backend 1 10.244.1.2:8080/TCP flags=terminating\n");
    }

    #[test]
    fn dump_sorts_by_address_not_by_raw_key() {
        let mut maps = FakeLbMaps::new();
        for (octet, port) in [(2u8, 80u16), (1, 443), (1, 80)] {
            let key = Service4Key::new(addr_to_map([10, 96, 0, octet]), port_to_map(port), PROTO_TCP, 0);
            maps.upsert_service(
                &key,
                &Service4Value { count: 0, rev_nat_index: u32::from(octet), ..Default::default() },
            )
            .unwrap();
        }
        let dump = maps.dump();
        let lines: Vec<_> = dump.lines().collect();
        assert_eq!(
            lines,
            [
                "service 10.96.0.1:80/TCP slot 0 count=0 rev_nat=1 flags=0 affinity=0s",
                "service 10.96.0.1:443/TCP slot 0 count=0 rev_nat=1 flags=0 affinity=0s",
                "service 10.96.0.2:80/TCP slot 0 count=0 rev_nat=2 flags=0 affinity=0s",
            ]
        );
    }

    #[test]
    fn classify_maps_e2big_to_full() {
        let err = aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(libc::E2BIG),
        });
        assert!(classify(MapKind::Services, "insert", "k".into(), err).is_full());
        let err = aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_delete_elem",
            io_error: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert!(ignore_missing(Err(err)).is_ok());
    }
}
