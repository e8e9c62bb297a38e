//! `skiff-api-bench`: the client side of `cargo xtask bench api` (P7). Against a running
//! skiff-control (by kubeconfig) it measures, over HTTPS with the same client every Skiff
//! component uses:
//! - creates per second: `--pods` Pods created by `--clients` concurrent clients;
//! - LIST latency: a full (unpaginated) LIST of those pods, median of several, and the
//!   paged LIST kubectl does (500 per page);
//! - watch delivery latency: the time from a create being sent to its ADDED event
//!   arriving on an open watch, p50/p99, both during the pod creates (a burst) and at
//!   rest (ConfigMaps at a steady rate);
//! - custom resources: `--custom-objects` objects of a CRD created by the same clients,
//!   then a full LIST of them (median of several);
//! - server-side apply: `--applies` Deployments applied (created by apply), then each
//!   applied again with a changed image (a merge against the live object and its
//!   managedFields), by the same clients; applies per second over both rounds.
//!
//! Prints `P7 <metric>@<label>: value unit` lines. It never asserts on timings: the
//! goals are judged by a person reading the figures.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use skiff_api::{Client, ListParams, WatchEvent};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Suffix of the metric names (the store under test).
    #[arg(long, default_value = "embedded")]
    label: String,
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Pods to create (and then LIST).
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Only create the pods (P8 measures memory afterwards).
    #[arg(long)]
    create_only: bool,
    /// Watch events to sample.
    #[arg(long, default_value_t = 500)]
    watch_events: usize,
    /// Rate of the watched writes, per second.
    #[arg(long, default_value_t = 200)]
    watch_rate: u64,
    /// Custom objects to create (and then LIST); 0 skips them.
    #[arg(long, default_value_t = 10_000)]
    custom_objects: usize,
    /// Deployments to apply server-side, twice each; 0 skips them.
    #[arg(long, default_value_t = 2_000)]
    applies: usize,
}

/// The CRD whose objects the bench creates: a small operator-style schema, so that
/// creates pay for pruning, defaulting and validation.
fn bench_crd() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.bench.skiff.io"},
        "spec": {"group": "bench.skiff.io", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "string", "enum": ["small", "large"]},
                        "replicas": {"type": "integer", "minimum": 0, "default": 1},
                        "owner": {"type": "string", "maxLength": 63},
                        "settings": {"type": "object", "additionalProperties": {"type": "string"}}}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}
    })
}

/// Five unpaginated LISTs of `path`, as an informer's first list does: their times in
/// ms, sorted, and how many items the last one had.
async fn full_lists(client: &Client, path: &str) -> anyhow::Result<(Vec<f64>, usize)> {
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let resp = client.send_raw(http::Method::GET, path, None, Bytes::new()).await?;
        let body = resp.into_body().collect().await.map_err(|e| anyhow::anyhow!("{e}"))?.to_bytes();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        count = v["items"].as_array().map_or(0, Vec::len);
    }
    times.sort_by(f64::total_cmp);
    Ok((times, count))
}

