//! Warning Events on the Services this node cannot program (`kubectl describe service`,
//! `kubectl get events`): reason [`FAILED_TO_PROGRAM`], the reconciler's message (an
//! invalid port, a full map, a frontend held by another Service), reported by component
//! `skiff-proxy` of this node.
//!
//! A Service retried on every sync repeats its problem every time; [`Announced`] lets
//! each distinct (Service, message) through once per agent run. Sending is best effort
//! on a task of its own: a failure is logged at debug level and never reaches the proxy.
//! This module must not decide what is a problem (the reconciler does).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use skiff_api::Client;
use skiff_api::reflector::Cache;

use super::reconciler::ServiceProblem;

/// The reason of the Warning Event about a Service that cannot be programmed.
pub const FAILED_TO_PROGRAM: &str = "FailedToProgram";
/// The component named as the Events' source.
const COMPONENT: &str = "skiff-proxy";
/// How many distinct problems are remembered; past it the memory starts over (a
/// problem may then be announced again, which beats growing without bound).
const MAX_ANNOUNCED: usize = 10_000;

/// The problems already announced. Pure.
#[derive(Debug, Default)]
pub struct Announced(BTreeSet<ServiceProblem>);

impl Announced {
    /// The problems of `problems` not announced before (each once, in order); they now
    /// count as announced.
    pub fn fresh(&mut self, problems: Vec<ServiceProblem>) -> Vec<ServiceProblem> {
        if self.0.len() >= MAX_ANNOUNCED {
            self.0.clear();
        }
        problems.into_iter().filter(|p| self.0.insert(p.clone())).collect()
    }
}

/// Sends the Events, as this node.
pub struct ServiceEvents {
    client: Client,
    node: String,
    /// For the involved Service's uid (so `kubectl describe` finds the Event).
    services: Cache<Service>,
    announced: Announced,
}

impl std::fmt::Debug for ServiceEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceEvents").field("node", &self.node).finish_non_exhaustive()
    }
}

impl ServiceEvents {
    pub fn new(client: Client, node: &str, services: Cache<Service>) -> Self {
        Self { client, node: node.to_owned(), services, announced: Announced::default() }
    }

    /// Records one Warning Event per new problem. Must run inside a tokio runtime.
    pub fn report(&mut self, problems: Vec<ServiceProblem>) {
        for problem in self.announced.fresh(problems) {
            let uid = self
                .services
                .get_named(Some(&problem.service.namespace), &problem.service.name)
                .and_then(|s| s.metadata.uid.clone());
            tracing::info!(service = %problem.service, message = %problem.message, "warning event");
            let event = warning(&problem, uid, &self.node, jiff::Timestamp::now());
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(error) = client.create(event.metadata.namespace.as_deref(), &event).await {
                    tracing::debug!(%error, "cannot record an event about a Service");
                }
            });
        }
    }
}

/// The Event about `problem`, at `now`.
fn warning(problem: &ServiceProblem, uid: Option<String>, node: &str, now: jiff::Timestamp) -> Event {
    let svc = &problem.service;
    let involved = ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Service".to_owned()),
        namespace: Some(svc.namespace.clone()),
        name: Some(svc.name.clone()),
        uid,
        ..ObjectReference::default()
    };
    let metadata = ObjectMeta {
        name: Some(format!("{}.{:x}", svc.name, now.as_nanosecond())),
        namespace: Some(svc.namespace.clone()),
        ..ObjectMeta::default()
    };
    Event {
        type_: Some("Warning".to_owned()),
        reason: Some(FAILED_TO_PROGRAM.to_owned()),
        message: Some(format!("node {node}: {}", problem.message)),
        source: Some(EventSource { component: Some(COMPONENT.to_owned()), host: Some(node.to_owned()) }),
        reporting_component: Some(COMPONENT.to_owned()),
        reporting_instance: Some(node.to_owned()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        involved_object: involved,
        metadata,
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::ObjectRef;

    fn problem(name: &str, message: &str) -> ServiceProblem {
        ServiceProblem { service: ObjectRef::new("shop", name), message: message.to_owned() }
    }

    #[test]
    fn each_distinct_problem_is_announced_once() {
        let mut a = Announced::default();
        let full = problem("web", "map full");
        let fresh = a.fresh(vec![full.clone(), full.clone(), problem("api", "bad port")]);
        assert_eq!(fresh, [full.clone(), problem("api", "bad port")]);
        // The next syncs repeat web's problem: nothing new, until the message changes.
        assert_eq!(a.fresh(vec![full.clone()]), []);
        assert_eq!(a.fresh(vec![problem("web", "held by shop/other")]), [problem("web", "held by shop/other")]);
    }

    #[test]
    fn the_event_names_the_service_and_the_node() {
        let now: jiff::Timestamp = "2026-12-02T03:00:00Z".parse().unwrap();
        let e = warning(&problem("web", "port http: map full"), Some("u1".into()), "n1", now);
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some(FAILED_TO_PROGRAM));
        assert_eq!(e.message.as_deref(), Some("node n1: port http: map full"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        assert!(e.metadata.name.unwrap().starts_with("web."));
        let o = &e.involved_object;
        assert_eq!(
            (o.kind.as_deref(), o.name.as_deref(), o.uid.as_deref()),
            (Some("Service"), Some("web"), Some("u1"))
        );
    }
}
