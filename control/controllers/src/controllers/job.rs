//! The Job controller (NonIndexed completion mode): runs pods from the template until
//! `completions` of them succeeded, at most `parallelism` at a time, and marks the Job
//! Complete (with SuccessCriteriaMet), or Failed when more pods failed than
//! `backoffLimit` (BackoffLimitExceeded) or it ran longer than `activeDeadlineSeconds`
//! (DeadlineExceeded). `suspend` removes the active pods until resumed;
//! `ttlSecondsAfterFinished` deletes a finished Job (its pods follow through the
//! garbage collector).
//!
//! Simplifications against upstream, on purpose:
//! - Pods are counted from the pod cache, not tracked with the
//!   `batch.kubernetes.io/job-tracking` finalizer; finished pods are kept, and the
//!   succeeded/failed counts never go down, so deleting finished pods by hand cannot
//!   undo progress (but pods deleted before they were seen are not counted).
//! - With restartPolicy OnFailure, container restarts count as failures towards
//!   backoffLimit, as upstream. A failed pod is replaced after 10 s doubling per
//!   failure (at most 6 min), counted from the latest pod failure.
//! - Indexed completion mode, podFailurePolicy, successPolicy and
//!   podReplacementPolicy are not implemented.
//!
//! It must only write pods it controls and the Job's status (and delete the Job when
//! its TTL runs out). The accounting (`count`, `decide`) is pure, for unit tests.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::json;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{ObjectKey, Patch};

use super::Context;
use super::owned_pods::{self, PodExpectations};
use crate::events::EventType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} for Job {job} failed: {source}")]
    Api {
        action: &'static str,
        job: ObjectKey,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the Job's pods add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Not finished and not being deleted.
    pub active: i32,
    pub ready: i32,
    pub succeeded: i32,
    /// Failed pods, plus container restarts under restartPolicy OnFailure.
    pub failed: i32,
    pub terminating: i32,
}

/// Counts the pods; succeeded/failed never drop below what the status already says.
pub fn count(pods: &[Arc<Pod>], previous: Option<&JobStatus>) -> Counts {
    let mut c = Counts::default();
    for p in pods {
        match owned_pods::phase(p) {
            "Succeeded" => c.succeeded += 1,
            "Failed" => c.failed += 1,
            _ if owned_pods::is_terminating(p) => c.terminating += 1,
            _ => {
                c.active += 1;
                if owned_pods::is_ready(p) {
                    c.ready += 1;
                }
                if p.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("OnFailure") {
                    let restarts: i32 = p
                        .status
                        .iter()
                        .flat_map(|s| s.container_statuses.iter().flatten())
                        .map(|cs| cs.restart_count)
                        .sum();
                    c.failed += restarts;
                }
            }
        }
    }
    if let Some(s) = previous {
        c.succeeded = c.succeeded.max(s.succeeded.unwrap_or(0));
        c.failed = c.failed.max(s.failed.unwrap_or(0));
    }
    c
}

/// What the Job should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep this many pods active (create or delete the difference).
    Run {
        want_active: i32,
    },
    /// Every active pod goes; the Job stays unfinished.
    Suspend,
    Complete,
    Fail {
        reason: &'static str,
        message: String,
    },
}

/// The pure part of a sync: from the spec, the counts and how long the Job has been
/// running, what it should do.
pub fn decide(job: &Job, c: &Counts, running_for: Option<i64>) -> Decision {
    let spec = job.spec.clone().unwrap_or_default();
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    if c.failed > spec.backoff_limit.unwrap_or(6) {
        return Decision::Fail {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit".into(),
        };
    }
    if let (Some(limit), Some(ran)) = (spec.active_deadline_seconds, running_for)
        && ran >= limit
    {
        return Decision::Fail {
            reason: "DeadlineExceeded",
            message: "Job was active longer than specified deadline".into(),
        };
    }
    match spec.completions {
        Some(n) if c.succeeded >= n => return Decision::Complete,
        // Without completions, the first success means the work is done once the
        // others have finished too.
        None if c.succeeded > 0 && c.active == 0 => return Decision::Complete,
        _ => {}
    }
    if spec.suspend == Some(true) {
        return Decision::Suspend;
    }
    let want_active = match spec.completions {
        Some(n) => parallelism.min(n - c.succeeded),
        None if c.succeeded > 0 => 0,
        None => parallelism,
    };
    Decision::Run { want_active: want_active.max(0) }
}

