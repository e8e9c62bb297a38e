//! `skiff-lb-bench`: P1, the load balancer's cost per packet under BPF_PROG_TEST_RUN,
//! with 1, 10,000 and 100,000 Services installed, for each path a packet can take.
//! Run by `cargo xtask bench lb`; needs root and bpffs. It must not attach anything to
//! an interface: every packet here is synthetic and goes nowhere.
//!
//! BPF_PROG_TEST_RUN runs a program `repeat` times on one packet, and the program
//! rewrites that packet in place; the kernel reports the time per repetition. Two
//! methods follow from that:
//!
//! - `lb-cost` (established flow, backend on this node, no overlay configured): the
//!   measured frontends form a pair whose backends point at each other, so that a
//!   packet to A:80 becomes a packet to B:8080, which the next repetition translates
//!   back to A:80. Every repetition then does the whole established-flow work
//!   (frontend check, conntrack hit, DNAT with checksum updates), and millions of
//!   repetitions per run make the clock's cost vanish. With one Service installed, A
//!   and B are that Service's two ports.
//! - The other paths cannot loop like that: a new flow exists after its first
//!   repetition, a tunnelled packet keeps its rewritten destination, a reply once
//!   translated is no reply any more. So each sample of them is one run with
//!   `repeat = 1` on a fresh copy of the packet, and the kernel's figure for it is one
//!   program run plus one clock read. The median of many such runs, minus the median of
//!   as many runs of an empty tc program on a packet of the same size (measured just
//!   before, in the same round), is the path's own cost:
//!   - `lb-cost-new-flow`: a SYN from a source port no earlier run used, so each run
//!     misses conntrack, looks the Service up, picks one of three backends on this node
//!     and inserts both conntrack entries (checked: the `ct_new` counter grows by one
//!     per run, and the destination is one of the backends);
//!   - `lb-cost-established-remote`: an ACK of an established flow whose backend lives
//!     on another node (the overlay configured, the backend's podCIDR a peer's): the
//!     conntrack hit, DNAT, the tunnel key and the redirect to the VXLAN device
//!     (`TC_ACT_REDIRECT`; the test run does not carry out the redirect);
//!   - `lb-cost-reply`: that backend's reply as it comes out of the tunnel, through
//!     "from overlay": reverse NAT to the Service address, and delivery to the local
//!     client pod (its MAC addresses written, redirected to its veth).
//!
//! Every figure is printed as measured and net of the empty program (BPF_PROG_TEST_RUN's
//! own fixed cost for a tc program), each the median over rounds with its spread.

use std::{net::Ipv4Addr, path::PathBuf, time::Instant};

use anyhow::{Context, Result, bail, ensure};
use aya::{
    maps::{HashMap, LpmTrie, Map, MapData, lpm_trie::Key},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use skiff_ebpf_common::{
    Backend4, DEFAULT_VNI, Endpoint4, LbConfig, NodeInfo4, OverlayConfig, PROTO_TCP, RevNat4, Service4Key,
    Service4Value, addr_to_map, capacity, pin, port_to_map,
};
use skiff_node::datapath::{Datapath, MapSizes, Prog, read_stats, set_overlay_config};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const VIP_A: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const VIP_B: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 2);
const FILLER_BACKENDS: u32 = 1000;
/// Backends of the new-flow path, pods of this node (10.244.1.0/24).
const LOCAL_BACKENDS: [Ipv4Addr; 3] =
    [Ipv4Addr::new(10, 244, 1, 20), Ipv4Addr::new(10, 244, 1, 21), Ipv4Addr::new(10, 244, 1, 22)];
/// The backend of the remote paths, a pod of node 2 (10.244.2.0/24).
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 20);
const BACKEND_PORT: u16 = 8080;
/// Node 2's underlay address, only ever written into a tunnel key here.
const PEER_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 12);
/// The source port of the established remote flow.
const REMOTE_SPORT: u16 = 50_000;
/// Backend ids of the paths (the filler backends start at 100).
const LOCAL_IDS: [u32; 3] = [10, 11, 12];
const REMOTE_ID: u32 = 20;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

