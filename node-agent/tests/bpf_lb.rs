//! BPF_PROG_TEST_RUN tests of the "from pod", underlay (masquerade) and XDP NodePort programs on
//! crafted packets: the real
//! program in the kernel, maps written directly (the reconciler has its own tests).
//!
//! Needs root and bpffs; skips without them, fails under CI=true. Each test uses its own
//! bpffs pin directory, removed at the end.

use std::{net::Ipv4Addr, sync::Mutex, time::Duration};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{TestRun, TestRunOptions},
};
use skiff_ebpf_common::{
    BACKEND_FLAG_TERMINATING, Backend4, CT_DIR_FORWARD, CT_FLAG_CLOSING, Ct4Entry, Ct4Key, DEFAULT_HAIRPIN_ADDR,
    LbConfig, MasqConfig, PROTO_ICMP, PROTO_TCP, PROTO_UDP, RevNat4, SERVICE_FLAG_AFFINITY, SERVICE_FLAG_MAGLEV,
    Service4Key, Service4Value, addr_to_map, pin, port_to_map,
};
use skiff_node::datapath::{Datapath, MapSizes, Prog, read_stats, set_masq_config};
use skiff_tests::{PinDir, require_privileges, unique_tag};

/// Privileged tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VPORT: u16 = 80;
const BACKENDS: [Ipv4Addr; 3] =
    [Ipv4Addr::new(10, 244, 1, 11), Ipv4Addr::new(10, 244, 1, 12), Ipv4Addr::new(10, 244, 1, 13)];
const BPORT: u16 = 8080;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

// ---- packets ---------------------------------------------------------------------

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word =
            if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
        acc += word as u32;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    fold(sum16(segment, sum16(&pseudo, 0)))
}

/// An Ethernet + IPv4 + TCP/UDP frame with valid checksums.
fn packet(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    if proto == PROTO_TCP {
        l4.extend_from_slice(&1000u32.to_be_bytes()); // seq
        l4.extend_from_slice(&(if tcp_flags & TCP_ACK != 0 { 5000u32 } else { 0 }).to_be_bytes());
        l4.extend_from_slice(&[5 << 4, tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let csum = l4_checksum(src.0, dst.0, proto, &l4);
    let off = if proto == PROTO_TCP { 16 } else { 6 };
    l4[off..off + 2].copy_from_slice(&csum.to_be_bytes());

    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let csum = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());

    let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&l4);
    frame
}

/// Gives a frame made by `packet` (TCP, no payload) other addresses and ports, checksums
/// recomputed.
fn readdress(frame: &mut [u8], src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) {
    frame[26..30].copy_from_slice(&src.0.octets());
    frame[30..34].copy_from_slice(&dst.0.octets());
    frame[34..36].copy_from_slice(&src.1.to_be_bytes());
    frame[36..38].copy_from_slice(&dst.1.to_be_bytes());
    frame[24..26].fill(0);
    let ip = fold(sum16(&frame[14..34], 0));
    frame[24..26].copy_from_slice(&ip.to_be_bytes());
    frame[50..52].fill(0);
    let l4 = l4_checksum(src.0, dst.0, PROTO_TCP, &frame[34..]);
    frame[50..52].copy_from_slice(&l4.to_be_bytes());
}

/// The frame with another IPv4 TTL, its header checksum recomputed.
fn with_ttl(frame: &[u8], ttl: u8) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[22] = ttl;
    frame[24..26].fill(0);
    let check = fold(sum16(&frame[14..34], 0));
    frame[24..26].copy_from_slice(&check.to_be_bytes());
    frame
}

/// A parsed output frame; checksums are verified while parsing.
#[derive(Debug)]
struct Parsed {
    eth_dst: [u8; 6],
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    l4: Vec<u8>,
}

fn parse(frame: &[u8]) -> Parsed {
    assert!(frame.len() >= 34, "frame too short: {frame:?}");
    let ip = &frame[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(fold(sum16(ip, 0)), 0, "IP header checksum is wrong: {ip:02x?}");
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    assert_eq!(tot_len + 14, frame.len(), "IP total length disagrees with the frame length");
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = frame[34..].to_vec();
    let proto = ip[9];
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let udp_no_csum = proto == PROTO_UDP && l4[6] == 0 && l4[7] == 0;
            if !udp_no_csum {
                assert_eq!(l4_checksum(src, dst, proto, &l4), 0, "L4 checksum is wrong");
            }
        }
        PROTO_ICMP => assert_eq!(fold(sum16(&l4, 0)), 0, "ICMP checksum is wrong"),
        _ => {}
    }
    let mut eth_dst = [0; 6];
    eth_dst.copy_from_slice(&frame[..6]);
    Parsed {
        eth_dst,
        proto,
        src,
        dst,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        tcp_flags: if proto == PROTO_TCP { l4[13] } else { 0 },
        l4,
    }
}

// ---- a loaded datapath with directly written maps -----------------------------------

struct Harness {
    datapath: Datapath,
    pins: PinDir,
}

impl Harness {
    fn new() -> Self {
        let pins = PinDir::new(&unique_tag("bpf"));
        let datapath = Datapath::load(&pins.path, MapSizes::default()).expect("load datapath");
        Self { datapath, pins }
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> HashMap<MapData, K, V> {
        let data = MapData::from_pin(self.pins.path.join(name)).expect("open pinned map");
        let lru = [pin::CT, pin::AFFINITY, pin::SNAT].contains(&name);
        let map = if lru { Map::LruHashMap(data) } else { Map::HashMap(data) };
        HashMap::try_from(map).expect("hash map")
    }

    fn add_backend(&self, id: u32, addr: Ipv4Addr, proto: u8, flags: u8) {
        let backend = Backend4 { addr: addr_to_map(addr.octets()), port: port_to_map(BPORT), proto, flags };
        self.hash::<u32, Backend4>(pin::BACKENDS).insert(id, backend, 0).unwrap();
    }

    /// Writes a frontend (VIP:VPORT/proto) whose slots hold `ids`, as the reconciler
    /// would: slots first, then slot 0.
    fn set_service(&self, proto: u8, ids: &[u32], flags: u16, affinity_timeout_s: u32) {
        let mut services = self.hash::<Service4Key, Service4Value>(pin::SERVICES);
        let vip = addr_to_map(VIP.octets());
        for (i, id) in ids.iter().enumerate() {
            let key = Service4Key::new(vip, port_to_map(VPORT), proto, i as u16 + 1);
            services.insert(key, Service4Value { backend_id: *id, rev_nat_index: 1, ..Default::default() }, 0).unwrap();
        }
        let front = Service4Value {
            count: ids.len() as u16,
            rev_nat_index: 1,
            flags,
            affinity_timeout_s,
            ..Default::default()
        };
        services.insert(Service4Key::new(vip, port_to_map(VPORT), proto, 0), front, 0).unwrap();
        let rev = RevNat4 { addr: vip, port: port_to_map(VPORT), _pad: 0 };
        self.hash::<u32, RevNat4>(pin::REV_NAT).insert(1, rev, 0).unwrap();
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_prog(Prog::FromPod, frame)
    }

    fn run_prog(&mut self, prog: Prog, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; 512];
        let program = self.datapath.program(prog).unwrap();
        let result = program
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn stat(&self, name: &str) -> u64 {
        read_stats(&self.pins.path).unwrap().into_iter().find(|(n, _)| *n == name).unwrap().1
    }
}

fn backend_index(addr: Ipv4Addr) -> usize {
    BACKENDS.iter().position(|b| *b == addr).unwrap_or_else(|| panic!("{addr} is not a backend"))
}

fn with_harness(test: &str, f: impl FnOnce(&mut Harness)) {
    if !require_privileges(test) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::new();
    f(&mut h);
}

// ---- tests --------------------------------------------------------------------------

#[test]
fn dnat_rewrites_address_and_port_with_valid_checksums() {
    with_harness("dnat_rewrites_address_and_port_with_valid_checksums", |h| {
        for proto in [PROTO_TCP, PROTO_UDP] {
            h.add_backend(1, BACKENDS[0], proto, 0);
            h.set_service(proto, &[1], 0, 0);
            let flags = if proto == PROTO_TCP { TCP_SYN } else { 0 };
            let (action, out) = h.run(&packet(proto, (CLIENT, 40000), (VIP, VPORT), flags, b"hello world"));
            assert_eq!(action, TC_ACT_OK);
            let p = parse(&out);
            assert_eq!((p.src, p.sport), (CLIENT, 40000), "source must be untouched");
            assert_eq!((p.dst, p.dport), (BACKENDS[0], BPORT), "destination must be the backend");
            assert!(p.l4.ends_with(b"hello world"));
        }
        // A UDP packet without checksum keeps none.
        let mut frame = packet(PROTO_UDP, (CLIENT, 40001), (VIP, VPORT), 0, b"x");
        frame[40] = 0;
        frame[41] = 0;
        let (_, out) = h.run(&frame);
        assert_eq!(&out[40..42], &[0, 0], "a zero UDP checksum must stay zero");
        assert!(h.stat("translated") >= 3);
        assert!(h.stat("ct_new") >= 3);
    });
}

#[test]
fn non_service_traffic_passes_untouched() {
    with_harness("non_service_traffic_passes_untouched", |h| {
        h.add_backend(1, BACKENDS[0], PROTO_TCP, 0);
        h.set_service(PROTO_TCP, &[1], 0, 0);
        for frame in [
            packet(PROTO_TCP, (CLIENT, 40000), (BACKENDS[1], 80), TCP_SYN, b""),
            packet(PROTO_TCP, (CLIENT, 40000), (VIP, 81), TCP_SYN, b""),
            packet(PROTO_UDP, (CLIENT, 40000), (VIP, VPORT), 0, b""),
        ] {
            let (action, out) = h.run(&frame);
            assert_eq!(action, TC_ACT_OK);
            assert_eq!(out, frame);
        }
    });
}

#[test]
fn replies_are_reverse_translated() {
    with_harness("replies_are_reverse_translated", |h| {
        for proto in [PROTO_TCP, PROTO_UDP] {
            h.add_backend(1, BACKENDS[1], proto, 0);
            h.set_service(proto, &[1], 0, 0);
            let syn = if proto == PROTO_TCP { TCP_SYN } else { 0 };
            h.run(&packet(proto, (CLIENT, 41000), (VIP, VPORT), syn, b""));
            let synack = if proto == PROTO_TCP { TCP_SYN | TCP_ACK } else { 0 };
            let (action, out) = h.run(&packet(proto, (BACKENDS[1], BPORT), (CLIENT, 41000), synack, b"reply"));
            assert_eq!(action, TC_ACT_OK);
            let p = parse(&out);
            assert_eq!((p.src, p.sport), (VIP, VPORT), "the client must only ever see the VIP");
            assert_eq!((p.dst, p.dport), (CLIENT, 41000));
        }
        assert!(h.stat("rev_translated") >= 2);
    });
}

#[test]
fn no_backend_tcp_gets_reset() {
    with_harness("no_backend_tcp_gets_reset", |h| {
        h.set_service(PROTO_TCP, &[], 0, 0);
        let (action, out) = h.run(&packet(PROTO_TCP, (CLIENT, 42000), (VIP, VPORT), TCP_SYN, b""));
        assert_eq!(action, TC_ACT_REDIRECT, "the reset goes back out toward the pod");
        let p = parse(&out);
        assert_eq!(p.eth_dst, [0x02, 0, 0, 0, 0, 0x02], "Ethernet addresses are swapped");
        assert_eq!((p.src, p.sport), (VIP, VPORT));
        assert_eq!((p.dst, p.dport), (CLIENT, 42000));
        assert_eq!(p.tcp_flags, TCP_RST | TCP_ACK);
        let ack = u32::from_be_bytes([p.l4[8], p.l4[9], p.l4[10], p.l4[11]]);
        assert_eq!(ack, 1001, "RST acknowledges the SYN");
        // A RST toward a Service without backends is dropped, never answered.
        let (action, _) = h.run(&packet(PROTO_TCP, (CLIENT, 42000), (VIP, VPORT), TCP_RST, b""));
        assert_eq!(action, TC_ACT_SHOT);
        assert!(h.stat("no_backend") >= 2);
    });
}

#[test]
fn no_backend_udp_gets_port_unreachable() {
    with_harness("no_backend_udp_gets_port_unreachable", |h| {
        h.set_service(PROTO_UDP, &[], 0, 0);
        let frame = packet(PROTO_UDP, (CLIENT, 43000), (VIP, VPORT), 0, b"some payload");
        let (action, out) = h.run(&frame);
        assert_eq!(action, TC_ACT_REDIRECT);
        let p = parse(&out);
        assert_eq!(p.proto, PROTO_ICMP);
        assert_eq!((p.src, p.dst), (VIP, CLIENT));
        assert_eq!(&p.l4[..2], &[3, 3], "ICMP destination unreachable, port unreachable");
        assert_eq!(&p.l4[8..36], &frame[14..42], "the original IP header and 8 bytes follow");
    });
}

#[test]
fn affinity_pins_a_client_to_one_backend() {
    with_harness("affinity_pins_a_client_to_one_backend", |h| {
        for (i, b) in BACKENDS.iter().enumerate() {
            h.add_backend(i as u32 + 1, *b, PROTO_TCP, 0);
        }
        h.set_service(PROTO_TCP, &[1, 2, 3], SERVICE_FLAG_AFFINITY, 10_800);
        let mut seen = std::collections::BTreeSet::new();
        for sport in 0..30 {
            let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 44000 + sport), (VIP, VPORT), TCP_SYN, b""));
            seen.insert(parse(&out).dst);
        }
        assert_eq!(seen.len(), 1, "with ClientIP affinity every new flow goes to one backend: {seen:?}");
        // Another client may land elsewhere, and is pinned too.
        let other = Ipv4Addr::new(10, 244, 1, 20);
        let mut seen_other = std::collections::BTreeSet::new();
        for sport in 0..10 {
            let (_, out) = h.run(&packet(PROTO_TCP, (other, 44000 + sport), (VIP, VPORT), TCP_SYN, b""));
            seen_other.insert(parse(&out).dst);
        }
        assert_eq!(seen_other.len(), 1);

