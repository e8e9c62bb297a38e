//! The HorizontalPodAutoscaler controller (autoscaling/v2): every sync period it reads
//! each HPA's target through the `scale` subresource (Deployment, ReplicaSet,
//! StatefulSet), the CPU or memory usage of the target's pods from `metrics.k8s.io`
//! (through the API, as any client), and sets the target's replicas the way upstream's
//! controller does:
//!
//! 1. `Resource` metrics (and `ContainerResource`: one container of each pod),
//!    `Utilization` (usage / the pods' requests) or `AverageValue`:
//!    `desired = ceil(ready pods × usage / target)`, unchanged within a 10% tolerance;
//!    pods being deleted or failed are ignored; pods without metrics count, on a
//!    scale-down, as at 100% of their request (at 0 on a scale-up); pods not Ready yet
//!    (CPU only) count as at 0 on a scale-up, so a burst of starting pods does not
//!    scale further (`replicas` is the pure part).
//! 2. Several metrics: the highest proposal; a failed metric only blocks a scale-down.
//! 3. `normalize`: the scale-down stabilization window (the highest recommendation of
//!    the last 300 s unless `behavior` or the controller's flag says otherwise), the
//!    scale-up window, the rate policies of `behavior` (default: double or +4 pods per
//!    15 s up, any amount down), then `minReplicas`/`maxReplicas`.
//!
//! It writes the target's `scale`, the HPA's status (currentReplicas, desiredReplicas,
//! currentMetrics, the AbleToScale/ScalingActive/ScalingLimited conditions,
//! lastScaleTime) and `SuccessfulRescale` (or failure) events; nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use skiff_api::reflector::{self, Cache, Change};
use skiff_api::selector::LabelSelector;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{Client, ListParams, ObjectKey, quantity};

use super::Context;
use crate::events::EventType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("updating the status of HorizontalPodAutoscaler {key} failed: {source}")]
    Status {
        key: String,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Usage within this fraction of the target changes nothing.
pub const TOLERANCE: f64 = 0.1;
/// A pod this young may still be starting: its CPU is not trusted until it has been
/// Ready for a whole metrics window.
const CPU_INITIALIZATION_PERIOD: i64 = 300;
/// How long after its start a pod's first NotReady is taken as "never ready yet".
const INITIAL_READINESS_DELAY: i64 = 30;

// ---------------------------------------------------------------------------------
// The calculation, pure.

/// A metric's target, in milli-units (millicores; milli-bytes for memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Percent of the pods' requests.
    Utilization(i32),
    /// Per pod.
    AverageValue(i64),
}

/// One pod of the target as the calculation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSample {
    pub name: String,
    /// Being deleted or failed: left out altogether.
    pub ignored: bool,
    /// Pending, or (CPU only) not Ready, or Ready too recently for its sample: its
    /// usage is not trusted.
    pub unready: bool,
    /// The sum of its containers' requests (milli-units); `Utilization` needs it.
    pub request: i64,
    /// Its usage (milli-units), if the metrics API had it.
    pub usage: Option<i64>,
}

/// What one metric proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    pub replicas: i32,
    /// Usage as a percent of the requests (for `Utilization` targets).
    pub utilization: Option<i32>,
    /// Average usage per pod (milli-units).
    pub average: i64,
}

/// The usage ratio, utilization and average of the pods in `metrics`.
fn ratio(metrics: &[(i64, i64)], target: Target) -> (f64, Option<i32>, i64) {
    let usage: i64 = metrics.iter().map(|(u, _)| u).sum();
    let average = usage / (metrics.len().max(1) as i64);
    match target {
        Target::Utilization(t) => {
            let requests: i64 = metrics.iter().map(|(_, r)| r).sum();
            let utilization = if requests > 0 { (usage * 100 / requests) as i32 } else { 0 };
            let ratio = if requests > 0 && t > 0 { usage as f64 * 100.0 / requests as f64 / t as f64 } else { 0.0 };
            (ratio, Some(utilization), average)
        }
        Target::AverageValue(t) => (if t > 0 { average as f64 / t as f64 } else { 0.0 }, None, average),
    }
}

