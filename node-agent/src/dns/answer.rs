//! One DNS query in, one response out: decoding, the zone's answer, negative answers
//! with the SOA, EDNS0, and truncation for UDP. Pure; the server owns the sockets.
//!
//! What is not the cluster's goes to the upstream server when there is one
//! ([`Reply::Forward`]); without one it is refused at once, so a resolver moves on to
//! its next server or search suffix instead of waiting.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName};

use super::zone::{Lookup, Zone};

/// The largest UDP response without EDNS (RFC 1035).
const PLAIN_UDP_LIMIT: usize = 512;
/// The largest UDP response we send with EDNS: the DNS flag day's safe size, which no
/// path fragments.
pub const EDNS_UDP_LIMIT: u16 = 1232;

/// How the query came in: UDP responses are bounded and may be truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send this response.
    Answer(Vec<u8>),
    /// Not the cluster's: ask the upstream server and relay its answer.
    Forward,
    /// Send nothing (too short to carry an id, or itself a response).
    Nothing,
}

/// The response to the query in `request`, encoded; `None` when nothing should be sent
/// (too short to carry an id, or itself a response). Names outside the zone are refused.
pub fn respond(zone: &Zone, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
    match handle(zone, request, transport, false) {
        Reply::Answer(bytes) => Some(bytes),
        Reply::Forward | Reply::Nothing => None,
    }
}

/// [`respond`], except that with `forwarding` a query for a name outside the zone is
/// [`Reply::Forward`] rather than refused.
pub fn handle(zone: &Zone, request: &[u8], transport: Transport, forwarding: bool) -> Reply {
    if request.len() < 12 || request[2] & 0x80 != 0 {
        return Reply::Nothing;
    }
    let query = match Message::from_vec(request) {
        Ok(query) => query,
        Err(_) => return error(request, ResponseCode::FormErr),
    };
    let Some(response) = answer(zone, &query, forwarding) else { return Reply::Forward };
    let Ok(bytes) = response.to_vec() else { return error(request, ResponseCode::ServFail) };
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => match query.extensions() {
            Some(edns) => usize::from(edns.max_payload().clamp(PLAIN_UDP_LIMIT as u16, EDNS_UDP_LIMIT)),
            None => PLAIN_UDP_LIMIT,
        },
    };
    if bytes.len() <= limit {
        return Reply::Answer(bytes);
    }
    // Too large for this transport: the header and question only, with TC set, so that
    // the client asks again over TCP.
    let mut truncated = response.truncate();
    truncated.set_truncated(true);
    truncated.to_vec().map_or_else(|_| error(request, ResponseCode::ServFail), Reply::Answer)
}

/// A bare error response to `request` (at least 12 bytes): its id and the code.
pub fn error(request: &[u8], code: ResponseCode) -> Reply {
    let id = u16::from_be_bytes([request[0], request[1]]);
    Message::error_msg(id, OpCode::Query, code).to_vec().map_or(Reply::Nothing, Reply::Answer)
}

