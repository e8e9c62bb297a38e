//! skiff-node's metrics, served as Prometheus text on the kubelet server's `/metrics`
//! (`kubectl get --raw /api/v1/nodes/NODE/proxy/metrics`). Upstream's names where
//! upstream has the metric:
//! - kubelet: `kubelet_running_pods`, `kubelet_running_containers{container_state}`,
//!   `kubelet_pod_worker_duration_seconds` (one pass of a pod's worker);
//! - datapath: `skiff_datapath_verdicts_total{verdict}`, `skiff_datapath_drops_total{reason}`
//!   and `skiff_datapath_conntrack_new_total` from the per-CPU counters map, summed over
//!   CPUs; `skiff_bpf_map_entries`, `skiff_bpf_map_capacity` and `skiff_bpf_map_pressure`
//!   (entries / capacity, Cilium's name) for each pinned map;
//!   `skiff_datapath_sync_duration_seconds{role}`: how long each role's sync took to
//!   program the maps and devices;
//! - service proxy (kube-proxy's names, shown once the proxy role runs):
//!   `kubeproxy_sync_proxy_rules_duration_seconds` (one sync writing the Service maps)
//!   and `kubeproxy_network_programming_duration_seconds` (from the change in the API,
//!   an EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time`, to the
//!   maps written).
//!
//! One process-wide registry: the kubelet and the roles record into it, the server
//! renders it. The datapath figures are read from the pinned maps at scrape time, so
//! they cost nothing between scrapes. It must not decide anything.

mod fill;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Duration;

use skiff_api::histogram::Histogram;

/// Upper bounds in seconds: fine below 100 ms where the agent's work should stay.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds in seconds from an API change to the maps: the trigger time comes from
/// another machine's clock in whole or fractional seconds, so the range is wider.
const PROGRAMMING_BUCKETS: [f64; 15] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

struct Registry {
    running_pods: u64,
    containers: BTreeMap<&'static str, u64>,
    pod_worker: Histogram,
    role_sync: BTreeMap<&'static str, Histogram>,
    /// The proxy's two histograms; `None` while the proxy role is off.
    proxy: Option<ProxyHistograms>,
}

struct ProxyHistograms {
    sync_rules: Histogram,
    network_programming: Histogram,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            running_pods: 0,
            containers: BTreeMap::new(),
            pod_worker: Histogram::new(&BUCKETS),
            role_sync: BTreeMap::new(),
            proxy: None,
        }
    }
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);
static PIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The node's pinned datapath, whose counters and maps `/metrics` reports.
pub fn set_pin_dir(dir: PathBuf) {
    let _ = PIN_DIR.set(dir);
}

/// What the runtime runs now: pods with a ready sandbox, containers by state
/// (`created`, `running`, `exited`, `unknown`).
pub fn set_runtime_counts(running_pods: u64, containers: BTreeMap<&'static str, u64>) {
    let mut r = REGISTRY.lock().unwrap();
    r.running_pods = running_pods;
    r.containers = containers;
}

/// One pass of a pod worker (observe, plan, act, report).
pub fn pod_worker_pass(took: Duration) {
    REGISTRY.lock().unwrap().pod_worker.observe(took.as_secs_f64());
}

/// One sync of the agent's role `role` (proxy, overlay).
pub fn role_synced(role: &'static str, took: Duration) {
    REGISTRY
        .lock()
        .unwrap()
        .role_sync
        .entry(role)
        .or_insert_with(|| Histogram::new(&BUCKETS))
        .observe(took.as_secs_f64());
}

/// The proxy role runs: its histograms are shown from now on (empty until it syncs).
pub fn proxy_enabled() {
    REGISTRY.lock().unwrap().proxy.get_or_insert_with(|| ProxyHistograms {
        sync_rules: Histogram::new(&BUCKETS),
        network_programming: Histogram::new(&PROGRAMMING_BUCKETS),
    });
}

