//! Wiring and the accept loop: open the store (embedded redb, or etcd with
//! `Config::etcd`), ensure the PKI, the ServiceAccount signing key and the admin
//! kubeconfig, create the system namespaces, then serve HTTPS on one port (there is no
//! insecure port). Each connection is TLS-terminated here and its verified client
//! certificate subject handed to the API server with every request on it.
//!
//! It must not contain API semantics; those live in `apiserver`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ipnet::Ipv4Net;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use skiff_api::Client;

use crate::apiserver::ApiServer;
use crate::apiserver::local::LocalTransport;
use crate::auth::authn::Authenticator;
use crate::auth::node::NodeAuthorizer;
use crate::auth::rbac::RbacAuthorizer;
use crate::auth::serviceaccount::Keys;
use crate::auth::{CONTROLLER_USER, SCHEDULER_USER};
use crate::store::{EtcdConfig, EtcdStore, RedbStore, Store, TimedStore};
use crate::tls::{Pki, San, x509};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::authn::Error),
    #[error(transparent)]
    ServiceAccountKey(#[from] crate::auth::serviceaccount::Error),
    #[error("bootstrapping system objects failed: {0}")]
    Bootstrap(crate::apiserver::status::ApiError),
    #[error("cannot listen on {addr}: {source} (is another skiff-control running? pick another --port)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Audit(#[from] crate::apiserver::audit::Error),
    #[error("invalid --{flag} {value:?}: {reason}")]
    Flag { flag: &'static str, value: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The control plane's settings (the binary's flags).
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    pub port: u16,
    /// The address clients (and the kubeconfig) should use; defaults to the bind
    /// address, or 127.0.0.1 when binding to all addresses.
    pub advertise_address: Option<IpAddr>,
    /// The pod network; each node gets a /24 of it.
    pub cluster_cidr: Ipv4Net,
    /// The ClusterIP range; its first address is the `kubernetes` Service.
    pub service_cidr: Ipv4Net,
    /// The addresses LoadBalancer Services are given; empty gives none.
    pub service_lb_pool: Vec<Ipv4Net>,
    /// The local-path provisioner's directory for nodes that announce none.
    pub local_path_dir: PathBuf,
    /// Extra subject alternative names (IPs or DNS names) for the serving certificate.
    pub tls_sans: Vec<String>,
    /// Run the scheduler and controllers (under leader election); off for a replica
    /// that should only serve the API.
    pub run_controllers: bool,
    pub node_monitor_grace_period: Duration,
    pub pod_eviction_timeout: Duration,
    /// How often kubelets are scraped for `metrics.k8s.io`.
    pub metric_resolution: Duration,
    /// How often the HPA controller reconciles each HorizontalPodAutoscaler.
    pub hpa_sync_period: Duration,
    /// The HPA's default scale-down stabilization window.
    pub hpa_downscale_stabilization: Duration,
    /// Keep objects in this etcd cluster instead of the embedded store in `data_dir`
    /// (the PKI, tokens and kubeconfig stay in `data_dir` either way).
    pub etcd: Option<EtcdConfig>,
    /// Write the audit log here (`-`: stdout); `None` keeps none.
    pub audit_log_path: Option<PathBuf>,
    /// The audit.k8s.io/v1 Policy that selects what the audit log records.
    pub audit_policy_file: Option<PathBuf>,
}

/// What clap's parsing of a CIDR flag lets through but a range of addresses to hand
/// out must not have: host bits (a typo more often than not) or room for fewer than
/// four addresses.
fn check_cidr(flag: &'static str, net: Ipv4Net) -> Result<()> {
    let bad = |reason: &str| Error::Flag { flag, value: net.to_string(), reason: reason.to_string() };
    if net.prefix_len() > 30 {
        return Err(bad("prefix length must be at most 30"));
    }
    if net != net.trunc() {
        return Err(bad("host bits are set"));
    }
    Ok(())
}

/// The LoadBalancer pool: each range as `check_cidr` wants it, none overlapping
/// another, the pod network or the ClusterIP range (an address in two of them would
/// reach the wrong thing).
fn check_lb_pool(cfg: &Config) -> Result<()> {
    const FLAG: &str = "service-lb-pool";
    for &net in &cfg.service_lb_pool {
        check_cidr(FLAG, net)?;
        for (other, name) in [(cfg.service_cidr, "--service-cidr"), (cfg.cluster_cidr, "--cluster-cidr")] {
            if net.contains(&other.network()) || other.contains(&net.network()) {
                let reason = format!("overlaps {name} {other}");
                return Err(Error::Flag { flag: FLAG, value: net.to_string(), reason });
            }
        }
    }
    skiff_controllers::controllers::lbipam::Pool::new(&cfg.service_lb_pool).map_err(|e| Error::Flag {
        flag: FLAG,
        value: cfg.service_lb_pool.iter().map(Ipv4Net::to_string).collect::<Vec<_>>().join(","),
        reason: e.to_string(),
    })?;
    Ok(())
}

impl Config {
    /// The first address of the service CIDR: the `kubernetes` Service's ClusterIP.
    pub fn kubernetes_service_ip(&self) -> Result<Ipv4Addr> {
        check_cidr("service-cidr", self.service_cidr)?;
        Ok(Ipv4Addr::from(u32::from(self.service_cidr.network()) + 1))
    }

    /// The `kube-dns` Service's ClusterIP: the service CIDR's tenth address.
    pub fn dns_service_ip(&self) -> Result<Ipv4Addr> {
        check_cidr("service-cidr", self.service_cidr)?;
        Ok(Ipv4Addr::from(u32::from(self.service_cidr.network()) + 10))
    }

    fn advertised(&self) -> IpAddr {
        self.advertise_address.unwrap_or(if self.bind_address.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.bind_address
        })
    }

    fn sans(&self) -> Result<Vec<San>> {
        let mut sans = vec![
            San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            San::Ip(IpAddr::V4(self.kubernetes_service_ip()?)),
            San::Ip(self.advertised()),
        ];
        if !self.bind_address.is_unspecified() {
            sans.push(San::Ip(self.bind_address));
        }
        for d in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            sans.push(San::Dns(d.into()));
        }
        for s in &self.tls_sans {
            sans.push(match s.parse::<IpAddr>() {
                Ok(ip) => San::Ip(ip),
                Err(_) => San::Dns(s.clone()),
            });
        }
        Ok(sans)
    }
}