        // Without affinity, 30 new flows spread over more than one backend.
        h.set_service(PROTO_TCP, &[1, 2, 3], 0, 0);
        let mut spread = std::collections::BTreeSet::new();
        for sport in 0..30 {
            let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 45000 + sport), (VIP, VPORT), TCP_SYN, b""));
            spread.insert(parse(&out).dst);
        }
        assert!(spread.len() > 1, "random selection must spread flows: {spread:?}");
    });
}

#[test]
fn maglev_sends_a_flow_to_the_same_backend_without_conntrack_and_whatever_address_it_reached() {
    with_harness("maglev_sends_a_flow_to_the_same_backend", |h| {
        for (i, b) in BACKENDS.iter().enumerate() {
            h.add_backend(i as u32 + 1, *b, PROTO_UDP, 0);
        }
        // A 7-entry table (prime), as the reconciler writes one into the slots.
        let table = [1, 2, 3, 1, 3, 2, 1];
        h.set_service(PROTO_UDP, &table, SERVICE_FLAG_MAGLEV, 0);
        fn clear_conntrack(h: &Harness) {
            let mut ct = h.hash::<Ct4Key, Ct4Entry>(pin::CT);
            let keys: Vec<Ct4Key> = ct.keys().map(Result::unwrap).collect();
            for k in keys {
                let _ = ct.remove(&k);
            }
        }
        let mut spread = std::collections::BTreeSet::new();
        for sport in 0..20 {
            let frame = packet(PROTO_UDP, (CLIENT, 47000 + sport), (VIP, VPORT), 0, b"x");
            let (_, first) = h.run(&frame);
            clear_conntrack(h);
            let (_, again) = h.run(&frame);
            clear_conntrack(h);
            assert_eq!(parse(&first).dst, parse(&again).dst, "flow from port {} changed backend", 47000 + sport);
            spread.insert(parse(&first).dst);
        }
        assert!(spread.len() > 1, "Maglev must spread flows over the table: {spread:?}");
        // The flow hash leaves out the address the client reached: the same flow to
        // another node's address (a node port) picks the same backend there.
        let (_, via_vip) = h.run(&packet(PROTO_UDP, (CLIENT, 47100), (VIP, VPORT), 0, b"x"));
        clear_conntrack(h);
        let other = Ipv4Addr::new(10, 96, 0, 11);
        let mut services = h.hash::<Service4Key, Service4Value>(pin::SERVICES);
        for (i, id) in table.iter().enumerate() {
            let key = Service4Key::new(addr_to_map(other.octets()), port_to_map(VPORT), PROTO_UDP, i as u16 + 1);
            services.insert(key, Service4Value { backend_id: *id, rev_nat_index: 1, ..Default::default() }, 0).unwrap();
        }
        let front = Service4Value { count: 7, rev_nat_index: 1, flags: SERVICE_FLAG_MAGLEV, ..Default::default() };
        services
            .insert(Service4Key::new(addr_to_map(other.octets()), port_to_map(VPORT), PROTO_UDP, 0), front, 0)
            .unwrap();
        let (_, via_other) = h.run(&packet(PROTO_UDP, (CLIENT, 47100), (other, VPORT), 0, b"x"));
        assert_eq!(parse(&via_vip).dst, parse(&via_other).dst);
    });
}

#[test]
fn affinity_skips_a_terminating_backend() {
    with_harness("affinity_skips_a_terminating_backend", |h| {
        for (i, b) in BACKENDS.iter().enumerate() {
            h.add_backend(i as u32 + 1, *b, PROTO_TCP, 0);
        }
        h.set_service(PROTO_TCP, &[1, 2, 3], SERVICE_FLAG_AFFINITY, 10_800);
        let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 46000), (VIP, VPORT), TCP_SYN, b""));
        let first = backend_index(parse(&out).dst);
        let id = first as u32 + 1;
        h.add_backend(id, BACKENDS[first], PROTO_TCP, BACKEND_FLAG_TERMINATING);
        let rest: Vec<u32> = (1..=3).filter(|i| *i != id).collect();
        h.set_service(PROTO_TCP, &rest, SERVICE_FLAG_AFFINITY, 10_800);
        for sport in 1..10 {
            let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 46000 + sport), (VIP, VPORT), TCP_SYN, b""));
            assert_ne!(parse(&out).dst, BACKENDS[first], "a terminating backend gets no new flows");
        }
    });
}

