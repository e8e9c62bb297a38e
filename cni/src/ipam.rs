//! IPAM: hands out addresses of the node's podCIDR, one per (container id, interface).
//!
//! The state is one JSON file in the node's CNI data dir, read and rewritten under an
//! exclusive `flock` on a lock file beside it, so concurrent plugin processes never hand
//! out the same address. Writes go to a temporary file that is renamed over the state,
//! so a crash never leaves a half-written state. The allocation logic ([`State`]) is
//! pure and tested without the file system.
//!
//! Addresses are handed out round-robin from `.2` (like host-local's `lastReservedIP`)
//! so that a just-released address is not reused at once while conntrack entries or
//! Service endpoints for the old pod may still point at it.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use skiff_datapath::cidr::{Ipv4Net, pod_range};

const STATE_FILE: &str = "ipam.json";
const LOCK_FILE: &str = "ipam.lock";

/// One handed-out address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub container_id: String,
    pub ifname: String,
    pub host_veth: String,
    /// The pod's netns path as ADD saw it.
    pub netns: String,
    /// Set once ADD completed; a repeated ADD then returns the same result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<Completed>,
}

/// What a completed ADD created, for repeating its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Completed {
    pub host_mac: String,
    pub pod_mac: String,
}

/// The IPAM state of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The last address handed out; the next search starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Ipv4Addr>,
    #[serde(default)]
    pub allocations: BTreeMap<Ipv4Addr, Allocation>,
}

/// The range has no free address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no free address in {cidr}: all {size} pod addresses are in use")]
pub struct Exhausted {
    pub cidr: Ipv4Net,
    pub size: u32,
}

impl State {
    /// The address held by a container's interface.
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<(Ipv4Addr, &Allocation)> {
        self.allocations
            .iter()
            .find(|(_, a)| a.container_id == container_id && a.ifname == ifname)
            .map(|(ip, a)| (*ip, a))
    }

    pub fn find_mut(&mut self, container_id: &str, ifname: &str) -> Option<&mut Allocation> {
        self.allocations.values_mut().find(|a| a.container_id == container_id && a.ifname == ifname)
    }

    /// Reserves the next free address of `cidr` for `allocation`.
    pub fn allocate(&mut self, cidr: Ipv4Net, allocation: Allocation) -> Result<Ipv4Addr, Exhausted> {
        let Some((first, last)) = pod_range(cidr) else {
            return Err(Exhausted { cidr, size: 0 });
        };
        let (first, last) = (u32::from(first), u32::from(last));
        let size = last - first + 1;
        let start = match self.last.map(u32::from) {
            Some(prev) if (first..last).contains(&prev) => prev + 1,
            _ => first,
        };
        for i in 0..size {
            let candidate = Ipv4Addr::from(first + (start - first + i) % size);
            if let std::collections::btree_map::Entry::Vacant(slot) = self.allocations.entry(candidate) {
                slot.insert(allocation);
                self.last = Some(candidate);
                return Ok(candidate);
            }
        }
        Err(Exhausted { cidr, size })
    }

    /// Frees the address of a container's interface; `None` if it held none.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> Option<(Ipv4Addr, Allocation)> {
        let (ip, _) = self.find(container_id, ifname)?;
        self.allocations.remove(&ip).map(|a| (ip, a))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("IPAM state in {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error(
        "IPAM state {path} is corrupt ({source}); move it aside only if no pod on this node uses an address from it"
    )]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The on-disk store of one node.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Runs `f` on the state under the exclusive lock, and saves the state if `f`
    /// changed it. Other plugin processes wait on the lock meanwhile, so `f` must be
    /// short (no netlink work).
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T> {
        let io_err = |source| Error::Io { dir: self.dir.clone(), source };
        fs::create_dir_all(&self.dir).map_err(io_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK_FILE))
            .map_err(io_err)?;
        lock.lock().map_err(io_err)?;
        let path = self.state_path();
        let before = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes)
                .map_err(|source| Error::Corrupt { path: path.clone(), source })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err(e)),
        };
        let mut state = before.clone();
        let out = f(&mut state);
        if state != before {
            self.save(&state).map_err(io_err)?;
        }
        // Closing the file releases the lock; unlock first to make the order explicit.
        let _ = lock.unlock();
        Ok(out)
    }

    /// Reads the state under the lock without changing it.
    pub fn read(&self) -> Result<State> {
        self.update(|s| s.clone())
    }

    fn save(&self, state: &State) -> io::Result<()> {
        // Only the lock holder writes, so one temporary name is enough.
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(state).map_err(io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&tmp, self.state_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(cid: &str) -> Allocation {
        Allocation {
            container_id: cid.into(),
            ifname: "eth0".into(),
            host_veth: format!("sk{cid}"),
            netns: "/x".into(),
            done: None,
        }
    }

    #[test]
    fn allocates_from_dot_two_round_robin_and_exhausts() {
        let cidr: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        let mut s = State::default();
        let ips: Vec<_> = (0..5).map(|i| s.allocate(cidr, alloc(&i.to_string())).unwrap()).collect();
        assert_eq!(ips.first(), Some(&Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(ips.last(), Some(&Ipv4Addr::new(10, 0, 0, 6)));
        assert_eq!(s.allocate(cidr, alloc("x")), Err(Exhausted { cidr, size: 5 }));
        assert_eq!(s.release("2", "eth0").map(|r| r.0), Some(Ipv4Addr::new(10, 0, 0, 4)));
        assert_eq!(s.release("2", "eth0"), None);
        assert_eq!(s.allocate(cidr, alloc("y")), Ok(Ipv4Addr::new(10, 0, 0, 4)));
        assert_eq!(s.find("y", "eth0").map(|f| f.0), Some(Ipv4Addr::new(10, 0, 0, 4)));
    }

    #[test]
    fn does_not_reuse_a_released_address_at_once() {
        let cidr: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let mut s = State::default();
        let a = s.allocate(cidr, alloc("a")).unwrap();
        s.release("a", "eth0");
        let b = s.allocate(cidr, alloc("b")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn tiny_range_has_one_address() {
        let cidr: Ipv4Net = "10.0.0.4/30".parse().unwrap();
        let mut s = State::default();
        assert_eq!(s.allocate(cidr, alloc("a")), Ok(Ipv4Addr::new(10, 0, 0, 6)));
        assert!(s.allocate(cidr, alloc("b")).is_err());
    }

    #[test]
    fn store_survives_concurrent_updates() {
        let dir = std::env::temp_dir().join(format!("skiff-cni-ipam-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let cidr: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    Store::new(&dir).update(|s| s.allocate(cidr, alloc(&i.to_string()))).unwrap().unwrap()
                })
            })
            .collect();
        let mut ips: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 16);
        assert_eq!(Store::new(&dir).read().unwrap().allocations.len(), 16);
        fs::remove_dir_all(&dir).unwrap();
    }
}
