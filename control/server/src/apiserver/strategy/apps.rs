//! StatefulSet, ControllerRevision and CronJob: served, stored, defaulted and validated
//! as upstream. Their controllers (ordered pods, revisions, schedules) are later work;
//! this module must not create anything.

use serde_json::{Value, json};

use super::super::status::Cause;
use super::super::validation;
use super::checks::{
    default_at, defaulted, forbidden, immutable, non_negative, ok_if_empty, one_of, required_str, str_at,
};
use super::{Strategy, drop_status};

#[derive(Debug)]
pub struct StatefulSet;

/// The spec fields a StatefulSet update may change.
const STS_MUTABLE: &[&str] =
    &["replicas", "ordinals", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy", "minReadySeconds"];

impl Strategy for StatefulSet {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn default(&self, obj: &mut Value) {
        validation::default_replica_set(obj);
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        default_at(obj, "/spec/podManagementPolicy", json!("OrderedReady"));
        default_at(obj, "/spec/updateStrategy", json!({"type": "RollingUpdate"}));
        if obj.pointer("/spec/updateStrategy/type") == Some(&json!("RollingUpdate")) {
            default_at(obj, "/spec/updateStrategy/rollingUpdate", json!({}));
            default_at(obj, "/spec/updateStrategy/rollingUpdate/partition", json!(0));
        }
        default_at(obj, "/spec/revisionHistoryLimit", json!(10));
        default_at(
            obj,
            "/spec/persistentVolumeClaimRetentionPolicy",
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        );
        for claim in obj.pointer_mut("/spec/volumeClaimTemplates").and_then(Value::as_array_mut).into_iter().flatten() {
            if claim.get("spec").is_some_and(Value::is_object) {
                default_at(claim, "/spec/volumeMode", json!("Filesystem"));
            }
            default_at(claim, "/status", json!({"phase": "Pending"}));
            // As the typed model writes them, so that updates compare equal.
            default_at(claim, "/apiVersion", json!("v1"));
            default_at(claim, "/kind", json!("PersistentVolumeClaim"));
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        validation::validate_replicated(obj, causes);
        one_of(obj, "/spec/podManagementPolicy", "spec.podManagementPolicy", &["OrderedReady", "Parallel"], causes);
        one_of(obj, "/spec/updateStrategy/type", "spec.updateStrategy.type", &["OnDelete", "RollingUpdate"], causes);
        non_negative(
            obj,
            "/spec/updateStrategy/rollingUpdate/partition",
            "spec.updateStrategy.rollingUpdate.partition",
            causes,
        );
        non_negative(obj, "/spec/minReadySeconds", "spec.minReadySeconds", causes);
        for (f, allowed) in [("whenDeleted", ["Delete", "Retain"]), ("whenScaled", ["Delete", "Retain"])] {
            let ptr = format!("/spec/persistentVolumeClaimRetentionPolicy/{f}");
            one_of(obj, &ptr, &format!("spec.persistentVolumeClaimRetentionPolicy.{f}"), &allowed, causes);
        }
        if let Some(rp) = str_at(obj, "/spec/template/spec/restartPolicy")
            && rp != "Always"
        {
            causes.push(Cause::not_supported("spec.template.spec.restartPolicy", &json!(rp), &["Always"]));
        }
        for (i, c) in
            obj.pointer("/spec/volumeClaimTemplates").and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            required_str(c, "/metadata/name", &format!("spec.volumeClaimTemplates[{i}].metadata.name"), causes);
            if c.pointer("/spec/accessModes").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                causes.push(Cause::required(format!("spec.volumeClaimTemplates[{i}].spec.accessModes")));
            }
        }
    }

    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
        let new = &defaulted(self, new);
        let rest = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or(json!({}));
            if let Some(m) = s.as_object_mut() {
                m.retain(|k, _| !STS_MUTABLE.contains(&k.as_str()));
            }
            s
        };
        if rest(cur) != rest(new) {
            return Err(vec![forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            )]);
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct ControllerRevision;