#[test]
fn conntrack_keeps_a_flow_on_its_backend_after_the_backend_set_changes() {
    with_harness("conntrack_keeps_a_flow_on_its_backend_after_the_backend_set_changes", |h| {
        for (i, b) in BACKENDS.iter().enumerate() {
            h.add_backend(i as u32 + 1, *b, PROTO_TCP, 0);
        }
        h.set_service(PROTO_TCP, &[1, 2, 3], 0, 0);
        let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 47000), (VIP, VPORT), TCP_SYN, b""));
        let chosen = backend_index(parse(&out).dst);
        // The chosen backend is now terminating: out of the slots, still in the backends map.
        let id = chosen as u32 + 1;
        h.add_backend(id, BACKENDS[chosen], PROTO_TCP, BACKEND_FLAG_TERMINATING);
        let rest: Vec<u32> = (1..=3).filter(|i| *i != id).collect();
        h.set_service(PROTO_TCP, &rest, 0, 0);
        // Drop the now-stale slot 3 the way the reconciler does.
        let mut services = h.hash::<Service4Key, Service4Value>(pin::SERVICES);
        let _ = services.remove(&Service4Key::new(addr_to_map(VIP.octets()), port_to_map(VPORT), PROTO_TCP, 3));
        for _ in 0..20 {
            let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 47000), (VIP, VPORT), TCP_ACK, b"data"));
            assert_eq!(parse(&out).dst, BACKENDS[chosen], "an established flow stays on its backend");
        }
        for sport in 1..20 {
            let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 47000 + sport), (VIP, VPORT), TCP_SYN, b""));
            assert_ne!(parse(&out).dst, BACKENDS[chosen], "new flows avoid the removed backend");
        }
    });
}

#[test]
fn a_direct_connection_reusing_a_closed_service_flows_port_is_not_reverse_translated() {
    with_harness("a_direct_connection_reusing_a_closed_service_flows_port", |h| {
        h.add_backend(1, BACKENDS[1], PROTO_TCP, 0);
        h.set_service(PROTO_TCP, &[1], 0, 0);
        // A Service flow from port 42000 to backend 2, closed by both sides.
        h.run(&packet(PROTO_TCP, (CLIENT, 42000), (VIP, VPORT), TCP_SYN, b""));
        h.run(&packet(PROTO_TCP, (BACKENDS[1], BPORT), (CLIENT, 42000), TCP_SYN | TCP_ACK, b""));
        h.run(&packet(PROTO_TCP, (CLIENT, 42000), (VIP, VPORT), TCP_FIN | TCP_ACK, b""));
        let (_, out) = h.run(&packet(PROTO_TCP, (BACKENDS[1], BPORT), (CLIENT, 42000), TCP_FIN | TCP_ACK, b""));
        assert_eq!(parse(&out).src, VIP, "the closing flow's packets are still translated");
        // The client's kernel reuses port 42000 for a connection straight to backend
        // 2's pod address: its answers must reach the client as the backend's.
        let (action, out) = h.run(&packet(PROTO_TCP, (CLIENT, 42000), (BACKENDS[1], BPORT), TCP_SYN, b""));
        assert_eq!((action, parse(&out).dst), (TC_ACT_OK, BACKENDS[1]));
        let superseded = h.stat("ct_superseded");
        for flags in [TCP_SYN | TCP_ACK, TCP_ACK] {
            let reply = packet(PROTO_TCP, (BACKENDS[1], BPORT), (CLIENT, 42000), flags, b"direct");
            let (action, out) = h.run(&reply);
            assert_eq!((action, out), (TC_ACT_OK, reply), "flags {flags:#x}: left as the backend sent it");
        }
        assert_eq!(h.stat("ct_superseded"), superseded + 1, "the SYN-ACK removed the closed flow's reply entry");
        // A live Service flow's SYN-ACK is still translated.
        h.run(&packet(PROTO_TCP, (CLIENT, 42001), (VIP, VPORT), TCP_SYN, b""));
        let (_, out) = h.run(&packet(PROTO_TCP, (BACKENDS[1], BPORT), (CLIENT, 42001), TCP_SYN | TCP_ACK, b""));
        assert_eq!((parse(&out).src, parse(&out).sport), (VIP, VPORT));
    });
}

#[test]
fn a_direct_udp_flow_from_a_live_service_flows_port_takes_its_replies_over() {
    with_harness("a_direct_udp_flow_from_a_live_service_flows_port", |h| {
        h.add_backend(1, BACKENDS[1], PROTO_UDP, 0);
        h.set_service(PROTO_UDP, &[1], 0, 0);
        // A Service flow from port 43000 to backend 2, answered, and one from 43001.
        for sport in [43000, 43001] {
            h.run(&packet(PROTO_UDP, (CLIENT, sport), (VIP, VPORT), 0, b"q"));
            let (_, out) = h.run(&packet(PROTO_UDP, (BACKENDS[1], BPORT), (CLIENT, sport), 0, b"a"));
            assert_eq!((parse(&out).src, parse(&out).sport), (VIP, VPORT));
        }
        // A socket of the client's (one of the socket LB's, say) now sends from port
        // 43000 straight to backend 2: the datagram goes as sent, and the backend's
        // answers come to the client as the backend's, not the Service's.
        let superseded = h.stat("ct_superseded");
        let direct = packet(PROTO_UDP, (CLIENT, 43000), (BACKENDS[1], BPORT), 0, b"direct");
        assert_eq!(h.run(&direct), (TC_ACT_OK, direct.clone()));
        assert_eq!(h.stat("ct_superseded"), superseded + 1);
        let reply = packet(PROTO_UDP, (BACKENDS[1], BPORT), (CLIENT, 43000), 0, b"a");
        assert_eq!(h.run(&reply), (TC_ACT_OK, reply.clone()), "left as the backend sent it");
        // Both of the old flow's entries are gone: a datagram to the Service from that
        // port is a new flow.
        let ct_new = h.stat("ct_new");
        let (_, out) = h.run(&packet(PROTO_UDP, (CLIENT, 43000), (VIP, VPORT), 0, b"q"));
        assert_eq!((parse(&out).dst, h.stat("ct_new")), (BACKENDS[1], ct_new + 1));
        // The other port's flow is untouched, and a datagram of the live direct flow
        // finds nothing more to remove.
        let (_, out) = h.run(&packet(PROTO_UDP, (BACKENDS[1], BPORT), (CLIENT, 43001), 0, b"a"));
        assert_eq!((parse(&out).src, parse(&out).sport), (VIP, VPORT));
        let other = packet(PROTO_UDP, (CLIENT, 43002), (BACKENDS[1], BPORT), 0, b"direct");
        assert_eq!(h.run(&other), (TC_ACT_OK, other.clone()));
        assert_eq!(h.stat("ct_superseded"), superseded + 1);
    });
}

#[test]
fn tcp_entries_close_after_fin_and_udp_entries_expire_when_idle() {
    with_harness("tcp_entries_close_after_fin_and_udp_entries_expire_when_idle", |h| {
        h.datapath.set_config(LbConfig { udp_timeout_s: 1, tcp_closing_timeout_s: 1, ..Default::default() }).unwrap();
        for (i, b) in BACKENDS.iter().enumerate() {
            h.add_backend(i as u32 + 1, *b, PROTO_TCP, 0);
            h.add_backend(i as u32 + 11, *b, PROTO_UDP, 0);
        }
        h.set_service(PROTO_TCP, &[1], 0, 0);
        h.set_service(PROTO_UDP, &[11], 0, 0);
        h.run(&packet(PROTO_TCP, (CLIENT, 48000), (VIP, VPORT), TCP_SYN, b""));
        h.run(&packet(PROTO_UDP, (CLIENT, 48001), (VIP, VPORT), 0, b""));
        // A FIN from the backend marks the flow closing.
        h.run(&packet(PROTO_TCP, (BACKENDS[0], BPORT), (CLIENT, 48000), TCP_FIN | TCP_ACK, b""));
        let ct = h.hash::<Ct4Key, Ct4Entry>(pin::CT);
        let key = Ct4Key {
            saddr: addr_to_map(CLIENT.octets()),
            daddr: addr_to_map(VIP.octets()),
            sport: port_to_map(48000),
            dport: port_to_map(VPORT),
            proto: PROTO_TCP,
            dir: CT_DIR_FORWARD,
            _pad: [0; 2],
        };
        assert_ne!(ct.get(&key, 0).unwrap().flags & CT_FLAG_CLOSING, 0, "FIN must mark the entry closing");

        // Move both Services to backend 2; live flows stay, expired ones move.
        h.set_service(PROTO_TCP, &[2], 0, 0);
        h.set_service(PROTO_UDP, &[12], 0, 0);
        let (_, out) = h.run(&packet(PROTO_UDP, (CLIENT, 48001), (VIP, VPORT), 0, b""));
        assert_eq!(parse(&out).dst, BACKENDS[0], "a live UDP flow stays");
        std::thread::sleep(Duration::from_millis(2100));
        let (_, out) = h.run(&packet(PROTO_UDP, (CLIENT, 48001), (VIP, VPORT), 0, b""));
        assert_eq!(parse(&out).dst, BACKENDS[1], "an idle UDP flow expires and selects afresh");
        let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 48000), (VIP, VPORT), TCP_SYN, b""));
        assert_eq!(parse(&out).dst, BACKENDS[1], "a SYN after FIN on the same tuple is a new flow");
    });
}

#[test]
fn hairpin_flows_are_source_translated_both_ways() {
    with_harness("hairpin_flows_are_source_translated_both_ways", |h| {
        // The client pod is the Service's only backend.
        let backend =
            Backend4 { addr: addr_to_map(CLIENT.octets()), port: port_to_map(BPORT), proto: PROTO_TCP, flags: 0 };
        h.hash::<u32, Backend4>(pin::BACKENDS).insert(1, backend, 0).unwrap();
        h.set_service(PROTO_TCP, &[1], 0, 0);
        let hairpin = Ipv4Addr::from(DEFAULT_HAIRPIN_ADDR.to_ne_bytes());
        let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 49000), (VIP, VPORT), TCP_SYN, b""));
        let p = parse(&out);
        assert_eq!((p.src, p.sport), (hairpin, 49000), "the source must not be the pod's own address");
        assert_eq!((p.dst, p.dport), (CLIENT, BPORT));
        let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, BPORT), (hairpin, 49000), TCP_SYN | TCP_ACK, b""));
        let p = parse(&out);
        assert_eq!((p.src, p.sport), (VIP, VPORT));
        assert_eq!((p.dst, p.dport), (CLIENT, 49000));
    });
}

