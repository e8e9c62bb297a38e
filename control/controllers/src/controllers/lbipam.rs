//! LoadBalancer IPAM: gives every Service of `type: LoadBalancer` that names no
//! `spec.loadBalancerClass` (those belong to another controller) an address of the pool
//! set by `--service-lb-pool`, written as `status.loadBalancer.ingress: [{ip, ipMode:
//! VIP}]`, so such Services stop being `<pending>` without a cloud provider. Without a
//! pool the controller does nothing, as upstream without a cloud provider.
//!
//! The lowest free address is taken unless `spec.loadBalancerIP` asks for one; that one
//! is given only when it is a usable address of the pool and free, else the Service
//! gets a Warning event and no address. The network and broadcast addresses of each
//! pool range are never handed out.
//!
//! The allocator (`Pool`) lives in memory and is rebuilt from the Services' own status
//! whenever this replica starts leading, before anything is allocated, oldest Service
//! first: when two Services claim one address the younger loses it (Warning event
//! `AddressConflict`) and is given another. One worker runs reconciles, so allocations
//! never race each other. An address is freed when its Service is deleted, stops being
//! a LoadBalancer (its `status.loadBalancer` is cleared then) or asks for another. When
//! the pool is exhausted a Service gets one Warning event `AllocationFailed` and waits
//! until an address is freed.
//!
//! It only writes the `status` subresource of Services, and handles IPv4 only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use serde_json::json;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{ObjectKey, Patch};

use super::Context;
use crate::events::EventType;

/// The longest prefix a pool range may have: a /31 or /32 has no address left once its
/// network and broadcast addresses are set aside.
pub const MAX_PREFIX: u8 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("pool range {cidr} is too small: give a prefix of /{MAX_PREFIX} or shorter")]
    TooSmall { cidr: Ipv4Net },
    #[error("pool ranges {a} and {b} overlap")]
    Overlap { a: Ipv4Net, b: Ipv4Net },
    #[error("{ip} is not a usable address of the pool {pool}")]
    OutOfPool { ip: Ipv4Addr, pool: Ranges },
    #[error("{ip} is already allocated to Service {owner}")]
    Taken { ip: Ipv4Addr, owner: ObjectKey },
    #[error("every address of the pool {pool} is in use")]
    Exhausted { pool: Ranges },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status.loadBalancer of Service {service} failed: {source}")]
    Patch {
        service: ObjectKey,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The pool's ranges, sorted, as the flag spells them (comma-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges(Vec<Ipv4Net>);

impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined: Vec<String> = self.0.iter().map(Ipv4Net::to_string).collect();
        f.write_str(&joined.join(","))
    }
}

/// The addresses of the pool and which Service holds each.
#[derive(Debug, Clone)]
pub struct Pool {
    ranges: Ranges,
    /// Address → Service.
    used: BTreeMap<Ipv4Addr, ObjectKey>,
    /// Service → address: the inverse of `used`, kept in step with it.
    held: BTreeMap<ObjectKey, Ipv4Addr>,
}

impl Pool {
    /// A pool of the given ranges (host bits ignored), none overlapping another.
    pub fn new(ranges: &[Ipv4Net]) -> Result<Self, PoolError> {
        let mut sorted: Vec<Ipv4Net> = ranges.iter().map(Ipv4Net::trunc).collect();
        if let Some(cidr) = sorted.iter().find(|r| r.prefix_len() > MAX_PREFIX) {
            return Err(PoolError::TooSmall { cidr: *cidr });
        }
        sorted.sort();
        // Sorted by network address, any overlap shows between neighbours.
        if let Some(w) = sorted.windows(2).find(|w| w[0].contains(&w[1].network())) {
            return Err(PoolError::Overlap { a: w[0], b: w[1] });
        }
        Ok(Self { ranges: Ranges(sorted), used: BTreeMap::new(), held: BTreeMap::new() })
    }

    pub fn ranges(&self) -> &Ranges {
        &self.ranges
    }

