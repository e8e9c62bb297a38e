//! The node's own credentials, obtained the upstream (TLS bootstrapping) way: with the
//! bootstrap token of `--bootstrap-kubeconfig` the agent sends a
//! CertificateSigningRequest for `system:node:<name>` in `system:nodes` (signer
//! `kubernetes.io/kube-apiserver-client-kubelet`), which skiff-control approves and
//! signs, and writes the certificate and its key into `--kubeconfig`.
//!
//! At start, a valid certificate is kept; one that is missing, unreadable, for another
//! node or in the last 20% of its lifetime is replaced (renewed with the current
//! certificate while it still works, which the server approves as `selfnodeclient`,
//! else with the bootstrap token). The private key never leaves this machine.
//!
//! While the agent runs, [`Rotation`] renews the certificate at a random point 70–90 %
//! into its lifetime (as upstream's certificate manager does) and swaps the new one into
//! the API client's [`RotatingTransport`]: requests from then on use a new connection
//! pool with the new identity, while watches already streaming keep their connection.
//! This module must not be used for anything but this node's client identity.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_api::Client;
use skiff_api::kubeconfig::{self, Credentials};
use skiff_api::transport::{BoxFuture, HttpsTransport, ResponseBody, Transport};
use tracing::{info, warn};

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const NODES_GROUP: &str = "system:nodes";
/// How long to wait for the certificate (an approver may be a person).
const WAIT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(500);
const PROGRESS: Duration = Duration::from_secs(15);
/// A failed renewal is tried again after this long (doubling up to `RETRY_MAX`).
const RETRY_MIN: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the bootstrap kubeconfig: {0}")]
    Bootstrap(#[source] kubeconfig::Error),
    #[error("cannot reach the API server with the {which} credentials: {source}")]
    Client { which: &'static str, source: skiff_api::Error },
    #[error("cannot make a key pair or certificate request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("sending the certificate request failed: {0}")]
    Api(#[from] skiff_api::client::Error),
    #[error("certificate request {name} was {how}: {message}; ask an admin (kubectl get csr {name})")]
    Refused { name: String, how: String, message: String },
    #[error(
        "certificate request {name} was not signed within {secs} s; approve it with `kubectl certificate approve {name}`"
    )]
    Timeout { name: String, secs: u64 },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot encode the kubeconfig: {0}")]
    Encode(#[from] serde_norway::Error),
    #[error("cannot read the node kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: kubeconfig::Error },
    #[error("the renewed certificate does not work (the client keeps the current one): {0}")]
    Renewed(#[source] skiff_api::client::Error),
    #[error("cannot make a client with the new certificate: {0}")]
    Transport(#[from] skiff_api::transport::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the current kubeconfig's certificate is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    /// Valid and not yet due for renewal.
    Fresh,
    /// Valid, but in the last 20% of its life: renew with it.
    Renew,
    /// Missing, unreadable, expired or someone else's: bootstrap.
    Unusable,
}

/// Judges a PEM client certificate for `node_name` at `now` (Unix seconds).
pub fn cert_state(cert_pem: Option<&[u8]>, node_name: &str, now: i64) -> CertState {
    let Some((from, until)) = cert_pem.and_then(|pem| validity(pem, node_name)) else { return CertState::Unusable };
    if now < from || now >= until {
        return CertState::Unusable;
    }
    // Renew once 80% of the lifetime has passed, as the kubelet's certificate manager
    // roughly does.
    if now >= from + (until - from) * 8 / 10 { CertState::Renew } else { CertState::Fresh }
}

/// The validity (not before, not after; Unix seconds) of a PEM client certificate for
/// `node_name`; `None` when it is unreadable or someone else's.
fn validity(cert_pem: &[u8], node_name: &str) -> Option<(i64, i64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok());
    (cn == Some(format!("system:node:{node_name}").as_str()))
        .then(|| (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}

/// When a certificate valid from `from` to `until` (Unix seconds) is renewed: `jitter`
/// (0 to 1) of the way between 70 % and 90 % of its lifetime, so that nodes that got
/// their certificates together do not all renew at once.
pub fn renewal_time(from: i64, until: i64, jitter: f64) -> i64 {
    let permille = 700 + (200.0 * jitter.clamp(0.0, 1.0)).round() as i64;
    from + (until - from).max(0) * permille / 1000
}

/// Makes sure `kubeconfig` holds a usable client certificate for `node_name`, asking
/// the API server for one with the bootstrap credentials when it does not.
pub async fn ensure_credentials(bootstrap_kubeconfig: &Path, kubeconfig: &Path, node_name: &str) -> Result<()> {
    let current = kubeconfig::load(kubeconfig).ok();
    let now = jiff::Timestamp::now().as_second();
    let state = cert_state(current.as_ref().and_then(|c| c.client_cert_pem.as_deref()), node_name, now);
    let (creds, which) = match (state, current) {
        (CertState::Fresh, _) => {
            info!(node = node_name, kubeconfig = %kubeconfig.display(), "node client certificate is valid");
            return Ok(());
        }
        (CertState::Renew, Some(current)) => (current, "current"),
        _ => (kubeconfig::load(bootstrap_kubeconfig).map_err(Error::Bootstrap)?, "bootstrap"),
    };
    info!(node = node_name, credentials = which, ?state, "requesting a node client certificate");
    obtain(&creds, which, kubeconfig, node_name).await
}

/// Asks for a new certificate with `creds` (`which` names them in messages) and writes
/// it with its new key into `kubeconfig`.
async fn obtain(creds: &Credentials, which: &'static str, kubeconfig: &Path, node_name: &str) -> Result<()> {
    let client = Client::from_credentials(creds, &format!("skiff-node/{node_name}"))
        .map_err(|source| Error::Client { which, source })?;
    let key = rcgen::KeyPair::generate()?;
    let csr = request(node_name, &key)?;
    let created = client.create(None, &csr).await?;
    let name = created.metadata.name.unwrap_or_default();
    info!(csr = %name, "certificate request sent; waiting for approval and signing");
    let cert = wait_for_certificate(&client, &name).await?;
    let text = render(creds, node_name, &cert, key.serialize_pem().as_bytes())?;
    write_atomically(kubeconfig, &text)?;
    info!(csr = %name, kubeconfig = %kubeconfig.display(), "node client certificate written");
    Ok(())
}

/// The CertificateSigningRequest for this node's identity.
fn request(node_name: &str, key: &rcgen::KeyPair) -> Result<CertificateSigningRequest> {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, NODES_GROUP);
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node_name}"));
    params.distinguished_name = dn;
    let pem = params.serialize_request(key)?.pem()?;
    Ok(CertificateSigningRequest {
        metadata: ObjectMeta { generate_name: Some("node-csr-".into()), ..Default::default() },
        spec: CertificateSigningRequestSpec {
            request: ByteString(pem.into_bytes()),
            signer_name: SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Polls the request until it has a certificate, is denied or failed, or `WAIT` ends.
async fn wait_for_certificate(client: &Client, name: &str) -> Result<Vec<u8>> {
    let started = tokio::time::Instant::now();
    let mut last_note = started;
    loop {
        match client.get::<CertificateSigningRequest>(None, name).await {
            Ok(csr) => {
                let status = csr.status.unwrap_or_default();
                if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                    return Ok(cert.0);
                }
                let refused = status
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| matches!(c.type_.as_str(), "Denied" | "Failed") && c.status == "True");
                if let Some(c) = refused {
                    return Err(Error::Refused {
                        name: name.into(),
                        how: c.type_.to_lowercase(),
                        message: c.message.or(c.reason).unwrap_or_default(),
                    });
                }
            }
            Err(error) => warn!(csr = name, %error, "reading the certificate request failed; retrying"),
        }
        if started.elapsed() >= WAIT {
            return Err(Error::Timeout { name: name.into(), secs: WAIT.as_secs() });
        }
        if last_note.elapsed() >= PROGRESS {
            info!(csr = name, waited_s = started.elapsed().as_secs(), "still waiting for the certificate");
            last_note = tokio::time::Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A transport whose TLS identity can be replaced while clients that use it keep
/// running. Each request goes out on the transport current when it starts; a watch
/// keeps its connection after a swap.
pub struct RotatingTransport {
    current: RwLock<Arc<dyn Transport>>,
}

impl std::fmt::Debug for RotatingTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingTransport").finish_non_exhaustive()
    }
}

impl RotatingTransport {
    pub fn new(first: Arc<dyn Transport>) -> Self {
        Self { current: RwLock::new(first) }
    }

    /// From now on, requests go through `next`.
    pub fn swap(&self, next: Arc<dyn Transport>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
    }
}

impl Transport for RotatingTransport {
    fn send(
        &self,
        req: http::Request<bytes::Bytes>,
    ) -> BoxFuture<'_, skiff_api::transport::Result<http::Response<ResponseBody>>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move { current.send(req).await })
    }
}

/// Keeps the node's client certificate renewed while the agent runs (see the module doc).
#[derive(Debug)]
pub struct Rotation {
    transport: Arc<RotatingTransport>,
    kubeconfig: PathBuf,
    bootstrap_kubeconfig: Option<PathBuf>,
    node_name: String,
}

/// The API client of this node, over a transport that [`Rotation::run`] re-keys when
/// the certificate in `kubeconfig` is renewed.
pub fn rotating_client(
    kubeconfig: &Path,
    bootstrap_kubeconfig: Option<&Path>,
    node_name: &str,
) -> Result<(Client, Rotation)> {
    let creds = kubeconfig::load(kubeconfig).map_err(|source| Error::Kubeconfig { path: kubeconfig.into(), source })?;
    let transport = Arc::new(RotatingTransport::new(Arc::new(HttpsTransport::new(&creds)?)));
    let client = Client::new(transport.clone(), &format!("skiff-node/{node_name}"));
    let rotation = Rotation {
        transport,
        kubeconfig: kubeconfig.into(),
        bootstrap_kubeconfig: bootstrap_kubeconfig.map(Path::to_path_buf),
        node_name: node_name.into(),
    };
    Ok((client, rotation))
}

impl Rotation {
    /// Renews the certificate whenever it is due, for as long as the agent runs. A
    /// kubeconfig without this node's certificate (a token, say) has nothing to renew.
    pub async fn run(self) {
        let mut retry = RETRY_MIN;
        loop {
            let creds = kubeconfig::load(&self.kubeconfig).ok();
            let cert = creds.as_ref().and_then(|c| c.client_cert_pem.as_deref());
            let Some((from, until)) = cert.and_then(|c| validity(c, &self.node_name)) else {
                info!(kubeconfig = %self.kubeconfig.display(), "no node client certificate to renew");
                return;
            };
            // The sub-second part of now is random enough to spread the nodes out.
            let jitter = f64::from(jiff::Timestamp::now().subsec_nanosecond()) / 1e9;
            let at = renewal_time(from, until, jitter);
            let wait = u64::try_from(at - jiff::Timestamp::now().as_second()).unwrap_or(0);
            info!(not_after = until, renew_in_s = wait, "node client certificate renewal scheduled");
            tokio::time::sleep(Duration::from_secs(wait)).await;
            match self.renew().await {
                Ok(()) => retry = RETRY_MIN,
                Err(e) => {
                    warn!(error = %e, retry_s = retry.as_secs(), "renewing the node client certificate failed; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One renewal: a new certificate (with the current one while it is valid, else the
    /// bootstrap token), written to the kubeconfig and swapped into the client.
    pub async fn renew(&self) -> Result<()> {
        let path = &self.kubeconfig;
        let current = kubeconfig::load(path).map_err(|source| Error::Kubeconfig { path: path.clone(), source })?;
        let now = jiff::Timestamp::now().as_second();
        let (creds, which) =
            match (cert_state(current.client_cert_pem.as_deref(), &self.node_name, now), &self.bootstrap_kubeconfig) {
                (CertState::Unusable, Some(bootstrap)) => {
                    (kubeconfig::load(bootstrap).map_err(Error::Bootstrap)?, "bootstrap")
                }
                _ => (current, "current"),
            };
        info!(node = %self.node_name, credentials = which, "renewing the node client certificate");
        obtain(&creds, which, path, &self.node_name).await?;
        let renewed = kubeconfig::load(path).map_err(|source| Error::Kubeconfig { path: path.clone(), source })?;
        let next: Arc<dyn Transport> = Arc::new(HttpsTransport::new(&renewed)?);
        // The new identity must work before the running client takes it: reading its
        // own Node is what every node may do.
        let check = Client::new(next.clone(), &format!("skiff-node/{}", self.node_name));
        check.get::<Node>(None, &self.node_name).await.map_err(Error::Renewed)?;
        self.transport.swap(next);
        info!(node = %self.node_name, "the API client uses the renewed certificate");
        Ok(())
    }
}

/// The node kubeconfig: the bootstrap kubeconfig's server and CA, the new certificate
/// and key embedded.
fn render(creds: &Credentials, node_name: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<String> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let user = format!("system:node:{node_name}");
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "skiff", "cluster": {"server": creds.server, "certificate-authority-data": b64(&creds.ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": "node", "context": {"cluster": "skiff", "user": user}}],
        "current-context": "node",
    });
    Ok(serde_norway::to_string(&doc)?)
}

/// Writes `text` to `path` with mode 0600 through a temporary file and a rename, so a
/// crash leaves the old kubeconfig or the new one, never half of one.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Write { path: path.into(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, from: i64, until: i64) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        p.distinguished_name = dn;
        let at = |s: i64| {
            let t = jiff::Timestamp::from_second(s).unwrap().to_zoned(jiff::tz::TimeZone::UTC);
            rcgen::date_time_ymd(i32::from(t.year()), t.month() as u8, t.day() as u8)
        };
        p.not_before = at(from);
        p.not_after = at(until);
        p.self_signed(&key).unwrap().pem().into_bytes()
    }

    #[test]
    fn certificates_are_kept_renewed_or_replaced() {
        const DAY: i64 = 86_400;
        let t0 = 1_800_000_000 / DAY * DAY;
        let c = cert("system:node:n1", t0, t0 + 100 * DAY);
        assert_eq!(cert_state(Some(&c), "n1", t0 + DAY), CertState::Fresh);
        assert_eq!(cert_state(Some(&c), "n1", t0 + 81 * DAY), CertState::Renew);
        assert_eq!(cert_state(Some(&c), "n1", t0 + 101 * DAY), CertState::Unusable);
        assert_eq!(cert_state(Some(&c), "n2", t0 + DAY), CertState::Unusable);
        assert_eq!(cert_state(None, "n1", t0), CertState::Unusable);
        assert_eq!(cert_state(Some(b"junk"), "n1", t0), CertState::Unusable);
    }

    #[test]
    fn renewal_is_due_between_70_and_90_percent_of_the_lifetime() {
        assert_eq!(renewal_time(1000, 2000, 0.0), 1700);
        assert_eq!(renewal_time(1000, 2000, 0.5), 1800);
        assert_eq!(renewal_time(1000, 2000, 1.0), 1900);
        // Out-of-range jitter stays in the window; a backwards validity renews at once.
        assert_eq!(renewal_time(1000, 2000, 7.0), 1900);
        assert_eq!(renewal_time(1000, 900, 0.5), 1000);
        // A year-long certificate (what skiff-control issues by default): after ~8.4 to ~10.8 months.
        let year = 365 * 86_400;
        let at = renewal_time(0, year, 0.3);
        assert!(at > year * 7 / 10 && at < year * 9 / 10, "{at}");
    }

    #[test]
    fn validity_is_read_only_from_this_nodes_certificate() {
        const DAY: i64 = 86_400;
        let t0 = 1_800_000_000 / DAY * DAY;
        let c = cert("system:node:n1", t0, t0 + 10 * DAY);
        assert_eq!(validity(&c, "n1"), Some((t0, t0 + 10 * DAY)));
        assert_eq!(validity(&c, "n2"), None);
        assert_eq!(validity(b"junk", "n1"), None);
    }

    /// Answers every request with its own status code.
    struct Fixed(u16);

    impl Transport for Fixed {
        fn send(
            &self,
            _req: http::Request<bytes::Bytes>,
        ) -> BoxFuture<'_, skiff_api::transport::Result<http::Response<ResponseBody>>> {
            use http_body_util::BodyExt;
            let body = http_body_util::Full::new(bytes::Bytes::from_static(b"{}")).map_err(|e| match e {}).boxed();
            let code = self.0;
            Box::pin(async move { Ok(http::Response::builder().status(code).body(body).unwrap()) })
        }
    }

    #[tokio::test]
    async fn a_swapped_transport_takes_the_next_requests() {
        let rotating = Arc::new(RotatingTransport::new(Arc::new(Fixed(200))));
        let client = Client::new(rotating.clone(), "test");
        let status = |c: Client| async move {
            c.send_raw(http::Method::GET, "/healthz", None, bytes::Bytes::new()).await.unwrap().status().as_u16()
        };
        assert_eq!(status(client.clone()).await, 200);
        rotating.swap(Arc::new(Fixed(202)));
        assert_eq!(status(client.clone()).await, 202, "the client sees the new transport without being rebuilt");
    }

    #[test]
    fn the_request_names_this_node_and_the_kubeconfig_embeds_everything() {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = request("n1", &key).unwrap();
        assert_eq!(csr.spec.signer_name, SIGNER);
        let text = String::from_utf8(csr.spec.request.0).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE REQUEST-----"), "{text}");

        let creds =
            Credentials { server: "https://127.0.0.1:6443".into(), ca_pem: b"CA".to_vec(), ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.kubeconfig");
        write_atomically(&path, &render(&creds, "n1", b"CERT", b"KEY").unwrap()).unwrap();
        let back = kubeconfig::load(&path).unwrap();
        assert_eq!(back.server, creds.server);
        assert_eq!(back.ca_pem, b"CA");
        assert_eq!(back.client_cert_pem.as_deref(), Some(&b"CERT"[..]));
        assert_eq!(back.client_key_pem.as_deref(), Some(&b"KEY"[..]));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