struct Options {
    counts: Vec<u32>,
    repeat: u32,
    rounds: usize,
    runs: usize,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = Options { counts: vec![1, 10_000, 100_000], repeat: 2_000_000, rounds: 5, runs: 2000 };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--services" => opts.counts = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--repeat" => opts.repeat = value()?.parse()?,
            "--rounds" => opts.rounds = value()?.parse()?,
            "--runs" => opts.runs = value()?.parse()?,
            other => bail!(
                "unknown argument {other}; usage: skiff-lb-bench [--services 1,10000,100000] [--repeat N] \
                 [--rounds N] [--runs N (single runs per round)]"
            ),
        }
    }
    ensure!(opts.rounds > 0 && opts.runs > 0 && opts.repeat > 0, "--rounds, --runs and --repeat must be above 0");
    static NOOP: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_NOOP"));
    let mut noop_object = aya::Ebpf::load(NOOP)?;
    let noop: &mut SchedClassifier = noop_object.program_mut("noop").context("noop program")?.try_into()?;
    noop.load()?;
    // A whole pass whose figures are dropped: the first count measured came out
    // slower than larger ones after only its own warm-up round (a cold machine: the
    // maps' first pages, the programs' first runs), which is not the Service count's
    // doing.
    let warm_up = Options { counts: vec![1], repeat: opts.repeat, rounds: 1, runs: opts.runs };
    measure(1, &warm_up, noop)?;
    for services in opts.counts.clone() {
        let f = measure(services, &opts, noop)?;
        let print = |path: &str, gross: &[f64], noop: &[f64]| {
            let net: Vec<f64> = gross.iter().zip(noop).map(|(g, n)| g - n).collect();
            println!("P1 lb-cost{path}@{services}: {}", summary(gross, "ns/pkt", 0));
            println!("P1 lb-cost{path}-net@{services}: {}", summary(&net, "ns/pkt", 0));
        };
        print("", &f.pair, &f.pair_noop);
        print("-new-flow", &f.new_flow, &f.new_flow_noop);
        print("-established-remote", &f.remote, &f.remote_noop);
        print("-reply", &f.reply, &f.reply_noop);
        eprintln!(
            "[bench] (net = minus an empty tc program measured the same way: {} per run of {} repetitions, \
             {} per single run)",
            summary(&f.pair_noop, "ns", 0),
            opts.repeat,
            summary(&f.new_flow_noop, "ns", 0)
        );
    }
    Ok(())
}

/// `median unit (min .., max .., n=..)`, as xtask's `bench_support::summary` prints it:
/// the median first, because the bars parse the first number.
fn summary(values: &[f64], unit: &str, decimals: usize) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    format!("{:.d$} {unit} (min {:.d$}, max {:.d$}, n={})", v[v.len() / 2], v[0], v[v.len() - 1], v.len(), d = decimals)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per round: each path's figure, and the empty program's taken beside it.
#[derive(Default)]
struct Figures {
    pair: Vec<f64>,
    pair_noop: Vec<f64>,
    new_flow: Vec<f64>,
    new_flow_noop: Vec<f64>,
    remote: Vec<f64>,
    remote_noop: Vec<f64>,
    reply: Vec<f64>,
    reply_noop: Vec<f64>,
}

/// One BPF_PROG_TEST_RUN of `repeat` repetitions on `frame`: the kernel's time per
/// repetition in ns, and the packet as the program left it. An unexpected return value
/// fails the bench: the path measured would not be the one named.
fn timed(program: &SchedClassifier, frame: &[u8], repeat: u32, expect: u32) -> Result<(f64, Vec<u8>)> {
    let mut out = vec![0u8; 256];
    let r = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    })?;
    if r.return_value != expect {
        bail!("the program returned {} instead of {expect}", r.return_value);
    }
    out.truncate(r.data_size_out as usize);
    Ok((r.duration.as_nanos() as f64, out))
}

