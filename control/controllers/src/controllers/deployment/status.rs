//! The Deployment's conditions (Available, Progressing with its deadline) and the
//! completeness test `kubectl rollout status` relies on. Pure functions.

use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Sets a condition: a changed status moves lastTransitionTime; `touch` refreshes
/// lastUpdateTime even when nothing else changed (progress was made).
pub fn set_condition(
    conds: &mut Vec<DeploymentCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: i64,
    touch: bool,
) {
    let t = Time(jiff::Timestamp::from_second(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH));
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status == status && c.reason.as_deref() == Some(reason) && !touch {
            return;
        }
        if c.status != status {
            c.last_transition_time = Some(t.clone());
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_update_time = Some(t);
        return;
    }
    conds.push(DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(t.clone()),
        last_update_time: Some(t),
    });
}

/// The rollout is done: every desired pod is updated and available and nothing old is left.
pub fn is_complete(replicas: i32, generation: i64, s: &DeploymentStatus) -> bool {
    s.updated_replicas.unwrap_or(0) == replicas
        && s.replicas.unwrap_or(0) == replicas
        && s.available_replicas.unwrap_or(0) == replicas
        && s.observed_generation.unwrap_or(0) >= generation
}

/// Progress since the last status: more updated, ready or available pods, or fewer old ones.
pub fn made_progress(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let n = |x: Option<i32>| x.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
        || new_old < old_old
}

/// What decides the Progressing condition.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// progressDeadlineSeconds (None: no deadline).
    pub deadline: Option<i32>,
    pub paused: bool,
    pub complete: bool,
    /// The status moved forward since the last one (`made_progress`).
    pub progressed: bool,
}

/// Updates the Progressing condition: NewReplicaSetAvailable once complete,
/// ReplicaSetUpdated (refreshing lastUpdateTime) on progress, ProgressDeadlineExceeded
/// when the last progress is older than the deadline. Returns the seconds after which
/// the deadline must be checked again, if it is running.
pub fn update_progressing(
    conds: &mut Vec<DeploymentCondition>,
    p: &Progress,
    new_rs: Option<&str>,
    now: i64,
) -> Option<i64> {
    let (Some(deadline), false, Some(new_rs)) = (p.deadline, p.paused, new_rs) else { return None };
    let deadline = i64::from(deadline);
    if p.complete {
        let msg = format!("ReplicaSet \"{new_rs}\" has successfully progressed.");
        set_condition(conds, "Progressing", "True", "NewReplicaSetAvailable", &msg, now, false);
        return None;
    }
    if p.progressed {
        let msg = format!("ReplicaSet \"{new_rs}\" is progressing.");
        set_condition(conds, "Progressing", "True", "ReplicaSetUpdated", &msg, now, true);
        return Some(deadline + 1);
    }
    let c = conds.iter().find(|c| c.type_ == "Progressing")?;
    if c.status != "True" || c.reason.as_deref() == Some("NewReplicaSetAvailable") {
        return None;
    }
    let left = c.last_update_time.as_ref().map_or(now, |t| t.0.as_second()) + deadline - now;
    if left >= 0 {
        return Some(left + 1);
    }
    let msg = format!("ReplicaSet \"{new_rs}\" has timed out progressing.");
    set_condition(conds, "Progressing", "False", "ProgressDeadlineExceeded", &msg, now, false);
    None
}
