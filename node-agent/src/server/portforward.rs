//! `/portForward/{ns}/{pod}`: `kubectl port-forward`. kubectl 1.32 first asks for a
//! WebSocket with subprotocol `SPDY/3.1+portforward.k8s.io` and sends SPDY/3.1 frames
//! inside its binary messages; if that upgrade fails it asks for plain `Upgrade:
//! SPDY/3.1` with `X-Stream-Protocol-Version: portforward.k8s.io`. Both are served; the
//! session is the same SPDY session on either transport.
//!
//! For each local connection kubectl opens two streams with headers `streamtype`
//! (`error`, then `data`), `port` and `requestid`. Once both are there, this module
//! connects to `localhost` at that port inside the pod's network namespace (as upstream
//! does: a server bound to the pod's 127.0.0.1 is reachable, and so is a pod on the
//! node's network) and copies bytes between the TCP connection and the data stream; a
//! failure to connect is written to the error stream. When the runtime does not say
//! where the namespace is, it dials the pod's IP from the node instead.
//!
//! The socket is made by a short-lived thread of its own that enters the namespace (a
//! socket stays in the namespace it was made in); no runtime thread ever changes its
//! namespace. It must not run anything in the pod.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

use super::spdy::{self, FLAG_FIN, Frame, HeaderReader, HeaderWriter};
use super::{Body, Shared, locate_error, text};

/// The WebSocket subprotocol of SPDY tunnelled in WebSocket messages.
pub const WEBSOCKET_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The stream protocol of plain SPDY.
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Data frames sent are at most this long.
const CHUNK: usize = 32 * 1024;

/// Where a forwarded port is.
#[derive(Debug, Clone)]
enum Target {
    /// `localhost` in the network namespace this file names.
    Netns(PathBuf),
    /// The pod's IP, from the node.
    Ip(IpAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Netns(p) => write!(f, "localhost in network namespace {}", p.display()),
            Self::Ip(ip) => write!(f, "pod at {ip}"),
        }
    }
}

impl Target {
    async fn connect(&self, port: u16) -> std::io::Result<TcpStream> {
        let addr = match self {
            Self::Ip(ip) => SocketAddr::new(*ip, port),
            Self::Netns(path) => return connect_in(path.clone(), port).await,
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// Connects to `localhost:port` (IPv4, else IPv6) inside the network namespace `netns`,
/// from a thread made for it.
async fn connect_in(netns: PathBuf, port: u16) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("portforward-netns".into()).spawn(move || {
        let connect = || -> std::io::Result<std::net::TcpStream> {
            let ns = std::fs::File::open(&netns)?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let mut last = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
            for ip in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
                match std::net::TcpStream::connect_timeout(&SocketAddr::new(ip, port), CONNECT_TIMEOUT) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        let _ = tx.send(connect());
    })?;
    let tcp = rx.await.map_err(|_| std::io::Error::other("the namespace thread ended without an answer"))??;
    tcp.set_nonblocking(true)?;
    TcpStream::from_std(tcp)
}

/// How the client wants its SPDY carried.
enum Transport {
    WebSocket { accept: String },
    Spdy,
}

fn transport(req: &Request<Incoming>) -> Option<Transport> {
    let h = |n| req.headers().get_all(n).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    let lists = |s: String| s.split(',').any(|p| p.trim() == WEBSOCKET_PROTOCOL || p.trim() == SPDY_PROTOCOL);
    let upgrade = h(header::UPGRADE).to_ascii_lowercase();
    if upgrade == "websocket" && h(header::SEC_WEBSOCKET_PROTOCOL).split(',').any(|p| p.trim() == WEBSOCKET_PROTOCOL) {
        let key = req.headers().get(header::SEC_WEBSOCKET_KEY)?;
        return Some(Transport::WebSocket { accept: derive_accept_key(key.as_bytes()) });
    }
    (upgrade == "spdy/3.1" && lists(h(header::HeaderName::from_static("x-stream-protocol-version"))))
        .then_some(Transport::Spdy)
}

pub(super) async fn serve_portforward(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    ns: &str,
    pod: &str,
) -> Response<Body> {
    let Some(transport) = transport(&req) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("port-forward needs an upgrade to WebSocket ({WEBSOCKET_PROTOCOL}) or SPDY/3.1 ({SPDY_PROTOCOL})"),
        );
    };
    let loc = match shared.locator.sandbox(ns, pod) {
        Ok(l) => l,
        Err(e) => return locate_error(&e),
    };
    let netns = match shared.runtime.sandbox_netns(&loc.sandbox_id).await {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(%ns, %pod, sandbox = %loc.sandbox_id, error = %e, "port-forward: no network namespace from the runtime");
            None
        }
    };
    let target = match (netns, loc.pod_ip) {
        (Some(path), _) => Target::Netns(path),
        (None, Some(ip)) => Target::Ip(ip),
        (None, None) => return text(StatusCode::BAD_REQUEST, format!("pod {ns}/{pod} has no network yet")),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let websocket = matches!(transport, Transport::WebSocket { .. });
    let (ns, pod) = (ns.to_string(), pod.to_string());
    tokio::spawn(async move {
        let up = match on_upgrade.await {
            Ok(up) => TokioIo::new(up),
            Err(e) => return tracing::info!(%ns, %pod, error = %e, "port-forward: the client's upgrade failed"),
        };
        tracing::debug!(%ns, %pod, websocket, "port-forward session started");
        let result = if websocket {
            let ws = WebSocketStream::from_raw_socket(up, Role::Server, None).await;
            session(unwrap_websocket(ws), target).await
        } else {
            session(up, target).await
        };
        if let Err(e) = result {
            tracing::info!(%ns, %pod, error = %e, "port-forward session failed");
        }
    });
    let resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS).header(header::CONNECTION, "Upgrade");
    let resp = match transport {
        Transport::WebSocket { accept } => resp
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .header(header::SEC_WEBSOCKET_PROTOCOL, WEBSOCKET_PROTOCOL),
        Transport::Spdy => resp.header(header::UPGRADE, "SPDY/3.1").header("X-Stream-Protocol-Version", SPDY_PROTOCOL),
    };
    resp.body(http_body_util::Empty::new().boxed()).unwrap()
}

