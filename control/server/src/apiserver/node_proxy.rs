//! The subresources that reach through to a node's kubelet: `pods/log`, `pods/exec`,
//! `pods/attach`, `pods/portforward` and `nodes/proxy`. The API server authenticates
//! and authorizes the request, finds the pod's node (`spec.nodeName`) and the kubelet's
//! address on it (the Node's InternalIP and `status.daemonEndpoints.kubeletEndpoint`),
//! and forwards the request over HTTPS with its kubelet-client certificate
//! (`tls::kubelet_client`). Responses stream back as they come (`logs -f`); an upgrade
//! (the WebSocket of `kubectl exec`) is answered with the kubelet's 101 and the two
//! connections are then joined byte for byte: the kubelet speaks the stream protocol.
//!
//! Authorization follows upstream: `get` on `pods/log`; `create` on `pods/exec`,
//! `pods/attach` and `pods/portforward` (and also `get` for the WebSocket GET, which
//! upstream checks first); the HTTP method's verb on `nodes/proxy`.
//!
//! It must not interpret the streams, nor know what the kubelet does with them.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use super::api_server::ApiServer;
use super::object::to_obj;
use super::request::{Resp, error_response};
use super::resource_def::ResourceDef;
use super::resources;
use super::status::{ApiError, ApiResult};
use crate::auth::UserInfo;
use crate::auth::authz::{Attributes, Decision};

/// The kubelet port when a Node does not say.
const DEFAULT_KUBELET_PORT: u16 = 10250;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Until the kubelet's response headers (a follow sends them at once).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The headers an upgrade needs on its way to the kubelet and back.
const UPGRADE_HEADERS: [HeaderName; 6] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_ACCEPT,
];
const STREAM_PROTOCOL: &str = "x-stream-protocol-version";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Log,
    Exec,
    Attach,
    PortForward,
    NodeProxy,
}

/// A request for one of the connect subresources.
#[derive(Debug)]
pub(crate) struct ProxyTarget {
    kind: Kind,
    namespace: Option<String>,
    name: String,
    /// The path below `nodes/NAME/proxy`.
    rest: String,
}

impl ProxyTarget {
    /// Whether `path` names a connect subresource, and which.
    pub(crate) fn parse(path: &str) -> Option<Self> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (kind, namespace, name, rest) = match segs.as_slice() {
            ["api", "v1", "namespaces", ns, "pods", name, sub] => {
                let kind = match *sub {
                    "log" => Kind::Log,
                    "exec" => Kind::Exec,
                    "attach" => Kind::Attach,
                    "portforward" => Kind::PortForward,
                    _ => return None,
                };
                (kind, Some(ns.to_string()), *name, String::new())
            }
            ["api", "v1", "nodes", name, "proxy", rest @ ..] => (Kind::NodeProxy, None, *name, rest.join("/")),
            _ => return None,
        };
        Some(Self { kind, namespace, name: name.to_string(), rest })
    }

    /// How the request metrics label this request (upstream counts them as CONNECT).
    pub(crate) fn metric_labels(&self) -> crate::metrics::RequestLabels {
        crate::metrics::RequestLabels {
            verb: "CONNECT",
            version: "v1".into(),
            resource: if self.kind == Kind::NodeProxy { "nodes" } else { "pods" }.into(),
            subresource: self.subresource().into(),
            scope: "resource",
            ..Default::default()
        }
    }

    fn subresource(&self) -> &'static str {
        match self.kind {
            Kind::Log => "log",
            Kind::Exec => "exec",
            Kind::Attach => "attach",
            Kind::PortForward => "portforward",
            Kind::NodeProxy => "proxy",
        }
    }

    /// The verbs RBAC must allow, in the order upstream checks them.
    fn verbs(&self, method: &Method) -> ApiResult<Vec<&'static str>> {
        let by_method = match *method {
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => return Err(ApiError::method_not_allowed(method.as_str())),
        };
        Ok(match self.kind {
            Kind::Log if by_method == "get" => vec!["get"],
            Kind::Log => return Err(ApiError::method_not_allowed(method.as_str())),
            Kind::Exec | Kind::Attach | Kind::PortForward if by_method == "get" => vec!["get", "create"],
            Kind::Exec | Kind::Attach | Kind::PortForward if by_method == "create" => vec!["create"],
            Kind::Exec | Kind::Attach | Kind::PortForward => {
                return Err(ApiError::method_not_allowed(method.as_str()));
            }
            Kind::NodeProxy => vec![by_method],
        })
    }

    fn authorize(&self, api: &ApiServer, user: &UserInfo, method: &Method) -> ApiResult<()> {
        let resource = if self.kind == Kind::NodeProxy { "nodes" } else { "pods" };
        for verb in self.verbs(method)? {
            let attrs = Attributes::Resource {
                verb: verb.to_string(),
                group: String::new(),
                resource: resource.to_string(),
                subresource: Some(self.subresource().to_string()),
                namespace: self.namespace.clone(),
                name: Some(self.name.clone()),
            };
            if let Decision::Deny(why) = api.authz.authorize(user, &attrs) {
                return Err(ApiError::forbidden(format!("{resource} \"{}\" is forbidden: {why}", self.name)));
            }
        }
        Ok(())
    }
}