/// Upstream's replica calculation for one resource metric over the target's pods.
pub fn replicas(current: i32, target: Target, pods: &[PodSample]) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let mut metrics: Vec<(i64, i64)> = Vec::new();
    let (mut unready, mut missing) = (Vec::new(), Vec::new());
    for p in pods.iter().filter(|p| !p.ignored) {
        match (p.unready, p.usage) {
            (true, _) => unready.push(p),
            (false, None) => missing.push(p),
            (false, Some(u)) => metrics.push((u, p.request)),
        }
    }
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let ready = metrics.len() as f64;
    let (usage_ratio, utilization, average) = ratio(&metrics, target);
    let proposal = |replicas: i32| Proposal { replicas, utilization, average };
    let scale_up_with_unready = !unready.is_empty() && usage_ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - usage_ratio).abs() <= TOLERANCE {
            return Ok(proposal(current));
        }
        return Ok(proposal((usage_ratio * ready).ceil() as i32));
    }
    // Fill in the pods without trusted figures the conservative way round.
    let at_request = |p: &PodSample| match target {
        Target::Utilization(_) => p.request,
        Target::AverageValue(t) => t,
    };
    for p in &missing {
        metrics.push((if usage_ratio < 1.0 { at_request(p) } else { 0 }, p.request));
    }
    if scale_up_with_unready {
        for p in &unready {
            metrics.push((0, p.request));
        }
    }
    let (new_ratio, ..) = ratio(&metrics, target);
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (usage_ratio < 1.0 && new_ratio > 1.0)
        || (usage_ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = (new_ratio * metrics.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

/// A rate policy: at most `value` pods, or `value` percent, per `period` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub percent: bool,
    pub value: i32,
    pub period: i64,
}

/// Which policy wins: the one allowing the most change, the least, or none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

/// One direction of `spec.behavior`, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub window: i64,
    pub select: Select,
    pub policies: Vec<Policy>,
}

/// `spec.behavior` with upstream's defaults; `down_window` is the controller's flag.
pub fn behavior(hpa: &HorizontalPodAutoscaler, down_window: Duration) -> (Rules, Rules) {
    let b = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref());
    let up_default = Rules {
        window: 0,
        select: Select::Max,
        policies: vec![
            Policy { percent: false, value: 4, period: 15 },
            Policy { percent: true, value: 100, period: 15 },
        ],
    };
    let down_default = Rules {
        window: i64::try_from(down_window.as_secs()).unwrap_or(i64::MAX),
        select: Select::Max,
        policies: vec![Policy { percent: true, value: 100, period: 15 }],
    };
    let rules = |given: Option<&HPAScalingRules>, default: Rules| {
        let Some(r) = given else { return default };
        Rules {
            window: r.stabilization_window_seconds.map_or(default.window, i64::from),
            select: match r.select_policy.as_deref() {
                Some("Min") => Select::Min,
                Some("Disabled") => Select::Disabled,
                _ => Select::Max,
            },
            policies: match &r.policies {
                Some(ps) if !ps.is_empty() => ps
                    .iter()
                    .map(|p| Policy {
                        percent: p.type_ == "Percent",
                        value: p.value,
                        period: i64::from(p.period_seconds),
                    })
                    .collect(),
                _ => default.policies,
            },
        }
    };
    (rules(b.and_then(|b| b.scale_up.as_ref()), up_default), rules(b.and_then(|b| b.scale_down.as_ref()), down_default))
}

/// What the controller remembers of one HPA between syncs (as upstream, in memory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// (time in milliseconds, proposed replicas) of recent syncs.
    pub recommendations: Vec<(i64, i32)>,
    /// (time, pods added) and (time, pods removed) of recent rescales.
    pub ups: Vec<(i64, i32)>,
    pub downs: Vec<(i64, i32)>,
}

impl History {
    /// Notes a rescale from `from` to `to` at `now`.
    pub fn scaled(&mut self, from: i32, to: i32, now: i64) {
        if to > from {
            self.ups.push((now, to - from));
        } else if to < from {
            self.downs.push((now, from - to));
        }
    }

    fn prune(&mut self, now: i64, keep: i64) {
        let keep = keep * 1000;
        self.recommendations.retain(|(t, _)| now - t <= keep);
        self.ups.retain(|(t, _)| now - t <= keep);
        self.downs.retain(|(t, _)| now - t <= keep);
    }
}

/// A condition's (reason, message).
pub type Why = (&'static str, &'static str);

/// The result of `normalize`: the replicas to set and why it differs from the proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalized {
    pub replicas: i32,
    /// AbleToScale's reason and message (stabilized or not).
    pub stabilized: Why,
    /// ScalingLimited's, and whether it is True.
    pub limited: (bool, Why),
}

fn changed_in(events: &[(i64, i32)], period: i64, now: i64) -> i32 {
    events.iter().filter(|(t, _)| now - t < period * 1000).map(|(_, n)| n).sum()
}