/// After a warm-up round, `opts.rounds` rounds of: `opts.runs` single runs
/// (`repeat = 1`) of the empty program, then as many of `program`, each on a new
/// `frame()` whose output `check` accepts. Frames are built and checked outside the
/// kernel's timing. Returns each round's median, the empty program's and the path's.
fn single_rounds(
    noop: &SchedClassifier,
    program: &SchedClassifier,
    opts: &Options,
    expect: u32,
    mut frame: impl FnMut() -> Vec<u8>,
    mut check: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let noop_frame = tcp_frame((CLIENT, REMOTE_SPORT), (VIP_A, 80), TCP_ACK);
    let (mut noops, mut paths) = (Vec::new(), Vec::new());
    for round in 0..=opts.rounds {
        let (mut n, mut p) = (Vec::with_capacity(opts.runs), Vec::with_capacity(opts.runs));
        for _ in 0..opts.runs {
            n.push(timed(noop, &noop_frame, 1, TC_ACT_OK)?.0);
        }
        for _ in 0..opts.runs {
            let (ns, out) = timed(program, &frame(), 1, expect)?;
            check(&out)?;
            p.push(ns);
        }
        keep(round, (&mut noops, median(n)), (&mut paths, median(p)));
    }
    Ok((noops, paths))
}

