//! The `dns_query` fuzz target's body, here so that the seed-corpus test (stable, no
//! libFuzzer) and `cargo fuzz` run the same code. Compiled only for tests and with the
//! `fuzzing` feature (which `node-agent/fuzz` enables): no API of the agent.

use std::sync::{Arc, OnceLock};

use hickory_proto::op::{Message, MessageType};

use super::answer::{EDNS_UDP_LIMIT, Transport, respond};
use super::zone::Zone;

/// A zone with each kind of Service: ClusterIP with named ports, headless with stable
/// names, ExternalName.
fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mut zone = Zone::new("cluster.local", 5).expect("a valid domain");
        let objects = serde_json::json!([
            {"metadata": {"name": "web", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}},
            {"metadata": {"name": "db", "namespace": "default"}, "spec": {"clusterIP": "None"}},
            {"metadata": {"name": "ext", "namespace": "default"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}}
        ]);
        for svc in objects.as_array().into_iter().flatten() {
            zone.apply_service(Arc::new(serde_json::from_value(svc.clone()).expect("a Service")));
        }
        let endpoints: Vec<_> = (1..=40)
            .map(|i| serde_json::json!({"addresses": [format!("10.244.1.{i}")], "hostname": format!("db-{i}")}))
            .collect();
        let slice = serde_json::json!({
            "metadata": {"name": "db-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "pg", "port": 5432}]});
        zone.apply_slice(Arc::new(serde_json::from_value(slice).expect("an EndpointSlice")));
        zone
    })
}

/// Runs one input as a query. Byte 0's low bit picks the transport (0 UDP, 1 TCP); the
/// rest is the query as it arrives. Whatever comes back must be a response to it: it
/// decodes, carries the query's id, and fits the transport.
pub fn fuzz_one(data: &[u8]) {
    let [mode, query @ ..] = data else { return };
    let transport = if mode & 1 == 0 { Transport::Udp } else { Transport::Tcp };
    let Some(response) = respond(zone(), query, transport) else { return };
    let message = Message::from_vec(&response).expect("every response decodes");
    assert_eq!(message.message_type(), MessageType::Response);
    assert_eq!(message.id(), u16::from_be_bytes([query[0], query[1]]), "the response carries the query's id");
    if transport == Transport::Udp {
        assert!(response.len() <= usize::from(EDNS_UDP_LIMIT), "a UDP response of {} bytes", response.len());
    }
}
