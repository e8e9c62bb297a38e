//! PKI and TLS: on first start a CA, the API server's serving certificate and the admin
//! client certificate are generated under `<data-dir>/pki`; later starts reuse them
//! (the serving certificate is re-issued by the same CA when its SAN list changes). Also
//! the rustls server configuration that asks for — but does not require — a client
//! certificate, because bearer tokens are the other way in.
//!
//! This module must not decide who a certificate's holder is allowed to be: it only
//! proves possession and reads the subject (`x509`); `auth` turns that into a user.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub mod signer;
// The subject reader lives in skiff-api, so the kubelet server reads the same names.
pub use skiff_api::x509;
mod kubelet_client;
pub use kubelet_client::KUBELET_CLIENT_CN;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot parse PEM in {path}: {source}")]
    Pem { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS configuration failed: cannot build the client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const CA_CN: &str = "skiff-ca";

/// The cluster's certificates, as PEM.
#[derive(Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert_pem: String,
    ca_key_pem: String,
    pub serving_cert_pem: String,
    serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("Pki").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// A subject alternative name for the serving certificate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum San {
    Ip(IpAddr),
    Dns(String),
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Ip(ip) => write!(f, "IP:{ip}"),
            San::Dns(d) => write!(f, "DNS:{d}"),
        }
    }
}

fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { action: "read", path: path.into(), source }),
    }
}

/// Writes via a temporary file and rename, so a crash never leaves half a key; keys are 0600.
pub(crate) fn write_private(path: &Path, contents: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |action, source| Error::Io { action, path: path.into(), source };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    f.write_all(contents.as_bytes()).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", e))
}

fn this_year() -> i32 {
    i32::from(jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).year())
}

fn validity(params: &mut CertificateParams, years: i32) {
    let y = this_year();
    // A year of slack before now tolerates clocks that disagree a little.
    params.not_before = rcgen::date_time_ymd(y - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(y + years, 1, 1);
}

/// The CA's parameters; rebuilt identically on every start so a reloaded CA key can sign
/// (the issuer name and key identifier must match the CA certificate on disk).
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut p, 10);
    p
}

impl Pki {
    /// Loads the PKI from `<data_dir>/pki`, generating whatever is missing.
    pub fn ensure(data_dir: &Path, sans: &[San]) -> Result<Self> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { action: "create", path: dir.clone(), source })?;
        let (ca_cert_pem, ca_key_pem) = match (read(&dir.join("ca.crt"))?, read(&dir.join("ca.key"))?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let key = KeyPair::generate()?;
                let cert = ca_params().self_signed(&key)?;
                let (c, k) = (cert.pem(), key.serialize_pem());
                write_private(&dir.join("ca.key"), &k, true)?;
                write_private(&dir.join("ca.crt"), &c, false)?;
                tracing::info!(dir = %dir.display(), "generated cluster CA");
                (c, k)
            }
        };
        let ca_key = KeyPair::from_pem(&ca_key_pem)?;
        let issuer = Issuer::new(ca_params(), ca_key);

        let mut sans: Vec<San> = sans.to_vec();
        sans.sort();
        sans.dedup();
        let san_text: String = sans.iter().map(|s| format!("{s}\n")).collect();
        let (serving_cert_pem, serving_key_pem) = match (
            read(&dir.join("apiserver.crt"))?,
            read(&dir.join("apiserver.key"))?,
            read(&dir.join("apiserver.sans"))?,
        ) {
            (Some(c), Some(k), Some(s)) if s == san_text => (c, k),
            _ => {
                let mut p = CertificateParams::default();
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "skiff-apiserver");
                p.distinguished_name = dn;
                for s in &sans {
                    p.subject_alt_names.push(match s {
                        San::Ip(ip) => SanType::IpAddress(*ip),
                        San::Dns(d) => SanType::DnsName(d.as_str().try_into()?),
                    });
                }
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
                validity(&mut p, 5);
                let key = KeyPair::generate()?;
                let cert = p.signed_by(&key, &issuer)?;
                let (c, k) = (cert.pem(), key.serialize_pem());
                write_private(&dir.join("apiserver.key"), &k, true)?;
                write_private(&dir.join("apiserver.crt"), &c, false)?;
                write_private(&dir.join("apiserver.sans"), &san_text, false)?;
                tracing::info!(sans = %san_text.trim().replace('\n', ","), "issued serving certificate");
                (c, k)
            }
        };
        let (admin_cert_pem, admin_key_pem) = match (read(&dir.join("admin.crt"))?, read(&dir.join("admin.key"))?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let (c, k) = issue_client(&issuer, "admin", &["system:masters"])?;
                write_private(&dir.join("admin.key"), &k, true)?;
                write_private(&dir.join("admin.crt"), &c, false)?;
                (c, k)
            }
        };
        Ok(Self { dir, ca_cert_pem, ca_key_pem, serving_cert_pem, serving_key_pem, admin_cert_pem, admin_key_pem })
    }

    /// Issues a client certificate (user = `cn`, groups = `orgs`) signed by the CA, as
    /// (cert PEM, key PEM). Used for node credentials and tests.
    pub fn issue_client_cert(&self, cn: &str, orgs: &[&str]) -> Result<(String, String)> {
        let issuer = Issuer::new(ca_params(), KeyPair::from_pem(&self.ca_key_pem)?);
        issue_client(&issuer, cn, orgs)
    }

    /// The rustls configuration for :6443: our serving certificate, client certificates
    /// verified against our CA but optional, HTTP/1.1 only.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pem_err =
            |what: &str, source: rustls::pki_types::pem::Error| Error::Pem { path: self.dir.join(what), source };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_cert_pem.as_bytes()) {
            roots.add(c.map_err(|e| pem_err("ca.crt", e))?)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()?;
        let chain = CertificateDer::pem_slice_iter(self.serving_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err("apiserver.crt", e))?;
        let key =
            PrivateKeyDer::from_pem_slice(self.serving_key_pem.as_bytes()).map_err(|e| pem_err("apiserver.key", e))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        // HTTP/2 is not served yet; advertising only http/1.1 keeps clients from trying it.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A kubeconfig for the admin user pointing at `server` (an https URL).
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        kubeconfig(server, &self.ca_cert_pem, "admin", &self.admin_cert_pem, &self.admin_key_pem)
    }
}

