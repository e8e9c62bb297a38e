//! Desired load-balancer state, computed from Kubernetes objects by pure functions.
//!
//! [`plan_service`] turns one `Service` and the `EndpointSlice`s labelled with its name
//! into the frontends the maps should hold: one per (cluster IP, port, protocol), one
//! per (external address, port, protocol) for its `externalIPs` and LoadBalancer
//! ingress addresses, and on a node that knows its address ([`LocalNode`]) one per
//! (node address, node port, protocol) for NodePort and LoadBalancer Services, each
//! with its backends sorted and deduplicated. Whatever cannot be programmed (SCTP, a port
//! out of range, a non-IPv4 cluster IP, a malformed endpoint address) comes back as a
//! [`Error`] naming the Service, and only the part it names is left out: the other ports
//! of the same Service are still planned.
//!
//! This module must not log, keep state, or touch the maps: the reconciler decides what
//! to do with a plan and logs its problems.
//!
//! Kubernetes semantics followed here (see the EndpointSlice API docs):
//! - `conditions.ready` nil means ready; only ready endpoints take new flows (as in
//!   kube-proxy, which also sends new flows to a ready endpoint of a Service with
//!   `publishNotReadyAddresses`, whatever its `terminating` says);
//! - an endpoint that is not ready but still serving (a terminating pod that still
//!   passes its readiness probe) keeps its established flows: it stays a backend, marked
//!   terminating, outside the slots; one neither ready nor serving is left out, so that
//!   its UDP flows choose another backend (as kube-proxy deletes the UDP conntrack
//!   entries of endpoints that are not serving; a TCP flow's conntrack entry carries its
//!   backend's address and keeps going regardless);
//! - only the first address of an endpoint is used (the addresses are fungible, and
//!   kube-proxy does the same);
//! - the target port comes from the slice's `ports`, matched by the Service port's name
//!   and protocol; the Service's `targetPort` is already resolved there;
//! - a node port or external address takes the same backends as the cluster IP,
//!   except with `externalTrafficPolicy: Local`: then only the endpoints on this node (the slice's
//!   `nodeName`), and none at all on a node that has none (the datapath refuses the
//!   connection, where kube-proxy drops it; either way an external load balancer's
//!   health check sends no traffic there);
//! - the cluster IP likewise takes only this node's endpoints with
//!   `internalTrafficPolicy: Local` (each node's maps serve that node's clients only).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_ebpf_common::{PROTO_TCP, PROTO_UDP};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The annotation that picks a Service's backend selection: `maglev` or `random`.
/// Unset: Maglev for node ports and external addresses (a flow reaching another node
/// after a failover keeps its backend), random for the cluster IP.
pub const LB_ALGORITHM_ANNOTATION: &str = "skiff.io/lb-algorithm";
/// The annotation that picks how node ports and external addresses (`externalIPs`,
/// LoadBalancer ingress) reach another node's backend: `snat` (the default,
/// kube-proxy's way: the node's address as source, replies back through the node) or
/// `dsr` (direct server return: the client's address kept, the backend's node answers
/// the client itself, from the address and port the client connected to). The cluster
/// IP never needs either: its clients are the node's own.
pub const FORWARDING_MODE_ANNOTATION: &str = "skiff.io/forwarding-mode";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (the API default).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// The API's upper bound for the affinity timeout.
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// Namespace and name of an object; prints as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    /// The object's namespace ("default" when unset) and name; `None` without a name.
    pub fn from_meta(meta: &ObjectMeta) -> Option<Self> {
        let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
        Some(Self::new(namespace_of(meta), name))
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or("default")
}

/// The Service an EndpointSlice belongs to, from its `kubernetes.io/service-name` label.
pub fn slice_service(slice: &EndpointSlice) -> Option<ObjectRef> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    if name.is_empty() {
        return None;
    }
    Some(ObjectRef::new(namespace_of(&slice.metadata), name.clone()))
}

/// The node the plan is for: NodePort frontends are its address, and
/// `externalTrafficPolicy: Local` keeps its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    pub name: String,
    pub addr: Ipv4Addr,
}

