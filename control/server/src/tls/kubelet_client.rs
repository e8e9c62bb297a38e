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

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

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
            .with_custom_certificate_verifier(Arc::new(AnyKubelet(provider)))
            .with_client_auth_cert(chain, key)?;
        // Upgrades (exec) need HTTP/1.1.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Accepts any kubelet serving certificate (see the module doc), checking signatures.
#[derive(Debug)]
struct AnyKubelet(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyKubelet {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
