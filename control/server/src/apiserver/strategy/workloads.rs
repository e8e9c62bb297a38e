//! The workload controllers' kinds: Deployment, ReplicaSet, DaemonSet and Job. Their
//! status is the controllers'; a Job's selector is its own uid.

use serde_json::Value;

use super::super::status::Cause;
use super::super::validation;
use super::{Strategy, drop_status};

#[derive(Debug)]
pub struct Deployment;

impl Strategy for Deployment {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn default(&self, obj: &mut Value) {
        validation::default_deployment(obj);
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        validation::validate_replicated(obj, causes);
    }
}

#[derive(Debug)]
pub struct ReplicaSet;

impl Strategy for ReplicaSet {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn default(&self, obj: &mut Value) {
        validation::default_replica_set(obj);
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        validation::validate_replicated(obj, causes);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.replicas"]
    }
}

#[derive(Debug)]
pub struct DaemonSet;

impl Strategy for DaemonSet {
    fn default(&self, obj: &mut Value) {
        validation::default_daemon_set(obj);
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        validation::validate_replicated(obj, causes);
    }
}

#[derive(Debug)]
pub struct Job;

impl Strategy for Job {
    fn prepare_for_create(&self, obj: &mut Value, uid: &str) {
        validation::default_job_selector(obj, uid);
    }

    fn default(&self, obj: &mut Value) {
        validation::default_job(obj);
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        validation::validate_job(obj, causes);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::validate;
    use super::*;

    #[test]
    fn deployment_defaults_and_validation() {
        let mut d = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]}}}});
        Deployment.default(&mut d);
        assert_eq!(d.pointer("/spec/replicas"), Some(&json!(1)));
        assert_eq!(d.pointer("/spec/template/spec/containers/0/imagePullPolicy"), Some(&json!("IfNotPresent")));
        assert_eq!(d.pointer("/spec/template/spec/containers/0/ports/0/protocol"), Some(&json!("TCP")));
        assert!(validate(&Deployment, true, &d).is_empty());
        d["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
        let causes = validate(&Deployment, true, &d);
        let fields: Vec<_> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.template.metadata.labels", "spec.template.spec.containers[0].image"]);
    }
}
