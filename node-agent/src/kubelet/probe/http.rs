//! The HTTP/1 client behind httpGet probes and hooks: one connection per request
//! (`Connection: close`), the body read up to [`MAX_OUTPUT`] bytes, redirects followed
//! only to the same host (at most ten), HTTPS without certificate verification (a probe
//! checks that the container answers, not who it is; upstream does the same).
//!
//! It must not keep connections or state between attempts: each attempt starts clean,
//! so a container that stops accepting connections fails at once.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::HTTPGetAction;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use skiff_api::insecure_tls::AcceptAnyServerCertificate;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::target::{HandlerTarget, MAX_OUTPUT};
use super::{Error, ProbeOutcome, Result};

/// The User-Agent upstream probes send, with the API version this build speaks.
pub const USER_AGENT: &str = "kube-probe/1.33";

/// Redirects followed before giving up, as Go's HTTP client (which upstream uses) does.
pub const MAX_REDIRECTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// How an answer is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpCheck {
    /// Probes: success is 200 ≤ status < 400.
    Probe,
    /// Hooks: any answer means the hook was delivered, whatever its status, as upstream
    /// (only a failure to get an answer fails the hook).
    Lifecycle,
}

/// One GET, resolved: where to connect and what to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// The origin-form target: path and query, always starting with '/'.
    pub target: String,
    /// httpHeaders, in order; a `Host` among them replaces the Host header.
    pub headers: Vec<(String, String)>,
}

/// What came back, body cut at [`MAX_OUTPUT`] bytes.
#[derive(Debug, Clone)]
pub struct ProbeResponse {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: Vec<u8>,
    /// Whether a redirect was left unfollowed because it pointed to another host.
    pub redirect_not_followed: bool,
}

impl ProbeRequest {
    /// Resolves host (default: the pod IP), port (number or the name of a container
    /// port) and path of an httpGet action.
    pub fn from_action(action: &HTTPGetAction, target: &HandlerTarget) -> Result<Self> {
        let scheme = match action.scheme.as_deref().unwrap_or("HTTP") {
            s if s.eq_ignore_ascii_case("http") => Scheme::Http,
            s if s.eq_ignore_ascii_case("https") => Scheme::Https,
            other => return Err(Error::UnsupportedScheme(other.to_owned())),
        };
        let path = action.path.as_deref().unwrap_or_default();
        let target_path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('/') => p.to_owned(),
            p => format!("/{p}"),
        };
        Ok(Self {
            scheme,
            host: target.host(action.host.as_ref())?,
            port: target.resolve_port(&action.port)?,
            target: target_path,
            headers: action.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect(),
        })
    }

    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme.as_str(), join_host_port(&self.host, self.port), self.target)
    }

    fn build(&self) -> Result<Request<Empty<Bytes>>> {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| Error::InvalidRequest(e.into()))?;
            let value = HeaderValue::from_str(value).map_err(|e| Error::InvalidRequest(e.into()))?;
            headers.append(name, value);
        }
        let defaults = [
            (header::HOST, join_host_port(&self.host, self.port)),
            (header::USER_AGENT, USER_AGENT.to_owned()),
            (header::ACCEPT, "*/*".to_owned()),
        ];
        for (name, value) in defaults {
            if !headers.contains_key(&name) {
                let value = HeaderValue::try_from(value).map_err(|e| Error::InvalidRequest(e.into()))?;
                headers.insert(name, value);
            }
        }
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let mut request = Request::get(self.target.as_str()).body(Empty::new()).map_err(Error::InvalidRequest)?;
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// The request a Location header points to, relative to this one.
    fn follow(&self, location: &str) -> Result<Self> {
        let bad = || Error::BadRedirect(location.to_owned());
        let mut next = self.clone();
        // Go's client does not carry a Host override to the next hop.
        next.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("host"));
        let absolute = if let Some(rest) = location.strip_prefix("//") {
            Some(format!("{}://{rest}", self.scheme.as_str()))
        } else if has_scheme(location) {
            Some(location.to_owned())
        } else {
            None
        };
        match absolute {
            Some(url) => {
                let uri: http::Uri = url.parse().map_err(|_| bad())?;
                next.scheme = match uri.scheme_str() {
                    Some("http") => Scheme::Http,
                    Some("https") => Scheme::Https,
                    _ => return Err(bad()),
                };
                let authority = uri.authority().ok_or_else(bad)?;
                next.host = authority.host().trim_matches(['[', ']']).to_owned();
                next.port = authority.port_u16().unwrap_or(next.scheme.default_port());
                next.target = uri
                    .path_and_query()
                    .map(|pq| pq.as_str())
                    .filter(|pq| pq.starts_with('/'))
                    .unwrap_or("/")
                    .to_owned();
            }
            None if location.starts_with('/') => next.target = location.to_owned(),
            None => {
                let path = self.target.split('?').next().unwrap_or("/");
                let dir = &path[..=path.rfind('/').unwrap_or(0)];
                next.target = format!("{dir}{location}");
            }
        }
        Ok(next)
    }
}