impl Strategy for ControllerRevision {
    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        non_negative(obj, "/revision", "revision", causes);
    }

    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
        let new = &defaulted(self, new);
        let mut causes = Vec::new();
        immutable(cur, new, "/data", "data", &mut causes);
        ok_if_empty(causes)
    }
}

/// Why a standard cron schedule (five fields or an `@` descriptor) does not parse: the
/// CronJob controller's own parser, so that what validation accepts is what runs.
fn cron_error(schedule: &str) -> Option<String> {
    skiff_controllers::helpers::cron::Schedule::parse(schedule).err().map(|e| e.to_string())
}

/// Whether `tz` names an IANA time zone. As Go's `time.LoadLocation`, which upstream
/// validates with, it reads the system's zoneinfo (a read-only file lookup).
fn time_zone_known(tz: &str) -> bool {
    let sane = !tz.is_empty()
        && !tz.starts_with('/')
        && !tz.split('/').any(|p| p == ".." || p == ".")
        && tz.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
    sane && (tz == "UTC" || std::path::Path::new("/usr/share/zoneinfo").join(tz).is_file())
}

/// The CronJob's job spec as a Job-shaped object, so the Job rules apply to it.
fn as_job(obj: &Value) -> Value {
    json!({"spec": obj.pointer("/spec/jobTemplate/spec").cloned().unwrap_or(json!({}))})
}

#[derive(Debug)]
pub struct CronJob;

impl Strategy for CronJob {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn default(&self, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        default_at(obj, "/spec/concurrencyPolicy", json!("Allow"));
        default_at(obj, "/spec/suspend", json!(false));
        default_at(obj, "/spec/successfulJobsHistoryLimit", json!(3));
        default_at(obj, "/spec/failedJobsHistoryLimit", json!(1));
        if obj.pointer("/spec/jobTemplate/spec").is_some_and(Value::is_object) {
            let mut job = as_job(obj);
            validation::default_job(&mut job);
            obj["spec"]["jobTemplate"]["spec"] = job["spec"].take();
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        if required_str(obj, "/spec/schedule", "spec.schedule", causes) {
            let s = str_at(obj, "/spec/schedule").unwrap_or("");
            if let Some(e) = cron_error(s) {
                causes.push(Cause::invalid("spec.schedule", &json!(s), e));
            }
        }
        if let Some(tz) = str_at(obj, "/spec/timeZone")
            && !time_zone_known(tz)
        {
            causes.push(Cause::invalid("spec.timeZone", &json!(tz), "unknown time zone"));
        }
        one_of(obj, "/spec/concurrencyPolicy", "spec.concurrencyPolicy", &["Allow", "Forbid", "Replace"], causes);
        non_negative(obj, "/spec/startingDeadlineSeconds", "spec.startingDeadlineSeconds", causes);
        non_negative(obj, "/spec/successfulJobsHistoryLimit", "spec.successfulJobsHistoryLimit", causes);
        non_negative(obj, "/spec/failedJobsHistoryLimit", "spec.failedJobsHistoryLimit", causes);
        let mut job_causes = Vec::new();
        validation::validate_job(&as_job(obj), &mut job_causes);
        for mut c in job_causes {
            c.field = c.field.replacen("spec.", "spec.jobTemplate.spec.", 1);
            causes.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_schedules() {
        for ok in ["*/5 * * * *", "0 3 * * mon-fri", "15 2 1,15 jan-jun *", "@hourly", "0 0 * * 0"] {
            assert_eq!(cron_error(ok), None, "{ok}");
        }
        for bad in ["* * * *", "61 * * * *", "0 25 * * *", "@often", "TZ=UTC 0 * * * *", "*/0 * * * *", "5-1 * * * *"] {
            assert!(cron_error(bad).is_some(), "{bad}");
        }
    }
}