// ---- masquerade (to_underlay / from_underlay) -----------------------------------------

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 11);
const API: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const API_PORT: u16 = 6443;
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 3);

/// Masquerade behind NODE with only two ports, 61000 and 61001, so that exhaustion
/// and reuse show with a handful of flows.
fn two_port_masquerade(h: &Harness) {
    let config = MasqConfig {
        node_addr: addr_to_map(NODE.octets()),
        cluster_net: addr_to_map([10, 244, 0, 0]),
        cluster_mask: addr_to_map([255, 255, 0, 0]),
        port_first: port_to_map(61000),
        port_last: port_to_map(61001),
    };
    set_masq_config(&h.pins.path, config).unwrap();
}

#[test]
fn masquerade_gives_each_pod_flow_the_node_address_and_a_port_toward_its_destination() {
    with_harness("masquerade_gives_each_pod_flow_the_node_address_and_a_port_toward_its_destination", |h| {
        two_port_masquerade(h);
        let (action, out) =
            h.run_prog(Prog::ToUnderlay, &packet(PROTO_TCP, (CLIENT, 5000), (API, API_PORT), TCP_SYN, b""));
        let first = parse(&out);
        assert_eq!(action, TC_ACT_OK);
        assert_eq!(first.src, NODE, "the flow leaves with the node's address");
        assert!((61000..=61001).contains(&first.sport), "port {} is outside the range", first.sport);
        assert_eq!((first.dst, first.dport), (API, API_PORT));
        // The flow keeps its port.
        let (_, out) = h.run_prog(Prog::ToUnderlay, &packet(PROTO_TCP, (CLIENT, 5000), (API, API_PORT), TCP_ACK, b"x"));
        assert_eq!(parse(&out).sport, first.sport);
        // The reply finds the pod (the pod is in no endpoints map here, so it goes on to
        // the node's stack rather than being redirected).
        let reply = packet(PROTO_TCP, (API, API_PORT), (NODE, first.sport), TCP_SYN | TCP_ACK, b"");
        let (action, out) = h.run_prog(Prog::FromUnderlay, &reply);
        let back = parse(&out);
        assert_eq!(action, TC_ACT_OK);
        assert_eq!((back.src, back.sport, back.dst, back.dport), (API, API_PORT, CLIENT, 5000));

        // A second flow to the same destination takes the other port; a third finds none.
        let (_, out) = h.run_prog(Prog::ToUnderlay, &packet(PROTO_TCP, (CLIENT, 5001), (API, API_PORT), TCP_SYN, b""));
        assert_ne!(parse(&out).sport, first.sport);
        let (action, _) =
            h.run_prog(Prog::ToUnderlay, &packet(PROTO_TCP, (CLIENT, 5002), (API, API_PORT), TCP_SYN, b""));
        assert_eq!(action, TC_ACT_SHOT, "no port left toward this destination");
        assert_eq!(h.stat("snat_no_port"), 1);
        // Ports are per destination: another host still gets one.
        let (_, out) = h.run_prog(Prog::ToUnderlay, &packet(PROTO_UDP, (CLIENT, 5002), (OTHER_HOST, 53), 0, b"query"));
        let udp = parse(&out);
        assert_eq!((udp.src, udp.dst, udp.dport), (NODE, OTHER_HOST, 53));
        assert_eq!(h.stat("snat_new"), 3);

        // The node's own traffic, pod-to-pod traffic and unknown replies pass untouched.
        for (prog, frame) in [
            (Prog::ToUnderlay, packet(PROTO_TCP, (NODE, 40000), (API, API_PORT), TCP_SYN, b"")),
            (Prog::ToUnderlay, packet(PROTO_TCP, (CLIENT, 5003), (BACKENDS[0], BPORT), TCP_SYN, b"")),
            (Prog::FromUnderlay, packet(PROTO_TCP, (API, API_PORT), (NODE, 40000), TCP_ACK, b"")),
            (Prog::FromUnderlay, packet(PROTO_TCP, (OTHER_HOST, API_PORT), (NODE, first.sport), TCP_ACK, b"")),
        ] {
            let (action, out) = h.run_prog(prog, &frame);
            assert_eq!((action, out), (TC_ACT_OK, frame), "{prog:?} must not touch this packet");
        }
    });
}

#[test]
fn a_closed_masqueraded_flow_frees_its_port() {
    with_harness("a_closed_masqueraded_flow_frees_its_port", |h| {
        two_port_masquerade(h);
        h.datapath.set_config(LbConfig { tcp_closing_timeout_s: 1, ..Default::default() }).unwrap();
        let mut ports = Vec::new();
        for sport in [5000, 5001] {
            let (_, out) =
                h.run_prog(Prog::ToUnderlay, &packet(PROTO_TCP, (CLIENT, sport), (API, API_PORT), TCP_SYN, b""));
            ports.push(parse(&out).sport);
        }
        // The server closes the first flow.
        let fin = packet(PROTO_TCP, (API, API_PORT), (NODE, ports[0]), TCP_FIN | TCP_ACK, b"");
        let (_, out) = h.run_prog(Prog::FromUnderlay, &fin);
        assert_eq!(parse(&out).dport, 5000);
        let (action, _) =
            h.run_prog(Prog::ToUnderlay, &packet(PROTO_TCP, (CLIENT, 5002), (API, API_PORT), TCP_SYN, b""));
        assert_eq!(action, TC_ACT_SHOT, "a closing flow holds its port for the closing timeout");
        std::thread::sleep(Duration::from_millis(2100));
        let (action, out) =
            h.run_prog(Prog::ToUnderlay, &packet(PROTO_TCP, (CLIENT, 5002), (API, API_PORT), TCP_SYN, b""));
        assert_eq!(action, TC_ACT_OK);
        assert_eq!(parse(&out).sport, ports[0], "the closed flow's port is reused");
        // The reply now reaches the new flow's pod port, not the old one's.
        let reply = packet(PROTO_TCP, (API, API_PORT), (NODE, ports[0]), TCP_SYN | TCP_ACK, b"");
        let (_, out) = h.run_prog(Prog::FromUnderlay, &reply);
        assert_eq!(parse(&out).dport, 5002);
    });
}

#[test]
fn replies_from_the_nodes_own_stack_are_reverse_translated_on_their_way_into_the_pod() {
    with_harness("replies_from_the_nodes_own_stack_are_reverse_translated_on_their_way_into_the_pod", |h| {
        // The Service's backend is a hostNetwork pod on this node: the node's address.
        let backend =
            Backend4 { addr: addr_to_map(NODE.octets()), port: port_to_map(BPORT), proto: PROTO_TCP, flags: 0 };
        h.hash::<u32, Backend4>(pin::BACKENDS).insert(1, backend, 0).unwrap();
        h.set_service(PROTO_TCP, &[1], 0, 0);
        let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 50000), (VIP, VPORT), TCP_SYN, b""));
        assert_eq!(parse(&out).dst, NODE);
        // The node's stack answers straight into the pod's veth: "to pod" translates.
        let reply = packet(PROTO_TCP, (NODE, BPORT), (CLIENT, 50000), TCP_SYN | TCP_ACK, b"");
        let (action, out) = h.run_prog(Prog::ToPod, &reply);
        let p = parse(&out);
        assert_eq!(action, TC_ACT_OK);
        assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, VPORT, CLIENT, 50000));
        // Anything else passes untouched.
        let other = packet(PROTO_TCP, (NODE, 22), (CLIENT, 50001), TCP_ACK, b"");
        let (action, out) = h.run_prog(Prog::ToPod, &other);
        assert_eq!((action, out), (TC_ACT_OK, other));
    });
}

// ---- NodePort at XDP (xdp_underlay) ---------------------------------------------------

const NODE_PORT: u16 = 30080;
/// A client outside the cluster, on the underlay.
const OUTSIDE_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
/// The other node (`node_port_with_backend`'s peer) and a pod of its podCIDR.
const PEER_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 12);
const PEER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 20);
const XDP_PASS: u32 = 2;

/// NodePort on NODE, the overlay set up as node 1's (podCIDR 10.244.1.0/24, a peer owning
/// 10.244.2.0/24), and node port NODE_PORT/TCP with one backend at `backend`.
/// The frame inside a VXLAN packet that this node (`NODE`) wrapped for the peer at
/// 192.168.77.12 (`node_port_with_backend`'s), after checking the outer headers.
fn decapsulated(frame: &[u8]) -> Vec<u8> {
    let outer = parse(frame);
    assert_eq!((outer.proto, outer.dport), (PROTO_UDP, skiff_ebpf_common::VXLAN_PORT), "not VXLAN: {outer:?}");
    assert_eq!((outer.src, outer.dst), (NODE, Ipv4Addr::new(192, 168, 77, 12)), "outer addresses");
    assert_eq!(&outer.l4[8..16], &[0x08, 0, 0, 0, 0, 0, skiff_ebpf_common::DEFAULT_VNI as u8, 0], "VXLAN header");
    outer.l4[16..].to_vec()
}

