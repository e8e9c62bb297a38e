//! Which LoadBalancer addresses this node announces: the datapath answers ARP for them
//! on the underlay interface (`ebpf/programs/src/arp.rs`), in the manner of MetalLB's
//! layer-2 mode, so that the network sends their traffic here, where it is translated
//! like a node port's.
//!
//! One node announces each Service's addresses, chosen by every node alike from what
//! it sees, without talking to the others: among the nodes that hold a ready endpoint
//! of the Service, the one with the highest rendezvous hash of (Service, node). So the
//! address lands where a backend runs (which `externalTrafficPolicy: Local` needs), and
//! it moves only when that node loses its endpoints. For a moment after a change two
//! nodes may both answer, or none; ARP caches then hold the older answer until they
//! expire.
//!
//! [`Announcements`] follows the Services and EndpointSlices the proxy is fed; the
//! [`AnnouncedMap`] is the pinned map the datapath reads, rewritten to the wanted set
//! by difference (so a restarted agent keeps what it still wants).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{HashMap as AyaHashMap, MapData};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_ebpf_common::{addr_from_map, addr_to_map, pin};

use super::model::{ObjectRef, slice_service};
use super::source::SourceEvent;

/// What the node sees of LoadBalancer Services and where their endpoints are.
#[derive(Debug, Default)]
pub struct Announcements {
    /// LoadBalancer Services with ingress addresses: their IPv4 addresses.
    services: BTreeMap<ObjectRef, Vec<Ipv4Addr>>,
    /// Every EndpointSlice: its Service and the nodes of its ready endpoints.
    slices: BTreeMap<ObjectRef, (ObjectRef, BTreeSet<String>)>,
}

impl Announcements {
    /// Takes note of one change the proxy is fed.
    pub fn note(&mut self, event: &SourceEvent) {
        match event {
            SourceEvent::ServiceUpserted(svc) => {
                let Some(r) = ObjectRef::from_meta(&svc.metadata) else { return };
                match ingress_addresses(svc) {
                    addresses if addresses.is_empty() => self.services.remove(&r),
                    addresses => self.services.insert(r, addresses),
                };
            }
            SourceEvent::ServiceDeleted(r) => {
                self.services.remove(r);
            }
            SourceEvent::EndpointSliceUpserted(slice) => {
                let (Some(r), Some(svc)) = (ObjectRef::from_meta(&slice.metadata), slice_service(slice)) else {
                    return;
                };
                self.slices.insert(r, (svc, ready_nodes(slice)));
            }
            SourceEvent::EndpointSliceDeleted(r) => {
                self.slices.remove(r);
            }
        }
    }

    /// The addresses `node` announces.
    pub fn wanted(&self, node: &str) -> BTreeSet<Ipv4Addr> {
        let mut nodes_of: BTreeMap<&ObjectRef, BTreeSet<&str>> = BTreeMap::new();
        for (svc, nodes) in self.slices.values() {
            if self.services.contains_key(svc) {
                nodes_of.entry(svc).or_default().extend(nodes.iter().map(String::as_str));
            }
        }
        let mut out = BTreeSet::new();
        for (svc, addresses) in &self.services {
            let nodes = nodes_of.get(svc).into_iter().flatten().copied();
            if owner(svc, nodes) == Some(node) {
                out.extend(addresses.iter().copied());
            }
        }
        out
    }
}

/// The IPv4 ingress addresses of a LoadBalancer Service's status.
fn ingress_addresses(svc: &Service) -> Vec<Ipv4Addr> {
    if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
        return Vec::new();
    }
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_deref());
    ingress.unwrap_or_default().iter().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect()
}

/// The nodes of a slice's ready endpoints (nil `ready` counts as ready).
fn ready_nodes(slice: &EndpointSlice) -> BTreeSet<String> {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.node_name.clone())
        .collect()
}

/// The node that announces `service`: the highest rendezvous hash among `nodes`.
pub fn owner<'a>(service: &ObjectRef, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes.into_iter().max_by_key(|node| (score(service, node), *node))
}