impl ApiServer {
    /// Serves one connect-subresource request of an authenticated user.
    pub(crate) async fn node_proxy<B>(&self, req: Request<B>, target: ProxyTarget, user: &UserInfo) -> Resp
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.node_proxy_inner(req, &target, user).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    }

    async fn node_proxy_inner<B>(&self, mut req: Request<B>, target: &ProxyTarget, user: &UserInfo) -> ApiResult<Resp>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        target.authorize(self, user, req.method())?;
        let query = req.uri().query().unwrap_or_default().to_string();
        let (node, path) = match (target.kind, &target.namespace) {
            (Kind::NodeProxy, _) => (target.name.clone(), format!("/{}", target.rest)),
            (kind, Some(ns)) => {
                let pod = self.read(resources::find("", "v1", "pods"), Some(ns), &target.name).await?;
                let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
                if node.is_empty() {
                    return Err(ApiError::bad_request(format!("pod {} does not have a host assigned", target.name)));
                }
                let path = match kind {
                    Kind::PortForward => format!("/portForward/{ns}/{}", target.name),
                    _ => {
                        let container = container_of(&pod, &target.name, &query)?;
                        let prefix = match kind {
                            Kind::Log => "containerLogs",
                            Kind::Attach => "attach",
                            _ => "exec",
                        };
                        format!("/{prefix}/{ns}/{}/{container}", target.name)
                    }
                };
                (node.to_string(), path)
            }
            (_, None) => return Err(ApiError::path_not_found()),
        };
        let node_obj = self.read(resources::find("", "v1", "nodes"), None, &node).await?;
        let (host, port) = kubelet_address(&node_obj)
            .ok_or_else(|| ApiError::bad_request(format!("node {node} has no address for its kubelet")))?;
        let forwarded_query = forwarded_query(target.kind, &query);
        let uri = if forwarded_query.is_empty() { path } else { format!("{path}?{forwarded_query}") };
        let is_upgrade = req.headers().contains_key(header::UPGRADE);
        let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
        let mut out =
            Request::builder().method(req.method().clone()).uri(&uri).header(header::HOST, format!("{host}:{port}"));
        for h in UPGRADE_HEADERS.iter().chain([&header::CONTENT_TYPE, &header::ACCEPT]) {
            for v in req.headers().get_all(h) {
                out = out.header(h, v);
            }
        }
        for v in req.headers().get_all(STREAM_PROTOCOL) {
            out = out.header(STREAM_PROTOCOL, v);
        }
        let body = req.into_body().map_err(Into::into).boxed_unsync();
        let out = out.body(body).map_err(|e| ApiError::bad_request(format!("cannot forward the request: {e}")))?;
        let tls = self.kubelet_tls.get().cloned().ok_or_else(|| {
            ApiError::internal("this API server has no kubelet client certificate configured".to_string())
        })?;
        tracing::debug!(%node, %host, port, uri = %uri, "forwarding to the kubelet");
        let mut resp = send(tls, &host, port, out).await.map_err(|e| {
            ApiError::internal(format!("error talking to the kubelet of node {node} at {host}:{port}: {e}"))
        })?;
        let mut back = Response::builder().status(resp.status());
        for h in UPGRADE_HEADERS.iter().chain([&header::CONTENT_TYPE]) {
            for v in resp.headers().get_all(h) {
                back = back.header(h, v);
            }
        }
        if let Some(v) = resp.headers().get(STREAM_PROTOCOL) {
            back = back.header(STREAM_PROTOCOL, v);
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let backend = hyper::upgrade::on(&mut resp);
            let client = client_upgrade.ok_or_else(|| ApiError::internal("the kubelet upgraded a plain request"))?;
            tokio::spawn(join_upgrades(client, backend));
            return Ok(back.body(super::request::full(Bytes::new())).unwrap());
        }
        Ok(back.body(EndOnError(resp.into_body()).boxed()).unwrap())
    }

    async fn read(&self, def: Option<&'static ResourceDef>, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let def = def.ok_or_else(ApiError::path_not_found)?;
        let kv = self
            .store
            .get(&def.key(ns, name))
            .await?
            .ok_or_else(|| ApiError::not_found(def.plural, def.group, name))?;
        to_obj(&kv)
    }
}