    /// Whether `ip` may be handed out: inside a range, neither its network nor its
    /// broadcast address.
    pub fn usable(&self, ip: Ipv4Addr) -> bool {
        self.ranges.0.iter().any(|r| r.contains(&ip) && ip != r.network() && ip != r.broadcast())
    }

    /// Every usable address, lowest first.
    fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges.0.iter().flat_map(|r| (u32::from(r.network()) + 1)..u32::from(r.broadcast())).map(Ipv4Addr::from)
    }

    pub fn held_by(&self, owner: &ObjectKey) -> Option<Ipv4Addr> {
        self.held.get(owner).copied()
    }

    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<&ObjectKey> {
        self.used.get(&ip)
    }

    /// Gives `ip` to `owner` (recovery, or a requested address), freeing whatever other
    /// address it held. Refused when `ip` is not usable or another Service holds it.
    pub fn occupy(&mut self, owner: &ObjectKey, ip: Ipv4Addr) -> Result<(), PoolError> {
        if !self.usable(ip) {
            return Err(PoolError::OutOfPool { ip, pool: self.ranges.clone() });
        }
        match self.used.get(&ip) {
            Some(other) if other != owner => Err(PoolError::Taken { ip, owner: other.clone() }),
            Some(_) => Ok(()),
            None => {
                self.release(owner);
                self.used.insert(ip, owner.clone());
                self.held.insert(owner.clone(), ip);
                Ok(())
            }
        }
    }

    /// `requested` when given (see `occupy`; on refusal `owner` keeps what it held),
    /// else the address `owner` already holds, else the lowest free one.
    pub fn allocate(&mut self, owner: &ObjectKey, requested: Option<Ipv4Addr>) -> Result<Ipv4Addr, PoolError> {
        if let Some(ip) = requested {
            self.occupy(owner, ip)?;
            return Ok(ip);
        }
        if let Some(ip) = self.held_by(owner) {
            return Ok(ip);
        }
        let ip = self
            .addresses()
            .find(|a| !self.used.contains_key(a))
            .ok_or_else(|| PoolError::Exhausted { pool: self.ranges.clone() })?;
        self.used.insert(ip, owner.clone());
        self.held.insert(owner.clone(), ip);
        Ok(ip)
    }

    /// Frees whatever `owner` holds; returns that address.
    pub fn release(&mut self, owner: &ObjectKey) -> Option<Ipv4Addr> {
        let ip = self.held.remove(owner)?;
        self.used.remove(&ip);
        Some(ip)
    }

    /// How many usable addresses nobody holds.
    pub fn free(&self) -> u64 {
        let total: u64 = self.ranges.0.iter().map(|r| (1u64 << (32 - r.prefix_len())) - 2).sum();
        total - self.used.len() as u64
    }
}

/// Whether this controller gives `svc` its address.
fn is_ours(svc: &Service) -> bool {
    let Some(spec) = svc.spec.as_ref() else { return false };
    spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.as_deref().is_none_or(str::is_empty)
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// `spec.loadBalancerIP`, when set.
fn requested_ip(svc: &Service) -> Option<&str> {
    svc.spec.as_ref()?.load_balancer_ip.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The IPs of `status.loadBalancer.ingress`, as written.
fn ingress_ips(svc: &Service) -> Vec<&str> {
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()).collect()
}

/// The first IPv4 address of `status.loadBalancer.ingress`.
fn current_ip(svc: &Service) -> Option<Ipv4Addr> {
    ingress_ips(svc).into_iter().find_map(|ip| ip.parse().ok())
}

/// What `status.loadBalancer` should become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    Unchanged,
    Set(Ipv4Addr),
    Clear,
}

/// A Warning event to record on the Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub reason: &'static str,
    pub message: String,
}

/// The outcome of looking at one Service, already applied to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub status: StatusChange,
    pub warning: Option<Warning>,
    /// An address went back to the pool: Services waiting for one should try again.
    pub released: bool,
    /// No address could be given, but one may be freed later.
    pub waiting: bool,
}

