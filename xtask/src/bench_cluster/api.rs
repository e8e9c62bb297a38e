//! The bench's side of the API: many Services made fast, then single changes timed from
//! the write to the change being visible in every node's maps.
//!
//! The Services have no selector, so the endpointslice controller leaves them alone:
//! the bench writes each one's EndpointSlice itself (label
//! `kubernetes.io/service-name`), as any other writer of slices may, and stamps it with
//! `endpoints.kubernetes.io/last-change-trigger-time` as the controller would. The
//! addresses are made up (nothing is sent to them): VIPs from 10.100.0.0 (the
//! populated Services) and 10.101.0.0 (those a change creates), endpoints from
//! 172.20.0.0 and above.
//!
//! Everything here runs on a thread inside the control plane's network namespace (the
//! API server is reachable only there); the maps are files on bpffs, readable from any
//! namespace.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_api::Client;
use tokio::runtime::Runtime;

use super::maps::NodeMaps;
use crate::util::progress;

pub const NAMESPACE: &str = "bench";
/// The Services' port (TCP) and their endpoints' port.
pub const PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// Where the VIPs and endpoint addresses of the bench start.
const POPULATED_VIPS: u32 = u32::from_be_bytes([10, 100, 0, 0]);
const NEW_VIPS: u32 = u32::from_be_bytes([10, 101, 0, 0]);
const POPULATED_ENDPOINTS: u32 = u32::from_be_bytes([172, 20, 0, 0]);
const CHANGED_ENDPOINTS: u32 = u32::from_be_bytes([172, 24, 0, 0]);
const NEW_ENDPOINTS: u32 = u32::from_be_bytes([172, 28, 0, 0]);
/// The most Services the address plan above holds without overlaps.
pub const MAX_SERVICES: usize = 60_000;
/// The most changes in one run (and runs) the address plan holds.
pub const MAX_CHANGES: usize = 10_000;
pub const MAX_RUNS: usize = 20;

/// How long one change may take to show on every node before it counts as lost.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// More lost changes than this end the run: something is broken, not slow.
const MAX_LOST: usize = 10;
/// The pause before each change: longer than the agents' least time between two syncs
/// (200 ms), so that each change is measured on its own rather than behind the
/// previous one's rate limit (which is what two changes closer together get).
const GAP: Duration = Duration::from_millis(300);

/// One Service of the bench and what its slice holds.
#[derive(Clone)]
pub struct BenchService {
    pub name: String,
    pub vip: Ipv4Addr,
    pub endpoints: Vec<Ipv4Addr>,
    /// The slice as the API last returned it (its resourceVersion makes a PUT
    /// conditional).
    slice: EndpointSlice,
}

fn addr(base: u32, offset: usize) -> Ipv4Addr {
    Ipv4Addr::from(base + u32::try_from(offset).expect("the address plan is bounded"))
}

fn service(name: &str, vip: Ipv4Addr) -> Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"clusterIP": vip.to_string(),
                 "ports": [{"name": "http", "port": PORT, "targetPort": TARGET_PORT, "protocol": "TCP"}]}
    }))?)
}

/// The slice of Service `name`, stamped with the time of this change.
fn slice(name: &str, endpoints: &[Ipv4Addr]) -> Result<EndpointSlice> {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|a| serde_json::json!({"addresses": [a.to_string()], "conditions": {"ready": true}}))
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{name}-1"), "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": name},
                     "annotations": {TRIGGER_TIME: jiff::Timestamp::now().to_string()}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints
    }))?)
}

/// Creates the bench's namespace (once).
pub async fn create_namespace(client: &Client) -> Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}}))?;
    match client.create(None, &ns).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_already_exists() => Ok(()),
        Err(e) => Err(e).context("creating the bench namespace"),
    }
}