/// Transport protocols the datapath balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number the maps store.
    pub const fn ip_proto(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }

    pub const fn from_ip_proto(proto: u8) -> Option<Self> {
        match proto {
            PROTO_TCP => Some(Self::Tcp),
            PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }

    /// A Kubernetes protocol field; unset means TCP, as the API defaults it.
    fn parse(value: Option<&str>) -> Result<Self, ErrorKind> {
        match value.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            other => Err(ErrorKind::UnsupportedProtocol(other.to_owned())),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// What a client connects to: cluster IP, Service port, protocol. Ports in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl std::fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.vip, self.port, self.proto)
    }
}

/// Where traffic goes: endpoint address, target port, protocol. Ports in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl std::fmt::Display for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
    }
}

/// One frontend as it should be programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub key: FrontendKey,
    pub service: ObjectRef,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    /// `Some(timeout)` for `sessionAffinity: ClientIP`.
    pub affinity_timeout_s: Option<u32>,
    /// New flows pick their backend by Maglev consistent hashing (else at random).
    pub maglev: bool,
    /// Flows to another node's backend go by direct server return (node ports and
    /// external addresses only).
    pub dsr: bool,
    /// Ready backends: they take new flows. Sorted, no duplicates.
    pub backends: Vec<BackendKey>,
    /// Backends that keep their established flows but take no new ones (serving but not
    /// ready, as a terminating pod). Sorted, no duplicates, disjoint from `backends`.
    pub terminating: Vec<BackendKey>,
}

/// Everything [`plan_service`] found for one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePlan {
    /// Frontends to program, sorted by key.
    pub frontends: Vec<Frontend>,
    /// What was left out, and why. Each problem skipped only the part it names.
    pub problems: Vec<Error>,
}

/// A part of a Service that cannot be programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub service: ObjectRef,
    /// The Service port concerned (its name, or its number when unnamed); `None` when
    /// the problem concerns the whole Service or one endpoint in all ports.
    pub port: Option<String>,
    pub kind: ErrorKind,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Service {}", self.service)?;
        if let Some(port) = &self.port {
            write!(f, " port {port}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("protocol {0:?} is not supported (only TCP and UDP); port skipped")]
    UnsupportedProtocol(String),
    #[error("port {0} is out of range 1-65535; port skipped")]
    PortOutOfRange(i64),
    #[error("cluster IP {0:?} is not a valid IP address; Service skipped")]
    BadClusterIp(String),
    #[error("no IPv4 cluster IP (IPv6-only Services are not supported yet); Service skipped")]
    NoIpv4ClusterIp,
    #[error("{0} is listed twice; the later port skipped")]
    DuplicateFrontend(FrontendKey),
    #[error("EndpointSlice {slice}: address {address:?} is not an IPv4 address; endpoint skipped")]
    BadEndpointAddress { slice: String, address: String },
    #[error("EndpointSlice {slice}: port {port} is out of range 1-65535; slice skipped for this port")]
    BadEndpointPort { slice: String, port: i64 },
    #[error("EndpointSlice {slice}: port {name:?} has no port number; slice skipped for this port")]
    MissingEndpointPort { slice: String, name: String },
    #[error(
        "sessionAffinity timeout {0}s is out of range 1-{MAX_AFFINITY_TIMEOUT_S}; using {DEFAULT_AFFINITY_TIMEOUT_S}s"
    )]
    BadAffinityTimeout(i64),
    #[error("sessionAffinity {0:?} is not supported; using None")]
    UnsupportedAffinity(String),
    #[error("external address {0:?} is not an IPv4 address; address skipped")]
    BadExternalAddress(String),
    #[error("annotation {LB_ALGORITHM_ANNOTATION}: {0:?} is neither maglev nor random; using the default")]
    UnsupportedAlgorithm(String),
    #[error("annotation {FORWARDING_MODE_ANNOTATION}: {0:?} is neither snat nor dsr; using snat")]
    UnsupportedForwardingMode(String),
}

