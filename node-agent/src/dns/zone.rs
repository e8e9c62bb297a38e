//! The cluster's names, as the DNS server answers them: built from Services and
//! EndpointSlices (the same objects the Service proxy reads), changed one Service at a
//! time.
//!
//! What a Service `web` in namespace `shop` under the cluster domain `cluster.local`
//! gives (the records of the Kubernetes DNS specification):
//! - a ClusterIP Service: `web.shop.svc.cluster.local` A/AAAA → its ClusterIPs; SRV
//!   `_<port>._<proto>.web.shop.svc.cluster.local` for each named port; PTR of each
//!   ClusterIP;
//! - a headless Service (`clusterIP: None`): A/AAAA → the ready endpoints (every
//!   endpoint with `publishNotReadyAddresses`); each endpoint's own name (its
//!   `hostname` — a StatefulSet pod's — else its address with dashes) under the
//!   Service's name, with SRV and PTR pointing at those names;
//! - an ExternalName Service: a CNAME to its external name.
//!
//! Pod names `<a-b-c-d>.<ns>.pod.cluster.local` are computed when asked, not stored.
//! This module is pure: no sockets, no API; `answer` turns lookups into messages.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service by namespace and name.
pub type ServiceKey = (String, String);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name:?} is not a valid cluster domain: {source}")]
    Domain {
        name: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the zone holds for a name and type.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The records of that type (for a CNAME'd name asked another type: its CNAME).
    Records(Vec<Record>),
    /// The name exists, with no records of that type.
    NoData,
    /// No such name in the cluster domain.
    NxDomain,
    /// Not a name this zone is authoritative for.
    NotOurs,
}

/// One Service and its EndpointSlices, and the names its records were written under.
#[derive(Debug, Default)]
struct ServiceState {
    service: Option<Arc<Service>>,
    slices: BTreeMap<String, Arc<EndpointSlice>>,
    written: Vec<LowerName>,
}

/// The cluster domain's names. See the module docs.
#[derive(Debug)]
pub struct Zone {
    domain: Name,
    lower_domain: LowerName,
    svc_domain: LowerName,
    pod_domain: LowerName,
    ttl: u32,
    /// Records by owner name, each set kept per Service so that one Service's change
    /// never touches another's records (PTR names can be shared).
    names: HashMap<LowerName, BTreeMap<ServiceKey, Vec<RData>>>,
    /// How many Services with records each `<ns>.svc.<domain>` has (its own name
    /// answers NODATA rather than NXDOMAIN while it has one).
    namespaces: HashMap<LowerName, usize>,
    services: BTreeMap<ServiceKey, ServiceState>,
    soa: Record,
    /// Counts the changes, so that answers cached for an older zone are known stale.
    generation: u64,
}

impl Zone {
    /// An empty zone for `domain` (e.g. `cluster.local`) whose records live `ttl` seconds.
    pub fn new(domain: &str, ttl: u32) -> Result<Self> {
        let parse = |s: &str| {
            Name::from_ascii(s).map(|n| n.to_lowercase()).map_err(|source| Error::Domain { name: s.to_owned(), source })
        };
        let mut domain = parse(domain.trim_end_matches('.'))?;
        domain.set_fqdn(true);
        let child = |label: &str| {
            parse(label).and_then(|l| {
                l.append_domain(&domain).map_err(|source| Error::Domain { name: format!("{label}.{domain}"), source })
            })
        };
        let (svc, pod) = (child("svc")?, child("pod")?);
        let soa = SOA::new(child("ns.dns")?, child("hostmaster")?, 1, 7200, 1800, 86400, ttl);
        Ok(Self {
            lower_domain: LowerName::new(&domain),
            svc_domain: LowerName::new(&svc),
            pod_domain: LowerName::new(&pod),
            soa: Record::from_rdata(domain.clone(), ttl, RData::SOA(soa)),
            domain,
            ttl,
            names: HashMap::new(),
            namespaces: HashMap::new(),
            services: BTreeMap::new(),
            generation: 0,
        })
    }

    /// The zone's SOA record, for the authority section of negative answers.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// A Service was created or changed.
    pub fn apply_service(&mut self, service: Arc<Service>) {
        let Some(key) = service_key(&service) else { return };
        self.services.entry(key.clone()).or_default().service = Some(service);
        self.rebuild(&key);
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, service: &Service) {
        let Some(key) = service_key(service) else { return };
        if let Some(state) = self.services.get_mut(&key) {
            state.service = None;
            self.rebuild(&key);
        }
    }

    /// An EndpointSlice was created or changed.
    pub fn apply_slice(&mut self, slice: Arc<EndpointSlice>) {
        let (Some(key), Some(name)) = (slice_service(&slice), slice.metadata.name.clone()) else { return };
        self.services.entry(key.clone()).or_default().slices.insert(name, slice);
        self.rebuild(&key);
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        let (Some(key), Some(name)) = (slice_service(slice), slice.metadata.name.as_deref()) else { return };
        if let Some(state) = self.services.get_mut(&key) {
            state.slices.remove(name);
            self.rebuild(&key);
        }
    }

    /// Rewrites the records of one Service from its current objects: its old records
    /// out, its new ones in; no other Service's records are touched.
    fn rebuild(&mut self, key: &ServiceKey) {
        let Some(state) = self.services.get_mut(key) else { return };
        self.generation += 1;
        let old = std::mem::take(&mut state.written);
        let records = match &state.service {
            Some(service) => service_records(&self.domain, service, state.slices.values().map(|s| s.as_ref())),
            None => Vec::new(),
        };
        let gone = state.service.is_none() && state.slices.is_empty();
        for name in &old {
            if let Some(sets) = self.names.get_mut(name) {
                sets.remove(key);
                if sets.is_empty() {
                    self.names.remove(name);
                }
            }
        }
        let mut written = Vec::with_capacity(records.len());
        for (name, rdata) in records {
            let name = LowerName::new(&name);
            let set = self.names.entry(name.clone()).or_default().entry(key.clone()).or_default();
            if !set.contains(&rdata) {
                set.push(rdata);
            }
            if !written.contains(&name) {
                written.push(name);
            }
        }
        let ns_name = namespace_name(&self.svc_domain, &key.0);
        match (old.is_empty(), written.is_empty()) {
            (true, false) => *self.namespaces.entry(ns_name).or_default() += 1,
            (false, true) => {
                if let Some(count) = self.namespaces.get_mut(&ns_name) {
                    *count -= 1;
                    if *count == 0 {
                        self.namespaces.remove(&ns_name);
                    }
                }
            }
            _ => {}
        }
        if gone {
            self.services.remove(key);
        } else if let Some(state) = self.services.get_mut(key) {
            state.written = written;
        }
    }

    /// What the zone says of `name` for `qtype`.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup {
        if let Some(sets) = self.names.get(name) {
            let all = sets.values().flatten();
            let owner = Name::from(name);
            let matching: Vec<Record> = all
                .clone()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .map(|r| Record::from_rdata(owner.clone(), self.ttl, r.clone()))
                .collect();
            if !matching.is_empty() {
                return Lookup::Records(matching);
            }
            if let Some(cname) = all.clone().find(|r| r.record_type() == RecordType::CNAME) {
                return Lookup::Records(vec![Record::from_rdata(owner, self.ttl, cname.clone())]);
            }
            return Lookup::NoData;
        }
        if !self.lower_domain.zone_of(name) {
            return if is_reverse(name) { Lookup::NxDomain } else { Lookup::NotOurs };
        }
        if self.pod_domain.zone_of(name) {
            return self.pod_lookup(name, qtype);
        }
        let structural = *name == self.lower_domain
            || *name == self.svc_domain
            || *name == self.pod_domain
            || self.namespaces.contains_key(name);
        if structural {
            if qtype == RecordType::SOA && *name == self.lower_domain {
                return Lookup::Records(vec![self.soa.clone()]);
            }
            return Lookup::NoData;
        }
        Lookup::NxDomain
    }

    /// `<a-b-c-d>.<ns>.pod.<domain>` → a.b.c.d (any namespace, as upstream's default).
    fn pod_lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup {
        let name = Name::from(name);
        let labels = name.num_labels() as usize;
        let pod_labels = self.pod_domain.num_labels() as usize;
        if labels == pod_labels + 1 {
            return Lookup::NoData; // `<ns>.pod.<domain>`
        }
        if labels != pod_labels + 2 {
            return Lookup::NxDomain;
        }
        let first = name.iter().next().map(|l| String::from_utf8_lossy(l).into_owned()).unwrap_or_default();
        let Ok(ip) = first.replace('-', ".").parse::<Ipv4Addr>() else { return Lookup::NxDomain };
        match qtype {
            RecordType::A | RecordType::ANY => {
                Lookup::Records(vec![Record::from_rdata(name, self.ttl, RData::A(A(ip)))])
            }
            _ => Lookup::NoData,
        }
    }

    /// Changes so far: an answer computed at another generation may be stale.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many names the zone holds (for logs and metrics).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn namespace_name(svc_domain: &LowerName, namespace: &str) -> LowerName {
    let svc = Name::from(svc_domain);
    Name::from_ascii(namespace)
        .and_then(|n| n.append_domain(&svc))
        .map(|n| LowerName::new(&n))
        .unwrap_or_else(|_| svc_domain.clone())
}

