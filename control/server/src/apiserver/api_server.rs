//! The API server's state: the store, the authenticator and authorizer, the service
//! CIDR and the signing keys. Its behaviour is spread by role: `router` (serve, route,
//! authorize), `handlers` (the verbs), `watch`, `authentication`.
//!
//! It must not hold behaviour itself, so that every module can name `ApiServer`
//! without depending on the modules that implement it.

use std::sync::Arc;

use ipnet::Ipv4Net;

use super::resources::by_kind;
use super::service_ips::ServiceIpIndex;
use crate::auth::authn::Authenticator;
use crate::auth::authz::Authorizer;
use crate::auth::serviceaccount::Keys;
use crate::store::Store;

pub struct ApiServer {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) authn: Authenticator,
    pub(crate) authz: Box<dyn Authorizer>,
    pub(crate) service_cidr: Ipv4Net,
    /// Serialises Service creation so two Services never get the same ClusterIP.
    pub(crate) alloc_lock: tokio::sync::Mutex<()>,
    /// What stored Services hold, for allocation without listing them all.
    pub(crate) service_ips: Arc<ServiceIpIndex>,
    /// Signs the tokens the TokenRequest subresource hands out.
    pub(crate) sa_keys: Arc<Keys>,
    /// TLS with the kubelet-client certificate, for `node_proxy` (set once at start).
    pub(crate) kubelet_tls: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
    /// The audit log, when `--audit-log-path` asks for one (set once at start).
    pub(crate) audit: std::sync::OnceLock<super::audit::Auditor>,
    /// The latest CPU and memory points of nodes and pods (`metrics.k8s.io`).
    pub(crate) resource_metrics: super::resource_metrics::ResourceMetrics,
}

impl ApiServer {
    /// How this server reaches kubelets (`pods/log`, `pods/exec`); without it, those
    /// subresources answer 500.
    pub fn set_kubelet_client(&self, tls: Arc<rustls::ClientConfig>) {
        let _ = self.kubelet_tls.set(tls);
    }

    /// Records requests in the audit log from now on.
    pub fn set_auditor(&self, auditor: super::audit::Auditor) {
        let _ = self.audit.set(auditor);
    }

    /// Keeps the Service allocation index in step with the store until the process ends
    /// (without it, each Service create lists every Service), and runs the CRD
    /// controller that serves custom resources (`crd`).
    pub fn spawn_sync(&self) {
        let services = by_kind("Service").expect("Service is a built-in kind");
        self.service_ips.spawn_sync(self.store.clone(), services.prefix());
        super::crd::spawn(self.store.clone());
    }

    pub fn new(
        store: Arc<dyn Store>,
        authn: Authenticator,
        authz: Box<dyn Authorizer>,
        service_cidr: impl Into<Ipv4Net>,
        sa_keys: Arc<Keys>,
    ) -> Self {
        Self {
            store,
            authn,
            authz,
            service_cidr: service_cidr.into(),
            alloc_lock: tokio::sync::Mutex::new(()),
            service_ips: Arc::default(),
            sa_keys,
            kubelet_tls: std::sync::OnceLock::new(),
            audit: std::sync::OnceLock::new(),
            resource_metrics: Default::default(),
        }
    }
}
