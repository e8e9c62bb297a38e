//! `skiff-lb-bench`: P1, the "from pod" program's cost per packet under
//! BPF_PROG_TEST_RUN with 1, 10,000 and 100,000 Services installed. Run by
//! `cargo xtask bench lb`; needs root and bpffs.
//!
//! BPF_PROG_TEST_RUN repeats the program on one packet, and the program rewrites that
//! packet. So that every repetition does the full established-flow work (frontend
//! lookup, conntrack hit, DNAT of address and port with checksum updates), the measured
//! frontends form a pair whose backends point at each other: a packet to A:80 becomes a
//! packet to B:8080, which the next repetition translates back to A:80. With one
//! Service installed, A and B are that Service's two ports.
//!
//! Each figure is printed twice: as measured, and net of an empty tc program measured
//! the same way in the same run (BPF_PROG_TEST_RUN's own fixed cost per run for tc
//! programs, about 40 ns on these machines, which an XDP program does not pay).

use std::{net::Ipv4Addr, path::PathBuf, time::Instant};

use anyhow::{Context, Result, bail};
use aya::{
    maps::{HashMap, Map, MapData},
    programs::{TestRun, TestRunOptions},
};
use skiff_ebpf_common::{
    Backend4, LbConfig, PROTO_TCP, RevNat4, Service4Key, Service4Value, addr_to_map, pin, port_to_map,
};
use skiff_node::datapath::{Datapath, MapSizes};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const VIP_A: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const VIP_B: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 2);
const FILLER_BACKENDS: u32 = 1000;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut counts = vec![1u32, 10_000, 100_000];
    let mut repeat = 2_000_000u32;
    let mut rounds = 5usize;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--services" => counts = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--repeat" => repeat = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            other => bail!(
                "unknown argument {other}; usage: skiff-lb-bench [--services 1,10000,100000] [--repeat N] [--rounds N]"
            ),
        }
    }
    for services in counts {
        let ns = measure(services, repeat, rounds)?;
        let baseline = noop_baseline(repeat, rounds)?;
        println!("P1 lb-cost@{services}: {ns:.0} ns/pkt");
        println!("P1 lb-cost-net@{services}: {:.0} ns/pkt", ns - baseline);
        eprintln!("[bench] (net = minus an empty tc program measured the same way: {baseline:.0} ns/run)");
    }
    Ok(())
}

/// BPF_PROG_TEST_RUN's own cost per run for a tc program on this machine: an empty
/// program run on the same packet, median of `rounds`.
fn noop_baseline(repeat: u32, rounds: usize) -> Result<f64> {
    static NOOP: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_NOOP"));
    let mut ebpf = aya::Ebpf::load(NOOP)?;
    let program: &mut aya::programs::SchedClassifier = ebpf.program_mut("noop").context("noop program")?.try_into()?;
    program.load()?;
    let frame = syn_packet();
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let r = program.test_run(TestRunOptions { data_in: Some(&frame), repeat, ..Default::default() })?;
        samples.push(r.duration.as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn open<K: aya::Pod, V: aya::Pod>(dir: &std::path::Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    let data = MapData::from_pin(dir.join(name)).with_context(|| format!("open {name}"))?;
    Ok(HashMap::try_from(Map::HashMap(data))?)
}

/// Installs `services` Services and returns the median cost per packet over `rounds`.
fn measure(services: u32, repeat: u32, rounds: usize) -> Result<f64> {
    let dir = PathBuf::from(format!("/sys/fs/bpf/skiff-bench/p1-{}-{services}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = (|| {
        let sizes = MapSizes { services: (services * 2 + 16).max(1024), backends: FILLER_BACKENDS + 16, ct: 65_536 };
        let mut datapath = Datapath::load(&dir, sizes)?;
        datapath.set_config(LbConfig {
            service_net: addr_to_map([10, 96, 0, 0]),
            service_mask: addr_to_map([255, 240, 0, 0]),
            ..Default::default()
        })?;
        let started = Instant::now();
        install(&dir, services)?;
        eprintln!("[bench] {services} Services installed in {:.1} s", started.elapsed().as_secs_f64());

        let frame = syn_packet();
        let program = datapath.from_pod_program()?;
        // Two warm-up runs create both conntrack entries.
        let mut out = vec![0u8; 256];
        program.test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            repeat: 2,
            ..Default::default()
        })?;
        let mut samples = Vec::new();
        for _ in 0..rounds {
            let mut out = vec![0u8; 256];
            let r = program.test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })?;
            if r.return_value != 0 {
                bail!("the program returned {} instead of TC_ACT_OK", r.return_value);
            }
            samples.push(r.duration.as_nanos() as f64);
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples[samples.len() / 2])
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn install(dir: &std::path::Path, services: u32) -> Result<()> {
    let mut svc = open::<Service4Key, Service4Value>(dir, pin::SERVICES)?;
    let mut backends = open::<u32, Backend4>(dir, pin::BACKENDS)?;
    let mut rev_nat = open::<u32, RevNat4>(dir, pin::REV_NAT)?;
    let frontend = |vip: Ipv4Addr, port: u16, slot: u16| {
        Service4Key::new(addr_to_map(vip.octets()), port_to_map(port), PROTO_TCP, slot)
    };
    let backend = |ip: Ipv4Addr, port: u16| Backend4 {
        addr: addr_to_map(ip.octets()),
        port: port_to_map(port),
        proto: PROTO_TCP,
        flags: 0,
    };
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

/// A TCP ACK from the client to A:80, with valid checksums.
fn syn_packet() -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0];
    ip.extend_from_slice(&CLIENT.octets());
    ip.extend_from_slice(&VIP_A.octets());
    let csum = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut tcp = vec![0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&CLIENT.octets());
    pseudo.extend_from_slice(&VIP_A.octets());
    pseudo.extend_from_slice(&[0, PROTO_TCP, 0, 20]);
    let csum = fold(sum16(&tcp, sum16(&pseudo, 0)));
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
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