fn node_port_with_backend(h: &Harness, backend: Ipv4Addr) {
    use skiff_ebpf_common::{DEFAULT_VNI, Endpoint4, NodeInfo4, NodePortConfig, OverlayConfig};
    let nodeport = NodePortConfig {
        underlay_ifindex: 1,
        snat_addr: addr_to_map([10, 244, 1, 0]),
        node_addr: addr_to_map(NODE.octets()),
        port_first: port_to_map(30000),
        port_last: port_to_map(32767),
        underlay_mac: [2, 0, 0, 0, 0, 0x11],
        _pad: [0; 2],
    };
    skiff_node::datapath::set_nodeport_config(&h.pins.path, nodeport).unwrap();
    let overlay = OverlayConfig {
        vxlan_ifindex: 1,
        vni: DEFAULT_VNI,
        local_pod_net: addr_to_map([10, 244, 1, 0]),
        local_pod_mask: addr_to_map([255, 255, 255, 0]),
        cluster_net: addr_to_map([10, 244, 0, 0]),
        cluster_mask: addr_to_map([255, 255, 0, 0]),
    };
    skiff_node::datapath::set_overlay_config(&h.pins.path, overlay).unwrap();
    let data = MapData::from_pin(h.pins.path.join(pin::NODES)).unwrap();
    let mut nodes: aya::maps::LpmTrie<MapData, u32, NodeInfo4> =
        aya::maps::LpmTrie::try_from(Map::LpmTrie(data)).unwrap();
    let peer = NodeInfo4 { underlay_addr: addr_to_map([192, 168, 77, 12]), flags: 0 };
    nodes.insert(&aya::maps::lpm_trie::Key::new(24, addr_to_map([10, 244, 2, 0])), peer, 0).unwrap();
    let pod = Endpoint4 { ifindex: 1, flags: 0, pod_mac: [2, 0, 0, 0, 0, 1], host_mac: [2, 0, 0, 0, 0, 2] };
    h.hash::<u32, Endpoint4>(pin::ENDPOINTS).insert(addr_to_map(BACKENDS[0].octets()), pod, 0).unwrap();
    h.add_backend(1, backend, PROTO_TCP, 0);
    let mut services = h.hash::<Service4Key, Service4Value>(pin::SERVICES);
    let front = |slot| Service4Key::new(addr_to_map(NODE.octets()), port_to_map(NODE_PORT), PROTO_TCP, slot);
    services.insert(front(1), Service4Value { backend_id: 1, rev_nat_index: 1, ..Default::default() }, 0).unwrap();
    services.insert(front(0), Service4Value { count: 1, rev_nat_index: 1, ..Default::default() }, 0).unwrap();
    let rev = RevNat4 { addr: addr_to_map(NODE.octets()), port: port_to_map(NODE_PORT), _pad: 0 };
    h.hash::<u32, RevNat4>(pin::REV_NAT).insert(1, rev, 0).unwrap();
}

/// Runs the XDP program (loaded from the agent's embedded object, sharing the pinned
/// maps) on `frame`; the test run's ingress interface is the loopback.
fn run_xdp(h: &Harness, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut ebpf = aya::EbpfLoader::new()
        .default_map_pin_directory(&h.pins.path)
        .load(aya::include_bytes_aligned!(env!("SKIFF_EBPF_XDP_UNDERLAY")))
        .unwrap();
    let program: &mut aya::programs::Xdp = ebpf.program_mut("xdp_underlay").unwrap().try_into().unwrap();
    program.load().unwrap();
    let mut out = vec![0u8; 512];
    let result = program
        .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

#[test]
fn xdp_translates_node_ports_for_a_local_backend_and_leaves_what_it_cannot_finish_to_tc() {
    with_harness("xdp_translates_node_ports", |h| {
        let outside = Ipv4Addr::new(192, 168, 77, 100);
        // A backend on this node: translated at XDP (client's address kept), passed on.
        node_port_with_backend(h, BACKENDS[0]);
        let frame = packet(PROTO_TCP, (outside, 40000), (NODE, NODE_PORT), TCP_SYN, b"");
        let (action, out) = run_xdp(h, &frame);
        let p = parse(&out);
        assert_eq!(action, XDP_PASS);
        assert_eq!((p.src, p.sport, p.dst, p.dport), (outside, 40000, BACKENDS[0], BPORT));
        assert_eq!((h.stat("xdp_translated"), h.stat("ct_new"), h.stat("xdp_to_tc")), (1, 1, 0));
        // The flow's next packet finds its conntrack entry: the same translation.
        let (_, out) = run_xdp(h, &packet(PROTO_TCP, (outside, 40000), (NODE, NODE_PORT), TCP_ACK, b"x"));
        assert_eq!(parse(&out).dst, BACKENDS[0]);
        assert_eq!((h.stat("xdp_translated"), h.stat("ct_new")), (2, 1));
        // Not a node port: untouched, not counted.
        let other = packet(PROTO_TCP, (outside, 40001), (NODE, 22), TCP_SYN, b"");
        assert_eq!(run_xdp(h, &other), (XDP_PASS, other.clone()));
        // A backend on another node whose next hop the FIB cannot give from this
        // interface (the test run's is the loopback): left to tc untouched, no flow made.
        node_port_with_backend(h, Ipv4Addr::new(10, 244, 2, 20));
        let remote = packet(PROTO_TCP, (outside, 40002), (NODE, NODE_PORT), TCP_SYN, b"");
        assert_eq!(run_xdp(h, &remote), (XDP_PASS, remote.clone()));
        assert_eq!((h.stat("xdp_to_tc"), h.stat("ct_new"), h.stat("xdp_tunneled")), (1, 1, 0));
    });
}

/// An Ethernet ARP request from `sender` (MAC, address) for `target`, broadcast.
fn arp_request(sender: ([u8; 6], Ipv4Addr), target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sender.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender.0);
    f.extend_from_slice(&sender.1.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

#[test]
fn arp_requests_for_announced_addresses_are_answered_at_xdp_and_at_tc_alike() {
    with_harness("arp_requests_for_announced_addresses", |h| {
        const XDP_REDIRECT: u32 = 4;
        let lb_ip = Ipv4Addr::new(192, 168, 77, 200);
        let asker = ([2, 0, 0, 0, 0, 0x99], Ipv4Addr::new(192, 168, 77, 100));
        node_port_with_backend(h, BACKENDS[0]);
        let node_mac = [2, 0, 0, 0, 0, 0x11];
        let request = arp_request(asker, lb_ip);
        // Not announced (yet): neither hook answers, the frame goes on untouched.
        assert_eq!(run_xdp(h, &request), (XDP_PASS, request.clone()));
        assert_eq!(h.run_prog(Prog::FromUnderlay, &request), (TC_ACT_OK, request.clone()));
        h.hash::<u32, u32>(pin::ANNOUNCED).insert(addr_to_map(lb_ip.octets()), 0, 0).unwrap();
        // Announced: the request turned into the reply, sent back out.
        let mut reply = asker.0.to_vec();
        reply.extend_from_slice(&node_mac);
        reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
        reply.extend_from_slice(&node_mac);
        reply.extend_from_slice(&lb_ip.octets());
        reply.extend_from_slice(&asker.0);
        reply.extend_from_slice(&asker.1.octets());
        assert_eq!(run_xdp(h, &request), (XDP_REDIRECT, reply.clone()));
        assert_eq!((h.stat("arp_answered"), h.stat("xdp_arp_answered")), (1, 1));
        assert_eq!(h.run_prog(Prog::FromUnderlay, &request), (TC_ACT_REDIRECT, reply));
        assert_eq!((h.stat("arp_answered"), h.stat("xdp_arp_answered")), (2, 1));
        // A reply, or a request for another address, is not answered.
        let mut not_request = request.clone();
        not_request[21] = 2;
        assert_eq!(run_xdp(h, &not_request), (XDP_PASS, not_request.clone()));
        let other = arp_request(asker, NODE);
        assert_eq!(run_xdp(h, &other), (XDP_PASS, other.clone()));
        assert_eq!(h.stat("arp_answered"), 2);
    });
}

#[test]
fn a_pods_packet_for_a_pod_of_this_node_goes_straight_into_that_pod() {
    with_harness("a_pods_packet_for_a_pod_of_this_node", |h| {
        use skiff_ebpf_common::Endpoint4;
        // BACKENDS[0] is a pod of this node (skiff-cni wrote its endpoint); BACKENDS[1]
        // has none (the node's stack routes it, as before).
        let pod = Endpoint4 { ifindex: 1, flags: 0, pod_mac: [2, 0, 0, 0, 0, 0x21], host_mac: [2, 0, 0, 0, 0, 0x22] };
        h.hash::<u32, Endpoint4>(pin::ENDPOINTS).insert(addr_to_map(BACKENDS[0].octets()), pod, 0).unwrap();
        // Straight to the pod's address (the socket LB's connections, pod-to-pod traffic):
        // redirected into it, with its MACs, nothing else changed.
        let frame = packet(PROTO_TCP, (CLIENT, 40000), (BACKENDS[0], BPORT), TCP_SYN, b"hi");
        let (action, out) = h.run(&frame);
        assert_eq!(action, TC_ACT_REDIRECT, "a local pod's packet must be redirected into it");
        assert_eq!(
            &out[..12],
            &[2, 0, 0, 0, 0, 0x21, 2, 0, 0, 0, 0, 0x22],
            "destination: the pod; source: its host veth"
        );
        assert_eq!(&out[12..], &with_ttl(&frame, 63)[12..], "only the MACs and the TTL (one hop) change");
        // Through a ClusterIP on the tc path: translated, then redirected the same way.
        h.add_backend(1, BACKENDS[0], PROTO_TCP, 0);
        h.set_service(PROTO_TCP, &[1], 0, 0);
        let (action, out) = h.run(&packet(PROTO_TCP, (CLIENT, 40001), (VIP, VPORT), TCP_SYN, b""));
        let p = parse(&out);
        assert_eq!((action, p.eth_dst, p.dst, p.dport), (TC_ACT_REDIRECT, pod.pod_mac, BACKENDS[0], BPORT));
        // No endpoint: on to the node's stack, untouched.
        let other = packet(PROTO_TCP, (CLIENT, 40002), (BACKENDS[1], BPORT), TCP_SYN, b"");
        assert_eq!(h.run(&other), (TC_ACT_OK, other.clone()));
        assert_eq!(h.stat("pod_delivered"), 2);
    });
}

#[test]
fn forwarded_packets_lose_one_ttl_per_node_and_those_whose_ttl_runs_out_go_to_the_stack() {
    with_harness("forwarded_packets_lose_one_ttl_per_node", |h| {
        // BACKENDS[0] (10.244.1.11) is a pod of this node, 10.244.2.20 one of another
        // node's, and the node port's backend is the local pod.
        node_port_with_backend(h, BACKENDS[0]);
        let remote_pod = Ipv4Addr::new(10, 244, 2, 20);
        let outside = Ipv4Addr::new(192, 168, 77, 100);
        let to_local = packet(PROTO_UDP, (CLIENT, 40000), (BACKENDS[0], BPORT), 0, b"hop");
        let to_remote = packet(PROTO_UDP, (CLIENT, 40000), (remote_pod, BPORT), 0, b"hop");
        let from_remote = packet(PROTO_UDP, (remote_pod, 40000), (BACKENDS[0], BPORT), 0, b"hop");
        for ttl in [64, 2] {
            // Into a pod of this node: one hop, the header checksum kept right (`parse`
            // checks every checksum).
            let (action, out) = h.run(&with_ttl(&to_local, ttl));
            assert_eq!((action, out[22]), (TC_ACT_REDIRECT, ttl - 1), "pod to local pod, TTL {ttl}");
            parse(&out);
            // Into the tunnel: the inner packet one lower, the outer TTL the tunnel's own.
            let (action, out) = h.run(&with_ttl(&to_remote, ttl));
            assert_eq!(action, TC_ACT_REDIRECT, "pod to remote pod, TTL {ttl}");
            let inner = decapsulated(&out);
            assert_eq!(inner[22], ttl - 1, "the inner TTL after the sending node's hop");
            parse(&inner);
            // From the tunnel into the pod: the receiving node's hop.
            let (action, out) = h.run_prog(Prog::FromOverlay, &with_ttl(&from_remote, ttl));
            assert_eq!((action, out[22]), (TC_ACT_REDIRECT, ttl - 1), "tunnel to local pod, TTL {ttl}");
            parse(&out);
        }
        assert_eq!(h.stat("ttl_expired"), 0);
        // A TTL that runs out at this node: untouched, to the stack (which answers with
        // ICMP time exceeded), counted; never an error.
        for ttl in [1, 0] {
            for (prog, frame) in
                [(Prog::FromPod, &to_local), (Prog::FromPod, &to_remote), (Prog::FromOverlay, &from_remote)]
            {
                let frame = with_ttl(frame, ttl);
                assert_eq!(h.run_prog(prog, &frame), (TC_ACT_OK, frame.clone()), "{prog:?} with TTL {ttl}");
            }
        }
        assert_eq!((h.stat("ttl_expired"), h.stat("errors")), (6, 0));
        // A NodePort flow: in from the wire to the local backend (one hop), the reply out
        // of the underlay (one hop); a reply whose TTL runs out is dropped, since the
        // stack would take its source, the node's own address, for a martian.
        let (action, out) =
            h.run_prog(Prog::FromUnderlay, &packet(PROTO_TCP, (outside, 40001), (NODE, NODE_PORT), TCP_SYN, b""));
        assert_eq!((action, out[22]), (TC_ACT_REDIRECT, 63), "NodePort into the local backend");
        let reply = packet(PROTO_TCP, (BACKENDS[0], BPORT), (outside, 40001), TCP_SYN | TCP_ACK, b"");
        let (action, out) = h.run(&reply);
        let p = parse(&out);
        assert_eq!((action, p.src, out[22]), (TC_ACT_REDIRECT, NODE, 63), "the reply out of the underlay");
        let (action, _) = h.run(&with_ttl(&reply, 1));
        assert_eq!((action, h.stat("ttl_expired")), (TC_ACT_SHOT, 7));
    });
}

#[test]
fn a_pod_reaching_its_own_nodes_node_port_is_translated_on_the_tc_path() {
    with_harness("a_pod_reaching_its_own_nodes_node_port", |h| {
        // A pod whose connect() the socket LB did not translate (its cgroup is not under
        // the node's): its packets to the node's address and a node port meet tc.
        node_port_with_backend(h, BACKENDS[1]);
        let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 41000), (NODE, NODE_PORT), TCP_SYN, b""));
        let p = parse(&out);
        assert_eq!((p.src, p.sport, p.dst, p.dport), (CLIENT, 41000, BACKENDS[1], BPORT), "no source NAT for a pod");
        let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 41000), (NODE, NODE_PORT), TCP_ACK, b"x"));
        assert_eq!(parse(&out).dst, BACKENDS[1], "the flow's next packet by its conntrack entry");
        let (_, reply) = h.run(&packet(PROTO_TCP, (BACKENDS[1], BPORT), (CLIENT, 41000), TCP_SYN | TCP_ACK, b""));
        let p = parse(&reply);
        assert_eq!(
            (p.src, p.sport, p.dst, p.dport),
            (NODE, NODE_PORT, CLIENT, 41000),
            "the reply comes from the node port"
        );
        assert_eq!((h.stat("translated"), h.stat("ct_new")), (2, 1));
        // The node's other ports, and node ports without a Service, stay the node's.
        for port in [22, NODE_PORT + 1] {
            let other = packet(PROTO_TCP, (CLIENT, 41001), (NODE, port), TCP_SYN, b"");
            assert_eq!(h.run(&other).1, other, "port {port} must stay untouched");
        }
    });
}

