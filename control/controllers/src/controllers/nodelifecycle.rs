//! The node lifecycle controller: notices nodes that stopped sending heartbeats, marks
//! them (Ready=Unknown, `node.kubernetes.io/unreachable` taints), marks their pods not
//! ready so traffic leaves them, and after a timeout evicts their pods so their
//! controllers recreate them elsewhere. A node that reports `Ready=False` gets the
//! `node.kubernetes.io/not-ready` taints instead. Taints go when the node is back.
//!
//! A heartbeat is the node's Lease `kube-node-lease/<node>` (its `renewTime`), or the
//! Ready condition's `lastHeartbeatTime` for nodes without a Lease. A node is stale when
//! its heartbeat is older than `node_monitor_grace_period` *and* we have not seen it
//! change for that long: the second test keeps a node whose clock lags ours from being
//! marked while it is alive, and gives every node a full grace period after this
//! replica starts leading (as upstream, which judges by its own clock only).
//!
//! Eviction follows taint-based eviction with Kubernetes' default tolerations: a pod
//! tolerating the NoExecute taint for N seconds goes N seconds after the taint was
//! added; one tolerating it without a limit stays; any other pod goes after
//! `pod_eviction_timeout` (what the DefaultTolerationSeconds admission would give it).
//!
//! It must not manage NoExecute taints other than its own two, post a node's Ready
//! condition as True on the kubelet's behalf (except to undo its own Unknown once the
//! Lease is renewed again, see `restore`), or delete pods of a node that is Ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};

use super::Context;
use crate::events::EventType;
use crate::helpers::taints::tolerates;

/// Where nodes keep their heartbeat Leases.
pub use crate::informers::NODE_LEASE_NAMESPACE as LEASE_NAMESPACE;
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
pub const REASON_UNKNOWN: &str = "NodeStatusUnknown";
pub const MESSAGE_UNKNOWN: &str = "Kubelet stopped posting node status.";
pub const REASON_NEVER_UPDATED: &str = "NodeStatusNeverUpdated";
pub const MESSAGE_NEVER_UPDATED: &str = "Kubelet never posted node status.";
/// Conditions that become Unknown with Ready when the kubelet goes silent (upstream's list).
const MONITORED: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {what} failed: {source}")]
    Api {
        action: &'static str,
        what: String,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn api_err(action: &'static str, what: String) -> impl FnOnce(skiff_api::client::Error) -> Error {
    move |source| Error::Api { action, what, source }
}

fn micros(t: &Timestamp) -> i64 {
    t.as_microsecond()
}

fn dur_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

/// The node's last heartbeat in µs since the epoch: the Lease's renewTime, else the
/// Ready condition's lastHeartbeatTime, else the node's creation (so a node that never
/// reported gets one grace period from registration).
pub fn heartbeat_us(node: &Node, lease: Option<&Lease>) -> Option<i64> {
    if let Some(t) = lease.and_then(|l| l.spec.as_ref()).and_then(|s| s.renew_time.as_ref()) {
        return Some(micros(&t.0));
    }
    if let Some(t) = ready_condition(node).and_then(|c| c.last_heartbeat_time.as_ref()) {
        return Some(micros(&t.0));
    }
    node.metadata.creation_timestamp.as_ref().map(|t| micros(&t.0))
}

/// Whether the node is stale: its heartbeat is older than `grace` and we have not seen
/// it change for `grace` either (`observed_for`: how long we have seen this value).
pub fn is_stale(heartbeat_us: Option<i64>, now_us: i64, observed_for: Duration, grace: Duration) -> bool {
    let old = heartbeat_us.is_none_or(|h| now_us.saturating_sub(h) > dur_us(grace));
    old && observed_for > grace
}

/// How long until a node that is fresh now would turn stale.
pub fn until_stale(heartbeat_us: Option<i64>, now_us: i64, observed_for: Duration, grace: Duration) -> Duration {
    let by_time = heartbeat_us
        .map(|h| h.saturating_add(dur_us(grace)).saturating_sub(now_us).max(0) as u64)
        .map(Duration::from_micros)
        .unwrap_or_default();
    let by_observation = grace.saturating_sub(observed_for);
    by_time.max(by_observation)
}

/// The conditions a stale node should have: the monitored ones Unknown (Ready added
/// if it never reported). `None` when they already are.
pub fn stale_conditions(node: &Node, now: Timestamp) -> Option<Vec<NodeCondition>> {
    let mut conds = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let mut changed = false;
    if !conds.iter().any(|c| c.type_ == "Ready") {
        conds.push(NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            reason: Some(REASON_NEVER_UPDATED.into()),
            message: Some(MESSAGE_NEVER_UPDATED.into()),
            last_transition_time: Some(Time(now)),
            last_heartbeat_time: None,
        });
        changed = true;
    }
    for c in conds.iter_mut().filter(|c| MONITORED.contains(&c.type_.as_str()) && c.status != "Unknown") {
        c.status = "Unknown".into();
        c.reason = Some(REASON_UNKNOWN.into());
        c.message = Some(MESSAGE_UNKNOWN.into());
        c.last_transition_time = Some(Time(now));
        changed = true;
    }
    changed.then_some(conds)
}