/// Whether a reference starts with a URI scheme ("http:", "https:", ...), so that
/// "/login?next=http://x" stays a path.
fn has_scheme(reference: &str) -> bool {
    reference.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// `host:port`, with brackets around IPv6 addresses.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// Runs the request within `timeout` (connection, redirects and body together) and
/// judges the answer.
pub async fn check(request: &ProbeRequest, timeout: Duration, check: HttpCheck) -> ProbeOutcome {
    let url = request.url();
    let response = match tokio::time::timeout(timeout, get(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return ProbeOutcome::Failure(format!("Get {url:?}: {error}")),
        Err(_) => {
            return ProbeOutcome::Failure(format!("Get {url:?}: {}", Error::Timeout(timeout)));
        }
    };
    let status = response.status.as_u16();
    tracing::debug!(%url, status, body = %String::from_utf8_lossy(&response.body), "HTTP handler answered");
    if check == HttpCheck::Lifecycle || (200..400).contains(&status) {
        if response.redirect_not_followed {
            tracing::info!(%url, status, location = ?response.location, "probe redirected to another host; not followed, counted as success");
        }
        ProbeOutcome::Success
    } else {
        ProbeOutcome::Failure(format!("HTTP probe failed with statuscode: {status}"))
    }
}

/// GETs the request, following redirects that stay on the same host.
pub async fn get(request: &ProbeRequest) -> Result<ProbeResponse> {
    let mut current = request.clone();
    let mut redirects = 0;
    loop {
        let mut response = exchange(&current).await?;
        let next = match (&response.location, response.status.is_redirection()) {
            (Some(location), true) => current.follow(location)?,
            _ => return Ok(response),
        };
        if !next.host.eq_ignore_ascii_case(&request.host) {
            response.redirect_not_followed = true;
            return Ok(response);
        }
        if redirects == MAX_REDIRECTS {
            return Err(Error::TooManyRedirects(MAX_REDIRECTS));
        }
        redirects += 1;
        tracing::debug!(from = %current.url(), to = %next.url(), "following probe redirect");
        current = next;
    }
}

async fn exchange(request: &ProbeRequest) -> Result<ProbeResponse> {
    let addr = join_host_port(&request.host, request.port);
    let tcp = TcpStream::connect((request.host.as_str(), request.port))
        .await
        .map_err(|source| Error::Connect { addr: addr.clone(), source })?;
    match request.scheme {
        Scheme::Http => send(tcp, request).await,
        Scheme::Https => {
            let name = ServerName::try_from(request.host.clone())
                .map_err(|source| Error::ServerName { name: request.host.clone(), source })?;
            let tls = tokio_rustls::TlsConnector::from(tls_config()?)
                .connect(name, tcp)
                .await
                .map_err(|source| Error::TlsHandshake { addr, source })?;
            send(tls, request).await
        }
    }
}

/// One request on a fresh connection.
async fn send<S>(io: S, request: &ProbeRequest) -> Result<ProbeResponse>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(Error::Http)?;
    let request = request.build()?;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(Error::Http)?;
        let (parts, body) = response.into_parts();
        let location = parts.headers.get(header::LOCATION).and_then(|value| value.to_str().ok()).map(str::to_owned);
        Ok(ProbeResponse {
            status: parts.status,
            location,
            body: read_body(body).await?.0,
            redirect_not_followed: false,
        })
    };
    drive(conn, exchange).await
}

/// Runs an exchange while driving its connection. The connection is driven here rather
/// than spawned, so that the caller's timeout (dropping this future) closes it.
pub(super) async fn drive<T>(
    conn: impl Future<Output = hyper::Result<()>>,
    exchange: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(conn, exchange);
    tokio::select! {
        biased;
        out = &mut exchange => out,
        ended = &mut conn => match ended {
            Err(error) => Err(Error::Http(error)),
            // The connection is done; the exchange has what it will get.
            Ok(()) => exchange.await,
        },
    }
}

/// Reads at most [`MAX_OUTPUT`] bytes of the body, and the trailers when the body ends
/// within that; the rest is dropped with the connection.
pub(super) async fn read_body(mut body: Incoming) -> Result<(Vec<u8>, Option<HeaderMap>)> {
    let mut out = Vec::new();
    while out.len() < MAX_OUTPUT {
        let Some(frame) = body.frame().await else {
            break;
        };
        match frame.map_err(Error::Http)?.into_data() {
            Ok(data) => {
                let take = data.len().min(MAX_OUTPUT - out.len());
                out.extend_from_slice(&data[..take]);
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return Ok((out, Some(trailers)));
                }
            }
        }
    }
    Ok((out, None))
}

/// One client configuration for every HTTPS probe: no certificate verification (the
/// handshake signatures are still checked, so the peer holds the key of the certificate
/// it shows), HTTP/1.1 only.
fn tls_config() -> Result<Arc<ClientConfig>> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AcceptAnyServerCertificate::new(&provider));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::TlsConfig)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}
