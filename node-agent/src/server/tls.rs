//! The kubelet server's TLS: its serving certificate (given, or self-signed for the
//! node's name and addresses, as a kubelet without a serving certificate does), and the
//! client-certificate check against the cluster CA. Certificates are optional at the
//! TLS layer so that `/healthz` stays open; the server decides per path.
//!
//! It must not decide who may do what; it only reads the verified peer's subject.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use skiff_api::x509::Subject;

use super::Settings;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot make a self-signed serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot parse the {what} PEM: {source}")]
    Pem { what: &'static str, source: rustls::pki_types::pem::Error },
    #[error("the client CA holds no certificate")]
    NoClientCa,
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS configuration failed: cannot build the client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A self-signed serving certificate for `name` and `ips`, as (cert PEM, key PEM).
pub fn self_signed(name: &str, ips: &[IpAddr]) -> Result<(String, String)> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{name}@kubelet"));
    p.distinguished_name = dn;
    if let Ok(dns) = name.try_into() {
        p.subject_alt_names.push(SanType::DnsName(dns));
    }
    p.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The rustls configuration: the serving certificate, client certificates verified
/// against the client CA when presented, HTTP/1.1 only (upgrades need it).
pub fn server_config(settings: &Settings) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(settings.client_ca_pem.as_bytes()) {
        roots.add(c.map_err(|source| Error::Pem { what: "client CA", source })?)?;
    }
    if roots.is_empty() {
        return Err(Error::NoClientCa);
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let (cert_pem, key_pem) = match &settings.serving {
        Some(pair) => pair.clone(),
        None => self_signed(&settings.node_name, &settings.node_ips)?,
    };
    let pem = |what| move |source| Error::Pem { what, source };
    let chain: Vec<_> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(pem("serving cert"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem("serving key"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let mut cfg = builder.with_client_cert_verifier(verifier).with_single_cert(chain, key)?;
    // Upgrades (exec) are an HTTP/1.1 thing.
    cfg.alpn_protocols.push(b"http/1.1".to_vec());
    Ok(Arc::new(cfg))
}

/// The subject of the peer's verified client certificate, if it sent one.
pub fn peer_subject(conn: &rustls::ServerConnection) -> Option<Subject> {
    conn.peer_certificates().and_then(|c| c.first()).and_then(|c| skiff_api::x509::subject(c))
}