/// The response message for a decoded query; `None` for a name outside the zone when
/// `forwarding` (the upstream answers it).
pub fn answer(zone: &Zone, query: &Message, forwarding: bool) -> Option<Message> {
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(false)
        .add_queries(query.queries().iter().cloned());
    if let Some(edns) = query.extensions() {
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_UDP_LIMIT).set_version(0);
        response.set_edns(ours);
        if edns.version() > 0 {
            response.set_response_code(ResponseCode::BADVERS);
            return Some(response);
        }
    }
    if query.message_type() != MessageType::Query || query.op_code() != OpCode::Query {
        response.set_response_code(ResponseCode::NotImp);
        return Some(response);
    }
    let [question] = query.queries() else {
        response.set_response_code(ResponseCode::FormErr);
        return Some(response);
    };
    if question.query_class() != DNSClass::IN {
        response.set_response_code(ResponseCode::Refused);
        return Some(response);
    }
    let name = LowerName::new(question.name());
    match zone.lookup(&name, question.query_type()) {
        Lookup::Records(records) => {
            response.set_authoritative(true).add_answers(records);
        }
        Lookup::NoData => {
            response.set_authoritative(true).add_name_server(zone.soa().clone());
        }
        Lookup::NxDomain => {
            response
                .set_authoritative(true)
                .set_response_code(ResponseCode::NXDomain)
                .add_name_server(zone.soa().clone());
        }
        Lookup::NotOurs if forwarding => return None,
        Lookup::NotOurs => {
            response.set_response_code(ResponseCode::Refused);
        }
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::Arc;

    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn zone_with_many_endpoints(count: u8) -> Zone {
        let mut zone = Zone::new("cluster.local", 5).unwrap();
        let svc =
            serde_json::json!({"metadata": {"name": "big", "namespace": "default"}, "spec": {"clusterIP": "None"}});
        zone.apply_service(Arc::new(serde_json::from_value(svc).unwrap()));
        let endpoints: Vec<_> =
            (1..=count).map(|i| serde_json::json!({"addresses": [format!("10.244.1.{i}")]})).collect();
        let slice = serde_json::json!({
            "metadata": {"name": "big-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "big"}},
            "addressType": "IPv4", "endpoints": endpoints});
        zone.apply_slice(Arc::new(serde_json::from_value(slice).unwrap()));
        zone
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut msg = Message::new();
        msg.set_id(4242).set_recursion_desired(true).add_query(Query::query(Name::from_str(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            msg.set_edns(e);
        }
        msg.to_vec().unwrap()
    }

    fn ask(zone: &Zone, name: &str, qtype: RecordType, edns: Option<u16>, transport: Transport) -> Message {
        Message::from_vec(&respond(zone, &query(name, qtype, edns), transport).unwrap()).unwrap()
    }

    #[test]
    fn answers_are_authoritative_and_negative_ones_carry_the_soa() {
        let zone = zone_with_many_endpoints(2);
        let r = ask(&zone, "big.default.svc.cluster.local.", RecordType::A, None, Transport::Udp);
        assert_eq!(
            (r.id(), r.response_code(), r.authoritative(), r.answers().len()),
            (4242, ResponseCode::NoError, true, 2)
        );
        assert!(r.recursion_desired() && !r.recursion_available());
        let r = ask(&zone, "nope.default.svc.cluster.local.", RecordType::A, None, Transport::Udp);
        assert_eq!(r.response_code(), ResponseCode::NXDomain);
        assert_eq!(r.name_servers()[0].record_type(), RecordType::SOA);
        let r = ask(&zone, "big.default.svc.cluster.local.", RecordType::MX, None, Transport::Udp);
        assert_eq!((r.response_code(), r.answers().len(), r.name_servers().len()), (ResponseCode::NoError, 0, 1));
        // Outside the cluster domain: refused at once (there is no upstream).
        let r = ask(&zone, "example.com.", RecordType::A, None, Transport::Udp);
        assert_eq!(r.response_code(), ResponseCode::Refused);
    }

    #[test]
    fn large_udp_answers_are_truncated_unless_edns_or_tcp_allows_them() {
        let zone = zone_with_many_endpoints(60);
        let name = "big.default.svc.cluster.local.";
        let plain = ask(&zone, name, RecordType::A, None, Transport::Udp);
        assert!(plain.truncated() && plain.answers().is_empty(), "60 A records exceed 512 bytes");
        assert_eq!(plain.queries().len(), 1);
        let edns = ask(&zone, name, RecordType::A, Some(4096), Transport::Udp);
        assert!(!edns.truncated() && edns.answers().len() == 60, "EDNS allows up to 1232 bytes");
        assert_eq!(edns.extensions().as_ref().map(|e| e.max_payload()), Some(EDNS_UDP_LIMIT));
        let tcp = ask(&zone, name, RecordType::A, None, Transport::Tcp);
        assert!(!tcp.truncated() && tcp.answers().len() == 60);
    }

    #[test]
    fn malformed_queries_get_formerr_and_responses_get_nothing() {
        let zone = zone_with_many_endpoints(1);
        let garbage = [0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff];
        let r = Message::from_vec(&respond(&zone, &garbage, Transport::Udp).unwrap()).unwrap();
        assert_eq!((r.id(), r.response_code()), (0x1234, ResponseCode::FormErr));
        assert_eq!(respond(&zone, &garbage[..5], Transport::Udp), None, "too short for an id");
        let mut response = query("big.default.svc.cluster.local.", RecordType::A, None);
        response[2] |= 0x80;
        assert_eq!(respond(&zone, &response, Transport::Udp), None, "never answer an answer");
        let mut two = Message::from_vec(&query("a.cluster.local.", RecordType::A, None)).unwrap();
        two.add_query(Query::query(Name::from_str("b.cluster.local.").unwrap(), RecordType::A));
        let r = Message::from_vec(&respond(&zone, &two.to_vec().unwrap(), Transport::Udp).unwrap()).unwrap();
        assert_eq!(r.response_code(), ResponseCode::FormErr);
    }
}
