//! Test doubles: an HTTP(S) server on 127.0.0.1 whose answers a closure decides, and an
//! ExecRunner whose answers a script decides.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ContainerPort, ExecAction, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::pki_types::PrivateKeyDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::kubelet::probe::{ExecOutput, ExecRunner, HandlerTarget};

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A request as the server saw it; header names lower-cased.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// What the server does with a request.
pub enum Answer {
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Keeps the connection open and never answers.
    Hang,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self::Reply { status, headers: Vec::new(), body: b"ok".to_vec() }
    }

    pub fn redirect(location: &str) -> Self {
        Self::Reply { status: 302, headers: vec![("Location".to_owned(), location.to_owned())], body: Vec::new() }
    }
}

type Route = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

pub struct TestServer {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn http(route: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Self {
        Self::start(Arc::new(route), None).await
    }

    /// HTTPS with a self-signed certificate nobody could verify.
    pub async fn https(route: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["probe.test".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start(Arc::new(route), Some(acceptor)).await
    }

    async fn start(route: Route, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                // Bounded by the test: the task is aborted when the server is dropped.
                while let Ok((stream, _)) = listener.accept().await {
                    let (route, seen, tls) = (route.clone(), seen.clone(), tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            None => serve(stream, &route, &seen).await,
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(stream).await {
                                    serve(stream, &route, &seen).await;
                                }
                            }
                        }
                    });
                }
            }
        });
        Self { port, seen, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// One request per connection (the client sends `Connection: close`).
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, route: &Route, seen: &Mutex<Vec<Seen>>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") && buffer.len() < 64 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buffer).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next().and_then(|line| line.split(' ').nth(1)).unwrap_or_default().to_owned();
    let headers = lines
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let request = Seen { path, headers };
    seen.lock().unwrap().push(request.clone());
    match route(&request) {
        Answer::Hang => std::future::pending::<()>().await,
        Answer::Reply { status, headers, body } => {
            let mut out = format!("HTTP/1.1 {status} Test\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            for (name, value) in headers {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&body);
            // The client may hang up early (bounded body read); that is fine.
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// A port nothing listens on (bound then released).
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    listener.local_addr().unwrap().port()
}

/// One scripted answer of [`FakeExec`].
#[derive(Debug, Clone)]
pub enum Step {
    Exit(i32, &'static str),
    Error(&'static str),
    Hang,
}

#[derive(Default)]
struct Script {
    queue: VecDeque<Step>,
    otherwise: Option<Step>,
}

/// An ExecRunner answering by the command's first word: first the queued steps, then
/// the default one (exit 0 when none is set). It logs each call with its tokio time.
#[derive(Default)]
pub struct FakeExec {
    scripts: Mutex<HashMap<String, Script>>,
    calls: Mutex<Vec<Call>>,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub container_id: String,
    pub command: Vec<String>,
    pub timeout: Duration,
}

impl FakeExec {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn script(&self, command: &str, queue: &[Step], otherwise: Step) {
        self.scripts
            .lock()
            .unwrap()
            .insert(command.to_owned(), Script { queue: queue.iter().cloned().collect(), otherwise: Some(otherwise) });
    }

    /// The calls of one command, as offsets from `t0`.
    pub fn calls_of(&self, command: &str, t0: Instant) -> Vec<Duration> {
        self.calls()
            .iter()
            .filter(|c| c.command.first().map(String::as_str) == Some(command))
            .map(|c| c.at - t0)
            .collect()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl ExecRunner for FakeExec {
    async fn exec_sync(&self, container_id: &str, cmd: Vec<String>, timeout: Duration) -> Result<ExecOutput, String> {
        let first = cmd.first().cloned().unwrap_or_default();
        self.calls.lock().unwrap().push(Call {
            at: Instant::now(),
            container_id: container_id.to_owned(),
            command: cmd,
            timeout,
        });
        let step = {
            let mut scripts = self.scripts.lock().unwrap();
            let script = scripts.entry(first).or_default();
            script.queue.pop_front().or_else(|| script.otherwise.clone()).unwrap_or(Step::Exit(0, ""))
        };
        match step {
            Step::Exit(exit_code, stdout) => {
                Ok(ExecOutput { exit_code, stdout: stdout.as_bytes().to_vec(), stderr: Vec::new() })
            }
            Step::Error(error) => Err(error.to_owned()),
            Step::Hang => std::future::pending().await,
        }
    }
}

/// A container with one port named "http" at `http_port`.
pub fn container(name: &str, http_port: u16) -> Container {
    Container {
        name: name.to_owned(),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: i32::from(http_port),
            ..ContainerPort::default()
        }]),
        ..Container::default()
    }
}

pub fn target(http_port: u16) -> HandlerTarget {
    HandlerTarget::new("c1", Some(LOCALHOST), &container("app", http_port))
}

pub fn exec_probe(command: &str) -> Probe {
    Probe { exec: Some(ExecAction { command: Some(vec![command.to_owned(), "arg".to_owned()]) }), ..Probe::default() }
}

pub fn http_probe(port: IntOrString, path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction { port, path: Some(path.to_owned()), ..HTTPGetAction::default() }),
        ..Probe::default()
    }
}
