use super::datapaths::{unexpected_routes, vxlan_devices};
use super::*;

/// The shape of iperf3 3.12's `-J` output, cut to what the bench reads.
const IPERF_OK: &str = r#"{
    "start": {"version": "iperf 3.12"},
    "intervals": [],
    "end": {
        "streams": [],
        "sum_sent": {"start": 0, "end": 2.0, "seconds": 2.0, "bytes": 2500000000,
                     "bits_per_second": 10000000000.5, "retransmits": 7, "sender": true},
        "sum_received": {"start": 0, "end": 2.0, "seconds": 2.0, "bytes": 2490000000,
                         "bits_per_second": 9960000000.25, "sender": true}
    }
}"#;

#[test]
fn iperf_json_gives_received_throughput_and_sent_retransmits() {
    assert_eq!(parse_iperf(IPERF_OK).unwrap(), (9_960_000_000.25, 7));
}

#[test]
fn iperf_errors_fail_the_run() {
    let refused = r#"{"start": {"connected": []}, "intervals": [], "end": {},
        "error": "unable to connect to server: Connection refused"}"#;
    let err = parse_iperf(refused).unwrap_err().to_string();
    assert!(err.contains("Connection refused"), "{err}");
    assert!(parse_iperf("iperf3: error - unable to connect").is_err());
    let udp = IPERF_OK.replace(r#""retransmits": 7, "#, "");
    assert!(parse_iperf(&udp).is_err(), "no retransmits: not a TCP run");
    let nothing = IPERF_OK.replace("9960000000.25", "0");
    assert!(parse_iperf(&nothing).is_err());
}

#[test]
fn rr_summary_gives_the_rate_and_no_answer_fails() {
    assert_eq!(parse_rr("requests=51234 elapsed_s=2.000 rate=25617.0\n").unwrap(), 25617.0);
    assert!(parse_rr("requests=0 elapsed_s=2.000 rate=0.0\n").is_err());
    assert!(parse_rr("").is_err());
}

#[test]
fn arguments_default_to_ten_seconds_five_rounds_and_cubic() {
    let cubic = || "cubic".to_string();
    assert_eq!(
        parse_args(&[]).unwrap(),
        Options { seconds: 10, rounds: 5, profile: None, congestion_control: cubic() }
    );
    let args: Vec<String> = ["--seconds", "2", "--rounds", "1"].map(String::from).to_vec();
    assert_eq!(
        parse_args(&args).unwrap(),
        Options { seconds: 2, rounds: 1, profile: None, congestion_control: cubic() }
    );
    let args: Vec<String> = ["--congestion-control", "bbr"].map(String::from).to_vec();
    assert_eq!(parse_args(&args).unwrap().congestion_control, "bbr");
    assert!(parse_args(&["--congestion-control".into()]).is_err());
    let args: Vec<String> = ["--profile", "/tmp/p"].map(String::from).to_vec();
    assert_eq!(parse_args(&args).unwrap().profile, Some(std::path::PathBuf::from("/tmp/p")));
    assert!(parse_args(&["--profile".into()]).is_err());
    assert!(parse_args(&["--rounds".into(), "0".into()]).is_err());
    assert!(parse_args(&["--seconds".into()]).is_err());
    assert!(parse_args(&["--fast".into()]).is_err());
}

#[test]
fn per_run_cost_is_the_time_delta_over_the_run_delta() {
    assert_eq!(per_run_ns((1_000, 10), (31_000, 310)), Some(100.0));
    assert_eq!(per_run_ns((1_000, 10), (1_000, 10)), None, "not run: no figure");
}

fn sample(gbit: f64, retransmits: u64, rr: f64) -> Sample {
    Sample { bits_per_second: gbit * 1e9, retransmits, rr }
}

/// Two rounds of every mode.
fn figures(plain_gbit: f64) -> Figures {
    let values = vec![
        vec![sample(8.0, 10, 20_000.0), sample(9.0, 20, 22_000.0)],
        vec![sample(7.2, 30, 19_000.0), sample(8.1, 40, 20_900.0)],
        vec![sample(6.4, 50, 18_000.0), sample(7.2, 60, 19_800.0)],
        vec![sample(10.0, 5, 25_000.0), sample(10.0, 6, 27_500.0)],
        vec![sample(plain_gbit, 1, 30_000.0), sample(plain_gbit, 2, 30_000.0)],
    ];
    Figures::new(&Rounds { modes: MODES.to_vec(), values })
}

