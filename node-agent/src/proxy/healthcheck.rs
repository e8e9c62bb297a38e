//! Health-check node ports: for each LoadBalancer Service with `externalTrafficPolicy:
//! Local`, the API gives a `healthCheckNodePort`, and every node answers HTTP on it
//! with how many of the Service's ready endpoints it holds, as kube-proxy does: 200
//! with a count above 0, 503 with none, so that an external load balancer sends the
//! Service's traffic only to nodes that serve it locally.
//!
//! [`HealthChecks`] follows the Services and EndpointSlices the proxy is fed and says
//! which ports to serve with which answer; [`HealthServer`] keeps one listener per port
//! on the node's address, each on a thread of its own that reads the current answer
//! from a shared table, so a changed count needs no new listener. This module must not
//! touch the datapath.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{info, warn};

use super::model::{ObjectRef, slice_service};
use super::source::SourceEvent;

/// What the node sees of Services with a health-check node port, and how many ready
/// endpoints of each this node holds.
#[derive(Debug)]
pub struct HealthChecks {
    node: String,
    /// Services with `spec.healthCheckNodePort`: the port.
    ports: BTreeMap<ObjectRef, u16>,
    /// Every EndpointSlice: its Service and its ready endpoints on this node.
    local_ready: BTreeMap<ObjectRef, (ObjectRef, usize)>,
}

/// A port's answer: the Service and its ready endpoints on this node.
pub type Answers = BTreeMap<u16, (ObjectRef, usize)>;

impl HealthChecks {
    pub fn new(node: &str) -> Self {
        Self { node: node.to_owned(), ports: BTreeMap::new(), local_ready: BTreeMap::new() }
    }

    /// Takes note of one change the proxy is fed.
    pub fn note(&mut self, event: &SourceEvent) {
        match event {
            SourceEvent::ServiceUpserted(svc) => {
                let Some(r) = ObjectRef::from_meta(&svc.metadata) else { return };
                let port = svc.spec.as_ref().and_then(|s| s.health_check_node_port).and_then(|p| u16::try_from(p).ok());
                match port {
                    Some(port) => self.ports.insert(r, port),
                    None => self.ports.remove(&r),
                };
            }
            SourceEvent::ServiceDeleted(r) => {
                self.ports.remove(r);
            }
            SourceEvent::EndpointSliceUpserted(slice) => {
                let (Some(r), Some(svc)) = (ObjectRef::from_meta(&slice.metadata), slice_service(slice)) else {
                    return;
                };
                let here = slice.endpoints.iter().filter(|e| {
                    e.node_name.as_deref() == Some(self.node.as_str())
                        && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
                });
                self.local_ready.insert(r, (svc, here.count()));
            }
            SourceEvent::EndpointSliceDeleted(r) => {
                self.local_ready.remove(r);
            }
        }
    }

    /// Each health-check port and its answer now.
    pub fn answers(&self) -> Answers {
        let mut out: Answers = self.ports.iter().map(|(svc, port)| (*port, (svc.clone(), 0))).collect();
        for (svc, count) in self.local_ready.values() {
            if let Some(answer) = self.ports.get(svc).and_then(|port| out.get_mut(port)) {
                answer.1 += count;
            }
        }
        out
    }
}

/// The listeners of the health-check ports on one address.
#[derive(Debug)]
pub struct HealthServer {
    addr: Ipv4Addr,
    answers: Arc<RwLock<Answers>>,
    /// Each port's stop flag (its thread ends soon after it is set).
    listening: HashMap<u16, Arc<AtomicBool>>,
}

impl HealthServer {
    pub fn new(addr: Ipv4Addr) -> Self {
        Self { addr, answers: Arc::default(), listening: HashMap::new() }
    }

    /// Serves exactly the ports of `answers` with those answers. A port that cannot be
    /// bound is logged and tried again at the next sync; returns whether any failed.
    pub fn sync(&mut self, answers: Answers) -> bool {
        let mut failed = false;
        self.listening.retain(|port, stop| {
            let keep = answers.contains_key(port);
            if !keep {
                stop.store(true, Ordering::Relaxed);
                info!(port, "health-check node port closed");
            }
            keep
        });
        for (port, (svc, _)) in &answers {
            if self.listening.contains_key(port) {
                continue;
            }
            match TcpListener::bind(SocketAddr::from((self.addr, *port))).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(listener) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let (answers, flag, port) = (self.answers.clone(), stop.clone(), *port);
                    std::thread::Builder::new()
                        .name(format!("healthz-{port}"))
                        .spawn(move || serve(&listener, port, &answers, &flag))
                        .map(|_| self.listening.insert(port, stop))
                        .unwrap_or_else(|e| {
                            warn!(port, error = %e, "cannot start a health-check thread");
                            failed = true;
                            None
                        });
                    info!(port, service = %svc, "health-check node port open");
                }
                Err(e) => {
                    warn!(port, service = %svc, error = %e, "cannot listen on the health-check node port; will retry");
                    failed = true;
                }
            }
        }
        *self.answers.write().unwrap_or_else(|e| e.into_inner()) = answers;
        failed
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        for stop in self.listening.values() {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Accepts connections on `listener` until `stop` is set, answering each with the
/// port's current answer.
fn serve(listener: &TcpListener, port: u16, answers: &RwLock<Answers>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let answer = answers.read().unwrap_or_else(|e| e.into_inner()).get(&port).cloned();
                if let Err(e) = respond(conn, answer) {
                    warn!(port, error = %e, "a health check's connection failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                warn!(port, error = %e, "accepting a health check failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Reads the request (whatever it asks, as kube-proxy) and writes the answer.
fn respond(mut conn: TcpStream, answer: Option<(ObjectRef, usize)>) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = [0u8; 1024];
    let _ = conn.read(&mut request)?;
    let (status, body) = response(answer.as_ref());
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The status line and JSON body for a Service with `count` local ready endpoints.
fn response(answer: Option<&(ObjectRef, usize)>) -> (&'static str, String) {
    let (namespace, name, count) = answer.map_or(("", "", 0), |(r, n)| (r.namespace.as_str(), r.name.as_str(), *n));
    let body = serde_json::json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": count,
        "serviceProxyHealthy": true,
    })
    .to_string();
    (if count > 0 { "200 OK" } else { "503 Service Unavailable" }, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_count_only_this_nodes_ready_endpoints() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000}
        }))
        .unwrap();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.0.2"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["10.244.0.3"], "nodeName": "n1", "conditions": {"ready": false}},
                {"addresses": ["10.244.1.2"], "nodeName": "n2", "conditions": {"ready": true}}
            ]
        }))
        .unwrap();
        let mut n1 = HealthChecks::new("n1");
        let mut n3 = HealthChecks::new("n3");
        for table in [&mut n1, &mut n3] {
            table.note(&SourceEvent::ServiceUpserted(Box::new(svc.clone())));
            table.note(&SourceEvent::EndpointSliceUpserted(Box::new(slice.clone())));
        }
        assert_eq!(n1.answers().get(&31000).map(|a| a.1), Some(1));
        assert_eq!(n3.answers().get(&31000).map(|a| a.1), Some(0));
        let (status, body) = response(n1.answers().get(&31000));
        assert_eq!(status, "200 OK");
        assert!(body.contains("\"localEndpoints\":1"), "{body}");
        assert_eq!(response(n3.answers().get(&31000)).0, "503 Service Unavailable");
    }
}
