//! How a `Client` reaches an API server: one `Transport` trait, with HTTPS (from a
//! kubeconfig or the in-cluster ServiceAccount files) here and an in-process transport
//! in skiff-control, so the scheduler and controllers see exactly the API semantics
//! (authn, RBAC, validation, conflicts) a remote client sees, without a network hop.
//!
//! It must not interpret responses: status codes and bodies are the client's business.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::kubeconfig::Credentials;
use crate::token::{self, BearerToken, TOKEN_FILE_PERIOD, TokenFile};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body as the client consumes it: streamed, so watches work.
pub type ResponseBody = BoxBody<Bytes, BoxError>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("server {server:?} is not a URL: {source}")]
    ServerUrl { server: String, source: http::uri::InvalidUri },
    #[error("server {server} must be https://")]
    NotHttps { server: String },
    #[error("server {server} has no host")]
    NoHost { server: String },
    #[error("server host {host:?} is neither a DNS name nor an IP address: {source}")]
    ServerName { host: String, source: rustls::pki_types::InvalidDnsNameError },
    #[error("no certificate-authority data: refusing to talk to an unverified server")]
    NoCa,
    #[error("bad PEM in the {what}: {source}")]
    Pem { what: &'static str, source: rustls::pki_types::pem::Error },
    #[error("the {what} is not usable: {source}")]
    Tls { what: &'static str, source: rustls::Error },
    #[error(transparent)]
    Token(#[from] token::Error),
    #[error("request path {path:?} is not a valid URI: {source}")]
    Uri { path: String, source: http::Error },
    #[error("cannot connect to the API server at {server}: {}", causes(source))]
    Connect { server: String, source: hyper_util::client::legacy::Error },
    #[error("request to {server} failed: {}", causes(source))]
    Request { server: String, source: hyper_util::client::legacy::Error },
    #[error("no response from {server} in {} s", after.as_secs())]
    Timeout { server: String, after: Duration },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// hyper-util's error says only "client error (Connect)"; what went wrong (refused,
/// TLS, reset) is in its sources, which a log line of `%error` would not show.
fn causes(e: &hyper_util::client::legacy::Error) -> String {
    let mut parts = Vec::new();
    let mut next = std::error::Error::source(e);
    while let Some(s) = next {
        parts.push(s.to_string());
        next = s.source();
    }
    if parts.is_empty() { e.to_string() } else { parts.join(": ") }
}

/// Sends one request (the URI carries only path and query) and returns the response
/// with its body still streaming.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, req: http::Request<Bytes>) -> BoxFuture<'_, Result<http::Response<ResponseBody>>>;
}

/// Requests may not take longer than this to get response headers (watches stream
/// their body afterwards, so they are not cut by it).
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept for reuse.
const MAX_IDLE: usize = 64;
/// An idle pooled connection is closed after this long (the server may close it first;
/// see `retry_canceled_requests` below for what happens then).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// HTTPS/1.1 to one API server over hyper-util's pooled client: a connection goes back
/// to the pool once its response body has been read to the end, so a long watch holds
/// one connection and short requests share the others.
pub struct HttpsTransport {
    /// `host:port` as the URI authority (IPv6 in brackets).
    authority: http::uri::Authority,
    client: PooledClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    token: Option<BearerToken>,
}

impl std::fmt::Debug for HttpsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsTransport").field("server", &self.authority).finish()
    }
}

impl HttpsTransport {
    /// Builds the transport from resolved credentials (kubeconfig or in-cluster).
    pub fn new(creds: &Credentials) -> Result<Self> {
        let uri: http::Uri =
            creds.server.parse().map_err(|source| Error::ServerUrl { server: creds.server.clone(), source })?;
        if uri.scheme_str() != Some("https") {
            return Err(Error::NotHttps { server: creds.server.clone() });
        }
        let authority = uri.authority().cloned().ok_or_else(|| Error::NoHost { server: creds.server.clone() })?;
        // Checked here so that a bad name fails at start-up, not at the first request;
        // hyper-rustls derives the same name from each request's URI.
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_err() {
            ServerName::try_from(host.to_string())
                .map_err(|source| Error::ServerName { host: host.to_string(), source })?;
        }
        let tls = tls_config(creds)?;
        let token = match (&creds.token_file, &creds.token) {
            (Some(path), initial) => {
                Some(BearerToken::File(TokenFile::new(path, initial.as_deref(), TOKEN_FILE_PERIOD)?))
            }
            (None, Some(t)) => Some(BearerToken::Fixed(token::header_value(t)?)),
            (None, None) => None,
        };

        let mut http = HttpConnector::new();
        http.enforce_http(false); // the HTTPS connector around it takes https:// URIs
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = PooledClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE)
            // A request that fails on a pooled connection the server has just closed is
            // sent again on another connection only if none of it was written: in
            // hyper-util 0.1.21 (client/legacy/client.rs) the retry happens only for
            // `TrySendError::Retryable`, built only when hyper's `take_message()` hands
            // the request back, which hyper 1.x does only for a request still queued,
            // never serialized (proto/h1/dispatch.rs `recv_msg`, client/dispatch.rs
            // `Envelope::drop`), and only on a reused connection. So a create is never
            // sent twice.
            .retry_canceled_requests(true)
            .build(https);
        Ok(Self { authority, client, token })
    }

    fn server(&self) -> String {
        self.authority.to_string()
    }

    async fn send_inner(&self, req: http::Request<Bytes>) -> Result<http::Response<ResponseBody>> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        parts.uri = http::Uri::builder()
            .scheme("https")
            .authority(self.authority.clone())
            .path_and_query(path.as_str())
            .build()
            .map_err(|source| Error::Uri { path, source })?;
        if let Some(t) = &self.token {
            parts.headers.insert(http::header::AUTHORIZATION, t.header()?);
        }
        let req = http::Request::from_parts(parts, Full::new(body));
        let resp = tokio::time::timeout(HEADER_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| Error::Timeout { server: self.server(), after: HEADER_TIMEOUT })?
            .map_err(|source| {
                if source.is_connect() {
                    Error::Connect { server: self.server(), source }
                } else {
                    Error::Request { server: self.server(), source }
                }
            })?;
        Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
    }
}

/// rustls with ring, trusting only the given CA, presenting the client certificate if
/// there is one.
fn tls_config(creds: &Credentials) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&creds.ca_pem) {
        let cert = cert.map_err(|source| Error::Pem { what: "certificate-authority", source })?;
        roots.add(cert).map_err(|source| Error::Tls { what: "certificate-authority", source })?;
    }
    if roots.is_empty() {
        return Err(Error::NoCa);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Tls { what: "TLS configuration", source })?
        .with_root_certificates(roots);
    Ok(match (&creds.client_cert_pem, &creds.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|source| Error::Pem { what: "client-certificate", source })?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|source| Error::Pem { what: "client-key", source })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| Error::Tls { what: "client certificate and key", source })?
        }
        _ => builder.with_no_client_auth(),
    })
}

impl Transport for HttpsTransport {
    fn send(&self, req: http::Request<Bytes>) -> BoxFuture<'_, Result<http::Response<ResponseBody>>> {
        Box::pin(self.send_inner(req))
    }
}
