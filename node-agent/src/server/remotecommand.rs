//! The client side of the runtime's remotecommand streams, and the relay that joins
//! them to a client's WebSocket session (`exec` and `attach`).
//!
//! CRI `Exec` and `Attach` hand out a URL on containerd's streaming server. This module
//! upgrades a POST to it to SPDY/3.1 with `X-Stream-Protocol-Version:
//! v4.channel.k8s.io` and opens one stream per requested channel, each named by its
//! `streamtype` header: `error` (the `metav1.Status` with the exit code), `stdin`,
//! `stdout`, `stderr` (not with a tty) and `resize` (only with a tty). SPDY rather than
//! the runtime's WebSocket because only SPDY can end one stream: the end of the client's
//! stdin (v5's "close stream" message, channel 255) becomes a FIN on the stdin stream,
//! and the runtime closes the process's stdin.
//!
//! The client's WebSocket messages are one channel byte (0 stdin, 1 stdout, 2 stderr,
//! 3 error, 4 resize) and data; the same bytes travel on the matching SPDY stream, so
//! the status and resize JSON pass through unchanged. It must not interpret them.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message};

use super::spdy::{self, FLAG_FIN, Frame, HeaderReader, HeaderWriter};

/// The remotecommand version asked of the runtime (it has the resize stream).
pub const STREAM_PROTOCOL: &str = "v4.channel.k8s.io";
/// v5's "close this stream" message starts with this channel byte.
const CLOSE_CHANNEL: u8 = 255;
const STDIN: usize = 0;
const RESIZE: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session may take to wind down after the runtime ended it.
const DRAIN: Duration = Duration::from_secs(5);
/// The most of an error body from the runtime kept for the message.
const MAX_ERROR_BODY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unusable streaming URL {url}: {why}")]
    Url { url: String, why: &'static str },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the runtime's streaming server did not answer in {0:?}")]
    Timeout(Duration),
    #[error("HTTP to the runtime's streaming server failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the runtime's streaming server answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("the runtime's streaming server chose protocol {0:?}, not {STREAM_PROTOCOL}")]
    Protocol(String),
    #[error("cannot open the streams: {0}")]
    Write(#[source] std::io::Error),
    #[error(transparent)]
    Spdy(#[from] spdy::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which channels a session has (as in the CRI request: the runtime expects exactly
/// these streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A byte stream both ways (the upgraded connection; a test's pipe).
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A session with the runtime: the upgraded connection with its streams opened.
pub struct Session {
    io: Box<dyn Io>,
    /// The SPDY stream of each channel (indexed by channel number), if it has one.
    streams: [Option<u32>; 5],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("streams", &self.streams).finish_non_exhaustive()
    }
}

/// The streams to open, in the order upstream's client opens them: (channel, type).
fn stream_plan(ch: Channels) -> Vec<(usize, &'static str)> {
    [
        (3, "error", true),
        (STDIN, "stdin", ch.stdin),
        (1, "stdout", ch.stdout),
        (2, "stderr", ch.stderr && !ch.tty),
        (RESIZE, "resize", ch.tty),
    ]
    .into_iter()
    .filter(|(_, _, on)| *on)
    .map(|(c, t, _)| (c, t))
    .collect()
}

async fn timed<T, E>(fut: impl Future<Output = Result<T, E>>) -> Result<T>
where
    Error: From<E>,
{
    Ok(tokio::time::timeout(CONNECT_TIMEOUT, fut).await.map_err(|_| Error::Timeout(CONNECT_TIMEOUT))??)
}

/// Connects to the runtime's streaming `url` (`http://127.0.0.1:PORT/exec/TOKEN`),
/// upgrades to SPDY and opens the streams of `channels`.
pub async fn connect(url: &str, channels: Channels) -> Result<Session> {
    let bad = |why| Error::Url { url: url.to_string(), why };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URI"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("not http (containerd's streaming server without TLS is expected)"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = authority.port_u16().unwrap_or(80);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| Error::Timeout(CONNECT_TIMEOUT))?
        .map_err(|source| Error::Connect { addr: authority.to_string(), source })?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = timed(hyper::client::conn::http1::handshake(TokioIo::new(tcp))).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let req = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority.as_str())
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", STREAM_PROTOCOL)
        .body(Empty::<Bytes>::new())
        .map_err(|_| bad("cannot make a request of it"))?;
    let resp = timed(sender.send_request(req)).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = tokio::time::timeout(CONNECT_TIMEOUT, Limited::new(resp.into_body(), MAX_ERROR_BODY).collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        return Err(Error::Refused { status, body });
    }
    let chosen = resp.headers().get("x-stream-protocol-version").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if chosen != STREAM_PROTOCOL {
        return Err(Error::Protocol(chosen.to_string()));
    }
    let mut io: TokioIo<Upgraded> = TokioIo::new(timed(hyper::upgrade::on(resp)).await?);
    let (mut headers, mut frames, mut streams) = (HeaderWriter::default(), Vec::new(), [None; 5]);
    for (i, (channel, kind)) in stream_plan(channels).into_iter().enumerate() {
        // The client's streams have odd ids, in the order they are opened.
        let id = 2 * i as u32 + 1;
        streams[channel] = Some(id);
        frames.extend(spdy::syn_stream(id, &headers.write(&[("streamtype", kind)])?));
    }
    io.write_all(&frames).await.map_err(Error::Write)?;
    Ok(Session { io: Box::new(io), streams })
}

/// Relays between the client's WebSocket and the runtime's session until the runtime
/// ends it (then the client's WebSocket is closed normally), or the client goes (then
/// the runtime's connection is closed, which ends the session's streams there).
pub async fn relay<C>(client: WebSocketStream<C>, session: Session)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Session { io, streams } = session;
    let (mut c_tx, mut c_rx) = client.split();
    let (mut rd, wr) = tokio::io::split(io);
    // Frames to the runtime: the client's data, and answers to the runtime's pings.
    let (out, mut writer) = spdy::writer(wr);
    let pings = out.clone();
    let mut up = tokio::spawn(async move {
        while let Some(Ok(msg)) = c_rx.next().await {
            let data = match msg {
                Message::Binary(d) => d,
                Message::Close(_) => break,
                _ => continue,
            };
            let frame = match data.split_first() {
                // Only the client's own channels can be closed or written.
                Some((&CLOSE_CHANNEL, [ch, ..])) => match streams.get(*ch as usize) {
                    Some(Some(id)) if matches!(*ch as usize, STDIN | RESIZE) => spdy::data(*id, FLAG_FIN, &[]),
                    _ => continue,
                },
                Some((&ch, rest)) if !rest.is_empty() && matches!(ch as usize, STDIN | RESIZE) => {
                    match streams[ch as usize] {
                        Some(id) => spdy::data(id, 0, rest),
                        None => continue,
                    }
                }
                _ => continue,
            };
            if out.send(frame).await.is_err() {
                break;
            }
        }
    });
    let mut down = tokio::spawn(async move {
        let mut headers = HeaderReader::default();
        let channel_of = |stream: u32| streams.iter().position(|s| *s == Some(stream));
        loop {
            match spdy::read_frame(&mut rd).await {
                Ok(Some(Frame::Data { stream, data, .. })) if !data.is_empty() => {
                    let Some(ch) = channel_of(stream).filter(|c| matches!(c, 1..=3)) else { continue };
                    let mut msg = Vec::with_capacity(data.len() + 1);
                    msg.push(ch as u8);
                    msg.extend_from_slice(&data);
                    if c_tx.send(Message::binary(msg)).await.is_err() {
                        return;
                    }
                }
                // Header blocks share one zlib stream: each must be read to keep it in step.
                Ok(Some(Frame::Control { kind: spdy::SYN_REPLY | spdy::HEADERS, data, .. })) if data.len() > 4 => {
                    if let Err(e) = headers.read(&data[4..]) {
                        tracing::debug!(error = %e, "remotecommand: unreadable headers from the runtime");
                        break;
                    }
                }
                Ok(Some(Frame::Control { kind: spdy::PING, data, .. })) => {
                    let _ = pings.send(spdy::control(spdy::PING, 0, &data)).await;
                }
                Ok(Some(Frame::Control { kind: spdy::GOAWAY, .. }) | None) => break,
                Ok(Some(_)) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "remotecommand: the runtime's connection failed");
                    break;
                }
            }
        }
        // A normal closure is the client's end of the session; a bare close frame
        // (1005) is an error to kubectl.
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
        // The client went: nobody reads the output any more.
        _ = &mut up => down.abort(),
    }
    // The writer ends (closing the runtime's connection) once both senders are gone.
    if tokio::time::timeout(DRAIN, &mut writer).await.is_err() {
        tracing::debug!("remotecommand: the runtime's connection did not take the last frames");
        writer.abort();
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    #[test]
    fn streams_are_those_upstream_opens() {
        let plain = Channels { stdin: true, stdout: true, stderr: true, tty: false };
        assert_eq!(stream_plan(plain), [(3, "error"), (0, "stdin"), (1, "stdout"), (2, "stderr")]);
        let tty = Channels { tty: true, ..plain };
        assert_eq!(stream_plan(tty), [(3, "error"), (0, "stdin"), (1, "stdout"), (4, "resize")]);
        let quiet = Channels { stdin: false, stdout: false, stderr: true, tty: false };
        assert_eq!(stream_plan(quiet), [(3, "error"), (2, "stderr")]);
    }

    #[tokio::test]
    async fn the_relay_maps_channels_to_streams_and_ends_stdin() {
        // Streams as `connect` numbers them: error 1, stdin 3, stdout 5, stderr 7.
        let (ours, mut runtime) = tokio::io::duplex(1 << 16);
        let session = Session { io: Box::new(ours), streams: [Some(3), Some(5), Some(7), Some(1), None] };
        let (server_side, client_side) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn(async move {
            relay(WebSocketStream::from_raw_socket(server_side, Role::Server, None).await, session).await;
        });
        let mut client = WebSocketStream::from_raw_socket(client_side, Role::Client, None).await;

        client.send(Message::binary(b"\x00abc".to_vec())).await.unwrap();
        client.send(Message::binary(vec![CLOSE_CHANNEL, 0])).await.unwrap();
        let frame = |stream, flags, data: &[u8]| Frame::Data { stream, flags, data: data.to_vec() };
        assert_eq!(spdy::read_frame(&mut runtime).await.unwrap(), Some(frame(3, 0, b"abc")));
        assert_eq!(spdy::read_frame(&mut runtime).await.unwrap(), Some(frame(3, FLAG_FIN, b"")));

        for f in [spdy::data(5, 0, b"out"), spdy::data(7, 0, b"err"), spdy::data(1, FLAG_FIN, b"{}")] {
            runtime.write_all(&f).await.unwrap();
        }
        runtime.write_all(&spdy::control(spdy::GOAWAY, 0, &[0; 8])).await.unwrap();
        let mut got = Vec::new();
        while let Some(Ok(msg)) = client.next().await {
            match msg {
                Message::Binary(d) => got.push(d.to_vec()),
                Message::Close(frame) => {
                    assert_eq!(frame.map(|f| f.code), Some(CloseCode::Normal));
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(got, [b"\x01out".to_vec(), b"\x02err".to_vec(), b"\x03{}".to_vec()]);
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), relay).await.unwrap().unwrap();
    }
}