impl Decision {
    fn new(status: StatusChange, released: bool) -> Self {
        Self { status, warning: None, released, waiting: false }
    }
}

/// Decides what Service `key` (`None`: deleted) gets and updates `pool` to match.
pub fn decide(pool: &mut Pool, key: &ObjectKey, svc: Option<&Service>) -> Decision {
    let held_before = pool.held_by(key);
    let Some(svc) = svc else {
        return Decision::new(StatusChange::Unchanged, pool.release(key).is_some());
    };
    if !is_ours(svc) {
        let released = pool.release(key).is_some();
        // Another class's Service keeps the status its controller writes. A Service that
        // is no LoadBalancer any more loses the address of ours it shows, also one it
        // kept across a restart (which `held_before` does not know about).
        let stale =
            !is_load_balancer(svc) && ingress_ips(svc).iter().any(|ip| ip.parse().is_ok_and(|ip| pool.usable(ip)));
        return Decision::new(if stale { StatusChange::Clear } else { StatusChange::Unchanged }, released);
    }
    let moved = |pool: &Pool| held_before.is_some_and(|h| pool.held_by(key) != Some(h));
    let requested = match requested_ip(svc).map(|r| (r, r.parse::<Ipv4Addr>())) {
        None => None,
        Some((_, Ok(ip))) => Some(ip),
        Some((raw, Err(_))) => {
            let released = pool.release(key).is_some();
            let status = if ingress_ips(svc).is_empty() { StatusChange::Unchanged } else { StatusChange::Clear };
            let mut d = Decision::new(status, released);
            d.warning = Some(Warning {
                reason: "AllocationFailed",
                message: format!("spec.loadBalancerIP {raw:?} is not an IPv4 address; no address given"),
            });
            return d;
        }
    };
    let current = current_ip(svc);
    let mut conflict = None;
    // An address the Service already shows is kept (steady state, recovery), unless it
    // asks for another one.
    if let Some(ip) = current
        && requested.is_none_or(|r| r == ip)
    {
        match pool.occupy(key, ip) {
            Ok(()) => return Decision::new(StatusChange::Unchanged, moved(pool)),
            Err(PoolError::Taken { owner, .. }) => {
                conflict = Some(Warning {
                    reason: "AddressConflict",
                    message: format!(
                        "{ip} is also the address of Service {owner}, which had it first; it is taken away"
                    ),
                });
            }
            // The pool no longer holds it (the flag changed): a usable address replaces it.
            Err(e) => tracing::info!(service = %key, error = %e, "address in status is not the pool's; replacing it"),
        }
    }
    match pool.allocate(key, requested) {
        Ok(ip) => {
            let mut d = Decision::new(StatusChange::Set(ip), moved(pool));
            d.warning = conflict;
            d
        }
        Err(e) => {
            // A Service whose requested address is refused holds none.
            let released = pool.release(key).is_some();
            let status = if ingress_ips(svc).is_empty() { StatusChange::Unchanged } else { StatusChange::Clear };
            let waiting = matches!(e, PoolError::Exhausted { .. } | PoolError::Taken { .. });
            let message = match &conflict {
                Some(c) => format!("{}; no other address: {e}", c.message),
                None => format!("no address given: {e}"),
            };
            Decision { status, warning: Some(Warning { reason: "AllocationFailed", message }), released, waiting }
        }
    }
}

/// Records the addresses Services already show, oldest Service first, so that of two
/// Services claiming one address the younger is the one that loses it.
pub fn recover(pool: &mut Pool, services: &[Arc<Service>]) {
    let mut claims: Vec<_> = services
        .iter()
        .filter(|s| is_ours(s))
        .filter_map(|s| {
            let ip = current_ip(s)?;
            // A Service asking for another address gets that one (or none) in its reconcile.
            if requested_ip(s).is_some_and(|r| r.parse() != Ok(ip)) {
                return None;
            }
            Some((s.metadata.creation_timestamp.as_ref().map(|t| t.0), ObjectKey::of(s.as_ref()), ip))
        })
        .collect();
    claims.sort();
    for (_, key, ip) in claims {
        if let Err(e) = pool.occupy(&key, ip) {
            tracing::warn!(service = %key, %ip, error = %e, "Service's LoadBalancer address cannot be recorded");
        }
    }
}