/// The byte stream carried in a WebSocket's binary messages, as a plain duplex stream.
fn unwrap_websocket<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(CHUNK * 2);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let (mut tx, mut rx) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Binary(d) if wr.write_all(&d).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 || tx.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
        let _ = tx.close().await;
    });
    ours
}

/// A requested forward, while its two streams arrive.
#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
}

/// One SPDY session: replies to streams, pairs them by request id, and starts a
/// forward for each complete pair. Frames to send go through one writer task.
async fn session(io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static, target: Target) -> spdy::Result<()> {
    let (mut rd, wr) = tokio::io::split(io);
    let (out, writer) = spdy::writer(wr);
    let (mut headers_in, mut headers_out) = (HeaderReader::default(), HeaderWriter::default());
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Data streams' inbound halves: what the client sends goes to the pod.
    let mut inbound: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    let result = loop {
        let frame = match spdy::read_frame(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match frame {
            Frame::Control { kind: spdy::SYN_STREAM, data, .. } if data.len() >= 10 => {
                let id = spdy::stream_id(&data).unwrap_or(0);
                let headers = headers_in.read(&data[10..])?;
                let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap_or_default();
                let mut reply = id.to_be_bytes().to_vec();
                reply.extend(headers_out.write(&[])?);
                if out.send(spdy::control(spdy::SYN_REPLY, 0, &reply)).await.is_err() {
                    break Ok(());
                }
                let request = get("requestid");
                let pair = pairs.entry(request.clone()).or_default();
                pair.port = get("port").parse().unwrap_or(0);
                match get("streamtype").as_str() {
                    "error" => pair.error = Some(id),
                    "data" => pair.data = Some(id),
                    other => tracing::debug!(stream = id, streamtype = other, "port-forward: unknown stream type"),
                }
                if let (Some(error), Some(data)) = (pair.error, pair.data) {
                    let port = pair.port;
                    pairs.remove(&request);
                    let (tx, rx) = mpsc::channel(16);
                    inbound.insert(data, tx);
                    tokio::spawn(forward(target.clone(), port, error, data, rx, out.clone()));
                }
            }
            Frame::Data { stream, flags, data } => {
                if let Some(tx) = inbound.get(&stream) {
                    let fin = flags & FLAG_FIN != 0;
                    if (!data.is_empty() && tx.send(Some(data)).await.is_err()) || fin {
                        let _ = tx.send(None).await;
                        inbound.remove(&stream);
                    }
                }
            }
            Frame::Control { kind: spdy::RST_STREAM, data, .. } => {
                if let Some(id) = spdy::stream_id(&data) {
                    // Dropping the sender ends that forward's inbound half.
                    inbound.remove(&id);
                }
            }
            Frame::Control { kind: spdy::PING, data, .. } => {
                let _ = out.send(spdy::control(spdy::PING, 0, &data)).await;
            }
            Frame::Control { kind: spdy::GOAWAY, .. } => break Ok(()),
            // SETTINGS, WINDOW_UPDATE, HEADERS, NOOP: nothing to do without flow control.
            Frame::Control { .. } => {}
        }
    };
    drop(inbound);
    drop(out);
    let _ = writer.await;
    result
}

/// One forwarded connection: `target`'s `port` ↔ SPDY stream `data`; connection errors
/// go to stream `error`. Both streams are finished when it ends.
async fn forward(
    target: Target,
    port: u16,
    error: u32,
    data: u32,
    mut inbound: mpsc::Receiver<Option<Vec<u8>>>,
    out: mpsc::Sender<Vec<u8>>,
) {
    let tcp = match target.connect(port).await {
        Ok(s) => s,
        Err(e) => return fail(&out, error, data, &format!("error forwarding port {port} to {target}: {e}")).await,
    };
    let (mut tcp_rd, mut tcp_wr) = tcp.into_split();
    let to_pod = tokio::spawn(async move {
        while let Some(Some(chunk)) = inbound.recv().await {
            if tcp_wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = tcp_wr.shutdown().await;
    });
    let mut buf = vec![0u8; CHUNK];
    loop {
        match tcp_rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.send(spdy::data(data, 0, &buf[..n])).await.is_err() {
                    to_pod.abort();
                    return;
                }
            }
        }
    }
    // kubectl ends the connection once the data stream and then the error stream end;
    // its own half of the data stream ends `to_pod` (or the session's end does).
    let _ = out.send(spdy::data(data, FLAG_FIN, &[])).await;
    let _ = out.send(spdy::data(error, FLAG_FIN, &[])).await;
    drop(to_pod);
}

async fn fail(out: &mpsc::Sender<Vec<u8>>, error: u32, data: u32, msg: &str) {
    tracing::info!(error = msg, "port-forward");
    let _ = out.send(spdy::data(error, FLAG_FIN, msg.as_bytes())).await;
    let _ = out.send(spdy::data(data, FLAG_FIN, &[])).await;
}