/// The container a pod request is for: the `container` parameter, or the pod's only
/// container. Errors say which containers there are, as upstream's do.
fn container_of(pod: &Value, pod_name: &str, query: &str) -> ApiResult<String> {
    let names: Vec<&str> = ["/spec/containers", "/spec/initContainers", "/spec/ephemeralContainers"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let asked = form_urlencoded::parse(query.as_bytes()).find(|(k, v)| k == "container" && !v.is_empty());
    match asked {
        Some((_, c)) if names.contains(&&*c) => Ok(c.into_owned()),
        Some((_, c)) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {pod_name}"))),
        None => {
            let main: Vec<&str> = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            match main.as_slice() {
                [only] => Ok(only.to_string()),
                _ => Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                    names.join(" ")
                ))),
            }
        }
    }
}

/// The query the kubelet gets: the options it understands, in order, repeats kept
/// (`command` repeats once per argument).
fn forwarded_query(kind: Kind, query: &str) -> String {
    const LOG: &[&str] = &["follow", "previous", "timestamps", "tailLines", "sinceSeconds", "sinceTime", "limitBytes"];
    const STREAM: &[&str] = &["command", "stdin", "stdout", "stderr", "tty"];
    const PORTS: &[&str] = &["port", "ports"];
    let keep: Option<&[&str]> = match kind {
        Kind::Log => Some(LOG),
        Kind::Exec | Kind::Attach => Some(STREAM),
        Kind::PortForward => Some(PORTS),
        Kind::NodeProxy => None,
    };
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if keep.is_none_or(|keep| keep.contains(&&*k)) {
            out.append_pair(&k, &v);
        }
    }
    out.finish()
}

/// The kubelet's host and port from a Node: its InternalIP (else any address) and
/// `status.daemonEndpoints.kubeletEndpoint.Port`.
pub(super) fn kubelet_address(node: &Value) -> Option<(String, u16)> {
    let addrs = node.pointer("/status/addresses").and_then(Value::as_array)?;
    let pick = |t: &str| addrs.iter().find(|a| a["type"] == t).and_then(|a| a["address"].as_str());
    let host = pick("InternalIP").or_else(|| pick("ExternalIP")).or_else(|| pick("Hostname"))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some((host.to_string(), port))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type OutBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// One request on a new TLS connection to the kubelet (upgrades keep the connection).
pub(super) async fn send(
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
    req: Request<OutBody>,
) -> Result<Response<Incoming>, BoxError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| "connection timed out")??;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out")??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "kubelet connection ended with an error");
        }
    });
    let resp =
        tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(req)).await.map_err(|_| "no response in time")??;
    Ok(resp)
}