fn limit(current: i32, up: bool, rules: &Rules, h: &History, now: i64) -> i32 {
    let mut result: Option<i32> = None;
    for p in &rules.policies {
        let start = current - changed_in(&h.ups, p.period, now) + changed_in(&h.downs, p.period, now);
        let proposed = match (up, p.percent) {
            (true, false) => start + p.value,
            (true, true) => (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32,
            (false, false) => start - p.value,
            (false, true) => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
        };
        // "Max" picks the policy allowing the most change: the highest limit up, the
        // lowest down.
        let most = matches!(rules.select, Select::Max) == up;
        result = Some(match result {
            None => proposed,
            Some(r) if most => r.max(proposed),
            Some(r) => r.min(proposed),
        });
    }
    result.unwrap_or(current)
}

/// Upstream's normalization with behaviors: stabilize `proposal` against the recent
/// recommendations, then hold it to the rate policies and to `min`/`max`. Records the
/// proposal in `history`. Times are in milliseconds, windows and periods in seconds.
pub fn normalize(
    current: i32,
    proposal: i32,
    (min, max): (i32, i32),
    (up, down): (&Rules, &Rules),
    history: &mut History,
    now: i64,
) -> Normalized {
    let keep = [up.window, down.window]
        .into_iter()
        .chain(up.policies.iter().chain(&down.policies).map(|p| p.period))
        .max()
        .unwrap_or(0);
    history.prune(now, keep);
    let (mut up_rec, mut down_rec) = (proposal, proposal);
    for &(t, r) in &history.recommendations {
        if now - t < up.window * 1000 {
            up_rec = up_rec.min(r);
        }
        if now - t < down.window * 1000 {
            down_rec = down_rec.max(r);
        }
    }
    history.recommendations.push((now, proposal));
    let stabilized_to = current.max(up_rec).min(down_rec);
    let stabilized = match stabilized_to.cmp(&proposal) {
        std::cmp::Ordering::Equal => ("ReadyForNewScale", "recommended size matches current size"),
        std::cmp::Ordering::Greater => (
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        ),
        std::cmp::Ordering::Less => (
            "ScaleUpStabilized",
            "recent recommendations were lower than current one, applying the lowest recent recommendation",
        ),
    };
    let within = (false, ("DesiredWithinRange", "the desired count is within the acceptable range"));
    let (replicas, limited) = if stabilized_to > current {
        let rate =
            if up.select == Select::Disabled { current } else { limit(current, true, up, history, now).max(current) };
        let (allowed, why) = if max > rate {
            (rate, ("ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate"))
        } else {
            (max, ("TooManyReplicas", "the desired replica count is more than the maximum replica count"))
        };
        if stabilized_to > allowed { (allowed, (true, why)) } else { (stabilized_to, within) }
    } else if stabilized_to < current {
        let rate = if down.select == Select::Disabled {
            current
        } else {
            limit(current, false, down, history, now).min(current)
        };
        let (allowed, why) = if min < rate {
            (rate, ("ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate"))
        } else {
            (min, ("TooFewReplicas", "the desired replica count is less than the minimum replica count"))
        };
        if stabilized_to < allowed { (allowed, (true, why)) } else { (stabilized_to, within) }
    } else {
        (stabilized_to, within)
    };
    Normalized { replicas, stabilized, limited }
}

// ---------------------------------------------------------------------------------
// The controller.

/// The scale subresource path of a target kind, if it is one this controller scales.
fn scale_path(api_version: &str, kind: &str, ns: &str, name: &str) -> Option<String> {
    let plural = match (api_version, kind) {
        ("apps/v1" | "", "Deployment") => "deployments",
        ("apps/v1" | "", "ReplicaSet") => "replicasets",
        ("apps/v1" | "", "StatefulSet") => "statefulsets",
        _ => return None,
    };
    Some(format!("/apis/apps/v1/namespaces/{ns}/{plural}/{name}/scale"))
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    let (hpas, reflect) =
        reflector::reflector::<HorizontalPodAutoscaler>(ctx.client.clone(), None, ListParams::default());
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let histories: Arc<Mutex<HashMap<ObjectKey, History>>> = Arc::default();
    let period = ctx.config.hpa_sync_period;
    let feeder = {
        let (queue, hpas) = (queue.clone(), hpas.clone());
        async move {
            hpas.wait_synced().await;
            let mut changes = hpas.subscribe();
            let mut tick = tokio::time::interval(period);
            // Our own status writes come back as changes: only a new generation (a spec
            // change) or a new HPA is worth an early sync.
            let mut seen: HashMap<ObjectKey, Option<i64>> = HashMap::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => for h in hpas.list() {
                        queue.add(ObjectKey::of(h.as_ref()));
                    },
                    Some(c) = changes.recv() => match c {
                        Change::Applied(h) => {
                            let key = ObjectKey::of(h.as_ref());
                            if seen.insert(key.clone(), h.metadata.generation) != Some(h.metadata.generation) {
                                queue.add(key);
                            }
                        }
                        Change::Deleted(h) => {
                            // Its sync finds it gone and forgets its history.
                            let key = ObjectKey::of(h.as_ref());
                            seen.remove(&key);
                            queue.add(key);
                        }
                    },
                    else => return,
                }
            }
        }
    };
    let workers = run_workers("horizontal-pod-autoscaler", queue, 2, move |key: ObjectKey| {
        let (ctx, hpas, histories) = (ctx.clone(), hpas.clone(), histories.clone());
        async move { reconcile(&ctx, &hpas, &histories, &key).await }
    });
    tokio::join!(reflect, feeder, workers);
}

