//! The API server's side of TLS to kubelets (`:10250`, for `pods/log` and `pods/exec`):
//! its client certificate `kube-apiserver-kubelet-client` (group `system:masters`),
//! issued by the cluster CA once and kept in `<data-dir>/pki`, and the rustls client
//! configuration that presents it.
//!
//! The kubelet's serving certificate is not verified: kubelets make their own
//! self-signed one, and the upstream API server likewise trusts any unless it is given
//! `--kubelet-certificate-authority`. The handshake's signatures are still checked, so
//! the connection is encrypted to whoever holds that certificate's key.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use skiff_api::insecure_tls::AcceptAnyServerCertificate;

use super::{Error, Pki, Result, issue_client, read, write_private};

/// The user the kubelet server lets in.
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

impl Pki {
    /// The client configuration for connections to kubelets, issuing the certificate
    /// on first use.
    pub fn kubelet_client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let (crt, key) = (self.dir.join("apiserver-kubelet-client.crt"), self.dir.join("apiserver-kubelet-client.key"));
        let (cert_pem, key_pem) = match (read(&crt)?, read(&key)?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let issuer = rcgen::Issuer::new(super::ca_params(), rcgen::KeyPair::from_pem(&self.ca_key_pem)?);
                let (c, k) = issue_client(&issuer, KUBELET_CLIENT_CN, &["system:masters"])?;
                write_private(&key, &k, true)?;
                write_private(&crt, &c, false)?;
                (c, k)
            }
        };
        let pem_err = |source| Error::Pem { path: crt.clone(), source };
        let chain =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(pem_err)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate::new(&provider)))
            .with_client_auth_cert(chain, key)?;
        // Upgrades (exec) need HTTP/1.1.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}