#[test]
fn drops_are_counted_by_reason() {
    with_harness("drops_are_counted_by_reason", |h| {
        // A frontend whose slot 0 says 3 backends while only slot 1 exists: a Service
        // caught half-written. New flows that pick a missing slot are dropped as stale.
        h.add_backend(1, BACKENDS[0], PROTO_TCP, 0);
        h.set_service(PROTO_TCP, &[1], 0, 0);
        let front = Service4Value { count: 3, rev_nat_index: 1, ..Default::default() };
        let key = Service4Key::new(addr_to_map(VIP.octets()), port_to_map(VPORT), PROTO_TCP, 0);
        h.hash::<Service4Key, Service4Value>(pin::SERVICES).insert(key, front, 0).unwrap();
        let mut dropped = 0;
        for sport in 0..30 {
            let (action, _) = h.run(&packet(PROTO_TCP, (CLIENT, 42000 + sport), (VIP, VPORT), TCP_SYN, b""));
            if action == TC_ACT_SHOT {
                dropped += 1;
            }
        }
        assert!(dropped > 0, "30 flows over 3 slots of which 2 are missing: some must be dropped");
        assert_eq!(h.stat("drop_stale_service"), dropped);
        assert_eq!(h.stat("errors"), dropped);
        assert_eq!(h.stat("drop_rewrite") + h.stat("drop_ct_insert"), 0);
    });
}

#[test]
fn node_port_flows_from_two_clients_with_one_source_port_get_their_own_translated_ports() {
    with_harness("node_port_flows_from_two_clients_with_one_source_port", |h| {
        // A backend on another node: the flows get this node's podCIDR address as
        // source, so two clients using the same port would make one reply flow.
        node_port_with_backend(h, Ipv4Addr::new(10, 244, 2, 20));
        let (a, b) = (Ipv4Addr::new(192, 168, 77, 100), Ipv4Addr::new(192, 168, 77, 101));
        let run = |h: &mut Harness, client: Ipv4Addr, flags: u8| {
            let (action, out) =
                h.run_prog(Prog::FromUnderlay, &packet(PROTO_TCP, (client, 40000), (NODE, NODE_PORT), flags, b""));
            assert_eq!(action, TC_ACT_REDIRECT, "into the tunnel");
            parse(&decapsulated(&out))
        };
        let first = run(h, a, TCP_SYN);
        let second = run(h, b, TCP_SYN);
        assert_eq!((first.src, second.src), (Ipv4Addr::new(10, 244, 1, 0), Ipv4Addr::new(10, 244, 1, 0)));
        assert_eq!(first.sport, 40000, "the first flow keeps its client's port");
        assert_ne!(second.sport, 40000, "the second must not share the first's translated port");
        // Each flow keeps its port, and each reply goes back to its own client and port.
        assert_eq!(run(h, b, TCP_ACK).sport, second.sport);
        for (client, flow) in [(a, &first), (b, &second)] {
            let reply = packet(PROTO_TCP, (flow.dst, BPORT), (flow.src, flow.sport), TCP_SYN | TCP_ACK, b"");
            let (_, out) = h.run_prog(Prog::FromOverlay, &reply);
            let back = parse(&out);
            assert_eq!((back.src, back.sport, back.dst, back.dport), (NODE, NODE_PORT, client, 40000));
        }
    });
}