/// Installs `services` Services and measures every path; rounds alternate the empty
/// program and the path, after one warm-up round whose figures are dropped.
fn measure(services: u32, opts: &Options, noop: &SchedClassifier) -> Result<Figures> {
    let dir = PathBuf::from(format!("/sys/fs/bpf/skiff-bench/p1-{}-{services}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = (|| {
        let sizes =
            MapSizes { services: (services * 2 + 16).max(1024), backends: FILLER_BACKENDS + 16, ct: capacity::CT };
        let mut datapath = Datapath::load(&dir, sizes)?;
        datapath.set_config(LbConfig {
            service_net: addr_to_map([10, 96, 0, 0]),
            service_mask: addr_to_map([255, 240, 0, 0]),
            ..Default::default()
        })?;
        let started = Instant::now();
        install(&dir, services)?;
        eprintln!("[bench] {services} Services installed in {:.1} s", started.elapsed().as_secs_f64());
        let mut f = Figures::default();

        // Established, no overlay: the pair. Two warm-up runs create both conntrack entries.
        let frame = tcp_frame((CLIENT, 40_000), (VIP_A, 80), TCP_ACK);
        let from_pod = datapath.program(Prog::FromPod)?;
        timed(from_pod, &frame, 2, TC_ACT_OK)?;
        for round in 0..=opts.rounds {
            let (n, _) = timed(noop, &frame, opts.repeat, TC_ACT_OK)?;
            let (ns, _) = timed(from_pod, &frame, opts.repeat, TC_ACT_OK)?;
            keep(round, (&mut f.pair_noop, n), (&mut f.pair, ns));
        }

        // A node of a cluster from here on: the overlay configured, node 2 a peer.
        set_overlay(&dir)?;

        // New flows to three backends on this node.
        set_frontend(&dir, &LOCAL_IDS)?;
        let new_before = ct_new(&dir)?;
        let mut flow = 0usize;
        let new_flow = || {
            flow += 1;
            tcp_frame(new_flow_source(flow), (VIP_A, 80), TCP_SYN)
        };
        (f.new_flow_noop, f.new_flow) = single_rounds(noop, from_pod, opts, TC_ACT_OK, new_flow, |out| {
            let dst = ipv4_dst(out);
            ensure!(LOCAL_BACKENDS.contains(&dst), "a new flow went to {dst}, no backend of the Service");
            Ok(())
        })?;
        let created = ct_new(&dir)? - new_before;
        ensure!(created == flow as u64, "{flow} new-flow runs created {created} flows: not every run was a new flow");

        // An established flow to a backend on node 2: its first packet creates it.
        set_frontend(&dir, &[REMOTE_ID])?;
        let forward = tcp_frame((CLIENT, REMOTE_SPORT), (VIP_A, 80), TCP_ACK);
        let syn = tcp_frame((CLIENT, REMOTE_SPORT), (VIP_A, 80), TCP_SYN);
        timed(from_pod, &syn, 1, TC_ACT_REDIRECT).context("the remote flow's first packet")?;
        let to_backend = |out: &[u8]| {
            ensure!(ipv4_dst(out) == REMOTE_BACKEND, "the established flow lost its backend");
            Ok(())
        };
        (f.remote_noop, f.remote) =
            single_rounds(noop, from_pod, opts, TC_ACT_REDIRECT, || forward.clone(), to_backend)?;

        // That backend's replies, out of the tunnel into "from overlay".
        let reply = tcp_frame((REMOTE_BACKEND, BACKEND_PORT), (CLIENT, REMOTE_SPORT), TCP_ACK);
        let from_overlay = datapath.program(Prog::FromOverlay)?;
        let translated = |out: &[u8]| {
            ensure!(ipv4_src(out) == VIP_A, "the reply was not translated back to the Service address");
            Ok(())
        };
        (f.reply_noop, f.reply) =
            single_rounds(noop, from_overlay, opts, TC_ACT_REDIRECT, || reply.clone(), translated)?;
        Ok(f)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Keeps a round's figures unless it is the warm-up (round 0).
fn keep(round: usize, noop: (&mut Vec<f64>, f64), path: (&mut Vec<f64>, f64)) {
    if round > 0 {
        noop.0.push(noop.1);
        path.0.push(path.1);
    }
}

/// The source of new flow number `n` (from 1): clients 10.244.1.100 and up, 60,000
/// ports each, none of them the other paths' sources.
fn new_flow_source(n: usize) -> (Ipv4Addr, u16) {
    let client = u32::from(Ipv4Addr::new(10, 244, 1, 100)) + (n / 60_000) as u32;
    (Ipv4Addr::from(client), 1024 + (n % 60_000) as u16)
}

fn ct_new(dir: &std::path::Path) -> Result<u64> {
    let stats = read_stats(dir)?;
    Ok(stats.iter().find(|(name, _)| *name == "ct_new").map(|(_, v)| *v).unwrap_or(0))
}

fn open<K: aya::Pod, V: aya::Pod>(dir: &std::path::Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    let data = MapData::from_pin(dir.join(name)).with_context(|| format!("open {name}"))?;
    Ok(HashMap::try_from(Map::HashMap(data))?)
}

fn frontend(vip: Ipv4Addr, port: u16, slot: u16) -> Service4Key {
    Service4Key::new(addr_to_map(vip.octets()), port_to_map(port), PROTO_TCP, slot)
}

fn backend(ip: Ipv4Addr, port: u16) -> Backend4 {
    Backend4 { addr: addr_to_map(ip.octets()), port: port_to_map(port), proto: PROTO_TCP, flags: 0 }
}

fn install(dir: &std::path::Path, services: u32) -> Result<()> {
    let mut svc = open::<Service4Key, Service4Value>(dir, pin::SERVICES)?;
    let mut backends = open::<u32, Backend4>(dir, pin::BACKENDS)?;
    let mut rev_nat = open::<u32, RevNat4>(dir, pin::REV_NAT)?;
    // The measured pair: A:80 -> B:8080 -> A:80.
    backends.insert(1, backend(VIP_B, 8080), 0)?;
    backends.insert(2, backend(VIP_A, 80), 0)?;
    for (id, vip, port) in [(1u32, VIP_A, 80u16), (2, VIP_B, 8080)] {
        svc.insert(
            frontend(vip, port, 1),
            Service4Value { backend_id: id, rev_nat_index: id, ..Default::default() },
            0,
        )?;
        svc.insert(frontend(vip, port, 0), Service4Value { count: 1, rev_nat_index: id, ..Default::default() }, 0)?;
        rev_nat.insert(id, RevNat4 { addr: addr_to_map(vip.octets()), port: port_to_map(port), _pad: 0 }, 0)?;
    }
    // The later paths' backends, used once A:80 points at them (`set_frontend`).
    for (id, ip) in LOCAL_IDS.iter().zip(LOCAL_BACKENDS) {
        backends.insert(id, backend(ip, BACKEND_PORT), 0)?;
    }
    backends.insert(REMOTE_ID, backend(REMOTE_BACKEND, BACKEND_PORT), 0)?;
    for b in 0..FILLER_BACKENDS {
        backends.insert(100 + b, backend(Ipv4Addr::new(10, 245, (b / 256) as u8, (b % 256) as u8), 8080), 0)?;
    }
    // One Service is the pair above (two ports); more Services add one frontend each.
    for i in 0..services.saturating_sub(2) {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i);
        let id = 100 + i % FILLER_BACKENDS;
        svc.insert(
            frontend(vip, 80, 1),
            Service4Value { backend_id: id, rev_nat_index: 3 + i, ..Default::default() },
            0,
        )?;
        svc.insert(frontend(vip, 80, 0), Service4Value { count: 1, rev_nat_index: 3 + i, ..Default::default() }, 0)?;
    }
    Ok(())
}

/// Points A:80 at backends `ids` as the reconciler would: slots first, then slot 0.
/// Flows already in conntrack keep their backend.
fn set_frontend(dir: &std::path::Path, ids: &[u32]) -> Result<()> {
    let mut svc = open::<Service4Key, Service4Value>(dir, pin::SERVICES)?;
    for (slot, id) in ids.iter().enumerate() {
        let value = Service4Value { backend_id: *id, rev_nat_index: 1, ..Default::default() };
        svc.insert(frontend(VIP_A, 80, slot as u16 + 1), value, 0)?;
    }
    let front = Service4Value { count: ids.len() as u16, rev_nat_index: 1, ..Default::default() };
    svc.insert(frontend(VIP_A, 80, 0), front, 0)?;
    Ok(())
}

/// The overlay as node 1 of a two-node cluster has it: cluster 10.244.0.0/16, its own
/// podCIDR 10.244.1.0/24, node 2 owning 10.244.2.0/24, and the client a local pod. The
/// VXLAN device's index is the loopback's: a test run redirects nowhere.
fn set_overlay(dir: &std::path::Path) -> Result<()> {
    set_overlay_config(
        dir,
        OverlayConfig {
            vxlan_ifindex: 1,
            vni: DEFAULT_VNI,
            local_pod_net: addr_to_map([10, 244, 1, 0]),
            local_pod_mask: addr_to_map([255, 255, 255, 0]),
            cluster_net: addr_to_map([10, 244, 0, 0]),
            cluster_mask: addr_to_map([255, 255, 0, 0]),
        },
    )?;
    let data = MapData::from_pin(dir.join(pin::NODES)).context("open the nodes map")?;
    let mut nodes: LpmTrie<MapData, u32, NodeInfo4> = LpmTrie::try_from(Map::LpmTrie(data))?;
    let peer = NodeInfo4 { underlay_addr: addr_to_map(PEER_UNDERLAY.octets()), flags: 0 };
    nodes.insert(&Key::new(24, addr_to_map([10, 244, 2, 0])), peer, 0)?;
    let mut endpoints = open::<u32, Endpoint4>(dir, pin::ENDPOINTS)?;
    let client = Endpoint4 { ifindex: 1, flags: 0, pod_mac: [0x02, 0, 0, 0, 0, 1], host_mac: [0x02, 0, 0, 0, 0, 2] };
    endpoints.insert(addr_to_map(CLIENT.octets()), client, 0)?;
    Ok(())
}

/// An Ethernet frame holding an IPv4 TCP segment without payload, checksums valid.
fn tcp_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0];
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let csum = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&src.1.to_be_bytes());
    tcp.extend_from_slice(&dst.1.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.0.octets());
    pseudo.extend_from_slice(&dst.0.octets());
    pseudo.extend_from_slice(&[0, PROTO_TCP, 0, 20]);
    let csum = fold(sum16(&tcp, sum16(&pseudo, 0)));
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
}

