//! The kubelet's HTTPS server (`:10250`): what the API server's `pods/log`,
//! `pods/exec`, `pods/attach` and `pods/portforward` reach through to. Routes:
//!
//! - `GET /healthz`: open to anyone.
//! - `GET /metrics`: a few counters of this server, Prometheus text format.
//! - `GET /metrics/resource`: CPU and memory of the node, pods and containers
//!   (`resource_metrics`), what `metrics.k8s.io` is fed from.
//! - `GET /containerLogs/{ns}/{pod}/{container}?follow&previous&tailLines&sinceSeconds&sinceTime&timestamps&limitBytes`
//!   (`logs`).
//! - `GET|POST /exec/{ns}/{pod}/{container}?command=..&stdin&stdout&stderr&tty`, a
//!   WebSocket upgrade (`exec`, relayed to the runtime by `remotecommand`).
//! - `GET|POST /attach/{ns}/{pod}/{container}?stdin&stdout&stderr&tty`, the same for the
//!   container's own process.
//! - `GET|POST /portForward/{ns}/{pod}`, SPDY/3.1 in a WebSocket or on its own
//!   (`portforward`, over `spdy`), connecting inside the pod's network namespace.
//!
//! Everything but `/healthz` needs a client certificate issued by the cluster CA whose
//! common name is one of `Settings::allowed_users` (the API server's kubelet-client
//! certificate) or whose groups include `system:masters`; a node's own certificate
//! (also issued by that CA) is refused.
//!
//! This module must not know how pods are run: the kubelet tells it where a container
//! and its logs are (`ContainerLocator`), and the runtime how to start an exec or attach
//! session and where a sandbox's network namespace is (`StreamingRuntime`, implemented
//! for the agent's `cri::CriClient` in `runtime`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub mod exec;
pub mod logs;
pub mod portforward;
pub mod remotecommand;
pub mod resource_metrics;
mod runtime;
pub mod spdy;
pub mod tls;

/// The group whose members may use every endpoint, as on the API server.
const MASTERS: &str = "system:masters";
/// The common name of the API server's kubelet-client certificate.
pub const APISERVER_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error a locator or runtime implementation wants to report.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A boxed future, so that the traits below stay object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The server's settings (the agent's flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to listen (`0.0.0.0:10250` on a real node).
    pub addr: SocketAddr,
    /// The node's name and addresses, for the self-signed serving certificate.
    pub node_name: String,
    pub node_ips: Vec<IpAddr>,
    /// The serving certificate and key (PEM); `None` makes a self-signed one at start.
    pub serving: Option<(String, String)>,
    /// The CA (PEM) that issues client certificates: the cluster CA.
    pub client_ca_pem: String,
    /// Certificate common names allowed in (besides group `system:masters`).
    pub allowed_users: Vec<String>,
}

impl Settings {
    /// The usual settings: `0.0.0.0:10250`, a self-signed serving certificate, and only
    /// the API server's kubelet-client certificate (issued by `client_ca_pem`) let in.
    pub fn new(node_name: &str, node_ips: Vec<IpAddr>, client_ca_pem: String) -> Self {
        Self {
            addr: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), crate::node::object::KUBELET_PORT),
            node_name: node_name.to_string(),
            node_ips,
            serving: None,
            client_ca_pem,
            allowed_users: vec![APISERVER_CLIENT_CN.to_string()],
        }
    }
}

/// Where a container of a pod on this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLocation {
    /// The CRI container id of the current (newest) instance.
    pub container_id: String,
    /// Whether that instance runs now (a follow ends when it stops).
    pub running: bool,
    /// Its CRI log file (`<pod-log-dir>/<ns>_<pod>_<uid>/<container>/<restartCount>.log`).
    pub log_path: PathBuf,
    /// The log of the instance before it, if one is kept (`--previous`).
    pub previous_log_path: Option<PathBuf>,
    /// The pod's sandbox, for port forwarding.
    pub sandbox_id: String,
    pub pod_ip: Option<IpAddr>,
}

/// Why a container could not be found; each says what to do in its message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LocateError {
    #[error("pod {namespace}/{pod} is not on this node")]
    PodNotFound { namespace: String, pod: String },
    #[error("container {container} is not valid for pod {pod}, choose one of: [{}]", available.join(" "))]
    ContainerNotFound { pod: String, container: String, available: Vec<String> },
    #[error("a container name must be specified for pod {pod}, choose one of: [{}]", available.join(" "))]
    ContainerNameRequired { pod: String, available: Vec<String> },
    #[error("container {container} of pod {pod} has not been created yet")]
    NotCreated { pod: String, container: String },
}

