//! The resource metrics `metrics_scraper` collects and `metrics_api` serves: what one
//! scrape of a kubelet says ([`Scrape`]), and the latest usage point of every node and
//! pod ([`ResourceMetrics`]), made from the cumulative counters of two scrapes, or of a
//! scrape and a container's start time. It neither scrapes nor serves.

use std::collections::BTreeMap;
use std::sync::RwLock;

/// One reading of a cumulative CPU counter and a memory gauge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

/// A container's sample in one scrape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerSample {
    pub name: String,
    pub start_time_seconds: Option<f64>,
    pub sample: Sample,
}

/// What one scrape of one node says.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Scrape {
    pub node: Option<Sample>,
    /// By (namespace, pod).
    pub pods: BTreeMap<(String, String), Vec<ContainerSample>>,
}

/// A usage point as `metrics.k8s.io` serves it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    /// The end of the window, milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub window_ms: i64,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

/// A pod's point: its containers', over one window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PodPoint {
    pub timestamp_ms: i64,
    pub window_ms: i64,
    /// (container, cpu nanocores, memory bytes), by name.
    pub containers: Vec<(String, u64, u64)>,
}

#[derive(Debug, Default)]
struct NodeEntry {
    /// The last good scrape, for the next rate.
    previous: Option<Scrape>,
    point: Option<Point>,
    pods: BTreeMap<(String, String), PodPoint>,
}

/// The latest points of every node and pod, per API server.
#[derive(Debug, Default)]
pub struct ResourceMetrics {
    nodes: RwLock<BTreeMap<String, NodeEntry>>,
}

impl ResourceMetrics {
    /// The node's latest point.
    pub(crate) fn node(&self, name: &str) -> Option<Point> {
        self.nodes.read().unwrap().get(name).and_then(|e| e.point)
    }

    /// The pod's latest point, whichever node it runs on.
    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Option<PodPoint> {
        let key = (namespace.to_string(), name.to_string());
        self.nodes.read().unwrap().values().find_map(|e| e.pods.get(&key).cloned())
    }

    /// Takes in a good scrape of `node`: its points become the rates since the
    /// previous one.
    pub(crate) fn record(&self, node: &str, scrape: Scrape) {
        let mut nodes = self.nodes.write().unwrap();
        let entry = nodes.entry(node.to_string()).or_default();
        let (point, pods) = points(entry.previous.as_ref(), &scrape);
        // A node without a previous sample keeps no point yet; one whose counter went
        // back (a restart) waits for the next scrape.
        entry.point = point;
        entry.pods = pods;
        entry.previous = Some(scrape);
    }

    /// Forgets the points of `node` (its scrape failed) but keeps its last sample.
    pub(crate) fn failed(&self, node: &str) {
        if let Some(e) = self.nodes.write().unwrap().get_mut(node) {
            e.point = None;
            e.pods.clear();
        }
    }

    /// Forgets nodes that are gone or not Ready.
    pub(crate) fn retain(&self, nodes: &[String]) {
        self.nodes.write().unwrap().retain(|n, _| nodes.contains(n));
    }
}

/// The rate of a counter between two samples (nanocores), `None` if time did not pass
/// or the counter went back.
fn rate(prev: Sample, cur: Sample) -> Option<(u64, i64)> {
    let window = cur.timestamp_ms - prev.timestamp_ms;
    let used = cur.cpu_seconds - prev.cpu_seconds;
    (window > 0 && used >= 0.0).then(|| ((used * 1e9 / (window as f64 / 1e3)).round() as u64, window))
}

/// The node's point and the pods' points from a scrape and the one before it.
fn points(previous: Option<&Scrape>, cur: &Scrape) -> (Option<Point>, BTreeMap<(String, String), PodPoint>) {
    let node = match (previous.and_then(|p| p.node), cur.node) {
        (Some(p), Some(c)) => rate(p, c).map(|(cpu, window)| Point {
            timestamp_ms: c.timestamp_ms,
            window_ms: window,
            cpu_nanocores: cpu,
            memory_bytes: c.memory_bytes,
        }),
        _ => None,
    };
    let mut pods = BTreeMap::new();
    'pods: for (key, containers) in &cur.pods {
        let before = previous.and_then(|p| p.pods.get(key));
        let mut out = Vec::new();
        let (mut timestamp, mut window) = (0, i64::MAX);
        for c in containers {
            let prev = before.and_then(|b| b.iter().find(|p| p.name == c.name));
            // The same instance seen before: the rate since then. A new instance (none
            // before, or one that started since): the rate since it started.
            let since_start = c.start_time_seconds.map(|s| Sample {
                timestamp_ms: (s * 1e3) as i64,
                cpu_seconds: 0.0,
                memory_bytes: 0,
            });
            let base = match (prev, since_start) {
                (Some(p), Some(s)) if s.timestamp_ms > p.sample.timestamp_ms => Some(s),
                (Some(p), Some(s)) if p.start_time_seconds != c.start_time_seconds => Some(s),
                (Some(p), _) => Some(p.sample),
                (None, s) => s,
            };
            let Some((cpu, w)) = base.and_then(|b| rate(b, c.sample)) else { continue 'pods };
            timestamp = timestamp.max(c.sample.timestamp_ms);
            window = window.min(w);
            out.push((c.name.clone(), cpu, c.sample.memory_bytes));
        }
        if out.is_empty() {
            continue;
        }
        out.sort();
        pods.insert(key.clone(), PodPoint { timestamp_ms: timestamp, window_ms: window, containers: out });
    }
    (node, pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(ts_s: i64, node_cpu: f64, app_cpu: f64, start: f64) -> Scrape {
        let sample = |cpu| Sample { timestamp_ms: ts_s * 1000, cpu_seconds: cpu, memory_bytes: 1024 };
        Scrape {
            node: Some(sample(node_cpu)),
            pods: BTreeMap::from([(
                ("default".to_string(), "web".to_string()),
                vec![ContainerSample { name: "app".into(), start_time_seconds: Some(start), sample: sample(app_cpu) }],
            )]),
        }
    }

    #[test]
    fn rates_come_from_two_scrapes_or_the_start_time() {
        let m = ResourceMetrics::default();
        // First scrape: no node rate yet; the container started 10 s before and used 2 s.
        m.record("n1", scrape(1000, 50.0, 2.0, 990.0));
        assert_eq!(m.node("n1"), None);
        let p = m.pod("default", "web").unwrap();
        assert_eq!((p.window_ms, p.containers[0].1), (10_000, 200_000_000));
        // 15 s later: the node used 3 core-seconds (200m), the container 1.5 s (100m).
        m.record("n1", scrape(1015, 53.0, 3.5, 990.0));
        let n = m.node("n1").unwrap();
        assert_eq!((n.window_ms, n.cpu_nanocores, n.memory_bytes), (15_000, 200_000_000, 1024));
        assert_eq!(m.pod("default", "web").unwrap().containers[0].1, 100_000_000);
        // The container restarted (a new start time): its rate is since then.
        m.record("n1", scrape(1030, 54.0, 0.5, 1025.0));
        let p = m.pod("default", "web").unwrap();
        assert_eq!((p.window_ms, p.containers[0].1), (5_000, 100_000_000));
        // A counter that went back without a new start time gives no point.
        m.record("n1", scrape(1045, 53.0, 0.1, 1025.0));
        assert_eq!((m.node("n1"), m.pod("default", "web")), (None, None));
        m.failed("n1");
        m.retain(&[]);
        assert!(m.nodes.read().unwrap().is_empty());
    }
}