/// Sends a JSON request; fails unless the answer is a success.
async fn send_json(client: &Client, method: http::Method, path: &str, body: &serde_json::Value) -> anyhow::Result<()> {
    let resp =
        client.send_raw(method.clone(), path, Some("application/json"), Bytes::from(serde_json::to_vec(body)?)).await?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.into_body().collect().await.map_err(|e| anyhow::anyhow!("{e}"))?.to_bytes();
        bail!("{method} {path}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// Creates the bench CRD, waits until its objects are served, creates
/// `a.custom_objects` of them with `a.clients` clients and LISTs them all.
async fn custom_objects(client: &Client, a: &Args) -> anyhow::Result<()> {
    send_json(client, http::Method::POST, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", &bench_crd())
        .await
        .context("creating the bench CRD")?;
    let path = format!("/apis/bench.skiff.io/v1/namespaces/{}/widgets", a.namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = client.send_raw(http::Method::GET, &path, None, Bytes::new()).await?;
        if resp.status().is_success() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the bench CRD's objects were not served within 30 s ({})", resp.status());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.clients {
        let (client, next, path, total) = (client.clone(), next.clone(), path.clone(), a.custom_objects);
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let obj = serde_json::json!({"apiVersion": "bench.skiff.io/v1", "kind": "Widget",
                    "metadata": {"name": format!("w-{i:06}"), "labels": {"app": "bench"}},
                    "spec": {"size": if i % 2 == 0 { "small" } else { "large" }, "owner": "bench",
                             "settings": {"color": "blue", "shape": "round"}}});
                send_json(&client, http::Method::POST, &path, &obj).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("P7 custom-object-creates-per-s@{}: {:.0} creates/s", a.label, a.custom_objects as f64 / secs);
    let (full, count) = full_lists(client, &path).await?;
    if count != a.custom_objects {
        bail!("LIST returned {count} custom objects, expected {}", a.custom_objects);
    }
    println!("P7 list-{}-custom-objects@{}: {:.0} ms", a.custom_objects, a.label, percentile(&full, 0.5));
    eprintln!("full LIST of {count} custom objects, 5 runs: {full:.0?} ms");
    Ok(())
}

/// Server-side applies of `a.applies` Deployments by `a.clients` clients: each is
/// created by its first apply and changed by its second.
async fn server_side_applies(client: &Client, a: &Args) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.clients {
        let (client, next, ns, total) = (client.clone(), next.clone(), a.namespace.clone(), a.applies);
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= 2 * total {
                    return Ok::<_, anyhow::Error>(());
                }
                let (n, round) = (i % total, i / total);
                let name = format!("ssa-{n:06}");
                let obj = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "labels": {"app": name}},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                            {"name": "web", "image": format!("skiff/echo:{round}"),
                             "ports": [{"containerPort": 8080}],
                             "env": [{"name": "ROUND", "value": round.to_string()}]}]}}}});
                let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}?fieldManager=bench");
                let body = Bytes::from(serde_json::to_vec(&obj)?);
                let resp = client
                    .send_raw(http::Method::PATCH, &path, Some("application/apply-patch+yaml"), body)
                    .await
                    .with_context(|| format!("applying deployment {name}"))?;
                resp.into_body().collect().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("P7 server-side-apply-per-s@{}: {:.0} applies/s", a.label, (2 * a.applies) as f64 / secs);
    eprintln!("{} server-side applies (half creates, half changes) in {secs:.1} s", 2 * a.applies);
    Ok(())
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "shard": (name.len() % 7).to_string()}},
        "spec": {"containers": [{"name": "c", "image": "skiff/echo:bench",
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    }))
    .expect("static pod is valid")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let client = Client::from_kubeconfig(&a.kubeconfig, "skiff-api-bench")?;
    let ns = a.namespace.clone();
    let nsobj: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
    match client.create(None, &nsobj).await {
        Ok(_) => {}
        Err(e) if e.is_already_exists() => {}
        Err(e) => return Err(e).context("creating the bench namespace"),
    }
    // Pods need their ServiceAccount, and the bench's server runs no controllers.
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}}))?;
    match client.create(Some(&ns), &sa).await {
        Ok(_) => {}
        Err(e) if e.is_already_exists() => {}
        Err(e) => return Err(e).context("creating the bench namespace's ServiceAccount"),
    }

    // Creates with concurrent clients, watched: the time from each create being sent to
    // its ADDED event is the watch latency under a burst of writes.
    let (_, rv) = client.list_all::<Pod>(Some(&ns), &ListParams::default()).await?;
    let mut pods_watch = client.watch::<Pod>(Some(&ns), &ListParams::default(), &rv, 600).await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.clients {
        let (client, next, ns, sent) = (client.clone(), next.clone(), ns.clone(), sent.clone());
        let total = a.pods;
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let name = format!("p-{i:06}");
                sent.lock().unwrap().insert(name.clone(), Instant::now());
                client.create(Some(&ns), &pod(&name)).await.with_context(|| format!("creating pod {name}"))?;
            }
        });
    }
    let watcher = {
        let (sent, total) = (sent.clone(), a.pods);
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total);
            while lat.len() < total {
                let ev = match tokio::time::timeout(Duration::from_secs(30), pods_watch.next()).await {
                    Ok(Some(ev)) => ev?,
                    Ok(None) => bail!("the pods watch ended after {} of {total} creates", lat.len()),
                    Err(_) => bail!("no pod event for 30 s ({} of {total} seen)", lat.len()),
                };
                if let WatchEvent::Added(p) = ev {
                    let name = p.metadata.name.unwrap_or_default();
                    if let Some(t) = sent.lock().unwrap().get(&name) {
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            Ok(lat)
        })
    };
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("created {} pods with {} clients in {secs:.1} s ({:.0}/s)", a.pods, a.clients, a.pods as f64 / secs);
    let mut burst_lat = watcher.await??;
    if a.create_only {
        return Ok(());
    }
    println!("P7 creates-per-s@{}: {:.0} creates/s", a.label, a.pods as f64 / secs);
    burst_lat.sort_by(f64::total_cmp);
    println!("P7 watch-latency-under-creates-p50@{}: {:.1} ms", a.label, percentile(&burst_lat, 0.5));
    println!("P7 watch-latency-under-creates-p99@{}: {:.1} ms", a.label, percentile(&burst_lat, 0.99));

    // LIST: the whole collection in one response, as an informer's first list does.
    let (full, count) = full_lists(&client, &format!("/api/v1/namespaces/{ns}/pods")).await?;
    // The namespace is the bench's own and new: anything but the pods it made is wrong.
    if count != a.pods {
        bail!("LIST returned {count} pods, expected {}", a.pods);
    }
    println!("P7 list-{}-pods@{}: {:.0} ms", a.pods, a.label, percentile(&full, 0.5));
    eprintln!("full LIST of {count} pods, 5 runs: {full:.0?} ms");
    let t = Instant::now();
    let (items, _) = client.list_all::<Pod>(Some(&ns), &ListParams::default().limit(500)).await?;
    if items.len() != a.pods {
        bail!("the paged LIST returned {} pods, expected {}", items.len(), a.pods);
    }
    println!("P7 list-{}-pods-paged-500-decoded@{}: {:.0} ms", a.pods, a.label, t.elapsed().as_secs_f64() * 1e3);

    // Watch delivery latency.
    let (_, rv) = client.list_all::<ConfigMap>(Some(&ns), &ListParams::default()).await?;
    let mut stream = client.watch::<ConfigMap>(Some(&ns), &ListParams::default(), &rv, 120).await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let writer = {
        let (client, ns, sent) = (client.clone(), ns.clone(), sent.clone());
        let (n, rate) = (a.watch_events, a.watch_rate.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            for i in 0..n {
                tick.tick().await;
                let name = format!("w-{i:05}");
                let cm: ConfigMap = serde_json::from_value(
                    serde_json::json!({"metadata": {"name": name}, "data": {"i": i.to_string()}}),
                )?;
                sent.lock().unwrap().insert(name.clone(), Instant::now());
                client.create(Some(&ns), &cm).await.with_context(|| format!("creating configmap {name}"))?;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let mut lat = Vec::with_capacity(a.watch_events);
    let deadline = Instant::now() + Duration::from_secs(60 + a.watch_events as u64 / a.watch_rate.max(1));
    while lat.len() < a.watch_events && Instant::now() < deadline {
        let ev = match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(ev)) => ev?,
            Ok(None) => bail!("the watch ended early"),
            Err(_) => bail!("no watch event for 10 s ({} of {} seen)", lat.len(), a.watch_events),
        };
        if let WatchEvent::Added(cm) = ev {
            let name = cm.metadata.name.unwrap_or_default();
            if let Some(t) = sent.lock().unwrap().get(&name) {
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    writer.await??;
    lat.sort_by(f64::total_cmp);
    println!("P7 watch-latency-p50@{}: {:.1} ms", a.label, percentile(&lat, 0.5));
    println!("P7 watch-latency-p99@{}: {:.1} ms", a.label, percentile(&lat, 0.99));
    eprintln!(
        "watch latency over {} events at {}/s; max {:.1} ms",
        lat.len(),
        a.watch_rate,
        lat.last().copied().unwrap_or(f64::NAN)
    );
    if a.custom_objects > 0 {
        custom_objects(&client, &a).await?;
    }
    if a.applies > 0 {
        server_side_applies(&client, &a).await?;
    }
    Ok(())
}