/// Plans one Service. `slices` may contain any EndpointSlices: only those in the
/// Service's namespace that carry its `kubernetes.io/service-name` label are used.
///
/// Headless Services (`clusterIP: None`), ExternalName Services and Services without a
/// cluster IP yet have nothing to program and give an empty plan. Node ports are
/// planned only with a `node` (the agent's own).
pub fn plan_service<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: Option<&LocalNode>,
) -> ServicePlan {
    let mut plan = ServicePlan::default();
    let Some(service) = ObjectRef::from_meta(&svc.metadata) else {
        return plan;
    };
    let Some(spec) = &svc.spec else {
        return plan;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return plan;
    }
    let problem = |port: Option<String>, kind| Error { service: service.clone(), port, kind };

    let vip = match cluster_ipv4(spec.cluster_ip.as_deref(), spec.cluster_ips.as_deref()) {
        Ok(Some(vip)) => vip,
        Ok(None) => return plan,
        Err(kind) => {
            plan.problems.push(problem(None, kind));
            return plan;
        }
    };

    let affinity_timeout_s = match spec.session_affinity.as_deref() {
        None | Some("None") | Some("") => None,
        Some("ClientIP") => {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match configured {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_S),
                Some(t) if (1..=i64::from(MAX_AFFINITY_TIMEOUT_S)).contains(&i64::from(t)) => Some(t.unsigned_abs()),
                Some(t) => {
                    plan.problems.push(problem(None, ErrorKind::BadAffinityTimeout(t.into())));
                    Some(DEFAULT_AFFINITY_TIMEOUT_S)
                }
            }
        }
        Some(other) => {
            plan.problems.push(problem(None, ErrorKind::UnsupportedAffinity(other.to_owned())));
            None
        }
    };

    // Sorting the slices by name makes the order of problems deterministic; the
    // backends are sorted anyway.
    let mut own_slices: Vec<&EndpointSlice> =
        slices.into_iter().filter(|s| slice_service(s).as_ref() == Some(&service)).collect();
    own_slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let external = external_addresses(svc, |kind| plan.problems.push(problem(None, kind)));
    let algorithm = svc.metadata.annotations.as_ref().and_then(|a| a.get(LB_ALGORITHM_ANNOTATION));
    // (for the cluster IP, for node ports and external addresses)
    let maglev = match algorithm.map(String::as_str) {
        None => (false, true),
        Some("maglev") => (true, true),
        Some("random") => (false, false),
        Some(other) => {
            plan.problems.push(problem(None, ErrorKind::UnsupportedAlgorithm(other.to_owned())));
            (false, true)
        }
    };
    let forwarding_mode = svc.metadata.annotations.as_ref().and_then(|a| a.get(FORWARDING_MODE_ANNOTATION));
    let dsr = match forwarding_mode.map(String::as_str) {
        None | Some("snat") => false,
        Some("dsr") => true,
        Some(other) => {
            plan.problems.push(problem(None, ErrorKind::UnsupportedForwardingMode(other.to_owned())));
            false
        }
    };
    let only_local = spec.external_traffic_policy.as_deref() == Some("Local");
    // The cluster IP frontend of a node serves that node's clients only (its pods and,
    // through the socket hooks, its host), so `internalTrafficPolicy: Local` is this.
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let mut seen = BTreeSet::new();
    for sp in spec.ports.as_deref().unwrap_or_default() {
        let port_name = sp.name.clone().unwrap_or_default();
        let port_label = || Some(if port_name.is_empty() { sp.port.to_string() } else { port_name.clone() });
        let proto = match Protocol::parse(sp.protocol.as_deref()) {
            Ok(p) => p,
            Err(kind) => {
                plan.problems.push(problem(port_label(), kind));
                continue;
            }
        };
        let Some(port) = valid_port(sp.port.into()) else {
            plan.problems.push(problem(port_label(), ErrorKind::PortOutOfRange(sp.port.into())));
            continue;
        };
        let key = FrontendKey { vip, port, proto };
        if !seen.insert(key) {
            plan.problems.push(problem(port_label(), ErrorKind::DuplicateFrontend(key)));
            continue;
        }

        // Backend → (takes new flows, is on this node). The same endpoint may appear in
        // two slices while the controller moves it; if any copy is ready, it is ready.
        let mut found: BTreeMap<BackendKey, (bool, bool)> = BTreeMap::new();
        for slice in &own_slices {
            // IPv6 and FQDN slices belong to other address families.
            if slice.address_type != "IPv4" {
                continue;
            }
            let slice_name = slice.metadata.name.clone().unwrap_or_default();
            let Some(target) = slice.ports.as_deref().unwrap_or_default().iter().find(|p| {
                p.name.as_deref().unwrap_or_default() == port_name
                    && Protocol::parse(p.protocol.as_deref()).ok() == Some(proto)
            }) else {
                continue;
            };
            let target_port = match target.port {
                None => {
                    plan.problems.push(problem(
                        port_label(),
                        ErrorKind::MissingEndpointPort { slice: slice_name, name: port_name.clone() },
                    ));
                    continue;
                }
                Some(p) => match valid_port(p.into()) {
                    Some(p) => p,
                    None => {
                        plan.problems.push(problem(
                            port_label(),
                            ErrorKind::BadEndpointPort { slice: slice_name, port: p.into() },
                        ));
                        continue;
                    }
                },
            };
            for endpoint in &slice.endpoints {
                let cond = endpoint.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(true);
                if !ready && !serving {
                    continue;
                }
                let Some(address) = endpoint.addresses.first() else {
                    continue;
                };
                let Ok(addr) = address.parse::<Ipv4Addr>() else {
                    // Reported without a port: the same endpoint is bad for every port,
                    // and one message is enough.
                    let e = problem(
                        None,
                        ErrorKind::BadEndpointAddress { slice: slice_name.clone(), address: address.clone() },
                    );
                    if !plan.problems.contains(&e) {
                        plan.problems.push(e);
                    }
                    continue;
                };
                let local = node.is_some_and(|n| endpoint.node_name.as_deref() == Some(n.name.as_str()));
                let seen = found.entry(BackendKey { addr, port: target_port, proto }).or_insert((false, false));
                seen.0 |= ready;
                seen.1 |= local;
            }
        }

        let frontend = |key, found: &BTreeMap<BackendKey, (bool, bool)>, only_local: bool, maglev: bool, dsr: bool| {
            let pick = |want_ready: bool| {
                found
                    .iter()
                    .filter(|(_, (ready, local))| *ready == want_ready && (*local || !only_local))
                    .map(|(b, _)| *b)
                    .collect()
            };
            Frontend {
                key,
                service: service.clone(),
                port_name: port_name.clone(),
                affinity_timeout_s,
                maglev,
                dsr,
                backends: pick(true),
                terminating: pick(false),
            }
        };
        plan.frontends.push(frontend(key, &found, internal_local, maglev.0, false));
        if let (Some(node), Some(node_port)) = (node, node_port_of(spec, sp)) {
            let key = FrontendKey { vip: node.addr, port: node_port, proto };
            plan.frontends.push(frontend(key, &found, only_local, maglev.1, dsr));
        }
        for addr in &external {
            let key = FrontendKey { vip: *addr, port, proto };
            if !seen.insert(key) {
                plan.problems.push(problem(port_label(), ErrorKind::DuplicateFrontend(key)));
                continue;
            }
            plan.frontends.push(frontend(key, &found, only_local, maglev.1, dsr));
        }
    }
    plan.frontends.sort_by_key(|f| f.key);
    plan
}