fn is_reverse(name: &LowerName) -> bool {
    let text = name.to_string();
    text.ends_with(".in-addr.arpa.") || text.ends_with(".ip6.arpa.")
}

fn service_key(service: &Service) -> Option<ServiceKey> {
    Some((service.metadata.namespace.clone()?, service.metadata.name.clone()?))
}

fn slice_service(slice: &EndpointSlice) -> Option<ServiceKey> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((slice.metadata.namespace.clone()?, service.clone()))
}

/// `label.parent`, or `None` when `label` is no valid DNS label.
fn child(label: &str, parent: &Name) -> Option<Name> {
    Name::from_ascii(label).ok()?.append_domain(parent).ok()
}

fn address_record(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(ip) => RData::A(A(ip)),
        IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
    }
}

/// The records of one Service (see the module docs), as (owner, data) pairs.
pub fn service_records<'a>(
    domain: &Name,
    service: &Service,
    slices: impl Iterator<Item = &'a EndpointSlice>,
) -> Vec<(Name, RData)> {
    let mut out = Vec::new();
    let (Some(ns), Some(name)) = (service.metadata.namespace.as_deref(), service.metadata.name.as_deref()) else {
        return out;
    };
    let Some(svc_name) = child("svc", domain).and_then(|d| child(ns, &d)).and_then(|d| child(name, &d)) else {
        return out;
    };
    let Some(spec) = &service.spec else { return out };
    if spec.type_.as_deref() == Some("ExternalName") {
        if let Some(target) = spec.external_name.as_deref().and_then(|t| Name::from_ascii(t.trim_end_matches('.')).ok())
        {
            let mut target = target;
            target.set_fqdn(true);
            out.push((svc_name, RData::CNAME(CNAME(target))));
        }
        return out;
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if !headless {
        let ips = spec.cluster_ips.clone().unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect());
        let ips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        for ip in &ips {
            out.push((svc_name.clone(), address_record(*ip)));
            out.push((Name::from(*ip), RData::PTR(PTR(svc_name.clone()))));
        }
        if !ips.is_empty() {
            for port in spec.ports.iter().flatten() {
                let srv = SRV::new(0, 100, port.port as u16, svc_name.clone());
                push_srv(&mut out, &svc_name, port.name.as_deref(), port.protocol.as_deref(), srv);
            }
        }
        return out;
    }
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let endpoints: Vec<_> = slices
        .flat_map(|slice| slice.endpoints.iter().map(move |ep| (slice, ep)))
        .filter(|(_, ep)| publish_not_ready || ep.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .collect();
    let weight = (100 / endpoints.len().max(1)).max(1) as u16;
    for (slice, ep) in endpoints {
        for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
            let label = ep.hostname.clone().unwrap_or_else(|| ip.to_string().replace(['.', ':'], "-"));
            let Some(ep_name) = child(&label, &svc_name) else { continue };
            out.push((svc_name.clone(), address_record(ip)));
            out.push((ep_name.clone(), address_record(ip)));
            out.push((Name::from(ip), RData::PTR(PTR(ep_name.clone()))));
            for port in slice.ports.iter().flatten() {
                let Some(number) = port.port else { continue };
                let srv = SRV::new(0, weight, number as u16, ep_name.clone());
                push_srv(&mut out, &svc_name, port.name.as_deref(), port.protocol.as_deref(), srv);
            }
        }
    }
    out
}

/// `_<port>._<proto>.<service>` SRV, for named ports only (as the specification says).
fn push_srv(out: &mut Vec<(Name, RData)>, svc_name: &Name, port: Option<&str>, proto: Option<&str>, srv: SRV) {
    let Some(port) = port.filter(|p| !p.is_empty()) else { return };
    let proto = proto.unwrap_or("TCP").to_ascii_lowercase();
    let owner = child(&format!("_{proto}"), svc_name).and_then(|n| child(&format!("_{port}"), &n));
    if let Some(owner) = owner {
        out.push((owner, RData::SRV(srv)));
    }
}

#[cfg(test)]
mod tests;