/// What the metrics API says of one pod: its usage of `resource` (milli-units), the
/// time and window of the sample (seconds).
#[derive(Debug, Clone, Copy)]
struct PodUsage {
    usage: i64,
    timestamp: i64,
    window: i64,
}

/// `metrics.k8s.io` pod metrics of `resource` for the pods `selector` picks in `ns`.
async fn pod_metrics(
    client: &Client,
    ns: &str,
    selector: &str,
    resource: &str,
    container: Option<&str>,
) -> Result<HashMap<String, PodUsage>, String> {
    let q = form_urlencoded::Serializer::new(String::new()).append_pair("labelSelector", selector).finish();
    let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?{q}");
    let err = |e: &dyn std::fmt::Display| format!("unable to get metrics for resource {resource}: {e}");
    let resp = client.send_raw(Method::GET, &path, None, Bytes::new()).await.map_err(|e| err(&e))?;
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.map_err(|e| err(&e))?.to_bytes();
    let list: Value = serde_json::from_slice(&body).map_err(|e| err(&e))?;
    let mut out = HashMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let Some(name) = item.pointer("/metadata/name").and_then(Value::as_str) else { continue };
        let containers = item["containers"].as_array().map(Vec::as_slice).unwrap_or_default();
        let picked: Vec<&Value> = containers.iter().filter(|c| container.is_none_or(|n| c["name"] == n)).collect();
        if picked.is_empty() {
            // Not measured (yet): the pod counts as missing.
            continue;
        }
        let mut usage = 0i64;
        for c in picked {
            let q = c.pointer(&format!("/usage/{resource}")).and_then(Value::as_str).unwrap_or("0");
            usage += milli(resource, q).unwrap_or(0);
        }
        let timestamp = item["timestamp"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let window = item["window"].as_str().map(go_seconds).unwrap_or(0);
        out.insert(name.to_string(), PodUsage { usage, timestamp: timestamp.map_or(0, |t| t.as_second()), window });
    }
    if out.is_empty() {
        return Err(err(&"no metrics returned from resource metrics API"));
    }
    Ok(out)
}

/// Seconds of a Go duration string such as `15.004s` or `1m0s` (whole seconds, rounded up).
fn go_seconds(d: &str) -> i64 {
    let (mins, rest) = d.split_once('m').map_or((0, d), |(m, r)| (m.parse().unwrap_or(0), r));
    let secs: f64 = rest.trim_end_matches('s').parse().unwrap_or(0.0);
    mins * 60 + secs.ceil() as i64
}

/// A quantity of `resource` in milli-units.
fn milli(resource: &str, q: &str) -> Option<i64> {
    if resource == "cpu" { quantity::parse_milli(q).ok() } else { quantity::parse_value(q).ok()?.checked_mul(1000) }
}

fn condition_of<'a>(pod: &'a Pod, ty: &str) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == ty)
}

/// Whether a pod's CPU sample is not to be trusted (upstream's rules): not Ready, or
/// in its first five minutes and Ready for less than one window of the sample.
fn cpu_unready(pod: &Pod, sample: Option<PodUsage>) -> bool {
    let Some(sample) = sample else { return false };
    let ready = condition_of(pod, "Ready");
    let start = pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.as_second());
    let (Some(ready), Some(start)) = (ready, start) else { return true };
    let transition = ready.last_transition_time.as_ref().map_or(0, |t| t.0.as_second());
    if start + CPU_INITIALIZATION_PERIOD > jiff::Timestamp::now().as_second() {
        ready.status == "False" || sample.timestamp < transition + sample.window
    } else {
        ready.status == "False" && start + INITIAL_READINESS_DELAY > transition
    }
}

/// The sum of the pod's containers' requests of `resource` (milli-units); an error
/// naming the first container without one.
fn requests(pod: &Pod, resource: &str, container: Option<&str>) -> Result<i64, String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let mut sum = 0;
    let mut found = false;
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()).filter(|c| container.is_none_or(|n| c.name == n)) {
        found = true;
        let r = c.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get(resource));
        match r.and_then(|q| milli(resource, &q.0)) {
            Some(v) => sum += v,
            None => return Err(format!("missing request for {resource} in container {} of Pod {name}", c.name)),
        }
    }
    match container {
        Some(c) if !found => Err(format!("container {c} not present in Pod {name}")),
        _ => Ok(sum),
    }
}

/// A quantity from milli-units, as upstream writes the average (`250m`, `64Mi`-ish bytes).
fn quantity_of(resource: &str, milli: i64) -> Quantity {
    if resource == "cpu" {
        Quantity(format!("{milli}m"))
    } else if milli % 1000 == 0 {
        Quantity((milli / 1000).to_string())
    } else {
        Quantity(format!("{milli}m"))
    }
}

/// One metric's outcome: its proposal and status, or why it failed.
struct Measured {
    proposal: Proposal,
    status: MetricStatus,
    label: String,
}

