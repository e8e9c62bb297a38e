//! `/exec/{ns}/{pod}/{container}?command=..&stdin&stdout&stderr&tty` (a command in a
//! container) and `/attach/{ns}/{pod}/{container}?stdin&stdout&stderr&tty` (the
//! container's own process), over the WebSocket remotecommand protocol that kubectl
//! 1.32 speaks (`v5.channel.k8s.io`, or `v4.channel.k8s.io`) and the API server passes
//! through.
//!
//! The session itself runs in the runtime: CRI `Exec` or `Attach` hands out a URL on
//! containerd's streaming server. This module connects there (`remotecommand`, SPDY)
//! before it answers the upgrade, so a failure reaches the client as an HTTP error, then
//! relays the session. v5 clients can end their stdin (the command then sees EOF); v4
//! clients cannot say so.
//!
//! It must not run anything itself: every process starts in the runtime.

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::remotecommand::{self, Channels};
use super::{AttachRequest, Body, ExecRequest, Shared, locate_error, text};

/// What the server speaks to clients, best first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The parameters of one exec or attach request (attach has no command).
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

/// Which session a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Exec,
    Attach,
}

pub(super) async fn serve(
    shared: &Arc<Shared>,
    kind: Kind,
    mut req: Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let q = ExecQuery::parse(req.uri().query());
    if kind == Kind::Exec && q.command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify at least one command for the container");
    }
    if !q.stdin && !q.stdout && !q.stderr {
        return text(StatusCode::BAD_REQUEST, "you must specify at least one of stdin, stdout, stderr");
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
    let (Some(accept), true) = (key, is_websocket(&req)) else {
        return text(
            StatusCode::BAD_REQUEST,
            "this needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not supported",
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
    let channels = Channels { stdin: q.stdin, stdout: q.stdout, stderr: q.stderr, tty: q.tty };
    let (container_id, tty, stdin, stdout, stderr) = (loc.container_id, q.tty, q.stdin, q.stdout, q.stderr);
    let url = match kind {
        Kind::Exec => {
            let exec = ExecRequest { container_id, cmd: q.command, tty, stdin, stdout, stderr };
            shared.runtime.exec(exec).await
        }
        Kind::Attach => shared.runtime.attach(AttachRequest { container_id, tty, stdin, stdout, stderr }).await,
    };
    let url = match url {
        Ok(u) => u,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("runtime {kind:?} failed: {e}")),
    };
    let backend = match remotecommand::connect(&url, channels).await {
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
                tracing::debug!(%ns, %pod, %container, ?kind, protocol, "stream session started");
                remotecommand::relay(client, backend).await;
                tracing::debug!(%ns, %pod, %container, ?kind, "stream session ended");
            }
            Err(e) => tracing::info!(%ns, %pod, ?kind, error = %e, "the client's upgrade failed"),
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