/// The kubelet's view of its pods, implemented by the kubelet from its state.
pub trait ContainerLocator: Send + Sync + 'static {
    /// The container `container` (None: the pod's only container, else an error
    /// listing them) of pod `namespace`/`pod` on this node.
    fn locate(&self, namespace: &str, pod: &str, container: Option<&str>) -> Result<ContainerLocation, LocateError>;

    /// The pod's sandbox and IP (for port-forward); by default what `locate` says of
    /// its only or first container.
    fn sandbox(&self, namespace: &str, pod: &str) -> Result<ContainerLocation, LocateError> {
        match self.locate(namespace, pod, None) {
            Err(LocateError::ContainerNameRequired { available, .. }) if !available.is_empty() => {
                self.locate(namespace, pod, Some(&available[0]))
            }
            r => r,
        }
    }
}

/// What CRI `Exec` is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// What CRI `Attach` is asked for (`tty` must be the container's own setting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// The runtime's streaming side, implemented over the CRI.
pub trait StreamingRuntime: Send + Sync + 'static {
    /// CRI `Exec`: the URL of the runtime's streaming server (containerd's, on
    /// 127.0.0.1 of the node) for this one session.
    fn exec(&self, req: ExecRequest) -> BoxFuture<'_, Result<String, BoxError>>;

    /// CRI `Attach`: the same for a session with the container's own process.
    fn attach(&self, req: AttachRequest) -> BoxFuture<'_, Result<String, BoxError>>;

    /// A file that names the sandbox's network namespace (to `setns` into), for port
    /// forwarding to the pod's `localhost`; `None` if the runtime does not say (the
    /// pod's IP is dialled from the node then).
    fn sandbox_netns(&self, sandbox_id: &str) -> BoxFuture<'_, Result<Option<PathBuf>, BoxError>>;
}

/// Response bodies: whole or streamed.
pub type Body = BoxBody<Bytes, std::convert::Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    msg.push('\n');
    Response::builder().status(code).header(header::CONTENT_TYPE, "text/plain").body(full(msg)).unwrap()
}

/// The HTTP status a locate error answers with.
fn locate_error(e: &LocateError) -> Response<Body> {
    let code = match e {
        LocateError::PodNotFound { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    text(code, e.to_string())
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Metrics {
    requests: AtomicU64,
    refused: AtomicU64,
    log_requests: AtomicU64,
    exec_sessions: AtomicU64,
    attach_sessions: AtomicU64,
    port_forwards: AtomicU64,
}

/// What every request handler shares.
struct Shared {
    settings: Settings,
    locator: Arc<dyn ContainerLocator>,
    runtime: Arc<dyn StreamingRuntime>,
    metrics: Metrics,
    stats: Option<Arc<dyn resource_metrics::ResourceStats>>,
}

/// A bound server, not yet serving (so a caller can learn the port first).
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    settings: Settings,
    stats: Option<Arc<dyn resource_metrics::ResourceStats>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.listener.local_addr().ok()).finish_non_exhaustive()
    }
}

impl Server {
    /// Builds the TLS configuration and binds `settings.addr`.
    pub async fn bind(settings: Settings) -> Result<Self> {
        let acceptor = TlsAcceptor::from(tls::server_config(&settings)?);
        let addr = settings.addr;
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
        Ok(Self { listener, acceptor, settings, stats: None })
    }