/// Whether a taint is one of the two this controller manages.
fn ours(t: &Taint) -> bool {
    t.key == UNREACHABLE_TAINT || t.key == NOT_READY_TAINT
}

/// The node's taints with ours matching its Ready status (`Unknown` → unreachable,
/// `False` → not-ready, `True` → neither). Taints that stay keep their `timeAdded`, so
/// eviction clocks do not restart. `None` when nothing changes.
pub fn desired_taints(current: &[Taint], ready: &str, now: Timestamp) -> Option<Vec<Taint>> {
    let key = match ready {
        "Unknown" => Some(UNREACHABLE_TAINT),
        "False" => Some(NOT_READY_TAINT),
        _ => None,
    };
    let mut out: Vec<Taint> = current.iter().filter(|t| !ours(t) || Some(t.key.as_str()) == key).cloned().collect();
    if let Some(key) = key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out.iter().any(|t| t.key == key && t.effect == effect) {
                out.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    value: None,
                    // Eviction counts from the NoExecute taint's timeAdded, as upstream.
                    time_added: (effect == "NoExecute").then_some(Time(now)),
                });
            }
        }
    }
    (out != current).then_some(out)
}

/// When a pod on a node with these taints is to be evicted (µs since the epoch), or
/// `None` if it may stay (it tolerates every lifecycle NoExecute taint forever, or there
/// is none).
pub fn eviction_deadline_us(pod: &Pod, taints: &[Taint], default_timeout: Duration, now_us: i64) -> Option<i64> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    let mut deadline: Option<i64> = None;
    for taint in taints.iter().filter(|t| ours(t) && t.effect == "NoExecute") {
        let added = taint.time_added.as_ref().map(|t| micros(&t.0)).unwrap_or(now_us);
        let matching: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let limit_us = if matching.is_empty() {
            dur_us(default_timeout)
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        } else {
            let secs = matching.iter().filter_map(|t| t.toleration_seconds).min().unwrap_or(0).max(0);
            secs.saturating_mul(1_000_000)
        };
        let at = added.saturating_add(limit_us);
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    deadline
}

/// A pod's conditions with Ready set False; `None` if it already is.
pub fn pod_not_ready_conditions(pod: &Pod, now: Timestamp) -> Option<Vec<PodCondition>> {
    let mut conds = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let c = conds.iter_mut().find(|c| c.type_ == "Ready")?;
    if c.status == "False" {
        return None;
    }
    c.status = "False".into();
    c.reason = Some("NodeNotReady".into());
    c.last_transition_time = Some(Time(now));
    Some(conds)
}