pub fn has_condition(status: Option<&JobStatus>, type_: &str) -> bool {
    status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Finished: Complete or Failed.
pub fn is_finished(job: &Job) -> bool {
    has_condition(job.status.as_ref(), "Complete") || has_condition(job.status.as_ref(), "Failed")
}

/// When a failed pod failed (unix seconds): its containers' latest finish, else when it
/// stopped being ready, else its creation.
fn failed_at(p: &Pod) -> i64 {
    let st = p.status.as_ref();
    let finished = st
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0.as_second())
        .max();
    let unready = || {
        st?.conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")?
            .last_transition_time
            .as_ref()
            .map(|t| t.0.as_second())
    };
    finished.or_else(unready).or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second())).unwrap_or(0)
}

/// How long to wait before replacing failed pods: 10 s doubling per failure, at most
/// 6 min, from the latest failure; `None` when no wait is due.
pub fn backoff_remaining(pods: &[Arc<Pod>], failed: i32, now: i64) -> Option<Duration> {
    if failed <= 0 {
        return None;
    }
    let last = pods.iter().filter(|p| owned_pods::phase(p) == "Failed").map(|p| failed_at(p)).max()?;
    let delay = (10i64 << (failed - 1).min(6)).min(360);
    let left = last + delay - now;
    (left > 0).then(|| Duration::from_secs(left as u64))
}

/// When the Job finished (unix seconds): its completionTime or the Failed condition's
/// transition.
fn finished_at(job: &Job) -> Option<i64> {
    let st = job.status.as_ref()?;
    if let Some(t) = &st.completion_time {
        return Some(t.0.as_second());
    }
    st.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second())
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, now: &Time) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
        message: Some(message.into()).filter(|m: &String| !m.is_empty()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Sets a condition, keeping the transition time when its status does not change.
fn set_condition(conds: &mut Vec<JobCondition>, new: JobCondition) {
    match conds.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) if c.status == new.status => {}
        Some(c) => *c = new,
        None => conds.push(new),
    }
}

fn new_pod(job: &Job) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let tmeta = spec.template.metadata.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let mut labels = tmeta.labels.clone().unwrap_or_default();
    for (k, v) in [
        ("controller-uid", &uid),
        ("batch.kubernetes.io/controller-uid", &uid),
        ("job-name", &name),
        ("batch.kubernetes.io/job-name", &name),
    ] {
        labels.insert(k.to_string(), v.clone());
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations.clone(),
            owner_references: Some(vec![owned_pods::controller_ref(job)]),
            ..Default::default()
        },
        spec: spec.template.spec.clone(),
        status: None,
    }
}

/// Entry point (see `CONTROLLERS`).
pub async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let exp = Arc::new(PodExpectations::default());
    let q = queue.clone();
    let mut job_rx = ctx.informers.jobs.subscribe();
    let mut pod_rx = ctx.informers.pods.subscribe();
    let feeder = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(ch) = job_rx.recv() => {
                    let (Change::Applied(j) | Change::Deleted(j)) = ch;
                    q.add(ObjectKey::of(j.as_ref()));
                }
                Some(ch) = pod_rx.recv() => {
                    let (Change::Applied(p) | Change::Deleted(p)) = ch;
                    if let Some(o) = p.metadata.owner_references.iter().flatten()
                        .find(|o| o.controller == Some(true) && o.kind == "Job")
                    {
                        q.add(ObjectKey::new(p.metadata.namespace.as_deref(), &o.name));
                    }
                }
                else => return,
            }
        }
    });
    run_workers("job", queue, 2, move |key| {
        let (ctx, exp) = (ctx.clone(), exp.clone());
        async move { reconcile(&ctx, &exp, key).await }
    })
    .await;
    feeder.abort();
}