    /// Serves `/metrics/resource` from `stats`.
    pub fn with_resource_stats(mut self, stats: Arc<dyn resource_metrics::ResourceStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` completes; sessions in flight end with the runtime.
    pub async fn run(
        self,
        locator: Arc<dyn ContainerLocator>,
        runtime: Arc<dyn StreamingRuntime>,
        shutdown: impl Future<Output = ()>,
    ) {
        let shared = Arc::new(Shared {
            settings: self.settings,
            locator,
            runtime,
            metrics: Metrics::default(),
            stats: self.stats,
        });
        tracing::info!(addr = ?self.listener.local_addr().ok(), "kubelet server listening");
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => return,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "kubelet server: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(connection(shared.clone(), self.acceptor.clone(), tcp, peer));
        }
    }
}

/// Binds and serves until `shutdown`: the one call the agent makes.
pub async fn serve(
    settings: Settings,
    locator: Arc<dyn ContainerLocator>,
    runtime: Arc<dyn StreamingRuntime>,
    stats: Arc<dyn resource_metrics::ResourceStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    Server::bind(settings).await?.with_resource_stats(stats).run(locator, runtime, shutdown).await;
    Ok(())
}

async fn connection(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: tokio::net::TcpStream, peer: SocketAddr) {
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "kubelet server: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let subject = tls::peer_subject(tls.get_ref().1);
    let allowed = subject.as_ref().is_some_and(|s| {
        s.organizations.iter().any(|o| o == MASTERS)
            || s.common_name.as_ref().is_some_and(|cn| shared.settings.allowed_users.contains(cn))
    });
    let user = subject.and_then(|s| s.common_name).unwrap_or_default();
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let user = user.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let resp = handle(&shared, req, allowed).await;
            tracing::debug!(%method, %path, %user, code = resp.status().as_u16(), "kubelet request");
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(tls), svc).with_upgrades().await {
        tracing::debug!(%peer, error = %e, "kubelet server: connection ended with an error");
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>, allowed: bool) -> Response<Body> {
    shared.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.as_slice() == ["healthz"] {
        return text(StatusCode::OK, "ok");
    }
    if !allowed {
        shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
        return text(StatusCode::FORBIDDEN, "Forbidden: this endpoint is for the API server's kubelet client");
    }
    let is_get = req.method() == Method::GET;
    match segs.as_slice() {
        ["metrics"] if is_get => metrics(&shared.metrics),
        ["metrics", "resource"] if is_get => resource_metrics::serve(shared.stats.as_ref()).await,
        ["containerLogs", ns, pod, container] if is_get => {
            shared.metrics.log_requests.fetch_add(1, Ordering::Relaxed);
            let query = query_map(req.uri().query());
            logs::serve_logs(shared.locator.clone(), ns, pod, container, &query).await
        }
        ["exec", ns, pod, container] if is_get || req.method() == Method::POST => {
            shared.metrics.exec_sessions.fetch_add(1, Ordering::Relaxed);
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            exec::serve(shared, exec::Kind::Exec, req, &ns, &pod, &container).await
        }
        ["attach", ns, pod, container] if is_get || req.method() == Method::POST => {
            shared.metrics.attach_sessions.fetch_add(1, Ordering::Relaxed);
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            exec::serve(shared, exec::Kind::Attach, req, &ns, &pod, &container).await
        }
        ["portForward", ns, pod] if is_get || req.method() == Method::POST => {
            shared.metrics.port_forwards.fetch_add(1, Ordering::Relaxed);
            let (ns, pod) = (ns.to_string(), pod.to_string());
            portforward::serve_portforward(shared, req, &ns, &pod).await
        }
        ["exec" | "attach" | "containerLogs" | "portForward", ..] => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, format!("{path} not found")),
    }
}

fn metrics(m: &Metrics) -> Response<Body> {
    let body = format!(
        "# TYPE skiff_kubelet_server_requests_total counter\nskiff_kubelet_server_requests_total {}\n\
         # TYPE skiff_kubelet_server_refused_total counter\nskiff_kubelet_server_refused_total {}\n\
         # TYPE skiff_kubelet_server_log_requests_total counter\nskiff_kubelet_server_log_requests_total {}\n\
         # TYPE skiff_kubelet_server_exec_sessions_total counter\nskiff_kubelet_server_exec_sessions_total {}\n\
         # TYPE skiff_kubelet_server_attach_sessions_total counter\nskiff_kubelet_server_attach_sessions_total {}\n\
         # TYPE skiff_kubelet_server_port_forwards_total counter\nskiff_kubelet_server_port_forwards_total {}\n",
        m.requests.load(Ordering::Relaxed),
        m.refused.load(Ordering::Relaxed),
        m.log_requests.load(Ordering::Relaxed),
        m.exec_sessions.load(Ordering::Relaxed),
        m.attach_sessions.load(Ordering::Relaxed),
        m.port_forwards.load(Ordering::Relaxed),
    ) + &crate::metrics::render();
    Response::builder().header(header::CONTENT_TYPE, "text/plain; version=0.0.4").body(full(body)).unwrap()
}

/// The query as a map of each key's last value (exec reads its repeated `command`
/// itself).
fn query_map(q: Option<&str>) -> HashMap<String, String> {
    q.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

/// A boolean query parameter the way the API server's conversion reads it.
fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    matches!(query.get(key).map(String::as_str), Some("true" | "1" | "True" | "TRUE"))
}
