//! skiff-control's own metrics, served as Prometheus text on `GET /metrics` (RBAC:
//! the non-resource path `/metrics`, as upstream). The names and labels are upstream's
//! where upstream has the metric, so dashboards written for kube-apiserver read them:
//! - `apiserver_request_total` and `apiserver_request_duration_seconds` by verb, group,
//!   version, resource, subresource, scope (and code for the total); the duration leaves
//!   out WATCH and CONNECT, whose length is the client's choice;
//! - `apiserver_longrunning_requests`: watches open now, by resource;
//! - `etcd_request_duration_seconds` by operation and type (the resource under
//!   `/registry/`), for either store backend (the name is upstream's for its storage);
//! - `process_resident_memory_bytes`, `process_cpu_seconds_total`,
//!   `process_start_time_seconds`.
//!
//! One process-wide registry, as a Prometheus client's default registry: the server,
//! the watch streams and the store wrapper record into it without being handed it. It
//! must not hold request logic; callers say what happened.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use skiff_api::histogram::Histogram;

/// Upstream's buckets for request and storage latencies, in seconds.
const BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0,
];

/// What a request addressed, as the request metrics label it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestLabels {
    /// Upstream's spelling: GET, LIST, WATCH, POST, PUT, PATCH, DELETE, DELETECOLLECTION, CONNECT.
    pub verb: &'static str,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    /// `cluster`, `namespace` or `resource` (one named object).
    pub scope: &'static str,
}

impl RequestLabels {
    fn render(&self) -> String {
        format!(
            "verb=\"{}\",group=\"{}\",version=\"{}\",resource=\"{}\",subresource=\"{}\",scope=\"{}\",component=\"apiserver\"",
            self.verb, self.group, self.version, self.resource, self.subresource, self.scope
        )
    }
}

#[derive(Default)]
struct Registry {
    requests: BTreeMap<(RequestLabels, u16), u64>,
    durations: BTreeMap<RequestLabels, Histogram>,
    watches: BTreeMap<RequestLabels, i64>,
    /// (operation, type) → latency.
    store: BTreeMap<(&'static str, String), Histogram>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

/// Counts a finished request with its status code, and its latency unless it is a
/// long-running one.
pub fn request_done(labels: &RequestLabels, code: u16, took: Duration) {
    let mut r = REGISTRY.lock().unwrap();
    *r.requests.entry((labels.clone(), code)).or_default() += 1;
    if !matches!(labels.verb, "WATCH" | "CONNECT") {
        r.durations.entry(labels.clone()).or_insert_with(|| Histogram::new(&BUCKETS)).observe(took.as_secs_f64());
    }
}

/// A watch open now; it is counted until the guard is dropped.
#[derive(Debug)]
pub struct OpenWatch(RequestLabels);

pub fn watch_opened(labels: RequestLabels) -> OpenWatch {
    *REGISTRY.lock().unwrap().watches.entry(labels.clone()).or_default() += 1;
    OpenWatch(labels)
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        if let Some(n) = REGISTRY.lock().unwrap().watches.get_mut(&self.0) {
            *n -= 1;
        }
    }
}

/// Records one store call on `key` (or prefix) that took `took`.
pub fn store_call(operation: &'static str, key: &str, took: Duration) {
    let kind = key.trim_start_matches('/').split('/').nth(1).unwrap_or("").to_string();
    REGISTRY
        .lock()
        .unwrap()
        .store
        .entry((operation, kind))
        .or_insert_with(|| Histogram::new(&BUCKETS))
        .observe(took.as_secs_f64());
}

/// Everything, in the Prometheus text format (version 0.0.4).
pub fn render() -> String {
    let r = REGISTRY.lock().unwrap();
    let mut out = String::new();
    out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, version, resource, subresource, scope and HTTP response code.\n");
    out.push_str("# TYPE apiserver_request_total counter\n");
    for ((labels, code), n) in &r.requests {
        let _ = writeln!(out, "apiserver_request_total{{{},code=\"{code}\"}} {n}", labels.render());
    }
    out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group, version, resource, subresource and scope.\n");
    out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
    for (labels, h) in &r.durations {
        h.render(&mut out, "apiserver_request_duration_seconds", &labels.render());
    }
    out.push_str("# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests (watches) broken out by verb, group, version, resource and scope.\n");
    out.push_str("# TYPE apiserver_longrunning_requests gauge\n");
    for (labels, n) in &r.watches {
        let _ = writeln!(out, "apiserver_longrunning_requests{{{}}} {n}", labels.render());
    }
    out.push_str(
        "# HELP etcd_request_duration_seconds Store request latency in seconds for each operation and object type.\n",
    );
    out.push_str("# TYPE etcd_request_duration_seconds histogram\n");
    for ((operation, kind), h) in &r.store {
        h.render(&mut out, "etcd_request_duration_seconds", &format!("operation=\"{operation}\",type=\"{kind}\""));
    }
    drop(r);
    render_process(&mut out);
    out
}

/// The process metrics, from /proc/self.
fn render_process(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 and pages are 4 KiB on the Linux machines Skiff runs on.
    let cpu = (field(14) + field(15)) / 100.0;
    let rss = field(24) * 4096.0;
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or(0.0);
    let start = boot + field(22) / 100.0;
    for (name, kind, help, value) in [
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss),
        ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", start),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(verb: &'static str) -> RequestLabels {
        RequestLabels { verb, version: "v1".into(), resource: "pods".into(), scope: "namespace", ..Default::default() }
    }

    #[test]
    fn requests_watches_and_store_calls_show_in_the_text() {
        request_done(&pods("LIST"), 200, Duration::from_millis(30));
        request_done(&pods("WATCH"), 200, Duration::from_secs(300));
        let watch = watch_opened(pods("WATCH"));
        store_call("list", "/registry/pods/default/", Duration::from_millis(2));
        let text = render();
        let list = pods("LIST").render();
        assert!(text.contains(&format!("apiserver_request_total{{{list},code=\"200\"}}")), "{text}");
        assert!(text.contains(&format!("apiserver_request_duration_seconds_bucket{{{list},le=\"0.05\"}}")), "{text}");
        // A watch's length is not a latency.
        let watch_labels = pods("WATCH").render();
        assert!(!text.contains(&format!("apiserver_request_duration_seconds_count{{{watch_labels}}}")), "{text}");
        assert!(text.contains(&format!("apiserver_longrunning_requests{{{watch_labels}}} 1")), "{text}");
        assert!(text.contains("etcd_request_duration_seconds_count{operation=\"list\",type=\"pods\"}"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        drop(watch);
        assert!(render().contains(&format!("apiserver_longrunning_requests{{{watch_labels}}} 0")));
    }

    #[test]
    fn a_histogram_counts_each_observation_in_every_bucket_at_or_above_it() {
        let mut h = Histogram::new(&BUCKETS);
        h.observe(0.03);
        h.observe(2.5);
        let (counts, count) = h.counts();
        assert_eq!(counts[0], 0); // 0.005
        assert_eq!(counts[2], 1); // 0.05
        assert_eq!(counts[BUCKETS.len() - 1], 2); // 60
        assert_eq!(count, 2);
    }
}
