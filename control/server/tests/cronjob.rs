//! End-to-end test of the CronJob controller with the real kubectl (v1.32) against
//! `skiff-control` on 127.0.0.1, on real time: a `* * * * *` schedule runs at the next
//! two minute boundaries, so the test takes about two minutes. Pods are served by the
//! fake kubelet of `support::fake_kubelet`; the test finishes them (phase Succeeded)
//! as their containers would.
//!
//! Every process is killed and every task stopped on drop; every loop is bounded.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::Server;
use support::fake_kubelet::FakeKubelet;

fn cron_job(name: &str, policy: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: {name}
spec:
  schedule: "* * * * *"
  timeZone: Europe/Paris
  concurrencyPolicy: {policy}
  successfulJobsHistoryLimit: 1
  jobTemplate:
    metadata:
      labels: {{cron: {name}}}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: c
            image: busybox
            command: [date]
"#
    )
}

/// Names of the Jobs labelled `cron=<cron>`, sorted.
fn jobs(s: &Server, cron: &str) -> Vec<String> {
    let all = s.json(&["get", "jobs", "-l", &format!("cron={cron}")]);
    let mut v: Vec<String> =
        all["items"].as_array().unwrap().iter().map(|j| j["metadata"]["name"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

/// Makes the pods of Job `job` succeed, once the Job controller has created them.
fn finish(s: &Server, job: &str) {
    s.wait_for(30, &format!("a pod of job {job}"), || {
        !s.ok(&["get", "pods", "-l", &format!("job-name={job}"), "-o", "name"]).trim().is_empty()
    });
    for pod in s.ok(&["get", "pods", "-l", &format!("job-name={job}"), "-o", "name"]).lines() {
        s.ok(&["patch", pod, "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Succeeded"}}"#]);
    }
    s.wait_for(30, &format!("job {job} complete"), || {
        let j = s.json(&["get", "job", job]);
        j["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Complete"))
    });
}

fn minutes_of(t: &Value) -> i64 {
    let t: jiff::Timestamp = t.as_str().unwrap().parse().unwrap();
    t.as_second() / 60
}

#[test]
fn cronjob_runs_on_schedule_prunes_history_and_forbids_overlap() {
    let s = Server::start();
    let _kubelet = FakeKubelet::start(&s.kubeconfig(), Duration::ZERO);
    s.apply("tick.yaml", &cron_job("tick", "Allow"));
    s.apply("hold.yaml", &cron_job("hold", "Forbid"));

    // A manual run of `hold` keeps running, so Forbid skips every scheduled one.
    let out = s.ok(&["create", "job", "--from=cronjob/hold", "hold-manual"]);
    assert!(out.contains("job.batch/hold-manual created"), "{out}");
    let manual = s.json(&["get", "job", "hold-manual"]);
    assert_eq!(manual["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    assert_eq!(manual["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual");

    // The first minute boundary: tick runs, named by the scheduled minute.
    s.wait_for(75, "the first scheduled job of tick", || jobs(&s, "tick").len() == 1);
    let first = jobs(&s, "tick").remove(0);
    s.wait_for(10, "tick's status", || !s.json(&["get", "cronjob", "tick"])["status"]["lastScheduleTime"].is_null());
    let cj = s.json(&["get", "cronjob", "tick"]);
    assert_eq!(first, format!("tick-{}", minutes_of(&cj["status"]["lastScheduleTime"])));
    assert_eq!(cj["status"]["active"][0]["name"], first.as_str());
    let job = s.json(&["get", "job", &first]);
    assert!(
        job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with("+01:00") || t.ends_with("+02:00")),
        "scheduled timestamp in Paris time: {job}"
    );
    finish(&s, &first);
    s.wait_for(20, "tick's lastSuccessfulTime", || {
        let st = &s.json(&["get", "cronjob", "tick"])["status"];
        !st["lastSuccessfulTime"].is_null() && st["active"].is_null()
    });
    let out = s.ok(&["get", "cronjob", "tick"]);
    assert!(out.contains("* * * * *") && out.contains("Europe/Paris"), "{out}");

    // The second boundary: a second run; once it succeeds, history keeps only it.
    s.wait_for(75, "the second scheduled job of tick", || jobs(&s, "tick").len() == 2);
    let second = jobs(&s, "tick").into_iter().find(|j| *j != first).unwrap();
    finish(&s, &second);
    s.wait_for(20, "the first job pruned by successfulJobsHistoryLimit 1", || jobs(&s, "tick") == [second.clone()]);

    // Forbid: two boundaries passed, hold never started a job of its own.
    assert_eq!(jobs(&s, "hold"), ["hold-manual"], "kubectl copies the template's labels to a manual run");
    let hold = s.json(&["get", "cronjob", "hold"]);
    assert_eq!(hold["status"]["active"][0]["name"], "hold-manual");
    let events = s.ok(&["get", "events", "--field-selector", "involvedObject.name=hold"]);
    assert!(events.contains("JobAlreadyActive"), "{events}");
    let events = s.ok(&["get", "events", "--field-selector", "involvedObject.name=tick"]);
    assert!(events.contains("SawCompletedJob") && events.contains(&format!("Deleted job {first}")), "{events}");
}
