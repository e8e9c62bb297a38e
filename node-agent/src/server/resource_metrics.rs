//! The kubelet's resource metrics endpoint, `GET /metrics/resource`: the CPU and
//! memory figures of the node, its pods and their containers, as Prometheus text with
//! upstream's metric names and a timestamp on every sample, which is what
//! metrics-server (here: skiff-control's scraper behind `metrics.k8s.io`) reads:
//!
//! - `node_cpu_usage_seconds_total`, `node_memory_working_set_bytes`;
//! - `pod_cpu_usage_seconds_total{namespace,pod}`, `pod_memory_working_set_bytes{..}`;
//! - `container_cpu_usage_seconds_total{container,namespace,pod}`,
//!   `container_memory_working_set_bytes{..}`, `container_start_time_seconds{..}`;
//! - `resource_scrape_error`: 1 when the figures could not be read.
//!
//! CPU figures are cumulative core-seconds; a rate needs two scrapes (the scraper's
//! business). Where the figures come from is the [`ResourceStats`] implementation's
//! (the kubelet's, over the CRI and the node's cgroup: `kubelet::stats`); this module
//! only renders them and must not read the runtime or the kernel itself.

use std::fmt::Write as _;
use std::sync::Arc;

use http::{Response, StatusCode, header};

use super::{Body, BoxError, BoxFuture, full, text};

/// One sample: cumulative CPU time and the memory working set, read at `timestamp_ms`
/// (milliseconds since the epoch, as Prometheus timestamps are).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub timestamp_ms: i64,
    /// Cumulative CPU time in core-seconds.
    pub cpu_seconds: f64,
    /// Memory in use minus what the kernel can drop at once (inactive file pages).
    pub memory_working_set_bytes: u64,
}

/// A running container of a pod on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStats {
    pub name: String,
    /// When it started, in seconds since the epoch (a first CPU rate can be taken
    /// from there: the counter was zero then).
    pub start_time_seconds: Option<f64>,
    pub usage: Usage,
}

/// A pod on this node, with its running containers.
#[derive(Debug, Clone, PartialEq)]
pub struct PodStats {
    pub namespace: String,
    pub name: String,
    /// The pod as a whole (its cgroup, sandbox included); `None` when the runtime does
    /// not say, in which case nothing is reported for the pod itself.
    pub usage: Option<Usage>,
    pub containers: Vec<ContainerStats>,
}

/// What the endpoint reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeStats {
    pub node: Option<Usage>,
    pub pods: Vec<PodStats>,
}

/// Where the figures come from, implemented by the kubelet over the CRI.
pub trait ResourceStats: Send + Sync + 'static {
    /// The figures as of now.
    fn stats(&self) -> BoxFuture<'_, Result<NodeStats, BoxError>>;
}

/// Serves `/metrics/resource` from `stats`; without a source (an agent that runs no
/// pods), 404 as for any unknown path.
pub(super) async fn serve(stats: Option<&Arc<dyn ResourceStats>>) -> Response<Body> {
    let Some(stats) = stats else {
        return text(StatusCode::NOT_FOUND, "/metrics/resource not found: this agent runs no pods");
    };
    let body = match stats.stats().await {
        Ok(s) => render(&s, false),
        Err(e) => {
            // metrics-server reads the error gauge; the log says why.
            tracing::warn!(error = %e, "reading resource usage for /metrics/resource failed");
            render(&NodeStats::default(), true)
        }
    };
    Response::builder().header(header::CONTENT_TYPE, "text/plain; version=0.0.4").body(full(body)).unwrap()
}

/// A label value with `\`, `"` and newlines escaped, as the text format wants.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes the `# HELP` and `# TYPE` lines of one metric.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}");
}

