//! How a `Client` reaches an API server: one `Transport` trait, with HTTPS (from a
//! kubeconfig) here and an in-process transport in skiff-control, so the scheduler and
//! controllers see exactly the API semantics (authn, RBAC, validation, conflicts) a
//! remote client sees, without a network hop.
//!
//! It must not interpret responses: status codes and bodies are the client's business.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::kubeconfig::Credentials;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body as the client consumes it: streamed, so watches work.
pub type ResponseBody = BoxBody<Bytes, BoxError>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the API server at {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("request to {server} failed: {reason}")]
    Request { server: String, reason: String },
    #[error("bad TLS material in the kubeconfig: {0}")]
    Tls(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Sends one request (the URI carries only path and query) and returns the response
/// with its body still streaming.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, req: http::Request<Bytes>) -> BoxFuture<'_, Result<http::Response<ResponseBody>>>;
}

/// Requests may not take longer than this to get response headers (watches stream
/// their body afterwards, so they are not cut by it).
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept for reuse.
const MAX_IDLE: usize = 64;

/// HTTPS/1.1 to one API server with a small connection pool: a connection is reused
/// once its previous response body has been read to the end.
pub struct HttpsTransport {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    authorization: Option<http::HeaderValue>,
    pool: Mutex<Vec<SendRequest<http_body_util::Full<Bytes>>>>,
}

impl std::fmt::Debug for HttpsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsTransport").field("host", &self.host).field("port", &self.port).finish()
    }
}

impl HttpsTransport {
    /// Builds the transport from resolved kubeconfig credentials.
    pub fn new(creds: &Credentials) -> Result<Self> {
        let uri: http::Uri =
            creds.server.parse().map_err(|e| Error::Tls(format!("server {:?} is not a URL: {e}", creds.server)))?;
        if uri.scheme_str() != Some("https") {
            return Err(Error::Tls(format!("server {} must be https://", creds.server)));
        }
        let host = uri.host().ok_or_else(|| Error::Tls(format!("server {} has no host", creds.server)))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.clone()).map_err(|e| Error::Tls(format!("server name {host}: {e}")))?,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&creds.ca_pem) {
            let cert = cert.map_err(|e| Error::Tls(format!("certificate-authority: {e}")))?;
            roots.add(cert).map_err(|e| Error::Tls(format!("certificate-authority: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls("no certificate-authority data: refusing to talk to an unverified server".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&creds.client_cert_pem, &creds.client_key_pem) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::Tls(format!("client-certificate: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| Error::Tls(format!("client-key: {e}")))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| Error::Tls(format!("client certificate: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        let authorization = match &creds.token {
            Some(t) => Some(
                http::HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| Error::Tls("the token contains characters not allowed in a header".into()))?,
            ),
            None => None,
        };
        Ok(Self {
            host,
            port,
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            authorization,
            pool: Mutex::new(Vec::new()),
        })
    }

    fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    async fn connect(&self) -> Result<SendRequest<http_body_util::Full<Bytes>>> {
        let err = |reason: String| Error::Connect { server: self.server(), reason };
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| err("timed out after 10 s".into()))?
        .map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = self.tls.connect(self.server_name.clone(), tcp).await.map_err(|e| err(format!("TLS: {e}")))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| err(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "API connection closed");
            }
        });
        Ok(sender)
    }

    /// An idle pooled connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<http_body_util::Full<Bytes>>> {
        {
            let mut pool = self.pool.lock().unwrap();
            pool.retain(|s| !s.is_closed());
            if let Some(i) = pool.iter().position(|s| s.is_ready()) {
                return Ok(pool.swap_remove(i));
            }
        }
        self.connect().await
    }

    async fn send_inner(&self, req: http::Request<Bytes>) -> Result<http::Response<ResponseBody>> {
        let (mut parts, body) = req.into_parts();
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(&self.server()).unwrap_or(http::HeaderValue::from_static("kubernetes")),
        );
        if let Some(a) = &self.authorization {
            parts.headers.insert(http::header::AUTHORIZATION, a.clone());
        }
        let mut req = http::Request::from_parts(parts, http_body_util::Full::new(body));
        let timeout = || Error::Request { server: self.server(), reason: "no response in 60 s".into() };
        // A pooled connection the server has just closed fails before the request is
        // written; then (and only then) the request is sent again on a new connection,
        // so a create is never sent twice.
        let mut attempts = 0;
        let (sender, resp) = loop {
            attempts += 1;
            let mut sender = if attempts == 1 { self.sender().await? } else { self.connect().await? };
            match tokio::time::timeout(HEADER_TIMEOUT, sender.try_send_request(req)).await.map_err(|_| timeout())? {
                Ok(resp) => break (sender, resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if attempts < 2 => req = unsent,
                    _ => return Err(Error::Request { server: self.server(), reason: e.error().to_string() }),
                },
            }
        };
        // Hand the connection back now; it becomes ready again once this body is read.
        let mut pool = self.pool.lock().unwrap();
        if pool.len() < MAX_IDLE {
            pool.push(sender);
        }
        drop(pool);
        Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
    }
}

impl Transport for HttpsTransport {
    fn send(&self, req: http::Request<Bytes>) -> BoxFuture<'_, Result<http::Response<ResponseBody>>> {
        Box::pin(self.send_inner(req))
    }
}