/// Certificate parameters with subject `CN=cn, O=orgs…` and nothing else.
pub fn subject_params(cn: &str, orgs: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    p.distinguished_name = dn;
    p
}

fn issue_client(issuer: &Issuer<'_, KeyPair>, cn: &str, orgs: &[&str]) -> Result<(String, String)> {
    let mut p = subject_params(cn, orgs);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut p, 5);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A kubeconfig with embedded credentials for one cluster and one client certificate.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, cert_pem: &str, key_pem: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
         contexts:\n- name: {user}@skiff\n  context:\n    cluster: skiff\n    user: {user}\n\
         current-context: {user}@skiff\npreferences: {{}}\n",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}

/// A kubeconfig with a bearer token (the nodes' `bootstrap.kubeconfig`).
pub fn token_kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\n\
         contexts:\n- name: {user}@skiff\n  context:\n    cluster: skiff\n    user: {user}\n\
         current-context: {user}@skiff\npreferences: {{}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let sans = [San::Ip("127.0.0.1".parse().unwrap()), San::Dns("localhost".into())];
        let a = Pki::ensure(dir.path(), &sans).unwrap();
        let b = Pki::ensure(dir.path(), &sans).unwrap();
        assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
        assert_eq!(a.serving_cert_pem, b.serving_cert_pem);
        assert_eq!(a.admin_cert_pem, b.admin_cert_pem);
        // A new SAN re-issues the serving certificate under the same CA.
        let c = Pki::ensure(dir.path(), &[San::Ip("10.96.0.1".parse().unwrap())]).unwrap();
        assert_eq!(a.ca_cert_pem, c.ca_cert_pem);
        assert_ne!(a.serving_cert_pem, c.serving_cert_pem);
        c.server_config().unwrap();
        let der = CertificateDer::from_pem_slice(a.admin_cert_pem.as_bytes()).unwrap();
        let subject = x509::subject(&der).unwrap();
        assert_eq!(subject.common_name.as_deref(), Some("admin"));
        assert_eq!(subject.organizations, ["system:masters"]);
        let mode = std::fs::metadata(dir.path().join("pki/ca.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
}
