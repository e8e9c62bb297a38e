//! Kinds whose only behaviour is defaulting, validation of data keys or selectable
//! fields: ConfigMap, Secret, Event, Node, ServiceAccount.

use serde_json::Value;

use super::super::request::Subresource;
use super::super::status::Cause;
use super::super::validation;
use super::Strategy;

#[derive(Debug)]
pub struct ConfigMap;

impl Strategy for ConfigMap {
    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        validation::validate_config_map(obj, causes);
    }
}

#[derive(Debug)]
pub struct Secret;

impl Strategy for Secret {
    fn default(&self, obj: &mut Value) {
        validation::default_secret(obj);
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        validation::validate_secret(obj, causes);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["type"]
    }
}

#[derive(Debug)]
pub struct Event;

impl Strategy for Event {
    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]
    }
}

#[derive(Debug)]
pub struct Node;

impl Strategy for Node {
    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.unschedulable"]
    }
}

#[derive(Debug)]
pub struct ServiceAccount;

impl Strategy for ServiceAccount {
    fn create_subresources(&self) -> &'static [Subresource] {
        &[Subresource::Token]
    }
}
