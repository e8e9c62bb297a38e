//! The CronJob controller: creates a Job from `jobTemplate` at each time of `schedule`
//! (evaluated in `timeZone`, UTC when unset), named `<cronjob>-<scheduled time in
//! minutes since the epoch>` so a time is never run twice, and keeps the status
//! `kubectl get cronjob` shows (`active`, `lastScheduleTime`, `lastSuccessfulTime`).
//!
//! As upstream: a run missed while the controller was away is started late, the most
//! recent one only, unless it is more than `startingDeadlineSeconds` late (then a
//! MissSchedule event); more than 100 missed runs are reported (TooManyMissedTimes).
//! `concurrencyPolicy` Forbid skips a run while a Job is active (it starts once that Job
//! finishes, if still within the deadline), Replace deletes the active Jobs first,
//! Allow runs them side by side. `suspend` starts nothing. Finished Jobs beyond
//! `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` are deleted, oldest first.
//!
//! Simplification against upstream, on purpose: without `timeZone` schedules are read
//! in UTC rather than in the controller's local zone (the same in a container).
//!
//! It must only create and delete Jobs it controls and write the CronJob's status; the
//! decisions (`decide`, `history_victims`) are pure, with the clock passed in.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::json;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{ObjectKey, Patch};

use super::Context;
use super::job::{has_condition, is_finished};
use super::owned_pods;
use crate::events::{EventType, object_ref};
use crate::helpers::cron::{self, Schedule};

const KIND: &str = "CronJob";
/// The annotation with the time a Job was scheduled for (RFC 3339 in the CronJob's zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Missed runs beyond this many are reported.
const TOO_MANY_MISSED: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request about one of its Jobs or its status failed (retried with backoff).
    #[error("{action} for CronJob {cronjob} failed: {source}")]
    Api { cronjob: ObjectKey, action: &'static str, source: skiff_api::client::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An event to record about the CronJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    fn normal(reason: &'static str, message: String) -> Self {
        Self { warning: false, reason, message }
    }
    fn warning(reason: &'static str, message: String) -> Self {
        Self { warning: true, reason, message }
    }
}

/// What to do about the schedule now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Start the run scheduled for this time.
    pub start: Option<Timestamp>,
    /// The latest due run was already started (its Job exists): the time it was for.
    pub started: Option<Timestamp>,
    /// Delete the active Jobs first (Replace).
    pub replace_active: bool,
    pub notes: Vec<Note>,
    /// The next scheduled time, to look again then.
    pub next: Option<Timestamp>,
}

/// The Job name of the run scheduled at `t`.
pub fn job_name(cronjob: &str, t: Timestamp) -> String {
    format!("{cronjob}-{}", t.as_second().div_euclid(60))
}

/// The zone of the CronJob's schedule (`Err`: unknown zone, with the event to record).
pub fn zone_of(cj: &CronJob) -> Result<TimeZone, Note> {
    match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
        None => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name)
            .map_err(|e| Note::warning("UnknownTimeZone", format!("invalid timeZone: {name:?}: {e}"))),
    }
}