fn ipv4_src(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29])
}

fn ipv4_dst(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33])
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_valid_checksums() {
        let frame = tcp_frame((CLIENT, 1234), (VIP_A, 80), TCP_SYN);
        assert_eq!(fold(sum16(&frame[14..34], 0)), 0, "IPv4 header checksum");
        let mut pseudo = frame[26..34].to_vec();
        pseudo.extend_from_slice(&[0, PROTO_TCP, 0, 20]);
        assert_eq!(fold(sum16(&frame[34..], sum16(&pseudo, 0))), 0, "TCP checksum");
        assert_eq!((ipv4_src(&frame), ipv4_dst(&frame)), (CLIENT, VIP_A));
        assert_eq!(frame[47], TCP_SYN);
    }

    #[test]
    fn new_flow_sources_never_repeat_nor_meet_the_other_paths() {
        let mut seen = std::collections::HashSet::new();
        for n in 1..=130_000 {
            let (addr, port) = new_flow_source(n);
            assert!(port >= 1024 && addr != CLIENT, "flow {n}: {addr}:{port}");
            assert!(seen.insert((addr, port)), "flow {n} repeats {addr}:{port}");
        }
    }

    #[test]
    fn summary_puts_the_median_first() {
        assert_eq!(summary(&[30.0, 10.0, 20.0], "ns/pkt", 0), "20 ns/pkt (min 10, max 30, n=3)");
    }
}
