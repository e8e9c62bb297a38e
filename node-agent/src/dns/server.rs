//! The DNS server's sockets: UDP and TCP on each of the node's DNS addresses, answering
//! from the shared zone. Each query is answered where it is read; the zone is only
//! read-locked for the lookup itself, so the updater never waits long. Queries for
//! names outside the cluster domain go to the upstream server, when there is one, each
//! on a task of its own (so a slow upstream never holds up the cluster's answers).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, warn};

use hickory_proto::op::ResponseCode;

use super::answer::{Reply, Transport, error, handle};
use super::zone::Zone;

/// The zone as the updater writes it and the sockets read it.
pub type SharedZone = Arc<RwLock<Zone>>;

/// A TCP client that sends nothing for this long is let go.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The most answers [`ResponseCache`] holds before it starts afresh.
const CACHE_ENTRIES: usize = 16_384;

/// Encoded answers by query: a query repeated byte for byte after its id (what a
/// resolver sends for the same name) gets the same answer until the zone changes, so
/// it is copied with the new id instead of decoded, looked up and encoded again.
#[derive(Debug, Default)]
pub struct ResponseCache {
    /// The zone generation the answers belong to, and the answers.
    inner: Mutex<(u64, Answers)>,
}

/// Encoded answers by (over TCP, the query after its id).
type Answers = HashMap<(bool, Vec<u8>), Vec<u8>>;

impl ResponseCache {
    fn get(&self, generation: u64, tcp: bool, query: &[u8]) -> Option<Vec<u8>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.0 != generation {
            *inner = (generation, HashMap::new());
            return None;
        }
        let mut answer = inner.1.get(&(tcp, query[2..].to_vec()))?.clone();
        answer[..2].copy_from_slice(&query[..2]);
        Some(answer)
    }

    fn put(&self, generation: u64, tcp: bool, query: &[u8], answer: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.0 != generation || inner.1.len() >= CACHE_ENTRIES {
            *inner = (generation, HashMap::new());
        }
        inner.1.insert((tcp, query[2..].to_vec()), answer.to_vec());
    }
}

/// How long the upstream server has to answer before the client gets SERVFAIL.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

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

    /// Serves until the task is dropped; names outside the cluster domain go to
    /// `upstream` if given.
    pub async fn serve(self, zone: SharedZone, upstream: Option<SocketAddr>) {
        let cache = Arc::new(ResponseCache::default());
        tokio::join!(
            serve_udp(self.udp, zone.clone(), cache.clone(), upstream),
            serve_tcp(self.tcp, zone, cache, upstream)
        );
    }
}

fn reply(
    zone: &SharedZone,
    cache: &ResponseCache,
    query: &[u8],
    transport: Transport,
    upstream: Option<SocketAddr>,
) -> Reply {
    let zone = zone.read().unwrap_or_else(|e| e.into_inner());
    let tcp = transport == Transport::Tcp;
    if query.len() >= 12
        && let Some(answer) = cache.get(zone.generation(), tcp, query)
    {
        return Reply::Answer(answer);
    }
    let reply = handle(&zone, query, transport, upstream.is_some());
    if let Reply::Answer(answer) = &reply {
        cache.put(zone.generation(), tcp, query, answer);
    }
    reply
}

/// The upstream server's answer to `query`, or SERVFAIL when it has none in time.
async fn forward(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let ask = async {
        let bind = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            let len = socket.recv(&mut buf).await?;
            // Only the answer to this query (same id) counts.
            if len >= 12 && buf[..2] == query[..2] {
                buf.truncate(len);
                return Ok::<_, std::io::Error>(buf);
            }
        }
    };
    match tokio::time::timeout(UPSTREAM_TIMEOUT, ask).await {
        Ok(Ok(answer)) => Some(answer),
        outcome => {
            debug!(%upstream, ?outcome, "upstream DNS server did not answer");
            match error(query, ResponseCode::ServFail) {
                Reply::Answer(bytes) => Some(bytes),
                _ => None,
            }
        }
    }
}