/// The Prometheus text of `s`, metrics in upstream's (alphabetical) order.
pub fn render(s: &NodeStats, scrape_error: bool) -> String {
    let mut out = String::new();
    let containers = || {
        s.pods.iter().flat_map(|p| {
            p.containers.iter().map(move |c| {
                let labels = format!(
                    "container=\"{}\",namespace=\"{}\",pod=\"{}\"",
                    escape(&c.name),
                    escape(&p.namespace),
                    escape(&p.name)
                );
                (labels, c)
            })
        })
    };
    let pods = || {
        s.pods.iter().filter_map(|p| {
            p.usage.map(|u| (format!("namespace=\"{}\",pod=\"{}\"", escape(&p.namespace), escape(&p.name)), u))
        })
    };
    header(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
    );
    for (l, c) in containers() {
        let _ =
            writeln!(out, "container_cpu_usage_seconds_total{{{l}}} {} {}", c.usage.cpu_seconds, c.usage.timestamp_ms);
    }
    header(&mut out, "container_memory_working_set_bytes", "gauge", "Current working set of the container in bytes");
    for (l, c) in containers() {
        let u = c.usage;
        let _ = writeln!(
            out,
            "container_memory_working_set_bytes{{{l}}} {} {}",
            u.memory_working_set_bytes, u.timestamp_ms
        );
    }
    header(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
    );
    for (l, c) in containers() {
        if let Some(start) = c.start_time_seconds {
            let _ = writeln!(out, "container_start_time_seconds{{{l}}} {start} {}", c.usage.timestamp_ms);
        }
    }
    if let Some(n) = s.node {
        header(
            &mut out,
            "node_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the node in core-seconds",
        );
        let _ = writeln!(out, "node_cpu_usage_seconds_total {} {}", n.cpu_seconds, n.timestamp_ms);
        header(&mut out, "node_memory_working_set_bytes", "gauge", "Current working set of the node in bytes");
        let _ = writeln!(out, "node_memory_working_set_bytes {} {}", n.memory_working_set_bytes, n.timestamp_ms);
    }
    header(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
    );
    for (l, u) in pods() {
        let _ = writeln!(out, "pod_cpu_usage_seconds_total{{{l}}} {} {}", u.cpu_seconds, u.timestamp_ms);
    }
    header(&mut out, "pod_memory_working_set_bytes", "gauge", "Current working set of the pod in bytes");
    for (l, u) in pods() {
        let _ = writeln!(out, "pod_memory_working_set_bytes{{{l}}} {} {}", u.memory_working_set_bytes, u.timestamp_ms);
    }
    header(
        &mut out,
        "resource_scrape_error",
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
    );
    let _ = writeln!(out, "resource_scrape_error {}", u8::from(scrape_error));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed source, as a test's kubelet.
    struct Fake(NodeStats);

    impl ResourceStats for Fake {
        fn stats(&self) -> BoxFuture<'_, Result<NodeStats, BoxError>> {
            Box::pin(async move { Ok(self.0.clone()) })
        }
    }

    struct Failing;

    impl ResourceStats for Failing {
        fn stats(&self) -> BoxFuture<'_, Result<NodeStats, BoxError>> {
            Box::pin(async { Err("the runtime is away".into()) })
        }
    }

    fn usage(cpu: f64, mem: u64) -> Usage {
        Usage { timestamp_ms: 1_700_000_000_123, cpu_seconds: cpu, memory_working_set_bytes: mem }
    }

    fn sample() -> NodeStats {
        NodeStats {
            node: Some(usage(12.5, 1 << 30)),
            pods: vec![PodStats {
                namespace: "default".into(),
                name: "we\"b".into(),
                usage: Some(usage(2.25, 4096)),
                containers: vec![ContainerStats {
                    name: "app".into(),
                    start_time_seconds: Some(1_699_999_000.5),
                    usage: usage(2.0, 2048),
                }],
            }],
        }
    }

    async fn body(stats: Option<&Arc<dyn ResourceStats>>) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let resp = serve(stats).await;
        let code = resp.status();
        (code, String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
    }

    #[tokio::test]
    async fn renders_upstream_names_with_timestamps() {
        let src: Arc<dyn ResourceStats> = Arc::new(Fake(sample()));
        let (code, text) = body(Some(&src)).await;
        assert_eq!(code, StatusCode::OK);
        for line in [
            r#"container_cpu_usage_seconds_total{container="app",namespace="default",pod="we\"b"} 2 1700000000123"#,
            r#"container_memory_working_set_bytes{container="app",namespace="default",pod="we\"b"} 2048 1700000000123"#,
            r#"container_start_time_seconds{container="app",namespace="default",pod="we\"b"} 1699999000.5 1700000000123"#,
            "node_cpu_usage_seconds_total 12.5 1700000000123",
            "node_memory_working_set_bytes 1073741824 1700000000123",
            r#"pod_cpu_usage_seconds_total{namespace="default",pod="we\"b"} 2.25 1700000000123"#,
            r#"pod_memory_working_set_bytes{namespace="default",pod="we\"b"} 4096 1700000000123"#,
            "# TYPE node_cpu_usage_seconds_total counter",
            "# TYPE pod_memory_working_set_bytes gauge",
            "resource_scrape_error 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    }

    #[tokio::test]
    async fn a_failed_read_sets_the_error_gauge_and_no_source_is_404() {
        let src: Arc<dyn ResourceStats> = Arc::new(Failing);
        let (code, text) = body(Some(&src)).await;
        assert_eq!(code, StatusCode::OK);
        assert!(text.contains("resource_scrape_error 1"), "{text}");
        assert!(!text.contains("node_cpu_usage_seconds_total "), "{text}");
        assert_eq!(body(None).await.0, StatusCode::NOT_FOUND);
    }
}