async fn reconcile(ctx: &Context, exp: &PodExpectations, key: ObjectKey) -> Result<Action> {
    let Some(job) = ctx.informers.jobs.get(&key) else { return Ok(Action::Done) };
    let ns = key.ns().unwrap_or("default").to_string();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let err = |action: &'static str| {
        let job = key.clone();
        move |source| Error::Api { action, job, source }
    };
    if job.metadata.deletion_timestamp.is_some() {
        exp.forget(&uid);
        return Ok(Action::Done);
    }
    let now = jiff::Timestamp::now();
    let now_s = now.as_second();
    if is_finished(&job) {
        return ttl(ctx, &job, &key, &uid, now_s).await;
    }
    let pods = owned_pods::controlled_by(&ctx.informers.pods, &ns, "Job", &uid);
    if !exp.satisfied(&uid, &ns, &ctx.informers.pods) {
        // Our last writes are not in the cache yet; their events bring us back.
        return Ok(Action::Done);
    }
    let prev = job.status.clone().unwrap_or_default();
    let counts = count(&pods, Some(&prev));
    let suspended = job.spec.as_ref().and_then(|s| s.suspend) == Some(true);
    let start = prev.start_time.clone().or_else(|| (!suspended).then_some(Time(now)));
    let running_for = start.as_ref().map(|t| now_s - t.0.as_second());
    let decision = decide(&job, &counts, running_for);
    let mut active: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| !owned_pods::is_terminating(p) && !matches!(owned_pods::phase(p), "Succeeded" | "Failed"))
        .collect();
    let want = match &decision {
        Decision::Run { want_active } => *want_active,
        _ => 0,
    };
    // Too many: the newest go first (they have done the least work).
    active.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)));
    let excess = (active.len() as i32 - want).max(0) as usize;
    for p in active.iter().take(excess) {
        let (name, puid) = (p.metadata.name.clone().unwrap_or_default(), p.metadata.uid.clone().unwrap_or_default());
        ctx.client
            .delete::<Pod>(Some(&ns), &name, Some(&json!({"preconditions": {"uid": puid}})))
            .await
            .map_err(err("deleting a pod"))?;
        exp.deleted(&uid, &puid);
        tracing::info!(job = %key, pod = %name, "deleted job pod");
    }
    let missing = (want - active.len() as i32).max(0);
    let backoff = if missing > 0 { backoff_remaining(&pods, counts.failed, now_s) } else { None };
    if let Some(wait) = backoff {
        tracing::debug!(job = %key, failed = counts.failed, wait_s = wait.as_secs(), "replacing failed pods after backoff");
    }
    let creating = if backoff.is_some() { 0 } else { missing };
    for _ in 0..creating {
        let created = ctx.client.create(Some(&ns), &new_pod(&job)).await.map_err(err("creating a pod"))?;
        let name = created.metadata.name.clone().unwrap_or_default();
        exp.created(&uid, &name);
        tracing::info!(job = %key, pod = %name, "created job pod");
        ctx.events.record(job.as_ref(), EventType::Normal, "SuccessfulCreate", &format!("Created pod: {name}")).await;
    }

    let t = Time(now);
    let mut status = prev.clone();
    let mut conds = prev.conditions.clone().unwrap_or_default();
    // Pods just created count as active; pods just deleted as terminating.
    status.active = Some(active.len() as i32 - excess as i32 + creating);
    status.start_time = start;
    status.ready = Some(counts.ready);
    status.succeeded = Some(counts.succeeded);
    status.failed = Some(counts.failed);
    status.terminating = Some(counts.terminating + excess as i32);
    match &decision {
        Decision::Complete => {
            set_condition(
                &mut conds,
                condition(
                    "SuccessCriteriaMet",
                    true,
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    &t,
                ),
            );
            set_condition(
                &mut conds,
                condition("Complete", true, "CompletionsReached", "Reached expected number of succeeded pods", &t),
            );
            status.completion_time = Some(t.clone());
            tracing::info!(job = %key, succeeded = counts.succeeded, "job complete");
            ctx.events.record(job.as_ref(), EventType::Normal, "Completed", "Job completed").await;
        }
        Decision::Fail { reason, message } => {
            set_condition(&mut conds, condition("FailureTarget", true, reason, message, &t));
            set_condition(&mut conds, condition("Failed", true, reason, message, &t));
            tracing::info!(job = %key, reason, failed = counts.failed, "job failed");
            ctx.events.record(job.as_ref(), EventType::Warning, reason, message).await;
        }
        Decision::Suspend => {
            set_condition(&mut conds, condition("Suspended", true, "JobSuspended", "Job suspended", &t));
            // The deadline counts from the latest resume, as upstream.
            status.start_time = None;
        }
        Decision::Run { .. } => {
            if conds.iter().any(|c| c.type_ == "Suspended" && c.status == "True") {
                set_condition(&mut conds, condition("Suspended", false, "JobResumed", "Job resumed", &t));
            }
        }
    }
    status.conditions = Some(conds).filter(|c| !c.is_empty());
    if job.status.as_ref() != Some(&status) {
        let mut body = json!({"status": status});
        if status.start_time.is_none() {
            // A merge patch keeps fields it does not mention; clearing needs a null.
            body["status"]["startTime"] = serde_json::Value::Null;
        }
        let patch = Patch::Merge(body);
        ctx.client
            .patch::<Job>(Some(&ns), &key.name, Some("status"), &patch)
            .await
            .map_err(err("updating the status"))?;
    }
    let spec = job.spec.clone().unwrap_or_default();
    Ok(match (&decision, spec.active_deadline_seconds, running_for) {
        (Decision::Run { .. }, Some(limit), Some(ran)) => {
            let deadline = Duration::from_secs((limit - ran).max(1) as u64);
            Action::RequeueAfter(backoff.map_or(deadline, |b| b.min(deadline)))
        }
        (Decision::Run { .. }, _, _) if backoff.is_some() => Action::RequeueAfter(backoff.unwrap_or_default()),
        (Decision::Complete | Decision::Fail { .. }, _, _) if spec.ttl_seconds_after_finished.is_some() => {
            Action::RequeueAfter(Duration::from_secs(spec.ttl_seconds_after_finished.unwrap_or(0).max(0) as u64))
        }
        _ => Action::Done,
    })
}

