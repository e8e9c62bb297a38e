//! The disruption controller: keeps each PodDisruptionBudget's status, which the
//! eviction API (`pods/eviction`, `kubectl drain`) spends: how many of the pods it
//! selects are healthy (`currentHealthy`: Ready and not terminating), how many must be
//! (`desiredHealthy`, from `minAvailable` or `maxUnavailable`, an int or a percentage
//! of `expectedPods`), hence `disruptionsAllowed`, with `observedGeneration` and the
//! `DisruptionAllowed` condition. Pods the API server noted in `disruptedPods` (evicted
//! but not yet terminating) count as unhealthy; the note is dropped once the pod is
//! terminating or gone, or after `DISRUPTION_TIMEOUT`.
//!
//! It must not write anything but PodDisruptionBudget status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_api::reflector::{self, Cache, Change};
use skiff_api::selector::LabelSelector;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{ListParams, ObjectKey};

use super::Context;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("updating the status of PodDisruptionBudget {key} failed: {source}")]
    Status {
        key: String,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long an evicted pod that has not started terminating counts as disrupted.
const DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `v` of `total`: an int as is, a percentage rounded up (as upstream's
/// `GetScaledValueFromIntOrPercent(..., roundUp=true)`).
fn scaled(v: &IntOrString, total: i32) -> i32 {
    match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((pct * i64::from(total) + 99) / 100) as i32
        }
    }
}

/// The status `pdb` should have, given the pods of its namespace and the time `now`.
pub fn status(pdb: &PodDisruptionBudget, pods: &[Arc<Pod>], now: jiff::Timestamp) -> PodDisruptionBudgetStatus {
    let spec = pdb.spec.clone().unwrap_or_default();
    let selector = spec.selector.as_ref().and_then(|s| serde_json::to_value(s).ok());
    let selector = selector.as_ref().and_then(|s| LabelSelector::from_json(s).ok());
    let old = pdb.status.clone().unwrap_or_default();
    let selected: Vec<&Pod> = match &selector {
        // An empty selector selects nothing for a policy/v1 budget written that way.
        Some(sel) if !sel.is_empty() => pods
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| sel.matches(&skiff_api::client::labels_of(&p.metadata)))
            .collect(),
        _ => Vec::new(),
    };
    // Notes of evictions still in flight: the pod exists, is not terminating yet, and
    // the note is recent.
    let mut disrupted = BTreeMap::new();
    for (name, at) in old.disrupted_pods.clone().unwrap_or_default() {
        let pending = selected
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(name.as_str()) && p.metadata.deletion_timestamp.is_none());
        let fresh = now.duration_since(at.0).as_secs_f64() < DISRUPTION_TIMEOUT.as_secs_f64();
        if pending && fresh {
            disrupted.insert(name, at);
        }
    }
    let healthy = selected
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && is_ready(p)
                && !p.metadata.name.as_ref().is_some_and(|n| disrupted.contains_key(n))
        })
        .count() as i32;
    let expected = selected.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count() as i32;
    let desired = match (&spec.min_available, &spec.max_unavailable) {
        (Some(min), _) => scaled(min, expected),
        (None, Some(max)) => (expected - scaled(max, expected)).max(0),
        (None, None) => 0,
    };
    let allowed = (healthy - desired).max(0);
    let (cond_status, reason) = if allowed > 0 { ("True", "SufficientPods") } else { ("False", "InsufficientPods") };
    let previous = old.conditions.as_ref().and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionAllowed"));
    let transition = match previous {
        Some(c) if c.status == cond_status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    PodDisruptionBudgetStatus {
        current_healthy: healthy,
        desired_healthy: desired,
        expected_pods: expected,
        disruptions_allowed: allowed,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: pdb.metadata.generation,
        conditions: Some(vec![Condition {
            type_: "DisruptionAllowed".into(),
            status: cond_status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: pdb.metadata.generation,
            last_transition_time: transition,
        }]),
    }
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    let (budgets, reflect) =
        reflector::reflector::<PodDisruptionBudget>(ctx.client.clone(), None, ListParams::default());
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let feeder = {
        let (ctx, queue, budgets) = (ctx.clone(), queue.clone(), budgets.clone());
        async move {
            budgets.wait_synced().await;
            ctx.informers.pods.wait_synced().await;
            for b in budgets.list() {
                queue.add(ObjectKey::of(b.as_ref()));
            }
            let mut pods = ctx.informers.pods.subscribe();
            let mut changes = budgets.subscribe();
            loop {
                tokio::select! {
                    Some(c) = changes.recv() => if let Change::Applied(b) = c {
                        queue.add(ObjectKey::of(b.as_ref()));
                    },
                    Some(c) = pods.recv() => {
                        let (Change::Applied(p) | Change::Deleted(p)) = c;
                        let ns = p.metadata.namespace.as_deref();
                        for b in budgets.list().iter().filter(|b| b.metadata.namespace.as_deref() == ns) {
                            queue.add(ObjectKey::of(b.as_ref()));
                        }
                    }
                    else => return,
                }
            }
        }
    };
    let workers = run_workers("disruption", queue, 1, move |key: ObjectKey| {
        let (ctx, budgets) = (ctx.clone(), budgets.clone());
        async move { reconcile(&ctx, &budgets, &key).await }
    });
    tokio::join!(reflect, feeder, workers);
}