/// A started server: where it listens and where its admin kubeconfig is.
#[derive(Debug, Clone)]
pub struct Started {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    /// CA and the node bootstrap token: what a node needs to ask for its certificate.
    pub bootstrap_kubeconfig: PathBuf,
}

/// Runs until `shutdown` completes.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let (listener, api, acceptor, started, pki) = start(&cfg).await?;
    tracing::info!(addr = %started.addr, kubeconfig = %started.kubeconfig.display(), bootstrap_kubeconfig = %started.bootstrap_kubeconfig.display(), "skiff-control serving");
    let controllers = cfg.run_controllers.then(|| {
        let config = skiff_controllers::Config {
            cluster_cidr: cfg.cluster_cidr,
            service_lb_pool: cfg.service_lb_pool.clone(),
            local_path_dir: cfg.local_path_dir.clone(),
            node_monitor_grace_period: cfg.node_monitor_grace_period,
            pod_eviction_timeout: cfg.pod_eviction_timeout,
            identity: identity(&cfg.data_dir),
            root_ca_pem: pki.ca_cert_pem.clone(),
            hpa_sync_period: cfg.hpa_sync_period,
            hpa_downscale_stabilization: cfg.hpa_downscale_stabilization,
        };
        tokio::spawn(skiff_controllers::run(in_process_clients(&api), config))
    });
    // Dropping the server also stops the controllers (tests run several in one process).
    let _stop_controllers = AbortOnDrop(controllers);
    let certificates = cfg.run_controllers.then(|| {
        let client =
            Client::new(Arc::new(LocalTransport::new(api.clone(), CONTROLLER_USER, &[])), "skiff-control/certificates");
        tokio::spawn(crate::certificates::run(client, api.clone(), pki))
    });
    let _stop_certificates = AbortOnDrop(certificates);
    // Every replica scrapes for itself: metrics.k8s.io is served from memory.
    let scraper = tokio::spawn(crate::apiserver::metrics_scraper::run(api.clone(), cfg.metric_resolution));
    let _stop_scraper = AbortOnDrop(Some(scraper));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                return Ok(());
            }
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let api = api.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let subject = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c: &CertificateDer<'_>| x509::subject(c));
            let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                // The audit log's sourceIPs end with the connection's address.
                req.extensions_mut().insert(crate::apiserver::audit::RemoteAddr(peer));
                let api = api.clone();
                let subject = subject.clone();
                async move { Ok::<_, std::convert::Infallible>(api.serve(req, subject).await) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(tls), svc).with_upgrades().await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// The controller manager's and the scheduler's clients: in-process, each as its own