/// FNV-1a over `namespace/name node`: the same on every node and every build, which a
/// choice made by each node alone needs (std's hasher promises neither).
fn score(service: &ObjectRef, node: &str) -> u64 {
    let text = format!("{}/{} {node}", service.namespace, service.name);
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The pinned map of announced addresses.
pub struct AnnouncedMap {
    map: AyaHashMap<MapData, u32, u32>,
}

#[derive(Debug, thiserror::Error)]
#[error("the announced addresses map {path}: {source}")]
pub struct MapError {
    path: std::path::PathBuf,
    #[source]
    source: Box<aya::maps::MapError>,
}

impl AnnouncedMap {
    pub fn open(pin_dir: &Path) -> Result<Self, MapError> {
        let path = pin_dir.join(pin::ANNOUNCED);
        let err = |source| MapError { path: path.clone(), source: Box::new(source) };
        let data = MapData::from_pin(&path).map_err(err)?;
        let map = AyaHashMap::try_from(aya::maps::Map::HashMap(data)).map_err(err)?;
        Ok(Self { map })
    }

    /// Makes the map hold exactly `wanted`; returns (added, removed).
    pub fn sync(&mut self, wanted: &BTreeSet<Ipv4Addr>) -> Result<(usize, usize), aya::maps::MapError> {
        let held: BTreeSet<Ipv4Addr> =
            self.map.keys().collect::<Result<Vec<u32>, _>>()?.into_iter().map(|k| addr_from_map(k).into()).collect();
        let (mut added, mut removed) = (0, 0);
        for addr in held.difference(wanted) {
            self.map.remove(&addr_to_map(addr.octets()))?;
            removed += 1;
        }
        for addr in wanted.difference(&held) {
            self.map.insert(addr_to_map(addr.octets()), 0, 0)?;
            added += 1;
        }
        Ok((added, removed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::testutil::*;
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};

    fn lb_service(name: &str, ip: &str) -> Service {
        let mut svc = service("default", name, "10.96.0.30", &[("http", 80, "TCP")]);
        svc.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress { ip: Some(ip.into()), ..Default::default() }]),
            }),
            ..Default::default()
        });
        svc
    }

    fn slice_on(svc: &str, nodes: &[(&str, Cond)]) -> EndpointSlice {
        let endpoints: Vec<(String, Cond)> =
            nodes.iter().enumerate().map(|(i, (_, c))| (format!("10.244.0.{}", i + 2), *c)).collect();
        let endpoints: Vec<(&str, Cond)> = endpoints.iter().map(|(a, c)| (a.as_str(), *c)).collect();
        let mut s = slice("default", &format!("{svc}-1"), svc, &[("http", 8080, "TCP")], &endpoints);
        for (e, (node, _)) in s.endpoints.iter_mut().zip(nodes) {
            e.node_name = Some(node.to_string());
        }
        s
    }

    #[test]
    fn one_node_with_a_ready_endpoint_announces_each_service() {
        let mut a = Announcements::default();
        a.note(&SourceEvent::ServiceUpserted(Box::new(lb_service("web", "192.168.77.151"))));
        let ip: Ipv4Addr = "192.168.77.151".parse().unwrap();
        assert!(a.wanted("n1").is_empty() && a.wanted("n2").is_empty(), "no endpoints, no announcement");

        a.note(&SourceEvent::EndpointSliceUpserted(Box::new(slice_on("web", &[("n2", Cond::Ready)]))));
        assert_eq!(a.wanted("n2"), BTreeSet::from([ip]), "the only node with an endpoint");
        assert!(a.wanted("n1").is_empty());

        let both = slice_on("web", &[("n1", Cond::Ready), ("n2", Cond::Ready), ("n3", Cond::NotReady)]);
        a.note(&SourceEvent::EndpointSliceUpserted(Box::new(both)));
        let owners: Vec<&str> = ["n1", "n2", "n3"].into_iter().filter(|n| a.wanted(n).contains(&ip)).collect();
        assert_eq!(owners.len(), 1, "exactly one owner: {owners:?}");
        assert_ne!(owners, ["n3"], "not a node whose endpoint is not ready");

        a.note(&SourceEvent::ServiceDeleted(ObjectRef::new("default", "web")));
        assert!(a.wanted(owners[0]).is_empty());
    }

    #[test]
    fn the_owner_is_stable_and_spread_over_nodes() {
        let nodes = ["n1", "n2", "n3", "n4"];
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for i in 0..200 {
            let svc = ObjectRef::new("default", format!("svc-{i}"));
            let chosen = owner(&svc, nodes).unwrap();
            assert_eq!(owner(&svc, nodes.iter().rev().copied()), Some(chosen), "order does not matter");
            // Removing a node that is not the owner does not move the Service.
            let other = nodes.iter().copied().find(|n| *n != chosen).unwrap();
            assert_eq!(owner(&svc, nodes.iter().copied().filter(|n| *n != other)), Some(chosen));
            *per_node.entry(chosen).or_default() += 1;
        }
        assert!(per_node.values().all(|n| *n > 20), "spread: {per_node:?}");
    }
}