/// The Service's `externalIPs` and LoadBalancer ingress addresses, IPv4 only, without
/// duplicates; each one that is no IPv4 address goes to `problem`.
fn external_addresses(svc: &Service, mut problem: impl FnMut(ErrorKind)) -> Vec<Ipv4Addr> {
    let spec_ips = svc.spec.as_ref().and_then(|s| s.external_ips.as_deref()).unwrap_or_default();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i.ip.as_ref());
    let mut out = Vec::new();
    for ip in spec_ips.iter().chain(ingress) {
        match ip.parse::<Ipv4Addr>() {
            Ok(addr) if !out.contains(&addr) => out.push(addr),
            Ok(_) => {}
            Err(_) => problem(ErrorKind::BadExternalAddress(ip.clone())),
        }
    }
    out
}

/// The node port of a NodePort or LoadBalancer Service's port, once allocated.
/// (A LoadBalancer Service with `allocateLoadBalancerNodePorts: false` has none.)
fn node_port_of(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    port: &k8s_openapi::api::core::v1::ServicePort,
) -> Option<u16> {
    if !matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
        return None;
    }
    valid_port(port.node_port?.into())
}

fn valid_port(port: i64) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// The first IPv4 address among `clusterIPs` (or `clusterIP` when that list is empty).
/// `Ok(None)`: headless or not allocated yet.
fn cluster_ipv4(cluster_ip: Option<&str>, cluster_ips: Option<&[String]>) -> Result<Option<Ipv4Addr>, ErrorKind> {
    let candidates: Vec<&str> = match cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => cluster_ip.into_iter().collect(),
    };
    let candidates: Vec<&str> = candidates.into_iter().filter(|ip| !ip.is_empty()).collect();
    if candidates.is_empty() || candidates.contains(&"None") {
        return Ok(None);
    }
    for ip in &candidates {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => return Ok(Some(v4)),
            Ok(IpAddr::V6(_)) => {}
            Err(_) => return Err(ErrorKind::BadClusterIp((*ip).to_owned())),
        }
    }
    Err(ErrorKind::NoIpv4ClusterIp)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Builders for Services and EndpointSlices, shared by the proxy's tests.
    use super::*;
    use k8s_openapi::api::core::v1::{ClientIPConfig, ServicePort, ServiceSpec, SessionAffinityConfig};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    pub fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), ..Default::default() }
    }

    /// A ClusterIP Service; ports are (name, port, protocol).
    pub fn service(ns: &str, name: &str, vip: &str, ports: &[(&str, i32, &str)]) -> Service {
        Service {
            metadata: meta(ns, name),
            spec: Some(ServiceSpec {
                cluster_ip: Some(vip.into()),
                cluster_ips: Some(vec![vip.into()]),
                type_: Some("ClusterIP".into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            protocol: Some(proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn with_affinity(mut svc: Service, timeout: Option<i32>) -> Service {
        let spec = svc.spec.as_mut().unwrap();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config =
            timeout.map(|t| SessionAffinityConfig { client_ip: Some(ClientIPConfig { timeout_seconds: Some(t) }) });
        svc
    }

    /// Endpoint conditions in a compact form.
    #[derive(Clone, Copy)]
    pub enum Cond {
        Ready,
        /// serving, terminating, not ready: a pod shutting down gracefully.
        Terminating,
        /// not ready, not serving, not terminating: failing its readiness probe.
        NotReady,
        /// terminating and no longer serving: a pod shutting down that failed its
        /// readiness probe (or whose containers stopped).
        Stopping,
        /// no conditions at all (nil ready counts as ready).
        Unset,
    }

    /// An IPv4 EndpointSlice for Service `svc`; ports are (name, port, protocol).
    pub fn slice(
        ns: &str,
        name: &str,
        svc: &str,
        ports: &[(&str, i32, &str)],
        endpoints: &[(&str, Cond)],
    ) -> EndpointSlice {
        let mut metadata = meta(ns, name);
        metadata.labels = Some([(SERVICE_NAME_LABEL.to_owned(), svc.to_owned())].into());
        EndpointSlice {
            metadata,
            address_type: "IPv4".into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| EndpointPort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        port: Some(*p),
                        protocol: Some(proto.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            endpoints: endpoints
                .iter()
                .map(|(addr, cond)| Endpoint {
                    addresses: vec![addr.to_string()],
                    conditions: match cond {
                        Cond::Unset => None,
                        Cond::Ready => Some(EndpointConditions {
                            ready: Some(true),
                            serving: Some(true),
                            terminating: Some(false),
                        }),
                        Cond::Terminating => Some(EndpointConditions {
                            ready: Some(false),
                            serving: Some(true),
                            terminating: Some(true),
                        }),
                        Cond::NotReady => Some(EndpointConditions {
                            ready: Some(false),
                            serving: Some(false),
                            terminating: Some(false),
                        }),
                        Cond::Stopping => Some(EndpointConditions {
                            ready: Some(false),
                            serving: Some(false),
                            terminating: Some(true),
                        }),
                    },
                    ..Default::default()
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    fn b(addr: &str, port: u16) -> BackendKey {
        BackendKey { addr: addr.parse().unwrap(), port, proto: Protocol::Tcp }
    }

    #[test]
    fn ready_terminating_and_unready_endpoints() {
        let svc = service("shop", "web", "10.96.0.10", &[("http", 80, "TCP")]);
        let s1 = slice(
            "shop",
            "web-a",
            "web",
            &[("http", 8080, "TCP")],
            &[
                ("10.244.1.3", Cond::Ready),
                ("10.244.1.2", Cond::Unset),
                ("10.244.1.4", Cond::Terminating),
                ("10.244.1.5", Cond::NotReady),
                ("10.244.1.6", Cond::Stopping),
            ],
        );
        // The same endpoint in a second slice, ready there: ready wins; duplicates fold.
        let s2 = slice("shop", "web-b", "web", &[("http", 8080, "TCP")], &[("10.244.1.3", Cond::Ready)]);
        // Another Service's slice and another namespace's slice are ignored.
        let other = slice("shop", "api-a", "api", &[("http", 8080, "TCP")], &[("10.244.9.9", Cond::Ready)]);
        let other_ns = slice("dev", "web-a", "web", &[("http", 8080, "TCP")], &[("10.244.8.8", Cond::Ready)]);
        let plan = plan_service(&svc, [&s1, &s2, &other, &other_ns], None);
        assert_eq!(plan.problems, []);
        assert_eq!(plan.frontends.len(), 1);
        let f = &plan.frontends[0];
        assert_eq!(f.key.to_string(), "10.96.0.10:80/TCP");
        assert_eq!(f.backends, [b("10.244.1.2", 8080), b("10.244.1.3", 8080)]);
        // Terminating but still serving keeps its flows; no longer serving does not.
        assert_eq!(f.terminating, [b("10.244.1.4", 8080)]);
        assert_eq!(f.affinity_timeout_s, None);
    }

    #[test]
    fn bad_port_skips_only_that_port() {
        let svc = service(
            "shop",
            "mixed",
            "10.96.0.20",
            &[("sctp", 9000, "SCTP"), ("big", 70000, "TCP"), ("dns", 53, "UDP"), ("zero", 0, "TCP")],
        );
        let plan = plan_service(&svc, [], None);
        assert_eq!(plan.frontends.iter().map(|f| f.key.to_string()).collect::<Vec<_>>(), ["10.96.0.20:53/UDP"]);
        let msgs: Vec<String> = plan.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "Service shop/mixed port sctp: protocol \"SCTP\" is not supported (only TCP and UDP); port skipped",
                "Service shop/mixed port big: port 70000 is out of range 1-65535; port skipped",
                "Service shop/mixed port zero: port 0 is out of range 1-65535; port skipped",
            ]
        );
    }

    #[test]
    fn node_ports_on_this_nodes_address_with_local_endpoints_only_for_local_policy() {
        let mut svc = service("default", "web", "10.96.0.20", &[("http", 80, "TCP"), ("dns", 53, "UDP")]);
        let spec = svc.spec.as_mut().unwrap();
        spec.type_ = Some("NodePort".into());
        let ports = spec.ports.as_mut().unwrap();
        ports[0].node_port = Some(30080);
        // The UDP port has no node port allocated (yet): only its cluster IP frontend.
        let mut s = slice(
            "default",
            "web-1",
            "web",
            &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
            &[("10.244.1.2", Cond::Ready), ("10.244.2.2", Cond::Ready), ("10.244.1.3", Cond::Terminating)],
        );
        for (endpoint, node) in s.endpoints.iter_mut().zip(["n1", "n2", "n1"]) {
            endpoint.node_name = Some(node.into());
        }
        let n1 = LocalNode { name: "n1".into(), addr: Ipv4Addr::new(192, 168, 77, 11) };
        let be = |a: &str| BackendKey { addr: a.parse().unwrap(), port: 8080, proto: Protocol::Tcp };

        assert_eq!(plan_service(&svc, [&s], None).frontends.len(), 2, "no node, no node ports");
        let plan = plan_service(&svc, [&s], Some(&n1));
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        let keys: Vec<String> = plan.frontends.iter().map(|f| f.key.to_string()).collect();
        assert_eq!(keys, ["10.96.0.20:53/UDP", "10.96.0.20:80/TCP", "192.168.77.11:30080/TCP"]);
        let node_port = &plan.frontends[2];
        assert_eq!(node_port.backends, [be("10.244.1.2"), be("10.244.2.2")]);
        assert_eq!(node_port.terminating, [be("10.244.1.3")]);
        assert_eq!(node_port.port_name, "http");

        svc.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let plan = plan_service(&svc, [&s], Some(&n1));
        assert_eq!(plan.frontends[2].backends, [be("10.244.1.2")], "only this node's endpoints");
        assert_eq!(plan.frontends[1].backends, [be("10.244.1.2"), be("10.244.2.2")], "the cluster IP keeps all");
        let n3 = LocalNode { name: "n3".into(), addr: Ipv4Addr::new(192, 168, 77, 13) };
        let plan = plan_service(&svc, [&s], Some(&n3));
        assert!(plan.frontends[2].backends.is_empty() && plan.frontends[2].terminating.is_empty());

        svc.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert_eq!(plan_service(&svc, [&s], Some(&n1)).frontends.len(), 2, "a ClusterIP Service has no node port");

        svc.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
        let plan = plan_service(&svc, [&s], Some(&n1));
        let http = plan.frontends.iter().find(|f| f.key.port == 80).unwrap();
        assert_eq!(http.backends, [be("10.244.1.2")], "internalTrafficPolicy: Local keeps this node's endpoints");
    }

    #[test]
    fn forwarding_mode_dsr_applies_to_the_node_port_and_external_addresses() {
        let mut svc = service("default", "web", "10.96.0.20", &[("http", 80, "TCP")]);
        let spec = svc.spec.as_mut().unwrap();
        spec.type_ = Some("NodePort".into());
        spec.ports.as_mut().unwrap()[0].node_port = Some(30080);
        spec.external_ips = Some(vec!["192.168.77.150".into()]);
        let n1 = LocalNode { name: "n1".into(), addr: Ipv4Addr::new(192, 168, 77, 11) };
        let modes = |svc: &Service| -> Vec<(String, bool)> {
            plan_service(svc, [], Some(&n1)).frontends.iter().map(|f| (f.key.to_string(), f.dsr)).collect()
        };
        let snat = [
            ("10.96.0.20:80/TCP".to_owned(), false),
            ("192.168.77.11:30080/TCP".to_owned(), false),
            ("192.168.77.150:80/TCP".to_owned(), false),
        ];
        assert_eq!(modes(&svc), snat, "snat by default");

        let annotate = |svc: &mut Service, mode: &str| {
            svc.metadata.annotations = Some([(FORWARDING_MODE_ANNOTATION.to_owned(), mode.to_owned())].into());
        };
        annotate(&mut svc, "dsr");
        let mut dsr = snat.clone();
        dsr[1].1 = true;
        dsr[2].1 = true;
        assert_eq!(modes(&svc), dsr, "dsr on the node port and the external address; the cluster IP has none");
        assert!(plan_service(&svc, [], Some(&n1)).problems.is_empty());

        annotate(&mut svc, "snat");
        assert_eq!(modes(&svc), snat);
        annotate(&mut svc, "direct");
        assert_eq!(modes(&svc), snat, "an unknown mode falls back to snat");
        let problems = plan_service(&svc, [], Some(&n1)).problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            "Service default/web: annotation skiff.io/forwarding-mode: \"direct\" is neither snat nor dsr; using snat"
        );
    }

    #[test]
    fn external_ips_and_load_balancer_ingress_are_frontends_on_the_service_port() {
        use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
        let mut svc = service("default", "web", "10.96.0.20", &[("http", 80, "TCP")]);
        let spec = svc.spec.as_mut().unwrap();
        spec.external_ips = Some(vec!["192.168.77.150".into(), "fd00::1".into(), "192.168.77.150".into()]);
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress { ip: Some("192.168.77.151".into()), ..Default::default() }]),
            }),
            ..Default::default()
        });
        let mut s = slice("default", "web-1", "web", &[("http", 8080, "TCP")], &[("10.244.1.2", Cond::Ready)]);
        s.endpoints[0].node_name = Some("n2".into());
        let n1 = LocalNode { name: "n1".into(), addr: Ipv4Addr::new(192, 168, 77, 11) };
        let plan = plan_service(&svc, [&s], Some(&n1));
        let keys: Vec<String> = plan.frontends.iter().map(|f| f.key.to_string()).collect();
        assert_eq!(keys, ["10.96.0.20:80/TCP", "192.168.77.150:80/TCP", "192.168.77.151:80/TCP"]);
        assert!(plan.frontends.iter().all(|f| f.backends.len() == 1));
        assert_eq!(plan.problems.len(), 1, "{:?}", plan.problems);
        assert_eq!(plan.problems[0].kind, ErrorKind::BadExternalAddress("fd00::1".into()));

        svc.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let plan = plan_service(&svc, [&s], Some(&n1));
        assert!(plan.frontends[1].backends.is_empty(), "Local: the only endpoint is on another node");
        assert_eq!(plan.frontends[0].backends.len(), 1, "the cluster IP keeps it");
    }

    #[test]
    fn headless_external_name_and_ipv6() {
        let headless = service("a", "h", "None", &[("", 80, "TCP")]);
        assert_eq!(plan_service(&headless, [], None), ServicePlan::default());

        let mut ext = service("a", "e", "", &[("", 80, "TCP")]);
        ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        assert_eq!(plan_service(&ext, [], None), ServicePlan::default());

        let v6 = service("a", "v6", "fd00::10", &[("", 80, "TCP")]);
        let plan = plan_service(&v6, [], None);
        assert!(plan.frontends.is_empty());
        assert_eq!(plan.problems[0].kind, ErrorKind::NoIpv4ClusterIp);

        // Dual stack with IPv6 first: the IPv4 family is still programmed.
        let mut dual = service("a", "dual", "fd00::10", &[("", 80, "TCP")]);
        dual.spec.as_mut().unwrap().cluster_ips = Some(vec!["fd00::10".into(), "10.96.0.5".into()]);
        assert_eq!(plan_service(&dual, [], None).frontends[0].key.vip, Ipv4Addr::new(10, 96, 0, 5));

        let garbage = service("a", "g", "10.96.0.300", &[("", 80, "TCP")]);
        assert!(matches!(plan_service(&garbage, [], None).problems[0].kind, ErrorKind::BadClusterIp(_)));
    }

    #[test]
    fn target_port_by_name_and_protocol() {
        let svc = service("ns", "dns", "10.96.0.10", &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]);
        let s = slice(
            "ns",
            "dns-1",
            "dns",
            &[("dns", 5353, "UDP"), ("dns-tcp", 5354, "TCP")],
            &[("10.244.0.5", Cond::Ready), ("not-an-ip", Cond::Ready)],
        );
        let plan = plan_service(&svc, [&s], None);
        let got: Vec<String> = plan.frontends.iter().map(|f| format!("{} -> {}", f.key, f.backends[0])).collect();
        assert_eq!(got, ["10.96.0.10:53/TCP -> 10.244.0.5:5354/TCP", "10.96.0.10:53/UDP -> 10.244.0.5:5353/UDP"]);
        // Reported once, not once per port.
        assert_eq!(plan.problems.len(), 1);
        assert!(plan.problems[0].to_string().contains("not-an-ip"), "{}", plan.problems[0]);
    }

    #[test]
    fn session_affinity_timeouts() {
        let base = service("ns", "s", "10.96.0.1", &[("", 80, "TCP")]);
        let f = |svc: &Service| plan_service(svc, [], None).frontends[0].affinity_timeout_s;
        assert_eq!(f(&with_affinity(base.clone(), None)), Some(DEFAULT_AFFINITY_TIMEOUT_S));
        assert_eq!(f(&with_affinity(base.clone(), Some(60))), Some(60));
        let bad = with_affinity(base, Some(0));
        let plan = plan_service(&bad, [], None);
        assert_eq!(plan.frontends[0].affinity_timeout_s, Some(DEFAULT_AFFINITY_TIMEOUT_S));
        assert_eq!(plan.problems[0].kind, ErrorKind::BadAffinityTimeout(0));
    }

    #[test]
    fn duplicate_frontend_is_reported() {
        let svc = service("ns", "s", "10.96.0.1", &[("a", 80, "TCP"), ("b", 80, "TCP"), ("c", 80, "UDP")]);
        let plan = plan_service(&svc, [], None);
        assert_eq!(plan.frontends.len(), 2);
        assert!(matches!(plan.problems[0].kind, ErrorKind::DuplicateFrontend(_)));
    }
}