#[test]
fn figure_lines_put_the_median_first_and_take_ratios_per_round() {
    let lines = figures(20.0).lines();
    let line = |prefix: &str| {
        lines.iter().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {lines:#?}")).clone()
    };
    // Per round 0.8 and 0.9; with two values the median is the upper one.
    assert_eq!(
        line("P4 throughput-vs-kernel-vxlan:"),
        "P4 throughput-vs-kernel-vxlan: 0.90 x (min 0.80, max 0.90, n=2)"
    );
    assert_eq!(
        line("P3 clusterip-vs-pod-ip-throughput:"),
        "P3 clusterip-vs-pod-ip-throughput: 0.90 x (min 0.90, max 0.90, n=2)"
    );
    assert_eq!(
        line("P3 clusterip-tc-vs-pod-ip-throughput:"),
        "P3 clusterip-tc-vs-pod-ip-throughput: 0.80 x (min 0.80, max 0.80, n=2)"
    );
    assert_eq!(
        line("P4 ebpf-overlay-throughput:"),
        "P4 ebpf-overlay-throughput: 9.00 Gbit/s (min 8.00, max 9.00, n=2)"
    );
    assert_eq!(line("P4 kernel-vxlan-retransmits:"), "P4 kernel-vxlan-retransmits: 6 segments (min 5, max 6, n=2)");
    assert_eq!(line("P4 rr-vs-kernel-vxlan:"), "P4 rr-vs-kernel-vxlan: 0.80 x (min 0.80, max 0.80, n=2)");
    assert!(line("P4 throughput-vs-plain-routing:").starts_with("P4 throughput-vs-plain-routing: 0.45 x"));
    assert!(line("P3 clusterip-retransmits:").contains("n=2"));
    // Every line is a figure to the bars' parser, with the median as its value.
    let parsed = crate::bench_support::parse_figures(&lines.join("\n"));
    assert_eq!(parsed.len(), lines.len());
    assert!(parsed.iter().any(|f| f.name == "P4 throughput-vs-kernel-vxlan" && f.value == 0.9 && f.unit == "x"));
}

#[test]
fn an_overlay_above_plain_routing_is_named_in_a_warning() {
    assert!(figures(20.0).ceiling_warnings().is_empty());
    let warnings = figures(9.5).ceiling_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].starts_with("WARNING: KernelVxlan throughput is above plain routing"), "{}", warnings[0]);
    assert!(warnings[0].contains("in 2 of 2 rounds"), "{}", warnings[0]);
}

#[test]
fn program_costs_print_a_line_per_program_that_ran() {
    let lines = cost_lines(&[("from_pod@n1".into(), vec![120.0, 100.0, 110.0]), ("to_pod@n1".into(), vec![])]);
    assert_eq!(lines[0], "P1 overlay-cost-in-traffic-from_pod@n1: 110 ns/pkt (min 100, max 120, n=3)");
    assert!(lines[1].starts_with("# "), "{}", lines[1]);
}

#[test]
fn leftover_vxlan_devices_are_found_in_ip_link_details() {
    let links = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN\n    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00 promiscuity 0\n\
        2: eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP\n    link/ether 5a:1b:00:00:00:01 brd ff:ff:ff:ff:ff:ff\n    veth addrgenmode eui64\n\
        3: flannel.1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN\n    link/ether 8a:50:7f:21:b4:6f brd ff:ff:ff:ff:ff:ff\n    vxlan id 1 local 192.168.77.11 dev eth0 srcport 0 0 dstport 8472 nolearning ttl auto\n\
        4: skiff-vxlan: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN\n    link/ether d6:b3:e1:fc:70:07 brd ff:ff:ff:ff:ff:ff\n    vxlan external id 0 srcport 0 0 dstport 8472 nolearning\n";
    assert_eq!(vxlan_devices(links), ["flannel.1", "skiff-vxlan"]);
    assert!(vxlan_devices(&links[..links.find("3: ").unwrap()]).is_empty());
}

#[test]
fn only_the_pods_and_the_underlay_subnet_may_be_routed() {
    let allowed = ["10.244.1.10".to_owned(), "192.168.77.0/24".to_owned()];
    let clean =
        "10.244.1.10 dev skv0 scope link \n192.168.77.0/24 dev eth0 proto kernel scope link src 192.168.77.11 \n";
    assert!(unexpected_routes(clean, &allowed).is_empty());
    let left = format!("{clean}10.244.2.0/24 via 192.168.77.12 dev eth0 \n10.244.0.0/16 dev skiff-vxlan scope link \n");
    assert_eq!(
        unexpected_routes(&left, &allowed),
        ["10.244.2.0/24 via 192.168.77.12 dev eth0", "10.244.0.0/16 dev skiff-vxlan scope link"]
    );
}