/// What we remember per node between reconciles.
#[derive(Debug)]
struct Seen {
    heartbeat_us: Option<i64>,
    since: Instant,
    /// The Ready condition we replaced with Unknown, to put back if the Lease is renewed
    /// before the kubelet posts its status again.
    replaced_ready: Option<NodeCondition>,
    /// The Ready status at the last reconcile, to record transitions as events.
    last_ready: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    seen: Mutex<HashMap<String, Seen>>,
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<String> = WorkQueue::new();
    let feeder = {
        let (ctx, queue) = (ctx.clone(), queue.clone());
        async move {
            let inf = &ctx.informers;
            let mut nodes = inf.nodes.subscribe();
            let mut leases = inf.node_leases.subscribe();
            let mut pods = inf.pods.subscribe();
            loop {
                tokio::select! {
                    Some(c) = nodes.recv() => {
                        let (Change::Applied(n) | Change::Deleted(n)) = c;
                        queue.add(n.metadata.name.clone().unwrap_or_default());
                    }
                    Some(c) = leases.recv() => {
                        let (Change::Applied(l) | Change::Deleted(l)) = c;
                        queue.add(l.metadata.name.clone().unwrap_or_default());
                    }
                    Some(c) = pods.recv() => {
                        // A pod landing on a node that is not ready needs an eviction clock.
                        if let Change::Applied(p) = c
                            && let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                            && inf.nodes.get_named(None, node).is_some_and(|n| {
                                ready_condition(&n).is_some_and(|c| c.status != "True")
                            })
                        {
                            queue.add(node.to_string());
                        }
                    }
                    else => return,
                }
            }
        }
    };
    let state = Arc::new(State::default());
    let workers = run_workers("nodelifecycle", queue, 2, move |name: String| {
        let (ctx, state) = (ctx.clone(), state.clone());
        async move { reconcile(&ctx, &state, &name).await }
    });
    tokio::join!(feeder, workers);
}

/// One node, in steps:
/// 1. judge staleness from the heartbeat (Lease or Ready condition);
/// 2. stale: set the monitored conditions Unknown (event NodeNotReady); fresh again
///    with our Unknown still there: put back the Ready condition we replaced;
/// 3. make our taints match the Ready status;
/// 4. Ready Unknown: set the node's pods' Ready condition False;
/// 5. not Ready: evict pods whose toleration of our NoExecute taint has run out;
/// 6. come back when the node would turn stale or the next pod is due.
async fn reconcile(ctx: &Context, state: &State, name: &str) -> Result<Action> {
    let Some(mut node) = ctx.informers.nodes.get_named(None, name).map(|n| (*n).clone()) else {
        state.seen.lock().unwrap().remove(name);
        return Ok(Action::Done);
    };
    let grace = ctx.config.node_monitor_grace_period;
    let lease = ctx.informers.node_leases.get_named(Some(LEASE_NAMESPACE), name);
    let hb = heartbeat_us(&node, lease.as_deref());
    let now = jiff::Timestamp::now();
    let now_us = micros(&now);

    // Step 1.
    let observed_for = {
        let mut seen = state.seen.lock().unwrap();
        let s = seen.entry(name.to_string()).or_insert(Seen {
            heartbeat_us: hb,
            since: Instant::now(),
            replaced_ready: None,
            last_ready: ready_condition(&node).map(|c| c.status.clone()),
        });
        if s.heartbeat_us != hb {
            s.heartbeat_us = hb;
            s.since = Instant::now();
        }
        s.since.elapsed()
    };
    let stale = is_stale(hb, now_us, observed_for, grace);

    // Step 2.
    let mut new_conditions = None;
    if stale {
        if let Some(conds) = stale_conditions(&node, now) {
            let before = ready_condition(&node).cloned();
            if let Some(b) = before.filter(|b| b.status != "Unknown")
                && let Some(s) = state.seen.lock().unwrap().get_mut(name)
            {
                s.replaced_ready = Some(b);
            }
            new_conditions = Some(conds);
        }
    } else if ready_condition(&node)
        .is_some_and(|c| c.status == "Unknown" && c.reason.as_deref() == Some(REASON_UNKNOWN))
        && lease.is_some()
    {
        new_conditions = restore(&node, state, name, now);
    }
    if let Some(conds) = new_conditions {
        let was_ready = ready_condition(&node).map(|c| c.status.clone());
        node.status.get_or_insert_with(Default::default).conditions = Some(conds);
        node = ctx
            .client
            .replace_status(None, name, &node)
            .await
            .map_err(api_err("updating the status of", format!("node {name}")))?;
        let is_ready = ready_condition(&node).map(|c| c.status.clone());
        tracing::info!(node = name, from = ?was_ready, to = ?is_ready, "node Ready condition changed");
    }
    // Events on every Ready transition we see, whoever wrote it (us or the kubelet).
    let ready_now = ready_condition(&node).map(|c| c.status.clone());
    let ready_before = state.seen.lock().unwrap().get_mut(name).and_then(|s| {
        let before = s.last_ready.clone();
        s.last_ready = ready_now.clone();
        before
    });
    match (ready_before.as_deref(), ready_now.as_deref()) {
        (Some("True"), Some(now)) if now != "True" => {
            let msg = format!("Node {name} status is now: NodeNotReady");
            ctx.events.record(&node, EventType::Normal, "NodeNotReady", &msg).await;
        }
        (Some(before), Some("True")) if before != "True" => {
            let msg = format!("Node {name} status is now: NodeReady");
            ctx.events.record(&node, EventType::Normal, "NodeReady", &msg).await;
        }
        _ => {}
    }

    // Step 3.
    let ready = ready_condition(&node).map(|c| c.status.clone());
    if let Some(ready) = ready.as_deref() {
        let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        if let Some(taints) = desired_taints(&current, ready, now) {
            tracing::info!(node = name, ready, "updating node lifecycle taints");
            node.spec.get_or_insert_with(Default::default).taints = Some(taints).filter(|t| !t.is_empty());
            node = ctx
                .client
                .replace(None, name, &node)
                .await
                .map_err(api_err("updating the taints of", format!("node {name}")))?;
        }
    }

    let mut next = if stale { grace } else { until_stale(hb, now_us, observed_for, grace) + Duration::from_millis(50) };
    if ready.as_deref() == Some("True") || ready.is_none() {
        return Ok(Action::RequeueAfter(next.max(Duration::from_millis(100))));
    }

    // Steps 4 and 5.
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx
        .informers
        .pods
        .list()
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    for pod in &pods {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        if let Some(deadline) = eviction_deadline_us(pod, &taints, ctx.config.pod_eviction_timeout, now_us) {
            if deadline <= now_us {
                tracing::info!(node = name, namespace = %ns, pod = %pod_name, "evicting pod from node that is not ready");
                ctx.events
                    .record(
                        pod.as_ref(),
                        EventType::Normal,
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {ns}/{pod_name}"),
                    )
                    .await;
                ctx.client
                    .delete::<Pod>(Some(&ns), &pod_name, None)
                    .await
                    .map_err(api_err("evicting", format!("pod {ns}/{pod_name}")))?;
                continue;
            }
            next = next.min(Duration::from_micros((deadline - now_us) as u64));
        }
        if ready.as_deref() == Some("Unknown")
            && let Some(conds) = pod_not_ready_conditions(pod, now)
        {
            let mut p = (**pod).clone();
            p.status.get_or_insert_with(Default::default).conditions = Some(conds);
            match ctx.client.replace_status(Some(&ns), &pod_name, &p).await {
                Ok(_) => tracing::info!(node = name, namespace = %ns, pod = %pod_name, "marked pod not ready"),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(api_err("marking not ready", format!("pod {ns}/{pod_name}"))(e)),
            }
        }
    }
    Ok(Action::RequeueAfter(next.max(Duration::from_millis(100))))
}