/// One sync of the Service maps, and the age of each API change it programmed (see
/// `proxy::latency`).
pub fn proxy_synced(took: Duration, programmed: &[Duration]) {
    proxy_enabled();
    let mut r = REGISTRY.lock().unwrap();
    let proxy = r.proxy.as_mut().expect("just enabled");
    proxy.sync_rules.observe(took.as_secs_f64());
    for latency in programmed {
        proxy.network_programming.observe(latency.as_secs_f64());
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Everything, in the Prometheus text format (version 0.0.4).
pub fn render() -> String {
    let mut out = String::new();
    {
        let r = REGISTRY.lock().unwrap();
        header(&mut out, "kubelet_running_pods", "gauge", "Number of pods that have a running pod sandbox.");
        let _ = writeln!(out, "kubelet_running_pods {}", r.running_pods);
        header(&mut out, "kubelet_running_containers", "gauge", "Number of containers currently running.");
        for (state, n) in &r.containers {
            let _ = writeln!(out, "kubelet_running_containers{{container_state=\"{state}\"}} {n}");
        }
        header(
            &mut out,
            "kubelet_pod_worker_duration_seconds",
            "histogram",
            "Duration in seconds to sync a single pod.",
        );
        r.pod_worker.render(&mut out, "kubelet_pod_worker_duration_seconds", "operation=\"sync\"");
        header(
            &mut out,
            "skiff_datapath_sync_duration_seconds",
            "histogram",
            "Duration in seconds of one sync of a datapath role (maps and devices programmed).",
        );
        for (role, h) in &r.role_sync {
            h.render(&mut out, "skiff_datapath_sync_duration_seconds", &format!("role=\"{role}\""));
        }
        if let Some(proxy) = &r.proxy {
            render_proxy(&mut out, proxy);
        }
    }
    if let Some(dir) = PIN_DIR.get() {
        render_datapath(&mut out, dir);
    }
    out
}

fn render_proxy(out: &mut String, proxy: &ProxyHistograms) {
    let name = "kubeproxy_sync_proxy_rules_duration_seconds";
    header(out, name, "histogram", "SyncProxyRules latency in seconds: one sync writing the Service maps.");
    proxy.sync_rules.render(out, name, "");
    let name = "kubeproxy_network_programming_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "In Cluster Network Programming Latency in seconds: from an EndpointSlice's last-change-trigger-time to its change in the Service maps.",
    );
    proxy.network_programming.render(out, name, "");
}

/// The counters and map fill levels of the pinned datapath under `dir`.
fn render_datapath(out: &mut String, dir: &std::path::Path) {
    match crate::datapath::read_stats(dir) {
        Ok(stats) => {
            let stat = |name: &str| stats.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
            header(out, "skiff_datapath_verdicts_total", "counter", "Packets the datapath translated, by verdict.");
            let _ = writeln!(out, "skiff_datapath_verdicts_total{{verdict=\"translated\"}} {}", stat("translated"));
            let _ = writeln!(
                out,
                "skiff_datapath_verdicts_total{{verdict=\"reverse_translated\"}} {}",
                stat("rev_translated")
            );
            header(
                out,
                "skiff_datapath_drops_total",
                "counter",
                "Packets the datapath dropped or rejected, by reason.",
            );
            let _ = writeln!(out, "skiff_datapath_drops_total{{reason=\"no_backend\"}} {}", stat("no_backend"));
            let _ = writeln!(out, "skiff_datapath_drops_total{{reason=\"map_or_helper_error\"}} {}", stat("errors"));
            header(out, "skiff_datapath_conntrack_new_total", "counter", "Conntrack entries created (new flows).");
            let _ = writeln!(out, "skiff_datapath_conntrack_new_total {}", stat("ct_new"));
        }
        Err(e) => tracing::debug!(error = %e, "no datapath counters to report"),
    }
    let fills = fill::map_fill(dir);
    header(out, "skiff_bpf_map_entries", "gauge", "Entries in each pinned BPF map.");
    for f in &fills {
        let _ = writeln!(out, "skiff_bpf_map_entries{{map_name=\"{}\"}} {}", f.map, f.entries);
    }
    header(out, "skiff_bpf_map_capacity", "gauge", "Capacity (max_entries) of each pinned BPF map.");
    for f in &fills {
        let _ = writeln!(out, "skiff_bpf_map_capacity{{map_name=\"{}\"}} {}", f.map, f.capacity);
    }
    header(out, "skiff_bpf_map_pressure", "gauge", "Fill level of each pinned BPF map (entries / capacity).");
    for f in &fills {
        let pressure = if f.capacity == 0 { 0.0 } else { f.entries as f64 / f64::from(f.capacity) };
        let _ = writeln!(out, "skiff_bpf_map_pressure{{map_name=\"{}\"}} {pressure}", f.map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_and_role_figures_show_in_the_text() {
        set_runtime_counts(3, BTreeMap::from([("running", 4), ("exited", 1)]));
        pod_worker_pass(Duration::from_millis(40));
        role_synced("proxy", Duration::from_micros(300));
        let text = render();
        assert!(text.contains("kubelet_running_pods 3"), "{text}");
        assert!(text.contains("kubelet_running_containers{container_state=\"running\"} 4"), "{text}");
        assert!(
            text.contains("kubelet_pod_worker_duration_seconds_bucket{operation=\"sync\",le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(text.contains("skiff_datapath_sync_duration_seconds_count{role=\"proxy\"} 1"), "{text}");
    }

    #[test]
    fn the_proxy_histograms_show_once_the_proxy_syncs() {
        proxy_enabled();
        assert!(render().contains("kubeproxy_network_programming_duration_seconds_bucket{le=\"0.005\"}"));
        proxy_synced(Duration::from_millis(3), &[Duration::from_millis(40), Duration::from_secs(2)]);
        let text = render();
        // Other tests share the registry, so counts are at least, not exactly, ours.
        let value = |prefix: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{prefix}: {text}"))
        };
        assert!(value("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.005\"} ") >= 1.0);
        assert!(value("kubeproxy_network_programming_duration_seconds_bucket{le=\"0.05\"} ") >= 1.0);
        assert!(value("kubeproxy_network_programming_duration_seconds_count ") >= 2.0);
        assert!(text.contains("# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram"), "{text}");
    }
}