/// Creates `count` Services (each after its slice of one or two endpoints) from
/// `clients` concurrent tasks, printing progress; returns them in name order.
pub async fn populate(client: &Client, count: usize, clients: usize) -> Result<Vec<BenchService>> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let made: Arc<Mutex<Vec<Option<BenchService>>>> = Arc::new(Mutex::new(vec![None; count]));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let (client, next, done, made) = (client.clone(), next.clone(), done.clone(), made.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                let name = format!("svc-{i:05}");
                let endpoints: Vec<Ipv4Addr> = (0..1 + i % 2).map(|j| addr(POPULATED_ENDPOINTS, 2 * i + j)).collect();
                let slice = client
                    .create(Some(NAMESPACE), &slice(&name, &endpoints)?)
                    .await
                    .with_context(|| format!("creating the EndpointSlice of {name}"))?;
                let vip = addr(POPULATED_VIPS, i);
                client
                    .create(Some(NAMESPACE), &service(&name, vip)?)
                    .await
                    .with_context(|| format!("creating {name}"))?;
                made.lock().unwrap()[i] = Some(BenchService { name, vip, endpoints, slice });
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 1000 == 0 || n == count {
                    let rate = n as f64 / started.elapsed().as_secs_f64();
                    progress("p5", &format!("{n}/{count} Services created ({rate:.0} Services/s, 2 objects each)"));
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a creating task panicked")??;
    }
    let made = std::mem::take(&mut *made.lock().unwrap());
    made.into_iter().collect::<Option<Vec<_>>>().context("a Service was not created")
}

