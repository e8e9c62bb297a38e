//! The proxy as a role of the agent: Service and EndpointSlice changes from a source go
//! into the reconciler as they come; a sync writes the Service maps (see `runner` for
//! when). This is the only place the agent calls the reconciler from. What a sync could
//! not program goes to the Service's Events when the agent talks to the API. Each sync
//! is timed into kube-proxy's two histograms (see `metrics` and `latency`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use tracing::{error, info, warn};

use super::announce::{AnnouncedMap, Announcements};
use super::events::ServiceEvents;
use super::healthcheck::{HealthChecks, HealthServer};
use super::latency::TriggerTimes;
use super::maps::AyaLbMaps;
use super::reconciler::LbReconciler;
use super::source::SourceEvent;
use crate::runner::{Role, SyncReason};

/// The proxy role: owns the reconciler, and so the Service maps.
pub struct ProxyRole {
    reconciler: LbReconciler<AyaLbMaps>,
    events: Option<ServiceEvents>,
    /// ClusterIPs this node answers itself (its DNS server's): their Services stay out
    /// of the maps, so packets to them reach the node's stack.
    local_vips: Vec<std::net::Ipv4Addr>,
    triggers: TriggerTimes,
    /// The LoadBalancer addresses this node announces, when it announces any.
    announcer: Option<Announcer>,
    /// The health-check node ports this node answers, when it has an address.
    health: Option<(HealthChecks, HealthServer)>,
}

/// This node's part in announcing LoadBalancer addresses (see `announce`).
struct Announcer {
    node: String,
    table: Announcements,
    map: AnnouncedMap,
    /// The underlay interface (index, MAC) that gratuitous ARPs for newly announced
    /// addresses go out of; `None` sends none.
    underlay: Option<(u32, [u8; 6])>,
    /// What the map was last made to hold; `None` before the first sync.
    written: Option<BTreeSet<Ipv4Addr>>,
}

impl ProxyRole {
    pub fn new(reconciler: LbReconciler<AyaLbMaps>) -> Self {
        crate::metrics::proxy_enabled();
        Self {
            reconciler,
            events: None,
            local_vips: Vec::new(),
            triggers: TriggerTimes::new(jiff::Timestamp::now()),
            announcer: None,
            health: None,
        }
    }

    /// Answers the health-check node ports of LoadBalancer Services with
    /// `externalTrafficPolicy: Local` on `addr` (see `healthcheck`).
    pub fn serve_health_checks(&mut self, node: &str, addr: std::net::Ipv4Addr) {
        self.health = Some((HealthChecks::new(node), HealthServer::new(addr)));
    }

    /// Announces (answers ARP for) the LoadBalancer addresses this node is chosen for,
    /// through the pinned map the datapath reads.
    /// Each address that becomes this node's gets a gratuitous ARP out of `underlay`
    /// (index, MAC), so that the network's caches follow at once.
    pub fn announce(&mut self, node: &str, map: AnnouncedMap, underlay: Option<(u32, [u8; 6])>) {
        self.announcer =
            Some(Announcer { node: node.to_owned(), table: Announcements::default(), map, underlay, written: None });
    }

    /// Brings the announced map to what the Services want now; whether to retry.
    fn sync_announcements(&mut self) -> bool {
        let Some(a) = &mut self.announcer else { return false };
        let wanted = a.table.wanted(&a.node);
        if a.written.as_ref() == Some(&wanted) {
            return false;
        }
        match a.map.sync(&wanted) {
            Ok((added, removed)) => {
                if added + removed > 0 {
                    info!(added, removed, announced = ?wanted, "LoadBalancer addresses announced");
                }
                let before = a.written.take().unwrap_or_default();
                if let Some((ifindex, mac)) = a.underlay {
                    for addr in wanted.difference(&before) {
                        match skiff_datapath::garp::announce(ifindex, mac, *addr) {
                            Ok(()) => info!(%addr, "gratuitous ARP sent"),
                            Err(e) => warn!(%addr, error = %e, "cannot send a gratuitous ARP"),
                        }
                    }
                }
                a.written = Some(wanted);
                false
            }
            Err(e) => {
                error!(error = %e, "cannot write the announced addresses; will retry");
                true
            }
        }
    }

    /// Leaves Services whose ClusterIP is one of `vips` out of the maps: this node
    /// serves them itself.
    pub fn serve_locally(&mut self, vips: impl IntoIterator<Item = std::net::Ipv4Addr>) {
        self.local_vips.extend(vips);
    }

    /// A Service this node serves itself becomes a deletion (so that one programmed
    /// before is removed).
    fn local_to_deletion(&self, event: SourceEvent) -> SourceEvent {
        match event {
            SourceEvent::ServiceUpserted(svc) if served_locally(&svc, &self.local_vips) => {
                match super::model::ObjectRef::from_meta(&svc.metadata) {
                    Some(reference) => SourceEvent::ServiceDeleted(reference),
                    None => SourceEvent::ServiceUpserted(svc),
                }
            }
            other => other,
        }
    }

    /// Reports the Services a sync cannot program as Warning Events on them.
    pub fn set_events(&mut self, events: ServiceEvents) {
        self.events = Some(events);
    }
}

impl Role for ProxyRole {
    /// One poll's worth of changes (the first is the source's whole snapshot).
    type Change = Vec<SourceEvent>;

    fn apply(&mut self, events: Vec<SourceEvent>) {
        for event in events {
            if let Some(a) = &mut self.announcer {
                a.table.note(&event);
            }
            if let Some((checks, _)) = &mut self.health {
                checks.note(&event);
            }
            let event = self.local_to_deletion(event);
            self.triggers.note(&event);
            self.reconciler.apply(event);
        }
    }

    fn sync(&mut self, reason: SyncReason) -> bool {
        let started = std::time::Instant::now();
        let summary = self.reconciler.sync();
        crate::metrics::proxy_synced(started.elapsed(), &self.triggers.take_ages(jiff::Timestamp::now()));
        if summary.changed() {
            info!(%summary, ?reason, "service maps synced");
        }
        // Taken even without a reporter, so they do not pile up.
        let problems = self.reconciler.take_problems();
        if let Some(events) = &mut self.events {
            events.report(problems);
        }
        let announce_failed = self.sync_announcements();
        let health_failed = self.health.as_mut().is_some_and(|(checks, server)| server.sync(checks.answers()));
        self.reconciler.has_pending() || announce_failed || health_failed
    }
}

fn served_locally(svc: &k8s_openapi::api::core::v1::Service, vips: &[std::net::Ipv4Addr]) -> bool {
    let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).and_then(|ip| ip.parse().ok());
    ip.is_some_and(|ip| vips.contains(&ip))
}
