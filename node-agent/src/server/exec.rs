//! `/exec/{ns}/{pod}/{container}?command=..&stdin&stdout&stderr&tty`: a command in a
//! container, over the WebSocket remotecommand protocol that kubectl 1.32 speaks
//! (`v5.channel.k8s.io`, or `v4.channel.k8s.io`) and the API server passes through.
//!
//! The session itself runs in the runtime: CRI `Exec` hands out a URL on containerd's
//! streaming server, which speaks `v4.channel.k8s.io` over WebSocket. This module
//! connects there before it answers the upgrade (so a failure reaches the client as an
//! HTTP error), then relays messages both ways unchanged: each is one channel byte
//! (0 stdin, 1 stdout, 2 stderr, 3 error — the `metav1.Status` with the exit code —
//! 4 resize) and data. v5 only adds the client's "close stream" message (channel 255),
//! which v4 cannot say: it is dropped, so a command that waits for the end of its stdin
//! does not see it (SPDY to the runtime could carry it; not done).
//!
//! It must not run anything itself: every process starts in the runtime.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::ClientRequestBuilder;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message, Role};

use super::{Body, ExecRequest, Shared, locate_error, text};

/// What the server speaks to clients, best first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// What containerd's streaming server speaks.
const RUNTIME_PROTOCOL: &str = "v4.channel.k8s.io";
/// v5's "close this stream" message starts with this channel byte.
const CLOSE_CHANNEL: u8 = 255;
/// How long a session may take to wind down after one side went.
const DRAIN: Duration = Duration::from_secs(5);

/// The parameters of one exec request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecQuery {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecQuery {
    /// Reads the query (`command` repeats, one argument each).
    pub fn parse(query: Option<&str>) -> Self {
        let mut q = Self::default();
        let on = |v: &str| matches!(v, "true" | "1" | "True" | "TRUE");
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*k {
                "command" => q.command.push(v.into_owned()),
                "stdin" | "input" => q.stdin = on(&v),
                "stdout" | "output" => q.stdout = on(&v),
                "stderr" => q.stderr = on(&v),
                "tty" => q.tty = on(&v),
                _ => {}
            }
        }
        // A tty merges stderr into stdout, as the runtime does.
        if q.tty {
            q.stderr = false;
        }
        q
    }
}

/// The first protocol of ours the client offers.
fn negotiate(req: &Request<Incoming>) -> Option<&'static str> {
    let offered: Vec<String> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    PROTOCOLS.into_iter().find(|p| offered.iter().any(|o| o == p))
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

pub(super) async fn serve_exec(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let q = ExecQuery::parse(req.uri().query());
    if q.command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify at least one command for the container");
    }
    if !q.stdin && !q.stdout && !q.stderr {
        return text(StatusCode::BAD_REQUEST, "you must specify at least one of stdin, stdout, stderr");
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
    let (Some(accept), true) = (key, is_websocket(&req)) else {
        return text(
            StatusCode::BAD_REQUEST,
            "exec needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not supported",
        );
    };
    let Some(protocol) = negotiate(&req) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("no supported WebSocket subprotocol offered; this kubelet speaks {PROTOCOLS:?}"),
        );
    };
    let loc = match shared.locator.locate(ns, pod, Some(container)) {
        Ok(l) => l,
        Err(e) => return locate_error(&e),
    };
    if !loc.running {
        return text(StatusCode::BAD_REQUEST, format!("container {container} is not running in pod {pod}"));
    }
    let exec = ExecRequest {
        container_id: loc.container_id,
        cmd: q.command,
        tty: q.tty,
        stdin: q.stdin,
        stdout: q.stdout,
        stderr: q.stderr,
    };
    let url = match shared.runtime.exec(exec).await {
        Ok(u) => u,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("runtime exec failed: {e}")),
    };
    let backend = match connect_runtime(&url).await {
        Ok(b) => b,
        Err(e) => {
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot reach the runtime's stream at {url}: {e}"));
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let client = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                tracing::debug!(%ns, %pod, %container, protocol, "exec session started");
                relay(client, backend).await;
                tracing::debug!(%ns, %pod, %container, "exec session ended");
            }
            Err(e) => tracing::info!(%ns, %pod, error = %e, "exec: the client's upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(http_body_util::Empty::new().boxed())
        .unwrap()
}

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// Opens the WebSocket to the runtime's streaming URL (`http://127.0.0.1:PORT/exec/TOKEN`).
async fn connect_runtime(url: &str) -> Result<WebSocketStream<TcpStream>, BoxErr> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().ok_or("the URL has no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(80);
    if uri.scheme_str() != Some("http") {
        return Err(format!("unsupported scheme in {url} (containerd's stream server without TLS is expected)").into());
    }
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((host.as_str(), port))).await??;
    let _ = tcp.set_nodelay(true);
    let ws_uri: http::Uri =
        format!("ws://{}{}", uri.authority().ok_or("no authority")?, uri.path_and_query().map_or("/", |p| p.as_str()))
            .parse()?;
    let request = ClientRequestBuilder::new(ws_uri).with_sub_protocol(RUNTIME_PROTOCOL);
    let (ws, _) =
        tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(request, tcp)).await??;
    Ok(ws)
}

/// Relays messages until the runtime ends the session (then closes the client), or the
/// client goes (then closes the runtime's side, which ends the process's streams).
async fn relay<C, B>(client: WebSocketStream<C>, backend: WebSocketStream<B>)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut c_tx, mut c_rx) = client.split();
    let (mut b_tx, mut b_rx) = backend.split();
    let mut up = tokio::spawn(async move {
        while let Some(Ok(msg)) = c_rx.next().await {
            let msg = match msg {
                Message::Binary(d) if d.first() == Some(&CLOSE_CHANNEL) => continue,
                m @ (Message::Binary(_) | Message::Text(_)) => m,
                Message::Close(_) => break,
                _ => continue,
            };
            if b_tx.send(msg).await.is_err() {
                break;
            }
        }
        let _ = b_tx.close().await;
    });
    let mut down = tokio::spawn(async move {
        while let Some(Ok(msg)) = b_rx.next().await {
            let msg = match msg {
                m @ (Message::Binary(_) | Message::Text(_)) => m,
                Message::Close(_) => break,
                _ => continue,
            };
            if c_tx.send(msg).await.is_err() {
                break;
            }
        }
        // A normal closure is the client's end of stream; a bare close frame (1005)
        // is an error to kubectl.
        let normal = CloseFrame { code: CloseCode::Normal, reason: Default::default() };
        let _ = c_tx.send(Message::Close(Some(normal))).await;
        let _ = c_tx.close().await;
    });
    tokio::select! {
        _ = &mut down => {
            if tokio::time::timeout(DRAIN, &mut up).await.is_err() {
                up.abort();
            }
        }
        _ = &mut up => {
            if tokio::time::timeout(DRAIN, &mut down).await.is_err() {
                down.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_with_repeated_commands() {
        let q = ExecQuery::parse(Some("command=%2Fskiff-echo&command=--version&stdout=true&stderr=true&tty=false"));
        assert_eq!(q.command, ["/skiff-echo", "--version"]);
        assert!(q.stdout && q.stderr && !q.stdin && !q.tty);
        let q = ExecQuery::parse(Some("command=sh&stdin=1&stdout=1&stderr=1&tty=1"));
        assert!(q.tty && q.stdin && !q.stderr, "a tty has no separate stderr");
    }
}