struct State {
    pool: Mutex<Pool>,
    /// The last warning told to each Service, so a Service waiting for an address gets
    /// one event, not one per retry.
    warned: Mutex<BTreeMap<ObjectKey, String>>,
    /// Services that got no address but may once one is freed.
    waiting: Mutex<BTreeSet<ObjectKey>>,
    queue: WorkQueue<ObjectKey>,
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    if ctx.config.service_lb_pool.is_empty() {
        tracing::info!("no --service-lb-pool: LoadBalancer Services get no address");
        return;
    }
    let mut pool = match Pool::new(&ctx.config.service_lb_pool) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "LoadBalancer IPAM disabled: bad --service-lb-pool");
            return;
        }
    };
    // Recover before allocating anything: the caches are synced when controllers start.
    recover(&mut pool, &ctx.informers.services.list());
    tracing::info!(pool = %pool.ranges(), free = pool.free(), "LoadBalancer IPAM ready");
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let state = Arc::new(State {
        pool: Mutex::new(pool),
        warned: Mutex::new(BTreeMap::new()),
        waiting: Mutex::new(BTreeSet::new()),
        queue: queue.clone(),
    });
    let feeder = {
        let (ctx, queue) = (ctx.clone(), queue.clone());
        async move {
            let mut services = ctx.informers.services.subscribe();
            while let Some(c) = services.recv().await {
                let (Change::Applied(s) | Change::Deleted(s)) = c;
                queue.add(ObjectKey::of(s.as_ref()));
            }
        }
    };
    // One worker: allocation decisions are serialised.
    let workers = run_workers("lbipam", queue, 1, move |key: ObjectKey| {
        let (ctx, state) = (ctx.clone(), state.clone());
        async move { reconcile(&ctx, &state, &key).await }
    });
    tokio::join!(feeder, workers);
}

impl State {
    /// Something was freed: every waiting Service tries again.
    fn wake_waiting(&self) {
        for key in self.waiting.lock().unwrap().iter() {
            self.queue.add(key.clone());
        }
    }

    fn forget(&self, key: &ObjectKey) {
        self.warned.lock().unwrap().remove(key);
        self.waiting.lock().unwrap().remove(key);
    }
}