/// The pure sync of the schedule at `now`: `active` is how many unfinished Jobs the
/// CronJob has, `exists(name)` whether a Job of that name exists.
pub fn decide(cj: &CronJob, active: usize, exists: impl Fn(&str) -> bool, now: Timestamp) -> Decision {
    let mut d = Decision::default();
    let spec = cj.spec.clone().unwrap_or_default();
    if spec.suspend == Some(true) {
        return d;
    }
    let tz = match zone_of(cj) {
        Ok(tz) => tz,
        Err(note) => {
            d.notes.push(note);
            return d;
        }
    };
    let sched = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            d.notes
                .push(Note::warning("UnparseableSchedule", format!("unparseable schedule: {:?} : {e}", spec.schedule)));
            return d;
        }
    };
    d.next = sched.next_after(now, &tz);
    let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let mut earliest = cj.status.as_ref().and_then(|s| s.last_schedule_time.as_ref()).map_or(created, |t| t.0);
    if let Some(deadline) = spec.starting_deadline_seconds
        && let Ok(limit) = Timestamp::from_second(now.as_second() - deadline)
        && limit > earliest
    {
        earliest = limit;
    }
    let (latest, missed) = cron::missed(&sched, &tz, earliest, now, TOO_MANY_MISSED);
    if missed > TOO_MANY_MISSED {
        d.notes.push(Note::warning(
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    let Some(scheduled) = latest else { return d };
    if let Some(deadline) = spec.starting_deadline_seconds
        && scheduled.as_second() + deadline < now.as_second()
    {
        d.notes.push(Note::normal("MissSchedule", format!("Missed scheduled time to start a job: {scheduled}")));
        return d;
    }
    let name = job_name(cj.metadata.name.as_deref().unwrap_or_default(), scheduled);
    if exists(&name) {
        d.started = Some(scheduled);
        return d;
    }
    match spec.concurrency_policy.as_deref().unwrap_or("Allow") {
        "Forbid" if active > 0 => {
            d.notes.push(Note::normal(
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            ));
            return d;
        }
        "Replace" if active > 0 => d.replace_active = true,
        _ => {}
    }
    d.start = Some(scheduled);
    d
}

/// When a Job started, for ordering history (its startTime, else its creation).
fn started(job: &Job) -> Option<Timestamp> {
    job.status.as_ref().and_then(|s| s.start_time.as_ref()).or(job.metadata.creation_timestamp.as_ref()).map(|t| t.0)
}

/// Finished Jobs beyond the history limits, oldest first.
pub fn history_victims<'a>(cj: &CronJob, children: &'a [Arc<Job>]) -> Vec<&'a Job> {
    let spec = cj.spec.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (condition, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Job> =
            children.iter().map(|j| j.as_ref()).filter(|j| has_condition(j.status.as_ref(), condition)).collect();
        done.sort_by_key(|j| (started(j), j.metadata.name.clone()));
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        out.extend(done.into_iter().take(excess));
    }
    out
}

/// The Job of the run scheduled at `scheduled`.
pub fn new_job(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let tmeta = spec.job_template.metadata.clone().unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled.to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(cj.metadata.name.as_deref().unwrap_or_default(), scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owned_pods::controller_ref(cj)]),
            ..Default::default()
        },
        spec: spec.job_template.spec,
        status: None,
    }
}

/// Entry point (see `CONTROLLERS`).
pub async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let q = queue.clone();
    let mut cj_rx = ctx.informers.cron_jobs.subscribe();
    let feeder = tokio::spawn(async move {
        while let Some(Change::Applied(c) | Change::Deleted(c)) = cj_rx.recv().await {
            q.add(ObjectKey::of(c.as_ref()));
        }
    });
    let jobs = owned_pods::queue_controllers_of(&ctx.informers.jobs, KIND, queue.clone());
    run_workers("cronjob", queue, 2, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, key).await }
    })
    .await;
    feeder.abort();
    jobs.abort();
}

async fn note(ctx: &Context, cj: &CronJob, n: &Note) {
    let kind = if n.warning { EventType::Warning } else { EventType::Normal };
    ctx.events.record(cj, kind, n.reason, &n.message).await;
}

