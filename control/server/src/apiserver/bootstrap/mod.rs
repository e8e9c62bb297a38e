//! What every cluster has from its first start: the system namespaces, the
//! `default/kubernetes` Service with endpoints pointing at this server, the
//! `kube-system/kube-dns` Service (answered by every node's agent itself, so it has no
//! selector and no endpoints), the default StorageClass `local-path` (created when missing),
//! and the bootstrap RBAC policy (`rbac`). Runs before the server serves; it writes the store
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
    /// The `kube-dns` Service's ClusterIP (the service CIDR's tenth address, as
    /// upstream's convention).
    pub dns_service_ip: std::net::Ipv4Addr,
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
    bootstrap_kube_dns(store, info.dns_service_ip).await?;
    bootstrap_priority_classes(store).await?;
    super::storage_class::bootstrap_local_path(store).await?;
    rbac::bootstrap_rbac(store).await
}

/// The two built-in PriorityClasses upstream creates (`system-node-critical`,
/// `system-cluster-critical`), refreshed on every start.
async fn bootstrap_priority_classes(store: &dyn store::Store) -> ApiResult<()> {
    let def = by_kind("PriorityClass").unwrap();
    for (name, value, description) in strategy::SYSTEM_PRIORITY_CLASSES {
        let obj = json!({"kind": "PriorityClass", "apiVersion": "scheduling.k8s.io/v1",
            "metadata": {"name": name, "uid": meta::new_uid(), "creationTimestamp": meta::now()},
            "value": value, "description": description, "preemptionPolicy": "PreemptLowerPriority"});
        put(store, &def.key(None, name), &obj).await?;
    }
    Ok(())
}

/// Creates `kube-system/kube-dns` on its conventional ClusterIP once, unless another
/// Service already holds that address (then pods reach DNS through the node-local
/// address only, and the log says why). An existing kube-dns is left as it is.
async fn bootstrap_kube_dns(store: &dyn store::Store, ip: std::net::Ipv4Addr) -> ApiResult<()> {
    let def = by_kind("Service").unwrap();
    let key = def.key(Some("kube-system"), "kube-dns");
    if store.get(&key).await?.is_some() {
        return Ok(());
    }
    let ip = ip.to_string();
    for kv in store.list(&def.prefix(), None, 0).await?.kvs {
        let other = super::object::to_obj(&kv)?;
        if other.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(ip.as_str()) {
            tracing::warn!(%ip, holder = ?other.pointer("/metadata/name"), "the kube-dns ClusterIP is taken; not creating kube-dns");
            return Ok(());
        }
    }
    let svc = json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "uid": meta::new_uid(),
            "creationTimestamp": meta::now(),
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "kubernetes.io/cluster-service": "true"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                 "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
        "status": {"loadBalancer": {}}});
    put(store, &key, &svc).await
}
