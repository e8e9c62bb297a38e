//! The API server's state: the store, the authenticator and authorizer, the service
//! CIDR and the signing keys. Its behaviour is spread by role: `router` (serve, route,
//! authorize), `handlers` (the verbs), `watch`, `authentication`.
//!
//! It must not hold behaviour itself, so that every module can name `ApiServer`
//! without depending on the modules that implement it.

use std::sync::Arc;

use ipnet::Ipv4Net;

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
    /// Signs the tokens the TokenRequest subresource hands out.
    pub(crate) sa_keys: Arc<Keys>,
    /// TLS with the kubelet-client certificate, for `node_proxy` (set once at start).
    pub(crate) kubelet_tls: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
}

impl ApiServer {
    /// How this server reaches kubelets (`pods/log`, `pods/exec`); without it, those
    /// subresources answer 500.
    pub fn set_kubelet_client(&self, tls: Arc<rustls::ClientConfig>) {
        let _ = self.kubelet_tls.set(tls);
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
            sa_keys,
            kubelet_tls: std::sync::OnceLock::new(),
        }
    }
}