/// The node's conditions with our Unknown Ready replaced by the one it replaced (the
/// Lease shows the kubelet is alive again; it will post fresher status itself). `None`
/// if we do not remember one (this replica did not write the Unknown): then the
/// kubelet's next status post clears it.
fn restore(node: &Node, state: &State, name: &str, now: Timestamp) -> Option<Vec<NodeCondition>> {
    let prev = state.seen.lock().unwrap().get_mut(name)?.replaced_ready.take()?;
    let mut conds = node.status.as_ref()?.conditions.clone()?;
    let c = conds.iter_mut().find(|c| c.type_ == "Ready")?;
    c.status = prev.status;
    c.reason = prev.reason;
    c.message = prev.message;
    c.last_transition_time = Some(Time(now));
    Some(conds)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeStatus, PodSpec};

    use super::*;

    const S: i64 = 1_000_000;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn staleness_needs_an_old_heartbeat_and_no_recent_change() {
        let grace = Duration::from_secs(40);
        let now = 1_000 * S;
        assert!(!is_stale(Some(now - 10 * S), now, Duration::from_secs(100), grace));
        assert!(is_stale(Some(now - 41 * S), now, Duration::from_secs(41), grace));
        // Old by its clock, but we saw it change recently (clock skew): fresh.
        assert!(!is_stale(Some(now - 100 * S), now, Duration::from_secs(5), grace));
        assert!(is_stale(None, now, Duration::from_secs(41), grace));
        assert_eq!(until_stale(Some(now - 10 * S), now, Duration::from_secs(10), grace), Duration::from_secs(30));
        assert_eq!(until_stale(Some(now - 100 * S), now, Duration::from_secs(10), grace), Duration::from_secs(30));
    }

    #[test]
    fn heartbeat_prefers_the_lease() {
        let mut node = Node::default();
        node.metadata.creation_timestamp = Some(Time(ts(10)));
        assert_eq!(heartbeat_us(&node, None), Some(10 * S));
        node.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_heartbeat_time: Some(Time(ts(20))),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(heartbeat_us(&node, None), Some(20 * S));
        let lease = Lease {
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(ts(30))),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(heartbeat_us(&node, Some(&lease)), Some(30 * S));

        let conds = stale_conditions(&node, ts(100)).unwrap();
        assert_eq!(conds[0].status, "Unknown");
        assert_eq!(conds[0].reason.as_deref(), Some(REASON_UNKNOWN));
        assert_eq!(conds[0].message.as_deref(), Some(MESSAGE_UNKNOWN));
        node.status.as_mut().unwrap().conditions = Some(conds);
        assert!(stale_conditions(&node, ts(101)).is_none(), "already Unknown: no write");
    }

    #[test]
    fn taints_follow_ready() {
        let other = Taint { key: "dedicated".into(), effect: "NoSchedule".into(), ..Default::default() };
        let t = desired_taints(std::slice::from_ref(&other), "Unknown", ts(5)).unwrap();
        let keys: Vec<_> = t.iter().map(|t| (t.key.as_str(), t.effect.as_str())).collect();
        assert_eq!(
            keys,
            vec![("dedicated", "NoSchedule"), (UNREACHABLE_TAINT, "NoSchedule"), (UNREACHABLE_TAINT, "NoExecute")]
        );
        assert_eq!(t[2].time_added, Some(Time(ts(5))));
        assert!(desired_taints(&t, "Unknown", ts(9)).is_none(), "kept taints keep their time");
        let nr = desired_taints(&t, "False", ts(9)).unwrap();
        assert!(nr.iter().all(|t| t.key != UNREACHABLE_TAINT));
        assert_eq!(nr.iter().filter(|t| t.key == NOT_READY_TAINT).count(), 2);
        assert_eq!(desired_taints(&t, "True", ts(9)).unwrap(), vec![other]);
    }

    #[test]
    fn eviction_respects_toleration_seconds() {
        let taints = desired_taints(&[], "Unknown", ts(100)).unwrap();
        let timeout = Duration::from_secs(300);
        let now = 100 * S;
        let mut pod = Pod::default();
        assert_eq!(eviction_deadline_us(&pod, &taints, timeout, now), Some(400 * S));
        let tol = |secs: Option<i64>| Toleration {
            key: Some(UNREACHABLE_TAINT.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            ..Default::default()
        };
        pod.spec = Some(PodSpec { tolerations: Some(vec![tol(Some(30))]), ..Default::default() });
        assert_eq!(eviction_deadline_us(&pod, &taints, timeout, now), Some(130 * S));
        pod.spec = Some(PodSpec { tolerations: Some(vec![tol(None)]), ..Default::default() });
        assert_eq!(eviction_deadline_us(&pod, &taints, timeout, now), None);
        // A toleration of another key does not count.
        let mut other = tol(Some(1));
        other.key = Some(NOT_READY_TAINT.into());
        pod.spec = Some(PodSpec { tolerations: Some(vec![other]), ..Default::default() });
        assert_eq!(eviction_deadline_us(&pod, &taints, timeout, now), Some(400 * S));
        // Tolerate-everything (empty key, Exists) counts.
        let all = Toleration { operator: Some("Exists".into()), ..Default::default() };
        pod.spec = Some(PodSpec { tolerations: Some(vec![all]), ..Default::default() });
        assert_eq!(eviction_deadline_us(&pod, &taints, timeout, now), None);
        // No NoExecute taint: nothing to evict.
        assert_eq!(eviction_deadline_us(&Pod::default(), &[], timeout, now), None);
    }
}