/// user, so they get the same authentication, RBAC and validation as remote clients.
fn in_process_clients(api: &Arc<ApiServer>) -> skiff_controllers::Clients {
    let client = |user: &str, agent: &str| Client::new(Arc::new(LocalTransport::new(api.clone(), user, &[])), agent);
    skiff_controllers::Clients {
        controllers: client(CONTROLLER_USER, "skiff-control/controller-manager"),
        scheduler: client(SCHEDULER_USER, "skiff-control/scheduler"),
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// This replica's leader-election identity: the host name and an id kept in the data
/// dir, so a restarted process reclaims its own Lease at once instead of waiting for it
/// to lapse, while two replicas (two data dirs) never share one.
fn identity(data_dir: &std::path::Path) -> String {
    let path = data_dir.join("identity");
    let id = match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            if let Err(e) = std::fs::write(&path, &id) {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep the leader-election identity");
            }
            id
        }
    };
    format!("{}_{id}", hostname())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "skiff".into())
}

async fn start(cfg: &Config) -> Result<(TcpListener, Arc<ApiServer>, TlsAcceptor, Started, Pki)> {
    check_cidr("cluster-cidr", cfg.cluster_cidr)?;
    check_cidr("service-cidr", cfg.service_cidr)?;
    check_lb_pool(cfg)?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| Error::DataDir { path: cfg.data_dir.clone(), source })?;
    let backend: Arc<dyn Store> = match &cfg.etcd {
        Some(etcd) => Arc::new(EtcdStore::connect(etcd).await?),
        None => Arc::new(RedbStore::open(&cfg.data_dir.join("store.redb"))?),
    };
    let store: Arc<dyn Store> = Arc::new(TimedStore::new(backend));
    let pki = Pki::ensure(&cfg.data_dir, &cfg.sans()?)?;
    let sa_keys = Arc::new(Keys::load_or_generate(&cfg.data_dir.join("sa-signer.key"))?);
    let authn =
        Authenticator::from_token_file(&cfg.data_dir.join("tokens.csv"))?.with_service_account_keys(sa_keys.clone());
    let addr = SocketAddr::new(cfg.bind_address, cfg.port);
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
    let info = crate::apiserver::BootstrapInfo {
        service_ip: cfg.kubernetes_service_ip()?,
        dns_service_ip: cfg.dns_service_ip()?,
        advertise: cfg.advertised(),
        port: addr.port(),
    };
    crate::apiserver::bootstrap(store.as_ref(), &info).await.map_err(Error::Bootstrap)?;
    let node_token =
        crate::apiserver::ensure_bootstrap_token(store.as_ref(), &cfg.data_dir).await.map_err(Error::Bootstrap)?;
    let rbac = RbacAuthorizer::default();
    rbac.spawn_sync(store.clone());
    let authz = NodeAuthorizer::new(rbac);
    authz.spawn_sync(store.clone());
    let api = Arc::new(ApiServer::new(store, authn, Box::new(authz), cfg.service_cidr, sa_keys));
    api.spawn_sync();
    if let Some(log) = &cfg.audit_log_path {
        api.set_auditor(crate::apiserver::audit::Auditor::open(log, cfg.audit_policy_file.as_deref())?);
        tracing::info!(path = %log.display(), "writing the audit log");
    }
    api.set_kubelet_client(pki.kubelet_client_config()?);
    let acceptor = TlsAcceptor::from(pki.server_config()?);
    let server = match cfg.advertised() {
        IpAddr::V6(ip) => format!("https://[{ip}]:{}", addr.port()),
        ip => format!("https://{ip}:{}", addr.port()),
    };
    // The admin kubeconfig last: tools and tests take it as the sign that start-up is
    // done, so everything else they may read must already be there.
    let bootstrap_kubeconfig = cfg.data_dir.join("bootstrap.kubeconfig");
    let text = crate::tls::token_kubeconfig(&server, &pki.ca_cert_pem, "kubelet-bootstrap", &node_token.bearer());
    crate::tls::write_private(&bootstrap_kubeconfig, &text, true)?;
    let kubeconfig = cfg.data_dir.join("admin.kubeconfig");
    crate::tls::write_private(&kubeconfig, &pki.admin_kubeconfig(&server), true)?;
    Ok((listener, api, acceptor, Started { addr, kubeconfig, bootstrap_kubeconfig }, pki))
}