/// Deletes a finished Job once `ttlSecondsAfterFinished` has passed since it finished.
async fn ttl(ctx: &Context, job: &Job, key: &ObjectKey, uid: &str, now: i64) -> Result<Action> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else { return Ok(Action::Done) };
    let Some(at) = finished_at(job).map(|f| f + i64::from(ttl)) else { return Ok(Action::Done) };
    if at > now {
        return Ok(Action::RequeueAfter(Duration::from_secs((at - now) as u64)));
    }
    tracing::info!(job = %key, ttl, "deleting finished job after its TTL");
    ctx.client
        .delete::<Job>(
            key.ns(),
            &key.name,
            Some(&json!({"preconditions": {"uid": uid}, "propagationPolicy": "Background"})),
        )
        .await
        .map_err(|source| Error::Api { action: "deleting the finished job", job: key.clone(), source })?;
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodSpec, PodStatus};

    use super::*;

    fn job(completions: Option<i32>, parallelism: i32, backoff: i32) -> Job {
        Job {
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                backoff_limit: Some(backoff),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(phase: &str, restart_policy: &str, restarts: i32) -> Arc<Pod> {
        Arc::new(Pod {
            spec: Some(PodSpec { restart_policy: Some(restart_policy.into()), ..Default::default() }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus { restart_count: restarts, ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn counting_pods() {
        let pods = vec![
            pod("Succeeded", "Never", 0),
            pod("Failed", "Never", 0),
            pod("Running", "Never", 0),
            pod("Running", "OnFailure", 2),
        ];
        let c = count(&pods, None);
        assert_eq!(c, Counts { active: 2, ready: 0, succeeded: 1, failed: 3, terminating: 0 });
        // Counts never go down when finished pods are removed.
        let prev = JobStatus { succeeded: Some(4), failed: Some(1), ..Default::default() };
        let c = count(&pods, Some(&prev));
        assert_eq!((c.succeeded, c.failed), (4, 3));
    }

    #[test]
    fn parallelism_and_completions() {
        let j = job(Some(3), 2, 6);
        let c = |succeeded, active| Counts { succeeded, active, ..Default::default() };
        assert_eq!(decide(&j, &c(0, 0), Some(0)), Decision::Run { want_active: 2 });
        assert_eq!(decide(&j, &c(2, 1), Some(0)), Decision::Run { want_active: 1 });
        assert_eq!(decide(&j, &c(3, 0), Some(0)), Decision::Complete);
        let open = job(None, 2, 6);
        assert_eq!(decide(&open, &c(0, 0), None), Decision::Run { want_active: 2 });
        assert_eq!(decide(&open, &c(1, 1), None), Decision::Run { want_active: 0 });
        assert_eq!(decide(&open, &c(1, 0), None), Decision::Complete);
    }

    #[test]
    fn failure_reasons() {
        let j = job(Some(1), 1, 1);
        let failed = |n| Counts { failed: n, ..Default::default() };
        assert_eq!(decide(&j, &failed(1), Some(0)), Decision::Run { want_active: 1 });
        assert!(matches!(decide(&j, &failed(2), Some(0)), Decision::Fail { reason: "BackoffLimitExceeded", .. }));
        let mut d = job(Some(1), 1, 6);
        d.spec.as_mut().unwrap().active_deadline_seconds = Some(10);
        assert_eq!(decide(&d, &failed(0), Some(9)), Decision::Run { want_active: 1 });
        assert!(matches!(decide(&d, &failed(0), Some(10)), Decision::Fail { reason: "DeadlineExceeded", .. }));
        let mut s = job(Some(1), 1, 6);
        s.spec.as_mut().unwrap().suspend = Some(true);
        assert_eq!(decide(&s, &failed(0), None), Decision::Suspend);
    }

    #[test]
    fn failed_pods_are_replaced_after_a_backoff() {
        let failed_at = |secs: i64| {
            let mut p = (*pod("Failed", "Never", 0)).clone();
            p.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(secs).unwrap()));
            Arc::new(p)
        };
        assert_eq!(backoff_remaining(&[], 0, 100), None);
        assert_eq!(backoff_remaining(&[failed_at(100)], 1, 104), Some(Duration::from_secs(6)));
        assert_eq!(backoff_remaining(&[failed_at(100)], 1, 110), None);
        // Doubling per failure, from the latest one.
        assert_eq!(backoff_remaining(&[failed_at(50), failed_at(100)], 2, 100), Some(Duration::from_secs(20)));
        assert_eq!(backoff_remaining(&[failed_at(100)], 30, 100), Some(Duration::from_secs(360)));
    }

    #[test]
    fn conditions_keep_transition_time() {
        let t0 = Time(jiff::Timestamp::UNIX_EPOCH);
        let t1 = Time(jiff::Timestamp::from_second(100).unwrap());
        let mut conds = vec![condition("Suspended", true, "JobSuspended", "", &t0)];
        set_condition(&mut conds, condition("Suspended", true, "JobSuspended", "", &t1));
        assert_eq!(conds[0].last_transition_time, Some(t0));
        set_condition(&mut conds, condition("Suspended", false, "JobResumed", "", &t1));
        assert_eq!(conds[0].last_transition_time, Some(t1));
    }
}
