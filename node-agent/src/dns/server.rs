//! The DNS server's sockets: UDP and TCP on each of the node's DNS addresses, answering
//! from the shared zone. Each query is answered where it is read; the zone is only
//! read-locked for the lookup itself, so the updater never waits long.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, warn};

use super::answer::{Transport, respond};
use super::zone::Zone;

/// The zone as the updater writes it and the sockets read it.
pub type SharedZone = Arc<RwLock<Zone>>;

/// A TCP client that sends nothing for this long is let go.
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The bound sockets of one address.
#[derive(Debug)]
pub struct Listeners {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Listeners {
    /// Binds UDP and TCP on `addr` (the address must exist on the node).
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        let udp = UdpSocket::bind(addr).await.map_err(|source| Error::Bind { proto: "UDP", addr, source })?;
        let tcp = TcpListener::bind(addr).await.map_err(|source| Error::Bind { proto: "TCP", addr, source })?;
        Ok(Self { udp, tcp })
    }

    /// Serves until the task is dropped.
    pub async fn serve(self, zone: SharedZone) {
        tokio::join!(serve_udp(self.udp, zone.clone()), serve_tcp(self.tcp, zone));
    }
}

fn answer(zone: &SharedZone, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let zone = zone.read().unwrap_or_else(|e| e.into_inner());
    respond(&zone, query, transport)
}

async fn serve_udp(socket: UdpSocket, zone: SharedZone) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // ICMP errors of earlier replies surface here; the socket is fine.
                debug!(error = %e, "DNS UDP receive");
                continue;
            }
        };
        if let Some(response) = answer(&zone, &buf[..len], Transport::Udp)
            && let Err(e) = socket.send_to(&response, peer).await
        {
            debug!(%peer, error = %e, "DNS UDP send");
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: SharedZone) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let zone = zone.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, &zone).await {
                        debug!(%peer, error = %e, "DNS TCP connection");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "DNS TCP accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Length-prefixed queries on one connection, answered in order, until the client
/// closes it or stays idle.
async fn serve_connection(mut stream: TcpStream, zone: &SharedZone) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(result) => result?,
        };
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await.map_err(std::io::Error::other)??;
        let Some(response) = answer(zone, &query, Transport::Tcp) else { return Ok(()) };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&(response.len() as u16).to_be_bytes());
        framed.extend_from_slice(&response);
        stream.write_all(&framed).await?;
    }
}
