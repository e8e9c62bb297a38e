//! What every cluster has from its first start: the system namespaces, the
//! `default/kubernetes` Service with endpoints pointing at this server, and the
//! bootstrap RBAC policy (`rbac`). Runs before the server serves; it writes the store
//! directly, not through the handlers.

mod rbac;
mod reconcile;

use serde_json::{Value, json};

use super::meta;
use super::object::to_bytes;
use super::resources::by_kind;
use super::status::ApiResult;
use super::strategy;
use crate::store;
use reconcile::put;

/// What the bootstrap objects need to know about this server.
#[derive(Debug, Clone)]
pub struct BootstrapInfo {
    /// The `kubernetes` Service's ClusterIP (first address of the service CIDR).
    pub service_ip: std::net::Ipv4Addr,
    /// Where clients reach the API server (the `kubernetes` endpoints).
    pub advertise: std::net::IpAddr,
    pub port: u16,
}

/// Creates the system namespaces if they are missing (first start), and the `default/kubernetes`
/// Service with endpoints pointing at this server (refreshed on every start).
pub async fn bootstrap(store: &dyn store::Store, info: &BootstrapInfo) -> ApiResult<()> {
    let def = by_kind("Namespace").unwrap();
    for ns in strategy::SYSTEM_NAMESPACES {
        let mut obj = json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {
            "name": ns, "uid": meta::new_uid(), "creationTimestamp": meta::now(),
            "labels": {"kubernetes.io/metadata.name": ns}}});
        def.strategy.default(&mut obj);
        match store.create(&def.key(None, ns), to_bytes(&obj)).await {
            Ok(_) => tracing::info!(namespace = ns, "created system namespace"),
            Err(store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let meta = |labels: Value| {
        json!({"name": "kubernetes", "namespace": "default", "uid": meta::new_uid(),
        "creationTimestamp": meta::now(), "labels": labels})
    };
    let ip = info.service_ip.to_string();
    let svc = json!({"kind": "Service", "apiVersion": "v1",
        "metadata": meta(json!({"component": "apiserver", "provider": "kubernetes"})),
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                 "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": info.port}]},
        "status": {"loadBalancer": {}}});
    let svc_def = by_kind("Service").unwrap();
    if store.get(&svc_def.key(Some("default"), "kubernetes")).await?.is_none() {
        put(store, &svc_def.key(Some("default"), "kubernetes"), &svc).await?;
    }
    let addr = info.advertise.to_string();
    let eps = json!({"kind": "Endpoints", "apiVersion": "v1", "metadata": meta(json!({"endpointslice.kubernetes.io/skip-mirror": "true"})),
        "subsets": [{"addresses": [{"ip": addr}], "ports": [{"name": "https", "port": info.port, "protocol": "TCP"}]}]});
    put(store, &by_kind("Endpoints").unwrap().key(Some("default"), "kubernetes"), &eps).await?;
    let slice = json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": meta(json!({"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "skiff-control"})),
        "addressType": if info.advertise.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": info.port, "protocol": "TCP"}]});
    put(store, &by_kind("EndpointSlice").unwrap().key(Some("default"), "kubernetes"), &slice).await?;
    rbac::bootstrap_rbac(store).await
}