async fn serve_udp(socket: UdpSocket, zone: SharedZone, cache: Arc<ResponseCache>, upstream: Option<SocketAddr>) {
    let socket = Arc::new(socket);
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
        let response = match reply(&zone, &cache, &buf[..len], Transport::Udp, upstream) {
            Reply::Answer(response) => response,
            Reply::Nothing => continue,
            Reply::Forward => {
                let (socket, query) = (socket.clone(), buf[..len].to_vec());
                let upstream = upstream.expect("forwarding only with an upstream");
                tokio::spawn(async move {
                    if let Some(response) = forward(upstream, &query).await {
                        let _ = socket.send_to(&response, peer).await;
                    }
                });
                continue;
            }
        };
        if let Err(e) = socket.send_to(&response, peer).await {
            debug!(%peer, error = %e, "DNS UDP send");
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: SharedZone, cache: Arc<ResponseCache>, upstream: Option<SocketAddr>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (zone, cache) = (zone.clone(), cache.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, &zone, &cache, upstream).await {
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
async fn serve_connection(
    mut stream: TcpStream,
    zone: &SharedZone,
    cache: &ResponseCache,
    upstream: Option<SocketAddr>,
) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(result) => result?,
        };
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await.map_err(std::io::Error::other)??;
        let response = match reply(zone, cache, &query, Transport::Tcp, upstream) {
            Reply::Answer(response) => response,
            Reply::Nothing => return Ok(()),
            Reply::Forward => match forward(upstream.expect("forwarding only with an upstream"), &query).await {
                Some(response) => response,
                None => return Ok(()),
            },
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&(response.len() as u16).to_be_bytes());
        framed.extend_from_slice(&response);
        stream.write_all(&framed).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut msg = Message::new();
        msg.set_id(id).add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        msg.to_vec().unwrap()
    }

    async fn ask(client: &UdpSocket, server: SocketAddr, id: u16, name: &str) -> Message {
        client.send_to(&query(id, name), server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        Message::from_vec(&buf[..len]).unwrap()
    }

    /// A server on 127.0.0.1 whose upstream is `upstream`; returns its UDP address.
    async fn server(upstream: SocketAddr) -> SocketAddr {
        let zone = Arc::new(RwLock::new(Zone::new("cluster.local", 5).unwrap()));
        let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listeners.udp.local_addr().unwrap();
        tokio::spawn(listeners.serve(zone, Some(upstream)));
        addr
    }

    #[tokio::test]
    async fn outside_names_go_upstream_and_cluster_names_never_do() {
        // An upstream that answers every query with itself, marked as a response.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((len, peer)) = upstream.recv_from(&mut buf).await {
                buf[2] |= 0x80;
                let _ = upstream.send_to(&buf[..len], peer).await;
            }
        });
        let addr = server(upstream_addr).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let outside = ask(&client, addr, 7, "example.com.").await;
        assert_eq!((outside.id(), outside.response_code(), outside.authoritative()), (7, ResponseCode::NoError, false));
        let inside = ask(&client, addr, 8, "nope.default.svc.cluster.local.").await;
        assert_eq!((inside.id(), inside.response_code(), inside.authoritative()), (8, ResponseCode::NXDomain, true));
    }

    #[tokio::test]
    async fn a_silent_upstream_means_servfail_and_not_a_hang() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server(silent.local_addr().unwrap()).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        let answer = ask(&client, addr, 9, "example.com.").await;
        assert_eq!((answer.id(), answer.response_code()), (9, ResponseCode::ServFail));
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}

#[cfg(test)]
mod cache_tests {
    use std::str::FromStr;

    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn query(id: u16) -> Vec<u8> {
        let mut msg = Message::new();
        msg.set_id(id)
            .add_query(Query::query(Name::from_str("web.default.svc.cluster.local.").unwrap(), RecordType::A));
        msg.to_vec().unwrap()
    }

    #[test]
    fn a_repeated_query_gets_the_cached_answer_with_its_own_id_until_the_zone_changes() {
        let zone: SharedZone = Arc::new(RwLock::new(Zone::new("cluster.local", 5).unwrap()));
        let cache = ResponseCache::default();
        let answer = |id| match reply(&zone, &cache, &query(id), Transport::Udp, None) {
            Reply::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("{other:?}"),
        };
        let first = answer(1);
        assert_eq!((first.id(), first.response_code()), (1, ResponseCode::NXDomain));
        let second = answer(2);
        assert_eq!((second.id(), second.response_code()), (2, ResponseCode::NXDomain), "from the cache");
        let svc = serde_json::json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "10.96.0.5"}});
        zone.write().unwrap().apply_service(Arc::new(serde_json::from_value(svc).unwrap()));
        let third = answer(3);
        assert_eq!((third.id(), third.response_code(), third.answers().len()), (3, ResponseCode::NoError, 1));
    }
}