/// A VXLAN frame from `outer_src` to this node (`NODE`) whose header's first 4 bytes
/// are `flags`, carrying `inner`; the outer UDP checksum is 0 (as the senders write it)
/// unless `udp_checksum`.
fn vxlan_frame(outer_src: Ipv4Addr, flags: [u8; 4], inner: &[u8], udp_checksum: bool) -> Vec<u8> {
    let mut payload = flags.to_vec();
    payload.extend_from_slice(&[0, 0, skiff_ebpf_common::DEFAULT_VNI as u8, 0]);
    payload.extend_from_slice(inner);
    let mut frame = packet(PROTO_UDP, (outer_src, 50000), (NODE, skiff_ebpf_common::VXLAN_PORT), 0, &payload);
    if !udp_checksum {
        frame[40..42].fill(0);
    }
    frame
}

/// The first 4 bytes of a VXLAN header that names a direct-server-return frontend's
/// `port`: the I and G flags, the port as group policy ID.
fn dsr_marker(port: u16) -> [u8; 4] {
    let port = port.to_be_bytes();
    [0x88, 0, port[0], port[1]]
}

/// A new flow's SYN, then its ACK, from `client` to `frontend` (a DSR frontend whose
/// backend `backend` is a pod of [`PEER_NODE`]) as they arrive from the
/// wire: each goes into the tunnel from the frontend's address with its port in the
/// VXLAN header, the client's address kept, the destination translated to the backend;
/// the ACK by the flow's conntrack entry.
fn assert_tunnelled_by_dsr(
    h: &mut Harness,
    client: (Ipv4Addr, u16),
    frontend: (Ipv4Addr, u16),
    backend: (Ipv4Addr, u16),
) {
    let (new_before, tunneled_before) = (h.stat("ct_new"), h.stat("dsr_tunneled"));
    for flags in [TCP_SYN, TCP_ACK] {
        let (action, out) = h.run_prog(Prog::FromUnderlay, &packet(PROTO_TCP, client, frontend, flags, b""));
        assert_eq!(action, TC_ACT_REDIRECT, "into the tunnel");
        let outer = parse(&out); // checks the outer IP checksum
        assert_eq!((outer.src, outer.dst, outer.dport), (frontend.0, PEER_NODE, skiff_ebpf_common::VXLAN_PORT));
        assert_eq!(outer.l4[8..12], dsr_marker(frontend.1), "the frontend's port in the VXLAN header");
        let inner = parse(&outer.l4[16..]);
        assert_eq!((inner.src, inner.sport, inner.dst, inner.dport), (client.0, client.1, backend.0, backend.1));
        assert_eq!(h.stat("ct_new"), new_before + 1, "one new flow; the ACK by its conntrack entry");
    }
    assert_eq!((h.stat("dsr_tunneled") - tunneled_before, h.stat("errors")), (2, 0));
}

/// The SYN-ACK of a pod of this node (`BACKENDS[0]`) to [`OUTSIDE_CLIENT`]'s
/// `client_port`, whose flow reached it by direct server return, leaves by the underlay
/// straight to the client from `frontend`, the address and port it connected to (the
/// first reply so translated); returns the reply as the pod sent it.
fn assert_answered_from(h: &mut Harness, frontend: (Ipv4Addr, u16), client_port: u16) -> Vec<u8> {
    let reply = packet(PROTO_TCP, (BACKENDS[0], BPORT), (OUTSIDE_CLIENT, client_port), TCP_SYN | TCP_ACK, b"");
    let (action, out) = h.run(&reply);
    let p = parse(&out);
    assert_eq!(action, TC_ACT_REDIRECT, "out of the underlay");
    assert_eq!((p.src, p.sport, p.dst, p.dport), (frontend.0, frontend.1, OUTSIDE_CLIENT, client_port));
    assert_eq!((h.stat("dsr_replied"), h.stat("errors")), (1, 0));
    reply
}

#[test]
fn direct_server_return_keeps_the_clients_address_and_the_backends_node_answers_it() {
    with_harness("direct_server_return", |h| {
        use skiff_ebpf_common::SERVICE_FLAG_DSR;
        let (outside, peer, remote_pod) = (OUTSIDE_CLIENT, PEER_NODE, PEER_POD);
        let marker = dsr_marker(NODE_PORT);
        // As the frontend: the node port's Service asks for DSR, its backend is another
        // node's pod. The client's packet keeps its address and goes into the tunnel with
        // the node port in the VXLAN header (its group policy ID, G flag set).
        node_port_with_backend(h, remote_pod);
        let front = Service4Key::new(addr_to_map(NODE.octets()), port_to_map(NODE_PORT), PROTO_TCP, 0);
        let dsr = Service4Value { count: 1, rev_nat_index: 1, flags: SERVICE_FLAG_DSR, ..Default::default() };
        h.hash::<Service4Key, Service4Value>(pin::SERVICES).insert(front, dsr, 0).unwrap();
        assert_tunnelled_by_dsr(h, (outside, 40000), (NODE, NODE_PORT), (remote_pod, BPORT));
        // The same node port without DSR: source NAT, an ordinary header (another client).
        let snat = Service4Value { count: 1, rev_nat_index: 1, ..Default::default() };
        h.hash::<Service4Key, Service4Value>(pin::SERVICES).insert(front, snat, 0).unwrap();
        let (_, out) =
            h.run_prog(Prog::FromUnderlay, &packet(PROTO_TCP, (outside, 40009), (NODE, NODE_PORT), TCP_SYN, b""));
        assert_eq!(parse(&decapsulated(&out)).src, Ipv4Addr::new(10, 244, 1, 0), "snat");
        assert_eq!(h.stat("dsr_tunneled"), 2);

        // As the backend's node: the peer sent a client's SYN for a pod of this node
        // (BACKENDS[0]) by DSR. The header is cleared for the VXLAN device, the frame
        // goes on to it, and the flow is recorded with the peer's node port as frontend.
        let syn = packet(PROTO_TCP, (outside, 41000), (BACKENDS[0], BPORT), TCP_SYN, b"");
        for udp_checksum in [false, true] {
            let arriving = vxlan_frame(peer, marker, &syn, udp_checksum);
            let (action, out) = h.run_prog(Prog::FromUnderlay, &arriving);
            assert_eq!(action, TC_ACT_OK, "on to the VXLAN device");
            let outer = parse(&out); // checks the outer UDP checksum where there is one
            assert_eq!(outer.l4[8..12], [0x08, 0, 0, 0], "an ordinary VXLAN header");
            assert_eq!(outer.l4[12..], arriving[42 + 4..], "nothing else changed");
        }
        assert_eq!(h.stat("dsr_learnt"), 2);
        // The pod's reply leaves by the underlay straight to the client, from the node
        // port the client connected to on the other node.
        let reply = assert_answered_from(h, (peer, NODE_PORT), 41000);
        // The user-space collection keeps the live pair (their keys agree with the
        // programs'), then removes both once the flow is over.
        use skiff_node::datapath::conntrack_gc;
        let before = conntrack_gc::collect(&h.pins.path).unwrap();
        assert_eq!(before.removed, 0, "a live DSR flow must stay");
        let (_, out) = h.run(&reply);
        assert_eq!(parse(&out).src, peer, "still translated after a collection");
        h.datapath.set_config(LbConfig { tcp_closing_timeout_s: 1, ..Default::default() }).unwrap();
        let fin = packet(PROTO_TCP, (outside, 41000), (BACKENDS[0], BPORT), TCP_FIN | TCP_ACK, b"");
        h.run_prog(Prog::FromUnderlay, &vxlan_frame(peer, marker, &fin, false));
        std::thread::sleep(Duration::from_millis(1500));
        let after = conntrack_gc::collect(&h.pins.path).unwrap();
        assert_eq!(after.removed, 2, "the closed DSR flow's pair goes (the frontend's live entries stay)");
        let (_, out) = h.run(&reply);
        assert_eq!(parse(&out).src, BACKENDS[0], "no entry left to translate with");

        // A marked packet for an address that is no pod here: cleared, nothing recorded;
        // an unmarked one: untouched.
        let elsewhere = packet(PROTO_TCP, (outside, 41001), (remote_pod, BPORT), TCP_SYN, b"");
        let (_, out) = h.run_prog(Prog::FromUnderlay, &vxlan_frame(peer, marker, &elsewhere, false));
        assert_eq!(parse(&out).l4[8..12], [0x08, 0, 0, 0]);
        let plain = vxlan_frame(peer, [0x08, 0, 0, 0], &syn, false);
        assert_eq!(h.run_prog(Prog::FromUnderlay, &plain), (TC_ACT_OK, plain.clone()));
        assert_eq!((h.stat("dsr_learnt"), h.stat("errors")), (3, 0));
    });
}

