//! Cluster DNS served by the node agent, on every node: no DNS pods, no extra hop.
//!
//! - [`zone`] (pure): the cluster domain's names, built from Services and
//!   EndpointSlices, one Service's records rewritten per change;
//! - [`answer`] (pure): one query in, one response out (negative answers with the SOA,
//!   EDNS0, truncation);
//! - [`server`]: UDP and TCP sockets answering from the shared zone.
//!
//! [`start`] puts the node's DNS addresses on the node's loopback interface (the
//! node-local address pods get in their resolv.conf, and the `kube-dns` Service's
//! ClusterIP, so that pods configured the upstream way work too; loopback rather than
//! a dummy device, which not every kernel has), binds them and runs
//! the updater and the servers on a thread of their own: a burst of queries never
//! delays the agent's other roles, and they never delay an answer. The zone is fed by
//! the caches of the Service proxy's reflectors, so DNS adds no watch of its own.
//!
//! The proxy leaves these ClusterIPs out of the Service maps (see
//! [`crate::proxy::role::ProxyRole::serve_locally`]): packets to them reach the node's
//! own stack and so this server.

pub mod answer;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod server;
pub mod zone;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_api::reflector::{Cache, Change};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, error, info};

use server::{Listeners, SharedZone};
use zone::Zone;

/// The interface that carries the node's DNS addresses.
pub const DNS_DEVICE: &str = "lo";
/// The default node-local DNS address: link-local, as NodeLocal DNSCache's.
pub const DEFAULT_NODE_LOCAL_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
/// How long answers may be cached (upstream's kubernetes plugin default).
const TTL: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting up the DNS interface {DNS_DEVICE}: {source}")]
    Interface {
        #[source]
        source: skiff_datapath::netlink::Error,
    },
    #[error(transparent)]
    Zone(#[from] zone::Error),
    #[error(transparent)]
    Server(#[from] server::Error),
    #[error("starting the DNS thread: {0}")]
    Thread(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the DNS server needs to know.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// The addresses to answer on, the node-local one first.
    pub addresses: Vec<Ipv4Addr>,
    pub port: u16,
    /// Where names outside the cluster domain are asked (none: they are refused).
    pub upstream: Option<SocketAddr>,
}

/// Starts the DNS thread, which puts the addresses on the node, binds them and serves
/// until the process ends. Returns once every socket is bound, so a bad address or a
/// taken port is the caller's error. Everything blocking happens on that thread, so
/// this may be awaited on the agent's runtime.
pub async fn start(settings: &DnsSettings, services: Cache<Service>, slices: Cache<EndpointSlice>) -> Result<()> {
    let (service_changes, slice_changes) = (services.subscribe(), slices.subscribe());
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let on_thread = settings.clone();
    std::thread::Builder::new()
        .name("skiff-dns".into())
        .spawn(move || {
            // Netlink runs a runtime of its own: before this thread's.
            let settings = on_thread;
            let runtime = ensure_addresses(&settings.addresses).and_then(|()| {
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error::Thread)
            });
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listeners = match setup(&settings).await {
                    Ok(bound) => bound,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                let _ = bound_tx.send(Ok(()));
                let zone = listeners.0;
                for listeners in listeners.1 {
                    tokio::spawn(listeners.serve(zone.clone(), settings.upstream));
                }
                follow(zone, service_changes, slice_changes).await;
            });
        })
        .map_err(Error::Thread)?;
    let outcome = bound_rx.await.unwrap_or_else(|_| Err(Error::Thread(std::io::Error::other("the DNS thread ended"))));
    if outcome.is_ok() {
        info!(addresses = ?settings.addresses, port = settings.port, domain = %settings.domain, "cluster DNS serving");
    }
    outcome
}

/// The zone and the bound sockets, on the DNS thread.
async fn setup(settings: &DnsSettings) -> Result<(SharedZone, Vec<Listeners>)> {
    let zone: SharedZone = Arc::new(RwLock::new(Zone::new(&settings.domain, TTL)?));
    let mut bound = Vec::new();
    for addr in &settings.addresses {
        bound.push(Listeners::bind(SocketAddr::new(IpAddr::V4(*addr), settings.port)).await?);
    }
    Ok((zone, bound))
}

/// Applies every change of the caches to the zone, for as long as they send.
async fn follow(
    zone: SharedZone,
    mut services: UnboundedReceiver<Change<Service>>,
    mut slices: UnboundedReceiver<Change<EndpointSlice>>,
) {
    loop {
        tokio::select! {
            Some(change) = services.recv() => {
                let mut zone = zone.write().unwrap_or_else(|e| e.into_inner());
                match change {
                    Change::Applied(svc) => zone.apply_service(svc),
                    Change::Deleted(svc) => zone.delete_service(&svc),
                }
                debug!(names = zone.len(), "DNS zone updated from a Service");
            }
            Some(change) = slices.recv() => {
                let mut zone = zone.write().unwrap_or_else(|e| e.into_inner());
                match change {
                    Change::Applied(slice) => zone.apply_slice(slice),
                    Change::Deleted(slice) => zone.delete_slice(&slice),
                }
                debug!(names = zone.len(), "DNS zone updated from an EndpointSlice");
            }
            else => {
                error!("the Service caches are gone; DNS answers stay as they are");
                return;
            }
        }
    }
}

/// Each address (/32) on the loopback interface.
fn ensure_addresses(addresses: &[Ipv4Addr]) -> Result<()> {
    let nl = skiff_datapath::netlink::Netlink::new().map_err(|source| Error::Interface { source })?;
    let index = nl.require_link(DNS_DEVICE).map_err(|source| Error::Interface { source })?.index;
    let present = nl.addresses(index).map_err(|source| Error::Interface { source })?;
    for addr in addresses {
        if !present.iter().any(|(ip, _)| ip == addr) {
            nl.add_address(DNS_DEVICE, index, *addr, 32).map_err(|source| Error::Interface { source })?;
        }
    }
    Ok(())
}
