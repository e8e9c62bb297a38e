//! The resource metrics pipeline behind `metrics.k8s.io` (what metrics-server does in
//! upstream clusters): every `resolution` (15 s by default) it scrapes each Ready
//! node's kubelet at `/metrics/resource` over the API server's kubelet-client TLS,
//! parses the Prometheus text, and turns the cumulative CPU counters of two scrapes
//! into rates. The latest point of every node, pod and container is kept in memory
//! ([`ResourceMetrics`], `resource_metrics`) for `metrics_api` to serve; nothing goes to
//! the store.
//!
//! A container seen for the first time gets a rate from its start time (its counter
//! was zero then), so a new pod shows up after one scrape; a node needs two. A pod is
//! reported only when every container of it has a rate, as metrics-server does, so a
//! half-measured pod never looks idle. A node whose scrape fails loses its points
//! until the next good one.
//!
//! It must not decide anything from the figures (the HPA controller does, through
//! the API).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Empty, Limited};
use serde_json::Value;

use super::api_server::ApiServer;
use super::object::to_obj;
#[cfg(doc)]
use super::resource_metrics::ResourceMetrics;
use super::resource_metrics::{ContainerSample, Sample, Scrape};
use super::resources;

/// How long one node's scrape may take (metrics-server's default timeout).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// A kubelet's answer above this is refused (a node of 110 pods writes ~100 KiB).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Why a kubelet's text could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("line {line}: {why}")]
    Line { line: usize, why: &'static str },
}

/// One sample line of the text format.
struct Line<'a> {
    name: &'a str,
    labels: BTreeMap<String, String>,
    value: f64,
    /// Milliseconds since the epoch, when the line has one.
    timestamp: Option<i64>,
}

fn parse_line(l: &str) -> Result<Line<'_>, &'static str> {
    let name_end = l.find(['{', ' ']).ok_or("no value")?;
    let name = &l[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &l[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let end = loop {
            // A key, after any separating comma.
            let mut key = String::new();
            let mut c = chars.next();
            while let Some((_, ch)) = c {
                if ch == '=' || ch == '}' {
                    break;
                }
                if ch != ',' && !ch.is_whitespace() {
                    key.push(ch);
                }
                c = chars.next();
            }
            match c {
                Some((i, '}')) => break i,
                Some((_, '=')) => {}
                _ => return Err("unterminated labels"),
            }
            if !matches!(chars.next(), Some((_, '"'))) {
                return Err("a label value is not quoted");
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, ch)) => value.push(ch),
                        None => return Err("unterminated label value"),
                    },
                    Some((_, '"')) => break,
                    Some((_, ch)) => value.push(ch),
                    None => return Err("unterminated label value"),
                }
            }
            labels.insert(key, value);
        };
        rest = &r[end + 1..];
    }
    let mut fields = rest.split_whitespace();
    let value: f64 = fields.next().ok_or("no value")?.parse().map_err(|_| "the value is not a number")?;
    let ts = match fields.next() {
        Some(t) => Some(t.parse().map_err(|_| "the timestamp is not a number")?),
        None => None,
    };
    Ok(Line { name, labels, value, timestamp: ts })
}

/// Reads a kubelet's `/metrics/resource` text. Samples without a timestamp are taken
/// as read at `now_ms`.
pub(crate) fn parse(text: &str, now_ms: i64) -> Result<Scrape, ParseError> {
    #[derive(Default)]
    struct Partial {
        cpu: Option<(f64, i64)>,
        memory: Option<u64>,
        start: Option<f64>,
    }
    let mut node = Partial::default();
    let mut containers: BTreeMap<(String, String, String), Partial> = BTreeMap::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Line { name, labels, value, timestamp } =
            parse_line(l).map_err(|why| ParseError::Line { line: i + 1, why })?;
        let ts = timestamp.unwrap_or(now_ms);
        let container = || {
            let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
            (get("namespace"), get("pod"), get("container"))
        };
        match name {
            "node_cpu_usage_seconds_total" => node.cpu = Some((value, ts)),
            "node_memory_working_set_bytes" => node.memory = Some(value as u64),
            "container_cpu_usage_seconds_total" => containers.entry(container()).or_default().cpu = Some((value, ts)),
            "container_memory_working_set_bytes" => {
                containers.entry(container()).or_default().memory = Some(value as u64)
            }
            "container_start_time_seconds" => containers.entry(container()).or_default().start = Some(value),
            _ => {}
        }
    }
    let sample = |p: &Partial| {
        p.cpu.map(|(cpu, ts)| Sample { timestamp_ms: ts, cpu_seconds: cpu, memory_bytes: p.memory.unwrap_or(0) })
    };
    let mut scrape = Scrape { node: sample(&node), pods: BTreeMap::new() };
    for ((ns, pod, name), p) in &containers {
        // A container without its CPU counter cannot be measured; its pod is left out.
        if let Some(s) = sample(p) {
            scrape.pods.entry((ns.clone(), pod.clone())).or_default().push(ContainerSample {
                name: name.clone(),
                start_time_seconds: p.start,
                sample: s,
            });
        }
    }
    Ok(scrape)
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Whether a Node's Ready condition is True.
fn is_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Scrapes every Ready node every `resolution` until the process ends.
pub async fn run(api: Arc<ApiServer>, resolution: Duration) {
    let mut tick = tokio::time::interval(resolution);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = scrape_all(&api).await {
            tracing::warn!(error = %e, "listing nodes for the resource metrics scrape failed");
        }
    }
}