async fn reconcile(ctx: &Context, state: &State, key: &ObjectKey) -> Result<Action> {
    let svc = ctx.informers.services.get(key);
    let decision = decide(&mut state.pool.lock().unwrap(), key, svc.as_deref());
    if decision.released {
        tracing::info!(service = %key, "LoadBalancer address freed");
        state.wake_waiting();
    }
    let Some(svc) = svc else {
        state.forget(key);
        return Ok(Action::Done);
    };
    if let Some(w) = &decision.warning {
        let last = state.warned.lock().unwrap().insert(key.clone(), w.message.clone());
        if last.as_deref() != Some(w.message.as_str()) {
            tracing::warn!(service = %key, reason = w.reason, message = %w.message, "LoadBalancer address");
            ctx.events.record(svc.as_ref(), EventType::Warning, w.reason, &w.message).await;
        }
    }
    if decision.waiting {
        state.waiting.lock().unwrap().insert(key.clone());
    } else {
        state.waiting.lock().unwrap().remove(key);
    }
    if decision.warning.is_none() {
        state.warned.lock().unwrap().remove(key);
    }
    let patch = match decision.status {
        StatusChange::Unchanged => None,
        StatusChange::Set(ip) => {
            Some(json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}}))
        }
        StatusChange::Clear => Some(json!({"status": {"loadBalancer": {"ingress": null}}})),
    };
    if let Some(patch) = patch {
        match ctx.client.patch::<Service>(key.ns(), &key.name, Some("status"), &Patch::Merge(patch)).await {
            Ok(_) => match decision.status {
                StatusChange::Set(ip) => {
                    tracing::info!(service = %key, %ip, "allocated LoadBalancer address");
                    let msg = format!("Assigned IP [\"{ip}\"]");
                    ctx.events.record(svc.as_ref(), EventType::Normal, "IPAllocated", &msg).await;
                }
                _ => tracing::info!(service = %key, "cleared status.loadBalancer"),
            },
            Err(e) if e.is_not_found() => {
                if state.pool.lock().unwrap().release(key).is_some() {
                    state.wake_waiting();
                }
                state.forget(key);
                return Ok(Action::Done);
            }
            // Keep the address reserved for this Service: the retry writes the same one.
            Err(source) => return Err(Error::Patch { service: key.clone(), source }),
        }
    }
    if decision.waiting {
        // Releases requeue waiting Services; the periodic look is a safety net only.
        return Ok(Action::RequeueAfter(Duration::from_secs(60)));
    }
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ranges: &[&str]) -> Pool {
        let nets: Vec<Ipv4Net> = ranges.iter().map(|r| r.parse().unwrap()).collect();
        Pool::new(&nets).unwrap()
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new(Some("default"), name)
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A Service of `type_`, optionally asking for `requested`, optionally showing
    /// `shown` in its status, created at second `created`.
    fn svc(name: &str, type_: &str, requested: Option<&str>, shown: Option<&str>, created: i64) -> Service {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default",
                         "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z")},
            "spec": {"type": type_, "ports": [{"port": 80}]},
            "status": {"loadBalancer": {}},
        });
        if let Some(r) = requested {
            v["spec"]["loadBalancerIP"] = json!(r);
        }
        if let Some(s) = shown {
            v["status"]["loadBalancer"]["ingress"] = json!([{"ip": s, "ipMode": "VIP"}]);
        }
        serde_json::from_value(v).unwrap()
    }

    fn lb(name: &str) -> Service {
        svc(name, "LoadBalancer", None, None, 0)
    }

    #[test]
    fn lowest_free_skipping_network_and_broadcast() {
        let mut p = pool(&["192.168.10.0/30", "10.0.0.0/29"]);
        assert_eq!(p.free(), 2 + 6);
        // The ranges are sorted: 10.0.0.0/29 comes first, and its .0 is its network address.
        assert_eq!(p.allocate(&key("a"), None), Ok(ip("10.0.0.1")));
        assert_eq!(p.allocate(&key("b"), None), Ok(ip("10.0.0.2")));
        assert_eq!(p.allocate(&key("a"), None), Ok(ip("10.0.0.1")), "idempotent per Service");
        for n in 3..=6 {
            assert_eq!(p.allocate(&key(&format!("s{n}")), None), Ok(Ipv4Addr::new(10, 0, 0, n)));
        }
        // 10.0.0.7 is the broadcast address; 192.168.10.0 the next range's network address.
        assert_eq!(p.allocate(&key("c"), None), Ok(ip("192.168.10.1")));
        assert_eq!(p.allocate(&key("d"), None), Ok(ip("192.168.10.2")));
        for bad in ["10.0.0.0", "10.0.0.7", "192.168.10.0", "192.168.10.3", "10.0.0.8"] {
            assert!(!p.usable(ip(bad)), "{bad}");
        }
    }

    #[test]
    fn requested_address_honoured_or_refused() {
        let mut p = pool(&["10.0.0.0/28"]);
        assert_eq!(p.allocate(&key("a"), Some(ip("10.0.0.9"))), Ok(ip("10.0.0.9")));
        assert!(
            matches!(p.allocate(&key("b"), Some(ip("10.0.0.9"))), Err(PoolError::Taken { owner, .. }) if owner == key("a"))
        );
        assert!(matches!(p.allocate(&key("b"), Some(ip("10.0.1.1"))), Err(PoolError::OutOfPool { .. })));
        assert!(matches!(p.allocate(&key("b"), Some(ip("10.0.0.15"))), Err(PoolError::OutOfPool { .. })));
        // Asking for another address moves the Service there and frees the old one.
        assert_eq!(p.allocate(&key("a"), Some(ip("10.0.0.3"))), Ok(ip("10.0.0.3")));
        assert_eq!(p.owner_of(ip("10.0.0.9")), None);
        assert_eq!(p.allocate(&key("b"), None), Ok(ip("10.0.0.1")));
    }

    #[test]
    fn release_and_exhaustion() {
        let mut p = pool(&["10.0.0.0/30"]);
        assert_eq!(p.allocate(&key("a"), None), Ok(ip("10.0.0.1")));
        assert_eq!(p.allocate(&key("b"), None), Ok(ip("10.0.0.2")));
        assert!(matches!(p.allocate(&key("c"), None), Err(PoolError::Exhausted { .. })));
        assert_eq!(p.free(), 0);
        assert_eq!(p.release(&key("a")), Some(ip("10.0.0.1")));
        assert_eq!(p.release(&key("a")), None);
        assert_eq!(p.allocate(&key("c"), None), Ok(ip("10.0.0.1")));
    }

    #[test]
    fn bad_pools() {
        let nets = |r: &[&str]| r.iter().map(|r| r.parse().unwrap()).collect::<Vec<Ipv4Net>>();
        assert!(matches!(Pool::new(&nets(&["10.0.0.0/31"])), Err(PoolError::TooSmall { .. })));
        assert!(matches!(Pool::new(&nets(&["10.0.0.0/24", "10.0.0.128/25"])), Err(PoolError::Overlap { .. })));
        assert!(matches!(
            Pool::new(&nets(&["10.0.0.0/24", "9.0.0.0/8", "10.0.0.0/16"])),
            Err(PoolError::Overlap { .. })
        ));
        assert!(Pool::new(&nets(&["10.0.0.0/24", "10.0.1.0/24"])).is_ok());
        // Host bits are ignored, as a network is meant.
        assert_eq!(pool(&["10.1.2.3/30"]).allocate(&key("a"), None), Ok(ip("10.1.2.1")));
    }

    #[test]
    fn decide_allocates_keeps_and_clears() {
        let mut p = pool(&["10.0.0.0/29"]);
        let d = decide(&mut p, &key("a"), Some(&lb("a")));
        assert_eq!(d, Decision::new(StatusChange::Set(ip("10.0.0.1")), false));
        // Once the status shows it, nothing more to write.
        let shown = svc("a", "LoadBalancer", None, Some("10.0.0.1"), 0);
        assert_eq!(decide(&mut p, &key("a"), Some(&shown)).status, StatusChange::Unchanged);
        // A ClusterIP Service gets nothing.
        assert_eq!(
            decide(&mut p, &key("c"), Some(&svc("c", "ClusterIP", None, None, 0))).status,
            StatusChange::Unchanged
        );
        assert_eq!(p.held_by(&key("c")), None);
        // Another class's Service neither: its status is its controller's.
        let mut other = svc("o", "LoadBalancer", None, Some("10.0.0.5"), 0);
        other.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        assert_eq!(decide(&mut p, &key("o"), Some(&other)), Decision::new(StatusChange::Unchanged, false));
        // No longer a LoadBalancer: the address is freed and the status cleared.
        let changed = svc("a", "ClusterIP", None, Some("10.0.0.1"), 0);
        assert_eq!(decide(&mut p, &key("a"), Some(&changed)), Decision::new(StatusChange::Clear, true));
        assert_eq!(p.owner_of(ip("10.0.0.1")), None);
        // Deleted: freed.
        decide(&mut p, &key("b"), Some(&lb("b")));
        assert_eq!(decide(&mut p, &key("b"), None), Decision::new(StatusChange::Unchanged, true));
        assert_eq!(p.free(), 6);
    }

    #[test]
    fn decide_requested_address() {
        let mut p = pool(&["10.0.0.0/29"]);
        let asks = |name: &str, r: &str| svc(name, "LoadBalancer", Some(r), None, 0);
        assert_eq!(decide(&mut p, &key("a"), Some(&asks("a", "10.0.0.4"))).status, StatusChange::Set(ip("10.0.0.4")));
        let d = decide(&mut p, &key("b"), Some(&asks("b", "10.0.0.4")));
        assert_eq!(d.status, StatusChange::Unchanged);
        assert_eq!(d.warning.as_ref().map(|w| w.reason), Some("AllocationFailed"));
        assert!(d.waiting, "may get it once a frees it");
        let d = decide(&mut p, &key("b"), Some(&asks("b", "10.0.0.7")));
        assert!(d.warning.unwrap().message.contains("not a usable address"));
        assert!(!d.waiting);
        let d = decide(&mut p, &key("b"), Some(&asks("b", "nonsense")));
        assert!(d.warning.is_some());
        // A Service showing an address and then asking for a refused one loses it.
        let moved = svc("a", "LoadBalancer", Some("10.0.9.9"), Some("10.0.0.4"), 0);
        let d = decide(&mut p, &key("a"), Some(&moved));
        assert_eq!((d.status, d.released), (StatusChange::Clear, true));
        assert_eq!(decide(&mut p, &key("b"), Some(&asks("b", "10.0.0.4"))).status, StatusChange::Set(ip("10.0.0.4")));
    }

    #[test]
    fn recovery_keeps_addresses_and_the_younger_loses_a_conflict() {
        let mut p = pool(&["10.0.0.0/29"]);
        let services: Vec<Arc<Service>> = vec![
            Arc::new(svc("young", "LoadBalancer", None, Some("10.0.0.1"), 30)),
            Arc::new(svc("old", "LoadBalancer", None, Some("10.0.0.1"), 10)),
            Arc::new(svc("kept", "LoadBalancer", None, Some("10.0.0.3"), 20)),
            Arc::new(svc("gone-type", "ClusterIP", None, Some("10.0.0.2"), 5)),
        ];
        recover(&mut p, &services);
        assert_eq!(p.owner_of(ip("10.0.0.1")), Some(&key("old")));
        assert_eq!(p.owner_of(ip("10.0.0.3")), Some(&key("kept")));
        assert_eq!(p.owner_of(ip("10.0.0.2")), None);
        assert_eq!(decide(&mut p, &key("old"), Some(&services[1])).status, StatusChange::Unchanged);
        let d = decide(&mut p, &key("young"), Some(&services[0]));
        assert_eq!(d.status, StatusChange::Set(ip("10.0.0.2")));
        assert_eq!(d.warning.map(|w| w.reason), Some("AddressConflict"));
        // A ClusterIP Service still showing an address of the pool gets it cleared.
        assert_eq!(decide(&mut p, &key("gone-type"), Some(&services[3])).status, StatusChange::Clear);
        // A new Service is not given any recovered address.
        assert_eq!(decide(&mut p, &key("new"), Some(&lb("new"))).status, StatusChange::Set(ip("10.0.0.4")));
    }

    #[test]
    fn decide_exhaustion_waits() {
        let mut p = pool(&["10.0.0.0/30"]);
        decide(&mut p, &key("a"), Some(&lb("a")));
        decide(&mut p, &key("b"), Some(&lb("b")));
        let d = decide(&mut p, &key("c"), Some(&lb("c")));
        assert_eq!(d.status, StatusChange::Unchanged);
        assert!(d.waiting);
        let w = d.warning.unwrap();
        assert_eq!(w.reason, "AllocationFailed");
        assert!(w.message.contains("10.0.0.0/30"), "{}", w.message);
        assert!(decide(&mut p, &key("a"), None).released);
        assert_eq!(decide(&mut p, &key("c"), Some(&lb("c"))).status, StatusChange::Set(ip("10.0.0.1")));
    }
}
