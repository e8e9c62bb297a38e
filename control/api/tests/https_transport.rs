//! The HTTPS transport against a small TLS server on 127.0.0.1 with a CA of its own:
//! requests whose bodies were read share one pooled connection, a streaming response
//! (a watch) holds a connection of its own while others proceed, each request is sent
//! once, and the bearer token goes with every request.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::PrivateKeyDer;
use skiff_api::Client;
use skiff_api::kubeconfig::Credentials;
use tokio::sync::mpsc;

/// What the server saw: connections accepted, and (method, path, Authorization) of
/// each request.
#[derive(Default)]
struct Seen {
    connections: usize,
    requests: Vec<(Method, String, String)>,
}

struct TestServer {
    port: u16,
    ca_pem: String,
    seen: Arc<Mutex<Seen>>,
    /// Each `/stream` request takes the next receiver; its chunks become the body.
    streams: Arc<Mutex<Vec<mpsc::Receiver<Bytes>>>>,
}

/// A CA and a serving certificate for 127.0.0.1 signed by it.
fn certificates() -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    (ca_pem, tls)
}

impl TestServer {
    async fn start() -> Self {
        let (ca_pem, tls) = certificates();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (seen2, streams2) = (seen.clone(), streams.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                seen2.lock().unwrap().connections += 1;
                let tls = acceptor.accept(tcp).await.unwrap();
                let (seen, streams) = (seen2.clone(), streams2.clone());
                let svc = hyper::service::service_fn(move |req| {
                    let resp = answer(&seen, &streams, req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc));
            }
        });
        Self { port, ca_pem, seen, streams }
    }

    fn client(&self) -> Client {
        let creds = Credentials {
            server: format!("https://127.0.0.1:{}", self.port),
            ca_pem: self.ca_pem.clone().into_bytes(),
            token: Some("tok".into()),
            ..Default::default()
        };
        Client::from_credentials(&creds, "https-transport-test").unwrap()
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }

    /// Makes the next `/stream` response stream what is sent on the returned channel.
    fn next_stream(&self) -> mpsc::Sender<Bytes> {
        let (tx, rx) = mpsc::channel(4);
        self.streams.lock().unwrap().push(rx);
        tx
    }
}

fn answer(
    seen: &Mutex<Seen>,
    streams: &Mutex<Vec<mpsc::Receiver<Bytes>>>,
    req: Request<Incoming>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let auth = req.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_string());
    let path = req.uri().path().to_string();
    seen.lock().unwrap().requests.push((req.method().clone(), path.clone(), auth.unwrap_or_default()));
    if path == "/stream" {
        let rx = streams.lock().unwrap().remove(0);
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        return Response::new(StreamBody::new(chunks).boxed());
    }
    Response::new(Full::new(Bytes::from_static(b"{}")).boxed())
}

async fn get(client: &Client, path: &str) {
    let resp = client.send_raw(Method::GET, path, None, Bytes::new()).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "{}");
    // The pool takes the connection back on a task of its own once the body is read;
    // without this pause the next request would race it and open another connection.
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn requests_share_pooled_connections_and_a_stream_holds_its_own() {
    let server = TestServer::start().await;
    let client = server.client();
    for _ in 0..3 {
        get(&client, "/a").await;
    }
    assert_eq!(server.connections(), 1, "a connection whose response was read is reused");

    let tx = server.next_stream();
    let mut stream = client.send_raw(Method::GET, "/stream", None, Bytes::new()).await.unwrap().into_body();
    tx.send(Bytes::from_static(b"event 1\n")).await.unwrap();
    let first = stream.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "event 1\n");
    get(&client, "/b").await;
    assert_eq!(server.connections(), 2, "the streaming connection is busy");
    tx.send(Bytes::from_static(b"event 2\n")).await.unwrap();
    assert_eq!(stream.frame().await.unwrap().unwrap().into_data().unwrap(), "event 2\n");
    drop(tx);
    assert!(stream.frame().await.is_none(), "the stream ends when the server ends it");

    // Both connections are idle in the pool now; neither a create nor reads open more.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let created = client.send_raw(Method::POST, "/c", Some("application/json"), Bytes::from_static(b"{}")).await;
    created.unwrap().into_body().collect().await.unwrap();
    get(&client, "/d").await;
    assert_eq!(server.connections(), 2);

    let seen = server.seen.lock().unwrap();
    let posts = seen.requests.iter().filter(|(m, _, _)| m == Method::POST).count();
    assert_eq!(posts, 1, "the create was sent once");
    assert_eq!(seen.requests.len(), 7);
    assert!(seen.requests.iter().all(|(_, _, auth)| auth == "Bearer tok"), "{:?}", seen.requests);
}

#[tokio::test]
async fn a_server_that_is_down_is_a_connect_error_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (ca_pem, _) = certificates();
    let creds =
        Credentials { server: format!("https://127.0.0.1:{port}"), ca_pem: ca_pem.into_bytes(), ..Default::default() };
    let client = Client::from_credentials(&creds, "https-transport-test").unwrap();
    let e = client.send_raw(Method::GET, "/", None, Bytes::new()).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&format!("cannot connect to the API server at 127.0.0.1:{port}")), "{text}");
    assert!(text.contains("refused"), "the cause is spelled out: {text}");
    assert!(std::error::Error::source(&e).is_some(), "the transport error is kept");
}