async fn reconcile(ctx: &Context, budgets: &Cache<PodDisruptionBudget>, key: &ObjectKey) -> Result<Action> {
    let Some(pdb) = budgets.get_named(key.ns(), &key.name) else { return Ok(Action::Done) };
    let pods: Vec<Arc<Pod>> =
        ctx.informers.pods.list().into_iter().filter(|p| p.metadata.namespace == pdb.metadata.namespace).collect();
    let new = status(&pdb, &pods, jiff::Timestamp::now());
    // Notes of evictions expire; look again then.
    let action = if new.disrupted_pods.is_some() { Action::RequeueAfter(Duration::from_secs(5)) } else { Action::Done };
    if pdb.status.as_ref() == Some(&new) {
        return Ok(action);
    }
    let updated = PodDisruptionBudget { status: Some(new), ..(*pdb).clone() };
    match ctx.client.replace_status(key.ns(), &key.name, &updated).await {
        Ok(_) => Ok(action),
        // An eviction spent a disruption meanwhile: recompute from the newer object.
        Err(e) if e.is_conflict() => Ok(Action::RequeueAfter(Duration::from_millis(100))),
        Err(e) if e.is_not_found() => Ok(Action::Done),
        Err(source) => Err(Error::Status { key: key.to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "d", "labels": {"app": "web"}},
                "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .unwrap(),
        )
    }

    fn pdb(spec: serde_json::Value) -> PodDisruptionBudget {
        let mut spec = spec;
        spec["selector"] = serde_json::json!({"matchLabels": {"app": "web"}});
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": "b", "namespace": "d", "generation": 3}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn budgets_from_min_available_and_max_unavailable() {
        let pods = vec![pod("a", true), pod("b", true), pod("c", false)];
        let now = jiff::Timestamp::now();
        let s = status(&pdb(serde_json::json!({"minAvailable": 2})), &pods, now);
        assert_eq!((s.current_healthy, s.desired_healthy, s.expected_pods, s.disruptions_allowed), (2, 2, 3, 0));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.conditions.as_ref().unwrap()[0].reason, "InsufficientPods");
        let s = status(&pdb(serde_json::json!({"minAvailable": 1})), &pods, now);
        assert_eq!(s.disruptions_allowed, 1);
        let s = status(&pdb(serde_json::json!({"maxUnavailable": "50%"})), &pods, now);
        // 50% of 3 rounds up to 2 unavailable: 1 must stay healthy.
        assert_eq!((s.desired_healthy, s.disruptions_allowed), (1, 1));
        let s = status(&pdb(serde_json::json!({"minAvailable": "100%"})), &pods, now);
        assert_eq!((s.desired_healthy, s.disruptions_allowed), (3, 0));
    }

    #[test]
    fn evicted_pods_count_as_disrupted_until_terminating() {
        let pods = vec![pod("a", true), pod("b", true)];
        let now = jiff::Timestamp::now();
        let mut b = pdb(serde_json::json!({"minAvailable": 1}));
        b.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some(BTreeMap::from([("a".to_string(), Time(now))])),
            ..Default::default()
        });
        let s = status(&b, &pods, now);
        assert_eq!((s.current_healthy, s.disruptions_allowed), (1, 0));
        assert!(s.disrupted_pods.is_some());
        let s = status(&b, &pods[1..], now);
        assert_eq!(s.disrupted_pods, None, "the evicted pod is gone: its note goes");
    }
}