async fn scrape_all(api: &Arc<ApiServer>) -> Result<(), super::status::ApiError> {
    let Some(def) = resources::find("", "v1", "nodes") else { return Ok(()) };
    let Some(tls) = api.kubelet_tls.get().cloned() else { return Ok(()) };
    let nodes: Vec<Value> =
        api.store.list(&def.prefix(), None, 0).await?.kvs.iter().filter_map(|kv| to_obj(kv).ok()).collect();
    let ready: Vec<(String, Value)> = nodes
        .into_iter()
        .filter(is_ready)
        .filter_map(|n| Some((n.pointer("/metadata/name")?.as_str()?.to_string(), n)))
        .collect();
    api.resource_metrics.retain(&ready.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
    let mut scrapes = tokio::task::JoinSet::new();
    for (name, node) in ready {
        let tls = tls.clone();
        scrapes.spawn(async move {
            let result = scrape_node(tls, &node, &name).await;
            (name, result)
        });
    }
    while let Some(done) = scrapes.join_next().await {
        let Ok((name, result)) = done else { continue };
        match result {
            Ok(s) => api.resource_metrics.record(&name, s),
            Err(e) => {
                tracing::info!(node = %name, error = %e, "scraping the kubelet's /metrics/resource failed");
                api.resource_metrics.failed(&name);
            }
        }
    }
    Ok(())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn scrape_node(tls: Arc<rustls::ClientConfig>, node: &Value, name: &str) -> Result<Scrape, BoxError> {
    let (host, port) = super::node_proxy::kubelet_address(node)
        .ok_or_else(|| format!("node {name} has no address for its kubelet"))?;
    let req = Request::builder()
        .method(Method::GET)
        .uri("/metrics/resource")
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::ACCEPT, "text/plain")
        .body(Empty::<Bytes>::new().map_err(|never| -> BoxError { match never {} }).boxed_unsync())?;
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let resp = super::node_proxy::send(tls, &host, port, req).await?;
        if !resp.status().is_success() {
            return Err(format!("the kubelet at {host}:{port} answered {}", resp.status()).into());
        }
        Ok::<_, BoxError>(Limited::new(resp.into_body(), MAX_BODY).collect().await?.to_bytes())
    })
    .await
    .map_err(|_| format!("no answer from the kubelet at {host}:{port} in {SCRAPE_TIMEOUT:?}"))??;
    Ok(parse(std::str::from_utf8(&body)?, now_ms())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="app",namespace="default",pod="web-1"} 10 1700000010000
container_cpu_usage_seconds_total{container="si\"de",namespace="default",pod="web-1"} 1.5 1700000010000
container_memory_working_set_bytes{container="app",namespace="default",pod="web-1"} 2.097152e+06 1700000010000
container_start_time_seconds{container="app",namespace="default",pod="web-1"} 1.7e+09 1700000010000
node_cpu_usage_seconds_total 100.5 1700000010000
node_memory_working_set_bytes 1048576 1700000010000
resource_scrape_error 0
"#;

    #[test]
    fn parses_kubelet_text() {
        let s = parse(TEXT, 0).unwrap();
        assert_eq!(
            s.node,
            Some(Sample { timestamp_ms: 1_700_000_010_000, cpu_seconds: 100.5, memory_bytes: 1_048_576 })
        );
        let web = &s.pods[&("default".to_string(), "web-1".to_string())];
        assert_eq!(web.len(), 2);
        assert_eq!(web[0].name, "app");
        assert_eq!(web[0].start_time_seconds, Some(1.7e9));
        assert_eq!(web[0].sample.memory_bytes, 2_097_152);
        assert_eq!(web[1].name, "si\"de");
        assert!(matches!(parse("node_cpu_usage_seconds_total{x=\"1", 0), Err(ParseError::Line { line: 1, .. })));
        assert!(parse("a_metric nope", 0).is_err());
        let untimed = parse("node_cpu_usage_seconds_total 3\n", 42).unwrap();
        assert_eq!(untimed.node.unwrap().timestamp_ms, 42);
    }
}