/// One pass: account for finished Jobs, trim history, start the due run, write status.
async fn reconcile(ctx: &Context, key: ObjectKey) -> Result<Action> {
    let Some(cj) = ctx.informers.cron_jobs.get(&key) else { return Ok(Action::Done) };
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::Done);
    }
    let api = |action: &'static str| {
        let cronjob = key.clone();
        move |source| Error::Api { cronjob, action, source }
    };
    let ns = key.ns().unwrap_or("default");
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let children: Vec<Arc<Job>> = ctx
        .informers
        .jobs
        .list_namespace(ns)
        .into_iter()
        .filter(|j| j.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid))
        .collect();
    let prev = cj.status.clone().unwrap_or_default();
    let was_active = |j: &Job| prev.active.iter().flatten().any(|r| r.uid == j.metadata.uid);
    let mut last_success = prev.last_successful_time.as_ref().map(|t| t.0);
    for j in children.iter().filter(|j| is_finished(j)) {
        let complete = has_condition(j.status.as_ref(), "Complete");
        if was_active(j) {
            let cond = if complete { "Complete" } else { "Failed" };
            let name = j.metadata.name.as_deref().unwrap_or_default();
            let n = Note::normal("SawCompletedJob", format!("Saw completed job: {name}, condition: {cond}"));
            note(ctx, &cj, &n).await;
        }
        if complete && let Some(t) = j.status.as_ref().and_then(|s| s.completion_time.as_ref()) {
            last_success = Some(last_success.map_or(t.0, |l| l.max(t.0)));
        }
    }
    for victim in history_victims(&cj, &children) {
        let name = victim.metadata.name.as_deref().unwrap_or_default();
        let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
        if ctx.client.delete::<Job>(Some(ns), name, Some(&opts)).await.map_err(api("deleting an old job"))? {
            tracing::info!(cronjob = %key, job = name, "deleted finished job beyond the history limit");
            note(ctx, &cj, &Note::normal("SuccessfulDelete", format!("Deleted job {name}"))).await;
        }
    }
    let mut active: Vec<&Job> = children
        .iter()
        .map(|j| j.as_ref())
        .filter(|j| !is_finished(j) && j.metadata.deletion_timestamp.is_none())
        .collect();

    let now = Timestamp::now();
    let exists = |name: &str| ctx.informers.jobs.get_named(Some(ns), name).is_some();
    let decision = decide(&cj, active.len(), exists, now);
    for n in &decision.notes {
        note(ctx, &cj, n).await;
    }
    // A cache that has not yet seen our last status write must not take it back.
    let mut last_schedule = prev.last_schedule_time.as_ref().map(|t| t.0).max(decision.started);
    let mut created = None;
    if let Some(scheduled) = decision.start {
        if decision.replace_active {
            for j in active.drain(..) {
                let name = j.metadata.name.as_deref().unwrap_or_default();
                let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
                                  "preconditions": {"uid": j.metadata.uid}});
                ctx.client.delete::<Job>(Some(ns), name, Some(&opts)).await.map_err(api("replacing an active job"))?;
                tracing::info!(cronjob = %key, job = name, "deleted active job (concurrencyPolicy Replace)");
                note(ctx, &cj, &Note::normal("SuccessfulDelete", format!("Deleted job {name}"))).await;
            }
        }
        let tz = zone_of(&cj).unwrap_or(TimeZone::UTC);
        let job = new_job(&cj, scheduled, &tz);
        let name = job.metadata.name.clone().unwrap_or_default();
        match ctx.client.create(Some(ns), &job).await {
            Ok(j) => {
                tracing::info!(cronjob = %key, job = %name, scheduled = %scheduled, "created job");
                note(ctx, &cj, &Note::normal("SuccessfulCreate", format!("Created job {name}"))).await;
                created = Some(j);
            }
            // Already run (our own earlier write, not yet in the cache).
            Err(e) if e.is_already_exists() => {}
            Err(e) => {
                note(ctx, &cj, &Note::warning("FailedCreate", format!("Error creating job: {e}"))).await;
                return Err(api("creating a job")(e));
            }
        }
        last_schedule = Some(scheduled);
    }

    let mut refs: Vec<_> = active.iter().map(|j| object_ref(*j)).collect();
    refs.extend(created.as_ref().map(object_ref));
    for r in &mut refs {
        r.resource_version = None;
    }
    let status = CronJobStatus {
        active: Some(refs).filter(|r| !r.is_empty()),
        last_schedule_time: last_schedule.map(Time),
        last_successful_time: last_success.map(Time),
    };
    let same_active = |a: &CronJobStatus, b: &CronJobStatus| {
        let uids = |s: &CronJobStatus| {
            let mut v: Vec<_> = s.active.iter().flatten().map(|r| r.uid.clone()).collect();
            v.sort();
            v
        };
        uids(a) == uids(b)
    };
    if !same_active(&prev, &status)
        || prev.last_schedule_time != status.last_schedule_time
        || prev.last_successful_time != status.last_successful_time
    {
        // Conditional on what we read: a stale status is never written back over a newer one.
        let mut st = json!({"active": status.active});
        if let Some(t) = &status.last_schedule_time {
            st["lastScheduleTime"] = json!(t);
        }
        if let Some(t) = &status.last_successful_time {
            st["lastSuccessfulTime"] = json!(t);
        }
        let patch = Patch::Merge(json!({"metadata": {"resourceVersion": cj.metadata.resource_version}, "status": st}));
        match ctx.client.patch::<CronJob>(Some(ns), &key.name, Some("status"), &patch).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(Action::Done),
            Err(e) if e.is_conflict() => return Ok(Action::RequeueAfter(Duration::from_millis(200))),
            Err(e) => return Err(api("updating status")(e)),
        }
    }
    Ok(match decision.next {
        // A little past the minute, so the run is due when we look.
        Some(next) => {
            let ms = (next.as_millisecond() - Timestamp::now().as_millisecond()).max(0) as u64 + 100;
            Action::RequeueAfter(Duration::from_millis(ms))
        }
        None => Action::Done,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobCondition, JobStatus, JobTemplateSpec};

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cj(schedule: &str, policy: &str, created: &str, last: Option<&str>) -> CronJob {
        CronJob {
            metadata: ObjectMeta {
                name: Some("tick".into()),
                namespace: Some("default".into()),
                uid: Some("cj-uid".into()),
                creation_timestamp: Some(Time(at(created))),
                ..Default::default()
            },
            spec: Some(CronJobSpec {
                schedule: schedule.into(),
                concurrency_policy: Some(policy.into()),
                job_template: JobTemplateSpec::default(),
                ..Default::default()
            }),
            status: Some(CronJobStatus { last_schedule_time: last.map(|t| Time(at(t))), ..Default::default() }),
        }
    }

    #[test]
    fn runs_the_due_time_once() {
        let c = cj("* * * * *", "Allow", "2024-03-01T10:00:30Z", None);
        let d = decide(&c, 0, |_| false, at("2024-03-01T10:00:50Z"));
        assert_eq!((d.start, d.next), (None, Some(at("2024-03-01T10:01:00Z"))));
        let d = decide(&c, 0, |_| false, at("2024-03-01T10:01:00.2Z"));
        assert_eq!(d.start, Some(at("2024-03-01T10:01:00Z")));
        assert_eq!(job_name("tick", at("2024-03-01T10:01:00Z")), "tick-28488121");
        // Already created: not again.
        let d = decide(&c, 1, |n| n == "tick-28488121", at("2024-03-01T10:01:10Z"));
        assert_eq!((d.start, d.started), (None, Some(at("2024-03-01T10:01:00Z"))));
        // After it ran, the next minute is the next run.
        let c = cj("* * * * *", "Allow", "2024-03-01T10:00:30Z", Some("2024-03-01T10:01:00Z"));
        assert_eq!(decide(&c, 1, |_| false, at("2024-03-01T10:01:30Z")).start, None);
        assert_eq!(decide(&c, 1, |_| false, at("2024-03-01T10:02:00Z")).start, Some(at("2024-03-01T10:02:00Z")));
    }

    #[test]
    fn concurrency_policies_and_suspend() {
        let now = at("2024-03-01T10:02:00Z");
        let forbid = cj("* * * * *", "Forbid", "2024-03-01T10:00:30Z", Some("2024-03-01T10:01:00Z"));
        let d = decide(&forbid, 1, |_| false, now);
        assert_eq!(d.start, None);
        assert_eq!(d.notes[0].reason, "JobAlreadyActive");
        assert_eq!(decide(&forbid, 0, |_| false, now).start, Some(now));
        let replace = cj("* * * * *", "Replace", "2024-03-01T10:00:30Z", Some("2024-03-01T10:01:00Z"));
        let d = decide(&replace, 2, |_| false, now);
        assert_eq!((d.start, d.replace_active), (Some(now), true));
        let mut suspended = cj("* * * * *", "Allow", "2024-03-01T10:00:30Z", None);
        suspended.spec.as_mut().unwrap().suspend = Some(true);
        assert_eq!(decide(&suspended, 0, |_| false, now), Decision::default());
    }

    #[test]
    fn missed_runs_and_deadlines() {
        // Down for two days: only the latest run starts, and the misses are reported.
        let c = cj("*/5 * * * *", "Allow", "2024-03-01T00:00:00Z", Some("2024-03-01T00:00:00Z"));
        let now = at("2024-03-03T00:02:00Z");
        let d = decide(&c, 0, |_| false, now);
        assert_eq!(d.start, Some(at("2024-03-03T00:00:00Z")));
        assert_eq!(d.notes[0].reason, "TooManyMissedTimes");
        // A deadline bounds how far back to look: nothing due within the last 60 s.
        let mut c = c;
        c.spec.as_mut().unwrap().starting_deadline_seconds = Some(60);
        let d = decide(&c, 0, |_| false, now);
        assert_eq!((d.start, d.notes.len()), (None, 0));
        let d = decide(&c, 0, |_| false, at("2024-03-03T00:00:40Z"));
        assert_eq!(d.start, Some(at("2024-03-03T00:00:00Z")));
    }

    #[test]
    fn time_zone_and_bad_input() {
        let mut c = cj("0 9 * * *", "Allow", "2024-03-01T00:00:00Z", None);
        c.spec.as_mut().unwrap().time_zone = Some("Asia/Tokyo".into());
        // 09:00 in Tokyo is 00:00 UTC.
        assert_eq!(decide(&c, 0, |_| false, at("2024-03-02T00:00:05Z")).start, Some(at("2024-03-02T00:00:00Z")));
        let job = new_job(&c, at("2024-03-02T00:00:00Z"), &zone_of(&c).unwrap());
        assert_eq!(job.metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP], "2024-03-02T09:00:00+09:00");
        assert_eq!(job.metadata.owner_references.unwrap()[0].kind, "CronJob");
        c.spec.as_mut().unwrap().time_zone = Some("Mars/Olympus".into());
        assert_eq!(decide(&c, 0, |_| false, at("2024-03-02T00:00:05Z")).notes[0].reason, "UnknownTimeZone");
        let bad = cj("61 * * * *", "Allow", "2024-03-01T00:00:00Z", None);
        assert_eq!(decide(&bad, 0, |_| false, at("2024-03-02T00:00:05Z")).notes[0].reason, "UnparseableSchedule");
    }

    #[test]
    fn history_limits_delete_the_oldest() {
        let job = |name: &str, cond: &str, start: i64| {
            Arc::new(Job {
                metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
                spec: None,
                status: Some(JobStatus {
                    start_time: Some(Time(Timestamp::from_second(start).unwrap())),
                    conditions: (!cond.is_empty()).then(|| {
                        vec![JobCondition { type_: cond.into(), status: "True".into(), ..Default::default() }]
                    }),
                    ..Default::default()
                }),
            })
        };
        let mut c = cj("* * * * *", "Allow", "2024-03-01T00:00:00Z", None);
        c.spec.as_mut().unwrap().successful_jobs_history_limit = Some(1);
        c.spec.as_mut().unwrap().failed_jobs_history_limit = Some(0);
        let children =
            [job("ok-2", "Complete", 2), job("ok-1", "Complete", 1), job("bad", "Failed", 3), job("run", "", 4)];
        let names: Vec<_> = history_victims(&c, &children).iter().map(|j| j.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["ok-1", "bad"]);
    }
}