/// Waits until every node's maps hold the frontends of all `services`; progress
/// every few seconds. Returns how long it took.
pub fn wait_programmed(maps: &[NodeMaps], services: &[BenchService], timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    let vips: BTreeSet<Ipv4Addr> = services.iter().map(|s| s.vip).collect();
    let mut last_report = Instant::now();
    loop {
        let counts: Vec<usize> = maps.iter().map(|m| m.count_frontends(|vip| vips.contains(&vip))).collect();
        if counts.iter().all(|&c| c == vips.len()) {
            return Ok(started.elapsed());
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            let each: Vec<String> = maps.iter().zip(&counts).map(|(m, c)| format!("{} {c}", m.node)).collect();
            progress("p5", &format!("frontends in the maps: {} of {}", each.join(", "), vips.len()));
            last_report = Instant::now();
        }
        if started.elapsed() > timeout {
            bail!("after {} s the maps hold {counts:?} of {} frontends", timeout.as_secs(), vips.len());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A resync as seen from the maps: when the first and the last Service showed, and
/// when all of them were there, since the agent's start.
pub struct Resync {
    pub first: Duration,
    pub all: Duration,
}

/// After an agent started at `since` with empty maps: when every Service of `world`
/// was back in `maps`. The agent writes its first snapshot in one sync, in name order,
/// so the Services first and last by name are polled about every millisecond (the time
/// between them is the writing itself), then the whole map is counted to confirm (and,
/// should anything be missing, counted until it is not).
pub fn wait_resynced(maps: &NodeMaps, world: &[BenchService], since: Instant, timeout: Duration) -> Result<Resync> {
    let first = world.iter().min_by(|a, b| a.name.cmp(&b.name)).context("no Services")?;
    let last = world.iter().max_by(|a, b| a.name.cmp(&b.name)).context("no Services")?;
    let wait_for = |svc: &BenchService| -> Result<Duration> {
        let expected: BTreeSet<Ipv4Addr> = svc.endpoints.iter().copied().collect();
        loop {
            let elapsed = since.elapsed();
            if maps.backends_of(svc.vip, PORT).as_ref() == Some(&expected) {
                return Ok(elapsed);
            }
            let secs = timeout.as_secs();
            ensure!(elapsed < timeout, "the agent had not programmed {} {secs} s after its start", svc.name);
            std::thread::sleep(Duration::from_micros(500));
        }
    };
    let first_seen = wait_for(first)?;
    let last_seen = wait_for(last)?;
    let vips: BTreeSet<Ipv4Addr> = world.iter().map(|s| s.vip).collect();
    let mut confirmed_at_once = true;
    loop {
        if maps.count_frontends(|vip| vips.contains(&vip)) == vips.len() {
            // Not all there when the last one was: the time is when they all are.
            let all = if confirmed_at_once { last_seen } else { since.elapsed() };
            return Ok(Resync { first: first_seen, all });
        }
        confirmed_at_once = false;
        let secs = timeout.as_secs();
        ensure!(since.elapsed() < timeout, "the agent had not programmed every Service {secs} s after its start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// When `expected` (the backends of `vip`) first showed on every node, polled about
/// every millisecond from `since`; `None` after [`CHANGE_TIMEOUT`].
fn wait_visible(maps: &[NodeMaps], vip: Ipv4Addr, expected: &BTreeSet<Ipv4Addr>, since: Instant) -> Option<Duration> {
    let mut seen = vec![false; maps.len()];
    loop {
        for (m, seen) in maps.iter().zip(seen.iter_mut()) {
            *seen = *seen || m.backends_of(vip, PORT).as_ref() == Some(expected);
        }
        let elapsed = since.elapsed();
        if seen.iter().all(|s| *s) {
            return Some(elapsed);
        }
        if elapsed > CHANGE_TIMEOUT {
            return None;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The latencies of one run, by kind of change.
#[derive(Default)]
pub struct RunLatencies {
    pub endpoint_changes: Vec<Duration>,
    pub new_services: Vec<Duration>,
    pub lost: usize,
}

/// Run `run` (0-based) of `changes` single changes, alternating an endpoint change of
/// an existing Service and a new Service; each timed from just before its API write is
/// sent to its backends showing on every node. `world` is kept up to date.
pub fn change_run(
    rt: &Runtime,
    client: &Client,
    maps: &[NodeMaps],
    world: &mut Vec<BenchService>,
    run: usize,
    changes: usize,
) -> Result<RunLatencies> {
    ensure!(changes <= MAX_CHANGES && run < MAX_RUNS, "too many changes or runs for the address plan");
    let populated = world.len();
    let mut out = RunLatencies::default();
    for k in 0..changes {
        std::thread::sleep(GAP);
        let serial = run * MAX_CHANGES + k;
        let latency = if k % 2 == 0 {
            // Spread over the Services, differently in each run.
            let i = (k * 7919 + run * 104_729) % populated;
            let svc = &mut world[i];
            let mut endpoints = svc.endpoints.clone();
            endpoints[0] = addr(CHANGED_ENDPOINTS, serial);
            let mut want = slice(&svc.name, &endpoints)?;
            want.metadata.resource_version = svc.slice.metadata.resource_version.clone();
            let expected: BTreeSet<Ipv4Addr> = endpoints.iter().copied().collect();
            let (client, name) = (client.clone(), format!("{}-1", svc.name));
            let since = Instant::now();
            let write = rt.spawn(async move { client.replace(Some(NAMESPACE), &name, &want).await });
            let seen = wait_visible(maps, svc.vip, &expected, since);
            svc.slice = rt.block_on(write)?.with_context(|| format!("changing the endpoints of {}", svc.name))?;
            svc.endpoints = endpoints;
            seen.map(|d| (true, d))
        } else {
            let name = format!("new-{run}-{k:05}");
            let (vip, endpoint) = (addr(NEW_VIPS, serial), addr(NEW_ENDPOINTS, serial));
            let made = rt
                .block_on(client.create(Some(NAMESPACE), &slice(&name, &[endpoint])?))
                .with_context(|| format!("creating the EndpointSlice of {name}"))?;
            // The slice alone changes nothing in the maps, but the agent syncs for it:
            // the Service must come after the agent's least time between two syncs to
            // be measured on its own.
            std::thread::sleep(GAP);
            let want = service(&name, vip)?;
            let client = client.clone();
            let since = Instant::now();
            let write = rt.spawn(async move { client.create(Some(NAMESPACE), &want).await });
            let seen = wait_visible(maps, vip, &BTreeSet::from([endpoint]), since);
            rt.block_on(write)?.with_context(|| format!("creating {name}"))?;
            world.push(BenchService { name, vip, endpoints: vec![endpoint], slice: made });
            seen.map(|d| (false, d))
        };
        match latency {
            Some((true, d)) => out.endpoint_changes.push(d),
            Some((false, d)) => out.new_services.push(d),
            None => {
                out.lost += 1;
                progress("p5", &format!("change {k} did not show on every node in {} s", CHANGE_TIMEOUT.as_secs()));
                ensure!(out.lost <= MAX_LOST, "{} changes did not reach the maps; stopping", out.lost);
            }
        }
        if (k + 1) % 50 == 0 {
            progress("p5", &format!("run {}: {}/{changes} changes", run + 1, k + 1));
        }
    }
    Ok(out)
}