#[test]
fn direct_server_return_from_an_external_address_names_it_as_the_tunnels_source() {
    with_harness("direct_server_return_external", |h| {
        use skiff_ebpf_common::SERVICE_FLAG_DSR;
        let external = Ipv4Addr::new(192, 168, 77, 150);
        // As the frontend: an externalIPs address on the Service port, whose Service asks
        // for DSR, with another node's pod as backend. The tunnel packet comes from the
        // external address and carries the Service port: the frontend the client used.
        node_port_with_backend(h, PEER_POD);
        let mut services = h.hash::<Service4Key, Service4Value>(pin::SERVICES);
        let front = |slot| Service4Key::new(addr_to_map(external.octets()), port_to_map(VPORT), PROTO_TCP, slot);
        services.insert(front(1), Service4Value { backend_id: 1, rev_nat_index: 2, ..Default::default() }, 0).unwrap();
        let dsr = Service4Value { count: 1, rev_nat_index: 2, flags: SERVICE_FLAG_DSR, ..Default::default() };
        services.insert(front(0), dsr, 0).unwrap();
        let rev = RevNat4 { addr: addr_to_map(external.octets()), port: port_to_map(VPORT), _pad: 0 };
        h.hash::<u32, RevNat4>(pin::REV_NAT).insert(2, rev, 0).unwrap();
        assert_tunnelled_by_dsr(h, (OUTSIDE_CLIENT, 40000), (external, VPORT), (PEER_POD, BPORT));
        // The node port of the same node, without DSR, still uses source NAT from the
        // node's own address.
        let (_, out) = h
            .run_prog(Prog::FromUnderlay, &packet(PROTO_TCP, (OUTSIDE_CLIENT, 40001), (NODE, NODE_PORT), TCP_SYN, b""));
        let outer = parse(&out);
        assert_eq!((outer.src, outer.l4[8..12].to_vec()), (NODE, vec![0x08, 0, 0, 0]));
        assert_eq!(parse(&outer.l4[16..]).src, Ipv4Addr::new(10, 244, 1, 0), "snat");

        // As the backend's node: such a packet for a pod here. The pod's reply leaves by
        // the underlay straight to the client, from the external address and port.
        let syn = packet(PROTO_TCP, (OUTSIDE_CLIENT, 41000), (BACKENDS[0], BPORT), TCP_SYN, b"");
        let (action, _) = h.run_prog(Prog::FromUnderlay, &vxlan_frame(external, dsr_marker(VPORT), &syn, false));
        assert_eq!(action, TC_ACT_OK, "on to the VXLAN device");
        assert_eq!(h.stat("dsr_learnt"), 1);
        assert_answered_from(h, (external, VPORT), 41000);
    });
}

#[test]
fn conntrack_collection_removes_expired_flows_both_ways_and_keeps_live_ones() {
    with_harness("conntrack_collection_removes_expired_flows", |h| {
        use skiff_node::datapath::conntrack_gc;
        h.datapath.set_config(LbConfig { udp_timeout_s: 1, tcp_closing_timeout_s: 1, ..Default::default() }).unwrap();
        h.add_backend(1, BACKENDS[0], PROTO_TCP, 0);
        h.add_backend(11, BACKENDS[0], PROTO_UDP, 0);
        h.set_service(PROTO_TCP, &[1], 0, 0);
        h.set_service(PROTO_UDP, &[11], 0, 0);
        // A TCP flow that closes, an idle UDP flow, and a live TCP flow.
        h.run(&packet(PROTO_TCP, (CLIENT, 48100), (VIP, VPORT), TCP_SYN, b""));
        h.run(&packet(PROTO_TCP, (BACKENDS[0], BPORT), (CLIENT, 48100), TCP_FIN | TCP_ACK, b""));
        h.run(&packet(PROTO_UDP, (CLIENT, 48101), (VIP, VPORT), 0, b"x"));
        h.run(&packet(PROTO_TCP, (CLIENT, 48102), (VIP, VPORT), TCP_SYN, b""));
        let entries = |h: &Harness| h.hash::<Ct4Key, Ct4Entry>(pin::CT).keys().count();
        assert_eq!(entries(h), 6, "three flows, two entries each");
        // Nothing has expired yet.
        assert_eq!(conntrack_gc::collect(&h.pins.path).unwrap().removed, 0);
        std::thread::sleep(Duration::from_millis(2100));
        let collected = conntrack_gc::collect(&h.pins.path).unwrap();
        assert_eq!((collected.scanned, collected.removed), (6, 4), "the closed and the idle flow, both directions");
        let left: Vec<Ct4Key> = h.hash::<Ct4Key, Ct4Entry>(pin::CT).keys().map(Result::unwrap).collect();
        assert!(left.iter().all(|k| k.sport == port_to_map(48102) || k.dport == port_to_map(48102)), "{left:?}");
        // A reply entry without its forward entry (half a pair lost to eviction) goes too.
        let mut ct = h.hash::<Ct4Key, Ct4Entry>(pin::CT);
        let forward = *left.iter().find(|k| k.dir == CT_DIR_FORWARD).unwrap();
        ct.remove(&forward).unwrap();
        assert_eq!(conntrack_gc::collect(&h.pins.path).unwrap().removed, 1);
        assert_eq!(entries(h), 0);
    });
}

/// Issue 12's burst: a million short TCP connections (SYN, the backend's SYN-ACK, a FIN
/// each way) through a Maglev Service, with conntrack collection running beside them as
/// the agent runs it, while a thousand long-lived connections sit idle. Nothing may be
/// dropped, every packet is translated both ways, and each idle connection's next packet
/// still reaches its backend: the map holds the live flows plus the recently closed ones,
/// collection removes closed flows as their time runs out, and should the LRU still have
/// evicted an idle flow's entry, Maglev hashes the flow to the same backend again.
///
/// Time is compressed (the burst takes seconds, not minutes), so the closing timeout is
/// 1 s instead of 10 s and collection runs every 200 ms instead of 30 s: the ratio of
/// burst rate to map capacity is what matters, and this one is harsher than a real node's.
#[test]
fn a_burst_of_a_million_short_connections_drops_nothing_and_keeps_idle_flows_on_their_backends() {
    use skiff_node::datapath::conntrack_gc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const BURST: u32 = 1_000_000;
    const IDLE: u16 = 1_000;
    with_harness("a_burst_of_a_million_short_connections", |h| {
        h.datapath.set_config(LbConfig { tcp_closing_timeout_s: 1, ..Default::default() }).unwrap();
        for (i, b) in BACKENDS.iter().enumerate() {
            h.add_backend(i as u32 + 1, *b, PROTO_TCP, 0);
        }
        h.set_service(PROTO_TCP, &[1, 2, 3, 1, 3, 2, 1], SERVICE_FLAG_MAGLEV, 0);
        let idle_backend: Vec<Ipv4Addr> = (0..IDLE)
            .map(|i| {
                let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, 40_000 + i), (VIP, VPORT), TCP_SYN, b""));
                parse(&out).dst
            })
            .collect();

        let stop = AtomicBool::new(false);
        let pins = h.pins.path.clone();
        let started = std::time::Instant::now();
        let (collections, removed) = std::thread::scope(|s| {
            let collector = s.spawn(|| {
                let (mut runs, mut removed) = (0u32, 0usize);
                while !stop.load(Ordering::Relaxed) {
                    removed += conntrack_gc::collect(&pins).expect("conntrack collection").removed;
                    runs += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                (runs, removed)
            });
            // Four frames, re-addressed in place for each connection: building and
            // parsing 4M frames would cost more than the programs under test.
            let mut syn = packet(PROTO_TCP, (CLIENT, 1), (VIP, VPORT), TCP_SYN, b"");
            let mut syn_ack = packet(PROTO_TCP, (VIP, BPORT), (CLIENT, 1), TCP_SYN | TCP_ACK, b"");
            let mut fin = packet(PROTO_TCP, (CLIENT, 1), (VIP, VPORT), TCP_FIN | TCP_ACK, b"");
            let mut fin_back = packet(PROTO_TCP, (VIP, BPORT), (CLIENT, 1), TCP_FIN | TCP_ACK, b"");
            let vip = VIP.octets();
            for n in 0..BURST {
                // 16 clients beside the idle one, each port used once.
                let client = Ipv4Addr::new(10, 244, 1, 100 + (n % 16) as u8);
                let sport = 2_000 + (n / 16) as u16;
                // Every 50,000th connection is checked whole, checksums included.
                let whole = n % 50_000 == 0;
                readdress(&mut syn, (client, sport), (VIP, VPORT));
                let (_, out) = h.run(&syn);
                let backend = Ipv4Addr::from(<[u8; 4]>::try_from(&out[30..34]).unwrap());
                assert!(BACKENDS.contains(&backend), "connection {n}: SYN not translated: {:?}", parse(&out));
                if whole {
                    assert_eq!((parse(&out).dst, parse(&out).dport), (backend, BPORT));
                }
                readdress(&mut syn_ack, (backend, BPORT), (client, sport));
                let (_, out) = h.run(&syn_ack);
                assert_eq!(out[26..30], vip, "connection {n}: SYN-ACK not reverse-translated");
                if whole {
                    assert_eq!((parse(&out).src, parse(&out).sport), (VIP, VPORT));
                }
                readdress(&mut fin, (client, sport), (VIP, VPORT));
                let (_, out) = h.run(&fin);
                assert_eq!(out[30..34], backend.octets(), "connection {n}: FIN went elsewhere");
                readdress(&mut fin_back, (backend, BPORT), (client, sport));
                let (_, out) = h.run(&fin_back);
                assert_eq!(out[26..30], vip, "connection {n}: the backend's FIN not reverse-translated");
            }
            stop.store(true, Ordering::Relaxed);
            collector.join().expect("collector thread")
        });
        eprintln!(
            "{BURST} connections in {:.1} s; {collections} collections removed {removed} entries",
            started.elapsed().as_secs_f64()
        );
        for (name, value) in read_stats(&h.pins.path).unwrap() {
            if name == "errors" || name.starts_with("drop_") {
                assert_eq!(value, 0, "{name} after the burst");
            }
        }
        for (i, backend) in idle_backend.iter().enumerate() {
            let port = 40_000 + i as u16;
            let (_, out) = h.run(&packet(PROTO_TCP, (CLIENT, port), (VIP, VPORT), TCP_ACK, b"still here"));
            assert_eq!(parse(&out).dst, *backend, "the idle connection from port {port} moved");
        }
        // Once their closing time is up, collection leaves only the idle connections.
        std::thread::sleep(Duration::from_millis(1100));
        conntrack_gc::collect(&h.pins.path).unwrap();
        let left = h.hash::<Ct4Key, Ct4Entry>(pin::CT).keys().count();
        assert_eq!(left, 2 * usize::from(IDLE), "entries left after the burst's flows closed");
    });
}