/// Measures one `Resource` metric of the target's pods.
async fn measure(
    client: &Client,
    ns: &str,
    selector: &str,
    pods: &[Arc<Pod>],
    current: i32,
    spec: &MetricSpec,
) -> Result<Measured, (&'static str, String)> {
    let (resource, container, spec_target) = match (spec.type_.as_str(), &spec.resource, &spec.container_resource) {
        ("Resource", Some(r), _) => (r.name.as_str(), None, &r.target),
        ("ContainerResource", _, Some(c)) => (c.name.as_str(), Some(c.container.as_str()), &c.target),
        (ty, ..) => return Err(("InvalidMetricSourceType", format!("the HPA controller cannot read {ty} metrics"))),
    };
    let fail = |e: String| {
        let reason = if container.is_some() { "FailedGetContainerResourceMetric" } else { "FailedGetResourceMetric" };
        (reason, e)
    };
    let target = match (spec_target.type_.as_str(), spec_target.average_utilization, &spec_target.average_value) {
        ("Utilization", Some(u), _) => Target::Utilization(u),
        ("AverageValue", _, Some(v)) => Target::AverageValue(
            milli(resource, &v.0).ok_or_else(|| fail(format!("invalid averageValue {} for {resource}", v.0)))?,
        ),
        (t, ..) => return Err(fail(format!("invalid target type {t} for resource {resource}"))),
    };
    let metrics = pod_metrics(client, ns, selector, resource, container)
        .await
        .map_err(|e| fail(format!("failed to get {resource} utilization: {e}")))?;
    let mut samples = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let sample = metrics.get(&name).copied();
        let request = match target {
            Target::Utilization(_) => requests(pod, resource, container)
                .map_err(|e| fail(format!("failed to get {resource} utilization: {e}")))?,
            Target::AverageValue(_) => 0,
        };
        samples.push(PodSample {
            ignored: pod.metadata.deletion_timestamp.is_some() || phase == "Failed",
            unready: phase == "Pending" || (resource == "cpu" && cpu_unready(pod, sample)),
            request,
            usage: sample.map(|s| s.usage),
            name,
        });
    }
    let proposal =
        replicas(current, target, &samples).map_err(|e| fail(format!("failed to get {resource} utilization: {e}")))?;
    let kind = if container.is_some() { "container resource" } else { "resource" };
    let label = match target {
        Target::Utilization(_) => format!("{resource} {kind} utilization (percentage of request)"),
        Target::AverageValue(_) => format!("{resource} {kind}"),
    };
    let current = MetricValueStatus {
        average_utilization: proposal.utilization,
        average_value: Some(quantity_of(resource, proposal.average)),
        value: None,
    };
    let status = match container {
        None => MetricStatus {
            type_: "Resource".into(),
            resource: Some(ResourceMetricStatus { name: resource.into(), current }),
            ..Default::default()
        },
        Some(c) => MetricStatus {
            type_: "ContainerResource".into(),
            container_resource: Some(ContainerResourceMetricStatus {
                name: resource.into(),
                container: c.into(),
                current,
            }),
            ..Default::default()
        },
    };
    Ok(Measured { proposal, status, label })
}

/// Sets condition `ty` in `conds`, keeping its transition time when the status stays.
fn set_condition(
    conds: &mut Vec<HorizontalPodAutoscalerCondition>,
    old: &[HorizontalPodAutoscalerCondition],
    ty: &str,
    status: bool,
    reason: &str,
    message: String,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let transition = match old.iter().find(|c| c.type_ == ty) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(Time(jiff::Timestamp::now())),
    };
    conds.retain(|c| c.type_ != ty);
    conds.push(HorizontalPodAutoscalerCondition {
        type_: ty.into(),
        status,
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: transition,
    });
}