/// Joins the client's upgraded connection to the kubelet's until either side ends.
async fn join_upgrades(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    let (client, backend) = match tokio::join!(client, backend) {
        (Ok(c), Ok(b)) => (c, b),
        (c, b) => {
            tracing::info!(client = ?c.err(), kubelet = ?b.err(), "an upgraded stream did not come up");
            return;
        }
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %e, "an upgraded stream ended with an error");
    }
}

/// A kubelet response body whose failure (the kubelet went) just ends the stream: the
/// status line has been sent, so there is nothing better to tell the client.
struct EndOnError(Incoming);

impl hyper::body::Body for EndOnError {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match ready!(Pin::new(&mut self.0).poll_frame(cx)) {
            Some(Ok(f)) => Poll::Ready(Some(Ok(f))),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "the kubelet's response ended early");
                Poll::Ready(None)
            }
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_and_queries() {
        let t = ProxyTarget::parse("/api/v1/namespaces/default/pods/web/exec").unwrap();
        assert_eq!((t.kind, t.namespace.as_deref(), t.name.as_str()), (Kind::Exec, Some("default"), "web"));
        assert!(ProxyTarget::parse("/api/v1/namespaces/default/pods/web/status").is_none());
        assert!(ProxyTarget::parse("/api/v1/namespaces/default/pods/web").is_none());
        let t = ProxyTarget::parse("/api/v1/nodes/n1/proxy/metrics").unwrap();
        assert_eq!((t.kind, t.rest.as_str()), (Kind::NodeProxy, "metrics"));
        assert_eq!(t.verbs(&Method::GET).unwrap(), ["get"]);
        let exec = ProxyTarget::parse("/api/v1/namespaces/default/pods/web/exec").unwrap();
        assert_eq!(exec.verbs(&Method::GET).unwrap(), ["get", "create"]);
        assert_eq!(
            forwarded_query(Kind::Exec, "command=a&command=b%20c&container=x&stdout=true"),
            "command=a&command=b+c&stdout=true"
        );
        assert_eq!(forwarded_query(Kind::Log, "container=x&follow=true&tailLines=3"), "follow=true&tailLines=3");
        let attach = ProxyTarget::parse("/api/v1/namespaces/default/pods/web/attach").unwrap();
        assert_eq!((attach.kind, attach.subresource()), (Kind::Attach, "attach"));
        assert_eq!(attach.verbs(&Method::POST).unwrap(), ["create"]);
        assert_eq!(
            forwarded_query(Kind::Attach, "container=r&stdin=true&stdout=true&tty=false"),
            "stdin=true&stdout=true&tty=false"
        );
    }

    #[test]
    fn containers_and_addresses() {
        let pod = json!({"spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "init"}]}});
        assert_eq!(container_of(&pod, "p", "").unwrap(), "app");
        assert_eq!(container_of(&pod, "p", "container=init").unwrap(), "init");
        assert!(
            container_of(&pod, "p", "container=nope").unwrap_err().to_status()["message"]
                .as_str()
                .unwrap()
                .contains("not valid")
        );
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let msg = container_of(&two, "p", "").unwrap_err().to_status()["message"].as_str().unwrap().to_string();
        assert!(msg.contains("choose one of: [a b]"), "{msg}");
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 11250}}}});
        assert_eq!(kubelet_address(&node), Some(("10.0.0.5".to_string(), 11250)));
        let bare = json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.6"}]}});
        assert_eq!(kubelet_address(&bare), Some(("10.0.0.6".to_string(), 10250)));
    }
}
