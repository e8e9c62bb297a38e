//! kube-proxy's iptables mode as a baseline: the nat-table ruleset it writes for a set of
//! Services, loaded into a bench node with `iptables-restore` (`bench lb`, `bench
//! nodeport` and `bench cluster` compare Skiff with it).
//!
//! It touches only the namespace it is given.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Result, bail};
use skiff_tests::netns::Netns;

use crate::lbsetup::ServiceSpec;

/// Loads the nat-table rules kube-proxy's iptables mode writes for these Services:
/// KUBE-SERVICES → KUBE-SVC-* (statistic random) → KUBE-SEP-* (DNAT), plus the
/// masquerade marking chains, in one `iptables-restore`; returns how long the restore
/// itself took (the `bench cluster` resync compares it with the agent's). With
/// `node_ports` (the first port), Service `i` also gets node port `first + i`, as
/// kube-proxy writes it: KUBE-SERVICES' last rule sends packets to the node's own
/// addresses on to KUBE-NODEPORTS, one rule per port, each to a KUBE-EXT-* chain that
/// marks the flow for masquerade and goes on to the Service's chain.
pub(crate) fn load_iptables(
    node: &Netns,
    specs: &[ServiceSpec],
    backend: &str,
    node_ports: Option<u16>,
) -> Result<Duration> {
    let mut rules = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    rules.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
    let mut sep_id = 0usize;
    let mut body = String::new();
    for (i, s) in specs.iter().enumerate() {
        let svc_chain = format!("KUBE-SVC-{i:016}");
        let _ = writeln!(rules, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            body,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"default/{}:http cluster IP\" -m tcp --dport 80 -j {svc_chain}",
            s.vip, s.name
        );
        let _ = writeln!(
            body,
            "-A {svc_chain} ! -s 10.244.0.0/16 -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ",
            s.vip
        );
        let n = s.endpoints.len();
        for (j, ep) in s.endpoints.iter().enumerate() {
            let sep_chain = format!("KUBE-SEP-{sep_id:016}");
            sep_id += 1;
            let _ = writeln!(rules, ":{sep_chain} - [0:0]");
            if j + 1 < n {
                let p = 1.0 / (n - j) as f64;
                let _ =
                    writeln!(body, "-A {svc_chain} -m statistic --mode random --probability {p:.11} -j {sep_chain}");
            } else {
                let _ = writeln!(body, "-A {svc_chain} -j {sep_chain}");
            }
            let _ = writeln!(body, "-A {sep_chain} -s {ep}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(body, "-A {sep_chain} -p tcp -m tcp -j DNAT --to-destination {ep}:8080");
        }
    }
    if let Some(first) = node_ports {
        rules.push_str(":KUBE-NODEPORTS - [0:0]\n");
        for (i, s) in specs.iter().enumerate() {
            let (ext_chain, svc_chain) = (format!("KUBE-EXT-{i:016}"), format!("KUBE-SVC-{i:016}"));
            let _ = writeln!(rules, ":{ext_chain} - [0:0]");
            let _ = writeln!(
                body,
                "-A KUBE-NODEPORTS -p tcp -m comment --comment \"default/{}:http\" -m tcp --dport {} -j {ext_chain}",
                s.name,
                usize::from(first) + i
            );
            let _ = writeln!(body, "-A {ext_chain} -j KUBE-MARK-MASQ");
            let _ = writeln!(body, "-A {ext_chain} -j {svc_chain}");
        }
        body.push_str(
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
        );
    }
    rules.push_str(&body);
    rules.push_str("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    rules.push_str("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    rules.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    rules.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    rules.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    rules.push_str("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n");
    rules.push_str("-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n");
    rules.push_str("COMMIT\n");
    let path = std::env::temp_dir().join(format!("skiff-bench-{}.rules", std::process::id()));
    std::fs::write(&path, &rules)?;
    let started = std::time::Instant::now();
    let out = node.sh_output(&format!("iptables-{backend}-restore < {}", path.display()));
    let took = started.elapsed();
    let _ = std::fs::remove_file(&path);
    if !out.status.success() {
        bail!("iptables-{backend}-restore failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}