async fn reconcile(
    ctx: &Context,
    hpas: &Cache<HorizontalPodAutoscaler>,
    histories: &Mutex<HashMap<ObjectKey, History>>,
    key: &ObjectKey,
) -> Result<Action> {
    let Some(hpa) = hpas.get_named(key.ns(), &key.name) else {
        histories.lock().unwrap().remove(key);
        return Ok(Action::Done);
    };
    let ns = key.ns().unwrap_or("default");
    let spec = hpa.spec.clone().unwrap_or_default();
    let old = hpa.status.clone().unwrap_or_default();
    let old_conds = old.conditions.clone().unwrap_or_default();
    let mut conds = old_conds.clone();
    let mut status = HorizontalPodAutoscalerStatus {
        observed_generation: hpa.metadata.generation,
        last_scale_time: old.last_scale_time.clone(),
        current_replicas: old.current_replicas,
        desired_replicas: old.desired_replicas,
        current_metrics: old.current_metrics.clone(),
        conditions: None,
    };
    let target = &spec.scale_target_ref;
    let path = scale_path(target.api_version.as_deref().unwrap_or(""), &target.kind, ns, &target.name);
    let scale = match &path {
        Some(p) => get_json(&ctx.client, p).await,
        None => Err(format!(
            "no matches for kind \"{}\" in group \"{}\"",
            target.kind,
            target.api_version.as_deref().unwrap_or("")
        )),
    };
    let scale = match scale {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("the HPA controller was unable to get the target's current scale: {e}");
            warn_once(ctx, &hpa, &old_conds, "AbleToScale", "FailedGetScale", &e).await;
            set_condition(&mut conds, &old_conds, "AbleToScale", false, "FailedGetScale", msg);
            status.conditions = Some(conds);
            return write_status(ctx, &hpa, status, key).await;
        }
    };
    let current = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0) as i32;
    status.current_replicas = Some(scale.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0) as i32);
    let selector = scale.pointer("/status/selector").and_then(Value::as_str).unwrap_or("").to_string();
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let now = jiff::Timestamp::now().as_millisecond();
    let mut rescale_reason = String::new();
    let desired = if current == 0 && min != 0 {
        set_condition(
            &mut conds,
            &old_conds,
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero".into(),
        );
        status.current_metrics = None;
        0
    } else if current > max {
        rescale_reason = "Current number of replicas above Spec.MaxReplicas".into();
        max
    } else if current < min {
        rescale_reason = "Current number of replicas below Spec.MinReplicas".into();
        min
    } else {
        let selected = LabelSelector::parse(&selector).ok().filter(|_| !selector.is_empty());
        let pods: Vec<Arc<Pod>> = ctx
            .informers
            .pods
            .list()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .filter(|p| selected.as_ref().is_some_and(|s| s.matches(&skiff_api::client::labels_of(&p.metadata))))
            .collect();
        let mut proposal: Option<(i32, String)> = None;
        let mut statuses = Vec::new();
        let mut failure: Option<(&'static str, String)> = None;
        let mut invalid = 0;
        for m in spec.metrics.iter().flatten() {
            match measure(&ctx.client, ns, &selector, &pods, current, m).await {
                Ok(r) => {
                    if proposal.as_ref().is_none_or(|(p, _)| r.proposal.replicas > *p) {
                        proposal = Some((r.proposal.replicas, r.label));
                    }
                    statuses.push(r.status);
                }
                Err(e) => {
                    // An empty entry keeps the others at their metric's index, as upstream.
                    statuses.push(MetricStatus::default());
                    invalid += 1;
                    failure.get_or_insert(e);
                }
            }
        }
        status.current_metrics = (!statuses.is_empty()).then_some(statuses);
        match proposal {
            None => {
                let (reason, msg) = failure.unwrap_or(("FailedGetResourceMetric", "no metrics to scale on".into()));
                let total = spec.metrics.as_ref().map_or(0, Vec::len);
                let summary = format!("invalid metrics ({invalid} invalid out of {total}), first error is: {msg}");
                warn_once(ctx, &hpa, &old_conds, "ScalingActive", reason, &msg).await;
                warn_once(ctx, &hpa, &old_conds, "ScalingActive", "FailedComputeMetricsReplicas", &summary).await;
                set_condition(
                    &mut conds,
                    &old_conds,
                    "ScalingActive",
                    false,
                    reason,
                    format!("the HPA was unable to compute the replica count: {msg}"),
                );
                status.desired_replicas = current;
                status.conditions = Some(conds);
                return write_status(ctx, &hpa, status, key).await;
            }
            Some((mut replicas, label)) => {
                // A metric that could not be read might have wanted more: no scale-down then.
                if failure.is_some() && replicas < current {
                    replicas = current;
                }
                set_condition(
                    &mut conds,
                    &old_conds,
                    "ScalingActive",
                    true,
                    "ValidMetricFound",
                    format!("the HPA was able to successfully calculate a replica count from {label}"),
                );
                let (up, down) = behavior(&hpa, ctx.config.hpa_downscale_stabilization);
                let n = {
                    let mut h = histories.lock().unwrap();
                    normalize(current, replicas, (min, max), (&up, &down), h.entry(key.clone()).or_default(), now)
                };
                set_condition(&mut conds, &old_conds, "AbleToScale", true, n.stabilized.0, n.stabilized.1.into());
                set_condition(
                    &mut conds,
                    &old_conds,
                    "ScalingLimited",
                    n.limited.0,
                    n.limited.1.0,
                    n.limited.1.1.into(),
                );
                if n.replicas > current {
                    rescale_reason = format!("{label} above target");
                } else if n.replicas < current {
                    rescale_reason = "All metrics below target".into();
                }
                n.replicas
            }
        }
    };
    status.desired_replicas = desired;
    if desired != current {
        let patch = json!({"spec": {"replicas": desired}});
        let sent = match &path {
            Some(p) => ctx
                .client
                .send_raw(Method::PATCH, p, Some("application/merge-patch+json"), Bytes::from(patch.to_string()))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            None => Err("no scale subresource".into()),
        };
        match sent {
            Ok(()) => {
                histories.lock().unwrap().entry(key.clone()).or_default().scaled(current, desired, now);
                let msg = format!("New size: {desired}; reason: {rescale_reason}");
                tracing::info!(hpa = %key, from = current, to = desired, reason = %rescale_reason, "rescaled");
                ctx.events.record(hpa.as_ref(), EventType::Normal, "SuccessfulRescale", &msg).await;
                set_condition(
                    &mut conds,
                    &old_conds,
                    "AbleToScale",
                    true,
                    "SucceededRescale",
                    format!("the HPA controller was able to update the target scale to {desired}"),
                );
                status.last_scale_time = Some(Time(jiff::Timestamp::now()));
            }
            Err(e) => {
                let msg = format!("New size: {desired}; reason: {rescale_reason}; error: {e}");
                ctx.events.record(hpa.as_ref(), EventType::Warning, "FailedRescale", &msg).await;
                set_condition(
                    &mut conds,
                    &old_conds,
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    format!("the HPA controller was unable to update the target scale: {e}"),
                );
                status.desired_replicas = current;
            }
        }
    }
    conds.sort_by_key(|c| match c.type_.as_str() {
        "AbleToScale" => 0,
        "ScalingActive" => 1,
        _ => 2,
    });
    status.conditions = Some(conds);
    write_status(ctx, &hpa, status, key).await
}

/// Records a Warning event unless condition `ty` already says this failure (`reason`):
/// a failure that lasts is told once, not at every sync.
async fn warn_once(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    old: &[HorizontalPodAutoscalerCondition],
    ty: &str,
    reason: &str,
    message: &str,
) {
    // The summary event goes with whichever failure the condition already tells.
    let summary = reason == "FailedComputeMetricsReplicas";
    let known =
        old.iter().any(|c| c.type_ == ty && c.status == "False" && (summary || c.reason.as_deref() == Some(reason)));
    if !known {
        ctx.events.record(hpa, EventType::Warning, reason, message).await;
    }
}

async fn get_json(client: &Client, path: &str) -> Result<Value, String> {
    let resp = client.send_raw(Method::GET, path, None, Bytes::new()).await.map_err(|e| e.to_string())?;
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.map_err(|e| e.to_string())?.to_bytes();
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

async fn write_status(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    status: HorizontalPodAutoscalerStatus,
    key: &ObjectKey,
) -> Result<Action> {
    if hpa.status.as_ref() == Some(&status) {
        return Ok(Action::Done);
    }
    let updated = HorizontalPodAutoscaler { status: Some(status), ..hpa.clone() };
    match ctx.client.replace_status(key.ns(), &key.name, &updated).await {
        Ok(_) => Ok(Action::Done),
        // The next sync writes it from the newer object.
        Err(e) if e.is_conflict() || e.is_not_found() => Ok(Action::Done),
        Err(source) => Err(Error::Status { key: key.to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, usage: Option<i64>, request: i64) -> PodSample {
        PodSample { name: name.into(), ignored: false, unready: false, request, usage }
    }

    #[test]
    fn utilization_scales_by_the_ratio_with_a_tolerance() {
        let pods = [pod("a", Some(450), 500), pod("b", Some(500), 500)];
        // 95% of requests against 50%: ceil(2 × 1.9) = 4.
        let p = replicas(2, Target::Utilization(50), &pods).unwrap();
        assert_eq!((p.replicas, p.utilization, p.average), (4, Some(95), 475));
        // 95% against 90% is within 10%: unchanged.
        assert_eq!(replicas(2, Target::Utilization(90), &pods).unwrap().replicas, 2);
        // 95% against 200%: ceil(2 × 0.475) = 1.
        assert_eq!(replicas(2, Target::Utilization(200), &pods).unwrap().replicas, 1);
        // AverageValue: 475m per pod against 100m.
        assert_eq!(replicas(2, Target::AverageValue(100), &pods).unwrap().replicas, 10);
        assert!(replicas(2, Target::Utilization(50), &[]).is_err());
        assert!(replicas(2, Target::Utilization(50), &[pod("a", None, 100)]).is_err());
    }

    #[test]
    fn missing_and_unready_pods_count_conservatively() {
        // Scale-down with a pod missing: it counts at 100% of its request, which holds
        // the HPA at its size.
        let pods = [pod("a", Some(100), 1000), pod("b", Some(100), 1000), pod("c", None, 1000)];
        assert_eq!(replicas(3, Target::Utilization(50), &pods).unwrap().replicas, 3);
        // Scale-up with an unready pod: it counts at 0, so the step is smaller.
        let mut unready = pod("c", Some(5000), 1000);
        unready.unready = true;
        let pods = [pod("a", Some(1000), 1000), pod("b", Some(1000), 1000), unready];
        // The ready pods alone are at 100% (ratio 2); with the unready one at 0 the
        // three are at 66.7% (ratio 1.33): ceil(3 × 1.33) = 4 rather than 6.
        assert_eq!(replicas(3, Target::Utilization(50), &pods).unwrap().replicas, 4);
        // Ignored pods do not count at all.
        let mut gone = pod("d", Some(0), 1000);
        gone.ignored = true;
        let pods = [pod("a", Some(1000), 1000), gone];
        assert_eq!(replicas(1, Target::Utilization(50), &pods).unwrap().replicas, 2);
    }

    fn rules(window: i64, policies: Vec<Policy>) -> Rules {
        Rules { window, select: Select::Max, policies }
    }

    #[test]
    fn scale_down_is_stabilized_and_bounds_hold() {
        let up = rules(
            0,
            vec![Policy { percent: false, value: 4, period: 15 }, Policy { percent: true, value: 100, period: 15 }],
        );
        let down = rules(300, vec![Policy { percent: true, value: 100, period: 15 }]);
        let mut h = History::default();
        // Up from 1 to 10 wanted: at most max(1+4, 2) = 5 in one step.
        let n = normalize(1, 10, (1, 8), (&up, &down), &mut h, 1_000_000);
        assert_eq!(n.replicas, 5);
        assert_eq!(
            n.limited,
            (true, ("ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate"))
        );
        h.scaled(1, 5, 1_000_000);
        // 5 s later: the 4 added count against the period, 100% of the start (1) is 2, +4 is 5: stay.
        assert_eq!(normalize(5, 10, (1, 8), (&up, &down), &mut h, 1_005_000).replicas, 5);
        // After the period: up to max.
        let n = normalize(5, 10, (1, 8), (&up, &down), &mut h, 1_030_000);
        assert_eq!((n.replicas, n.limited.1.0), (8, "TooManyReplicas"));
        h.scaled(5, 8, 1_030_000);
        // Wanting 2 now: the recommendations of the last 300 s (10) hold it at 8.
        let n = normalize(8, 2, (1, 8), (&up, &down), &mut h, 1_100_000);
        assert_eq!((n.replicas, n.stabilized.0), (8, "ScaleDownStabilized"));
        // Once the window has passed, it goes down, not below min.
        let n = normalize(8, 0, (2, 8), (&up, &down), &mut h, 1_500_000);
        assert_eq!(
            (n.replicas, n.limited),
            (2, (true, ("TooFewReplicas", "the desired replica count is less than the minimum replica count")))
        );
        // A zero window follows at once.
        let mut h = History::default();
        let quick = rules(0, vec![Policy { percent: true, value: 100, period: 15 }]);
        normalize(4, 4, (1, 8), (&up, &quick), &mut h, 0);
        assert_eq!(normalize(4, 1, (1, 8), (&up, &quick), &mut h, 1000).replicas, 1);
        // Disabled scale-down never goes down.
        let off = Rules { window: 0, select: Select::Disabled, policies: vec![] };
        assert_eq!(normalize(4, 1, (1, 8), (&up, &off), &mut History::default(), 0).replicas, 4);
    }

    #[test]
    fn requests_of_the_pod_or_one_container() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            {"name": "side", "resources": {"requests": {"cpu": "50m"}}}]}}))
        .unwrap();
        assert_eq!(requests(&pod, "cpu", None), Ok(300));
        assert_eq!(requests(&pod, "cpu", Some("side")), Ok(50));
        assert_eq!(requests(&pod, "memory", Some("app")), Ok(64 * 1024 * 1024 * 1000));
        assert_eq!(
            requests(&pod, "memory", None),
            Err("missing request for memory in container side of Pod p".to_string())
        );
        assert_eq!(requests(&pod, "cpu", Some("nope")), Err("container nope not present in Pod p".to_string()));
    }

    #[test]
    fn behavior_defaults_and_overrides() {
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
            "metadata": {"name": "h"},
            "spec": {"maxReplicas": 3, "scaleTargetRef": {"kind": "Deployment", "name": "d"},
                     "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5, "selectPolicy": "Min",
                                  "policies": [{"type": "Pods", "value": 1, "periodSeconds": 10}]}}}
        }))
        .unwrap();
        let (up, down) = behavior(&hpa, Duration::from_secs(300));
        assert_eq!(up.window, 0);
        assert_eq!(up.policies.len(), 2);
        assert_eq!(
            down,
            Rules { window: 5, select: Select::Min, policies: vec![Policy { percent: false, value: 1, period: 10 }] }
        );
        assert_eq!(go_seconds("15.004s"), 16);
        assert_eq!(go_seconds("1m0s"), 60);
        assert_eq!(milli("memory", "2Ki"), Some(2_048_000));
        assert_eq!(quantity_of("cpu", 250).0, "250m");
        assert_eq!(
            scale_path("apps/v1", "StatefulSet", "d", "s").unwrap(),
            "/apis/apps/v1/namespaces/d/statefulsets/s/scale"
        );
        assert_eq!(scale_path("batch/v1", "Job", "d", "j"), None);
    }
}
